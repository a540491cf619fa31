//! `swarm-testnet scale`: how the swarm's own costs grow with its size. For each size it starts
//! that many nodes (every connection through a transparent link proxy, which counts the bytes),
//! and measures how long each node takes to see every block covered, the control traffic
//! (gossip, DHT, identify, pings) per peer per minute of an idle swarm, and how long a client
//! takes to choose a route.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::churn::quantile;
use super::launch::{Split, Testnet, TestnetOptions};
use super::link::LinkProfile;
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
}

async fn measure(args: &ScaleArgs, nodes: usize) -> Result<ScaleRow> {
    let opts = TestnetOptions {
        nodes,
        model: args.model.clone(),
        split: Split::Even,
        link: Some(LinkProfile::default()),
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
    let bytes = |net: &Testnet| -> u64 { (0..nodes).filter_map(|i| net.link_bytes(i)).sum() };
    let (b0, t0) = (bytes(&net), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(args.minutes * 60.0)).await;
    let (b1, minutes) = (bytes(&net), t0.elapsed().as_secs_f64() / 60.0);
    // Each byte crosses one link: one peer sent it, another received it.
    let traffic = 2.0 * (b1 - b0) as f64 / nodes as f64 / minutes;
    let client = find_binary("swarm-client")?;
    let (mut route_ms, mut connect_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.routes {
        let out = tokio::process::Command::new(&client)
            .args(["generate", "--model", &args.model, "--prompt", "hello"])
            .args(["--max-new-tokens", "2", "--spot-check", "0", "--json"])
            .args(["--bootstrap", &net.bootstrap])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "swarm-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .context("no JSON from swarm-client")?;
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
        "| nodes | coverage seen, median / slowest node (ms from its start) | control traffic per peer (KiB/min) | route choice (ms, median) | client join (ms, median) |"
    );
    println!("|---|---|---|---|---|");
    for &n in &args.nodes {
        let row = rt.block_on(measure(&args, n))?;
        println!(
            "| {} | {:.0} / {:.0} | {:.1} | {:.1} | {:.0} |",
            row.nodes,
            row.coverage_ms_median,
            row.coverage_ms_max,
            row.traffic_bytes_per_peer_per_min / 1024.0,
            row.route_ms_median,
            row.connect_ms_median
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
