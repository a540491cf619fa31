//! The live energy experiment's design and bookkeeping, pure: which emulated battery each node
//! gets (the paper's network, spec sec. 7: device k of every layer harvests around
//! mu_bar * w_k with w spread evenly over 0.5..1.5), the `swarm-node` flags that give it, the
//! metrics a run reports (the same keys for the live swarm and the simulator), and their mean and
//! spread over repeated runs.

use serde::Serialize;
use sunswarm_energy::sim::run_seed;
use sunswarm_energy::{DeviceParams, Harvest, modes};

use crate::sim::runner::Stat;

/// `run_seed` stream of the nodes' harvest draws (the simulator uses 0xE4E).
const HARVEST_STREAM: u64 = 0x4841_5256;

/// What the experiment runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Design {
    /// Nodes in all.
    pub nodes: usize,
    /// Harvest groups = nodes per layer (K).
    pub groups: usize,
    /// Arrival probability per slot.
    pub job_prob: f64,
    /// mu_bar: mean harvest of the middle group, kJ per slot.
    pub energy_mean: f64,
    /// Arrival slots (N); a drain follows.
    pub slots: usize,
    /// Slots without arrivals at the end, so jobs in flight finish.
    pub drain: usize,
    /// Initial battery of every node, kJ.
    pub initial: i64,
    /// Battery seconds per wall second.
    pub clock_scale: f64,
    /// One slot in battery seconds.
    pub slot_secs: f64,
    /// New tokens per job (one session).
    pub tokens_per_job: usize,
    pub seed: u64,
}

impl Design {
    /// Checks the shape and ranges, naming the flag that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.groups >= 1, "--groups must be at least 1");
        anyhow::ensure!(
            self.nodes >= self.groups && self.nodes.is_multiple_of(self.groups),
            "--nodes {} must be a multiple of --groups {} (every layer holds one node of each group)",
            self.nodes,
            self.groups
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.job_prob),
            "--job-prob {} is not a probability",
            self.job_prob
        );
        anyhow::ensure!(
            self.energy_mean.is_finite() && self.energy_mean > 0.0,
            "--energy-mean {} must be a positive number of kJ per slot",
            self.energy_mean
        );
        anyhow::ensure!(self.slots >= 1, "--duration must be at least one slot");
        anyhow::ensure!(self.tokens_per_job >= 1, "--tokens must be at least 1");
        Ok(())
    }

    /// Layers (L): block ranges, each served by one node of every group.
    pub fn layers(&self) -> usize {
        self.nodes / self.groups
    }

    /// The harvest weight of group k: 0.5, 1, 1.5 for three groups (the paper's), evenly spread
    /// over [0.5, 1.5] otherwise.
    pub fn weight(&self, k: usize) -> f64 {
        if self.groups == 1 {
            1.0
        } else {
            0.5 + k as f64 / (self.groups - 1) as f64
        }
    }

    /// Device of group k: the paper's dynamic device harvesting around mu_bar * w_k.
    pub fn device(&self, k: usize) -> anyhow::Result<DeviceParams> {
        let dev = DeviceParams::paper(
            Harvest::around_mean(self.energy_mean * self.weight(k))?,
            modes::paper::dynamic(100),
        );
        dev.validate()?;
        Ok(dev)
    }

    /// Seed of the harvest draws of group k's node in `layer`: from the design's seed, distinct
    /// for every node (nodes of one group stay independent), the same for every policy (common
    /// random numbers, as in the simulator).
    pub fn harvest_seed(&self, k: usize, layer: usize) -> u64 {
        run_seed(
            self.seed,
            HARVEST_STREAM,
            (k * self.layers() + layer) as u64,
        )
    }

    /// `swarm-node` energy flags for group k's node in `layer`.
    pub fn node_args(&self, k: usize, layer: usize) -> anyhow::Result<Vec<String>> {
        let Harvest::Uniform { min, max } = self.device(k)?.harvest else {
            anyhow::bail!("the experiment only uses uniform harvests")
        };
        Ok(vec![
            "--energy".into(),
            format!(
                "emulated:harvest=uniform({min},{max}),initial={},slot={},seed={}",
                self.initial,
                self.slot_secs,
                self.harvest_seed(k, layer)
            ),
            "--power-mode".into(),
            "dynamic".into(),
            "--clock-scale".into(),
            self.clock_scale.to_string(),
            // R6 (one job in service, one pending) is the battery's own rule, which the node
            // gossips. The session cap stays out of its way: a session outlives its job on a hop
            // that is faster than the route's slowest, so with a cap of 2 such leftovers made
            // nodes look full when the model had room.
            "--max-sessions".into(),
            "8".into(),
        ])
    }

    /// Wall time of one slot.
    pub fn slot_wall(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.slot_secs / self.clock_scale)
    }
}

/// One policy's outcome, live or simulated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    /// Fraction of node-time in power saving over the arrival slots.
    pub ps_frac: f64,
    /// Completed over offered jobs (1 if none offered).
    pub throughput: f64,
    pub completed: f64,
    pub dropped: f64,
    /// Joules per generated token from the power-mode tables (live only).
    pub joules_per_token: Option<f64>,
}

/// Counts of a live run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LiveCounts {
    pub offered: u64,
    pub completed: u64,
    pub dropped: u64,
    /// Node-slot samples, and those in power saving.
    pub node_slots: u64,
    pub saving_node_slots: u64,
    pub tokens: u64,
    /// kJ charged by the completed jobs, from the modes the route's nodes gossiped at open.
    pub kilojoules: f64,
    /// Session opens a hop refused (each is retried on another route up to three times).
    pub refused_opens: u64,
    /// Jobs that hops before a refusing hop had taken on: energy the simulator never spends.
    pub wasted_hop_jobs: u64,
}

impl LiveCounts {
    pub fn outcome(&self) -> Outcome {
        Outcome {
            ps_frac: ratio(self.saving_node_slots, self.node_slots, 0.0),
            throughput: ratio(self.completed, self.offered, 1.0),
            completed: self.completed as f64,
            dropped: self.dropped as f64,
            joules_per_token: (self.tokens > 0)
                .then(|| self.kilojoules * 1000.0 / self.tokens as f64),
        }
    }
}

fn ratio(a: u64, b: u64, empty: f64) -> f64 {
    if b == 0 { empty } else { a as f64 / b as f64 }
}

/// Mean and sample standard deviation of one metric over runs. With a single run the sd is
/// `None` (JSON `null`, `-` in the table, no whisker in the plot): one run says nothing about the
/// spread, and 0 would read as "no spread".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: Option<f64>,
}

impl Spread {
    /// `None` when there is no value at all.
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let xs: Vec<f64> = xs.into_iter().collect();
        if xs.is_empty() {
            return None;
        }
        let s = Stat::of(xs.iter().copied());
        Some(Spread {
            mean: s.mean,
            sd: (xs.len() > 1).then_some(s.sd),
        })
    }
}

/// One policy's runs (live repeats or simulated runs): every metric's mean and spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub ps_frac: Spread,
    pub throughput: Spread,
    pub completed: Spread,
    pub dropped: Spread,
    /// Over the runs that generated tokens; `None` if none did (always for the simulator).
    pub joules_per_token: Option<Spread>,
}

impl Summary {
    /// `None` for no runs.
    pub fn of(runs: &[Outcome]) -> Option<Summary> {
        let m = |f: fn(&Outcome) -> f64| Spread::of(runs.iter().map(f));
        Some(Summary {
            runs: runs.len(),
            ps_frac: m(|o| o.ps_frac)?,
            throughput: m(|o| o.throughput)?,
            completed: m(|o| o.completed)?,
            dropped: m(|o| o.dropped)?,
            joules_per_token: Spread::of(runs.iter().filter_map(|o| o.joules_per_token)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn design() -> Design {
        Design {
            nodes: 9,
            groups: 3,
            job_prob: 0.5,
            energy_mean: 5.0,
            slots: 100,
            drain: 30,
            initial: 50,
            clock_scale: 100.0,
            slot_secs: 100.0,
            tokens_per_job: 4,
            seed: 1,
        }
    }

    #[test]
    fn the_papers_network() {
        let d = design();
        d.validate().unwrap();
        assert_eq!(d.layers(), 3);
        assert_eq!([d.weight(0), d.weight(1), d.weight(2)], [0.5, 1.0, 1.5]);
        // mu = 2.5, 5, 7.5 -> U{1..4}, U{2..8}, U{4..11} (halves to even, as the simulator).
        let bounds: Vec<_> = (0..3).map(|k| d.device(k).unwrap().harvest).collect();
        assert_eq!(
            bounds,
            vec![
                Harvest::Uniform { min: 1, max: 4 },
                Harvest::Uniform { min: 2, max: 8 },
                Harvest::Uniform { min: 4, max: 11 }
            ]
        );
        let args = d.node_args(2, 0).unwrap();
        assert_eq!(
            args[1],
            format!(
                "emulated:harvest=uniform(4,11),initial=50,slot=100,seed={}",
                d.harvest_seed(2, 0)
            )
        );
        assert_eq!(
            &args[2..6],
            ["--power-mode", "dynamic", "--clock-scale", "100"]
        );
        assert_eq!(d.slot_wall(), std::time::Duration::from_secs(1));
    }

    #[test]
    fn harvest_seeds_follow_the_design_seed_and_differ_per_node() {
        let d = design();
        let seeds: Vec<u64> = (0..3)
            .flat_map(|k| (0..3).map(move |l| (k, l)))
            .map(|(k, l)| d.harvest_seed(k, l))
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 9, "{seeds:?}");
        let next = Design {
            seed: 2,
            ..d.clone()
        };
        assert_ne!(next.harvest_seed(0, 0), d.harvest_seed(0, 0));
        assert_ne!(next.node_args(1, 2).unwrap(), d.node_args(1, 2).unwrap());
    }

    #[test]
    fn spread_is_the_sample_sd_and_none_for_one_run() {
        let s = Spread::of([1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.sd.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(
            Spread::of([7.0]),
            Some(Spread {
                mean: 7.0,
                sd: None
            })
        );
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn summaries_skip_runs_without_tokens_for_energy() {
        let o = |ps: f64, j: Option<f64>| Outcome {
            ps_frac: ps,
            throughput: 1.0,
            completed: 2.0,
            dropped: 0.0,
            joules_per_token: j,
        };
        let s = Summary::of(&[o(0.1, Some(10.0)), o(0.3, None), o(0.2, Some(20.0))]).unwrap();
        assert_eq!(s.runs, 3);
        assert!((s.ps_frac.mean - 0.2).abs() < 1e-12);
        assert!((s.ps_frac.sd.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(s.throughput.sd, Some(0.0));
        let j = s.joules_per_token.unwrap();
        assert_eq!(j.mean, 15.0);
        assert!((j.sd.unwrap() - 50f64.sqrt()).abs() < 1e-12);
        assert_eq!(Summary::of(&[o(0.1, None)]).unwrap().joules_per_token, None);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn bad_designs_name_the_flag() {
        let mut d = design();
        d.nodes = 8;
        assert!(d.validate().unwrap_err().to_string().contains("--nodes 8"));
        let mut d = design();
        d.job_prob = 1.5;
        assert!(d.validate().unwrap_err().to_string().contains("--job-prob"));
        let mut d = design();
        d.energy_mean = 0.0;
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("--energy-mean")
        );
    }

    #[test]
    fn outcomes() {
        let c = LiveCounts {
            offered: 10,
            completed: 7,
            dropped: 2,
            node_slots: 90,
            saving_node_slots: 9,
            tokens: 28,
            kilojoules: 69.0 * 7.0,
            ..LiveCounts::default()
        };
        let o = c.outcome();
        assert_eq!(
            (o.ps_frac, o.throughput, o.completed, o.dropped),
            (0.1, 0.7, 7.0, 2.0)
        );
        assert!((o.joules_per_token.unwrap() - 69_000.0 * 7.0 / 28.0).abs() < 1e-9);
        assert_eq!(LiveCounts::default().outcome().throughput, 1.0);
        assert_eq!(LiveCounts::default().outcome().joules_per_token, None);
    }
}
