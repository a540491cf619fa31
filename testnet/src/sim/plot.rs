//! SVG figures with plotters (SVG only: no font or image libraries to build).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use sunswarm_energy::PolicyKind;

use super::fig2::{Fig2aRow, Fig2bRow};
use super::network::{Sweep, Sweeps};
use super::report::paper_fig2a;
use super::runner::Stat;

pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

fn mode_color(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(0, 0, 0),
    ][i % 4]
}

pub(crate) fn policy_color(k: PolicyKind) -> RGBColor {
    match k {
        PolicyKind::Uniform => RGBColor(214, 39, 40),
        PolicyKind::LongTerm => RGBColor(31, 119, 180),
        PolicyKind::Adaptive => RGBColor(44, 160, 44),
        PolicyKind::Lookahead => RGBColor(148, 103, 189),
    }
}

/// The chart of a bar panel, for drawing more on it.
pub(crate) type BarChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One series of a bar panel: a bar per category, shifted by `offset` from the category's centre.
pub(crate) struct BarSeries {
    pub legend: String,
    pub legend_color: RGBColor,
    pub offset: f64,
    pub half_width: f64,
    /// Fill opacity.
    pub alpha: f64,
    /// Per category: colour, mean and sd, and whether to draw the ±sd whisker.
    pub bars: Vec<(RGBColor, Stat, bool)>,
}

/// A panel of bars with ±sd whiskers over named categories (x = 0, 1, ...); `extra` draws more
/// on the chart before the legend.
pub(crate) fn bar_panel(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[BarSeries],
    y_max: f64,
    extra: impl FnOnce(&mut BarChart<'_, '_>) -> Result<()>,
) -> Result<()> {
    let n = categories.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..y_max)
        .map_err(err)?;
    let fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&fmt)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for s in series {
        let (lc, alpha) = (s.legend_color, s.alpha);
        chart
            .draw_series(s.bars.iter().enumerate().map(|(i, (c, st, _))| {
                let x = i as f64 + s.offset;
                Rectangle::new(
                    [(x - s.half_width, 0.0), (x + s.half_width, st.mean)],
                    c.mix(alpha).filled(),
                )
            }))
            .map_err(err)?
            .label(&s.legend)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], lc.mix(alpha).filled())
            });
        chart
            .draw_series(
                s.bars
                    .iter()
                    .enumerate()
                    .filter(|b| b.1.2)
                    .map(|(i, (_, st, _))| {
                        ErrorBar::new_vertical(
                            i as f64 + s.offset,
                            (st.mean - st.sd).max(0.0),
                            st.mean,
                            st.mean + st.sd,
                            BLACK.filled(),
                            (s.half_width * 33.0).round() as u32,
                        )
                    }),
            )
            .map_err(err)?;
    }
    extra(&mut chart)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One bar panel of Fig. 2a: ours (bars, ±sd) and the paper's value (cross).
fn bars(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    rows: &[Fig2aRow],
    ours: impl Fn(&Fig2aRow) -> Stat,
    paper: impl Fn(&str) -> Option<f64>,
    y_max: f64,
) -> Result<()> {
    let names: Vec<String> = rows.iter().map(|r| r.mode.clone()).collect();
    let ours = BarSeries {
        legend: "ours (mean ± sd)".into(),
        legend_color: mode_color(0),
        offset: 0.0,
        half_width: 0.3,
        alpha: 0.7,
        bars: rows
            .iter()
            .enumerate()
            .map(|(i, r)| (mode_color(i), ours(r), true))
            .collect(),
    };
    bar_panel(area, title, y_desc, &names, &[ours], y_max, |chart| {
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
                paper(&r.mode).map(|v| Cross::new((i as f64, v), 7, RED.stroke_width(3)))
            }))
            .map_err(err)?
            .label("paper")
            .legend(|(x, y)| Cross::new((x + 6, y), 5, RED.stroke_width(3)));
        Ok(())
    })
}

/// Fig. 2a: jobs and mean battery per mode.
pub fn fig2a(dir: &Path, rows: &[Fig2aRow]) -> Result<PathBuf> {
    let path = dir.join("fig2a.svg");
    {
        let root = SVGBackend::new(&path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let halves = root.split_evenly((1, 2));
        let jobs_max = rows
            .iter()
            .map(|r| r.jobs.mean + r.jobs.sd)
            .fold(60.0f64, f64::max)
            * 1.15;
        bars(
            &halves[0],
            "Fig. 2a: jobs completed in 100 slots",
            "jobs",
            rows,
            |r| r.jobs,
            |m| paper_fig2a(m).map(|p| p.0),
            jobs_max,
        )?;
        let pct = |s: Stat| Stat {
            mean: 100.0 * s.mean,
            sd: 100.0 * s.sd,
        };
        bars(
            &halves[1],
            "Fig. 2a: mean battery",
            "% of capacity",
            rows,
            |r| pct(r.avg_battery),
            |m| paper_fig2a(m).map(|p| p.1),
            110.0,
        )?;
        root.present().map_err(err)?;
    }
    Ok(path)
}

/// Fig. 2b: risk against input rate, with delta and each mode's maximum rate marked.
pub fn fig2b(dir: &Path, rows: &[Fig2bRow], delta: f64) -> Result<PathBuf> {
    let path = dir.join("fig2b.svg");
    {
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let y_max = rows
            .iter()
            .flat_map(|r| r.risk_curve.iter().map(|c| c.1))
            .fold(3.0 * delta, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Fig. 2b: risk R(p; e_L) and maximum input rate (dots, dashed lines)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1.0, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("job arrival probability p per slot")
            .y_desc("risk: share of slots with e < e_L")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, delta), (1.0, delta)],
                BLACK.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("delta = {delta}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (i, r) in rows.iter().enumerate() {
            let c = mode_color(i);
            chart
                .draw_series(LineSeries::new(
                    r.risk_curve.iter().copied(),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!(
                    "{}: lam_max = {:.3}{}",
                    r.mode,
                    r.lam_max,
                    if r.lam_star < 1.0 / r.nbar {
                        " (energy)"
                    } else {
                        " (time)"
                    }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(DashedLineSeries::new(
                    [(r.lam_max, 0.0), (r.lam_max, y_max)],
                    6,
                    4,
                    c.stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (r.lam_max, r.risk_at_max),
                    6,
                    c.filled(),
                )))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(path)
}

/// One sweep panel: mean ± sd per policy, policies nudged apart so the error bars stay readable.
fn sweep_panel(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    sweep: &Sweep,
    metric: &dyn Fn(&super::network::Series) -> Vec<Stat>,
    scale: f64,
) -> Result<()> {
    let (x0, x1) = (
        sweep.xs.iter().copied().fold(f64::INFINITY, f64::min),
        sweep.xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let pad = (x1 - x0).max(1e-9) * 0.05;
    let y_max = sweep
        .series
        .iter()
        .flat_map(metric)
        .map(|st| (st.mean + st.sd) * scale)
        .fold(0.0f64, f64::max)
        .max(1e-6)
        // Headroom so the legend box never covers data.
        * 1.45;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x0 - pad..x1 + pad, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    let k = sweep.series.len() as f64;
    for (i, s) in sweep.series.iter().enumerate() {
        let c = policy_color(s.policy);
        let shift = (i as f64 - (k - 1.0) / 2.0) * pad * 0.25;
        let stats = metric(s);
        let pts: Vec<(f64, f64)> = sweep
            .xs
            .iter()
            .zip(&stats)
            .map(|(x, st)| (x + shift, st.mean * scale))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(sweep.xs.iter().zip(&stats).map(|(x, st)| {
                let (m, sd) = (st.mean * scale, st.sd * scale);
                ErrorBar::new_vertical(x + shift, (m - sd).max(0.0), m, m + sd, c.filled(), 6)
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Figs. 3 (power saving) and 4 (throughput, dropped jobs).
pub fn network(dir: &Path, s: &Sweeps) -> Result<Vec<PathBuf>> {
    let fig3 = dir.join("fig3.svg");
    let fig4 = dir.join("fig4.svg");
    let e_desc = "mean harvest mu_bar (kJ per slot)";
    let p_desc = "job arrival probability p";
    {
        let root = SVGBackend::new(&fig3, (1100, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let a = root.split_evenly((1, 2));
        let ps = |se: &super::network::Series| se.ps_frac.clone();
        sweep_panel(
            &a[0],
            &format!("Fig. 3a: devices in power saving (p = {})", s.net_p),
            e_desc,
            "% of device-slots",
            &s.vs_energy,
            &ps,
            100.0,
        )?;
        sweep_panel(
            &a[1],
            &format!("Fig. 3b: devices in power saving (mu_bar = {})", s.mu_bar),
            p_desc,
            "% of device-slots",
            &s.vs_arrival,
            &ps,
            100.0,
        )?;
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&fig4, (1100, 850)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let a = root.split_evenly((2, 2));
        let thr = |se: &super::network::Series| se.throughput.clone();
        let drop = |se: &super::network::Series| se.dropped.clone();
        sweep_panel(
            &a[0],
            &format!("Fig. 4a: throughput (p = {})", s.net_p),
            e_desc,
            "jobs out / jobs in",
            &s.vs_energy,
            &thr,
            1.0,
        )?;
        sweep_panel(
            &a[1],
            &format!("Fig. 4b: throughput (mu_bar = {})", s.mu_bar),
            p_desc,
            "jobs out / jobs in",
            &s.vs_arrival,
            &thr,
            1.0,
        )?;
        sweep_panel(
            &a[2],
            &format!("Fig. 4a: dropped jobs (p = {})", s.net_p),
            e_desc,
            "jobs dropped per run",
            &s.vs_energy,
            &drop,
            1.0,
        )?;
        sweep_panel(
            &a[3],
            &format!("Fig. 4b: dropped jobs (mu_bar = {})", s.mu_bar),
            p_desc,
            "jobs dropped per run",
            &s.vs_arrival,
            &drop,
            1.0,
        )?;
        root.present().map_err(err)?;
    }
    Ok(vec![fig3, fig4])
}
