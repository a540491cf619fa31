//! Finding the peers of one model: walk the DHT from block 0 (providers of each block key where a
//! route could stand, then each provider's announcement record), and merge the announcements
//! gossiped since (newer energy state wins). Only announcements signed or stored for this model
//! id, naming the peer they came from, are kept; liveness is checked later by the route choice
//! (the client) or the range choice (`swarm-node --blocks auto`), which both call [`discover`].

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use libp2p::PeerId;
use sunswarm_protocol::{Announcement, ModelDigest, codec, dht};
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
        for (peer, recs) in new.iter().zip(records) {
            if let Some(a) = newest(peer, model_id, &recs?) {
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
    for g in net.gossip_view().await? {
        if &g.model_id != model_id {
            continue;
        }
        let newer = found
            .get(&g.peer_id)
            .is_none_or(|old| old.timestamp_ms < g.timestamp_ms);
        if newer {
            found.insert(g.peer_id.clone(), g);
        }
    }
    Ok(found.into_values().collect())
}

/// The newest valid announcement among DHT record copies, if it is `peer`'s own for this model.
fn newest(peer: &PeerId, model_id: &ModelDigest, records: &[Vec<u8>]) -> Option<Announcement> {
    let me = peer.to_bytes();
    records
        .iter()
        .filter_map(|r| codec::decode::<Announcement>(r).ok())
        .filter(|a| a.peer_id == me && &a.model_id == model_id)
        .max_by_key(|a| a.timestamp_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::{BlockRange, EnergyState};

    fn ann(peer: &PeerId, model: u8, ts: u64) -> Vec<u8> {
        codec::encode(&Announcement {
            peer_id: peer.to_bytes(),
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
        })
        .unwrap()
    }

    #[test]
    fn newest_record_of_the_right_peer_and_model_wins() {
        let p = PeerId::random();
        let other = PeerId::random();
        let recs = vec![
            ann(&p, 1, 5),
            ann(&p, 1, 9),
            ann(&p, 2, 20),
            ann(&other, 1, 30),
            b"junk".to_vec(),
        ];
        assert_eq!(newest(&p, &[1; 32], &recs).unwrap().timestamp_ms, 9);
        assert!(newest(&p, &[3; 32], &recs).is_none());
    }
}
