//! Figs. 3-4: the 3 x 3 network under each policy, swept over the mean harvest (at fixed arrival
//! rate) and over the arrival rate (at fixed mean harvest).

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;
use sunswarm_energy::sim::{NetworkConfig, NetworkRun, run_network};
use sunswarm_energy::{DeviceProfile, Harvest, PolicyKind};

use super::args::SimParams;
use super::runner::{Progress, Stat, repeat};

/// One policy's curve along a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub policy: PolicyKind,
    pub ps_frac: Vec<Stat>,
    pub throughput: Vec<Stat>,
    pub dropped: Vec<Stat>,
}

/// One sweep: the x grid and a series per policy.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub xs: Vec<f64>,
    pub series: Vec<Series>,
}

/// Both sweeps and the p = 1 check.
#[derive(Debug, Clone, Serialize)]
pub struct Sweeps {
    pub net_p: f64,
    pub mu_bar: f64,
    pub vs_energy: Sweep,
    pub vs_arrival: Sweep,
    /// (mu_bar, [(policy, ps_frac)]) at p = 1.
    pub ps_at_p1: Vec<(f64, Vec<(PolicyKind, Stat)>)>,
}

pub fn planned_runs(p: &SimParams) -> usize {
    (p.mu_bars.len() + p.net_ps.len() + p.p1_mu_bars.len()) * p.policies.len() * p.net_reps()
}

/// Offline profiles by harvest law: every grid point reuses the few distinct devices.
type ProfileCache = HashMap<String, DeviceProfile>;

/// The network's devices (layer-major) and their offline profiles for mean harvest `mu_bar`.
fn network(
    p: &SimParams,
    mu_bar: f64,
    arrival: f64,
    cache: &mut ProfileCache,
) -> Result<(NetworkConfig, Vec<DeviceProfile>)> {
    let mut layer = Vec::new();
    let mut layer_profiles = Vec::new();
    for w in &p.weights {
        let dev = p.device(p.dynamic_table(), Harvest::around_mean(mu_bar * w)?)?;
        let key = format!("{:?}", dev.harvest);
        let profile = match cache.get(&key) {
            Some(prof) => prof.clone(),
            None => {
                let prof =
                    DeviceProfile::compute_with(&dev, p.delta, p.horizon, p.crossing.rule())?;
                cache.insert(key, prof.clone());
                prof
            }
        };
        layer_profiles.push(profile);
        layer.push(dev);
    }
    let devices = (0..p.layers).flat_map(|_| layer.iter().cloned()).collect();
    let profiles = (0..p.layers)
        .flat_map(|_| layer_profiles.iter().cloned())
        .collect();
    let cfg = NetworkConfig {
        devices,
        per_layer: p.weights.len(),
        p: arrival,
        slots: p.net_slots,
        drain: p.drain,
        e0: p.scaled(p.e0),
    };
    Ok((cfg, profiles))
}

/// All runs of one grid point, per policy (in `p.policies` order).
fn point(
    p: &SimParams,
    stream: u64,
    mu_bar: f64,
    arrival: f64,
    cache: &mut ProfileCache,
    progress: &Progress,
) -> Result<Vec<Vec<NetworkRun>>> {
    let (cfg, profiles) = network(p, mu_bar, arrival, cache)?;
    let mut out = Vec::new();
    for &policy in &p.policies {
        let pol = policy.policy();
        // Every policy sees the same seeds (common random numbers), sharpening comparisons.
        let runs = repeat(p.seed, stream, p.net_reps(), progress, |rng| {
            run_network(&cfg, pol.as_ref(), &profiles, rng)
        });
        out.push(runs.into_iter().collect::<Result<Vec<_>, _>>()?);
    }
    Ok(out)
}

fn sweep(
    p: &SimParams,
    stream0: u64,
    grid: &[(f64, f64)],
    xs: Vec<f64>,
    cache: &mut ProfileCache,
    progress: &Progress,
) -> Result<Sweep> {
    let mut series: Vec<Series> = p
        .policies
        .iter()
        .map(|&policy| Series {
            policy,
            ps_frac: vec![],
            throughput: vec![],
            dropped: vec![],
        })
        .collect();
    for (j, &(mu, arrival)) in grid.iter().enumerate() {
        let per_policy = point(p, stream0 + j as u64, mu, arrival, cache, progress)?;
        for (s, runs) in series.iter_mut().zip(per_policy) {
            s.ps_frac.push(Stat::of(runs.iter().map(|r| r.ps_frac)));
            s.throughput
                .push(Stat::of(runs.iter().map(|r| r.throughput)));
            s.dropped
                .push(Stat::of(runs.iter().map(|r| r.dropped as f64)));
        }
    }
    Ok(Sweep { xs, series })
}

/// Runs both sweeps and the p = 1 check.
pub fn sweeps(p: &SimParams, progress: &Progress) -> Result<Sweeps> {
    let energy_grid: Vec<(f64, f64)> = p.mu_bars.iter().map(|&m| (m, p.net_p)).collect();
    let arrival_grid: Vec<(f64, f64)> = p.net_ps.iter().map(|&x| (p.mu_bar, x)).collect();
    let mut cache = ProfileCache::new();
    let vs_energy = sweep(
        p,
        0x3A00,
        &energy_grid,
        p.mu_bars.clone(),
        &mut cache,
        progress,
    )?;
    let vs_arrival = sweep(
        p,
        0x3B00,
        &arrival_grid,
        p.net_ps.clone(),
        &mut cache,
        progress,
    )?;
    let mut ps_at_p1 = Vec::new();
    for (j, &mu) in p.p1_mu_bars.iter().enumerate() {
        let per_policy = point(p, 0x3C00 + j as u64, mu, 1.0, &mut cache, progress)?;
        let row = p
            .policies
            .iter()
            .zip(per_policy)
            .map(|(&k, runs)| (k, Stat::of(runs.iter().map(|r| r.ps_frac))))
            .collect();
        ps_at_p1.push((mu, row));
    }
    Ok(Sweeps {
        net_p: p.net_p,
        mu_bar: p.mu_bar,
        vs_energy,
        vs_arrival,
        ps_at_p1,
    })
}
