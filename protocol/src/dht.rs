//! DHT keys and gossip topics. Keys are blake3 hashes with a domain-separation prefix, so a key
//! for one purpose can never collide with another's, and peers of different model ids (different
//! weights) never meet under the same key.

use crate::ModelDigest;

/// Kademlia provider key for one block of one model: a node provides the key of every block it
/// serves, and a client asks for the providers of the block its route has reached.
pub fn block_key(model_id: &ModelDigest, block: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"sunswarm/dht/block/1");
    h.update(model_id);
    h.update(&block.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Kademlia record key under which a node stores its [`crate::Announcement`] for a model.
pub fn peer_record_key(model_id: &ModelDigest, peer_id: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"sunswarm/dht/peer/1");
    h.update(model_id);
    h.update(&(peer_id.len() as u32).to_le_bytes());
    h.update(peer_id);
    *h.finalize().as_bytes()
}

/// Kademlia provider key of relays: peers started with `--relay-server` provide it, and a peer
/// that cannot be dialled from outside looks for a relay under it (every model's swarm shares
/// them).
pub fn relay_key() -> [u8; 32] {
    *blake3::hash(b"sunswarm/dht/relay/1").as_bytes()
}

/// Gossipsub topic on which the nodes of one model publish their announcements with fresh
/// energy state.
pub fn energy_topic(model_id: &ModelDigest) -> String {
    format!("sunswarm/energy/1/{}", crate::hex(model_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_differ_by_model_block_and_purpose() {
        let mut seen = HashSet::new();
        for m in 0..4u8 {
            for b in 0..64 {
                assert!(seen.insert(block_key(&[m; 32], b)));
            }
            assert!(seen.insert(peer_record_key(&[m; 32], &[1, 2, 3])));
            assert!(seen.insert(peer_record_key(&[m; 32], &[1, 2])));
        }
    }

    #[test]
    fn keys_are_stable() {
        // Peers built from different checkouts must agree on keys: pin the derivation.
        assert_eq!(block_key(&[0; 32], 0), block_key(&[0; 32], 0));
        let expected = {
            let mut v = b"sunswarm/dht/block/1".to_vec();
            v.extend_from_slice(&[7; 32]);
            v.extend_from_slice(&3u32.to_le_bytes());
            *blake3::hash(&v).as_bytes()
        };
        assert_eq!(block_key(&[7; 32], 3), expected);
    }

    #[test]
    fn topic_names_the_model() {
        let t = energy_topic(&[0xab; 32]);
        assert!(t.starts_with("sunswarm/energy/1/abab"));
        assert_ne!(t, energy_topic(&[0xac; 32]));
    }
}
