//! Route choice, pure: given the live announcements of one model and a policy, pick one peer per
//! block range so that the hops cover blocks `0..n_layers` in order. At each block where the
//! route stands, the candidates are the peers whose range starts there (and from whose end the
//! rest of the model can still be covered); one is sampled with the policy's weights over those
//! candidates' energy states. No I/O: the statistical tests run on this function directly.
//!
//! Who chooses at each block is a [`Routing`]: [`Sampled`] draws with an energy policy's
//! weights (the paper's policies); the learned router of [`super::learned`] (`--policy cs-ucb`)
//! chooses from what the client observed, with the policy's weights as its prior.

use rand::{Rng, RngCore};
use sunswarm_energy::modes;
use sunswarm_energy::policy::{PeerEnergyState, Policy};
use sunswarm_protocol::{Announcement, Hop, ModelDigest, PowerSetting};

use super::session::ForwardTiming;

/// Why no route exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error(
        "no live peer of this model serves a range starting at block {block} (of {n_layers}); peers seen: {seen}"
    )]
    NoCoverage {
        block: u32,
        n_layers: u32,
        seen: usize,
    },
    #[error(
        "every peer serving a range starting at block {block} refuses work now (power saving or busy)"
    )]
    NoneAvailable { block: u32 },
}

/// The policy's view of a peer's announced energy state (values clamped to their meaning, as
/// [`sanitize`] does, whoever built the announcement).
pub fn energy_view(a: &Announcement) -> PeerEnergyState {
    const UNITS: f64 = 1000.0;
    let e = &a.energy;
    PeerEnergyState {
        battery: (f64::from(e.battery_level.clamp(0.0, 1.0)) * UNITS).round() as i64,
        capacity: UNITS as i64,
        power_saving: e.power_saving,
        available: a.active_sessions < a.max_sessions && e.takes_job,
        lambda_max: f64::from(unit(e.max_job_rate)),
        mode: e.mode_index,
        critical: e.critical,
        saving_risk: f64::from(unit(e.saving_risk)),
    }
}

/// A fraction in [0, 1] (NaN is 0).
fn unit(v: f32) -> f32 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// An announcement with its self-reported values clamped to what they can mean: a peer may
/// announce anything, and route choice must not reward it for announcing the impossible. Rates
/// and fractions lie in [0, 1] (the max job rate is a probability of a job per slot: mains
/// announces 1), active sessions at most the peer's maximum, throughput finite and at least 0.
pub fn sanitize(a: &Announcement) -> Announcement {
    let mut a = a.clone();
    let e = &mut a.energy;
    e.battery_level = unit(e.battery_level);
    e.max_job_rate = unit(e.max_job_rate);
    e.saving_risk = unit(e.saving_risk);
    if !(e.harvest_w.is_finite() && e.harvest_w >= 0.0) {
        e.harvest_w = 0.0;
    }
    a.active_sessions = a.active_sessions.min(a.max_sessions);
    if !(a.throughput.is_finite() && a.throughput >= 0.0) {
        a.throughput = 0.0;
    }
    a
}

/// Keeps the announcements a client may route to: this model id and block count, activations of
/// the client's kind (8-bit when `int8`, else f32; see `INT8_SUFFIX` in the protocol), not
/// expired, not from the future (beyond the allowed clock skew), with their values
/// [`sanitize`]d.
pub fn usable(
    anns: &[Announcement],
    model_id: &ModelDigest,
    n_layers: u32,
    int8: bool,
    now_ms: u64,
) -> Vec<Announcement> {
    let horizon = now_ms.saturating_add(sunswarm_protocol::limits::MAX_CLOCK_SKEW_MS);
    anns.iter()
        .filter(|a| &a.model_id == model_id && a.n_layers == n_layers && a.is_live(now_ms))
        .filter(|a| a.int8_activations() == int8)
        .filter(|a| a.timestamp_ms <= horizon)
        .map(sanitize)
        .collect()
}

/// For every block `b`, whether blocks `b..n_layers` can be covered by the given ranges.
fn coverable(anns: &[Announcement], n_layers: u32) -> Vec<bool> {
    let n = n_layers as usize;
    let mut ok = vec![false; n + 1];
    ok[n] = true;
    for b in (0..n).rev() {
        ok[b] = anns.iter().any(|a| {
            a.blocks.start as usize == b
                && (a.blocks.end as usize) <= n
                && ok[a.blocks.end as usize]
        });
    }
    ok
}

/// The furthest block a route starting at `from` can reach: where the gap that blocks it is.
fn furthest_reachable(anns: &[Announcement], from: u32, n_layers: u32) -> u32 {
    let mut reach = vec![false; n_layers as usize + 1];
    reach[from as usize] = true;
    let mut furthest = from;
    for b in from..n_layers {
        if !reach[b as usize] {
            continue;
        }
        furthest = b;
        for a in anns
            .iter()
            .filter(|a| a.blocks.start == b && a.blocks.end <= n_layers)
        {
            reach[a.blocks.end as usize] = true;
        }
    }
    furthest
}

/// Weights the policy gives each of `candidates` (indices into `anns`).
pub fn weights(policy: &dyn Policy, anns: &[Announcement], candidates: &[usize]) -> Vec<f64> {
    let states: Vec<PeerEnergyState> = candidates.iter().map(|&i| energy_view(&anns[i])).collect();
    policy.weights(&states)
}

/// How the peer of each hop is chosen among the candidates for the blocks where the route
/// stands, and what the chooser learns from the session that follows. Every method but
/// [`Routing::choose`] has a do-nothing default: a sampling policy learns nothing.
pub trait Routing: Send + Sync {
    /// Short name for logs, the dashboard and JSON.
    fn name(&self) -> &'static str;
    /// Picks one of `candidates` (indices into `anns`, every one a range starting at `start`
    /// from whose end the model can still be covered): a position in `candidates`, or `None`
    /// when none may be used now.
    fn choose(
        &self,
        anns: &[Announcement],
        start: u32,
        candidates: &[usize],
        rng: &mut dyn RngCore,
    ) -> Option<usize>;
    /// A session on `route` made these decode steps (one token each, not replays): what the
    /// choice of its hops came to. Called once per route a session uses.
    fn observe(&self, _model: &ModelDigest, _route: &[Hop], _steps: &[ForwardTiming]) {}
    /// `hop` refused the session (power saving, busy).
    fn refused(&self, _model: &ModelDigest, _hop: &Hop) {}
    /// `hop` failed (died, timed out, broke its stream, answered garbage).
    fn failed(&self, _model: &ModelDigest, _hop: &Hop) {}
}

/// A draw proportional to an energy policy's weights over the candidates' announced states.
#[derive(Clone, Copy, Debug)]
pub struct Sampled<'a>(pub &'a dyn Policy);

impl Routing for Sampled<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn choose(
        &self,
        anns: &[Announcement],
        _start: u32,
        candidates: &[usize],
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        sample(&weights(self.0, anns, candidates), rng)
    }
}

/// Chooses a route: indices into `anns`, one per hop, covering `0..n_layers` in order, each
/// hop drawn with `policy`'s weights. `anns` must already be filtered with [`usable`].
pub fn plan(
    anns: &[Announcement],
    n_layers: u32,
    policy: &dyn Policy,
    rng: &mut impl Rng,
) -> Result<Vec<usize>, RouteError> {
    plan_with(anns, n_layers, &Sampled(policy), rng)
}

/// [`plan`] with any [`Routing`] choosing each hop.
pub fn plan_with(
    anns: &[Announcement],
    n_layers: u32,
    routing: &dyn Routing,
    rng: &mut impl Rng,
) -> Result<Vec<usize>, RouteError> {
    let ok = coverable(anns, n_layers);
    let mut route = Vec::new();
    let mut b = 0u32;
    while b < n_layers {
        let candidates: Vec<usize> = (0..anns.len())
            .filter(|&i| {
                anns[i].blocks.start == b
                    && anns[i].blocks.end <= n_layers
                    && ok[anns[i].blocks.end as usize]
            })
            .collect();
        if candidates.is_empty() {
            return Err(RouteError::NoCoverage {
                block: furthest_reachable(anns, b, n_layers),
                n_layers,
                seen: anns.len(),
            });
        }
        let pick = routing
            .choose(anns, b, &candidates, rng)
            .filter(|&p| p < candidates.len())
            .ok_or(RouteError::NoneAvailable { block: b })?;
        let chosen = candidates[pick];
        route.push(chosen);
        b = anns[chosen].blocks.end;
    }
    Ok(route)
}

/// Index sampled with probability proportional to its weight; `None` when no weight is positive.
pub fn sample<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = rng.random::<f64>() * total;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if !(w.is_finite() && w > 0.0) {
            continue;
        }
        last = Some(i);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    last // rounding left x just past the end: the last positive weight
}

/// kJ one job (one session) costs a node in its announced power mode, from the paper's measured
/// per-mode energies; `None` on mains or in a mode the tables do not know.
pub fn job_kilojoules(mode: PowerSetting) -> Option<f64> {
    let watts = match mode {
        PowerSetting::Fixed { watts } | PowerSetting::Dynamic { watts } => watts,
        PowerSetting::Mains => return None,
    };
    [
        (15u16, modes::paper::w15()),
        (30, modes::paper::w30()),
        (60, modes::paper::w60()),
    ]
    .into_iter()
    .find(|(w, _)| *w == watts)
    .map(|(_, m)| m.energy as f64)
}

/// The candidates for repairing `route` after its hop `failed` failed: the surviving hops stay
/// as they are (other replicas of their exact ranges are dropped, so the plan keeps them), peers
/// in `avoid` are dropped, and everything else may stand in for the failed hop's blocks (the
/// same range, or several smaller ones that cover it).
pub fn repair_candidates(
    anns: &[Announcement],
    route: &[Hop],
    failed: usize,
    avoid: &[Vec<u8>],
) -> Vec<Announcement> {
    let survivors: Vec<&Hop> = route
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != failed)
        .map(|(_, h)| h)
        .collect();
    anns.iter()
        .filter(|a| !avoid.contains(&a.peer_id))
        .filter(|a| {
            survivors
                .iter()
                .all(|h| h.blocks != a.blocks || h.peer_id == a.peer_id)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use sunswarm_energy::policy::{LongTerm, Uniform};
    use sunswarm_protocol::{BlockRange, EnergyState};

    fn ann(id: u8, start: u32, end: u32, rate: f32) -> Announcement {
        Announcement {
            peer_id: vec![id; 4],
            addrs: vec![],
            model_id: [1; 32],
            n_layers: 30,
            blocks: BlockRange { start, end },
            backend: "cpu".into(),
            throughput: 1.0,
            max_sessions: 4,
            active_sessions: 0,
            energy: EnergyState {
                max_job_rate: rate,
                ..EnergyState::mains()
            },
            timestamp_ms: 0,
            expires_ms: 1000,
        }
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn covers_every_block_in_order() {
        let anns = vec![ann(3, 20, 30, 1.0), ann(1, 0, 10, 1.0), ann(2, 10, 20, 1.0)];
        let r = plan(&anns, 30, &Uniform, &mut rng()).unwrap();
        let ids: Vec<u8> = r.iter().map(|&i| anns[i].peer_id[0]).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn missing_range_names_the_block() {
        let anns = vec![ann(1, 0, 10, 1.0), ann(3, 20, 30, 1.0)];
        assert_eq!(
            plan(&anns, 30, &Uniform, &mut rng()).unwrap_err(),
            RouteError::NoCoverage {
                block: 10,
                n_layers: 30,
                seen: 2
            }
        );
        assert!(matches!(
            plan(&[], 30, &Uniform, &mut rng()),
            Err(RouteError::NoCoverage { block: 0, .. })
        ));
    }

    #[test]
    fn avoids_dead_ends() {
        // 0-14 leads nowhere (nobody starts at 15); the route must take 0-9 then 10-29.
        let anns = vec![ann(1, 0, 15, 1.0), ann(2, 0, 10, 1.0), ann(3, 10, 30, 1.0)];
        for seed in 0..50 {
            let r = plan(&anns, 30, &Uniform, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            assert_eq!(r, vec![1, 2]);
        }
    }

    #[test]
    fn power_saving_full_and_jobless_peers_are_skipped() {
        let mut saving = ann(1, 0, 30, 1.0);
        saving.energy.power_saving = true;
        let mut full = ann(2, 0, 30, 1.0);
        full.active_sessions = full.max_sessions;
        // Room for sessions, but its battery model's pending place is taken (R6).
        let mut jobless = ann(4, 0, 30, 1.0);
        jobless.energy.takes_job = false;
        let free = ann(3, 0, 30, 1.0);
        let anns = vec![saving.clone(), full.clone(), jobless.clone(), free];
        for seed in 0..50 {
            assert_eq!(
                plan(&anns, 30, &Uniform, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap(),
                vec![3]
            );
        }
        assert_eq!(
            plan(&[saving, full, jobless], 30, &Uniform, &mut rng()).unwrap_err(),
            RouteError::NoneAvailable { block: 0 }
        );
    }

    #[test]
    fn other_models_and_expired_peers_are_not_usable() {
        let mut other = ann(1, 0, 30, 1.0);
        other.model_id = [2; 32];
        let mut old = ann(2, 0, 30, 1.0);
        old.expires_ms = 500;
        let mut short = ann(3, 0, 20, 1.0);
        short.n_layers = 20;
        let good = ann(4, 0, 30, 1.0);
        let u = usable(&[other, old, short, good.clone()], &[1; 32], 30, false, 600);
        assert_eq!(u, vec![good]);
    }

    #[test]
    fn self_reported_values_are_clamped_to_their_meaning() {
        let mut a = ann(1, 0, 30, 1e9);
        a.energy.saving_risk = f32::NAN;
        a.active_sessions = 99;
        a.energy.battery_level = 7.0;
        let s = sanitize(&a);
        assert_eq!(s.energy.max_job_rate, 1.0);
        assert_eq!(s.energy.saving_risk, 0.0);
        assert_eq!(s.energy.battery_level, 1.0);
        assert_eq!(s.active_sessions, s.max_sessions);
        assert_eq!(energy_view(&a).lambda_max, 1.0);
        let mut neg = ann(2, 0, 30, -3.0);
        neg.throughput = f32::INFINITY;
        let s = sanitize(&neg);
        assert_eq!((s.energy.max_job_rate, s.throughput), (0.0, 0.0));
        // An inflated rate weighs no more than an honest peer on mains.
        let w = weights(
            &LongTerm,
            &[ann(1, 0, 30, 1e9), ann(2, 0, 30, 1.0)],
            &[0, 1],
        );
        assert_eq!(w[0], w[1]);
    }

    #[test]
    fn a_session_keeps_to_peers_of_the_clients_activations() {
        let f32_peer = ann(1, 0, 30, 1.0);
        let mut int8_peer = ann(2, 0, 30, 1.0);
        int8_peer.backend = format!("cpu{}", sunswarm_protocol::announce::INT8_SUFFIX);
        assert!(int8_peer.int8_activations() && !f32_peer.int8_activations());
        let both = [f32_peer.clone(), int8_peer.clone()];
        let ids = |u: Vec<Announcement>| u.into_iter().map(|a| a.peer_id).collect::<Vec<_>>();
        assert_eq!(
            ids(usable(&both, &[1; 32], 30, false, 600)),
            vec![f32_peer.peer_id]
        );
        assert_eq!(
            ids(usable(&both, &[1; 32], 30, true, 600)),
            vec![int8_peer.peer_id]
        );
    }

    #[test]
    fn announcements_from_the_future_are_not_usable() {
        let mut a = ann(1, 0, 30, 1.0);
        a.timestamp_ms = 600 + sunswarm_protocol::limits::MAX_CLOCK_SKEW_MS + 1;
        a.expires_ms = a.timestamp_ms + 1000;
        assert!(usable(&[a.clone()], &[1; 32], 30, false, 600).is_empty());
        a.timestamp_ms -= 1;
        assert_eq!(usable(&[a], &[1; 32], 30, false, 600).len(), 1);
    }

    #[test]
    fn sample_never_picks_zero_weights() {
        let mut r = rng();
        for _ in 0..1000 {
            let i = sample(&[0.0, 2.0, f64::NAN, 0.0, 1.0, -3.0], &mut r).unwrap();
            assert!(i == 1 || i == 4);
        }
        assert_eq!(sample(&[0.0, -1.0], &mut r), None);
        assert_eq!(sample(&[], &mut r), None);
    }

    /// Pearson chi-square statistic of observed counts against expected probabilities.
    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// With 2 replicas per range and many sessions, the chosen peers follow the policy's weights.
    /// Chi-square goodness of fit per range (1 degree of freedom each): the critical value 15.14
    /// has a false-alarm rate of 1e-4 per range for a correct sampler, so 1e-4 x 3 ranges x 2
    /// policies = 6e-4 per run of this test with a fresh seed (the seed here is fixed, so the
    /// test is deterministic; the rate says how unlikely it is that a correct sampler would fail
    /// for a new seed).
    #[test]
    fn chosen_peers_follow_the_policy_weights() {
        const CRITICAL_1DF_1E4: f64 = 15.137;
        let rates = [(0.2f32, 0.6f32), (0.5, 0.5), (0.05, 0.9)];
        let mut anns = Vec::new();
        for (i, (a, b)) in rates.iter().enumerate() {
            let s = i as u32 * 10;
            anns.push(ann(10 * i as u8 + 1, s, s + 10, *a));
            anns.push(ann(10 * i as u8 + 2, s, s + 10, *b));
        }
        let sessions = 20_000;
        let policies: [(&dyn Policy, bool); 2] = [(&Uniform, false), (&LongTerm, true)];
        for (policy, by_rate) in policies {
            let mut counts = vec![0u64; anns.len()];
            let mut r = ChaCha8Rng::seed_from_u64(2024);
            for _ in 0..sessions {
                for i in plan(&anns, 30, policy, &mut r).unwrap() {
                    counts[i] += 1;
                }
            }
            for (k, (a, b)) in rates.iter().enumerate() {
                let probs = if by_rate {
                    let t = (a + b) as f64;
                    [*a as f64 / t, *b as f64 / t]
                } else {
                    [0.5, 0.5]
                };
                let stat = chi_square(&counts[2 * k..2 * k + 2], &probs);
                assert!(
                    stat < CRITICAL_1DF_1E4,
                    "{} range {k}: chi2 {stat:.2} counts {:?} expected {probs:?}",
                    policy.name(),
                    &counts[2 * k..2 * k + 2]
                );
            }
        }
    }

    /// The test above must be able to fail: a sampler biased by 3 points is caught.
    #[test]
    fn the_statistical_test_detects_a_biased_sampler() {
        let mut r = ChaCha8Rng::seed_from_u64(99);
        let mut counts = [0u64; 2];
        for _ in 0..20_000 {
            counts[usize::from(r.random::<f64>() >= 0.53)] += 1;
        }
        assert!(chi_square(&counts, &[0.5, 0.5]) > 15.137);
    }

    fn hop(a: &Announcement) -> Hop {
        Hop {
            peer_id: a.peer_id.clone(),
            addrs: vec![],
            blocks: a.blocks,
        }
    }

    #[test]
    fn repair_keeps_survivors_and_replaces_only_the_failed_hop() {
        let anns = vec![
            ann(1, 0, 10, 1.0),
            ann(2, 10, 20, 1.0),
            ann(3, 10, 20, 1.0),
            ann(4, 20, 30, 1.0),
            ann(5, 0, 10, 1.0),
            ann(6, 20, 30, 1.0),
        ];
        let route = vec![hop(&anns[0]), hop(&anns[1]), hop(&anns[3])];
        let failed = vec![anns[1].peer_id.clone()];
        let c = repair_candidates(&anns, &route, 1, &failed);
        let ids: Vec<u8> = c.iter().map(|a| a.peer_id[0]).collect();
        assert_eq!(ids, vec![1, 3, 4], "survivors 1 and 4 kept, 3 replaces 2");
        for seed in 0..20 {
            let r = plan(&c, 30, &Uniform, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let ids: Vec<u8> = r.iter().map(|&i| c[i].peer_id[0]).collect();
            assert_eq!(ids, vec![1, 3, 4]);
        }
        // With no other replica, no repair exists.
        let c = repair_candidates(&anns[..2], &route[..2], 1, &failed);
        assert!(plan(&c, 20, &Uniform, &mut rng()).is_err());
    }

    #[test]
    fn job_energy_follows_the_announced_mode() {
        assert_eq!(
            job_kilojoules(PowerSetting::Fixed { watts: 15 }),
            Some(26.0)
        );
        assert_eq!(
            job_kilojoules(PowerSetting::Dynamic { watts: 30 }),
            Some(22.0)
        );
        assert_eq!(job_kilojoules(PowerSetting::Fixed { watts: 45 }), None);
        assert_eq!(job_kilojoules(PowerSetting::Mains), None);
    }

    #[test]
    fn repair_may_cover_the_failed_range_with_smaller_ranges() {
        let anns = vec![
            ann(1, 0, 10, 1.0),
            ann(2, 10, 30, 1.0),
            ann(3, 10, 20, 1.0),
            ann(4, 20, 30, 1.0),
        ];
        let route = vec![hop(&anns[0]), hop(&anns[1])];
        let c = repair_candidates(&anns, &route, 1, &[anns[1].peer_id.clone()]);
        let r = plan(&c, 30, &Uniform, &mut rng()).unwrap();
        let ids: Vec<u8> = r.iter().map(|&i| c[i].peer_id[0]).collect();
        assert_eq!(ids, vec![1, 3, 4]);
    }
}
