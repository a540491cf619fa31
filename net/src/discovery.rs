//! Finding the peers of one model: walk the DHT from block 0 (providers of each block key where a
//! route could stand, then each provider's announcement record), and merge the announcements
//! gossiped since (newer energy state wins). Only announcements signed by the peer they describe,
//! for this model id, found under that peer's key and not from the future, are kept; liveness is
//! checked later by the route choice (the client) or the range choice (`swarm-node --blocks
//! auto`), which both call [`discover`].
//!
//! Gossip only refreshes peers the DHT walk found: anyone can publish announcements under as
//! many fresh keys as they like, while a provider key is stored only by the peer it names (one
//! connection each), so a flood of made-up peers on gossip never becomes a route.
//!
//! A provider whose live announcement gossip already brought (signed by it, like its record) is
//! taken from there: its record is not fetched. In a big swarm a walk that fetched every
//! provider's record grew with the replicas of each block (the route choice at 30 peers took
//! 3.3 times what it took at 10); [`discover_sampled`] also caps the fetches per block.
//!
//! The walk runs in waves: the provider lookups of every block where a known range ends run at
//! once, then the record lookups of every provider found, and the ranges found give the next
//! wave. A client that asked its connected nodes for their views ([`discover_heard`]) knows
//! every range before it starts, so one wave usually covers the model: at 100 peers the walk
//! took six waves one after another, one per range.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};

use futures::future::join_all;
use libp2p::PeerId;
use rand::seq::SliceRandom;
use sunswarm_protocol::{Announcement, ModelDigest, dht};
use tracing::debug;

use crate::host::{NetError, Network};

/// Every announcement found for `model_id`, newest per peer.
pub async fn discover(
    net: &Network,
    model_id: &ModelDigest,
    n_layers: u32,
) -> Result<Vec<Announcement>, NetError> {
    discover_sampled(net, model_id, n_layers, usize::MAX).await
}

/// [`discover`], fetching the records of at most `records_per_block` of each explored block's
/// providers that gossip has not brought (a random sample; the others are left to later walks
/// and to gossip). A client choosing a route needs some live peers of every range, not all of
/// them; a node counting replicas (`--blocks auto`) needs all, and calls [`discover`].
pub async fn discover_sampled(
    net: &Network,
    model_id: &ModelDigest,
    n_layers: u32,
    records_per_block: usize,
) -> Result<Vec<Announcement>, NetError> {
    discover_heard(net, model_id, n_layers, records_per_block, Vec::new()).await
}

/// [`discover_sampled`], with announcements `heard` from peers besides gossip (the views of
/// connected nodes, [`crate::view`]). Only peers that the DHT names as providers of a block are
/// returned, whatever was heard: a peer needs a provider entry to be routable, and a flood of
/// made-up announcements has none. What was heard saves the record lookups of the providers it
/// describes, and its ranges tell the walk every block where a range starts, so the provider
/// lookups of all of them run at once instead of one range after another.
pub async fn discover_heard(
    net: &Network,
    model_id: &ModelDigest,
    n_layers: u32,
    records_per_block: usize,
    heard: Vec<Announcement>,
) -> Result<Vec<Announcement>, NetError> {
    let now = crate::now_ms();
    let gossip = net.gossip_view().await?;
    // The newest word of each peer, a withdrawal included: a peer whose newest word is that it
    // left is not routable, whatever older copy of its announcement some table still holds.
    let newest_heard = newest_per_peer(
        gossip
            .iter()
            .chain(&heard)
            .filter(|a| &a.model_id == model_id),
    );
    let (live_heard, gone): (HashMap<_, _>, HashMap<_, _>) =
        newest_heard.into_iter().partition(|(_, a)| a.is_live(now));
    let mut found: HashMap<Vec<u8>, Announcement> = HashMap::new();
    let mut asked: HashSet<PeerId> = HashSet::new();
    let mut explored: HashSet<u32> = HashSet::new();
    // Wherever a range starts, a route may stand: block 0, and the end of every known range.
    let mut frontier: BTreeSet<u32> = std::iter::once(0)
        .chain(live_heard.values().map(|a| a.blocks.end))
        .collect();
    let mut fetched = 0usize;
    let mut waves = 0usize;
    loop {
        let wave: Vec<u32> = std::mem::take(&mut frontier)
            .into_iter()
            .filter(|&b| b < n_layers && explored.insert(b))
            .collect();
        if wave.is_empty() {
            break;
        }
        waves += 1;
        let lookups = join_all(
            wave.iter()
                .map(|&b| net.get_providers(dht::block_key(model_id, b))),
        )
        .await;
        let mut fetch_all = Vec::new();
        for providers in lookups {
            let new: Vec<PeerId> = providers?
                .into_iter()
                .filter(|p| !asked.contains(p) && !gone.contains_key(&p.to_bytes()))
                .collect();
            let (known, fetch) = split_providers(new, &live_heard, records_per_block);
            for (peer, ann) in known {
                asked.insert(peer);
                found.insert(ann.peer_id.clone(), ann.clone());
            }
            asked.extend(fetch.iter().copied());
            fetch_all.extend(fetch);
        }
        fetched += fetch_all.len();
        let records = join_all(
            fetch_all
                .iter()
                .map(|p| net.get_records(dht::peer_record_key(model_id, &p.to_bytes()))),
        )
        .await;
        let now = crate::now_ms();
        for (peer, recs) in fetch_all.iter().zip(records) {
            if let Some(a) = newest(peer, model_id, &recs?, now) {
                found.insert(a.peer_id.clone(), a);
            }
        }
        debug!(blocks = ?wave, peers = found.len(), "explored");
        frontier.extend(found.values().map(|a| a.blocks.end));
    }
    debug!(
        peers = found.len(),
        fetched,
        blocks = explored.len(),
        waves,
        heard = heard.len(),
        "discovery walk"
    );
    merge_gossip(&mut found, gossip, model_id);
    merge_gossip(&mut found, heard, model_id);
    Ok(found.into_values().collect())
}

/// Splits a block's new providers into those whose live announcement gossip holds (with it) and
/// those whose record is to be fetched: at most `limit` of them, drawn at random.
fn split_providers<'a>(
    providers: Vec<PeerId>,
    gossip: &HashMap<Vec<u8>, &'a Announcement>,
    limit: usize,
) -> (Vec<(PeerId, &'a Announcement)>, Vec<PeerId>) {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for p in providers {
        match gossip.get(&p.to_bytes()) {
            Some(a) => known.push((p, *a)),
            None => unknown.push(p),
        }
    }
    if unknown.len() > limit {
        unknown.shuffle(&mut rand::rng());
        unknown.truncate(limit);
    }
    (known, unknown)
}

/// The newest of each peer's announcements (by timestamp; a withdrawal counts), keyed by peer.
pub(crate) fn newest_per_peer<A: Borrow<Announcement>>(
    anns: impl IntoIterator<Item = A>,
) -> HashMap<Vec<u8>, A> {
    let mut newest: HashMap<Vec<u8>, A> = HashMap::new();
    for a in anns {
        let held = newest.get(&a.borrow().peer_id);
        if held.is_none_or(|old| old.borrow().timestamp_ms < a.borrow().timestamp_ms) {
            newest.insert(a.borrow().peer_id.clone(), a);
        }
    }
    newest
}

/// Replaces a found peer's announcement with a newer gossiped one of the same model (the
/// gossip table only holds verified announcements). Peers the DHT did not show are left out.
fn merge_gossip(
    found: &mut HashMap<Vec<u8>, Announcement>,
    gossip: Vec<Announcement>,
    model_id: &ModelDigest,
) {
    for g in gossip {
        if &g.model_id != model_id {
            continue;
        }
        if let Some(old) = found.get_mut(&g.peer_id)
            && old.timestamp_ms < g.timestamp_ms
        {
            *old = g;
        }
    }
}

/// The newest valid announcement among DHT record copies, if it is `peer`'s own, signed, for
/// this model.
fn newest(
    peer: &PeerId,
    model_id: &ModelDigest,
    records: &[Vec<u8>],
    now_ms: u64,
) -> Option<Announcement> {
    let me = peer.to_bytes();
    let key = dht::peer_record_key(model_id, &me);
    records
        .iter()
        .filter_map(|r| crate::announce::decode_record(&key, r, now_ms).ok())
        .filter(|a| a.peer_id == me && &a.model_id == model_id)
        .max_by_key(|a| a.timestamp_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use sunswarm_protocol::{BlockRange, EnergyState, codec};

    fn ann_of(key: &Keypair, model: u8, ts: u64) -> Announcement {
        Announcement {
            peer_id: key.public().to_peer_id().to_bytes(),
            addrs: vec![],
            model_id: [model; 32],
            n_layers: 4,
            blocks: BlockRange { start: 0, end: 4 },
            backend: "cpu".into(),
            throughput: 1.0,
            max_sessions: 1,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: ts,
            expires_ms: ts + 10,
        }
    }

    fn ann(key: &Keypair, model: u8, ts: u64) -> Vec<u8> {
        codec::encode(&crate::announce::sign(key, ann_of(key, model, ts)).unwrap()).unwrap()
    }

    #[test]
    fn newest_signed_record_of_the_right_peer_and_model_wins() {
        let k = Keypair::generate_ed25519();
        let p = k.public().to_peer_id();
        let other = Keypair::generate_ed25519();
        // In p's name but signed by another key, and newer: a forgery.
        let forged = crate::announce::sign(&other, ann_of(&k, 1, 40)).unwrap();
        let recs = vec![
            ann(&k, 1, 5),
            ann(&k, 1, 9),
            ann(&k, 2, 20),
            ann(&other, 1, 30),
            codec::encode(&forged).unwrap(),
            // From the future.
            ann(&k, 1, 1_000_000),
            b"junk".to_vec(),
        ];
        assert_eq!(newest(&p, &[1; 32], &recs, 100).unwrap().timestamp_ms, 9);
        assert!(newest(&p, &[3; 32], &recs, 100).is_none());
    }

    #[test]
    fn providers_known_from_gossip_are_not_fetched_and_the_rest_are_sampled() {
        let keys: Vec<Keypair> = (0..6).map(|_| Keypair::generate_ed25519()).collect();
        let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        let gossiped: Vec<Announcement> = keys[..2].iter().map(|k| ann_of(k, 1, 5)).collect();
        let gossip: HashMap<Vec<u8>, &Announcement> =
            gossiped.iter().map(|a| (a.peer_id.clone(), a)).collect();
        let (known, fetch) = split_providers(peers.clone(), &gossip, 3);
        let known: HashSet<PeerId> = known.iter().map(|(p, _)| *p).collect();
        assert_eq!(known, peers[..2].iter().copied().collect());
        assert_eq!(fetch.len(), 3);
        assert!(fetch.iter().all(|p| peers[2..].contains(p)));
        let distinct: HashSet<&PeerId> = fetch.iter().collect();
        assert_eq!(distinct.len(), 3);
        // Without a cap every unknown provider is fetched.
        let (_, all) = split_providers(peers.clone(), &gossip, usize::MAX);
        assert_eq!(all.len(), 4);
        // Random, not always the same three.
        let draws: HashSet<Vec<PeerId>> = (0..50)
            .map(|_| {
                let (_, mut f) = split_providers(peers.clone(), &gossip, 1);
                f.sort();
                f
            })
            .collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn gossip_refreshes_known_peers_only() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut found = HashMap::new();
        let old = ann_of(&a, 1, 5);
        found.insert(old.peer_id.clone(), old);
        let fresh = ann_of(&a, 1, 7);
        let stranger = ann_of(&b, 1, 7);
        let other_model = ann_of(&a, 2, 9);
        merge_gossip(&mut found, vec![fresh, stranger, other_model], &[1; 32]);
        assert_eq!(found.len(), 1);
        assert_eq!(found.values().next().unwrap().timestamp_ms, 7);
    }
}
