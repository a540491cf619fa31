//! The simulator's prediction for the live experiment's parameters: the same network (layers of
//! one node per harvest group), arrival probability, horizon and drain, many seeded runs.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sunswarm_energy::policy::PolicyKind;
use sunswarm_energy::profile::{DEFAULT_HORIZON, DeviceProfile};
use sunswarm_energy::sim::run_seed;
use sunswarm_energy::sim::{NetworkConfig, run_network};

use super::design::{Design, Outcome, Summary};

/// Outcomes of `runs` simulated runs under `policy`: the mean, and the spread of one run (what
/// one live run's spread compares with).
pub fn simulate(d: &Design, policy: PolicyKind, runs: usize) -> anyhow::Result<Summary> {
    anyhow::ensure!(runs >= 1, "--sim-runs must be at least 1");
    let layer: Vec<_> = (0..d.groups)
        .map(|k| d.device(k))
        .collect::<anyhow::Result<_>>()?;
    let profiles: Vec<DeviceProfile> = layer
        .iter()
        .map(|dev| DeviceProfile::compute(dev, 0.02, DEFAULT_HORIZON))
        .collect::<Result<_, _>>()?;
    let cfg = NetworkConfig {
        devices: (0..d.layers())
            .flat_map(|_| layer.iter().cloned())
            .collect(),
        per_layer: d.groups,
        p: d.job_prob,
        slots: d.slots,
        drain: d.drain,
        e0: d.initial,
    };
    let profiles: Vec<DeviceProfile> = (0..d.layers())
        .flat_map(|_| profiles.iter().cloned())
        .collect();
    let pol = policy.policy();
    let outcomes = (0..runs)
        .map(|r| {
            // Common random numbers across policies, like `sim paper`.
            let mut rng = ChaCha8Rng::seed_from_u64(run_seed(d.seed, 0xE4E, r as u64));
            let run = run_network(&cfg, pol.as_ref(), &profiles, &mut rng)?;
            Ok(Outcome {
                ps_frac: run.ps_frac,
                throughput: run.throughput,
                completed: f64::from(run.completed),
                dropped: f64::from(run.dropped),
                joules_per_token: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Summary::of(&outcomes).ok_or_else(|| anyhow::anyhow!("no simulated run"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulator_ranks_the_policies_on_the_experiments_network() {
        let d = super::super::design::tests::design();
        let u = simulate(&d, PolicyKind::Uniform, 200).unwrap();
        let l = simulate(&d, PolicyKind::LongTerm, 200).unwrap();
        assert!(
            u.ps_frac.mean > l.ps_frac.mean,
            "uniform {:?} vs long-term {:?}",
            u.ps_frac,
            l.ps_frac
        );
        assert!(u.completed.mean > 0.0 && u.throughput.mean <= 1.0);
        assert_eq!(u.runs, 200);
        // The per-run spread is real (runs differ) and smaller than the range of a fraction.
        let sd = u.ps_frac.sd.unwrap();
        assert!(sd > 0.0 && sd < 0.5, "{sd}");
        assert_eq!(u.joules_per_token, None);
        assert!(simulate(&d, PolicyKind::Uniform, 0).is_err());
    }
}
