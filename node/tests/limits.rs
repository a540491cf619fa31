//! What strangers can hold on a node, on real hosts over loopback with a [`ShiftRunner`]: a
//! stream must send its (small) first message soon; one peer's unopened streams are capped;
//! one client's session places are capped while another client still gets one; a session's
//! idle limit is a budget for the whole session, so a trickle of messages runs out where a
//! timer per message would never fire; and a pass's scratch memory comes out of
//! `--max-kv-mib`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, StreamProtocol};
use sunswarm_net::{self as net, NetConfig, Network};
use sunswarm_node::compute::{BlockRunner, SessionCache, ShiftRunner};
use sunswarm_node::energy::Mains;
use sunswarm_node::node::{self, NodeConfig, NodeError, RunningNode};
use sunswarm_node::session::SessionLimits;
use sunswarm_protocol::io::{FrameReader, read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, BlockRange, DType, ErrorKind, Forward, Hop, OpenSession, Request,
    Response, SessionId, TensorFrame,
};

const MODEL: [u8; 32] = [5; 32];
const DIM: usize = 4;

fn config(limits: SessionLimits, idle: Duration, max_kv_mib: u32) -> NodeConfig {
    NodeConfig {
        net: NetConfig::default(),
        model_id: MODEL,
        n_layers: 2,
        blocks: BlockRange::new(0, 2).unwrap(),
        backend: "test".into(),
        max_sessions: 6,
        max_tokens: 4096,
        announce_ttl: Duration::from_secs(30),
        gossip_interval: Duration::from_secs(1),
        next_hop_timeout: Duration::from_secs(10),
        idle_timeout: idle,
        limits,
        max_kv_mib,
        batch: Default::default(),
        throughput: 1.0,
    }
}

async fn start(limits: SessionLimits, idle: Duration) -> RunningNode {
    node::start(
        config(limits, idle, 64),
        Arc::new(ShiftRunner {
            dim: DIM,
            shift: 1.0,
        }),
        Arc::new(Mains),
    )
    .await
    .expect("node starts")
}

async fn client(n: &RunningNode) -> Network {
    let cfg = NetConfig {
        listen: Vec::new(),
        bootstrap: n.listen_addrs(),
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

fn open(net: &Network, n: &RunningNode, session: SessionId) -> Request {
    Request::Open(OpenSession {
        session,
        model_id: MODEL,
        route: vec![Hop {
            peer_id: n.peer_id().to_bytes(),
            addrs: n.listen_addrs().iter().map(Multiaddr::to_string).collect(),
            blocks: BlockRange::new(0, 2).unwrap(),
        }],
        hop: 0,
        dtype: DType::F32,
        max_tokens: 64,
        client: net.local_peer_id().to_bytes(),
        token_deadline_us: 0,
        resume: false,
    })
}

fn forward(session: SessionId, step: u32) -> Request {
    Request::Forward(Forward {
        session,
        step,
        position: step,
        hidden: TensorFrame::from_f32(&[1, DIM as u32], &[0.5; DIM], DType::F32).unwrap(),
        receipts: Vec::new(),
        stepwise: false,
        tap: false,
        taps: Vec::new(),
        draw: None,
    })
}

async fn ask(s: &mut libp2p::Stream, req: &Request) -> Response {
    write_message(s, req).await.unwrap();
    read_message(s, &mut Vec::new()).await.unwrap()
}

fn refusal(r: Response) -> (ErrorKind, String) {
    match r {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Opens a one-hop session for `net` and attaches to it; returns (down, outputs).
async fn session(
    net: &Network,
    n: &RunningNode,
    sid: SessionId,
) -> Result<(libp2p::Stream, libp2p::Stream), (ErrorKind, String)> {
    let mut s = stream_to(net, n).await;
    match ask(&mut s, &open(net, n, sid)).await {
        Response::Opened { .. } => {}
        other => return Err(refusal(other)),
    }
    let mut out = stream_to(net, n).await;
    assert_eq!(
        ask(&mut out, &Request::Attach { session: sid }).await,
        Response::Opened { session: sid }
    );
    Ok((s, out))
}

/// Whether a stream was closed by the other side, within `deadline`.
async fn closed_within(s: &mut libp2p::Stream, deadline: Duration) -> bool {
    let mut reader = FrameReader::new();
    matches!(
        tokio::time::timeout(deadline, reader.next::<_, Response>(s)).await,
        Ok(Err(_)) | Ok(Ok(Response::Error(_)))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_oversized_first_message_is_cut_off() {
    let limits = SessionLimits {
        first_frame: Duration::from_millis(500),
        first_frame_bytes: 4096,
        ..SessionLimits::default()
    };
    let n = start(limits, Duration::from_secs(30)).await;
    let net = client(&n).await;
    // Silent: closed once the first-message deadline passes, long before the idle limit.
    let mut silent = stream_to(&net, &n).await;
    let t = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A first frame that claims 60 MiB is refused at its length, nothing buffered.
    let mut big = stream_to(&net, &n).await;
    big.write_all(&(60u32 << 20).to_le_bytes()).await.unwrap();
    big.flush().await.unwrap();
    let (kind, msg) = refusal(read_message(&mut big, &mut Vec::new()).await.unwrap());
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("4096"), "{msg}");
    // An honest session still opens.
    assert!(session(&net, &n, SessionId([1; 16])).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_stream_or_place() {
    let limits = SessionLimits {
        max_pending_streams_per_peer: 4,
        max_sessions_per_peer: 2,
        ..SessionLimits::default()
    };
    let n = start(limits, Duration::from_secs(30)).await;
    let greedy = client(&n).await;
    // Ten unopened streams: four are held, the rest dropped at once.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(stream_to(&greedy, &n).await);
    }
    let mut dropped = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(300)).await {
            dropped += 1;
        }
    }
    assert_eq!(
        dropped, 6,
        "unopened streams past the per-peer cap are dropped"
    );
    drop(held);
    // The node sees the dropped streams end asynchronously; until it does they fill the
    // greedy peer's pending cap and a new stream is dropped. Wait until one gets an answer (an
    // attach to no session), after which every stream opened one at a time finds room.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = stream_to(&greedy, &n).await;
        let attach = Request::Attach {
            session: SessionId([9; 16]),
        };
        if write_message(&mut probe, &attach).await.is_ok()
            && read_message::<_, Response>(&mut probe, &mut Vec::new())
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the dropped streams were never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two places for the greedy client, a third refused with the reason.
    let a = session(&greedy, &n, SessionId([1; 16])).await.unwrap();
    let b = session(&greedy, &n, SessionId([2; 16])).await.unwrap();
    let (kind, msg) = session(&greedy, &n, SessionId([3; 16])).await.unwrap_err();
    assert_eq!(kind, ErrorKind::Busy);
    assert!(msg.contains("one peer"), "{msg}");
    // Another client still gets a place, and the greedy one gets one back when it frees one.
    let other = client(&n).await;
    assert!(session(&other, &n, SessionId([4; 16])).await.is_ok());
    drop(a);
    let until = Instant::now() + Duration::from_secs(10);
    while session(&greedy, &n, SessionId([5; 16])).await.is_err() {
        assert!(Instant::now() < until, "the freed place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_limit_is_a_budget_for_the_whole_session() {
    // Budget 2 s, each token earns back 0.5 s; a message every 1.2 s never waits 2 s at once,
    // but spends 0.7 s more than it earns each time: the third wait runs out.
    let limits = SessionLimits {
        idle_per_token: Duration::from_millis(500),
        ..SessionLimits::default()
    };
    let n = start(limits, Duration::from_secs(2)).await;
    let net = client(&n).await;
    let sid = SessionId([9; 16]);
    let (mut down, mut out) = session(&net, &n, sid).await.unwrap();
    let mut reader = FrameReader::new();
    let mut down_reader = FrameReader::new();
    let mut served = 0;
    let t0 = Instant::now();
    for step in 0..6u32 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if write_message(&mut down, &forward(sid, step)).await.is_err() {
            break;
        }
        tokio::select! {
            r = reader.next::<_, Response>(&mut out) => match r {
                Ok(Response::Hidden { .. }) => served += 1,
                _ => break,
            },
            r = down_reader.next::<_, Response>(&mut down) => {
                let (kind, msg) = refusal(r.unwrap());
                assert_eq!(kind, ErrorKind::Timeout, "{msg}");
                break;
            }
        }
    }
    assert!(
        (1..=3).contains(&served),
        "served {served} trickled steps in {:?}",
        t0.elapsed()
    );
    // A session that keeps sending does not run out, however long it lives.
    let sid = SessionId([8; 16]);
    let (mut down, mut out) = session(&net, &n, sid).await.unwrap();
    let mut reader = FrameReader::new();
    for step in 0..12u32 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        write_message(&mut down, &forward(sid, step)).await.unwrap();
        assert!(matches!(
            reader.next::<_, Response>(&mut out).await.unwrap(),
            Response::Hidden { .. }
        ));
    }
}

/// A runner whose passes need 10 MiB of scratch memory.
struct Scratchy(ShiftRunner);

impl BlockRunner for Scratchy {
    fn hidden_size(&self) -> usize {
        self.0.hidden_size()
    }
    fn kv_bytes_per_token(&self) -> usize {
        1024
    }
    fn new_session(&self) -> Box<dyn SessionCache> {
        self.0.new_session()
    }
    fn scratch_bytes(&self, _tokens: usize, _context: usize) -> usize {
        10 << 20
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_memory_comes_out_of_the_kv_budget() {
    let runner = || {
        Arc::new(Scratchy(ShiftRunner {
            dim: DIM,
            shift: 1.0,
        }))
    };
    // 8 MiB cannot even hold one pass.
    let too_small = node::start(
        config(SessionLimits::default(), Duration::from_secs(30), 8),
        runner(),
        Arc::new(Mains),
    )
    .await;
    assert!(matches!(too_small, Err(NodeError::Memory { .. })));
    // 12 MiB leaves 2 MiB for caches: a 64-token session (64 KiB) fits, one of 4096 (4 MiB)
    // would have fit in the whole budget but not beside the scratch.
    let n = node::start(
        config(SessionLimits::default(), Duration::from_secs(30), 12),
        runner(),
        Arc::new(Mains),
    )
    .await
    .unwrap();
    let net = client(&n).await;
    assert!(session(&net, &n, SessionId([1; 16])).await.is_ok());
    let mut big = open(&net, &n, SessionId([2; 16]));
    if let Request::Open(o) = &mut big {
        o.max_tokens = 4096;
    }
    let mut s = stream_to(&net, &n).await;
    let (kind, msg) = refusal(ask(&mut s, &big).await);
    assert_eq!(kind, ErrorKind::Busy);
    assert!(msg.contains("KiB"), "{msg}");
}
