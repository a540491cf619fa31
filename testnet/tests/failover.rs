//! Failover with real processes: a replica on the route is killed (SIGKILL) while the client is
//! generating, and the client's text must equal an uninterrupted run's, every time; the hops
//! that survive take the session up again without computing its prefix.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{build_binaries, client_json, opts, tokens};
use sunswarm_client::swarm::SwarmClient;
use sunswarm_protocol::BlockRange;
use sunswarm_testnet::net::{Split, Testnet, find_binary};

const MODEL: &str = "smollm2-135m";
const PROMPT: &str = "Explain why the sky is blue in two sentences.";
const NEW_TOKENS: &str = "40";

/// A running `swarm-client generate`, its stdout collected as it streams and its stderr lines
/// passed on a channel.
struct RunningClient {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: mpsc::Receiver<String>,
}

impl RunningClient {
    fn start(args: &[&str]) -> RunningClient {
        let mut child = Command::new(find_binary("swarm-client").unwrap())
            .arg("generate")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting swarm-client");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        RunningClient {
            child,
            stdout,
            stderr,
        }
    }

    /// The first stderr line starting with `prefix`, within `deadline`.
    fn wait_stderr(&self, prefix: &str, deadline: Duration, seen: &mut Vec<String>) -> String {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {prefix:?} line from the client; stderr: {seen:#?}"),
            }
        }
    }

    /// Waits until the client has streamed at least `n` bytes of text.
    fn wait_stdout(&self, n: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.stdout.lock().unwrap().len() < n {
            assert!(Instant::now() < until, "the client streamed no text");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit and returns the JSON line.
    fn finish(mut self, deadline: Duration) -> serde_json::Value {
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                panic!("the client did not finish within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "client failed: {rest:#?}");
        // The reader thread may still hold the last bytes for a moment after the exit.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let out = String::from_utf8_lossy(&self.stdout.lock().unwrap()).to_string();
            if let Some(v) = out.lines().rev().find_map(|l| serde_json::from_str(l).ok()) {
                return v;
            }
            assert!(Instant::now() < until, "no JSON from the client: {out}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How much text the client streams before the kill: 1 byte by default (right after the first
/// token); the recovery benchmark sets `FAILOVER_KILL_AFTER_BYTES` to kill later, when more
/// decode steps must be replayed.
fn kill_after_bytes() -> usize {
    std::env::var("FAILOVER_KILL_AFTER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The peer id of hop `hop` in a `route: 0..10 @ PEER -> 10..20 @ PEER -> ...` line.
fn hop_peer(line: &str, hop: usize) -> String {
    let hops: Vec<&str> = line.trim_start_matches("route: ").split(" -> ").collect();
    hops[hop].split(" @ ").nth(1).unwrap().trim().to_string()
}

/// Acceptance test of failover: 4 nodes (`0-9,10-19,10-19,20-29`), the replica on the route is
/// killed mid-generation, 10 times (a fresh replica is started after each kill, so that there
/// is always a spare); the text equals the uninterrupted run's 10 times out of 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_replica_on_the_route_mid_generation_leaves_the_text_unchanged() {
    build_binaries();
    let split: Split = "0-9,10-19,10-19,20-29".parse().unwrap();
    common::require_real_model();
    let mut net = Testnet::start(&opts(MODEL, split, 4, 20.0)).await.unwrap();
    let common = [
        "--model",
        MODEL,
        "--prompt",
        PROMPT,
        "--chat",
        "--max-new-tokens",
        NEW_TOKENS,
        "--ignore-eos",
    ];
    let local = client_json(&[&common[..], &["--local"]].concat());
    let uninterrupted = client_json(&[&common[..], &["--bootstrap", &net.bootstrap]].concat());
    assert_eq!(tokens(&uninterrupted), tokens(&local));
    assert_eq!(uninterrupted["failovers"], 0);
    let want = local["text"].as_str().unwrap().to_string();

    let watcher = SwarmClient::connect(
        vec![net.bootstrap.parse().unwrap()],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let middle = BlockRange { start: 10, end: 20 };
    let mut recovery_ms = Vec::new();
    for rep in 0..10 {
        let args = [&common[..], &["--bootstrap", &net.bootstrap, "--json"]].concat();
        let client = RunningClient::start(&args);
        let mut seen = Vec::new();
        let route = client.wait_stderr("route: ", Duration::from_secs(60), &mut seen);
        let victim_peer = hop_peer(&route, 1);
        let victim = net
            .nodes
            .iter()
            .position(|n| n.peer == victim_peer)
            .unwrap_or_else(|| panic!("hop 1 {victim_peer} is not a testnet node: {route}"));
        assert_eq!(net.nodes[victim].blocks, middle);
        // Some tokens out, most still to come: the kill lands mid-generation.
        client.wait_stdout(kill_after_bytes(), Duration::from_secs(60));
        net.stop_node(victim, true);
        let out = client.finish(Duration::from_secs(120));
        assert_eq!(
            out["text"].as_str().unwrap(),
            want,
            "run {rep}: text after failover"
        );
        assert_eq!(tokens(&out), tokens(&local), "run {rep}");
        assert_eq!(out["failovers"], 1, "run {rep}: {out}");
        let hop1 = out["route"][1]["peer"].as_str().unwrap();
        assert_ne!(
            hop1, victim_peer,
            "run {rep}: the dead peer is still on the route"
        );
        let ev = &out["failover_events"][0];
        let f = |k: &str| ev[k].as_f64().unwrap();
        recovery_ms.push(f("recovery_ms"));
        // The hops that survived kept the session: they answered the whole replay from what
        // they kept, and only the replacement computed it.
        let replayed = ev["replayed_tokens"].as_u64().unwrap();
        let kept: Vec<u64> = ev["kept_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(replayed > 0, "run {rep}: {ev}");
        assert_eq!(kept.len(), 3, "run {rep}: {ev}");
        assert_eq!(kept[1], 0, "run {rep}: the replacement kept nothing: {ev}");
        assert!(
            kept[0] >= replayed && kept[2] >= replayed,
            "run {rep}: the surviving hops computed the replay again: {ev}"
        );
        eprintln!(
            "run {rep}: recovery {:.0} ms = choose {:.1} + open {:.1} + replay {:.0} ({} tokens) + retry",
            f("recovery_ms"),
            f("choose_ms"),
            f("open_ms"),
            f("replay_ms"),
            ev["replayed_tokens"]
        );
        // A fresh replica, so that the next run has a spare again; wait until it is routable.
        let fresh = net.add_node(middle).unwrap();
        let fresh_peer = net.nodes[fresh].peer.parse::<libp2p::PeerId>().unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let anns = watcher.discover(&net.model_id, net.n_layers).await.unwrap();
            if anns.iter().any(|a| a.peer_id == fresh_peer.to_bytes()) {
                break;
            }
            assert!(
                Instant::now() < until,
                "run {rep}: new replica never announced"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    recovery_ms.sort_by(f64::total_cmp);
    eprintln!(
        "recovery (failure to next token): median {:.0} ms, max {:.0} ms, all {recovery_ms:?}",
        recovery_ms[recovery_ms.len() / 2],
        recovery_ms[recovery_ms.len() - 1]
    );
    watcher.stop().await;
}

/// A replica in power saving (an emulated battery below its low threshold that takes hours to
/// recharge) is routed around: every generation completes through the other replica with the
/// `--local` output, and the saving node never appears on a route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_route_around_a_replica_in_power_saving() {
    build_binaries();
    let split: Split = "0-1,2-3,4-5".parse().unwrap();
    let mut net = Testnet::start(&opts("random:tiny", split, 3, 30.0))
        .await
        .unwrap();
    let saving = net
        .add_node_with(
            BlockRange { start: 2, end: 4 },
            &[
                "--energy".into(),
                "emulated:initial=10,low=20,high=80,harvest=uniform(0,1)".into(),
                "--power-mode".into(),
                "15w".into(),
            ],
        )
        .unwrap();
    let saving_peer = net.nodes[saving].peer.clone();
    // Its announcement says so (the premise of the test).
    let watcher = SwarmClient::connect(
        vec![net.bootstrap.parse().unwrap()],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let id = saving_peer.parse::<libp2p::PeerId>().unwrap().to_bytes();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let anns = watcher.discover(&net.model_id, net.n_layers).await.unwrap();
        if let Some(a) = anns.iter().find(|a| a.peer_id == id) {
            assert!(
                a.energy.power_saving,
                "the drained node is not in power saving"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "the drained node was never announced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.stop().await;
    let common = [
        "--model",
        "random:tiny",
        "--prompt",
        "low battery",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
    ];
    let local = client_json(&[&common[..], &["--local"]].concat());
    for run in 0..8 {
        let out = client_json(&[&common[..], &["--bootstrap", &net.bootstrap]].concat());
        assert_eq!(tokens(&out), tokens(&local), "run {run}");
        let peers: Vec<&str> = out["route"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["peer"].as_str().unwrap())
            .collect();
        assert!(
            !peers.contains(&saving_peer.as_str()),
            "run {run}: routed through the node in power saving"
        );
    }
}
