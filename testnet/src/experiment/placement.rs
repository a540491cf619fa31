//! `swarm-testnet experiment placement`: who should host what on a heterogeneous swarm. The
//! same nodes (slowdowns 1, 1, 2, 4 by default, each holding at most `--max-blocks` blocks) are
//! placed three ways and measured with `--clients` concurrent clients:
//!
//! - **even**: `--split even`, one range per node in node order. It is the calibration run too:
//!   one client alone first, whose decode steps give each node's compute per block (its hop's
//!   median compute over its block count, slowdown included) and the time per hop outside
//!   compute (round trip minus compute, over hops + 1 links);
//! - **planner**: seed 003's exact one-range-per-peer DP for pipeline throughput
//!   ([`sunswarm_planner::plan`]) over those measured speeds and hop time;
//! - **petals**: every node with `--blocks auto`, joining one after another (Petals' rule:
//!   each takes the range that raises the swarm's throughput most given the others).
//!
//! Each seed permutes which node gets which slowdown (the join order matters to Petals' rule)
//! and which prompts the clients send. The figure is the aggregate tokens per second of the
//! measured rounds (a warm-up round first is not counted).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sunswarm_client::swarm::RoutingKind;
use sunswarm_energy::policy::PolicyKind;
use sunswarm_planner::{Objective, Peer, PlanOptions, Swarm, plan};
use sunswarm_protocol::BlockRange;
use sunswarm_testnet::net::{Slowdown, Split, Testnet, TestnetOptions, apply_slowdowns};

use super::load::{self, mean_sd};

#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// Each node's slowdown (comma separated); the node count.
    #[arg(long, default_value = "1,1,2,4", value_delimiter = ',')]
    slowdowns: Vec<f64>,
    /// The most blocks one node may hold (its memory), in every placement.
    #[arg(long, default_value_t = 12)]
    max_blocks: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Measured generations per client (after one warm-up generation each).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// New tokens per generation.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Seeds 0..N (each permutes the slowdowns over the nodes and the prompts).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// The planner's time per hop (client to node, node to node, node to client), ms; by default
    /// the one measured in the calibration.
    #[arg(long)]
    hop_ms: Option<f64>,
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Write the results here (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Node logs go here (a temporary folder by default).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// One placement measured once.
#[derive(Debug, Clone, Serialize)]
struct Run {
    placement: &'static str,
    seed: u64,
    /// Node slowdowns in node order (this seed's permutation).
    slowdowns: Vec<f64>,
    /// Each node's range (inclusive text, `-` when the placement leaves it out).
    ranges: Vec<String>,
    tokens_per_s: f64,
    tokens: usize,
    wall_s: f64,
    /// What the DP predicts for its plan (planner only).
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_tokens_per_s: Option<f64>,
    /// Each node's measured decode time per block, ms (the even run's calibration).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ms_per_block: Vec<f64>,
    /// The measured time per hop outside compute, ms (the even run's calibration).
    #[serde(skip_serializing_if = "Option::is_none")]
    hop_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    placement: &'static str,
    mean_tokens_per_s: f64,
    sd_tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Document {
    command: String,
    max_blocks: u32,
    clients: usize,
    rounds: usize,
    tokens: usize,
    hop_ms: Option<f64>,
    runs: Vec<Run>,
    summary: Vec<Summary>,
    /// Per seed: planner / even and planner / petals, then their mean and sd.
    planner_over_even: Vec<f64>,
    planner_over_petals: Vec<f64>,
    planner_over_even_mean_sd: (f64, f64),
    planner_over_petals_mean_sd: (f64, f64),
}

fn slowdown_args(slowdowns: &[f64]) -> Result<Vec<Vec<String>>> {
    let mut per = Vec::new();
    let list: Vec<Slowdown> = slowdowns
        .iter()
        .enumerate()
        .filter(|(_, f)| **f > 1.0)
        .map(|(node, &factor)| Slowdown { node, factor })
        .collect();
    apply_slowdowns(&mut per, slowdowns.len(), &list)?;
    Ok(per)
}

/// One client alone on the testnet (node `i` serving hop `i`): each node's median compute per
/// block of a decode step, ms, and the median time per link outside compute, ms.
async fn calibrate(net: &Testnet, a: &PlacementArgs, seed: u64) -> Result<(Vec<f64>, f64)> {
    let engine = load::engine(
        &a.model,
        &net.bootstrap,
        RoutingKind::Policy(PolicyKind::Uniform),
        net.nodes.len(),
    )
    .await?;
    let (recs, _) = load::drive(&engine, &a.model, 1, 2, 16, seed).await?;
    if let Some(s) = engine.swarm() {
        s.stop().await;
    }
    let k = net.nodes.len();
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut links = Vec::new();
    for r in &recs {
        for (step, hops) in r.step_us.iter().zip(&r.step_hop_compute_us) {
            let compute: u64 = hops.iter().map(|&u| u64::from(u)).sum();
            links.push(step.saturating_sub(compute) as f64 / 1e3 / (hops.len() + 1) as f64);
            for (h, &us) in hops.iter().enumerate() {
                let Some((_, blocks)) = r.route.get(h) else {
                    continue;
                };
                if let Some(i) = net.nodes.iter().position(|n| n.blocks == *blocks) {
                    per_node[i].push(f64::from(us) / 1e3 / f64::from(blocks.len().max(1)));
                }
            }
        }
    }
    let ms = per_node
        .iter()
        .enumerate()
        .map(|(i, v)| {
            anyhow::ensure!(!v.is_empty(), "no decode step went through node {i}");
            Ok(load::percentile(v, 50.0))
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok((ms, load::percentile(&links, 50.0)))
}

async fn measure(net: &Testnet, a: &PlacementArgs, seed: u64) -> Result<(f64, usize, f64)> {
    let engine = load::engine(
        &a.model,
        &net.bootstrap,
        RoutingKind::Policy(PolicyKind::Uniform),
        net.nodes.len(),
    )
    .await?;
    // Warm-up: every client once, short (caches, connections, the nodes' first passes).
    load::drive(&engine, &a.model, a.clients, 1, a.tokens / 2, seed).await?;
    let (recs, wall) = load::drive(&engine, &a.model, a.clients, a.rounds, a.tokens, seed).await?;
    if let Some(s) = engine.swarm() {
        s.stop().await;
    }
    let tokens: usize = recs.iter().map(|r| r.tokens).sum();
    Ok((
        tokens as f64 / wall.as_secs_f64(),
        tokens,
        wall.as_secs_f64(),
    ))
}

fn inclusive(r: &BlockRange) -> String {
    r.to_string()
}

async fn one_seed(a: &PlacementArgs, seed: u64, log_dir: &Path) -> Result<Vec<Run>> {
    let mut slowdowns = a.slowdowns.clone();
    if seed > 0 {
        slowdowns.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    let k = slowdowns.len();
    let mut runs = Vec::new();
    let base = TestnetOptions {
        model: a.model.clone(),
        log_dir: None,
        ..TestnetOptions::default()
    };

    // Even split (and the calibration: each node's announced speed).
    let n_layers;
    let ms_per_block: Vec<f64>;
    let hop_ms: f64;
    {
        let opts = TestnetOptions {
            nodes: k,
            split: Split::Even,
            per_node_args: slowdown_args(&slowdowns)?,
            log_dir: Some(log_dir.join(format!("seed-{seed}/even"))),
            ..base.clone()
        };
        let net = Testnet::start(&opts).await.context("even split")?;
        n_layers = net.n_layers;
        let (ms, hop) = calibrate(&net, a, seed).await?;
        ms_per_block = ms;
        hop_ms = a.hop_ms.unwrap_or(hop);
        let (tps, tokens, wall) = measure(&net, a, seed).await?;
        runs.push(Run {
            placement: "even",
            seed,
            slowdowns: slowdowns.clone(),
            ranges: net.nodes.iter().map(|n| inclusive(&n.blocks)).collect(),
            tokens_per_s: tps,
            tokens,
            wall_s: wall,
            predicted_tokens_per_s: None,
            ms_per_block: ms_per_block.clone(),
            hop_ms: Some(hop_ms),
        });
        println!(
            "seed {seed} even {:?}: {tps:.1} tokens/s (calibration: ms per block {ms_per_block:.3?}, {hop_ms:.2} ms per hop)",
            runs[0].ranges
        );
    }

    // The planner's exact DP over the measured speeds.
    {
        let peers: Vec<Peer> = (0..k)
            .map(|i| Peer {
                id: format!("node{i}"),
                max_blocks: a.max_blocks,
                ms_per_block: ms_per_block[i],
                up_ms: hop_ms,
                down_ms: hop_ms,
                max_job_rate: 1.0,
                power_saving: false,
            })
            .collect();
        let swarm = Swarm::new(
            n_layers,
            peers,
            &[],
            sunswarm_planner::MissingLink::Fixed(hop_ms),
        )?;
        let report = plan(
            &swarm,
            &PlanOptions {
                objective: Objective::Throughput,
                ..PlanOptions::default()
            },
        )?;
        let chosen: Vec<(usize, BlockRange)> = report
            .stages
            .iter()
            .map(|s| {
                let i: usize = s.peer.trim_start_matches("node").parse()?;
                Ok((i, BlockRange::new(s.start, s.end)?))
            })
            .collect::<Result<_>>()?;
        let stage_slowdowns: Vec<f64> = chosen.iter().map(|(i, _)| slowdowns[*i]).collect();
        let opts = TestnetOptions {
            nodes: chosen.len(),
            split: Split::List(chosen.iter().map(|(_, r)| *r).collect()),
            per_node_args: slowdown_args(&stage_slowdowns)?,
            log_dir: Some(log_dir.join(format!("seed-{seed}/planner"))),
            ..base.clone()
        };
        let net = Testnet::start(&opts).await.context("planner placement")?;
        let (tps, tokens, wall) = measure(&net, a, seed).await?;
        let mut ranges = vec!["-".to_string(); k];
        for (i, r) in &chosen {
            ranges[*i] = inclusive(r);
        }
        println!(
            "seed {seed} planner {ranges:?}: {tps:.1} tokens/s (DP predicts {:.1} with enough sessions)",
            report.tokens_per_s
        );
        runs.push(Run {
            placement: "planner",
            seed,
            slowdowns: slowdowns.clone(),
            ranges,
            tokens_per_s: tps,
            tokens,
            wall_s: wall,
            predicted_tokens_per_s: Some(report.tokens_per_s),
            ms_per_block: Vec::new(),
            hop_ms: None,
        });
    }

    // Petals' rule: auto nodes joining in node order.
    {
        let opts = TestnetOptions {
            nodes: k,
            split: Split::Auto,
            node_args: vec![
                "--max-blocks".into(),
                a.max_blocks.to_string(),
                "--replan-interval".into(),
                "5".into(),
            ],
            per_node_args: slowdown_args(&slowdowns)?,
            log_dir: Some(log_dir.join(format!("seed-{seed}/petals"))),
            ..base.clone()
        };
        let net = Testnet::start(&opts).await.context("petals placement")?;
        let (tps, tokens, wall) = measure(&net, a, seed).await?;
        // Ranges as announced now (a node may have moved since it started).
        let client = net.client().await?;
        let anns = client.discover(&net.model_id, net.n_layers).await?;
        client.stop().await;
        let ranges: Vec<String> = net
            .nodes
            .iter()
            .map(|nd| {
                let me = nd.peer.parse::<libp2p::PeerId>().ok().map(|p| p.to_bytes());
                anns.iter()
                    .find(|a| Some(&a.peer_id) == me.as_ref())
                    .map_or("?".into(), |a| inclusive(&a.blocks))
            })
            .collect();
        println!("seed {seed} petals {ranges:?}: {tps:.1} tokens/s");
        runs.push(Run {
            placement: "petals",
            seed,
            slowdowns,
            ranges,
            tokens_per_s: tps,
            tokens,
            wall_s: wall,
            predicted_tokens_per_s: None,
            ms_per_block: Vec::new(),
            hop_ms: None,
        });
    }
    Ok(runs)
}

pub fn run(a: PlacementArgs) -> Result<()> {
    anyhow::ensure!(
        a.slowdowns.len() >= 2,
        "--slowdowns needs at least two nodes"
    );
    anyhow::ensure!(
        a.clients >= 1 && a.rounds >= 1 && a.tokens >= 2,
        "nothing to measure"
    );
    let log_dir = a.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sunswarm-placement-{}", std::process::id()))
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for seed in 0..a.seeds {
        runs.extend(rt.block_on(one_seed(&a, seed, &log_dir))?);
    }
    let by = |p: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.placement == p)
            .map(|r| r.tokens_per_s)
            .collect()
    };
    let summary: Vec<Summary> = ["even", "planner", "petals"]
        .iter()
        .map(|&p| {
            let (m, sd) = mean_sd(&by(p));
            Summary {
                placement: p,
                mean_tokens_per_s: m,
                sd_tokens_per_s: sd,
            }
        })
        .collect();
    let ratio = |other: &str| -> Vec<f64> {
        by("planner")
            .iter()
            .zip(by(other))
            .map(|(p, o)| p / o)
            .collect()
    };
    let (pe, pp) = (ratio("even"), ratio("petals"));
    println!();
    println!("placement   tokens/s (mean +- sd over {} seeds)", a.seeds);
    for s in &summary {
        println!(
            "{:<10} {:>7.1} +- {:.1}",
            s.placement, s.mean_tokens_per_s, s.sd_tokens_per_s
        );
    }
    let (pe_m, pe_sd) = mean_sd(&pe);
    let (pp_m, pp_sd) = mean_sd(&pp);
    println!("planner / even   {pe_m:.2} +- {pe_sd:.2} (per seed {pe:.2?})");
    println!("planner / petals {pp_m:.2} +- {pp_sd:.2} (per seed {pp:.2?})");
    if let Some(path) = &a.json {
        let doc = Document {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            max_blocks: a.max_blocks,
            clients: a.clients,
            rounds: a.rounds,
            tokens: a.tokens,
            hop_ms: a.hop_ms,
            runs,
            summary,
            planner_over_even: pe,
            planner_over_petals: pp,
            planner_over_even_mean_sd: (pe_m, pe_sd),
            planner_over_petals_mean_sd: (pp_m, pp_sd),
        };
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
