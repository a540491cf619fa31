//! The simulation parameters: one flat set of flags shared by every experiment, each defaulting
//! to the specification's value (spec sec. 1, 7, 8), so `sim paper` needs no flags at all.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use sunswarm_energy::{DeviceParams, Harvest, HarvestTrace, ModeTable, PolicyKind, modes};

/// Which per-job energies the power modes charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyModel {
    /// The paper's measured energies: 26 / 22 / 23 kJ per job (the default).
    Measured,
    /// Nominal power x time: 4.5 / 6 / 6 kJ per job (spec sec. 0 hypothesis). Energies are then
    /// counted in half-kJ units, so capacity, thresholds, harvest and E0 are doubled internally.
    Nominal,
}

/// How lambda* is searched for (eq. 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crossing {
    /// The spec's rule: R(1) < delta means never reached, else Brent on [1e-4, 1] (the default).
    Endpoint,
    /// Ours: Brent on the first cell of a 20-point grid where R >= delta (robust to a risk that
    /// falls again past energy saturation).
    First,
}

impl Crossing {
    pub fn rule(self) -> sunswarm_energy::CrossingRule {
        match self {
            Crossing::Endpoint => sunswarm_energy::CrossingRule::Endpoint,
            Crossing::First => sunswarm_energy::CrossingRule::FirstCrossing { grid: 20 },
        }
    }
}

/// Every knob of the paper's experiments.
#[derive(Debug, Clone, Args, Serialize)]
pub struct SimParams {
    /// Seed of the whole experiment; each run's generator derives from it and the run's index.
    #[arg(long, default_value_t = 1, global = true)]
    pub seed: u64,
    /// Repetitions of every experiment (overrides --fig2a-runs and --net-runs).
    #[arg(long, global = true)]
    pub runs: Option<usize>,
    /// Repetitions for Fig. 2a.
    #[arg(long, default_value_t = 1000, global = true)]
    pub fig2a_runs: usize,
    /// Repetitions per grid point and policy for Figs. 3-4 (the paper used 1000).
    #[arg(long, default_value_t = 300, global = true)]
    pub net_runs: usize,
    /// Write the results JSON (spec sec. 9 schema) here.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub json: Option<PathBuf>,
    /// Draw SVG figures into this directory.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub figures: Option<PathBuf>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub quiet: bool,

    /// Battery capacity B in kJ.
    #[arg(long, default_value_t = 100, global = true)]
    pub capacity: i64,
    /// e_L: power saving starts below this level (kJ).
    #[arg(long, default_value_t = 20, global = true)]
    pub e_low: i64,
    /// e_H: power saving ends at this level (kJ).
    #[arg(long, default_value_t = 40, global = true)]
    pub e_high: i64,
    /// Initial battery E0 of every device (kJ).
    #[arg(long, default_value_t = 50, global = true)]
    pub e0: i64,
    /// Risk tolerance delta of eq. 5.
    #[arg(long, default_value_t = 0.02, global = true)]
    pub delta: f64,
    /// Per-job energies of the power modes.
    #[arg(long, value_enum, default_value_t = EnergyModel::Measured, global = true)]
    pub energy_model: EnergyModel,

    /// Search rule for the eq. 5 maximum rate.
    #[arg(long, value_enum, default_value_t = Crossing::Endpoint, global = true)]
    pub crossing: Crossing,

    /// Fig. 2a/2b: smallest harvest per slot (kJ).
    #[arg(long, default_value_t = 6, global = true)]
    pub harvest_min: i64,
    /// Fig. 2a/2b: largest harvest per slot (kJ).
    #[arg(long, default_value_t = 14, global = true)]
    pub harvest_max: i64,
    /// Fig. 2a/2b: a harvest trace instead of the uniform law: a text file of per-slot harvests in
    /// kJ (integers separated by spaces, commas or newlines; `#` starts a comment). The chain uses
    /// its empirical law; the simulation replays it in order from a random offset per run.
    #[arg(long, global = true)]
    pub harvest_trace: Option<PathBuf>,
    /// Fig. 2a: arrival probability per slot.
    #[arg(long, default_value_t = 0.8, global = true)]
    pub fig2a_p: f64,
    /// Fig. 2a: slots per run.
    #[arg(long, default_value_t = 100, global = true)]
    pub fig2a_slots: usize,

    /// Figs. 3a/4a: arrival probability of the energy sweep.
    #[arg(long, default_value_t = 0.5, global = true)]
    pub net_p: f64,
    /// Figs. 3a/4a: mean-harvest grid mu_bar (kJ per slot).
    #[arg(long, value_delimiter = ',', default_values_t = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0], global = true)]
    pub mu_bars: Vec<f64>,
    /// Figs. 3b/4b: mean harvest of the arrival sweep.
    #[arg(long, default_value_t = 5.0, global = true)]
    pub mu_bar: f64,
    /// Figs. 3b/4b: arrival-probability grid.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], global = true)]
    pub net_ps: Vec<f64>,
    /// Mean-harvest multipliers w_k of the devices within a layer.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 1.5], global = true)]
    pub weights: Vec<f64>,
    /// Number of layers L.
    #[arg(long, default_value_t = 3, global = true)]
    pub layers: usize,
    /// Arrival slots N of a network run.
    #[arg(long, default_value_t = 100, global = true)]
    pub net_slots: usize,
    /// Slots without arrivals after N, so jobs in flight can finish.
    #[arg(long, default_value_t = 30, global = true)]
    pub drain: usize,
    /// Mean harvests at which to report power saving at p = 1.
    #[arg(long, value_delimiter = ',', default_values_t = [8.0, 10.0], global = true)]
    pub p1_mu_bars: Vec<f64>,
    /// Policies to compare (the paper's three and ours, `lookahead`).
    #[arg(long, value_delimiter = ',', value_parser = parse_policy, default_values = ["uniform", "longterm", "adaptive", "lookahead"], global = true)]
    #[serde(skip)]
    pub policies: Vec<PolicyKind>,
    /// Look-ahead of the `lookahead` policy's saving-risk table, in stages.
    #[arg(long, default_value_t = 3, global = true)]
    pub horizon: u32,
}

fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    PolicyKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown policy `{s}` (uniform, longterm, adaptive, lookahead)"))
}

impl SimParams {
    /// Rejects inconsistent settings before any work starts, naming the flag.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("--fig2a-p", self.fig2a_p),
            ("--net-p", self.net_p),
            ("--delta", self.delta),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be a probability in [0, 1] (got {v})");
            }
        }
        if let Some(p) = self.net_ps.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            bail!("--net-ps must hold probabilities in [0, 1] (got {p})");
        }
        if let Some(m) = self
            .mu_bars
            .iter()
            .chain(&self.p1_mu_bars)
            .chain([&self.mu_bar])
            .find(|m| !(m.is_finite() && **m >= 0.0))
        {
            bail!(
                "mean harvests (--mu-bars, --mu-bar, --p1-mu-bars) must be non-negative (got {m})"
            );
        }
        if self.weights.is_empty() || self.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            bail!("--weights must be non-negative numbers, one per device of a layer");
        }
        if self.layers == 0 {
            bail!("--layers must be at least 1");
        }
        if self.policies.is_empty() {
            bail!("--policies must name at least one policy");
        }
        if self.runs == Some(0) || self.fig2a_runs == 0 || self.net_runs == 0 {
            bail!("repetitions (--runs, --fig2a-runs, --net-runs) must be at least 1");
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        sunswarm_energy::profile::validate_horizon(self.horizon)?;
        let dev = self.fig2_device(self.dynamic_table())?;
        dev.validate_level("--e0", self.scaled(self.e0))?;
        Ok(())
    }

    /// Units per kJ of the chosen energy model.
    pub fn scale(&self) -> i64 {
        match self.energy_model {
            EnergyModel::Measured => 1,
            EnergyModel::Nominal => 2,
        }
    }

    /// A kJ amount in model units.
    pub fn scaled(&self, kj: i64) -> i64 {
        kj * self.scale()
    }

    /// Fig. 2a repetitions.
    pub fn fig2a_reps(&self) -> usize {
        self.runs.unwrap_or(self.fig2a_runs)
    }

    /// Figs. 3-4 repetitions.
    pub fn net_reps(&self) -> usize {
        self.runs.unwrap_or(self.net_runs)
    }

    /// The three power modes of the chosen energy model.
    pub fn modes(&self) -> [sunswarm_energy::PowerMode; 3] {
        match self.energy_model {
            EnergyModel::Measured => [
                modes::paper::w15(),
                modes::paper::w30(),
                modes::paper::w60(),
            ],
            EnergyModel::Nominal => modes::paper::nominal(self.scale()),
        }
    }

    /// The dynamic table (15 W below 0.4 B, 30 W below 0.6 B, 60 W above).
    pub fn dynamic_table(&self) -> ModeTable {
        modes::paper::dynamic_with(self.modes(), self.scaled(self.capacity))
    }

    /// A device with the given table and harvest bounds in kJ.
    pub fn device(&self, modes: ModeTable, harvest: Harvest) -> Result<DeviceParams> {
        let harvest = match harvest {
            Harvest::Uniform { min, max } => Harvest::uniform(self.scaled(min), self.scaled(max))?,
            Harvest::Trace(t) => Harvest::Trace(HarvestTrace::new(
                t.samples().iter().map(|&v| self.scaled(v)).collect(),
            )?),
        };
        let d = DeviceParams {
            capacity: self.scaled(self.capacity),
            e_low: self.scaled(self.e_low),
            e_high: self.scaled(self.e_high),
            harvest,
            modes,
        };
        d.validate()?;
        Ok(d)
    }

    /// The Fig. 2 device with `modes`.
    pub fn fig2_device(&self, modes: ModeTable) -> Result<DeviceParams> {
        let harvest = match &self.harvest_trace {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --harvest-trace {}", path.display()))?;
                Harvest::Trace(
                    parse_trace(&text)
                        .with_context(|| format!("in --harvest-trace {}", path.display()))?,
                )
            }
            None => Harvest::uniform(self.harvest_min, self.harvest_max)?,
        };
        self.device(modes, harvest)
    }
}

/// Parses a harvest trace: integers (kJ per slot) separated by whitespace or commas, `#` comments.
pub fn parse_trace(text: &str) -> Result<HarvestTrace> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
        {
            let v: i64 = tok.parse().map_err(|_| {
                anyhow::anyhow!("line {}: `{tok}` is not a whole number of kJ", n + 1)
            })?;
            samples.push(v);
        }
    }
    Ok(HarvestTrace::new(samples)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_files_parse_and_reject_garbage() {
        let t = parse_trace("# solar, kJ per slot\n0 0 3, 9\n12 # noon\n").unwrap();
        assert_eq!(t.samples(), &[0, 0, 3, 9, 12]);
        assert!(
            parse_trace("1 2 x")
                .unwrap_err()
                .to_string()
                .contains("`x`")
        );
        assert!(
            parse_trace("1 -2")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            parse_trace("# nothing\n")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
