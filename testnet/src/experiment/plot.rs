//! `--plot`: live beside simulated, per policy, for power saving and throughput (bars with the
//! drawing helpers and policy colours of `sim`'s figures).

use anyhow::Result;
use plotters::prelude::*;

use super::design::{Design, Spread, Summary};
use super::report::{PolicyResult, key};
use crate::sim::plot::{BarSeries, bar_panel, err, policy_color};
use crate::sim::runner::Stat;

const LEGEND_GREY: RGBColor = RGBColor(90, 90, 90);
const LIVE_ALPHA: f64 = 0.85;
const SIM_ALPHA: f64 = 0.35;

/// A panel's metric of a summary.
type Metric = fn(&Summary) -> Spread;

fn bar(p: &PolicyResult, s: Spread) -> (RGBColor, Stat, bool) {
    let stat = Stat {
        mean: s.mean,
        sd: s.sd.unwrap_or(0.0),
    };
    (policy_color(p.policy), stat, s.sd.is_some())
}

/// The SVG document: two panels (ps_frac, throughput), for each policy a live bar (mean, ±sd when
/// there are repeats) left of the simulated bar (mean ± the sd of one run).
pub fn svg(results: &[PolicyResult], d: &Design) -> Result<String> {
    let names: Vec<String> = results.iter().map(|r| key(r.policy).to_string()).collect();
    let lives: Vec<Option<Summary>> = results.iter().map(PolicyResult::live_summary).collect();
    let repeats = lives.iter().flatten().map(|s| s.runs).max().unwrap_or(0);
    let sim_runs = results.iter().map(|r| r.simulated.runs).max().unwrap_or(0);
    let panels: [(&str, &str, Metric); 2] = [
        ("Power saving", "ps_frac: share of node-slots", |s| {
            s.ps_frac
        }),
        ("Throughput", "completed / offered jobs", |s| s.throughput),
    ];
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!(
                    "Live swarm vs simulator: energy mean {} kJ/slot, job probability {} \
                     ({} nodes, {} groups, {} + {} slots)",
                    d.energy_mean, d.job_prob, d.nodes, d.groups, d.slots, d.drain
                ),
                ("sans-serif", 20),
            )
            .map_err(err)?;
        let halves = root.split_evenly((1, 2));
        for ((title, y_desc, metric), area) in panels.iter().zip(halves.iter()) {
            let live = BarSeries {
                legend: if repeats > 1 {
                    format!("live: mean ± sd over {repeats} runs")
                } else {
                    "live: one run".into()
                },
                legend_color: LEGEND_GREY,
                offset: -0.19,
                half_width: 0.17,
                alpha: LIVE_ALPHA,
                bars: results
                    .iter()
                    .zip(&lives)
                    .map(|(r, l)| {
                        // A policy without live runs gets an empty bar rather than a shifted row.
                        let s = l.as_ref().map_or(
                            Spread {
                                mean: 0.0,
                                sd: None,
                            },
                            metric,
                        );
                        bar(r, s)
                    })
                    .collect(),
            };
            let sim = BarSeries {
                legend: format!("simulated: mean ± sd of one run ({sim_runs} runs)"),
                legend_color: LEGEND_GREY,
                offset: 0.19,
                half_width: 0.17,
                alpha: SIM_ALPHA,
                bars: results
                    .iter()
                    .map(|r| bar(r, metric(&r.simulated)))
                    .collect(),
            };
            let top = live
                .bars
                .iter()
                .chain(&sim.bars)
                .map(|b| b.1.mean + b.1.sd)
                .fold(0.05f64, f64::max);
            // Headroom so the legend box never covers a bar.
            bar_panel(area, title, y_desc, &names, &[live, sim], top * 1.5, |_| {
                Ok(())
            })?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::report::tests::results;

    #[test]
    fn the_plot_has_a_live_and_a_simulated_bar_per_policy_and_panel() {
        let d = crate::experiment::design::tests::design();
        let empty = svg(&[], &d).unwrap();
        let s = svg(&results(), &d).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        for name in ["uniform", "long-term", "adaptive"] {
            assert!(
                s.contains(&format!(">\n{name}\n</text>")),
                "no label {name}"
            );
        }
        assert!(s.contains("energy mean 5 kJ/slot, job probability 0.5"));
        assert!(s.contains("live: mean ± sd over 2 runs"));
        assert!(s.contains("simulated: mean ± sd of one run (2 runs)"));
        // 3 policies x 2 sides x 2 panels bars beyond what an empty chart draws.
        let rects = |svg: &str| svg.matches("<rect").count();
        assert!(
            rects(&s) >= rects(&empty) + 12,
            "{} rects vs {} empty",
            rects(&s),
            rects(&empty)
        );
        // Every policy's colour is used.
        for p in &results() {
            let RGBColor(r, g, b) = policy_color(p.policy);
            assert!(
                s.contains(&format!("#{r:02X}{g:02X}{b:02X}")),
                "{:?}",
                p.policy
            );
        }
    }
}
