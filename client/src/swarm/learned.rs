//! `--policy cs-ucb`: each hop's peer chosen by CS-UCB (seed 004) from what this client observed
//! of it, under a per-token deadline, with an energy policy's weights as the prior.
//!
//! - **Groups.** One [`GroupBandit`] per model and first block of a hop (the place where a route
//!   stands when it picks); its arms are `(peer, end block)`, so a peer that moves to another
//!   range starts a fresh arm. Candidates at one block may end at different blocks, so times are
//!   compared per block: the group's deadline share is the per-token deadline's share of one
//!   block, `deadline / n_layers`, and a hop's observed time is divided by its block count.
//!   `D / Delta D` is then exactly the seed's `hop time / (deadline * blocks_g / total)`.
//! - **Observations.** A decode step's time on a hop is its own time from the step's receipts
//!   (`HopTiming::total_us`: from receiving the forward to passing its output on) plus an equal
//!   share of the step's transit (the round trip minus every hop's own time), so the hops' times
//!   add up to the round trip the deadline is about. The client collects them after every
//!   forward, and the bandit gets **one observation per session and hop**: the mean over the
//!   session's first [`OBSERVE_AFTER_STEPS`] decode steps (or over all of them, at the close of a
//!   shorter session). A pull is a routing decision, and a session's steps are not independent
//!   draws (they share its moment's load): counting each step as a pull would shrink the
//!   confidence radius tenfold and lock in whatever the first sessions happened to see. Its
//!   energy is the announced cost of a job in its power mode ([`route::job_kilojoules`]; 0 on
//!   mains), against `E_ref` = the dearest mode's job.
//! - **Warm start** (seed sec. 6's option). A peer's arm starts with one pull at its announced
//!   speed (`1 / (throughput x blocks)` per block: the node's own measurement at start, compute
//!   only), so no peer is wholly unknown: eight sessions that open at once go to the peer that
//!   looks best instead of all exploring the first unknown one, and the confidence radius
//!   soon sends one to the others. Real observations outweigh it after a few sessions.
//! - **Refusals and failures.** A refusal (power saving, busy) bars the arm until the peer's
//!   announcement is newer than the one seen when it refused (seed sec. 6: "for the rest of that
//!   record's lifetime"); a failure (dead, timed out, broken stream) is a deadline miss.
//! - **Prior.** The energy policy's weights over the candidates' announced states: weight 0 (or
//!   not eligible: power saving, full, no pending place) is never chosen, untried peers are
//!   explored in the order of the weights, ties go to the larger weight. With equal weights
//!   (uniform) the rule is the seed's.
//!
//! The router is shared by every generation of an [`crate::engine::Engine`] (a `Mutex` around
//! the bandits), so what one request learns routes the next.
//!
//! **Concurrent sessions.** The seed decides one token at a time, each after the last one's
//! feedback; here many sessions choose while earlier choices have not reported yet, and every
//! one of them takes the same argmax: eight clients that open at the moment the confidence
//! radius makes a slow replica worth a look would all take it (live: a whole wave of 8). So a
//! peer chosen on optimism (untried, or below the best mean reward of the allowed peers) takes
//! no more unreported sessions at once than it has pulls (at least one): a peer known from one
//! pull (its warm start) is tried by one session, and the others go by the rule among the
//! remaining peers; the peer with the best mean is never held back, and with no other allowed
//! peer the limit is lifted. A choice counts
//! as unreported until its session reports that hop, fails or is refused there, or
//! [`PENDING_EXPLORATION`] passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::RngCore;
use sunswarm_energy::csucb::{CsUcbParams, GroupBandit, deadline_share};
use sunswarm_energy::modes;
use sunswarm_energy::policy::{PeerEnergyState, Policy, PolicyKind};
use sunswarm_protocol::{Announcement, Hop, ModelDigest};

use super::route::{self, Routing};
use super::session::ForwardTiming;

/// An arm: a peer on the range that ends at this block.
type ArmKey = (Vec<u8>, u32);
/// A group: a model and the first block of a hop.
type GroupKey = (ModelDigest, u32);

/// The default per-token deadline of `--deadline-ms`.
pub const DEFAULT_DEADLINE_MS: f64 = 500.0;

/// Decode steps of a session after which its hops are reported (module docs).
pub const OBSERVE_AFTER_STEPS: usize = 4;

/// How long a choice counts as unreported (module docs): long enough for a prompt and the first
/// decode steps, short enough that a session that never reported back does not hold the peer's
/// place for good.
pub const PENDING_EXPLORATION: Duration = Duration::from_secs(15);

/// The energy scale: the dearest job of the paper's power modes, in joules, so a hop's
/// normalised energy is in `[0, 1]` (0 on mains).
pub fn e_ref_joules() -> f64 {
    [
        modes::paper::w15(),
        modes::paper::w30(),
        modes::paper::w60(),
    ]
    .iter()
    .map(|m| m.energy as f64 * 1e3)
    .fold(1.0, f64::max)
}

/// Why a learned router could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LearnedError {
    #[error("--deadline-ms {0} must be a finite number of milliseconds above 0")]
    Deadline(f64),
    #[error("CS-UCB parameters: {0}")]
    Params(String),
}

/// How a [`CsUcbRouter`] is set up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CsUcbConfig {
    /// The energy policy whose weights are the prior.
    pub prior: PolicyKind,
    /// Per-token deadline: the whole route's time for one decode step.
    pub deadline: Duration,
    pub params: CsUcbParams,
}

impl CsUcbConfig {
    /// The seed's parameters with `E_ref` = [`e_ref_joules`], and the given prior and deadline.
    pub fn new(prior: PolicyKind, deadline_ms: f64) -> Result<Self, LearnedError> {
        if !(deadline_ms.is_finite() && deadline_ms > 0.0 && deadline_ms < 1e9) {
            return Err(LearnedError::Deadline(deadline_ms));
        }
        Ok(CsUcbConfig {
            prior,
            deadline: Duration::from_secs_f64(deadline_ms / 1e3),
            params: CsUcbParams::with_e_ref(e_ref_joules()),
        })
    }
}

/// What the router has counted, for tests, logs and the experiment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LearnedCounts {
    pub decisions: u64,
    /// Decisions where every allowed peer was confidently over its share (best effort).
    pub best_effort: u64,
    pub observations: u64,
    pub refusals: u64,
    pub failures: u64,
    /// Peers started from their announced speed (one pull each).
    pub warm_starts: u64,
}

#[derive(Default)]
struct State {
    groups: HashMap<GroupKey, GroupBandit<ArmKey>>,
    /// Each arm's last seen announcement: its timestamp and its job's joules.
    seen: HashMap<(GroupKey, ArmKey), (u64, f64)>,
    /// Barred arms, with the announcement timestamp they refused under.
    refused_at: HashMap<(GroupKey, ArmKey), u64>,
    /// Each model's block count, from its announcements.
    layers: HashMap<ModelDigest, u32>,
    /// Each arm's unreported choices: when each was made.
    in_flight: HashMap<(GroupKey, ArmKey), Vec<std::time::Instant>>,
    counts: LearnedCounts,
}

/// CS-UCB as a [`Routing`] (module docs).
pub struct CsUcbRouter {
    prior: Box<dyn Policy>,
    prior_kind: PolicyKind,
    deadline_s: f64,
    params: CsUcbParams,
    state: Mutex<State>,
}

impl std::fmt::Debug for CsUcbRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsUcbRouter")
            .field("prior", &self.prior_kind)
            .field("deadline_s", &self.deadline_s)
            .field("params", &self.params)
            .finish()
    }
}

impl CsUcbRouter {
    pub fn new(cfg: CsUcbConfig) -> Result<Self, LearnedError> {
        cfg.params
            .validate()
            .map_err(|e| LearnedError::Params(e.to_string()))?;
        let deadline_s = cfg.deadline.as_secs_f64();
        if !(deadline_s.is_finite() && deadline_s > 0.0) {
            return Err(LearnedError::Deadline(deadline_s * 1e3));
        }
        Ok(CsUcbRouter {
            prior: cfg.prior.policy(),
            prior_kind: cfg.prior,
            deadline_s,
            params: cfg.params,
            state: Mutex::new(State::default()),
        })
    }

    pub fn prior(&self) -> PolicyKind {
        self.prior_kind
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs_f64(self.deadline_s)
    }

    pub fn counts(&self) -> LearnedCounts {
        self.state.lock().map(|s| s.counts).unwrap_or_default()
    }

    /// The statistics of `peer` on `start..end` of `model`, if it has been observed or refused.
    pub fn stats(
        &self,
        model: &ModelDigest,
        start: u32,
        end: u32,
        peer: &[u8],
    ) -> Option<sunswarm_energy::csucb::ArmStats> {
        let s = self.state.lock().ok()?;
        s.groups.get(&(*model, start))?.stats(&(peer.to_vec(), end))
    }

    /// Runs `f` on the group of `model` at `start` (made on first use; `n_layers` is the
    /// model's block count when the caller knows it, else the one its announcements said).
    fn with_group<T>(
        &self,
        model: &ModelDigest,
        start: u32,
        n_layers: Option<u32>,
        f: impl FnOnce(&mut GroupBandit<ArmKey>, &mut State) -> T,
    ) -> Option<T> {
        let mut guard = self.state.lock().ok()?;
        let state = &mut *guard;
        let key = (*model, start);
        let mut group = match state.groups.remove(&key) {
            Some(g) => g,
            None => {
                let n = n_layers.or_else(|| state.layers.get(model).copied())?;
                let share = deadline_share(self.deadline_s, 1, n).ok()?;
                GroupBandit::new(self.params, share).ok()?
            }
        };
        let out = f(&mut group, state);
        state.groups.insert(key, group);
        Some(out)
    }
}

/// A peer's announced time per block of one token, seconds: `1 / (throughput x blocks)`, the
/// node's own measurement at its start (compute only: no links, no load). `None` when it
/// announces no usable throughput.
fn announced_s_per_block(a: &Announcement) -> Option<f64> {
    let t = f64::from(a.throughput) * f64::from(a.blocks.end.saturating_sub(a.blocks.start));
    (t.is_finite() && t > 0.0).then(|| 1.0 / t)
}

/// One unreported choice of an arm has come back (reported, failed or refused).
fn settle(state: &mut State, arm: &(GroupKey, ArmKey)) {
    if let Some(at) = state.in_flight.get_mut(arm) {
        at.remove(0);
        if at.is_empty() {
            state.in_flight.remove(arm);
        }
    }
}

fn job_joules(a: &Announcement) -> f64 {
    route::job_kilojoules(a.energy.power_mode).map_or(0.0, |kj| kj * 1e3)
}

/// Each hop's time for one decode step in seconds: its receipt's own time plus an equal share
/// of the transit (round trip minus every hop's own time). `None` unless the timing is a decode
/// step over the whole route (one token, not a replay, one receipt per hop).
pub fn hop_times_s(route_len: usize, timing: &ForwardTiming) -> Option<Vec<f64>> {
    if timing.n_tokens != 1 || timing.replay || route_len == 0 || timing.hops.len() != route_len {
        return None;
    }
    let own: u64 = timing.hops.iter().map(|h| u64::from(h.total_us)).sum();
    let transit_each = timing.rtt_us.saturating_sub(own) as f64 / route_len as f64;
    Some(
        timing
            .hops
            .iter()
            .map(|h| (f64::from(h.total_us) + transit_each) / 1e6)
            .collect(),
    )
}

impl Routing for CsUcbRouter {
    fn name(&self) -> &'static str {
        "cs-ucb"
    }

    fn choose(
        &self,
        anns: &[Announcement],
        start: u32,
        candidates: &[usize],
        _rng: &mut dyn RngCore,
    ) -> Option<usize> {
        let first = anns.get(*candidates.first()?)?;
        let (model, n_layers) = (first.model_id, first.n_layers);
        let states: Vec<PeerEnergyState> = candidates
            .iter()
            .map(|&i| route::energy_view(&anns[i]))
            .collect();
        let weights = self.prior.weights(&states);
        let mut cands: Vec<(ArmKey, f64, bool)> = candidates
            .iter()
            .zip(states.iter().zip(&weights))
            .map(|(&i, (s, &w))| {
                (
                    (anns[i].peer_id.clone(), anns[i].blocks.end),
                    w,
                    s.eligible(),
                )
            })
            .collect();
        let group_key = (model, start);
        if let Ok(mut s) = self.state.lock() {
            s.layers.insert(model, n_layers);
        }
        self.with_group(&model, start, Some(n_layers), |group, state| {
            for &i in candidates {
                let a = &anns[i];
                let key = (a.peer_id.clone(), a.blocks.end);
                let gk = (group_key, key.clone());
                // A newer announcement than the one it refused under lifts the bar.
                if state
                    .refused_at
                    .get(&gk)
                    .is_some_and(|&ts| a.timestamp_ms > ts)
                {
                    state.refused_at.remove(&gk);
                    group.clear_refusal(&key);
                }
                state.seen.insert(gk, (a.timestamp_ms, job_joules(a)));
                // Warm start (seed sec. 6): an unknown peer starts from its announced speed.
                if let Some(t) = announced_s_per_block(a)
                    && group.warm_start(&key, t, job_joules(a)).unwrap_or(false)
                {
                    state.counts.warm_starts += 1;
                }
            }
            // No more unreported sessions on a peer than it has pulls (module docs).
            let now = std::time::Instant::now();
            for at in state.in_flight.values_mut() {
                at.retain(|t| now.duration_since(*t) < PENDING_EXPLORATION);
            }
            state.in_flight.retain(|_, at| !at.is_empty());
            let allowed = |k: &ArmKey, w: f64, ok: bool| ok && w > 0.0 && !group.is_refused(k);
            // The best mean reward of an allowed peer: a peer there is chosen on merit, not
            // on optimism, and is never held back.
            let best = cands
                .iter()
                .filter(|(k, w, ok)| allowed(k, *w, *ok))
                .filter_map(|(k, _, _)| group.stats(k).filter(|s| s.tried()))
                .map(|s| s.mean_reward)
                .fold(f64::NEG_INFINITY, f64::max);
            let full = |k: &ArmKey| {
                let flying = state
                    .in_flight
                    .get(&(group_key, k.clone()))
                    .map_or(0, Vec::len) as f64;
                match group.stats(k).filter(|s| s.tried()) {
                    None => flying >= 1.0,
                    Some(s) => s.mean_reward < best && flying >= s.n.max(1.0),
                }
            };
            let other = cands
                .iter()
                .any(|(k, w, ok)| allowed(k, *w, *ok) && !full(k));
            if other {
                cands = cands
                    .iter()
                    .map(|(k, w, ok)| (k.clone(), *w, *ok && !full(k)))
                    .collect();
            }
            let (key, feasible) = group.decide(&cands)?;
            state
                .in_flight
                .entry((group_key, key.clone()))
                .or_default()
                .push(now);
            state.counts.decisions += 1;
            if !feasible {
                state.counts.best_effort += 1;
                tracing::debug!(
                    start,
                    "cs-ucb: every allowed peer is over its deadline share"
                );
            }
            cands.iter().position(|(k, _, _)| *k == key)
        })
        .flatten()
    }

    fn observe(&self, model: &ModelDigest, route: &[Hop], steps: &[ForwardTiming]) {
        let per_step: Vec<Vec<f64>> = steps
            .iter()
            .filter_map(|t| hop_times_s(route.len(), t))
            .collect();
        if per_step.is_empty() {
            return;
        }
        let n = per_step.len() as f64;
        let times: Vec<f64> = (0..route.len())
            .map(|h| per_step.iter().map(|s| s[h]).sum::<f64>() / n)
            .collect();
        // A route covers the model: its last hop ends at the block count.
        let n_layers = route.last().map(|h| h.blocks.end);
        for (hop, t) in route.iter().zip(times) {
            let len = hop.blocks.end.saturating_sub(hop.blocks.start).max(1);
            let key = (hop.peer_id.clone(), hop.blocks.end);
            let per_block = t / f64::from(len);
            self.with_group(model, hop.blocks.start, n_layers, |group, state| {
                let joules = state
                    .seen
                    .get(&((*model, hop.blocks.start), key.clone()))
                    .map_or(0.0, |&(_, j)| j);
                settle(state, &((*model, hop.blocks.start), key.clone()));
                match group.observe(&key, per_block, joules) {
                    Ok(()) => state.counts.observations += 1,
                    Err(e) => tracing::debug!("cs-ucb: observation dropped: {e}"),
                }
            });
        }
    }

    fn refused(&self, model: &ModelDigest, hop: &Hop) {
        let key = (hop.peer_id.clone(), hop.blocks.end);
        self.with_group(model, hop.blocks.start, None, |group, state| {
            let gk = ((*model, hop.blocks.start), key.clone());
            let ts = state.seen.get(&gk).map_or(0, |&(ts, _)| ts);
            settle(state, &gk);
            state.refused_at.insert(gk, ts);
            group.refused(&key);
            state.counts.refusals += 1;
        });
    }

    fn failed(&self, model: &ModelDigest, hop: &Hop) {
        let key = (hop.peer_id.clone(), hop.blocks.end);
        self.with_group(model, hop.blocks.start, None, |group, state| {
            settle(state, &((*model, hop.blocks.start), key.clone()));
            group.failed(&key);
            state.counts.failures += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use sunswarm_protocol::{BlockRange, EnergyState, HopTiming, PowerSetting};

    use crate::swarm::route::{Sampled, plan_with};

    const MODEL: ModelDigest = [1; 32];

    fn ann(id: u8, start: u32, end: u32) -> Announcement {
        Announcement {
            peer_id: vec![id; 4],
            addrs: vec![],
            model_id: MODEL,
            n_layers: 30,
            blocks: BlockRange { start, end },
            backend: "cpu".into(),
            // No announced speed: no warm start, so the seed's rule is tested as it is.
            throughput: 0.0,
            max_sessions: 4,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: 100,
            expires_ms: 1_000_000,
        }
    }

    fn hop_of(a: &Announcement) -> Hop {
        Hop {
            peer_id: a.peer_id.clone(),
            addrs: vec![],
            blocks: a.blocks,
        }
    }

    /// A decode step whose hops took `us` each, with 1 ms of transit in all.
    fn step(us: &[u32]) -> ForwardTiming {
        ForwardTiming {
            n_tokens: 1,
            rtt_us: us.iter().map(|&u| u64::from(u)).sum::<u64>() + 1000,
            hops: us
                .iter()
                .enumerate()
                .map(|(i, &u)| HopTiming {
                    hop: i as u16,
                    compute_us: u,
                    total_us: u,
                    kept_rows: 0,
                })
                .collect(),
            replay: false,
        }
    }

    fn router(prior: PolicyKind, deadline_ms: f64) -> CsUcbRouter {
        CsUcbRouter::new(CsUcbConfig::new(prior, deadline_ms).unwrap()).unwrap()
    }

    /// Blocks 0-9 on peer 1, 10-19 on peers 2 and 3 (3 is the slow replica), 20-29 on 4.
    fn swarm() -> Vec<Announcement> {
        vec![
            ann(1, 0, 10),
            ann(2, 10, 20),
            ann(3, 10, 20),
            ann(4, 20, 30),
        ]
    }

    /// Runs `sessions` sessions of `steps` decode steps each through `routing` on `anns`, every
    /// hop taking 30 ms except peer 3's, which takes `slow_us`; returns how many sessions went
    /// through peer 3 after the first `warmup`.
    fn run(
        routing: &dyn Routing,
        anns: &[Announcement],
        sessions: usize,
        warmup: usize,
        steps: usize,
        slow_us: u32,
    ) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut to_slow = 0;
        for s in 0..sessions {
            let idx = plan_with(anns, 30, routing, &mut rng).unwrap();
            let route: Vec<Hop> = idx.iter().map(|&i| hop_of(&anns[i])).collect();
            let slow = route.iter().any(|h| h.peer_id == vec![3; 4]);
            if slow && s >= warmup {
                to_slow += 1;
            }
            let us: Vec<u32> = route
                .iter()
                .map(|h| {
                    if h.peer_id == vec![3; 4] {
                        slow_us
                    } else {
                        30_000
                    }
                })
                .collect();
            let taken: Vec<ForwardTiming> = (0..steps).map(|_| step(&us)).collect();
            routing.observe(&MODEL, &route, &taken);
        }
        to_slow
    }

    #[test]
    fn hop_times_share_the_transit_evenly() {
        let mut t = step(&[1000, 3000]);
        t.rtt_us = 6000;
        assert_eq!(hop_times_s(2, &t), Some(vec![0.002, 0.004]));
        // Hops that took longer than the round trip (clock skew) get no negative share.
        t.rtt_us = 10;
        assert_eq!(hop_times_s(2, &t), Some(vec![0.001, 0.003]));
        assert_eq!(hop_times_s(3, &t), None, "one receipt per hop");
        t.n_tokens = 4;
        assert_eq!(hop_times_s(2, &t), None, "a prompt is not a decode step");
        t.n_tokens = 1;
        t.replay = true;
        assert_eq!(
            hop_times_s(2, &t),
            None,
            "a failover replay is not a new token"
        );
    }

    #[test]
    fn learns_to_avoid_a_replica_over_its_deadline_share() {
        // 300 ms per token: each 10-block hop has 100 ms; the slow replica takes 150.
        let learned = router(PolicyKind::Uniform, 300.0);
        let to_slow = run(&learned, &swarm(), 200, 20, 8, 150_000);
        assert!(
            to_slow <= 2,
            "cs-ucb sent {to_slow} of 180 sessions to the slow replica"
        );
        let c = learned.counts();
        assert_eq!(c.decisions, 200 * 3);
        assert_eq!(
            c.observations,
            200 * 3,
            "one observation per session and hop: {c:?}"
        );
        let slow = learned.stats(&MODEL, 10, 20, &[3; 4]).unwrap();
        assert!(
            slow.mean_time > 1.4,
            "normalised time of the slow replica: {slow:?}"
        );
        // The uniform draw it replaces sends about half there (the test can fail).
        let uniform = Sampled(&sunswarm_energy::policy::Uniform);
        let drawn = run(&uniform, &swarm(), 200, 20, 8, 150_000);
        assert!((60..=120).contains(&drawn), "uniform sent {drawn} of 180");
    }

    #[test]
    fn a_slower_replica_within_its_share_still_loses_on_reward() {
        // 1 s per token: 333 ms per hop, so 150 ms is within the share, but worse than 30 ms
        // (rewards 0.55 against 0.91). UCB keeps exploring it, less and less.
        let learned = router(PolicyKind::Uniform, 1000.0);
        let to_slow = run(&learned, &swarm(), 300, 100, 8, 150_000);
        assert!(
            to_slow < 40,
            "cs-ucb sent {to_slow} of 200 to the slower replica"
        );
        let uniform = run(
            &Sampled(&sunswarm_energy::policy::Uniform),
            &swarm(),
            300,
            100,
            8,
            150_000,
        );
        assert!(uniform > 70, "uniform sent {uniform} of 200");
    }

    #[test]
    fn the_prior_orders_exploration_and_zero_weight_is_never_chosen() {
        let mut anns = swarm();
        anns[1].energy.max_job_rate = 0.2;
        anns[2].energy.max_job_rate = 0.6;
        let learned = router(PolicyKind::LongTerm, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let first = plan_with(&anns, 30, &learned, &mut rng).unwrap();
        assert_eq!(
            first[1], 2,
            "untried peers go in the order of long-term's weights"
        );
        // Peer 3 goes into power saving: whatever it learned, it is not chosen.
        anns[2].energy.power_saving = true;
        for _ in 0..20 {
            let r = plan_with(&anns, 30, &learned, &mut rng).unwrap();
            assert_eq!(r[1], 1);
        }
        // Full (no free session place): not eligible either.
        anns[2].energy.power_saving = false;
        anns[1].active_sessions = anns[1].max_sessions;
        anns[2].active_sessions = anns[2].max_sessions;
        assert!(matches!(
            plan_with(&anns, 30, &learned, &mut rng),
            Err(route::RouteError::NoneAvailable { block: 10 })
        ));
    }

    #[test]
    fn a_refusal_bars_the_peer_until_it_announces_again() {
        let mut anns = swarm();
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Teach it that peer 2 is fast and peer 3 slow.
        run(&learned, &anns, 10, 0, 4, 150_000);
        let r = plan_with(&anns, 30, &learned, &mut rng).unwrap();
        assert_eq!(r[1], 1, "the fast replica");
        learned.refused(&MODEL, &hop_of(&anns[1]));
        for _ in 0..5 {
            let r = plan_with(&anns, 30, &learned, &mut rng).unwrap();
            assert_eq!(
                r[1], 2,
                "the refusing peer is barred, the slow one is all that is left"
            );
        }
        anns[1].timestamp_ms += 2000;
        let r = plan_with(&anns, 30, &learned, &mut rng).unwrap();
        assert_eq!(r[1], 1, "a newer announcement lifts the bar");
        assert_eq!(learned.counts().refusals, 1);
    }

    #[test]
    fn failures_count_as_deadline_misses() {
        let anns = swarm();
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        plan_with(&anns, 30, &learned, &mut rng).unwrap();
        for _ in 0..3 {
            learned.failed(&MODEL, &hop_of(&anns[1]));
        }
        let s = learned.stats(&MODEL, 10, 20, &[2; 4]).unwrap();
        assert_eq!(s.n, 3.0);
        assert!(s.mean_time >= 2.0 - 1e-9, "{s:?}");
        // Peer 3, untried, is explored; once it answers in time, peer 2 stays out.
        for _ in 0..20 {
            let idx = plan_with(&anns, 30, &learned, &mut rng).unwrap();
            assert_eq!(idx[1], 2);
            let route: Vec<Hop> = idx.iter().map(|&i| hop_of(&anns[i])).collect();
            learned.observe(&MODEL, &route, &[step(&[30_000, 30_000, 30_000])]);
        }
    }

    #[test]
    fn equally_fast_peers_are_told_apart_by_their_announced_energy() {
        let mut anns = swarm();
        // Peer 2 runs at 15 W (26 kJ a job, the dearest), peer 3 on mains (0).
        anns[1].energy.power_mode = PowerSetting::Fixed { watts: 15 };
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut to_dear = 0;
        for s in 0..100 {
            let idx = plan_with(&anns, 30, &learned, &mut rng).unwrap();
            let route: Vec<Hop> = idx.iter().map(|&i| hop_of(&anns[i])).collect();
            if idx[1] == 1 && s >= 10 {
                to_dear += 1;
            }
            learned.observe(&MODEL, &route, &[step(&[30_000, 30_000, 30_000])]);
        }
        assert!(to_dear <= 3, "{to_dear} of 90 to the dear peer");
        assert!(learned.stats(&MODEL, 10, 20, &[2; 4]).unwrap().mean_reward < 0.0);
    }

    #[test]
    fn hops_of_different_lengths_are_compared_per_block() {
        let anns = vec![
            ann(1, 0, 10),
            ann(2, 10, 30),
            ann(3, 10, 20),
            ann(4, 20, 30),
        ];
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let idx = plan_with(&anns, 30, &learned, &mut rng).unwrap();
            let route: Vec<Hop> = idx.iter().map(|&i| hop_of(&anns[i])).collect();
            seen.insert(idx.len());
            // 4 ms per block everywhere (+ transit shared over the hops).
            let us: Vec<u32> = route
                .iter()
                .map(|h| 4_000 * (h.blocks.end - h.blocks.start))
                .collect();
            let mut t = step(&us);
            t.rtt_us = us.iter().map(|&u| u64::from(u)).sum();
            learned.observe(&MODEL, &route, &[t]);
        }
        assert_eq!(
            seen.len(),
            2,
            "both the 2-hop and the 3-hop routes were tried"
        );
        let long = learned.stats(&MODEL, 10, 30, &[2; 4]).unwrap();
        let short = learned.stats(&MODEL, 10, 20, &[3; 4]).unwrap();
        assert!(
            (long.mean_time - short.mean_time).abs() < 1e-9,
            "{long:?} {short:?}"
        );
        // 4 ms a block against 10 ms a block of deadline.
        assert!((long.mean_time - 0.4).abs() < 1e-9, "{long:?}");
    }

    #[test]
    fn bad_deadlines_are_refused() {
        for d in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert!(CsUcbConfig::new(PolicyKind::Uniform, d).is_err(), "{d}");
        }
        assert_eq!(e_ref_joules(), 26_000.0);
    }

    #[test]
    fn concurrent_sessions_explore_an_unknown_peer_one_at_a_time() {
        // Eight sessions open before any step comes back: the seed's rule would send all
        // eight to the first untried replica; here each unknown replica gets one, and the
        // rest go by the rule again (all untried and being explored: key order).
        let anns = swarm();
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let picks: Vec<usize> = (0..8)
            .map(|_| plan_with(&anns, 30, &learned, &mut rng).unwrap()[1])
            .collect();
        assert_eq!(&picks[..2], &[1, 2], "{picks:?}");
        // Once peer 3 (index 2) is observed slow, the next wave avoids it.
        let slow = vec![hop_of(&anns[0]), hop_of(&anns[2]), hop_of(&anns[3])];
        learned.observe(&MODEL, &slow, &[step(&[30_000, 150_000, 30_000])]);
        let fast = vec![hop_of(&anns[0]), hop_of(&anns[1]), hop_of(&anns[3])];
        learned.observe(&MODEL, &fast, &[step(&[30_000, 30_000, 30_000])]);
        for _ in 0..8 {
            assert_eq!(plan_with(&anns, 30, &learned, &mut rng).unwrap()[1], 1);
        }
    }

    #[test]
    fn a_session_is_one_observation_of_its_mean_step() {
        let anns = swarm();
        let learned = router(PolicyKind::Uniform, 300.0);
        plan_with(&anns, 30, &learned, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let route = vec![hop_of(&anns[0]), hop_of(&anns[1]), hop_of(&anns[3])];
        // 20 and 60 ms on hop 1 (plus 1 ms of transit shared by 3 hops), a prompt step that
        // does not count: one pull of 40.33 ms over 10 blocks against 10 ms a block.
        let mut prompt = step(&[500_000, 500_000, 500_000]);
        prompt.n_tokens = 9;
        let steps = [
            step(&[10_000, 20_000, 10_000]),
            prompt,
            step(&[10_000, 60_000, 10_000]),
        ];
        learned.observe(&MODEL, &route, &steps);
        let s = learned.stats(&MODEL, 10, 20, &[2; 4]).unwrap();
        assert_eq!(s.n, 1.0);
        assert!(
            (s.mean_time - (0.040 + 0.001 / 3.0) / 10.0 / 0.010).abs() < 1e-9,
            "{s:?}"
        );
        learned.observe(&MODEL, &route, &[]);
        assert_eq!(
            learned.stats(&MODEL, 10, 20, &[2; 4]).unwrap().n,
            1.0,
            "no steps, no pull"
        );
    }

    #[test]
    fn a_wave_of_sessions_bets_on_a_peer_no_more_than_its_evidence() {
        // Peer 2 is known from 8 fast sessions, peer 3 from its warm start only, and the radius
        // now makes peer 3 worth a look. Eight sessions open before any reports: one explores
        // peer 3, the rest stay with peer 2.
        let mut anns = swarm();
        for a in &mut anns {
            a.throughput = 100.0;
        }
        // Peer 3 announces 4 ms a block: a mean below peer 2's 3 ms, but one pull only.
        anns[2].throughput = 25.0;
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let fast = vec![hop_of(&anns[0]), hop_of(&anns[1]), hop_of(&anns[3])];
        for _ in 0..8 {
            learned.observe(&MODEL, &fast, &[step(&[10_000, 30_000, 10_000])]);
        }
        let wave: Vec<usize> = (0..8)
            .map(|_| plan_with(&anns, 30, &learned, &mut rng).unwrap()[1])
            .collect();
        assert_eq!(wave.iter().filter(|&&p| p == 2).count(), 1, "{wave:?}");
    }

    #[test]
    fn a_pending_exploration_waits_for_its_report_while_a_known_peer_serves() {
        // Peer 2 is being explored (chosen, not yet reported); peer 3 is known. The next session
        // goes to peer 3 instead of piling onto the unknown peer 2; once peer 2 reports, it is
        // chosen on its merit.
        let anns = swarm();
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let known = vec![hop_of(&anns[0]), hop_of(&anns[2]), hop_of(&anns[3])];
        learned.observe(&MODEL, &known, &[step(&[30_000, 60_000, 30_000])]);
        let first = plan_with(&anns, 30, &learned, &mut rng).unwrap();
        assert_eq!(
            first[1], 1,
            "the unknown peer 2 is explored first (infinite index)"
        );
        assert_eq!(plan_with(&anns, 30, &learned, &mut rng).unwrap()[1], 2);
        let explored = vec![hop_of(&anns[0]), hop_of(&anns[1]), hop_of(&anns[3])];
        learned.observe(&MODEL, &explored, &[step(&[30_000, 30_000, 30_000])]);
        learned.observe(&MODEL, &known, &[step(&[30_000, 60_000, 30_000])]);
        assert_eq!(plan_with(&anns, 30, &learned, &mut rng).unwrap()[1], 1);
    }

    #[test]
    fn warm_start_sends_concurrent_sessions_to_the_peer_that_looks_best() {
        // Announced speeds: every peer 1 ms a block, but peer 3 four times slower. Eight
        // sessions open before any report: all go to peer 2, none explores peer 3 blindly.
        let mut anns = swarm();
        for a in &mut anns {
            a.throughput = 100.0;
        }
        anns[2].throughput = 25.0;
        let learned = router(PolicyKind::Uniform, 300.0);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..8 {
            assert_eq!(plan_with(&anns, 30, &learned, &mut rng).unwrap()[1], 1);
        }
        assert_eq!(learned.counts().warm_starts, 4, "one per peer");
        let s = learned.stats(&MODEL, 10, 20, &[3; 4]).unwrap();
        assert_eq!(s.n, 1.0);
        assert!(
            (s.mean_time - 0.4).abs() < 1e-9,
            "4 ms a block of 10: {s:?}"
        );
        // Real observations then take over: peer 2 turns out slow under load.
        let busy = vec![hop_of(&anns[0]), hop_of(&anns[1]), hop_of(&anns[3])];
        for _ in 0..6 {
            learned.observe(&MODEL, &busy, &[step(&[10_000, 250_000, 10_000])]);
        }
        assert_eq!(plan_with(&anns, 30, &learned, &mut rng).unwrap()[1], 2);
    }
}
