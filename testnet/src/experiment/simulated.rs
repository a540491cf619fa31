//! The simulator's prediction for the live experiment's parameters: the same network (layers of
//! one node per harvest group), arrival probability, horizon and drain, many seeded runs.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sunswarm_energy::policy::PolicyKind;
use sunswarm_energy::profile::{DEFAULT_HORIZON, DeviceProfile};
use sunswarm_energy::sim::run_seed;
use sunswarm_energy::sim::{NetworkConfig, run_network};

use super::design::{Design, Outcome};

/// Mean outcome over `runs` simulated runs under `policy`.
pub fn simulate(d: &Design, policy: PolicyKind, runs: usize) -> anyhow::Result<Outcome> {
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
    let (mut ps, mut thr, mut done, mut dropped) = (0.0, 0.0, 0.0, 0.0);
    for r in 0..runs {
        // Common random numbers across policies, like `sim paper`.
        let mut rng = ChaCha8Rng::seed_from_u64(run_seed(d.seed, 0xE4E, r as u64));
        let run = run_network(&cfg, pol.as_ref(), &profiles, &mut rng)?;
        ps += run.ps_frac;
        thr += run.throughput;
        done += f64::from(run.completed);
        dropped += f64::from(run.dropped);
    }
    let n = runs.max(1) as f64;
    Ok(Outcome {
        ps_frac: ps / n,
        throughput: thr / n,
        completed: done / n,
        dropped: dropped / n,
        joules_per_token: None,
    })
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
            u.ps_frac > l.ps_frac,
            "uniform {} vs long-term {}",
            u.ps_frac,
            l.ps_frac
        );
        assert!(u.completed > 0.0 && u.throughput <= 1.0);
    }
}
