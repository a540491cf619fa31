//! `swarm-testnet experiment routing`: CS-UCB against the energy policies with one slow replica.
//! Four nodes serve 0-9, 10-19, 10-19, 20-29; the second replica of 10-19 computes `--slow`
//! times slower. For each seed, each policy gets a fresh client engine (nothing learnt carries
//! over) whose `--clients` concurrent clients run `--per-client` generations each, all sharing
//! the engine's router as `swarm-client serve` does. After the first `--warmup` generations:
//!
//! - the share of decode steps whose route went through the slow replica;
//! - deadline misses: decode steps whose round trip exceeded `--deadline-ms`;
//! - p95 of the decode steps' round trips (time per token);
//! - joules per token: on each hop, its node's power (`--fast-watts` for the others,
//!   `--slow-watts` for the slow replica: a weaker device draws less but runs longer) times its
//!   announced time per token through its range (`1 / throughput`, measured by the node with its
//!   slowdown), summed over the route: what the routing decision costs, independent of how the
//!   nodes batched the steps (a batched pass's compute is shared by its steps, and the per-hop
//!   receipts carry the whole pass). The nodes are on mains, so the routers see no announced
//!   energy cost: CS-UCB learns from time here.
//! - the mean time of a hop on the slow replica and on the fast one (from the receipts).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sunswarm_client::swarm::parse_routing;
use sunswarm_testnet::net::{Slowdown, Split, Testnet, TestnetOptions, apply_slowdowns};

use super::load::{self, GenRecord, mean_sd, percentile};

#[derive(Debug, Args)]
pub struct RoutingArgs {
    /// Policies to compare (comma separated): uniform, long-term, adaptive, lookahead, cs-ucb.
    #[arg(long, default_value = "uniform,long-term,adaptive,cs-ucb")]
    policies: String,
    /// How many times slower the slow replica computes.
    #[arg(long, default_value_t = 4.0)]
    slow: f64,
    /// Per-token deadline, ms (cs-ucb's constraint, and what a miss is).
    #[arg(long, default_value_t = 120.0)]
    deadline_ms: f64,
    /// cs-ucb's prior.
    #[arg(long, default_value = "uniform")]
    prior: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Generations per client.
    #[arg(long, default_value_t = 5)]
    per_client: usize,
    /// New tokens per generation.
    #[arg(long, default_value_t = 24)]
    tokens: usize,
    /// Generations (in start order) before the measured ones.
    #[arg(long, default_value_t = 8)]
    warmup: usize,
    /// Seeds 0..N (the prompts; policies are interleaved within a seed).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Power of the fast nodes while computing, W.
    #[arg(long, default_value_t = 30.0)]
    fast_watts: f64,
    /// Power of the slow replica while computing, W.
    #[arg(long, default_value_t = 10.0)]
    slow_watts: f64,
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// One policy, one seed.
#[derive(Debug, Clone, Serialize)]
struct Run {
    policy: String,
    seed: u64,
    generations: usize,
    measured_steps: usize,
    slow_share: f64,
    deadline_misses: usize,
    miss_rate: f64,
    p95_ms: f64,
    median_ms: f64,
    joules_per_token: f64,
    tokens_per_s: f64,
    failovers: usize,
    /// Mean hop time on the slow replica and on its fast twin, ms (0 when unused).
    slow_hop_ms: f64,
    fast_hop_ms: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    policy: String,
    slow_share: (f64, f64),
    miss_rate: (f64, f64),
    p95_ms: (f64, f64),
    joules_per_token: (f64, f64),
    tokens_per_s: (f64, f64),
}

#[derive(Debug, Serialize)]
struct Document {
    command: String,
    slow: f64,
    deadline_ms: f64,
    prior: String,
    clients: usize,
    per_client: usize,
    tokens: usize,
    warmup: usize,
    fast_watts: f64,
    slow_watts: f64,
    /// Each node's range and announced tokens per second through it (what joules per token are
    /// computed from), node order; node 2 is the slow replica.
    nodes: Vec<(String, f64)>,
    runs: Vec<Run>,
    /// Mean and sd over seeds of each figure.
    summary: Vec<Summary>,
}

/// The nodes of the experiment as the metrics need them.
struct Nodes {
    slow_peer: Vec<u8>,
    fast_twin: Vec<u8>,
    /// Each peer's announced time per token through its range, seconds.
    seconds_per_token: Vec<(Vec<u8>, f64)>,
}

fn metrics(
    a: &RoutingArgs,
    policy: &str,
    seed: u64,
    recs: &[GenRecord],
    wall_s: f64,
    nodes: &Nodes,
) -> Run {
    let measured: Vec<&GenRecord> = recs.iter().filter(|r| r.order >= a.warmup).collect();
    let mut steps_ms = Vec::new();
    let (mut slow_steps, mut joules) = (0usize, 0.0f64);
    let (mut slow_hops, mut fast_hops) = (Vec::new(), Vec::new());
    for r in &measured {
        let slow = r.route.iter().any(|(p, _)| *p == nodes.slow_peer);
        if slow {
            slow_steps += r.step_us.len();
        }
        steps_ms.extend(r.step_us.iter().map(|&u| u as f64 / 1e3));
        let per_token: f64 = r
            .route
            .iter()
            .map(|(p, _)| {
                let watts = if *p == nodes.slow_peer {
                    a.slow_watts
                } else {
                    a.fast_watts
                };
                let s = nodes
                    .seconds_per_token
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or(0.0, |(_, s)| *s);
                watts * s
            })
            .sum();
        joules += per_token * r.step_us.len() as f64;
        for hops in &r.step_hop_total_us {
            for (h, &us) in hops.iter().enumerate() {
                match r.route.get(h) {
                    Some((p, _)) if *p == nodes.slow_peer => slow_hops.push(f64::from(us) / 1e3),
                    Some((p, _)) if *p == nodes.fast_twin => fast_hops.push(f64::from(us) / 1e3),
                    _ => {}
                }
            }
        }
    }
    let n = steps_ms.len();
    let misses = steps_ms.iter().filter(|&&ms| ms > a.deadline_ms).count();
    let tokens: usize = recs.iter().map(|r| r.tokens).sum();
    Run {
        policy: policy.to_string(),
        seed,
        generations: recs.len(),
        measured_steps: n,
        slow_share: slow_steps as f64 / n.max(1) as f64,
        deadline_misses: misses,
        miss_rate: misses as f64 / n.max(1) as f64,
        p95_ms: percentile(&steps_ms, 95.0),
        median_ms: percentile(&steps_ms, 50.0),
        joules_per_token: joules / n.max(1) as f64,
        tokens_per_s: tokens as f64 / wall_s,
        failovers: recs.iter().map(|r| r.failovers).sum(),
        slow_hop_ms: mean_sd(&slow_hops).0,
        fast_hop_ms: mean_sd(&fast_hops).0,
    }
}

pub fn run(a: RoutingArgs) -> Result<()> {
    let policies: Vec<String> = a
        .policies
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    for p in &policies {
        parse_routing(p, &a.prior, a.deadline_ms)?;
    }
    anyhow::ensure!(a.slow >= 1.0, "--slow must be at least 1");
    anyhow::ensure!(
        a.clients * a.per_client > a.warmup,
        "--warmup leaves no generation to measure"
    );
    let log_dir = a.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sunswarm-routing-{}", std::process::id()))
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut announced: Vec<(String, f64)> = Vec::new();
    let runs = rt.block_on(async {
        let mut opts = TestnetOptions {
            nodes: 4,
            model: a.model.clone(),
            split: "0-9,10-19,10-19,20-29".parse::<Split>()?,
            log_dir: Some(log_dir.clone()),
            ..TestnetOptions::default()
        };
        apply_slowdowns(
            &mut opts.per_node_args,
            4,
            &[Slowdown {
                node: 2,
                factor: a.slow,
            }],
        )?;
        let net = Testnet::start(&opts).await.context("starting the testnet")?;
        let peer = |i: usize| -> Result<Vec<u8>> {
            Ok(net.nodes[i].peer.parse::<libp2p::PeerId>()?.to_bytes())
        };
        let client = net.client().await?;
        let anns = client.discover(&net.model_id, net.n_layers).await?;
        client.stop().await;
        let nodes = Nodes {
            slow_peer: peer(2)?,
            fast_twin: peer(1)?,
            seconds_per_token: anns
                .iter()
                .filter(|a| a.throughput > 0.0)
                .map(|a| (a.peer_id.clone(), 1.0 / f64::from(a.throughput)))
                .collect(),
        };
        for nd in &net.nodes {
            let me = nd.peer.parse::<libp2p::PeerId>()?.to_bytes();
            let tps = anns
                .iter()
                .find(|a| a.peer_id == me)
                .map_or(0.0, |a| f64::from(a.throughput));
            announced.push((nd.blocks.to_string(), tps));
        }
        anyhow::ensure!(
            nodes.seconds_per_token.len() == 4,
            "every node's announcement with its throughput: {} found",
            nodes.seconds_per_token.len()
        );
        let mut runs = Vec::new();
        for seed in 0..a.seeds {
            for p in &policies {
                let routing = parse_routing(p, &a.prior, a.deadline_ms)?;
                let engine = load::engine(&a.model, &net.bootstrap, routing, 4).await?;
                let (recs, wall) =
                    load::drive(&engine, &a.model, a.clients, a.per_client, a.tokens, seed)
                        .await?;
                if let Some(l) = engine.learned() {
                    let stat = |p: &[u8]| l.stats(&net.model_id, 10, 20, p);
                    tracing::info!(
                        counts = ?l.counts(),
                        fast = ?stat(&nodes.fast_twin),
                        slow = ?stat(&nodes.slow_peer),
                        "what cs-ucb learnt of blocks 10-19"
                    );
                }
                if let Some(s) = engine.swarm() {
                    s.stop().await;
                }
                let r = metrics(&a, p, seed, &recs, wall.as_secs_f64(), &nodes);
                println!(
                    "seed {seed} {p:<9} slow share {:.3}  misses {:>4}/{} ({:.3})  p95 {:.1} ms  median {:.1} ms  {:.3} J/token  {:.1} tokens/s  hop slow {:.1} ms fast {:.1} ms",
                    r.slow_share,
                    r.deadline_misses,
                    r.measured_steps,
                    r.miss_rate,
                    r.p95_ms,
                    r.median_ms,
                    r.joules_per_token,
                    r.tokens_per_s,
                    r.slow_hop_ms,
                    r.fast_hop_ms
                );
                runs.push(r);
            }
        }
        anyhow::Ok(runs)
    })?;
    let summary: Vec<Summary> = policies
        .iter()
        .map(|p| {
            let of = |f: fn(&Run) -> f64| {
                mean_sd(
                    &runs
                        .iter()
                        .filter(|r| &r.policy == p)
                        .map(f)
                        .collect::<Vec<_>>(),
                )
            };
            Summary {
                policy: p.clone(),
                slow_share: of(|r| r.slow_share),
                miss_rate: of(|r| r.miss_rate),
                p95_ms: of(|r| r.p95_ms),
                joules_per_token: of(|r| r.joules_per_token),
                tokens_per_s: of(|r| r.tokens_per_s),
            }
        })
        .collect();
    println!();
    println!(
        "policy     slow share      miss rate       p95 ms          J/token         tokens/s   (mean +- sd over {} seeds)",
        a.seeds
    );
    for s in &summary {
        println!(
            "{:<10} {:.3} +- {:.3}   {:.3} +- {:.3}   {:>6.1} +- {:<5.1}  {:.3} +- {:.3}   {:.1} +- {:.1}",
            s.policy,
            s.slow_share.0,
            s.slow_share.1,
            s.miss_rate.0,
            s.miss_rate.1,
            s.p95_ms.0,
            s.p95_ms.1,
            s.joules_per_token.0,
            s.joules_per_token.1,
            s.tokens_per_s.0,
            s.tokens_per_s.1
        );
    }
    if let Some(path) = &a.json {
        let doc = Document {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            slow: a.slow,
            deadline_ms: a.deadline_ms,
            prior: a.prior.clone(),
            clients: a.clients,
            per_client: a.per_client,
            tokens: a.tokens,
            warmup: a.warmup,
            fast_watts: a.fast_watts,
            slow_watts: a.slow_watts,
            nodes: announced,
            runs,
            summary,
        };
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
