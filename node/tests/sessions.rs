//! Source-routed sessions over three in-process nodes on loopback, each running a [`ShiftRunner`]
//! with its own shift, so the output proves which hops ran, in order, with the right cache
//! positions. Also: every refusal names its reason (wrong model, wrong blocks, wrong peer, lost
//! position, other protocol version, an attach by a stranger), and the node stays up for an
//! honest session afterwards.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, StreamProtocol};
use std::sync::atomic::{AtomicBool, Ordering};
use sunswarm_net::{self as net, NetConfig, Network};
use sunswarm_node::compute::ShiftRunner;
use sunswarm_node::energy::Mains;
use sunswarm_node::node::{self, NodeConfig, RunningNode};
use sunswarm_protocol::io::{FrameReader, read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, BlockRange, DType, ErrorKind, Forward, Hop, OpenSession,
    PROTOCOL_VERSION, Request, Response, SessionId, TensorFrame, TokenDraw, codec,
};

const MODEL: [u8; 32] = [3; 32];
const DIM: usize = 4;
const SHIFTS: [f32; 3] = [1.0, 10.0, 100.0];
/// Short, so the idle-session test is quick; honest sessions here never pause that long.
const IDLE: Duration = Duration::from_secs(2);

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
        max_tokens: 4096,
        announce_ttl: Duration::from_secs(30),
        gossip_interval: Duration::from_secs(1),
        next_hop_timeout: Duration::from_secs(10),
        idle_timeout: IDLE,
        limits: Default::default(),
        max_kv_mib: 64,
        batch: Default::default(),
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

/// A client's side of an open session: the stream to the first hop (forwards down, errors up)
/// and the stream attached to the last hop (outputs).
struct Client {
    first: libp2p::Stream,
    first_reader: FrameReader,
    outputs: libp2p::Stream,
    outputs_reader: FrameReader,
}

impl Client {
    /// Sends `opening` to `first`, then attaches to `last`; panics unless both are accepted.
    async fn open(
        net: &Network,
        first: &RunningNode,
        last: &RunningNode,
        opening: &Request,
    ) -> Self {
        let Request::Open(o) = opening else {
            panic!("not an open")
        };
        let sid = o.session;
        let mut s = stream_to(net, first).await;
        assert_eq!(
            ask(&mut s, opening).await,
            Response::Opened { session: sid }
        );
        let mut out = stream_to(net, last).await;
        assert_eq!(
            ask(&mut out, &Request::Attach { session: sid }).await,
            Response::Opened { session: sid }
        );
        Client {
            first: s,
            first_reader: FrameReader::new(),
            outputs: out,
            outputs_reader: FrameReader::new(),
        }
    }

    /// Sends `req` down the route; the answer is the last hop's output or a refusal from up it.
    async fn ask(&mut self, req: &Request) -> Response {
        write_message(&mut self.first, req).await.unwrap();
        tokio::select! {
            r = self.first_reader.next(&mut self.first) => r.unwrap(),
            r = self.outputs_reader.next(&mut self.outputs) => match r {
                Ok(r) => r,
                // A refused forward ends the session on every hop, the last one too; the
                // refusal is on its way up the route.
                Err(_) => self.first_reader.next(&mut self.first).await.unwrap(),
            },
        }
    }
}

fn forward(session: SessionId, step: u32, position: u32, rows: &[f32]) -> Request {
    let n = (rows.len() / DIM) as u32;
    Request::Forward(Forward {
        session,
        step,
        position,
        hidden: TensorFrame::from_f32(&[n, DIM as u32], rows, DType::F32).unwrap(),
        receipts: Vec::new(),
        stepwise: false,
        tap: false,
        taps: Vec::new(),
        draw: None,
    })
}

/// An open from the client `net`.
fn open_for(net: &Network, session: SessionId, route: Vec<Hop>, model_id: [u8; 32]) -> Request {
    Request::Open(OpenSession {
        session,
        model_id,
        route,
        hop: 0,
        dtype: DType::F32,
        max_tokens: 32,
        client: net.local_peer_id().to_bytes(),
        token_deadline_us: 0,
        resume: false,
    })
}

fn refusal(r: Response) -> (ErrorKind, u16, String) {
    match r {
        Response::Error(e) => (e.kind, e.hop, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A forward carrying a draw: the last hop picks the token of the last row of its output (the
/// test runner's "LM head" takes a row as its logits), whether it computed the rows or answered a
/// replay from what it kept; without a draw no token comes back, and a middle hop never picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hop_picks_the_token_of_the_last_row_when_asked() {
    let a = start(0, vec![]).await;
    let b = start(1, a.listen_addrs()).await;
    let route = vec![hop(&a, 0), hop(&b, 1)];
    let net = client(&a).await;
    let sid = SessionId([21; 16]);
    let mut s = Client::open(&net, &a, &b, &open_for(&net, sid, route, MODEL)).await;
    let greedy = TokenDraw {
        temperature: 0.0,
        top_p: 1.0,
        state: 0,
    };
    let drawn = |step, pos, rows: &[f32], draw| {
        let Request::Forward(mut f) = forward(sid, step, pos, rows) else {
            unreachable!()
        };
        f.draw = draw;
        Request::Forward(f)
    };
    let answer = |r: Response| match r {
        Response::Hidden { hidden, token, .. } => (hidden.to_hidden(DIM).unwrap().1, token),
        other => panic!("{other:?}"),
    };
    // Two rows: the first peaks at 0, the last at 2.
    let prompt = [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0];
    let (_, token) = answer(s.ask(&drawn(0, 0, &prompt, Some(greedy))).await);
    assert_eq!(token, Some(2));
    let (_, token) = answer(s.ask(&drawn(1, 2, &[0.0, 0.0, 0.0, 9.0], None)).await);
    assert_eq!(token, None, "no draw, no token");
    // The prompt again (a replay after a failover): every row is answered from what was kept,
    // and the token is still picked.
    let (_, token) = answer(s.ask(&drawn(2, 0, &prompt, Some(greedy))).await);
    assert_eq!(token, Some(2));
    // A sampled draw picks what the same draw picks from the output the client received.
    let warm = TokenDraw {
        temperature: 40.0,
        top_p: 1.0,
        state: 77,
    };
    for (step, state) in (3u32..).zip([77u64, 78, 79, 80]) {
        let (out, token) = answer(
            s.ask(&drawn(
                step,
                2,
                &[1.0, 2.0, 3.0, 4.0],
                Some(TokenDraw { state, ..warm }),
            ))
            .await,
        );
        let want = sunswarm_models::sampling::Draw {
            temperature: warm.temperature,
            top_p: warm.top_p,
            state,
        }
        .pick(&out);
        assert_eq!(token, Some(want), "state {state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_run_in_order_and_refusals_name_their_reason() {
    let a = start(0, vec![]).await;
    let b = start(1, a.listen_addrs()).await;
    let c = start(2, a.listen_addrs()).await;
    let route = vec![hop(&a, 0), hop(&b, 1), hop(&c, 2)];
    let net = client(&a).await;

    let open = |sid, route, model| open_for(&net, sid, route, model);
    // Honest session: prefill 2 tokens, then 2 decode steps.
    let sid = SessionId([1; 16]);
    let mut s = Client::open(&net, &a, &c, &open(sid, route.clone(), MODEL)).await;
    let total: f32 = SHIFTS.iter().sum();
    let mut pos = 0u32;
    for (step, n_tokens) in [2usize, 1, 1].into_iter().enumerate() {
        let input: Vec<f32> = (0..n_tokens * DIM).map(|i| i as f32).collect();
        match s.ask(&forward(sid, step as u32, pos, &input)).await {
            Response::Hidden {
                session,
                step: st,
                hidden,
                receipts,
                ..
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
                    receipts.iter().map(|r| r.timing.hop).collect::<Vec<_>>(),
                    vec![0, 1, 2]
                );
                assert!(
                    receipts
                        .iter()
                        .all(|r| r.timing.compute_us <= r.timing.total_us),
                    "{receipts:?}"
                );
                // Signed by the hops of the route, chained input to output.
                for (k, r) in receipts.iter().enumerate() {
                    assert_eq!(r.signer, route[k].peer_id);
                    let signer = libp2p::PeerId::from_bytes(&r.signer).unwrap();
                    assert!(net::announce::verify_by(
                        &signer,
                        &r.signing_bytes(&sid, step as u32),
                        &r.signature
                    ));
                    if k > 0 {
                        assert_eq!(r.input, receipts[k - 1].output);
                    }
                }
                assert_eq!(receipts[2].output, hidden.checksum);
            }
            other => panic!("step {step}: {other:?}"),
        }
        pos += n_tokens as u32;
    }
    // A position sent again with the input it had (a replay) is answered from what every hop
    // kept, without computing; with another input, every hop drops that position and what
    // follows and computes it again.
    let again = |step: u32, pos: u32, input: &[f32]| forward(sid, step, pos, input);
    let first_step: Vec<f32> = (0..DIM).map(|i| i as f32).collect();
    for (step, input, kept) in [(3, first_step.clone(), 1), (4, vec![7.0; DIM], 0)] {
        match s.ask(&again(step, 2, &input)).await {
            Response::Hidden {
                hidden, receipts, ..
            } => {
                let (n, out) = hidden.to_hidden(DIM).unwrap();
                assert_eq!(n, 1);
                let want: Vec<f32> = input.iter().map(|v| v + total + 3.0 * 0.5 * 2.0).collect();
                assert_eq!(out, want, "step {step}");
                assert_eq!(
                    receipts
                        .iter()
                        .map(|r| r.timing.kept_rows)
                        .collect::<Vec<_>>(),
                    vec![kept; 3],
                    "step {step}"
                );
            }
            other => panic!("step {step}: {other:?}"),
        }
    }
    // A gap (a lost message) is refused by the first hop instead of corrupting its cache: the
    // last forward left every hop holding 3 positions.
    let (kind, hop_i, msg) = refusal(s.ask(&forward(sid, 5, 9, &[0.0; DIM])).await);
    assert_eq!((kind, hop_i), (ErrorKind::BadRequest, 0));
    assert!(
        msg.contains("position 9") && msg.contains("holds 3"),
        "{msg}"
    );

    // Wrong model id.
    let mut s = stream_to(&net, &a).await;
    let (kind, _, msg) =
        refusal(ask(&mut s, &open(SessionId([2; 16]), route.clone(), [9; 32])).await);
    assert_eq!(kind, ErrorKind::WrongModel, "{msg}");

    // A hop asked for blocks it does not serve refuses with its own index.
    let mut bad = route.clone();
    bad[0].blocks = BlockRange::new(0, 1).unwrap();
    bad[1].blocks = BlockRange::new(1, 4).unwrap();
    let mut s = stream_to(&net, &a).await;
    let (kind, hop_i, msg) = refusal(ask(&mut s, &open(SessionId([3; 16]), bad, MODEL)).await);
    assert_eq!((kind, hop_i), (ErrorKind::WrongBlocks, 0), "{msg}");

    // A next hop named with blocks it never announced is not dialled: the hop before refuses.
    let mut bad = route.clone();
    bad[1].blocks = BlockRange::new(2, 3).unwrap();
    bad[2].blocks = BlockRange::new(3, 6).unwrap();
    let mut s = stream_to(&net, &a).await;
    let (kind, hop_i, msg) = refusal(ask(&mut s, &open(SessionId([6; 16]), bad, MODEL)).await);
    assert_eq!((kind, hop_i), (ErrorKind::NextHop, 0), "{msg}");
    assert!(msg.contains("not a live announced peer"), "{msg}");

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
    let other = u8::try_from(PROTOCOL_VERSION + 1).unwrap();
    assert!(other < 0x80, "one byte of varint");
    frame.extend_from_slice(&[other, 0, 0]);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    let (kind, _, _) = refusal(read_message(&mut s, &mut Vec::new()).await.unwrap());
    assert_eq!(kind, ErrorKind::VersionMismatch);

    // Attaching to a session that does not exist, or that another client opened.
    let mut s = stream_to(&net, &c).await;
    let (kind, _, msg) = refusal(
        ask(
            &mut s,
            &Request::Attach {
                session: SessionId([77; 16]),
            },
        )
        .await,
    );
    assert_eq!(kind, ErrorKind::UnknownSession, "{msg}");
    let sid = SessionId([5; 16]);
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        ask(&mut s, &open(sid, route.clone(), MODEL)).await,
        Response::Opened { session: sid }
    );
    let stranger = client(&a).await;
    let mut theirs = stream_to(&stranger, &c).await;
    let (kind, hop_i, msg) = refusal(ask(&mut theirs, &Request::Attach { session: sid }).await);
    assert_eq!((kind, hop_i), (ErrorKind::BadRequest, 2), "{msg}");
    assert!(msg.contains("another client"), "{msg}");
    // The session's own client still attaches after the stranger's try, and it runs.
    let mut out = stream_to(&net, &c).await;
    assert_eq!(
        ask(&mut out, &Request::Attach { session: sid }).await,
        Response::Opened { session: sid }
    );
    let mut s = Client {
        first: s,
        first_reader: FrameReader::new(),
        outputs: out,
        outputs_reader: FrameReader::new(),
    };
    assert!(matches!(
        s.ask(&forward(sid, 0, 0, &[0.0; DIM])).await,
        Response::Hidden { .. }
    ));
    // A second attach to an attached session finds nothing waiting.
    let mut again = stream_to(&net, &c).await;
    assert_eq!(
        refusal(ask(&mut again, &Request::Attach { session: sid }).await).0,
        ErrorKind::UnknownSession
    );
    assert_eq!(
        s.ask(&Request::Close { session: sid }).await,
        Response::Closed { session: sid }
    );

    for n in [c, b, a] {
        n.leave().await;
    }
}

/// Runs `input` (`n` rows at `pos`) as forward `step` and checks the output (each hop adds its
/// shift and half the position) and how many rows each hop answered from what it kept.
async fn expect_step(
    s: &mut Client,
    sid: SessionId,
    (step, pos, stepwise): (u32, u32, bool),
    input: &[f32],
    kept: [u32; 3],
) {
    let Request::Forward(mut f) = forward(sid, step, pos, input) else {
        unreachable!()
    };
    f.stepwise = stepwise;
    let total: f32 = SHIFTS.iter().sum();
    match s.ask(&Request::Forward(f)).await {
        Response::Hidden {
            hidden, receipts, ..
        } => {
            let (_, out) = hidden.to_hidden(DIM).unwrap();
            let want: Vec<f32> = input
                .iter()
                .enumerate()
                .map(|(i, v)| v + total + 1.5 * (pos as usize + i / DIM) as f32)
                .collect();
            assert_eq!(out, want, "step {step}");
            let got: Vec<u32> = receipts.iter().map(|r| r.timing.kept_rows).collect();
            assert_eq!(got, kept, "step {step}: rows each hop kept");
        }
        other => panic!("step {step}: {other:?}"),
    }
}

/// The middle hop leaves mid-session; the client opens the session again, under its id, on a
/// route with a replacement in the middle and replays its inputs: the first and last hops
/// answer the replay from what they kept, only the replacement computes, and the session goes
/// on exactly. A stranger cannot take the kept session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_rebuilt_only_on_the_replacement() {
    let a = start(0, vec![]).await;
    let b = start(1, a.listen_addrs()).await;
    let spare = start(1, a.listen_addrs()).await;
    let c = start(2, a.listen_addrs()).await;
    let net = client(&a).await;
    let sid = SessionId([21; 16]);
    let prompt: Vec<f32> = (0..3 * DIM).map(|i| i as f32 * 0.25).collect();
    let (s1, s2) = ([1.0; DIM], [2.0; DIM]);
    let mut s = Client::open(
        &net,
        &a,
        &c,
        &open_for(&net, sid, vec![hop(&a, 0), hop(&b, 1), hop(&c, 2)], MODEL),
    )
    .await;
    expect_step(&mut s, sid, (0, 0, false), &prompt, [0; 3]).await;
    expect_step(&mut s, sid, (1, 3, false), &s1, [0; 3]).await;
    expect_step(&mut s, sid, (2, 4, false), &s2, [0; 3]).await;

    b.leave().await;
    // The first hop reports its lost next hop.
    let (kind, hop_i, msg) = refusal(s.first_reader.next(&mut s.first).await.unwrap());
    assert_eq!((kind, hop_i), (ErrorKind::NextHop, 0), "{msg}");

    let repaired = vec![hop(&a, 0), hop(&spare, 1), hop(&c, 2)];
    let resume = |net: &Network| {
        let Request::Open(mut o) = open_for(net, sid, repaired.clone(), MODEL) else {
            unreachable!()
        };
        o.resume = true;
        Request::Open(o)
    };
    let stranger = client(&a).await;
    let mut theirs = stream_to(&stranger, &a).await;
    let (kind, _, msg) = refusal(ask(&mut theirs, &resume(&stranger)).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("another client"), "{msg}");

    let mut s = Client::open(&net, &a, &c, &resume(&net)).await;
    let steps: Vec<f32> = [s1, s2].concat();
    expect_step(&mut s, sid, (0, 0, false), &prompt, [3, 0, 3]).await;
    expect_step(&mut s, sid, (1, 3, true), &steps, [2, 0, 2]).await;
    expect_step(&mut s, sid, (2, 5, false), &[3.0; DIM], [0; 3]).await;
    assert_eq!(
        s.ask(&Request::Close { session: sid }).await,
        Response::Closed { session: sid }
    );
    for n in [c, spare, a] {
        n.leave().await;
    }
}

/// A client that gives up on a route that still runs (a hop it found too slow, say) and resumes
/// the session on the same hops: each hop's running session is asked to stop, is kept, and is
/// taken up at once, so the replay costs no hop anything; a fresh open of the same id is
/// refused while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_session_that_still_runs() {
    let a = start(0, vec![]).await;
    let b = start(1, a.listen_addrs()).await;
    let c = start(2, a.listen_addrs()).await;
    let net = client(&a).await;
    let sid = SessionId([22; 16]);
    let route = vec![hop(&a, 0), hop(&b, 1), hop(&c, 2)];
    let prompt: Vec<f32> = (0..2 * DIM).map(|i| i as f32).collect();
    let step = [5.0; DIM];
    let mut old = Client::open(&net, &a, &c, &open_for(&net, sid, route.clone(), MODEL)).await;
    expect_step(&mut old, sid, (0, 0, false), &prompt, [0; 3]).await;
    expect_step(&mut old, sid, (1, 2, false), &step, [0; 3]).await;

    let mut s = stream_to(&net, &a).await;
    let (kind, _, msg) = refusal(ask(&mut s, &open_for(&net, sid, route.clone(), MODEL)).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("already open"), "{msg}");

    let Request::Open(mut o) = open_for(&net, sid, route, MODEL) else {
        unreachable!()
    };
    o.resume = true;
    let mut s = Client::open(&net, &a, &c, &Request::Open(o)).await;
    expect_step(&mut s, sid, (0, 0, false), &prompt, [2; 3]).await;
    expect_step(&mut s, sid, (1, 2, true), &step, [1; 3]).await;
    expect_step(&mut s, sid, (2, 3, false), &[6.0; DIM], [0; 3]).await;
    drop(old);
    assert_eq!(
        s.ask(&Request::Close { session: sid }).await,
        Response::Closed { session: sid }
    );
    for n in [c, b, a] {
        n.leave().await;
    }
}

/// Sends raw bytes on a fresh stream to `n` (optionally closing our side) and returns the
/// node's answer.
async fn raw(net: &Network, n: &RunningNode, bytes: &[u8], close: bool) -> Response {
    let mut s = stream_to(net, n).await;
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    if close {
        s.close().await.unwrap();
    }
    read_message(&mut s, &mut Vec::new()).await.unwrap()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Opens a one-hop session on `a` (blocks 0-1) and sends `req`; returns the answer to `req`.
async fn after_open(net: &Network, a: &RunningNode, sid: SessionId, req: &Request) -> Response {
    Client::open(net, a, a, &open_for(net, sid, vec![hop(a, 0)], MODEL))
        .await
        .ask(req)
        .await
}

/// A hostile peer throws malformed and malicious messages at the first node while an honest
/// session runs through all three: every bad message is answered with a typed error, the node
/// stays up, and the honest session's output is exact throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_gets_errors_while_an_honest_session_completes() {
    let a = Arc::new(start(0, vec![]).await);
    let b = start(1, a.listen_addrs()).await;
    let c = Arc::new(start(2, a.listen_addrs()).await);
    let route = vec![hop(&a, 0), hop(&b, 1), hop(&c, 2)];
    let net = client(&a).await;
    let open = |sid, route, model| open_for(&net, sid, route, model);

    // The honest session: one token per step, never idle, until the attacks are over.
    let attacks_done = Arc::new(AtomicBool::new(false));
    let honest = {
        let (net, a, c, route, done) = (
            net.clone(),
            a.clone(),
            c.clone(),
            route.clone(),
            attacks_done.clone(),
        );
        tokio::spawn(async move {
            let sid = SessionId([42; 16]);
            let mut opening = open_for(&net, sid, route, MODEL);
            if let Request::Open(o) = &mut opening {
                o.max_tokens = 4096;
            }
            let mut s = Client::open(&net, &a, &c, &opening).await;
            let total: f32 = SHIFTS.iter().sum();
            let mut step = 0u32;
            while !done.load(Ordering::Relaxed) || step < 4 {
                assert!(step < 4096, "the attacks took too long");
                let input: Vec<f32> = (0..DIM).map(|i| (i as f32) * 0.25 - step as f32).collect();
                let Response::Hidden { hidden, .. } =
                    s.ask(&forward(sid, step, step, &input)).await
                else {
                    panic!("honest step {step} refused");
                };
                let (_, out) = hidden.to_hidden(DIM).unwrap();
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(*v, input[i] + total + 1.5 * step as f32, "step {step}");
                }
                step += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                s.ask(&Request::Close { session: sid }).await,
                Response::Closed { session: sid }
            );
            step
        })
    };
    // A session that goes quiet is closed after the idle limit, with a reason (runs alongside).
    let idle = {
        let (net, a, route) = (net.clone(), a.clone(), route.clone());
        tokio::spawn(async move {
            let sid = SessionId([16; 16]);
            let mut s = stream_to(&net, &a).await;
            assert_eq!(
                ask(&mut s, &open_for(&net, sid, route, MODEL)).await,
                Response::Opened { session: sid }
            );
            let quiet = tokio::time::timeout(
                4 * IDLE,
                read_message::<_, Response>(&mut s, &mut Vec::new()),
            )
            .await
            .expect("an idle session is closed within its limit")
            .unwrap();
            refusal(quiet).0
        })
    };

    let kind_of = |r: Response| refusal(r).0;
    // A frame cut short: its length promises 100 bytes, 10 arrive, then the stream closes.
    let mut cut = 100u32.to_le_bytes().to_vec();
    cut.extend_from_slice(&[0; 10]);
    let (kind, _, msg) = refusal(raw(&net, &a, &cut, true).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("truncated"), "{msg}");
    // A length past the limit: refused before anything is allocated.
    let (kind, _, msg) = refusal(raw(&net, &a, &u32::MAX.to_le_bytes(), false).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("exceeds the limit"), "{msg}");
    // Another protocol version.
    let mut other = (PROTOCOL_VERSION + 1).to_le_bytes().to_vec();
    other.extend_from_slice(&[0; 8]);
    assert_eq!(
        kind_of(raw(&net, &a, &framed(&other), false).await),
        ErrorKind::VersionMismatch
    );
    // Our version, then garbage.
    let mut junk = PROTOCOL_VERSION.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xff; 40]);
    assert_eq!(
        kind_of(raw(&net, &a, &framed(&junk), false).await),
        ErrorKind::BadRequest
    );
    // A route longer than the limit.
    let mut long = open(SessionId([7; 16]), route.clone(), MODEL);
    if let Request::Open(o) = &mut long {
        o.route = (0..65).map(|_| hop(&a, 0)).collect();
    }
    // Encoding does not validate, just as a hostile peer's encoder would not.
    let body = codec::encode(&long).unwrap();
    assert_eq!(
        kind_of(raw(&net, &a, &framed(&body), false).await),
        ErrorKind::BadRequest
    );
    // More tokens than the node holds per session.
    let mut greedy = open(SessionId([8; 16]), route.clone(), MODEL);
    if let Request::Open(o) = &mut greedy {
        o.max_tokens = 5000;
    }
    let mut s = stream_to(&net, &a).await;
    let (kind, _, msg) = refusal(ask(&mut s, &greedy).await);
    assert_eq!(kind, ErrorKind::BadRequest, "{msg}");
    // A forward before any open.
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        kind_of(ask(&mut s, &forward(SessionId([9; 16]), 0, 0, &[0.0; DIM])).await),
        ErrorKind::BadRequest
    );
    // Wrong hidden size.
    let wide = Request::Forward(Forward {
        session: SessionId([10; 16]),
        step: 0,
        position: 0,
        hidden: TensorFrame::from_f32(&[1, DIM as u32 + 1], &[0.0; DIM + 1], DType::F32).unwrap(),
        receipts: Vec::new(),
        stepwise: false,
        tap: false,
        taps: Vec::new(),
        draw: None,
    });
    let (kind, _, msg) = refusal(after_open(&net, &a, SessionId([10; 16]), &wide).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("shape"), "{msg}");
    // NaN in the hidden states.
    let nan = forward(SessionId([11; 16]), 0, 0, &[0.0, f32::NAN, 0.0, 0.0]);
    let (kind, _, msg) = refusal(after_open(&net, &a, SessionId([11; 16]), &nan).await);
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(msg.contains("finite") || msg.contains("NaN"), "{msg}");
    // A forward naming a session this stream did not open.
    let stray = forward(SessionId([99; 16]), 0, 0, &[0.0; DIM]);
    assert_eq!(
        kind_of(after_open(&net, &a, SessionId([12; 16]), &stray).await),
        ErrorKind::UnknownSession
    );
    // More tokens than the session declared (it declared 32).
    let flood = forward(SessionId([13; 16]), 0, 0, &vec![0.0; 33 * DIM]);
    assert_eq!(
        kind_of(after_open(&net, &a, SessionId([13; 16]), &flood).await),
        ErrorKind::BadRequest
    );
    // A route whose next hop is a peer outside the swarm, at an address outside it.
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let mut outside = route.clone();
    outside[1].peer_id = stranger.to_bytes();
    outside[1].addrs = vec!["/ip4/10.9.9.9/tcp/4001".into()];
    let mut s = stream_to(&net, &a).await;
    let (kind, hop_i, msg) = refusal(ask(&mut s, &open(SessionId([14; 16]), outside, MODEL)).await);
    assert_eq!((kind, hop_i), (ErrorKind::NextHop, 0));
    assert!(msg.contains("not a live announced peer"), "{msg}");
    // A swarm peer named at a foreign address: the node dials only what that peer announced.
    let mut redirected = route.clone();
    redirected[1].addrs = vec!["/ip4/10.9.9.9/tcp/4001".into()];
    let sid = SessionId([15; 16]);
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        ask(&mut s, &open(sid, redirected, MODEL)).await,
        Response::Opened { session: sid }
    );
    drop(s);
    assert_eq!(idle.await.unwrap(), ErrorKind::Timeout);

    attacks_done.store(true, Ordering::Relaxed);
    let steps = honest.await.expect("the honest session completed");
    assert!(steps >= 4, "honest steps {steps}");
    // And the node still opens new sessions.
    let sid = SessionId([17; 16]);
    let mut s = stream_to(&net, &a).await;
    assert_eq!(
        ask(&mut s, &open(sid, route, MODEL)).await,
        Response::Opened { session: sid }
    );
    drop(s);
    Arc::into_inner(c).unwrap().leave().await;
    b.leave().await;
    Arc::into_inner(a).unwrap().leave().await;
}
