//! `swarm-testnet experiment energy`: the paper's policy comparison on a live swarm of real
//! processes with emulated harvesting batteries on an accelerated clock, next to the simulator's
//! prediction for the same parameters (see docs/live-energy.md).

mod design;
mod live;
mod load;
mod placement;
mod plot;
mod report;
mod routing;
mod simulated;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sunswarm_energy::policy::PolicyKind;

pub use design::Design;
use report::{LiveRun, PolicyResult, key};

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Uniform vs long-term vs adaptive routing on a heterogeneous emulated swarm.
    Energy(EnergyArgs),
    /// Block placement on a heterogeneous swarm: the planner's DP against an even split and
    /// against Petals' rule (--blocks auto), in aggregate tokens/s with concurrent clients.
    Placement(placement::PlacementArgs),
    /// CS-UCB against the energy policies with one slow replica: its share of steps, deadline
    /// misses, p95 time per token, joules per token.
    Routing(routing::RoutingArgs),
}

#[derive(Debug, Args)]
pub struct EnergyArgs {
    /// uniform, long-term, adaptive or all.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Nodes in all (a multiple of --groups).
    #[arg(long, default_value_t = 9)]
    nodes: usize,
    /// Harvest groups (= nodes per layer); group k harvests around E * (0.5 .. 1.5).
    #[arg(long, default_value_t = 3)]
    groups: usize,
    /// Probability that a job arrives in a slot.
    #[arg(long, default_value_t = 0.5)]
    job_prob: f64,
    /// Mean harvest of the middle group, kJ per slot (the paper's mu_bar).
    #[arg(long, default_value_t = 5.0)]
    energy_mean: f64,
    /// Arrival slots; 30 drain slots follow.
    #[arg(long, default_value_t = 100)]
    duration: usize,
    /// Battery time per wall time (100: a 100 s slot lasts 1 s).
    #[arg(long, default_value_t = 100.0)]
    clock_scale: f64,
    /// New tokens per job.
    #[arg(long, default_value_t = 4)]
    tokens: usize,
    /// Model every node serves.
    #[arg(long, default_value = "random:tiny")]
    model: String,
    /// Simulated runs for the prediction.
    #[arg(long, default_value_t = 300)]
    sim_runs: usize,
    /// Live runs per policy; run r uses seed --seed + r, and the runs are interleaved (every
    /// policy once, then again) so that slow drifts of the machine hit every policy alike.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Seeds the arrivals, the nodes' harvests and the route choices (and the simulator).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results document here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG of live vs simulated power saving and throughput per policy here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Node logs go here, under rep-R/POLICY/ (a temporary folder by default).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn policies(s: &str) -> Result<Vec<PolicyKind>> {
    Ok(match s {
        "all" => PolicyKind::PAPER.to_vec(),
        other => vec![sunswarm_client::swarm::parse_policy(other)?],
    })
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let a = match cmd {
        ExperimentCommand::Energy(a) => a,
        ExperimentCommand::Placement(a) => return placement::run(a),
        ExperimentCommand::Routing(a) => return routing::run(a),
    };
    let d = Design {
        nodes: a.nodes,
        groups: a.groups,
        job_prob: a.job_prob,
        energy_mean: a.energy_mean,
        slots: a.duration,
        drain: 30,
        initial: 50,
        clock_scale: a.clock_scale,
        slot_secs: 100.0,
        tokens_per_job: a.tokens,
        seed: a.seed,
    };
    d.validate()?;
    anyhow::ensure!(a.repeats >= 1, "--repeats must be at least 1");
    let pols = policies(&a.policy)?;
    // The prediction first: it is quick, and a bad parameter fails before the live runs.
    let mut results = pols
        .iter()
        .map(|&p| {
            Ok(PolicyResult {
                policy: p,
                live: Vec::new(),
                simulated: simulated::simulate(&d, p, a.sim_runs)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let log_dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sunswarm-experiment-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for rep in 0..a.repeats {
        let dr = Design {
            seed: a.seed.wrapping_add(rep as u64),
            ..d.clone()
        };
        for res in &mut results {
            let p = res.policy;
            let counts = rt
                .block_on(live::run(
                    &dr,
                    p,
                    &a.model,
                    &log_dir.join(format!("rep-{rep}")),
                ))
                .with_context(|| format!("live run {}, policy {}", rep + 1, key(p)))?;
            let run = LiveRun {
                seed: dr.seed,
                counts,
            };
            println!("{}", report::run_line(rep, a.repeats, p, &run));
            res.live.push(run);
        }
    }
    print!("{}", report::table(&results));
    if let Some(path) = &a.json {
        let doc = report::document(&results, &d, a.repeats, a.sim_runs)?;
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &a.plot {
        std::fs::write(path, plot::svg(&results, &d)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
