//! The table of announcements heard on gossip: the latest one of each peer, bounded.
//!
//! Anyone can publish on a model's topic, and one connected peer can relay messages signed by
//! as many keys as it likes, so the table has hard caps: at most [`MAX_ENTRIES`] peers in all
//! and at most [`MAX_PER_SOURCE`] first heard through any one connected peer (gossipsub's
//! propagation source). A message over a cap is ignored (and, in validation mode, not relayed);
//! expired entries are pruned ([`GossipTable::prune`]). A peer that publishes under 100,000
//! keys therefore costs every node and client at most [`MAX_PER_SOURCE`] entries, and an entry
//! weighs at most about 5 KiB (16 addresses of 256 bytes), so the table stays under
//! [`MAX_ENTRIES`] x 5 KiB = 20 MiB whatever is published, and a few KiB per honest peer.
//!
//! What counts as valid is decided before the table sees a message ([`check`]): it decodes, it
//! describes the peer that signed the gossip message, its timestamp is not ahead of this clock
//! by more than `MAX_CLOCK_SKEW_MS`, it has not expired, and it is not older than the entry it
//! would replace.

use std::collections::HashMap;

use libp2p::PeerId;
use sunswarm_protocol::Announcement;

/// Most peers the table holds.
pub const MAX_ENTRIES: usize = 4096;
/// Most entries first heard through one connected peer. An honest relay passes on the
/// announcements of the whole swarm, so this is the largest swarm a client that hears gossip
/// through one node sees in full from gossip (the DHT still shows every peer).
pub const MAX_PER_SOURCE: usize = 1024;

/// Why a gossiped announcement was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GossipRefusal {
    /// Broken: the message should not be relayed and its sender is to blame.
    #[error("invalid announcement: {0}")]
    Invalid(String),
    /// Valid but not wanted (old, expired, or over a cap): not relayed, nobody blamed.
    #[error("announcement ignored: {0}")]
    Ignored(String),
}

/// Checks a gossip message from `author` (the key that signed it) at `now_ms`: the
/// announcement it carries, if it may enter a table.
pub fn check(author: &PeerId, data: &[u8], now_ms: u64) -> Result<Announcement, GossipRefusal> {
    let ann = crate::announce::decode_verified(data, now_ms)
        .map_err(|e| GossipRefusal::Invalid(e.to_string()))?;
    if PeerId::from_bytes(&ann.peer_id).ok() != Some(*author) {
        return Err(GossipRefusal::Invalid(
            "the announcement describes another peer than its author".into(),
        ));
    }
    Ok(ann)
}

#[derive(Debug, Clone)]
struct Entry {
    ann: Announcement,
    /// The gossip message it came in (the encoded signed announcement), passed on as it is to
    /// peers that ask for this node's view.
    signed: Vec<u8>,
    /// The connected peer it was first heard through, which its place is counted against.
    source: PeerId,
    /// Held at least until then: a withdrawal (an announcement that expired at once) stays as
    /// long as the announcement it replaced would have lived, so that this table, and the views
    /// it gives ([`crate::view`]), keep saying the peer left rather than forgetting it while
    /// older copies of its announcement may still be live elsewhere.
    keep_until_ms: u64,
}

impl Entry {
    fn held_at(&self, now_ms: u64) -> bool {
        self.ann.is_live(now_ms) || now_ms < self.keep_until_ms
    }
}

/// The latest valid announcement of each peer, capped per source and in all.
#[derive(Debug, Default)]
pub struct GossipTable {
    entries: HashMap<PeerId, Entry>,
    per_source: HashMap<PeerId, usize>,
}

impl GossipTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every announcement held.
    pub fn announcements(&self) -> Vec<Announcement> {
        self.entries.values().map(|e| e.ann.clone()).collect()
    }

    /// The signed announcements of `model_id` held at `now_ms`, as they came in: the live ones
    /// and the withdrawals of peers that left while their last announcement would still live.
    pub fn signed_of(
        &self,
        model_id: &sunswarm_protocol::ModelDigest,
        now_ms: u64,
    ) -> Vec<Vec<u8>> {
        self.entries
            .values()
            .filter(|e| &e.ann.model_id == model_id && e.held_at(now_ms))
            .map(|e| e.signed.clone())
            .collect()
    }

    /// Takes `ann` (already [`check`]ed from the message `signed`, authored by `author`) heard
    /// through `source` at `now_ms`, or says why not.
    pub fn insert(
        &mut self,
        author: PeerId,
        source: PeerId,
        ann: Announcement,
        signed: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), GossipRefusal> {
        if let Some(old) = self.entries.get_mut(&author) {
            if ann.timestamp_ms < old.ann.timestamp_ms {
                return Err(GossipRefusal::Ignored(format!(
                    "older ({} ms) than the one held ({} ms)",
                    ann.timestamp_ms, old.ann.timestamp_ms
                )));
            }
            // An update keeps its place (and the source it is counted against); a withdrawal
            // is held while what it withdraws would have been live.
            old.keep_until_ms = old.keep_until_ms.max(old.ann.expires_ms);
            old.ann = ann;
            old.signed = signed;
            return Ok(());
        }
        if !ann.is_live(now_ms) {
            return Err(GossipRefusal::Ignored("expired".into()));
        }
        // A peer's own announcement, heard from it directly, is never crowded out by what
        // others relay: it does not count against a relay's quota, and a full table makes room.
        let direct = author == source;
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if !direct && from_source >= MAX_PER_SOURCE {
            return Err(GossipRefusal::Ignored(format!(
                "{source} already brought {from_source} peers (at most {MAX_PER_SOURCE})"
            )));
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.prune(now_ms);
        }
        if self.entries.len() >= MAX_ENTRIES && !(direct && self.evict_from_largest_source()) {
            return Err(GossipRefusal::Ignored(format!(
                "the table is full ({MAX_ENTRIES} peers)"
            )));
        }
        *self.per_source.entry(source).or_insert(0) += 1;
        self.entries.insert(
            author,
            Entry {
                keep_until_ms: ann.expires_ms,
                ann,
                signed,
                source,
            },
        );
        Ok(())
    }

    /// Drops the entries that expired by `now_ms` (a withdrawal once what it withdrew would
    /// have expired too); returns how many.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let dead: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.held_at(now_ms))
            .map(|(p, _)| *p)
            .collect();
        for p in &dead {
            self.remove(p);
        }
        dead.len()
    }

    fn remove(&mut self, peer: &PeerId) {
        if let Some(e) = self.entries.remove(peer)
            && let Some(n) = self.per_source.get_mut(&e.source)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
    }

    /// Makes room by dropping one entry relayed by the source that brought the most (never a
    /// peer's own direct announcement); false when there is none.
    fn evict_from_largest_source(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(author, e)| **author != e.source)
            .max_by_key(|(_, e)| self.per_source.get(&e.source).copied().unwrap_or(0))
            .map(|(p, _)| *p);
        match victim {
            Some(p) => {
                self.remove(&p);
                true
            }
            None => false,
        }
    }

    /// How many entries `source` brought.
    pub fn from_source(&self, source: &PeerId) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::{BlockRange, EnergyState};

    fn ann(peer: &PeerId, ts: u64, ttl: u64) -> Announcement {
        Announcement {
            peer_id: peer.to_bytes(),
            addrs: vec![],
            model_id: [1; 32],
            n_layers: 4,
            blocks: BlockRange { start: 0, end: 4 },
            backend: "cpu".into(),
            throughput: 1.0,
            max_sessions: 1,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: ts,
            expires_ms: ts + ttl,
        }
    }

    #[test]
    fn newest_wins_and_updates_keep_their_place() {
        let mut t = GossipTable::new();
        let (p, relay) = (PeerId::random(), PeerId::random());
        t.insert(p, relay, ann(&p, 100, 1000), vec![], 100).unwrap();
        t.insert(p, relay, ann(&p, 200, 1000), vec![], 200).unwrap();
        assert!(matches!(
            t.insert(p, relay, ann(&p, 150, 1000), vec![], 200),
            Err(GossipRefusal::Ignored(_))
        ));
        assert_eq!(t.announcements()[0].timestamp_ms, 200);
        assert_eq!(t.from_source(&relay), 1);
    }

    #[test]
    fn one_source_brings_at_most_its_quota_and_direct_peers_still_get_in() {
        let mut t = GossipTable::new();
        let flooder = PeerId::random();
        let mut taken = 0;
        for _ in 0..MAX_PER_SOURCE + 500 {
            let p = PeerId::random();
            if t.insert(p, flooder, ann(&p, 10, 1000), vec![], 10).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, MAX_PER_SOURCE);
        assert_eq!(t.len(), MAX_PER_SOURCE);
        // An honest peer heard directly, and one relayed by an honest relay, both get in.
        let honest = PeerId::random();
        t.insert(honest, honest, ann(&honest, 10, 1000), vec![], 10)
            .unwrap();
        let relayed = PeerId::random();
        t.insert(
            relayed,
            PeerId::random(),
            ann(&relayed, 10, 1000),
            vec![],
            10,
        )
        .unwrap();
        assert_eq!(t.len(), MAX_PER_SOURCE + 2);
    }

    #[test]
    fn the_table_never_exceeds_its_cap_and_direct_announcements_make_room() {
        let mut t = GossipTable::new();
        // Many sources, each under its quota, fill the table.
        for _ in 0..(MAX_ENTRIES / 100 + 2) {
            let relay = PeerId::random();
            for _ in 0..100 {
                let p = PeerId::random();
                let _ = t.insert(p, relay, ann(&p, 10, 1000), vec![], 10);
            }
        }
        assert_eq!(t.len(), MAX_ENTRIES);
        let late = PeerId::random();
        assert!(
            t.insert(late, PeerId::random(), ann(&late, 10, 1000), vec![], 10)
                .is_err()
        );
        let direct = PeerId::random();
        t.insert(direct, direct, ann(&direct, 10, 1000), vec![], 10)
            .unwrap();
        assert_eq!(t.len(), MAX_ENTRIES);
        assert!(
            t.announcements()
                .iter()
                .any(|a| a.peer_id == direct.to_bytes())
        );
    }

    #[test]
    fn only_signed_announcements_of_their_author_from_the_present_pass() {
        use libp2p::identity::Keypair;
        use sunswarm_protocol::codec::encode;
        let k = Keypair::generate_ed25519();
        let me = k.public().to_peer_id();
        let now = 1_000_000;
        let good = crate::announce::sign(&k, ann(&me, now, 1000)).unwrap();
        assert!(check(&me, &encode(&good).unwrap(), now).is_ok());
        // Relayed under another author's gossip signature.
        assert!(matches!(
            check(&PeerId::random(), &encode(&good).unwrap(), now),
            Err(GossipRefusal::Invalid(_))
        ));
        // Tampered after signing.
        let mut bad = good.clone();
        bad.announcement.energy.max_job_rate = 1e9;
        assert!(check(&me, &encode(&bad).unwrap(), now).is_err());
        // From the future.
        let future = crate::announce::sign(&k, ann(&me, now + 60_000, 1000)).unwrap();
        assert!(check(&me, &encode(&future).unwrap(), now).is_err());
        assert!(check(&me, b"junk", now).is_err());
    }

    #[test]
    fn expired_entries_are_pruned_and_not_taken() {
        let mut t = GossipTable::new();
        let relay = PeerId::random();
        let (a, b) = (PeerId::random(), PeerId::random());
        t.insert(a, relay, ann(&a, 0, 100), vec![], 0).unwrap();
        t.insert(b, relay, ann(&b, 0, 1000), vec![], 0).unwrap();
        assert_eq!(t.prune(500), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.from_source(&relay), 1);
        let c = PeerId::random();
        assert!(t.insert(c, relay, ann(&c, 0, 100), vec![], 500).is_err());
        // A leaving peer's withdrawal (expired at once) replaces its entry and is held, and
        // shown in views, until what it withdrew would have expired; then it goes.
        t.insert(b, relay, ann(&b, 600, 0), vec![6], 600).unwrap();
        assert_eq!(t.prune(600), 0);
        assert_eq!(t.signed_of(&[1; 32], 999), vec![vec![6]]);
        assert!(t.announcements().iter().all(|a| !a.is_live(600)));
        // An older copy still going round does not bring the peer back.
        assert!(
            t.insert(b, relay, ann(&b, 500, 1000), vec![5], 700)
                .is_err()
        );
        assert_eq!(t.prune(1000), 1);
        assert!(t.is_empty());
        assert!(t.signed_of(&[1; 32], 1000).is_empty());
        assert_eq!(t.from_source(&relay), 0);
    }
}
