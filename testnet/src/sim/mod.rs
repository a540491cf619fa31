//! `swarm-testnet sim`: the paper's experiments (spec sec. 7) on the `sunswarm-energy` model.
//!
//! Each experiment prints a table to stdout, can write the results JSON of spec sec. 9
//! (`--json`), and can draw its SVG figure (`--figures DIR`). Repetitions run in parallel with
//! rayon; each run seeds its own generator from (`--seed`, experiment point, run index), so the
//! numbers do not depend on the number of threads.

mod args;
mod fig2;
mod network;
pub(crate) mod plot;
mod report;
pub(crate) mod runner;

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
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("configuring the rayon thread pool")?;
    }
    let started = std::time::Instant::now();
    let out = compute(&p, cmd.experiment)?;
    let elapsed = started.elapsed();
    let Output {
        fig2a,
        fig2b,
        sweeps,
    } = out;

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

/// What one experiment produced.
struct Output {
    fig2a: Option<Vec<fig2::Fig2aRow>>,
    fig2b: Option<Vec<fig2::Fig2bRow>>,
    sweeps: Option<network::Sweeps>,
}

/// Runs the experiment's computations (on the current rayon pool), without printing anything
/// except the progress bar.
fn compute(p: &SimParams, experiment: Experiment) -> Result<Output> {
    let (two_a, two_b, net) = match experiment {
        Experiment::Fig2a => (true, false, false),
        Experiment::Fig2b => (false, true, false),
        Experiment::Fig3 | Experiment::Fig4 => (false, false, true),
        Experiment::Paper => (true, true, true),
    };
    let total = if two_a { fig2::fig2a_runs(p) } else { 0 }
        + if net { network::planned_runs(p) } else { 0 };
    let progress = runner::Progress::new(total as u64, p.quiet);
    let fig2a = two_a.then(|| fig2::fig2a(p, &progress)).transpose()?;
    let fig2b = two_b.then(|| fig2::fig2b(p)).transpose()?;
    let sweeps = net.then(|| network::sweeps(p, &progress)).transpose()?;
    progress.finish();
    Ok(Output {
        fig2a,
        fig2b,
        sweeps,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        params: SimParams,
    }

    fn params(extra: &[&str]) -> SimParams {
        let mut args = vec!["sim", "--quiet"];
        args.extend_from_slice(extra);
        TestCli::parse_from(args).params
    }

    fn document(p: &SimParams, e: Experiment) -> serde_json::Value {
        let o = compute(p, e).unwrap();
        report::document(p, o.fig2a.as_ref(), o.fig2b.as_ref(), o.sweeps.as_ref())
    }

    #[test]
    fn paper_document_has_the_spec_shape_and_findings() {
        let p = params(&[
            "--fig2a-runs",
            "200",
            "--net-runs",
            "60",
            "--policies",
            "uniform,longterm,adaptive",
        ]);
        let d = document(&p, Experiment::Paper);
        assert_eq!(d["schema"], "edge-llm-eh/1");
        for mode in ["15W", "30W", "60W", "dynamic"] {
            assert!(
                d["fig2a"][mode]["jobs"].is_f64() && d["fig2a"][mode]["avg_battery"].is_f64(),
                "{mode}"
            );
            assert_eq!(d["fig2b"][mode]["risk_curve"].as_array().unwrap().len(), 20);
        }
        // Fig. 2b: time-limited 1/3 and 1/2, energy-limited 60 W, dynamic above 60 W.
        let lam = |m: &str| d["fig2b"][m]["lam_max"].as_f64().unwrap();
        assert!((lam("15W") - 1.0 / 3.0).abs() < 1e-9 && (lam("30W") - 0.5).abs() < 1e-9);
        assert!(
            d["fig2b"]["60W"]["reached"].as_bool().unwrap()
                && lam("60W") < 1.0 / d["fig2b"]["60W"]["nbar"].as_f64().unwrap()
        );
        assert!(lam("dynamic") > lam("60W"));
        // Fig. 2a, 30 W row near the paper's 45 jobs / 42 %.
        assert!((d["fig2a"]["30W"]["jobs"].as_f64().unwrap() - 45.0).abs() < 1.0);
        assert!((d["fig2a"]["30W"]["avg_battery"].as_f64().unwrap() - 0.42).abs() < 0.03);
        // Policy ordering on both sweeps (mean ps_frac over the grid).
        for sweep in ["vs_energy", "vs_arrival"] {
            let mean = |k: &str| {
                let v = d["policies"][sweep][k]["ps_frac"].as_array().unwrap();
                v.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / v.len() as f64
            };
            assert!(
                mean("uniform") > mean("longterm") && mean("longterm") >= mean("adaptive") - 0.005,
                "{sweep}"
            );
        }
        assert_eq!(
            d["policies"]["vs_energy"]["mu_bar"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
        assert_eq!(
            d["policies"]["vs_arrival"]["p"].as_array().unwrap().len(),
            10
        );
        assert!(d["policies"]["ps_at_p1"]["8"]["adaptive"].is_f64());
        assert!(
            d.get("extensions").is_none(),
            "only the paper's policies were asked for"
        );
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let p = params(&[
            "--net-runs",
            "16",
            "--mu-bars",
            "3,6",
            "--net-ps",
            "0.4,0.9",
            "--p1-mu-bars",
            "8",
        ]);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| document(&p, Experiment::Fig3));
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| document(&p, Experiment::Fig3));
        assert_eq!(one, two);
        assert!(one["extensions"]["policies"]["vs_energy"]["lookahead"]["ps_frac"].is_array());
        let other = document(
            &params(&[
                "--seed",
                "2",
                "--net-runs",
                "16",
                "--mu-bars",
                "3,6",
                "--net-ps",
                "0.4,0.9",
                "--p1-mu-bars",
                "8",
            ]),
            Experiment::Fig3,
        );
        assert_ne!(
            one["policies"], other["policies"],
            "a different seed must change the runs"
        );
    }

    #[test]
    fn lookahead_saves_more_power_than_adaptive_without_losing_throughput() {
        let p = params(&[
            "--policies",
            "adaptive,lookahead",
            "--net-runs",
            "150",
            "--mu-bars",
            "3,4,5",
            "--net-ps",
            "0.5,0.7,0.9",
            "--p1-mu-bars",
            "8",
        ]);
        let o = compute(&p, Experiment::Fig3).unwrap().sweeps.unwrap();
        for sweep in [&o.vs_energy, &o.vs_arrival] {
            let (a, l) = (&sweep.series[0], &sweep.series[1]);
            assert!(
                report::mean_ps(l) < 0.9 * report::mean_ps(a),
                "lookahead {} vs adaptive {}",
                report::mean_ps(l),
                report::mean_ps(a)
            );
            for j in 0..sweep.xs.len() {
                assert!(
                    l.throughput[j].mean > a.throughput[j].mean - 0.01,
                    "throughput at {}",
                    sweep.xs[j]
                );
            }
        }
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(
            params(&["--net-p", "1.5"])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--net-p")
        );
        assert!(
            params(&["--e-low", "50"])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("e_low")
        );
        assert!(
            params(&["--capacity", "0"])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("capacity")
        );
        assert!(
            params(&["--e0", "120"])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--e0")
        );
        assert!(TestCli::try_parse_from(["sim", "--policies", "greedy"]).is_err());
    }
}
