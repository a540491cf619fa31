//! The gossip flood of `flood-gossip`: valid announcements under as many fresh keys as asked,
//! each in a gossipsub message signed by its own key, written straight onto a gossipsub stream
//! to each victim. gossipsub's own `publish` signs with the host's one key, so a peer that
//! publishes under many keys speaks the wire protocol itself: a length-prefixed protobuf `RPC`
//! whose `publish` field carries the messages (`from`, `data`, `seqno`, `topic`, `signature`,
//! signed over `libp2p-pubsub:` and the message without its signature, as gossipsub checks it).

use futures::AsyncWriteExt;
use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol};
use sunswarm_net::Network;
use sunswarm_protocol::{Announcement, BlockRange, EnergyState, ModelDigest, codec, dht};

/// The gossipsub version every Sunswarm host speaks.
const MESHSUB: &str = "/meshsub/1.1.0";
/// Messages per RPC: about 500 bytes each, under the hosts' 64 KiB transmit limit.
const PER_RPC: usize = 80;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A length-delimited protobuf field.
fn field(tag: u64, data: &[u8], out: &mut Vec<u8>) {
    varint((tag << 3) | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// One signed gossipsub message (protobuf `Message`) from `key` on `topic`.
pub fn message(key: &Keypair, topic: &str, seqno: u64, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut unsigned = Vec::with_capacity(data.len() + 128);
    field(1, &key.public().to_peer_id().to_bytes(), &mut unsigned);
    field(2, data, &mut unsigned);
    field(3, &seqno.to_be_bytes(), &mut unsigned);
    field(4, topic.as_bytes(), &mut unsigned);
    let mut to_sign = b"libp2p-pubsub:".to_vec();
    to_sign.extend_from_slice(&unsigned);
    let signature = key.sign(&to_sign)?;
    let mut msg = unsigned;
    field(5, &signature, &mut msg);
    Ok(msg)
}

/// The frames (varint length + protobuf `RPC`) of `keys` announcements of made-up peers
/// serving `blocks` of `model`, each valid and signed by its own fresh key.
pub fn frames(
    model: &ModelDigest,
    n_layers: u32,
    blocks: BlockRange,
    keys: usize,
    now_ms: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let topic = dht::energy_topic(model);
    let mut frames = Vec::new();
    let mut rpc = Vec::new();
    for i in 0..keys {
        let key = Keypair::generate_ed25519();
        let ann = Announcement {
            peer_id: key.public().to_peer_id().to_bytes(),
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 1 + i % 60_000)],
            model_id: *model,
            n_layers,
            blocks,
            backend: "cpu".into(),
            throughput: 1e6,
            max_sessions: 64,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: now_ms,
            expires_ms: now_ms + sunswarm_protocol::limits::MAX_ANNOUNCE_TTL_MS,
        };
        let data = codec::encode(&sunswarm_net::announce::sign(&key, ann)?)?;
        field(2, &message(&key, &topic, i as u64, &data)?, &mut rpc);
        if (i + 1) % PER_RPC == 0 || i + 1 == keys {
            let mut frame = Vec::with_capacity(rpc.len() + 4);
            varint(rpc.len() as u64, &mut frame);
            frame.append(&mut rpc);
            frames.push(frame);
        }
    }
    Ok(frames)
}

/// Writes `frames` onto a fresh gossipsub stream to `victim`; returns the stream, which the
/// caller holds open a while (one closed at once may be dropped before the victim reads it).
pub async fn send(
    net: &Network,
    victim: PeerId,
    frames: &[Vec<u8>],
) -> anyhow::Result<libp2p::Stream> {
    let mut s = net
        .control()
        .open_stream(victim, StreamProtocol::new(MESHSUB))
        .await
        .map_err(|e| anyhow::anyhow!("gossip stream to {victim}: {e}"))?;
    for f in frames {
        s.write_all(f).await?;
    }
    s.flush().await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use sunswarm_net::{NetConfig, gossip};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_under_many_keys_fills_one_quota_and_nothing_more() {
        let (victim, ev) = sunswarm_net::new(NetConfig::default()).unwrap();
        tokio::spawn(ev.run());
        let addrs = victim
            .wait_ready(false, Duration::from_secs(10))
            .await
            .unwrap();
        let model = [3; 32];
        victim.subscribe(dht::energy_topic(&model)).await.unwrap();
        let (hostile, ev) = sunswarm_net::new(NetConfig {
            bootstrap: addrs
                .iter()
                .map(|a| a.clone().with_p2p(victim.local_peer_id()).unwrap())
                .collect(),
            ..NetConfig::default()
        })
        .unwrap();
        tokio::spawn(ev.run());
        hostile
            .wait_ready(true, Duration::from_secs(10))
            .await
            .unwrap();
        let keys = gossip::MAX_PER_SOURCE + 500;
        let block = BlockRange::new(0, 4).unwrap();
        let f = frames(&model, 4, block, keys, sunswarm_net::now_ms()).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let mut held = Vec::new();
        loop {
            // Sent again until it all arrived: the victim keeps one gossip stream per
            // connection, and the hostile host's own gossipsub may open one that replaces ours
            // (what was cut off was never seen, so it is not dropped as a duplicate).
            held.push(send(&hostile, victim.local_peer_id(), &f).await.unwrap());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let st = victim.stats().await.unwrap();
            if st.gossip_entries + st.gossip_ignored as usize >= keys {
                // Every message arrived and verified; one source's quota was kept.
                assert_eq!(st.gossip_entries, gossip::MAX_PER_SOURCE, "{st:?}");
                assert_eq!(st.gossip_rejected, 0, "{st:?}");
                break;
            }
            assert!(Instant::now() < until, "the flood never arrived: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
