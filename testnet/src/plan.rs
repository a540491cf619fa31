//! `swarm-testnet plan --peers FILE [--json]`: the exact one-range-per-peer placement of seed 003
//! for a swarm described in a peers file (format: `sunswarm_planner::file`), printed as a table
//! or, with `--json`, as the planner's report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use sunswarm_planner::{Objective, PeersFile, PlanReport, plan_from_json};

/// `swarm-testnet plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The peers file (JSON; see planner/examples/peers.json and the planner's `file` module).
    #[arg(long)]
    peers: PathBuf,
    /// Print the plan as one JSON object (the planner's report) instead of a table.
    #[arg(long)]
    json: bool,
    /// Override the file's objective: throughput (pipeline bottleneck) or latency (one token).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ObjectiveArg {
    Throughput,
    Latency,
}

/// Reads the file, plans, prints.
pub fn run(args: &PlanArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.peers)
        .with_context(|| format!("reading {}", args.peers.display()))?;
    let text = match args.objective {
        None => text,
        Some(o) => {
            let mut file: PeersFile = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", args.peers.display()))?;
            file.objective = match o {
                ObjectiveArg::Throughput => Objective::Throughput,
                ObjectiveArg::Latency => Objective::Latency,
            };
            serde_json::to_string(&file)?
        }
    };
    let report =
        plan_from_json(&text).with_context(|| format!("planning {}", args.peers.display()))?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    // A reader that stops early (`| head`) is not an error.
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The plan as text: one line per stage, then the totals.
fn table(r: &PlanReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "objective {:?}, {} blocks{}",
        r.objective,
        r.blocks,
        if r.exact {
            ""
        } else {
            " (not exact: peers dropped)"
        }
    );
    let _ = writeln!(
        s,
        "{:<16} {:>11} {:>10} {:>10}",
        "peer", "blocks", "hop in ms", "stage ms"
    );
    for st in &r.stages {
        let _ = writeln!(
            s,
            "{:<16} {:>11} {:>10.3} {:>10.3}",
            st.peer,
            format!("{}..{}", st.start, st.end),
            st.hop_in_ms,
            st.stage_ms
        );
    }
    let _ = writeln!(s, "{:<16} {:>11} {:>10.3}", "return", "", r.return_ms);
    let _ = writeln!(
        s,
        "latency {:.3} ms ({:.1} tokens/s for one session), bottleneck {:.3} ms ({:.1} tokens/s with {} sessions in flight)",
        r.latency_ms,
        r.tokens_per_s_one_session,
        r.bottleneck_ms,
        r.tokens_per_s,
        r.sessions_to_saturate
    );
    for e in &r.excluded {
        let _ = writeln!(s, "excluded {}: {}", e.peer, e.reason);
    }
    for d in &r.dropped {
        let _ = writeln!(s, "dropped {d} (beyond the exact DP's peer limit)");
    }
    s
}
