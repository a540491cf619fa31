//! Live energy on real in-process nodes over loopback: the gossiped state follows an emulated
//! battery on an accelerated clock (dynamic mode switching at the table's thresholds, the node's
//! own max job rate), a node in power saving refuses sessions on the wire with the
//! power-saving reason, then serves again once recovered, and a node whose one pending place is
//! taken says so in its gossip and refuses the next job as busy. No fixed sleeps: every wait polls a
//! state with a deadline.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, StreamProtocol};
use sunswarm_net::{self as net, NetConfig, Network};
use sunswarm_node::compute::ShiftRunner;
use sunswarm_node::energy::emulated::EmulatedSource;
use sunswarm_node::energy::{EmulatedParams, EnergySource, PowerModeArg};
use sunswarm_node::node::{self, NodeConfig, RunningNode};
use sunswarm_protocol::io::{read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, Announcement, BlockRange, DType, ErrorKind, Forward, Hop, OpenSession,
    PowerSetting, Request, Response, SessionId, TensorFrame, dht,
};
use tokio::time::Instant;

const MODEL: [u8; 32] = [7; 32];
const DIM: usize = 4;
const DEADLINE: Duration = Duration::from_secs(60);

fn emulated(spec: &str, mode: PowerModeArg, clock_scale: f64) -> Arc<EmulatedSource> {
    let params: EmulatedParams = spec.parse().expect("valid spec");
    Arc::new(EmulatedSource::start(&params, mode, clock_scale).expect("emulated source"))
}

async fn start_node(energy: Arc<dyn EnergySource>) -> RunningNode {
    let cfg = NodeConfig {
        net: NetConfig::default(),
        model_id: MODEL,
        n_layers: 2,
        blocks: BlockRange::new(0, 2).unwrap(),
        backend: "test".into(),
        max_sessions: 4,
        max_tokens: 64,
        announce_ttl: Duration::from_secs(30),
        gossip_interval: Duration::from_millis(50),
        next_hop_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        limits: Default::default(),
        max_kv_mib: 64,
        batch: Default::default(),
        throughput: 1.0,
    };
    node::start(
        cfg,
        Arc::new(ShiftRunner {
            dim: DIM,
            shift: 1.0,
        }),
        energy,
    )
    .await
    .expect("node starts")
}

/// A client-side host that follows the model's energy gossip.
async fn observer(node: &RunningNode) -> (Network, tokio::task::JoinHandle<()>) {
    let cfg = NetConfig {
        listen: Vec::new(),
        bootstrap: node.listen_addrs(),
        dht_server: false,
        ..NetConfig::default()
    };
    let (net, ev) = net::new(cfg).unwrap();
    let ev = tokio::spawn(ev.run());
    net.wait_ready(true, DEADLINE)
        .await
        .expect("observer joins");
    net.subscribe(dht::energy_topic(&MODEL)).await.unwrap();
    (net, ev)
}

async fn latest(net: &Network, node: &RunningNode) -> Option<Announcement> {
    let me = node.peer_id().to_bytes();
    net.gossip_view()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.peer_id == me)
}

fn hop(node: &RunningNode) -> Hop {
    Hop {
        peer_id: node.peer_id().to_bytes(),
        addrs: node
            .listen_addrs()
            .iter()
            .map(Multiaddr::to_string)
            .collect(),
        blocks: BlockRange::new(0, 2).unwrap(),
    }
}

/// A one-hop session: the stream it was opened on and the stream attached for its output.
struct Session {
    first: libp2p::Stream,
    outputs: libp2p::Stream,
}

async fn stream_to(net: &Network, node: &RunningNode) -> libp2p::Stream {
    net.control()
        .open_stream(node.peer_id(), StreamProtocol::new(ACTIVATIONS_PROTOCOL))
        .await
        .expect("stream opens")
}

/// Opens a one-hop session and attaches to it; returns the session, or the node's refusal.
async fn open(
    net: &Network,
    node: &RunningNode,
    id: u8,
    max_tokens: u32,
) -> Result<Session, sunswarm_protocol::WireError> {
    net.add_addresses(node.peer_id(), node.listen_addrs())
        .await
        .unwrap();
    let session = SessionId([id; 16]);
    let open = OpenSession {
        session,
        model_id: MODEL,
        route: vec![hop(node)],
        hop: 0,
        dtype: DType::F32,
        max_tokens,
        client: net.local_peer_id().to_bytes(),
        token_deadline_us: 0,
        resume: false,
    };
    let mut buf = Vec::new();
    let mut first = stream_to(net, node).await;
    write_message(&mut first, &Request::Open(open))
        .await
        .unwrap();
    match read_message::<_, Response>(&mut first, &mut buf)
        .await
        .unwrap()
    {
        Response::Opened { .. } => {}
        Response::Error(e) => return Err(e),
        other => panic!("unexpected answer to an open: {other:?}"),
    }
    let mut outputs = stream_to(net, node).await;
    write_message(&mut outputs, &Request::Attach { session })
        .await
        .unwrap();
    match read_message::<_, Response>(&mut outputs, &mut buf)
        .await
        .unwrap()
    {
        Response::Opened { .. } => Ok(Session { first, outputs }),
        other => panic!("unexpected answer to an attach: {other:?}"),
    }
}

/// Runs `n` tokens through an open session in one forward and closes it.
async fn run_job(s: &mut Session, id: u8, n: usize) {
    let hidden =
        TensorFrame::from_f32(&[n as u32, DIM as u32], &vec![0.0; n * DIM], DType::F32).unwrap();
    write_message(
        &mut s.first,
        &Request::Forward(Forward {
            session: SessionId([id; 16]),
            step: 0,
            position: 0,
            hidden,
            receipts: Vec::new(),
            stepwise: false,
            tap: false,
            taps: Vec::new(),
            draw: None,
        }),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    match read_message::<_, Response>(&mut s.outputs, &mut buf)
        .await
        .unwrap()
    {
        Response::Hidden { .. } => {}
        other => panic!("unexpected answer to a forward: {other:?}"),
    }
    write_message(
        &mut s.first,
        &Request::Close {
            session: SessionId([id; 16]),
        },
    )
    .await
    .unwrap();
    let _ = read_message::<_, Response>(&mut s.first, &mut buf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_mode_switches_at_the_thresholds_in_the_gossiped_state() {
    // One kJ per 100 s slot, 1000x faster (0.1 s per slot): an idle node climbs from 20 kJ through
    // both of the dynamic table's thresholds (40 and 60 kJ of 100); the 2 s below 40 leave the
    // gossip mesh time to form.
    let source = emulated(
        "initial=20,harvest=uniform(1,1),seed=1",
        PowerModeArg::Dynamic,
        1000.0,
    );
    let expected_rate = source.state().max_job_rate;
    let node = start_node(source.clone()).await;
    let (net, ev) = observer(&node).await;
    let mut seen: Vec<(f32, PowerSetting, u8, bool)> = Vec::new();
    let until = Instant::now() + DEADLINE;
    while !seen
        .iter()
        .any(|s| s.1 == PowerSetting::Dynamic { watts: 60 })
    {
        assert!(
            Instant::now() < until,
            "the gossiped mode never reached 60 W; seen {seen:?}"
        );
        if let Some(a) = latest(&net, &node).await {
            let e = a.energy;
            assert_eq!(
                e.max_job_rate, expected_rate,
                "the node gossips the rate its own model gives"
            );
            if seen.last().map(|s| s.0) != Some(e.battery_level) {
                seen.push((e.battery_level, e.power_mode, e.mode_index, e.critical));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every gossiped state shows the mode the table gives its level (15 W below 40 %, 30 W from
    // 40 %, 60 W from 60 %), and the climb went through all three.
    for &(level, mode, index, critical) in &seen {
        let kj = (level * 100.0).round() as i64;
        let want = if kj < 40 {
            15
        } else if kj < 60 {
            30
        } else {
            60
        };
        assert_eq!(
            mode,
            PowerSetting::Dynamic { watts: want },
            "at {kj} kJ; seen {seen:?}"
        );
        assert_eq!(
            index as usize,
            [15, 30, 60].iter().position(|w| *w == want).unwrap()
        );
        assert_eq!(critical, want == 15);
    }
    for watts in [15, 30] {
        assert!(
            seen.iter().any(|s| s.1 == PowerSetting::Dynamic { watts }),
            "{watts} W never gossiped; seen {seen:?}"
        );
    }
    assert!(
        (0.0..0.4).contains(&seen[0].0),
        "started below 40 %: {seen:?}"
    );
    let _ = net.shutdown(Duration::ZERO).await;
    let _ = ev.await;
    node.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_saving_refuses_sessions_with_the_reason_then_serves_again() {
    // 60 W (23 kJ per job) from 25 kJ with low = 20: one job sends the node into power saving;
    // it harvests 1 kJ per 20 ms slot and wakes at high = 80, about 60 slots later.
    let source = emulated(
        "initial=25,low=20,high=80,harvest=uniform(1,1),slot=100,seed=2",
        PowerModeArg::W60,
        5000.0,
    );
    let node = start_node(source.clone()).await;
    let (net, ev) = observer(&node).await;

    let mut s = open(&net, &node, 1, 4)
        .await
        .expect("an active node takes the session");
    run_job(&mut s, 1, 4).await;
    drop(s);
    let until = Instant::now() + DEADLINE;
    while source.stats().jobs_done < 1 {
        assert!(Instant::now() < until, "the job's stage never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Harvest refills 1 kJ per slot, so the node stays in saving for about 60 slots (1.2 s): refusals are
    // certain for an open right after the job.
    let Err(refusal) = open(&net, &node, 2, 4).await else {
        panic!("a node just drained below low must be in power saving")
    };
    assert_eq!(refusal.kind, ErrorKind::PowerSaving, "{refusal:?}");
    assert!(
        refusal.message.contains("power saving") && refusal.message.contains("80 kJ"),
        "{}",
        refusal.message
    );
    // The gossiped state shows it too.
    loop {
        assert!(Instant::now() < until, "power saving never gossiped");
        if latest(&net, &node)
            .await
            .is_some_and(|a| a.energy.power_saving)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Above the high threshold it serves again.
    let mut id = 3u8;
    let mut s = loop {
        assert!(Instant::now() < until, "the node never left power saving");
        match open(&net, &node, id, 4).await {
            Ok(s) => break s,
            Err(e) => assert_eq!(e.kind, ErrorKind::PowerSaving, "{e:?}"),
        }
        id = id.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    run_job(&mut s, id, 4).await;
    assert!(source.stats().refused_saving >= 1);
    let _ = net.shutdown(Duration::ZERO).await;
    let _ = ev.await;
    node.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_pending_place_is_gossiped_and_the_next_job_is_refused_as_busy() {
    // 15 W on a slow clock (a 100 s slot lasts 50 s): the job accepted during the first slot waits
    // for the next stage and holds the one pending place (R6) for the whole test; no slot ends.
    let source = emulated("initial=90,seed=3", PowerModeArg::W15, 2.0);
    let node = start_node(source.clone()).await;
    let (net, ev) = observer(&node).await;
    let until = Instant::now() + DEADLINE;
    let gossiped = |want: bool| {
        let (net, node) = (&net, &node);
        async move {
            loop {
                assert!(Instant::now() < until, "takes_job = {want} never gossiped");
                if latest(net, node)
                    .await
                    .is_some_and(|a| a.energy.takes_job == want)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    gossiped(true).await;
    let _held = open(&net, &node, 1, 4)
        .await
        .expect("an idle node takes the job");
    gossiped(false).await;
    let Err(refusal) = open(&net, &node, 2, 4).await else {
        panic!("a node whose pending place is taken must refuse the next job")
    };
    assert_eq!(refusal.kind, ErrorKind::Busy, "{refusal:?}");
    assert_eq!(
        source.stats().slots,
        0,
        "the state changed with the admission, not at a slot end"
    );
    let _ = net.shutdown(Duration::ZERO).await;
    let _ = ev.await;
    node.leave().await;
}
