//! `swarm-testnet sim`: the paper's experiments (spec sec. 7) on the `sunswarm-energy` model.
//!
//! Each experiment prints a table to stdout, can write the results JSON of spec sec. 9
//! (`--json`), and can draw its SVG figure (`--figures DIR`). Repetitions run in parallel with
//! rayon; each run seeds its own generator from (`--seed`, experiment point, run index), so the
//! numbers do not depend on the number of threads.

mod args;
mod fig2;
mod network;
mod plot;
mod report;
mod runner;

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

pub use args::SimParams;

/// `swarm-testnet sim <experiment> [options]`.
#[derive(Debug, Args)]
pub struct SimCommand {
    #[command(subcommand)]
    experiment: Experiment,
    #[command(flatten)]
    params: SimParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Experiment {
    /// Fig. 2a: one device, jobs completed and mean battery per power mode.
    Fig2a,
    /// Fig. 2b: risk against input rate and the eq. 5 maximum rate per power mode.
    Fig2b,
    /// Fig. 3: fraction of devices in power saving per policy, against energy and arrival rate.
    Fig3,
    /// Fig. 4: throughput and dropped jobs per policy, against energy and arrival rate.
    Fig4,
    /// Every experiment; `--json` writes the whole spec sec. 9 document.
    Paper,
}

/// Runs one `sim` subcommand.
pub fn run(cmd: SimCommand) -> Result<()> {
    let p = cmd.params;
    p.validate()?;
    if let Some(threads) = p.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().context("configuring the rayon thread pool")?;
    }
    let (two_a, two_b, net) = match cmd.experiment {
        Experiment::Fig2a => (true, false, false),
        Experiment::Fig2b => (false, true, false),
        Experiment::Fig3 | Experiment::Fig4 => (false, false, true),
        Experiment::Paper => (true, true, true),
    };
    let total = if two_a { fig2::fig2a_runs(&p) } else { 0 } + if net { network::planned_runs(&p) } else { 0 };
    let progress = runner::Progress::new(total as u64, p.quiet);
    let started = std::time::Instant::now();

    let fig2a = two_a.then(|| fig2::fig2a(&p, &progress)).transpose()?;
    let fig2b = two_b.then(|| fig2::fig2b(&p)).transpose()?;
    let sweeps = net.then(|| network::sweeps(&p, &progress)).transpose()?;
    progress.finish();
    let elapsed = started.elapsed();

    if let Some(r) = &fig2a {
        report::print_fig2a(r);
    }
    if let Some(r) = &fig2b {
        report::print_fig2b(r, p.delta);
    }
    if let Some(s) = &sweeps {
        let show_ps = cmd.experiment != Experiment::Fig4;
        let show_thr = cmd.experiment != Experiment::Fig3;
        report::print_sweeps(s, show_ps, show_thr);
    }
    eprintln!("sim: done in {:.2} s", elapsed.as_secs_f64());

    if let Some(path) = &p.json {
        let doc = report::document(&p, fig2a.as_ref(), fig2b.as_ref(), sweeps.as_ref());
        write(path, &serde_json::to_string_pretty(&doc)?)?;
        eprintln!("sim: wrote {}", path.display());
    }
    if let Some(dir) = &p.figures {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        if let Some(r) = &fig2a {
            written.push(plot::fig2a(dir, r)?);
        }
        if let Some(r) = &fig2b {
            written.push(plot::fig2b(dir, r, p.delta)?);
        }
        if let Some(s) = &sweeps {
            written.extend(plot::network(dir, s)?);
        }
        for w in written {
            eprintln!("sim: wrote {}", w.display());
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
