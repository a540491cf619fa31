//! `swarm-testnet experiment energy`: the paper's policy comparison on a live swarm of real
//! processes with emulated harvesting batteries on an accelerated clock, next to the simulator's
//! prediction for the same parameters (see docs/live-energy.md).

mod design;
mod live;
mod simulated;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use sunswarm_energy::policy::PolicyKind;

pub use design::Design;

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Uniform vs long-term vs adaptive routing on a heterogeneous emulated swarm.
    Energy(EnergyArgs),
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
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results document here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Node logs go here (a temporary folder by default).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn policies(s: &str) -> Result<Vec<PolicyKind>> {
    Ok(match s {
        "all" => PolicyKind::PAPER.to_vec(),
        other => vec![sunswarm_client::swarm::parse_policy(other)?],
    })
}

/// The JSON key of a policy, as the issue spells it.
fn key(p: PolicyKind) -> &'static str {
    match p {
        PolicyKind::LongTerm => "long-term",
        other => other.name(),
    }
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    let ExperimentCommand::Energy(a) = cmd;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
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
    let pols = policies(&a.policy)?;
    let log_dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sunswarm-experiment-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut live, mut sim) = (Map::new(), Map::new());
    println!(
        "{:<10} {:>8} {:>8} {:>6} {:>6} {:>9}   | simulated: {:>8} {:>8} {:>6} {:>6}",
        "policy", "ps_frac", "thr", "done", "drop", "J/token", "ps_frac", "thr", "done", "drop"
    );
    for p in pols {
        let counts = rt
            .block_on(live::run(&d, p, &a.model, &log_dir))
            .with_context(|| format!("live run, policy {}", key(p)))?;
        let l = counts.outcome();
        let s = simulated::simulate(&d, p, a.sim_runs)?;
        println!(
            "{:<10} {:>8.4} {:>8.4} {:>6} {:>6} {:>9.0}   | simulated: {:>8.4} {:>8.4} {:>6.1} {:>6.1}",
            key(p),
            l.ps_frac,
            l.throughput,
            l.completed,
            l.dropped,
            l.joules_per_token.unwrap_or(f64::NAN),
            s.ps_frac,
            s.throughput,
            s.completed,
            s.dropped
        );
        let mut lv = serde_json::to_value(l)?;
        lv["offered"] = json!(counts.offered);
        lv["tokens"] = json!(counts.tokens);
        live.insert(key(p).into(), lv);
        sim.insert(key(p).into(), serde_json::to_value(s)?);
    }
    let doc = json!({ "live": Value::Object(live), "simulated": Value::Object(sim), "params": serde_json::to_value(&d)? });
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
