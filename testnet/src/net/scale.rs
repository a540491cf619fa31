//! `swarm-testnet scale`: how the swarm's own costs grow with its size. For each size it starts
//! that many nodes and measures how long each node takes to see every block covered, the control traffic
//! (gossip, DHT, identify, pings) per peer per minute of an idle swarm, and how long a client
//! takes to choose a route.
//!
//! Traffic is what the kernel counted on each node's TCP connections (`ss -ti`: bytes sent and
//! received per socket), not counted by link proxies: at a hundred nodes on two cores the
//! proxies' extra hop was enough to slow every DHT query past its timeout.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::churn::quantile;
use super::launch::{Split, Testnet, TestnetOptions};
use super::process::find_binary;

/// `swarm-testnet scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Swarm sizes, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,30,100")]
    pub nodes: Vec<usize>,
    #[arg(long, default_value = "random:tiny")]
    pub model: String,
    /// Minutes of idle swarm over which the control traffic is counted.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Client generations whose route choice is timed.
    #[arg(long, default_value_t = 5)]
    pub routes: usize,
    /// An extra flag for every node (repeatable), e.g. `--node-arg=--gossip-interval
    /// --node-arg=10` to see what gossip costs.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
}

/// One size's measurements.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScaleRow {
    pub nodes: usize,
    /// From each node's start until its view covers every block: median and slowest, ms.
    pub coverage_ms_median: f64,
    pub coverage_ms_max: f64,
    /// Bytes each peer sends and receives per minute, idle.
    pub traffic_bytes_per_peer_per_min: f64,
    /// A client's route choice (discovery and policy), ms, median over the runs.
    pub route_ms_median: f64,
    /// A client's start until it has joined the DHT, ms, median.
    pub connect_ms_median: f64,
    /// Clients that found no route at all.
    pub route_failures: usize,
}

/// Bytes sent and received so far on each TCP connection of these processes, by (local,
/// remote) address, from `ss -tinpH`.
fn socket_bytes(pids: &HashSet<u32>) -> Result<HashMap<(String, String), u64>> {
    let out = std::process::Command::new("ss")
        .args(["-tinpH"])
        .output()
        .context("running ss (iproute2) to count the nodes' traffic")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ours = line
                .split("pid=")
                .skip(1)
                .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next())
                .filter_map(|p| p.parse::<u32>().ok())
                .any(|p| pids.contains(&p));
            current = (ours && f.len() >= 5).then(|| (f[3].to_string(), f[4].to_string()));
        } else if let Some(key) = current.take() {
            let counter = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            bytes.insert(key, counter("bytes_sent:") + counter("bytes_received:"));
        }
    }
    Ok(bytes)
}

async fn measure(args: &ScaleArgs, nodes: usize) -> Result<ScaleRow> {
    let opts = TestnetOptions {
        nodes,
        model: args.model.clone(),
        split: Split::Even,
        node_args: args.node_args.clone(),
        ..TestnetOptions::default()
    };
    let mut net = Testnet::start(&opts).await?;
    let mut coverage = Vec::new();
    for i in 0..nodes {
        let after = net
            .wait_node_line(i, "COVERED after_ms=", Duration::from_secs(120))
            .with_context(|| format!("node {i} never saw the whole model covered"))?;
        coverage.push(after.trim().parse::<f64>()?);
    }
    let pids: HashSet<u32> = (0..nodes).filter_map(|i| net.pid(i)).collect();
    let (b0, t0) = (socket_bytes(&pids)?, Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(args.minutes * 60.0)).await;
    let (b1, minutes) = (socket_bytes(&pids)?, t0.elapsed().as_secs_f64() / 60.0);
    // Sent plus received on each node's side of each connection (a connection that opened in
    // the window counts from zero; one that closed in it is missed).
    let grown: u64 = b1
        .iter()
        .map(|(k, v)| v.saturating_sub(b0.get(k).copied().unwrap_or(0)))
        .sum();
    let traffic = grown as f64 / nodes as f64 / minutes;
    let client = find_binary("swarm-client")?;
    let (mut route_ms, mut connect_ms) = (Vec::new(), Vec::new());
    let mut route_failures = 0;
    for _ in 0..args.routes {
        let out = tokio::process::Command::new(&client)
            .args(["generate", "--model", &args.model, "--prompt", "hello"])
            .args(["--max-new-tokens", "2", "--spot-check", "0", "--json"])
            .args(["--bootstrap", &net.bootstrap])
            .output()
            .await?;
        // A client that finds no route (a DHT query past its timeout on an overloaded
        // machine) is counted, not fatal: the other figures stand.
        let json = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        let Some(v) = json.filter(|_| out.status.success()) else {
            route_failures += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "{nodes} nodes: a client found no route: {}",
                err.lines().find(|l| l.starts_with("Error")).unwrap_or("")
            );
            continue;
        };
        route_ms.extend(v["swarm"]["route_ms"].as_f64());
        connect_ms.extend(v["swarm"]["connect_ms"].as_f64());
    }
    net.stop();
    Ok(ScaleRow {
        nodes,
        coverage_ms_median: quantile(&coverage, 0.5).unwrap_or(f64::NAN),
        coverage_ms_max: quantile(&coverage, 1.0).unwrap_or(f64::NAN),
        traffic_bytes_per_peer_per_min: traffic,
        route_ms_median: quantile(&route_ms, 0.5).unwrap_or(f64::NAN),
        connect_ms_median: quantile(&connect_ms, 0.5).unwrap_or(f64::NAN),
        route_failures,
    })
}

/// `swarm-testnet scale`: one row per size, then how each cost grew from the smallest size to
/// the largest beside how log(size) grew.
pub fn main(args: ScaleArgs) -> Result<()> {
    anyhow::ensure!(!args.nodes.is_empty(), "--nodes: no sizes");
    anyhow::ensure!(args.minutes > 0.0, "--minutes must be positive");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    println!(
        "| nodes | coverage seen, median / slowest node (ms from its start) | control traffic per peer (KiB/min) | route choice (ms, median) | client join (ms, median) | clients without a route |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &args.nodes {
        let row = rt.block_on(measure(&args, n))?;
        println!(
            "| {} | {:.0} / {:.0} | {:.1} | {:.1} | {:.0} | {} of {} |",
            row.nodes,
            row.coverage_ms_median,
            row.coverage_ms_max,
            row.traffic_bytes_per_peer_per_min / 1024.0,
            row.route_ms_median,
            row.connect_ms_median,
            row.route_failures,
            args.routes
        );
        eprintln!("{}", serde_json::to_string(&row)?);
        rows.push(row);
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last())
        && b.nodes > a.nodes
    {
        let log_growth = (b.nodes as f64).ln() / (a.nodes as f64).ln();
        println!(
            "from {} to {} nodes: traffic per peer x{:.2}, route choice x{:.2}; ln(nodes) x{:.2}",
            a.nodes,
            b.nodes,
            b.traffic_bytes_per_peer_per_min / a.traffic_bytes_per_peer_per_min,
            b.route_ms_median / a.route_ms_median,
            log_growth
        );
    }
    Ok(())
}
