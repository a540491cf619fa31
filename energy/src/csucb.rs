//! CS-UCB (seed 004, PerLLM): an upper-confidence-bound bandit with constraint satisfaction that
//! learns each peer's real per-hop time and energy online and picks the peer of every hop under a
//! per-token deadline. Pure logic, no I/O, no randomness except the seeded [`simulate`] helper.
//!
//! Two forms share one decision rule (the private `choose`):
//!
//! - [`CsUcb`]: exactly the seed's appendix (a fixed number of arms indexed `0..K`, `select` with
//!   `hard_ok`, `update(D, E, deadline)`), so the seed's worked examples C1-C3 reproduce to the
//!   printed digits (see the tests).
//! - [`GroupBandit`]: the Sunswarm form of seed sec. 6, one bandit per block group keyed by peer
//!   identity (`K: Ord + Clone`), where peers come and go. The client calls
//!   [`GroupBandit::select`] with `(peer, prior weight, hard_ok)` per candidate, then
//!   [`GroupBandit::observe`] with the hop's measured time and joules, or
//!   [`GroupBandit::refused`] / [`GroupBandit::failed`]. The group's share of the per-token
//!   deadline is `Delta D_g = Delta D * blocks_g / total_blocks` ([`deadline_share`]).
//!
//! Decision at time `t` (counted from 1 by `select`, `ln 1 = 0`), per arm `a` with `n_a` pulls,
//! mean reward `Rbar_a` and mean normalised time `Dbar_a = mean(D / Delta D)`:
//!
//! ```text
//! F = { a : hard_ok[a] and (n_a == 0 or Dbar_a - delta_D sqrt(ln t / n_a) <= 1) }
//! F non-empty: argmax over F of U_a = +inf if n_a == 0 else Rbar_a + delta sqrt(ln t / n_a)
//! F empty:     argmin over hard_ok arms of the deadline LCB (best effort); none -> None
//! reward:      r = -E / E_ref + lambda clamp(1 - D / Delta D, -1, 1)
//! ```
//!
//! **Composition with the energy policies** (the bandit's prior). The weights a
//! [`Policy`] gives the candidates enter in three places only, so that with
//! equal weights the rule is exactly the seed's:
//!
//! 1. A weight of 0 (or negative, NaN, infinite) means the energy policy says "never" (the peer
//!    is in power saving, has no free place, ...): the arm is treated as not `hard_ok`.
//! 2. Untried arms (all at `U = +inf`) are tried in order of descending prior weight, then key,
//!    instead of id order: the energy policy decides who is explored first.
//! 3. Exact ties in the index (or, in the best-effort fallback, in the deadline LCB) go to the
//!    larger prior weight, then the smaller key.
//!
//! Optionally ([`CsUcbParams::prior_bonus`], 0 by default) the index of a tried arm also gets
//! `prior_bonus * w_a / max_w`, a bounded, scale-free nudge toward the peers the energy policy
//! prefers (it sees battery risk that a hop's joules do not).
//!
//! Off by default, so the reference numbers stay exact: a discount factor on the statistics
//! ([`CsUcbParams::discount`], peers change power mode so the world is not stationary) and a warm
//! start from an announced hop time ([`GroupBandit::warm_start`], counts as one pull).
//!
//! A client hop, sketched (the prior from an energy policy, one bandit per block group):
//!
//! ```
//! use sunswarm_energy::csucb::{CsUcbParams, GroupBandit, candidates_from_policy};
//! use sunswarm_energy::policy::{LongTerm, PeerEnergyState};
//!
//! let state = |lambda_max| PeerEnergyState {
//!     battery: 60, capacity: 100, power_saving: false, available: true,
//!     lambda_max, mode: 1, critical: false, saving_risk: 0.0,
//! };
//! // Blocks 16..24 of 24 under a 100 ms per-token deadline: this group's share is 33.3 ms.
//! let mut group = GroupBandit::for_group(CsUcbParams::with_e_ref(6.0), 0.100, 8, 24)?;
//! let cands = candidates_from_policy(&["b0", "b1"], &[state(0.2), state(0.6)], &LongTerm)?;
//! let peer = group.select(&cands).expect("an eligible peer");
//! assert_eq!(peer, "b1"); // untried peers go in order of the energy policy's weight
//! group.observe(&peer, 0.021, 1.1)?; // hop seconds from the receipt, joules from the trailer
//! # Ok::<(), sunswarm_energy::csucb::CsUcbError>(())
//! ```
//!
//! Robustness: every public function is total. Bad parameters, NaN / negative / infinite
//! observations, a zero or negative deadline and empty arm sets give a [`CsUcbError`] (state left
//! untouched) or a documented no-op (`select` over no candidates returns `None`). Normalised times
//! and energies are capped at [`NORM_CAP`] so one absurd observation cannot turn a mean into an
//! infinity and then into NaN.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::EnergyError;
use crate::policy::{PeerEnergyState, Policy, pick};

/// A failed hop (the peer dropped the connection, timed out, returned garbage) is recorded as an
/// observation of `FAILURE_TIME_FACTOR * Delta D_g` seconds and `E_ref` joules: a clear deadline
/// miss (constraint degree -1) at the worst energy of one decision, so the reward is `-1 - lambda`,
/// below that of any peer that answers in time, and `Dbar` moves above 1 so a peer that keeps
/// failing is dropped by the deadline test just as a confidently slow one is.
pub const FAILURE_TIME_FACTOR: f64 = 2.0;

/// Cap on a normalised observation (`D / Delta D` and `E / E_ref`). Far above anything real (a hop
/// a million times over its share), low enough that means and their differences stay finite.
pub const NORM_CAP: f64 = 1e6;

/// Largest accepted value of `delta`, `lambda`, `delta_D`, `prior_bonus` (same reason as
/// [`NORM_CAP`]: rewards stay within +-2e6, so `r - Rbar` cannot overflow).
pub const PARAM_MAX: f64 = 1e6;

/// Largest accepted magnitude of a mean in [`CsUcb::with_state`].
const STATE_MAX: f64 = 1e12;

/// Why a CS-UCB call was rejected. The bandit's state is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum CsUcbError {
    /// A parameter outside its domain.
    #[error("{param} = {value} is outside its domain ({expected})")]
    Param {
        param: &'static str,
        value: f64,
        expected: &'static str,
    },
    /// A bandit over no arms.
    #[error("a CS-UCB bandit needs at least one arm")]
    NoArms,
    /// An arm index past the end.
    #[error("arm {arm} out of range (the bandit has {arms} arms)")]
    ArmOutOfRange { arm: usize, arms: usize },
    /// A `hard_ok` slice whose length is not the arm count.
    #[error("hard_ok has {got} entries for {arms} arms")]
    HardOkLength { got: usize, arms: usize },
    /// An observed time or energy that is NaN, infinite or negative.
    #[error("observed {what} = {value} must be finite and not negative")]
    Observation { what: &'static str, value: f64 },
    /// A deadline (or deadline share) that is not a finite positive number of seconds.
    #[error("deadline {value} s must be finite and positive")]
    Deadline { value: f64 },
    /// A block group that is empty or larger than the model.
    #[error("a block group of {blocks} blocks out of {total} (needs 1 <= blocks <= total)")]
    Blocks { blocks: u32, total: u32 },
    /// Slices that must pair up do not.
    #[error("{what}: {got} entries for {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A simulation configuration that cannot be run.
    #[error("simulation: {reason}")]
    Sim { reason: String },
}

impl From<CsUcbError> for EnergyError {
    fn from(e: CsUcbError) -> Self {
        EnergyError::Invalid {
            param: "cs-ucb",
            reason: e.to_string(),
        }
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, CsUcbError>;

/// Parameters of CS-UCB; the defaults are the seed's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsUcbParams {
    /// Exploration weight of the UCB index (eq. 6), `delta`; seed default 1.0.
    pub delta: f64,
    /// Weight of the constraint-satisfaction degree in the reward, `lambda`; seed default 1.0.
    pub lambda: f64,
    /// Optimism of the deadline test, `delta_D`; seed default 0.1 (0.5 leaves the deadline almost
    /// only to the reward).
    pub delta_d: f64,
    /// Energy scale `E_ref` in joules (the largest energy of one decision); the appendix's default
    /// is 1.0, the examples use 60 (C1, C2) and 6 (C3).
    pub e_ref: f64,
    /// Discount in (0, 1] applied to every arm's pull count (and to `t`) at each decision, so old
    /// observations fade (discounted UCB). 1 = off, the seed's rule.
    pub discount: f64,
    /// Weight of the energy policy's prior in the index of tried arms (module docs: the optional
    /// nudge after rules 1-3); 0 = off, the seed's rule.
    pub prior_bonus: f64,
}

impl Default for CsUcbParams {
    fn default() -> Self {
        Self {
            delta: 1.0,
            lambda: 1.0,
            delta_d: 0.1,
            e_ref: 1.0,
            discount: 1.0,
            prior_bonus: 0.0,
        }
    }
}

fn param_in(param: &'static str, value: f64, ok: bool, expected: &'static str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(CsUcbError::Param {
            param,
            value,
            expected,
        })
    }
}

impl CsUcbParams {
    /// The seed's defaults with the given energy scale.
    pub fn with_e_ref(e_ref: f64) -> Self {
        Self {
            e_ref,
            ..Self::default()
        }
    }

    /// Checks every field; NaN fails every check.
    pub fn validate(&self) -> Result<()> {
        let bounded = |x: f64| (0.0..=PARAM_MAX).contains(&x);
        param_in("delta", self.delta, bounded(self.delta), "0..=1e6")?;
        param_in("lambda", self.lambda, bounded(self.lambda), "0..=1e6")?;
        param_in("delta_d", self.delta_d, bounded(self.delta_d), "0..=1e6")?;
        param_in(
            "e_ref",
            self.e_ref,
            self.e_ref > 0.0 && self.e_ref.is_finite(),
            "finite, > 0",
        )?;
        param_in(
            "discount",
            self.discount,
            self.discount > 0.0 && self.discount <= 1.0,
            "(0, 1]",
        )?;
        param_in(
            "prior_bonus",
            self.prior_bonus,
            bounded(self.prior_bonus),
            "0..=1e6",
        )
    }

    /// The reward of one observation and its normalised time `D / Delta D`, validated and capped.
    /// Written in the appendix's order of operations so the worked examples match to the last bit.
    fn observation(&self, d: f64, e: f64, deadline: f64) -> Result<(f64, f64)> {
        if !(d.is_finite() && d >= 0.0) {
            return Err(CsUcbError::Observation {
                what: "time (s)",
                value: d,
            });
        }
        if !(e.is_finite() && e >= 0.0) {
            return Err(CsUcbError::Observation {
                what: "energy (J)",
                value: e,
            });
        }
        check_deadline(deadline)?;
        let d_norm = (d / deadline).min(NORM_CAP);
        let f = (1.0 - d_norm).clamp(-1.0, 1.0);
        let e_norm = (e / self.e_ref).min(NORM_CAP);
        Ok((-e_norm + self.lambda * f, d_norm))
    }
}

fn check_deadline(deadline: f64) -> Result<()> {
    if deadline > 0.0 && deadline.is_finite() {
        Ok(())
    } else {
        Err(CsUcbError::Deadline { value: deadline })
    }
}

/// Share of the per-token deadline given to a group of `blocks` of the model's `total` blocks:
/// `Delta D * blocks / total` (seed sec. 6: simple and conservative, every group gets time in
/// proportion to the work it does).
pub fn deadline_share(deadline_s: f64, blocks: u32, total: u32) -> Result<f64> {
    check_deadline(deadline_s)?;
    if blocks == 0 || blocks > total {
        return Err(CsUcbError::Blocks { blocks, total });
    }
    let share = deadline_s * blocks as f64 / total as f64;
    // A subnormal deadline can round the share to 0.
    check_deadline(share)?;
    Ok(share)
}

/// Optional energy-scarcity factor of seed sec. 6, `1 + (1 - e/B)` in [1, 2]: multiply a peer's
/// observed joules by it so a draining battery looks costlier. 1 for a full battery or a record
/// without a usable capacity (mains peers).
pub fn scarcity_factor(state: &PeerEnergyState) -> f64 {
    if state.capacity <= 0 {
        return 1.0;
    }
    let fill = (state.battery as f64 / state.capacity as f64).clamp(0.0, 1.0);
    1.0 + (1.0 - fill)
}

/// Candidates for [`GroupBandit::select`] from the peers' announced states and an energy policy:
/// the policy's weight is the prior, `hard_ok` is the state's eligibility (alive, not in power
/// saving, a free place). `keys[i]` names the peer of `states[i]`.
pub fn candidates_from_policy<K: Clone>(
    keys: &[K],
    states: &[PeerEnergyState],
    policy: &dyn Policy,
) -> Result<Vec<(K, f64, bool)>> {
    if keys.len() != states.len() {
        return Err(CsUcbError::Length {
            what: "peer keys",
            got: keys.len(),
            expected: states.len(),
        });
    }
    let weights = policy.weights(states);
    Ok(keys
        .iter()
        .zip(states)
        .zip(weights)
        .map(|((k, s), w)| (k.clone(), w, s.eligible()))
        .collect())
}

/// Statistics of one arm.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ArmStats {
    /// Pulls `n_a` (discounted when [`CsUcbParams::discount`] < 1); 0 = untried.
    pub n: f64,
    /// Mean reward `Rbar_a`.
    pub mean_reward: f64,
    /// Mean normalised time `Dbar_a` (time over the deadline share; > 1 misses it).
    pub mean_time: f64,
}

impl ArmStats {
    /// Whether the arm has been observed (a fully discounted arm counts as untried again).
    pub fn tried(&self) -> bool {
        self.n > 0.0
    }

    fn record(&mut self, reward: f64, d_norm: f64) {
        self.n += 1.0;
        self.mean_reward += (reward - self.mean_reward) / self.n;
        self.mean_time += (d_norm - self.mean_time) / self.n;
    }

    fn validate(&self) -> Result<()> {
        param_in(
            "n",
            self.n,
            self.n >= 0.0 && self.n.is_finite(),
            "finite, >= 0",
        )?;
        param_in(
            "mean_reward",
            self.mean_reward,
            self.mean_reward.abs() <= STATE_MAX,
            "|x| <= 1e12",
        )?;
        param_in(
            "mean_time",
            self.mean_time,
            (0.0..=STATE_MAX).contains(&self.mean_time),
            "0..=1e12",
        )
    }
}

/// `c sqrt(ln t / n)`, the appendix's `_rad`, made total: 0 when `c` or `ln t` is 0 (so `0 * inf`
/// never happens), `+inf` for a pull count discounted to nothing.
fn radius(c: f64, ln_t: f64, n: f64) -> f64 {
    if c == 0.0 || ln_t <= 0.0 {
        return 0.0;
    }
    if n <= 0.0 {
        return f64::INFINITY;
    }
    c * (ln_t / n).sqrt()
}

fn ln_t(t: f64) -> f64 {
    if t > 1.0 { t.ln() } else { 0.0 }
}

/// Deadline lower confidence bound `Dbar - delta_D sqrt(ln t / n)`; `-inf` when untried.
fn lcb(params: &CsUcbParams, t: f64, s: &ArmStats) -> f64 {
    if !s.tried() {
        return f64::NEG_INFINITY;
    }
    let v = s.mean_time - radius(params.delta_d, ln_t(t), s.n);
    if v.is_nan() { f64::INFINITY } else { v }
}

/// UCB index `Rbar + delta sqrt(ln t / n)` (plus the optional prior bonus); `+inf` when untried.
fn index(params: &CsUcbParams, t: f64, s: &ArmStats, bonus: f64) -> f64 {
    if !s.tried() {
        return f64::INFINITY;
    }
    let v = s.mean_reward + radius(params.delta, ln_t(t), s.n) + bonus;
    if v.is_nan() { f64::NEG_INFINITY } else { v }
}

/// A prior weight as the rule reads it: anything not finite and positive is 0 ("never").
fn prior_of(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 { w } else { 0.0 }
}

/// One candidate as the decision rule sees it.
#[derive(Debug, Clone, Copy)]
struct View {
    ok: bool,
    prior: f64,
    stats: ArmStats,
}

/// Outcome of the decision rule: the position chosen, and whether it came from the feasible set
/// (false: best-effort fallback, every allowed arm is confidently too slow).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Choice {
    pos: usize,
    feasible: bool,
}

/// Whether a candidate may be chosen at all, and whether it passes the optimistic deadline test.
fn allowed(v: &View) -> bool {
    v.ok && prior_of(v.prior) > 0.0
}

fn in_feasible(params: &CsUcbParams, t: f64, v: &View) -> bool {
    allowed(v) && (!v.stats.tried() || lcb(params, t, &v.stats) <= 1.0)
}

/// The decision rule shared by both forms, at the already advanced time `t`. `key_cmp` orders
/// positions by key (id order for [`CsUcb`]), the last tie-breaker.
fn choose(
    params: &CsUcbParams,
    t: f64,
    views: &[View],
    key_cmp: impl Fn(usize, usize) -> Ordering,
) -> Option<Choice> {
    let w_max = views
        .iter()
        .filter(|v| allowed(v))
        .map(|v| v.prior)
        .fold(0.0, f64::max);
    let bonus = |v: &View| {
        if params.prior_bonus > 0.0 && w_max > 0.0 {
            params.prior_bonus * (v.prior / w_max)
        } else {
            0.0
        }
    };
    // "a is better than b": larger primary value (already oriented), then larger prior, then
    // smaller key. partial_cmp cannot fail: index and lcb never return NaN.
    let better = |a: (usize, f64), b: (usize, f64)| -> bool {
        let by =
            a.1.partial_cmp(&b.1)
                .unwrap_or(Ordering::Equal)
                .then_with(|| {
                    views[a.0]
                        .prior
                        .partial_cmp(&views[b.0].prior)
                        .unwrap_or(Ordering::Equal)
                        .then_with(|| key_cmp(b.0, a.0))
                });
        by == Ordering::Greater
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in views.iter().enumerate() {
        if !in_feasible(params, t, v) {
            continue;
        }
        let cand = (i, index(params, t, &v.stats, bonus(v)));
        if best.is_none_or(|b| better(cand, b)) {
            best = Some(cand);
        }
    }
    if let Some((pos, _)) = best {
        return Some(Choice {
            pos,
            feasible: true,
        });
    }
    // Best effort: the allowed arm with the smallest deadline LCB (negated so "larger is better").
    for (i, v) in views.iter().enumerate() {
        if !allowed(v) {
            continue;
        }
        let cand = (i, -lcb(params, t, &v.stats));
        if best.is_none_or(|b| better(cand, b)) {
            best = Some(cand);
        }
    }
    best.map(|(pos, _)| Choice {
        pos,
        feasible: false,
    })
}

/// The seed's CS-UCB over a fixed set of arms `0..K` (appendix, line by line).
#[derive(Debug, Clone, PartialEq)]
pub struct CsUcb {
    params: CsUcbParams,
    t: f64,
    arms: Vec<ArmStats>,
}

impl CsUcb {
    /// A bandit over `arms` untried arms at `t = 0`.
    pub fn new(arms: usize, params: CsUcbParams) -> Result<Self> {
        params.validate()?;
        if arms == 0 {
            return Err(CsUcbError::NoArms);
        }
        Ok(Self {
            params,
            t: 0.0,
            arms: vec![ArmStats::default(); arms],
        })
    }

    /// A bandit in a given state (decisions made so far, per-arm statistics), e.g. to replay a
    /// worked example or restore a saved one.
    pub fn with_state(params: CsUcbParams, t: f64, arms: Vec<ArmStats>) -> Result<Self> {
        params.validate()?;
        if arms.is_empty() {
            return Err(CsUcbError::NoArms);
        }
        param_in("t", t, t >= 0.0 && t.is_finite(), "finite, >= 0")?;
        arms.iter().try_for_each(ArmStats::validate)?;
        Ok(Self { params, t, arms })
    }

    /// The parameters.
    pub fn params(&self) -> &CsUcbParams {
        &self.params
    }

    /// Decisions made so far (discounted when the discount is on).
    pub fn t(&self) -> f64 {
        self.t
    }

    /// Number of arms.
    pub fn arms(&self) -> usize {
        self.arms.len()
    }

    /// Statistics of `arm`.
    pub fn stats(&self, arm: usize) -> Result<ArmStats> {
        self.arms
            .get(arm)
            .copied()
            .ok_or(CsUcbError::ArmOutOfRange {
                arm,
                arms: self.arms.len(),
            })
    }

    fn check_hard_ok(&self, hard_ok: &[bool]) -> Result<()> {
        if hard_ok.len() != self.arms.len() {
            return Err(CsUcbError::HardOkLength {
                got: hard_ok.len(),
                arms: self.arms.len(),
            });
        }
        Ok(())
    }

    fn views(&self, hard_ok: &[bool]) -> Vec<View> {
        self.arms
            .iter()
            .zip(hard_ok)
            .map(|(s, &ok)| View {
                ok,
                prior: 1.0,
                stats: *s,
            })
            .collect()
    }

    /// One decision: `t += 1`, then the arm to use, or `None` when no arm is `hard_ok` (the
    /// decision still counts in `t`, as in the appendix). `hard_ok` must have one entry per arm;
    /// on a length mismatch nothing changes.
    pub fn select(&mut self, hard_ok: &[bool]) -> Result<Option<usize>> {
        self.check_hard_ok(hard_ok)?;
        advance(&mut self.t, self.params.discount, self.arms.iter_mut());
        let views = self.views(hard_ok);
        Ok(choose(&self.params, self.t, &views, |a, b| a.cmp(&b)).map(|c| c.pos))
    }

    /// [`CsUcb::select`] with every arm allowed (the appendix's `hard_ok=None`).
    pub fn select_any(&mut self) -> Option<usize> {
        let all = vec![true; self.arms.len()];
        advance(&mut self.t, self.params.discount, self.arms.iter_mut());
        let views = self.views(&all);
        choose(&self.params, self.t, &views, |a, b| a.cmp(&b)).map(|c| c.pos)
    }

    /// Records that `arm` took `d` seconds and `e` joules against the deadline `deadline` (s).
    pub fn update(&mut self, arm: usize, d: f64, e: f64, deadline: f64) -> Result<()> {
        let arms = self.arms.len();
        let (r, d_norm) = self.params.observation(d, e, deadline)?;
        self.arms
            .get_mut(arm)
            .ok_or(CsUcbError::ArmOutOfRange { arm, arms })?
            .record(r, d_norm);
        Ok(())
    }

    /// UCB index of `arm` at the current `t` (right after `select`: the value that decision used).
    pub fn index(&self, arm: usize) -> Result<f64> {
        Ok(index(&self.params, self.t, &self.stats(arm)?, 0.0))
    }

    /// Deadline lower confidence bound of `arm` at the current `t` (`-inf` when untried).
    pub fn deadline_lcb(&self, arm: usize) -> Result<f64> {
        Ok(lcb(&self.params, self.t, &self.stats(arm)?))
    }

    /// The feasible set `F` at the current `t` (right after `select`: the set that decision used).
    pub fn feasible(&self, hard_ok: &[bool]) -> Result<Vec<usize>> {
        self.check_hard_ok(hard_ok)?;
        Ok(self
            .views(hard_ok)
            .iter()
            .enumerate()
            .filter(|(_, v)| in_feasible(&self.params, self.t, v))
            .map(|(i, _)| i)
            .collect())
    }
}

/// One decision's clock step: `t = discount * t + 1`, every pull count times the discount. With
/// the discount at 1 this is the appendix's `t += 1` exactly.
fn advance<'a>(t: &mut f64, discount: f64, arms: impl Iterator<Item = &'a mut ArmStats>) {
    *t = discount * *t + 1.0;
    if discount < 1.0 {
        arms.for_each(|a| a.n *= discount);
    }
}

/// One peer of a [`GroupBandit`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct PeerArm {
    stats: ArmStats,
    refused: bool,
}

/// The Sunswarm form: one CS-UCB per block group, arms keyed by peer identity.
///
/// A peer gets an arm when it is first observed, refused or warm-started; its statistics outlive
/// its absence from the candidates (a peer that drops out and comes back keeps what was learnt)
/// until [`GroupBandit::forget`]. `t` counts this group's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBandit<K: Ord + Clone> {
    params: CsUcbParams,
    share_s: f64,
    t: f64,
    arms: BTreeMap<K, PeerArm>,
}

impl<K: Ord + Clone> GroupBandit<K> {
    /// A bandit whose hops have `deadline_share_s` seconds each (see [`deadline_share`]).
    pub fn new(params: CsUcbParams, deadline_share_s: f64) -> Result<Self> {
        params.validate()?;
        check_deadline(deadline_share_s)?;
        Ok(Self {
            params,
            share_s: deadline_share_s,
            t: 0.0,
            arms: BTreeMap::new(),
        })
    }

    /// A bandit for a group of `blocks` of `total_blocks` under a per-token deadline.
    pub fn for_group(
        params: CsUcbParams,
        deadline_s: f64,
        blocks: u32,
        total_blocks: u32,
    ) -> Result<Self> {
        Self::new(params, deadline_share(deadline_s, blocks, total_blocks)?)
    }

    /// The parameters.
    pub fn params(&self) -> &CsUcbParams {
        &self.params
    }

    /// This group's deadline share in seconds.
    pub fn deadline_share(&self) -> f64 {
        self.share_s
    }

    /// Changes the deadline share for later observations (a new session's deadline). Past means
    /// stay normalised by the share they were observed under.
    pub fn set_deadline_share(&mut self, share_s: f64) -> Result<()> {
        check_deadline(share_s)?;
        self.share_s = share_s;
        Ok(())
    }

    /// Decisions made so far (discounted when the discount is on).
    pub fn t(&self) -> f64 {
        self.t
    }

    /// Peers with an arm.
    pub fn len(&self) -> usize {
        self.arms.len()
    }

    /// Whether no peer has an arm yet.
    pub fn is_empty(&self) -> bool {
        self.arms.is_empty()
    }

    /// Statistics of `key`'s arm, if it has one.
    pub fn stats(&self, key: &K) -> Option<ArmStats> {
        self.arms.get(key).map(|a| a.stats)
    }

    /// Whether `key` refused and has not been cleared.
    pub fn is_refused(&self, key: &K) -> bool {
        self.arms.get(key).is_some_and(|a| a.refused)
    }

    /// Picks the peer of this hop among `candidates`, each `(peer, prior weight, hard_ok)`: the
    /// prior is the energy policy's weight (module docs: 0 = never, order of exploration, ties),
    /// `hard_ok` the known constraints (alive, not in power saving, free KV memory, input rate
    /// under its announced maximum). A peer that refused is not allowed until cleared.
    ///
    /// No candidates: `None`, and `t` does not move (no decision was made). Candidates but none
    /// allowed: `None` after `t += 1`, as the appendix. A key listed twice is judged per entry.
    pub fn select(&mut self, candidates: &[(K, f64, bool)]) -> Option<K> {
        self.decide(candidates).map(|(k, _)| k)
    }

    /// [`GroupBandit::select`], also telling whether the peer passed the deadline test (`false`:
    /// best effort, every allowed peer is confidently too slow for the share, so the client may
    /// want a longer deadline or another route).
    pub fn decide(&mut self, candidates: &[(K, f64, bool)]) -> Option<(K, bool)> {
        if candidates.is_empty() {
            return None;
        }
        advance(
            &mut self.t,
            self.params.discount,
            self.arms.values_mut().map(|a| &mut a.stats),
        );
        let views: Vec<View> = candidates
            .iter()
            .map(|(k, w, ok)| {
                let arm = self.arms.get(k).copied().unwrap_or_default();
                View {
                    ok: *ok && !arm.refused,
                    prior: prior_of(*w),
                    stats: arm.stats,
                }
            })
            .collect();
        let c = choose(&self.params, self.t, &views, |a, b| {
            candidates[a].0.cmp(&candidates[b].0)
        })?;
        Some((candidates[c.pos].0.clone(), c.feasible))
    }

    /// Records one hop on `key`: its time in seconds (compute + queue from the frame's trailer
    /// plus the measured link latency) and its energy in joules.
    pub fn observe(&mut self, key: &K, hop_time_s: f64, joules: f64) -> Result<()> {
        let (r, d_norm) = self.params.observation(hop_time_s, joules, self.share_s)?;
        self.arm_mut(key).stats.record(r, d_norm);
        Ok(())
    }

    /// `key` refused the hop (power saving, overload). Not a reward: its statistics stay as they
    /// are; it is only barred (treated as not `hard_ok`) until [`GroupBandit::clear_refusal`],
    /// which the client calls when the peer's announcement record changes (seed sec. 6: "for the
    /// rest of that record's lifetime").
    pub fn refused(&mut self, key: &K) {
        self.arm_mut(key).refused = true;
    }

    /// Lifts `key`'s refusal (a fresh announcement arrived). No-op for an unknown peer.
    pub fn clear_refusal(&mut self, key: &K) {
        if let Some(a) = self.arms.get_mut(key) {
            a.refused = false;
        }
    }

    /// Lifts every refusal.
    pub fn clear_refusals(&mut self) {
        self.arms.values_mut().for_each(|a| a.refused = false);
    }

    /// The hop on `key` failed: recorded as a deadline miss, see [`FAILURE_TIME_FACTOR`].
    pub fn failed(&mut self, key: &K) {
        let d = FAILURE_TIME_FACTOR * self.share_s;
        let e = self.params.e_ref;
        // Both are finite and non-negative (share and e_ref were validated), so this cannot fail;
        // a failure must never be lost, hence the fallback that records the clamped worst case.
        let (r, d_norm) = self
            .params
            .observation(d, e, self.share_s)
            .unwrap_or((-1.0 - self.params.lambda, FAILURE_TIME_FACTOR));
        self.arm_mut(key).stats.record(r, d_norm);
    }

    /// Warm start from an announcement: if `key` is untried, record one pull with the announced
    /// hop time (e.g. `blocks_g / announced blocks per second`) and joules (announced power times
    /// that time). Returns whether it was applied; a peer with observations is left alone, so
    /// re-announcements never outweigh what was measured.
    pub fn warm_start(&mut self, key: &K, hop_time_s: f64, joules: f64) -> Result<bool> {
        if self.arms.get(key).is_some_and(|a| a.stats.tried()) {
            return Ok(false);
        }
        self.observe(key, hop_time_s, joules)?;
        Ok(true)
    }

    /// Drops `key`'s arm (the peer left for good); returns whether it had one.
    pub fn forget(&mut self, key: &K) -> bool {
        self.arms.remove(key).is_some()
    }

    fn arm_mut(&mut self, key: &K) -> &mut PeerArm {
        self.arms.entry(key.clone()).or_default()
    }
}

/// How the [`simulate`] helper routes each hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimRouting {
    /// A [`GroupBandit`] per group, the prior weights as its prior.
    CsUcb,
    /// The energy policy alone: a draw proportional to the prior weights (the baseline).
    Prior,
}

/// One peer of a simulated swarm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimPeer {
    /// Index of the block group it serves.
    pub group: usize,
    /// Mean compute time of its hop (s).
    pub hop_s: f64,
    /// Power while computing (W); a hop costs `power_w * compute time` joules.
    pub power_w: f64,
    /// The energy policy's weight for it (its prior).
    pub prior: f64,
    /// Tokens `[start, end)` during which it is in power saving (weight 0, not `hard_ok`).
    pub saving: Option<(usize, usize)>,
}

/// A simulated route: block groups in order, their peers, one of which is the slow replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// CS-UCB parameters (used by [`SimRouting::CsUcb`]).
    pub params: CsUcbParams,
    /// Routing rule.
    pub routing: SimRouting,
    /// Per-token deadline (s).
    pub deadline_s: f64,
    /// Blocks of each group, in route order.
    pub group_blocks: Vec<u32>,
    /// Every peer.
    pub peers: Vec<SimPeer>,
    /// Index in `peers` of the slow replica whose share is reported.
    pub slow: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Tokens before the slow replica's share is counted.
    pub warmup: usize,
    /// Relative jitter of a hop's compute time: uniform in `hop_s * [1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// Link latency added to every hop (s).
    pub link_s: f64,
}

/// Most tokens one [`simulate`] call runs (bounds its memory).
pub const MAX_SIM_TOKENS: usize = 10_000_000;

impl SimConfig {
    /// The scenario of seed 004 C3 made noisy: 0.1 s per token, group A = 16 blocks (A0, A1),
    /// group B = 8 blocks (B0, B1 and the slow replica B2, cheap at 10 W but 60 ms, over its
    /// 33 ms share), 20 % jitter, 2 ms links, B0 in power saving for tokens 300..400, equal
    /// priors, E_ref = 6 J, 1000 tokens with 100 of warm-up.
    pub fn two_groups_one_slow(routing: SimRouting) -> Self {
        let peer = |group, hop_s, power_w| SimPeer {
            group,
            hop_s,
            power_w,
            prior: 1.0,
            saving: None,
        };
        let mut b0 = peer(1, 0.018, 60.0);
        b0.saving = Some((300, 400));
        Self {
            params: CsUcbParams::with_e_ref(6.0),
            routing,
            deadline_s: 0.1,
            group_blocks: vec![16, 8],
            peers: vec![
                peer(0, 0.040, 60.0),
                peer(0, 0.030, 120.0),
                b0,
                peer(1, 0.022, 50.0),
                peer(1, 0.060, 10.0),
            ],
            slow: 4,
            tokens: 1000,
            warmup: 100,
            jitter: 0.2,
            link_s: 0.002,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(CsUcbError::Sim { reason });
        self.params.validate()?;
        check_deadline(self.deadline_s)?;
        if self.group_blocks.is_empty() {
            return bad("no block groups".into());
        }
        if self.tokens == 0 || self.tokens > MAX_SIM_TOKENS {
            return bad(format!(
                "tokens = {} not in 1..={MAX_SIM_TOKENS}",
                self.tokens
            ));
        }
        if self.warmup >= self.tokens {
            return bad(format!(
                "warmup {} leaves none of {} tokens",
                self.warmup, self.tokens
            ));
        }
        if self.slow >= self.peers.len() {
            return bad(format!(
                "slow replica {} of {} peers",
                self.slow,
                self.peers.len()
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter {} not in [0, 1)", self.jitter));
        }
        if !(self.link_s >= 0.0 && self.link_s.is_finite()) {
            return bad(format!("link latency {} s", self.link_s));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let finite_nn = |x: f64| x >= 0.0 && x.is_finite();
            if p.group >= self.group_blocks.len()
                || !finite_nn(p.hop_s)
                || !finite_nn(p.power_w)
                || !finite_nn(p.prior)
            {
                return bad(format!("peer {i}: {p:?}"));
            }
        }
        for g in 0..self.group_blocks.len() {
            if !self.peers.iter().any(|p| p.group == g) {
                return bad(format!("group {g} has no peer"));
            }
        }
        Ok(())
    }
}

/// What one [`simulate`] run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// Tokens attempted.
    pub tokens: usize,
    /// Tokens that found no allowed peer in some group (counted as deadline misses too).
    pub unserved: usize,
    /// Share of the slow replica's group's hops after warm-up that went to it.
    pub slow_share_after_warmup: f64,
    /// Tokens over the deadline, unserved ones included.
    pub deadline_misses: usize,
    /// 95th percentile (nearest rank) of the served tokens' time (s).
    pub p95_token_s: f64,
    /// Mean time of a served token (s).
    pub mean_token_s: f64,
    /// Joules spent over served tokens (a token that found no peer still pays its earlier hops).
    pub joules_per_token: f64,
    /// Hops per peer, in `peers` order.
    pub counts: Vec<usize>,
}

/// SplitMix64: a seeded, dependency-free generator, enough for jitter and the baseline's draws.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `cfg.tokens` decode steps over the route, one hop per group, and reports the experiment's
/// measures. Deterministic in `seed`. The bandits observe each hop's full time (jittered compute
/// plus link) and joules (power times compute time).
pub fn simulate(cfg: &SimConfig, seed: u64) -> Result<SimReport> {
    cfg.validate()?;
    let mut rng = SplitMix64(seed);
    let total = cfg.group_blocks.iter().map(|&x| x as u64).sum::<u64>();
    let total = u32::try_from(total).map_err(|_| CsUcbError::Sim {
        reason: "more than u32::MAX blocks".into(),
    })?;
    let mut bandits = cfg
        .group_blocks
        .iter()
        .map(|&b| GroupBandit::for_group(cfg.params, cfg.deadline_s, b, total))
        .collect::<Result<Vec<GroupBandit<usize>>>>()?;
    let slow_group = cfg.peers[cfg.slow].group;
    let mut counts = vec![0usize; cfg.peers.len()];
    let (mut slow_hops, mut slow_group_hops) = (0usize, 0usize);
    let (mut misses, mut unserved, mut joules) = (0usize, 0usize, 0.0f64);
    let mut times = Vec::new();
    let mut cands: Vec<(usize, f64, bool)> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for tok in 0..cfg.tokens {
        let mut token_s = 0.0;
        let mut served = true;
        for (g, bandit) in bandits.iter_mut().enumerate() {
            cands.clear();
            cands.extend(
                cfg.peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.group == g)
                    .map(|(i, p)| {
                        let saving = p.saving.is_some_and(|(s, e)| (s..e).contains(&tok));
                        let w = if saving { 0.0 } else { p.prior };
                        (i, w, !saving)
                    }),
            );
            let choice = match cfg.routing {
                SimRouting::CsUcb => bandit.select(&cands),
                SimRouting::Prior => {
                    weights.clear();
                    weights.extend(cands.iter().map(|&(_, w, ok)| if ok { w } else { 0.0 }));
                    let total: f64 = weights.iter().sum();
                    if total > 0.0 {
                        weights.iter_mut().for_each(|w| *w /= total);
                    }
                    pick(&weights, rng.unit()).map(|j| cands[j].0)
                }
            };
            let Some(i) = choice else {
                served = false;
                break;
            };
            let p = &cfg.peers[i];
            let compute = p.hop_s * (1.0 + cfg.jitter * (2.0 * rng.unit() - 1.0));
            let hop = compute + cfg.link_s;
            let e = p.power_w * compute;
            bandit.observe(&i, hop, e)?;
            counts[i] += 1;
            joules += e;
            token_s += hop;
            if g == slow_group && tok >= cfg.warmup {
                slow_group_hops += 1;
                slow_hops += (i == cfg.slow) as usize;
            }
        }
        if served {
            times.push(token_s);
            misses += (token_s > cfg.deadline_s) as usize;
        } else {
            unserved += 1;
            misses += 1;
        }
    }
    let served = times.len();
    let mean = if served > 0 {
        times.iter().sum::<f64>() / served as f64
    } else {
        0.0
    };
    times.sort_by(f64::total_cmp);
    let p95 = if served > 0 {
        times[((0.95 * served as f64).ceil() as usize).clamp(1, served) - 1]
    } else {
        0.0
    };
    Ok(SimReport {
        tokens: cfg.tokens,
        unserved,
        slow_share_after_warmup: if slow_group_hops > 0 {
            slow_hops as f64 / slow_group_hops as f64
        } else {
            0.0
        },
        deadline_misses: misses,
        p95_token_s: p95,
        mean_token_s: mean,
        joules_per_token: if served > 0 {
            joules / served as f64
        } else {
            0.0
        },
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn c1(delta_d: f64) -> CsUcb {
        let params = CsUcbParams {
            delta_d,
            ..CsUcbParams::with_e_ref(60.0)
        };
        let arms = [(4.0, -0.10, 0.8), (2.0, -0.05, 1.3), (3.0, -0.40, 0.5)]
            .map(|(n, mean_reward, mean_time)| ArmStats {
                n,
                mean_reward,
                mean_time,
            })
            .to_vec();
        CsUcb::with_state(params, 9.0, arms).unwrap()
    }

    #[test]
    fn c1_indices_lcbs_feasible_sets_and_choices() {
        let all = [true; 3];
        let arm0_off = [false, true, true];
        for (delta_d, lcbs, feasible, choice, feasible_off, choice_off) in [
            (
                0.5,
                [0.420643, 0.763508, 0.061957],
                vec![0, 1, 2],
                1,
                vec![1, 2],
                1,
            ),
            (
                0.1,
                [0.724129, 1.192702, 0.412391],
                vec![0, 2],
                0,
                vec![2],
                2,
            ),
        ] {
            let mut b = c1(delta_d);
            let mut off = b.clone();
            assert_eq!(b.select(&all).unwrap(), Some(choice), "delta_d {delta_d}");
            assert_eq!(b.t(), 10.0);
            for (a, (u, l)) in [0.658714, 1.022983, 0.476087].iter().zip(lcbs).enumerate() {
                assert!(close(b.index(a).unwrap(), *u, 1e-6), "U[{a}]");
                assert!(close(b.deadline_lcb(a).unwrap(), l, 1e-6), "LCB[{a}]");
            }
            // Bonuses 0.758714, 1.072983, 0.876087.
            let bonus: Vec<f64> = (0..3)
                .map(|a| b.index(a).unwrap() - b.stats(a).unwrap().mean_reward)
                .collect();
            for (x, y) in bonus.iter().zip([0.758714, 1.072983, 0.876087]) {
                assert!(close(*x, y, 1e-6));
            }
            assert_eq!(b.feasible(&all).unwrap(), feasible);
            assert_eq!(off.select(&arm0_off).unwrap(), Some(choice_off));
            assert_eq!(off.feasible(&arm0_off).unwrap(), feasible_off);
        }
    }

    const C2_ARMS: [(f64, f64); 3] = [(0.8, 20.0), (1.2, 10.0), (0.5, 60.0)];

    fn c2(delta_d: f64) -> (Vec<usize>, Vec<Vec<usize>>) {
        let params = CsUcbParams {
            delta_d,
            ..CsUcbParams::with_e_ref(60.0)
        };
        let mut b = CsUcb::new(3, params).unwrap();
        let (mut choices, mut sets) = (vec![], vec![]);
        for _ in 0..100 {
            let a = b.select_any().unwrap();
            sets.push(b.feasible(&[true; 3]).unwrap());
            let (d, e) = C2_ARMS[a];
            b.update(a, d, e, 1.0).unwrap();
            choices.push(a);
        }
        (choices, sets)
    }

    fn counts(choices: &[usize], arms: usize) -> Vec<usize> {
        (0..arms)
            .map(|a| choices.iter().filter(|&&c| c == a).count())
            .collect()
    }

    #[test]
    fn c2_rewards() {
        let p = CsUcbParams::with_e_ref(60.0);
        for ((d, e), r) in C2_ARMS.iter().zip([-0.133333, -0.366667, -0.5]) {
            assert!(close(p.observation(*d, *e, 1.0).unwrap().0, r, 1e-6));
        }
    }

    #[test]
    fn c2_three_servers_hundred_decisions() {
        let (ch, sets) = c2(0.1);
        assert_eq!(
            ch[..20],
            [0, 1, 2, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0]
        );
        assert_eq!(counts(&ch[..20], 3), [14, 1, 5]);
        assert_eq!(counts(&ch, 3), [85, 2, 13]);
        // Arm 1 tried at t = 2, re-tested once at t = 55 (first t with sqrt(ln t) >= 2).
        let arm1: Vec<usize> = (1..=100).filter(|&t| ch[t - 1] == 1).collect();
        assert_eq!(arm1, [2, 55]);
        assert_eq!(
            sets[..4],
            [vec![0, 1, 2], vec![0, 1, 2], vec![0, 2], vec![0, 2]]
        );
        // Excluded at t = 3: LCB 1.2 - 0.1 sqrt(ln 3) = 1.0952 > 1.
        assert!(close(1.2 - 0.1 * 3f64.ln().sqrt(), 1.0952, 1e-4));

        // delta_D = 0.5: the deadline acts only through the reward; the missing arm is used 19
        // times.
        let (ch, _) = c2(0.5);
        assert_eq!(counts(&ch[..20], 3), [11, 5, 4]);
        assert_eq!(counts(&ch, 3), [69, 19, 12]);
    }

    // C3 peers: (D s, E J).
    const C3_A: [(f64, f64); 2] = [(0.050, 3.0), (0.030, 6.0)];
    const C3_B: [(f64, f64); 3] = [(0.020, 1.0), (0.030, 1.5), (0.040, 0.8)];

    struct C3 {
        a: Vec<usize>,
        b: Vec<usize>,
        joules: f64,
        misses: usize,
    }

    fn b0_saving(token: usize) -> bool {
        (31..=40).contains(&token)
    }

    /// C3 with the appendix form: one `CsUcb` per group.
    fn c3_indexed() -> C3 {
        let params = CsUcbParams::with_e_ref(6.0);
        let (da, db) = (
            deadline_share(0.1, 16, 24).unwrap(),
            deadline_share(0.1, 8, 24).unwrap(),
        );
        let mut ga = CsUcb::new(2, params).unwrap();
        let mut gb = CsUcb::new(3, params).unwrap();
        let mut out = C3 {
            a: vec![],
            b: vec![],
            joules: 0.0,
            misses: 0,
        };
        for token in 1..=60 {
            let a = ga.select_any().unwrap();
            let b = gb
                .select(&[!b0_saving(token), true, true])
                .unwrap()
                .unwrap();
            ga.update(a, C3_A[a].0, C3_A[a].1, da).unwrap();
            gb.update(b, C3_B[b].0, C3_B[b].1, db).unwrap();
            out.joules += C3_A[a].1 + C3_B[b].1;
            out.misses += (C3_A[a].0 + C3_B[b].0 > 0.1) as usize;
            out.a.push(a);
            out.b.push(b);
        }
        out
    }

    /// C3 with the Sunswarm form: a `GroupBandit` per group keyed by peer name, B0's power saving
    /// announced as a prior weight of 0 (what the energy policies give a peer in power saving).
    fn c3_groups() -> C3 {
        let params = CsUcbParams::with_e_ref(6.0);
        let mut ga = GroupBandit::for_group(params, 0.1, 16, 24).unwrap();
        let mut gb = GroupBandit::for_group(params, 0.1, 8, 24).unwrap();
        let name = |g: &str, i: usize| format!("{g}{i}");
        let mut out = C3 {
            a: vec![],
            b: vec![],
            joules: 0.0,
            misses: 0,
        };
        for token in 1..=60 {
            let ca: Vec<_> = (0..2).map(|i| (name("A", i), 0.5, true)).collect();
            let cb: Vec<_> = (0..3)
                .map(|i| {
                    let w = if i == 0 && b0_saving(token) {
                        0.0
                    } else {
                        1.0 / 3.0
                    };
                    (name("B", i), w, true)
                })
                .collect();
            let ka = ga.select(&ca).unwrap();
            let kb = gb.select(&cb).unwrap();
            let a = ca.iter().position(|c| c.0 == ka).unwrap();
            let b = cb.iter().position(|c| c.0 == kb).unwrap();
            ga.observe(&ka, C3_A[a].0, C3_A[a].1).unwrap();
            gb.observe(&kb, C3_B[b].0, C3_B[b].1).unwrap();
            out.joules += C3_A[a].1 + C3_B[b].1;
            out.misses += (C3_A[a].0 + C3_B[b].0 > 0.1) as usize;
            out.a.push(a);
            out.b.push(b);
        }
        out
    }

    #[test]
    fn c3_two_groups_with_power_saving_window() {
        assert!(close(deadline_share(0.1, 16, 24).unwrap(), 0.0666667, 1e-7));
        assert!(close(deadline_share(0.1, 8, 24).unwrap(), 0.0333333, 1e-7));
        let p = CsUcbParams::with_e_ref(6.0);
        let db = deadline_share(0.1, 8, 24).unwrap();
        let rewards: Vec<f64> = C3_B
            .iter()
            .map(|&(d, e)| p.observation(d, e, db).unwrap().0)
            .collect();
        for (r, want) in rewards.iter().zip([0.233333, -0.15, -0.333333]) {
            assert!(close(*r, want, 1e-6));
        }
        let da = deadline_share(0.1, 16, 24).unwrap();
        assert!(close(p.observation(0.05, 3.0, da).unwrap().0, -0.25, 1e-12));
        assert!(close(p.observation(0.03, 6.0, da).unwrap().0, -0.45, 1e-12));

        for (form, run) in [("indexed", c3_indexed()), ("groups", c3_groups())] {
            assert_eq!(run.a[..10], [0, 1, 0, 1, 0, 0, 1, 0, 0, 1], "{form}");
            assert_eq!(run.b[..10], [0, 1, 2, 0, 0, 1, 0, 0, 1, 0], "{form}");
            assert_eq!(counts(&run.a, 2), [44, 16], "{form}");
            assert_eq!(counts(&run.b, 3), [42, 16, 2], "{form}");
            assert!(run.b[30..40].iter().all(|&b| b == 1), "{form}");
            let b2: Vec<usize> = (1..=60).filter(|&t| run.b[t - 1] == 2).collect();
            assert_eq!(b2, [3, 55], "{form}");
            assert_eq!((run.a[59], run.b[59]), (0, 0), "{form}");
            assert_eq!(run.misses, 0, "{form}");
            assert!(close(run.joules, 295.6, 1e-9), "{form}: {}", run.joules);
            assert!(close(run.joules / 60.0, 4.93, 0.005), "{form}");
        }
        // Clairvoyant: A0 every token, B0 except B1 during the window.
        let clair: f64 = (1..=60)
            .map(|t| C3_A[0].1 + if b0_saving(t) { C3_B[1].1 } else { C3_B[0].1 })
            .sum();
        assert!(close(clair, 245.0, 1e-9));
    }

    #[test]
    fn priors_order_exploration_break_ties_and_zero_means_never() {
        let mut g = GroupBandit::new(CsUcbParams::default(), 1.0).unwrap();
        let c = [("x", 0.2, true), ("y", 0.5, true), ("z", 0.3, true)];
        let mut order = vec![];
        for _ in 0..3 {
            let k = g.select(&c).unwrap();
            g.observe(&k, 0.5, 0.1).unwrap();
            order.push(k);
        }
        assert_eq!(order, ["y", "z", "x"]);
        // Identical statistics everywhere: the tie goes to the larger prior, then the smaller key.
        assert_eq!(g.select(&c), Some("y"));
        let eq = [("x", 0.5, true), ("y", 0.5, true), ("z", 0.3, true)];
        assert_eq!(g.select(&eq), Some("x"));
        // Weight 0, negative, NaN or infinite: never, even when alone and hard_ok.
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(g.select(&[("y", w, true)]), None, "{w}");
            assert_eq!(g.select(&[("y", w, true), ("z", 0.1, true)]), Some("z"));
        }
        // hard_ok false wins over any weight.
        assert_eq!(g.select(&[("y", 1.0, false), ("z", 0.1, true)]), Some("z"));
    }

    #[test]
    fn prior_bonus_nudges_tried_arms() {
        // Two arms, arm "b" slightly better measured; a large enough bonus for "a" flips it.
        let run = |bonus: f64| {
            let params = CsUcbParams {
                prior_bonus: bonus,
                ..CsUcbParams::default()
            };
            let mut g = GroupBandit::new(params, 1.0).unwrap();
            g.observe(&"a", 0.5, 0.2).unwrap();
            g.observe(&"b", 0.5, 0.1).unwrap();
            g.select(&[("a", 1.0, true), ("b", 0.5, true)])
        };
        assert_eq!(run(0.0), Some("b"));
        assert_eq!(run(0.05), Some("b"));
        assert_eq!(run(0.3), Some("a"));
    }

    #[test]
    fn refusal_bars_until_cleared_and_is_no_reward() {
        let mut g = GroupBandit::new(CsUcbParams::default(), 0.05).unwrap();
        let c = [(1u32, 1.0, true), (2, 1.0, true)];
        g.observe(&1, 0.01, 0.1).unwrap();
        let before = g.stats(&1).unwrap();
        g.refused(&1);
        assert!(g.is_refused(&1));
        assert_eq!(g.stats(&1).unwrap(), before);
        for _ in 0..5 {
            assert_eq!(g.select(&c), Some(2));
            g.observe(&2, 0.04, 0.5).unwrap();
        }
        assert_eq!(g.select(&[(1, 1.0, true)]), None);
        g.clear_refusal(&1);
        assert_eq!(g.select(&c), Some(1));
        g.refused(&7);
        assert!(g.is_refused(&7) && !g.stats(&7).unwrap().tried());
        g.clear_refusals();
        assert!(!g.is_refused(&7));
        assert!(g.forget(&7) && !g.forget(&7));
    }

    #[test]
    fn failure_is_a_deadline_miss_at_worst_energy() {
        let params = CsUcbParams {
            lambda: 0.5,
            ..CsUcbParams::with_e_ref(6.0)
        };
        let mut g = GroupBandit::new(params, 0.05).unwrap();
        g.failed(&"p");
        let s = g.stats(&"p").unwrap();
        assert_eq!(s.n, 1.0);
        assert!(close(s.mean_time, FAILURE_TIME_FACTOR, 1e-12));
        assert!(close(s.mean_reward, -1.5, 1e-12));
        // A peer that keeps failing is dropped by the deadline test for a good one.
        g.observe(&"q", 0.03, 3.0).unwrap();
        g.failed(&"p");
        for _ in 0..20 {
            let k = g.select(&[("p", 1.0, true), ("q", 1.0, true)]).unwrap();
            assert_eq!(k, "q");
            g.observe(&k, 0.03, 3.0).unwrap();
        }
    }

    #[test]
    fn warm_start_counts_one_pull_and_skips_a_slow_peer() {
        // C3 group B with B2 warm-started from its announced 40 ms: it is not tried at token 3.
        let mut g = GroupBandit::for_group(CsUcbParams::with_e_ref(6.0), 0.1, 8, 24).unwrap();
        assert!(g.warm_start(&2usize, 0.040, 0.8).unwrap());
        assert!(!g.warm_start(&2, 0.020, 0.8).unwrap());
        assert_eq!(g.stats(&2).unwrap().n, 1.0);
        assert!(close(g.stats(&2).unwrap().mean_time, 1.2, 1e-12));
        let c = [(0usize, 1.0, true), (1, 1.0, true), (2, 1.0, true)];
        let mut chosen = vec![];
        for _ in 0..10 {
            let k = g.select(&c).unwrap();
            g.observe(&k, C3_B[k].0, C3_B[k].1).unwrap();
            chosen.push(k);
        }
        assert!(!chosen.contains(&2), "{chosen:?}");
        assert!(g.warm_start(&9, f64::NAN, 1.0).is_err());
        assert!(g.stats(&9).is_none());
    }

    #[test]
    fn discount_forgets_and_follows_a_change() {
        // Arm 0 good then slow (a power mode change) after 100 decisions; arm 1 steady, worse
        // before the change and better after it. Count the pulls of arm 0 after the change.
        let stale_pulls = |discount: f64| {
            let params = CsUcbParams {
                discount,
                ..CsUcbParams::with_e_ref(10.0)
            };
            let mut b = CsUcb::new(2, params).unwrap();
            let mut stale = 0;
            for t in 0..400 {
                let a = b.select_any().unwrap();
                let (d, e) = match (a, t < 100) {
                    (0, true) => (0.5, 2.0),
                    (0, false) => (1.5, 2.0),
                    _ => (0.8, 5.0),
                };
                b.update(a, d, e, 1.0).unwrap();
                stale += (t >= 100 && a == 0) as usize;
            }
            (stale, b)
        };
        let (plain, _) = stale_pulls(1.0);
        let (disc, b) = stale_pulls(0.9);
        assert!(disc * 2 < plain, "discounted {disc} vs plain {plain}");
        // Discounted counts stay bounded by 1 / (1 - 0.9) = 10; t too.
        assert!(b.t() <= 10.0 + 1e-9);
        assert!((0..2).all(|a| b.stats(a).unwrap().n <= 10.0 + 1e-9));
    }

    #[test]
    fn bad_inputs_are_typed_errors_and_leave_state_alone() {
        assert_eq!(
            CsUcb::new(0, CsUcbParams::default()),
            Err(CsUcbError::NoArms)
        );
        for p in [
            CsUcbParams {
                delta: f64::NAN,
                ..Default::default()
            },
            CsUcbParams {
                lambda: -1.0,
                ..Default::default()
            },
            CsUcbParams {
                e_ref: 0.0,
                ..Default::default()
            },
            CsUcbParams {
                discount: 0.0,
                ..Default::default()
            },
            CsUcbParams {
                discount: 1.5,
                ..Default::default()
            },
            CsUcbParams {
                delta_d: f64::INFINITY,
                ..Default::default()
            },
        ] {
            assert!(matches!(CsUcb::new(2, p), Err(CsUcbError::Param { .. })));
            assert!(GroupBandit::<u8>::new(p, 1.0).is_err());
        }
        let mut b = CsUcb::new(2, CsUcbParams::default()).unwrap();
        let snapshot = b.clone();
        assert!(matches!(
            b.select(&[true]),
            Err(CsUcbError::HardOkLength { got: 1, arms: 2 })
        ));
        for (d, e, dl) in [
            (f64::NAN, 1.0, 1.0),
            (-0.1, 1.0, 1.0),
            (f64::INFINITY, 1.0, 1.0),
            (0.1, f64::NAN, 1.0),
            (0.1, -1.0, 1.0),
            (0.1, 1.0, 0.0),
            (0.1, 1.0, -1.0),
            (0.1, 1.0, f64::NAN),
        ] {
            assert!(b.update(0, d, e, dl).is_err(), "{d} {e} {dl}");
        }
        assert_eq!(
            b.update(5, 0.1, 1.0, 1.0),
            Err(CsUcbError::ArmOutOfRange { arm: 5, arms: 2 })
        );
        assert_eq!(b, snapshot);
        assert_eq!(b.select(&[false, false]).unwrap(), None);
        assert_eq!(b.t(), 1.0);

        assert!(matches!(
            deadline_share(0.0, 1, 2),
            Err(CsUcbError::Deadline { .. })
        ));
        assert!(matches!(
            deadline_share(0.1, 0, 2),
            Err(CsUcbError::Blocks { .. })
        ));
        assert!(matches!(
            deadline_share(0.1, 3, 2),
            Err(CsUcbError::Blocks { .. })
        ));
        assert!(deadline_share(0.1, 1, 0).is_err());
        assert!(deadline_share(1e-323, 1, 24).is_err());

        let mut g = GroupBandit::<u8>::new(CsUcbParams::default(), 0.1).unwrap();
        assert_eq!(g.select(&[]), None);
        assert_eq!(g.t(), 0.0, "an empty candidate list is no decision");
        assert!(g.observe(&1, f64::NAN, 1.0).is_err());
        assert!(g.is_empty());
        assert!(g.set_deadline_share(0.0).is_err());
        assert!(GroupBandit::<u8>::new(CsUcbParams::default(), 0.0).is_err());
        let e: EnergyError = CsUcbError::NoArms.into();
        assert!(e.to_string().contains("at least one arm"));
    }

    #[test]
    fn absurd_but_valid_observations_stay_finite() {
        let params = CsUcbParams {
            e_ref: 1e-300,
            delta: PARAM_MAX,
            lambda: PARAM_MAX,
            ..Default::default()
        };
        let mut g = GroupBandit::new(params, 1e-300).unwrap();
        for i in 0..50u8 {
            g.observe(&(i % 3), f64::MAX, f64::MAX).unwrap();
            g.observe(&(i % 3), 0.0, 0.0).unwrap();
            let k = g.select(&[(0, 1.0, true), (1, 1.0, true), (2, 1.0, true)]);
            assert!(k.is_some());
        }
        for k in 0..3 {
            let s = g.stats(&k).unwrap();
            assert!(
                s.mean_reward.is_finite() && s.mean_time.is_finite(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn candidates_follow_the_energy_policy() {
        use crate::policy::{LongTerm, PeerEnergyState};
        let st = |lambda_max, power_saving| PeerEnergyState {
            battery: 30,
            capacity: 100,
            power_saving,
            available: true,
            lambda_max,
            mode: 0,
            critical: false,
            saving_risk: 0.0,
        };
        let states = [st(0.1, false), st(0.3, false), st(0.5, true)];
        let c = candidates_from_policy(&["a", "b", "c"], &states, &LongTerm).unwrap();
        assert_eq!(c.len(), 3);
        assert!(close(c[0].1, 0.25, 1e-12) && close(c[1].1, 0.75, 1e-12));
        assert_eq!((c[2].1, c[2].2), (0.0, false));
        let mut g = GroupBandit::new(CsUcbParams::default(), 0.1).unwrap();
        assert_eq!(g.select(&c), Some("b"), "highest prior explored first");
        assert!(candidates_from_policy(&["a"], &states, &LongTerm).is_err());
        assert!(close(scarcity_factor(&states[0]), 1.7, 1e-12));
        let mains = PeerEnergyState {
            capacity: 0,
            ..states[0]
        };
        assert_eq!(scarcity_factor(&mains), 1.0);
    }

    #[test]
    fn simulation_keeps_the_slow_replica_out_after_warmup() {
        let cs = simulate(&SimConfig::two_groups_one_slow(SimRouting::CsUcb), 7).unwrap();
        let base = simulate(&SimConfig::two_groups_one_slow(SimRouting::Prior), 7).unwrap();
        assert!(cs.slow_share_after_warmup < 0.10, "{cs:?}");
        // The baseline (equal priors) sends about a third (half in B0's window) to the slow one.
        assert!(base.slow_share_after_warmup > 0.25, "{base:?}");
        assert!(
            cs.deadline_misses < base.deadline_misses / 4,
            "{cs:?} {base:?}"
        );
        assert!(cs.p95_token_s < base.p95_token_s);
        assert!(cs.p95_token_s <= 0.1, "{cs:?}");
        assert_eq!((cs.tokens, cs.unserved), (1000, 0));
        assert_eq!(cs.counts.iter().sum::<usize>(), 2000);
        assert!(cs.joules_per_token > 0.0 && cs.joules_per_token.is_finite());
        // Deterministic in the seed.
        assert_eq!(
            simulate(&SimConfig::two_groups_one_slow(SimRouting::CsUcb), 7).unwrap(),
            cs
        );
    }

    #[test]
    fn simulation_rejects_bad_configs() {
        let good = SimConfig::two_groups_one_slow(SimRouting::CsUcb);
        let mut bad = vec![];
        let mut c = good.clone();
        c.tokens = 0;
        bad.push(c);
        let mut c = good.clone();
        c.warmup = c.tokens;
        bad.push(c);
        let mut c = good.clone();
        c.slow = 99;
        bad.push(c);
        let mut c = good.clone();
        c.group_blocks.push(4); // a group without peers
        bad.push(c);
        let mut c = good.clone();
        c.peers[0].hop_s = f64::NAN;
        bad.push(c);
        let mut c = good.clone();
        c.jitter = 1.0;
        bad.push(c);
        let mut c = good.clone();
        c.deadline_s = 0.0;
        bad.push(c);
        let mut c = good.clone();
        c.group_blocks.clear();
        bad.push(c);
        for c in bad {
            assert!(simulate(&c, 1).is_err(), "{c:?}");
        }
        // Every peer of a group in power saving at once: tokens unserved, counted as misses.
        let mut c = good;
        c.peers[0].saving = Some((0, 10));
        c.peers[1].saving = Some((5, 10));
        let r = simulate(&c, 1).unwrap();
        assert_eq!(r.unserved, 5);
        assert!(r.deadline_misses >= 5);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_sequence_of_calls_is_total(
            ops in prop::collection::vec(
                (0u8..5, 0u8..4, any::<f64>(), any::<f64>(), any::<bool>()),
                0..80,
            ),
            discount in 0.5f64..=1.0,
        ) {
            let params = CsUcbParams { discount, ..CsUcbParams::default() };
            let mut g = GroupBandit::new(params, 0.05).unwrap();
            for (op, key, x, y, ok) in ops {
                match op {
                    0 => { let _ = g.observe(&key, x, y); }
                    1 => g.refused(&key),
                    2 => g.failed(&key),
                    3 => g.clear_refusal(&key),
                    _ => {
                        let c: Vec<(u8, f64, bool)> =
                            (0..4).map(|k| (k, if k == key { x } else { y }, ok)).collect();
                        let _ = g.select(&c);
                    }
                }
            }
            for k in 0..4 {
                if let Some(s) = g.stats(&k) {
                    let finite = s.mean_reward.is_finite() && s.mean_time.is_finite();
                    prop_assert!(finite && s.n.is_finite());
                }
            }
        }
    }
}
