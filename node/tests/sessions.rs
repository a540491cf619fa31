//! Source-routed sessions over three in-process nodes on loopback, each running a [`ShiftRunner`]
//! with its own shift, so the output proves which hops ran, in order, with the right cache
//! positions. Also: every refusal names its reason (wrong model, wrong blocks, wrong peer, lost
//! position, other protocol version), and the node stays up for an honest session afterwards.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, StreamProtocol};
use sunswarm_node::compute::ShiftRunner;
use sunswarm_node::energy::Mains;
use sunswarm_node::net::{self, NetConfig, Network};
use sunswarm_node::node::{self, NodeConfig, RunningNode};
use sunswarm_protocol::io::{read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, BlockRange, DType, ErrorKind, Forward, Hop, OpenSession, Request,
    Response, SessionId, TensorFrame,
};

const MODEL: [u8; 32] = [3; 32];
const DIM: usize = 4;
const SHIFTS: [f32; 3] = [1.0, 10.0, 100.0];

async fn start(i: usize, bootstrap: Vec<Multiaddr>) -> RunningNode {
    let cfg = NodeConfig {
        net: NetConfig {
            bootstrap,
            ..NetConfig::default()
        },
        model_id: MODEL,
        n_layers: 6,
        blocks: BlockRange::new(2 * i as u32, 2 * i as u32 + 2).unwrap(),
        backend: "test".into(),
        max_sessions: 4,
        max_tokens: 64,
        announce_ttl: Duration::from_secs(30),
        gossip_interval: Duration::from_secs(1),
        next_hop_timeout: Duration::from_secs(10),
        throughput: 1.0,
    };
    node::start(
        cfg,
        Arc::new(ShiftRunner {
            dim: DIM,
            shift: SHIFTS[i],
        }),
        Arc::new(Mains),
    )
    .await
    .expect("node starts")
}

fn hop(n: &RunningNode, i: u32) -> Hop {
    Hop {
        peer_id: n.peer_id().to_bytes(),
        addrs: n.listen_addrs().iter().map(Multiaddr::to_string).collect(),
        blocks: BlockRange::new(2 * i, 2 * i + 2).unwrap(),
    }
}

async fn client(first: &RunningNode) -> Network {
    let cfg = NetConfig {
        listen: Vec::new(),
        bootstrap: first.listen_addrs(),
        dht_server: false,
        ..NetConfig::default()
    };
    let (net, ev) = net::new(cfg).unwrap();
    tokio::spawn(ev.run());
    net.wait_ready(true, Duration::from_secs(30)).await.unwrap();
    net
}

async fn stream_to(net: &Network, n: &RunningNode) -> libp2p::Stream {
    net.add_addresses(n.peer_id(), n.listen_addrs())
        .await
        .unwrap();
    net.control()
        .open_stream(n.peer_id(), StreamProtocol::new(ACTIVATIONS_PROTOCOL))
        .await
        .unwrap()
}

async fn ask(s: &mut libp2p::Stream, req: &Request) -> Response {
    write_message(s, req).await.unwrap();
    read_message(s, &mut Vec::new()).await.unwrap()
}

fn forward(session: SessionId, step: u32, position: u32, rows: &[f32]) -> Request {
    let n = (rows.len() / DIM) as u32;
    Request::Forward(Forward {
        session,
        step,
        position,
        hidden: TensorFrame::from_f32(&[n, DIM as u32], rows, DType::F32).unwrap(),
    })
}

fn open(session: SessionId, route: Vec<Hop>, model_id: [u8; 32]) -> Request {
    Request::Open(OpenSession {
        session,
        model_id,
        route,
        hop: 0,
        dtype: DType::F32,
        max_tokens: 32,
    })
}

fn refusal(r: Response) -> (ErrorKind, u16, String) {
    match r {
        Response::Error(e) => (e.kind, e.hop, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_run_in_order_and_refusals_name_their_reason() {
    let a = start(0, vec![]).await;
    let b = start(1, a.listen_addrs()).await;
    let c = start(2, a.listen_addrs()).await;
    let route = vec![hop(&a, 0), hop(&b, 1), hop(&c, 2)];
    let net = client(&a).await;

    // Honest session: prefill 2 tokens, then 2 decode steps.
    let sid = SessionId([1; 16]);
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        ask(&mut s, &open(sid, route.clone(), MODEL)).await,
        Response::Opened { session: sid }
    );
    let total: f32 = SHIFTS.iter().sum();
    let mut pos = 0u32;
    for (step, n_tokens) in [2usize, 1, 1].into_iter().enumerate() {
        let input: Vec<f32> = (0..n_tokens * DIM).map(|i| i as f32).collect();
        match ask(&mut s, &forward(sid, step as u32, pos, &input)).await {
            Response::Hidden {
                session,
                step: st,
                hidden,
                timings,
            } => {
                assert_eq!((session, st), (sid, step as u32));
                let (n, out) = hidden.to_hidden(DIM).unwrap();
                assert_eq!(n, n_tokens);
                for (i, v) in out.iter().enumerate() {
                    let p = pos as f32 + (i / DIM) as f32;
                    // Each of 3 hops adds its shift + 0.5 * position.
                    assert_eq!(
                        *v,
                        input[i] + total + 3.0 * 0.5 * p,
                        "step {step} element {i}"
                    );
                }
                assert_eq!(
                    timings.iter().map(|t| t.hop).collect::<Vec<_>>(),
                    vec![0, 1, 2]
                );
                assert!(
                    timings.windows(2).all(|w| w[0].total_us >= w[1].total_us),
                    "{timings:?}"
                );
            }
            other => panic!("step {step}: {other:?}"),
        }
        pos += n_tokens as u32;
    }
    // A replayed (lost) position is refused by the first hop instead of corrupting its cache.
    let (kind, hop_i, msg) = refusal(ask(&mut s, &forward(sid, 3, 1, &[0.0; DIM])).await);
    assert_eq!((kind, hop_i), (ErrorKind::BadRequest, 0));
    assert!(
        msg.contains("position 1") && msg.contains("holds 4"),
        "{msg}"
    );

    // Wrong model id.
    let mut s = stream_to(&net, &a).await;
    let (kind, _, msg) =
        refusal(ask(&mut s, &open(SessionId([2; 16]), route.clone(), [9; 32])).await);
    assert_eq!(kind, ErrorKind::WrongModel, "{msg}");

    // The third hop is asked for blocks it does not serve: its refusal travels back with its index.
    let mut bad = route.clone();
    bad[1].blocks = BlockRange::new(2, 3).unwrap();
    bad[2].blocks = BlockRange::new(3, 6).unwrap();
    let mut s = stream_to(&net, &a).await;
    let (kind, hop_i, msg) = refusal(ask(&mut s, &open(SessionId([3; 16]), bad, MODEL)).await);
    assert_eq!((kind, hop_i), (ErrorKind::WrongBlocks, 1), "{msg}");

    // A route naming another peer at this hop.
    let mut swapped = route.clone();
    swapped[0].peer_id = b.peer_id().to_bytes();
    let mut s = stream_to(&net, &a).await;
    let (kind, _, msg) = refusal(ask(&mut s, &open(SessionId([4; 16]), swapped, MODEL)).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("another peer"), "{msg}");

    // Another protocol version: answered, not guessed at.
    let mut s = stream_to(&net, &a).await;
    let mut frame = 3u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[9, 0, 0]);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    let (kind, _, _) = refusal(read_message(&mut s, &mut Vec::new()).await.unwrap());
    assert_eq!(kind, ErrorKind::VersionMismatch);

    // The node is still up: a fresh honest session works.
    let sid = SessionId([5; 16]);
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        ask(&mut s, &open(sid, route.clone(), MODEL)).await,
        Response::Opened { session: sid }
    );
    assert!(matches!(
        ask(&mut s, &forward(sid, 0, 0, &[0.0; DIM])).await,
        Response::Hidden { .. }
    ));
    assert_eq!(
        ask(&mut s, &Request::Close { session: sid }).await,
        Response::Closed { session: sid }
    );

    for n in [c, b, a] {
        n.leave().await;
    }
}
