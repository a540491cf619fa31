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

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use libp2p::PeerId;
use sunswarm_protocol::{Announcement, ModelDigest, dht};
use tracing::debug;

use crate::host::{NetError, Network};

/// Every announcement found for `model_id`, newest per peer.
pub async fn discover(
    net: &Network,
    model_id: &ModelDigest,
    n_layers: u32,
) -> Result<Vec<Announcement>, NetError> {
    let mut found: HashMap<Vec<u8>, Announcement> = HashMap::new();
    let mut asked: HashSet<PeerId> = HashSet::new();
    let mut explored: HashSet<u32> = HashSet::new();
    let mut frontier = vec![0u32];
    while let Some(b) = frontier.pop() {
        if b >= n_layers || !explored.insert(b) {
            continue;
        }
        let providers = net.get_providers(dht::block_key(model_id, b)).await?;
        let new: Vec<PeerId> = providers.into_iter().filter(|p| asked.insert(*p)).collect();
        let records = join_all(
            new.iter()
                .map(|p| net.get_records(dht::peer_record_key(model_id, &p.to_bytes()))),
        )
        .await;
        let now = crate::now_ms();
        for (peer, recs) in new.iter().zip(records) {
            if let Some(a) = newest(peer, model_id, &recs?, now) {
                found.insert(a.peer_id.clone(), a);
            }
        }
        debug!(block = b, peers = found.len(), "explored");
        // Wherever a known range ends, a route may stand next.
        frontier.extend(
            found
                .values()
                .filter(|a| a.blocks.start <= b)
                .map(|a| a.blocks.end),
        );
    }
    merge_gossip(&mut found, net.gossip_view().await?, model_id);
    Ok(found.into_values().collect())
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
