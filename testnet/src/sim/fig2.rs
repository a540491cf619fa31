//! Fig. 2: the single device. 2a simulates each power mode; 2b solves the chain for the risk
//! curve and the eq. 5 maximum rate.

use anyhow::Result;
use serde::Serialize;
use sunswarm_energy::sim::{SingleConfig, run_single};
use sunswarm_energy::{Analysis, ModeTable, max_input_rate_with};

use super::args::SimParams;
use super::runner::{Progress, Stat, repeat};

/// Mode names in the paper's order, with their tables.
pub fn mode_tables(p: &SimParams) -> Result<Vec<(String, ModeTable)>> {
    let mut out = Vec::new();
    for m in p.modes() {
        out.push((m.name.clone(), ModeTable::fixed(m)?));
    }
    out.push(("dynamic".into(), p.dynamic_table()));
    Ok(out)
}

/// One Fig. 2a row.
#[derive(Debug, Clone, Serialize)]
pub struct Fig2aRow {
    pub mode: String,
    pub jobs: Stat,
    pub avg_battery: Stat,
    pub ps_frac: Stat,
}

pub fn fig2a_runs(p: &SimParams) -> usize {
    4 * p.fig2a_reps()
}

/// Fig. 2a: mean jobs and battery over the repetitions, per mode.
pub fn fig2a(p: &SimParams, progress: &Progress) -> Result<Vec<Fig2aRow>> {
    let mut rows = Vec::new();
    for (i, (name, table)) in mode_tables(p)?.into_iter().enumerate() {
        let cfg = SingleConfig {
            device: p.fig2_device(table)?,
            p: p.fig2a_p,
            slots: p.fig2a_slots,
            e0: p.scaled(p.e0),
        };
        let runs = repeat(p.seed, 0x2A00 + i as u64, p.fig2a_reps(), progress, |rng| {
            run_single(&cfg, rng)
        });
        let runs = runs.into_iter().collect::<Result<Vec<_>, _>>()?;
        rows.push(Fig2aRow {
            mode: name,
            jobs: Stat::of(runs.iter().map(|r| r.jobs as f64)),
            avg_battery: Stat::of(runs.iter().map(|r| r.avg_battery)),
            ps_frac: Stat::of(runs.iter().map(|r| r.ps_frac)),
        });
    }
    Ok(rows)
}

/// One Fig. 2b curve and its maximum rate.
#[derive(Debug, Clone, Serialize)]
pub struct Fig2bRow {
    pub mode: String,
    pub lam_star: f64,
    pub reached: bool,
    pub nbar: f64,
    pub lam_max: f64,
    /// (p, R(p; e_L)) on the grid 0.05, 0.10, ..., 1.00.
    pub risk_curve: Vec<(f64, f64)>,
    /// Risk at lam_max, for marking the maximum on the curve.
    pub risk_at_max: f64,
    /// Mean battery at lam_max (kJ), eq. 2.
    pub mean_battery_at_max: f64,
}

/// The p grid of the risk curves.
pub fn risk_grid() -> Vec<f64> {
    (1..=20).map(|k| (k * 5) as f64 / 100.0).collect()
}

/// Fig. 2b: analytical, no randomness.
pub fn fig2b(p: &SimParams) -> Result<Vec<Fig2bRow>> {
    let mut rows = Vec::new();
    for (name, table) in mode_tables(p)? {
        let dev = p.fig2_device(table)?;
        let m = max_input_rate_with(&dev, p.delta, dev.e_low, p.crossing.rule())?;
        let mut risk_curve = Vec::new();
        for x in risk_grid() {
            risk_curve.push((x, Analysis::new(&dev, x)?.risk(dev.e_low)));
        }
        let at = Analysis::new(&dev, m.lam_max)?;
        rows.push(Fig2bRow {
            mode: name,
            lam_star: m.lam_star,
            reached: m.reached,
            nbar: m.nbar,
            lam_max: m.lam_max,
            risk_curve,
            risk_at_max: at.risk(dev.e_low),
            mean_battery_at_max: at.mean_battery / p.scale() as f64,
        });
    }
    Ok(rows)
}
