//! Helpers shared by the integration tests: build the binaries once, start testnets, run the
//! client and read its JSON.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sunswarm_client::swarm::SwarmClient;
use sunswarm_testnet::net::{Byzantine, Split, Testnet, TestnetOptions, find_binary};

pub fn build_binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("SUNSWARM_NO_BUILD").is_some() {
            return;
        }
        let release = std::env::current_exe()
            .unwrap()
            .components()
            .any(|c| c.as_os_str() == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "-p",
            "sunswarm-node",
            "-p",
            "sunswarm-client",
            // swarm-testnet itself runs the hostile nodes (`byzantine-node`).
            "-p",
            "sunswarm-testnet",
            "--bins",
        ]);
        if release {
            c.arg("--release");
        }
        let st = c
            .status()
            .expect("running cargo build for the swarm binaries");
        assert!(st.success(), "building swarm-node and swarm-client failed");
    });
}

/// The real default model must already be in the cache: the tests run against the file a user
/// fetches, and a test must not quietly download it. Says what to run when it is missing.
pub fn require_real_model() {
    let alias = sunswarm_models::source::ALIASES[0];
    let fetcher = sunswarm_models::fetch::Fetcher::from_env();
    let path = fetcher.alias_path(&alias);
    assert!(
        path.is_file(),
        "the real model {} is not in the cache ({}): fetch it first with \
         `cargo run -p sunswarm-client -- fetch --model {}` (same SUNSWARM_CACHE), as .ci/run does",
        alias.name,
        path.display(),
        alias.name
    );
}

pub fn opts(model: &str, split: Split, nodes: usize, ttl: f64) -> TestnetOptions {
    TestnetOptions {
        nodes,
        model: model.into(),
        split,
        announce_ttl: ttl,
        ..TestnetOptions::default()
    }
}

/// A testnet of `model` split as `split` (one node per range), node `node` running the hostile
/// `mode` (`swarm-testnet up --byzantine node:mode`).
pub fn hostile_opts(model: &str, split: &str, node: usize, mode: &str) -> TestnetOptions {
    let split: Split = split.parse().unwrap();
    let n = match &split {
        Split::List(l) => l.len(),
        _ => panic!("a hostile testnet needs a list of ranges"),
    };
    TestnetOptions {
        byzantine: vec![Byzantine {
            node,
            mode: mode.into(),
        }],
        ..opts(model, split, n, 30.0)
    }
}

/// Runs `swarm-client generate ... --json` and returns its JSON.
pub fn client_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(find_binary("swarm-client").unwrap())
        .arg("generate")
        .args(args)
        .arg("--json")
        .output()
        .expect("running swarm-client");
    assert!(
        out.status.success(),
        "swarm-client {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("swarm-client printed no JSON")
}

pub fn tokens(v: &serde_json::Value) -> Vec<u64> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// The route as (peer, start, end).
pub fn route(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["peer"].as_str().unwrap().to_string(),
                h["blocks"][0].as_u64().unwrap(),
                h["blocks"][1].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits (bounded, 30 s) until `client`'s discovery walks see every node of `net` three times in
/// a row. Discovery is eventually consistent: right after the start a node that provided its
/// keys while it knew few peers is missed by some lookups until it provides them again, and a
/// test that needs a replica to be found (a check route through the other replica, routes
/// spread over replicas) cannot start before.
pub async fn wait_until_discovered(client: &SwarmClient, net: &Testnet) {
    let peers: Vec<Vec<u8>> = net
        .nodes
        .iter()
        .map(|x| x.peer.parse::<libp2p::PeerId>().unwrap().to_bytes())
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    let mut complete = 0;
    while complete < 3 {
        let anns = client.discover(&net.model_id, net.n_layers).await.unwrap();
        let all = peers.iter().all(|p| anns.iter().any(|a| &a.peer_id == p));
        complete = if all { complete + 1 } else { 0 };
        assert!(Instant::now() < until, "discovery never settled: {anns:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_until_discovered`] from a client of its own.
pub async fn wait_until_settled(net: &Testnet) {
    let client = SwarmClient::connect(
        vec![net.bootstrap.parse().unwrap()],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    wait_until_discovered(&client, net).await;
}
