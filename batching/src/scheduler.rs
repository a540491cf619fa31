//! The node's pass scheduler (seed §6): which pending steps run together in the next forward pass,
//! and whether a session that opens with a latency target can be served.
//!
//! Two policies, picked per pass:
//!
//! - **FCFS under a token budget** (no pending step carries a deadline). Steps are scanned oldest
//!   first; the oldest is always taken, even if it alone exceeds the budget, and each later one is
//!   taken if it still fits the budget and free KV memory, *skipping* the ones that do not. The scan
//!   skips rather than stops so that decode tokens keep flowing past a large prefill chunk that
//!   waits for the next pass; it cannot starve anything, because each pass serves the oldest step,
//!   so a skipped step runs after at most as many passes as there are older steps.
//! - **DFTSP** (some pending step carries a deadline): the most tokens in a pass such that free KV
//!   memory holds their new cache, every step with a deadline still meets it (`comm_s + pass time
//!   <= deadline_s`), and more than one step stay within the token budget. Steps that miss their
//!   deadline even alone are returned as `missed`, so the node answers them with a deadline
//!   refusal and the client can reroute.
//!
//! In both, only a session's oldest pending step is eligible (a later one needs the KV cache the
//! earlier one writes), and a step whose precision floor is above the node's weights is returned as
//! `unsupported`. A step that is none of run, missed or unsupported waits for a later pass.
//!
//! Known property: under DFTSP a step without a deadline runs only when it fits beside the ones
//! with deadlines; the objective (tokens per pass) also favours large prefill chunks over single
//! decode tokens when both fit. A node that wants fairness beyond that gives every step a deadline.

use serde::{Deserialize, Serialize};

use crate::DEADLINE_EPSILON;
use crate::cost::CostModel;
use crate::error::{BatchError, Result};
use crate::search::{Candidate, SearchConfig, SearchStats, dftsp};
use crate::step::Step;

/// Default new tokens per pass, in the 128-256 range for prefill chunks.
pub const DEFAULT_TOKEN_BUDGET: u32 = 256;

/// Scheduler knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// New tokens per pass. A single step may exceed it (it then runs alone), so chunk prefills
    /// at or below this size.
    pub token_budget: u32,
    /// DFTSP's node cap (seed §6), past which the best batch found so far runs.
    pub node_cap: u64,
    /// Bits per weight of the format this node runs (4 for q4_0, 8 for q8_0, 16 for f16...),
    /// matched against steps' `min_weight_bits`.
    pub weight_bits: u8,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            token_budget: DEFAULT_TOKEN_BUDGET,
            node_cap: crate::search::DEFAULT_NODE_CAP,
            weight_bits: 16,
        }
    }
}

/// Which policy chose a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// No pending step had a deadline.
    Fcfs,
    /// Some pending step had a deadline.
    Dftsp,
}

/// The next pass. All lists are indices into the `pending` slice given to
/// [`PassScheduler::plan`], oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassPlan {
    /// The policy used.
    pub policy: Policy,
    /// Steps to run now.
    pub run: Vec<usize>,
    /// Steps whose deadline cannot be met even alone: answer with a deadline refusal.
    pub missed: Vec<usize>,
    /// Steps whose precision floor is above this node's weights: answer with a refusal.
    pub unsupported: Vec<usize>,
    /// New tokens in the pass.
    pub tokens: u64,
    /// New KV bytes the pass writes.
    pub kv_bytes: u64,
    /// The cost model's time for the pass, seconds.
    pub predicted_s: f64,
    /// DFTSP's effort, when it ran (`capped` says the node cap cut it short).
    pub search: Option<SearchStats>,
}

/// A session's latency target at open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LatencyTarget {
    /// At least this many tokens per second, i.e. `1 / rate` seconds per token on this node.
    TokensPerSecond(f64),
    /// At most this many seconds per token on this node (the client's per-token deadline less the
    /// rest of the route).
    PerTokenSeconds(f64),
}

impl LatencyTarget {
    /// The target as seconds per token; the rate or time must be finite and above zero.
    pub fn per_token_seconds(self) -> Result<f64> {
        match self {
            Self::TokensPerSecond(rate) => {
                crate::error::positive("target tokens per second", rate)?;
                Ok(1.0 / rate)
            }
            Self::PerTokenSeconds(s) => {
                crate::error::positive("target seconds per token", s)?;
                Ok(s)
            }
        }
    }
}

/// The answer to a session that opens with a latency target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Admission {
    /// It can be served: each token takes `latency_s` (its hop's comm plus `pass_s`), `headroom_s`
    /// under the target.
    Accept {
        pass_s: f64,
        latency_s: f64,
        headroom_s: f64,
    },
    /// It cannot, for this reason.
    Refuse(Refusal),
}

/// Why an open with a latency target is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The session wants finer weights than this node runs.
    Precision { required_bits: u8, node_bits: u8 },
    /// Even on an idle node a token takes longer than the target: this node can never serve it.
    TooSlowAlone { latency_s: f64, target_s: f64 },
    /// Its decode step and those already served exceed the token budget, so they would not all run
    /// in each pass.
    TokenBudget { tokens: u64, budget: u32 },
    /// Beside the steps already served, a token takes longer than the target.
    TooSlowUnderLoad { latency_s: f64, target_s: f64 },
    /// The longer pass would make an already served session (the oldest such) miss its deadline.
    BreaksSession {
        session: u64,
        latency_s: f64,
        deadline_s: f64,
    },
}

/// Plans passes over a [`CostModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct PassScheduler<C> {
    cost: C,
    config: SchedulerConfig,
}

impl<C: CostModel> PassScheduler<C> {
    /// A scheduler; the token budget and node cap must be at least 1.
    pub fn new(cost: C, config: SchedulerConfig) -> Result<Self> {
        if config.token_budget == 0 {
            return Err(BatchError::Zero {
                what: "token budget",
            });
        }
        if config.node_cap == 0 {
            return Err(BatchError::Zero {
                what: "DFTSP node cap",
            });
        }
        Ok(Self { cost, config })
    }

    /// The cost model.
    pub fn cost_model(&self) -> &C {
        &self.cost
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The next pass over `pending`, given the KV bytes free on this node.
    pub fn plan(&self, pending: &[Step], free_kv_bytes: u64) -> Result<PassPlan> {
        for (i, step) in pending.iter().enumerate() {
            step.validate(i)?;
        }
        let mut order: Vec<usize> = (0..pending.len()).collect();
        order.sort_by_key(|&i| (pending[i].seq, i));

        let mut unsupported = Vec::new();
        let mut eligible = Vec::new();
        let mut sessions_seen = std::collections::HashSet::new();
        for &i in &order {
            let step = &pending[i];
            let first_of_session = sessions_seen.insert(step.session);
            if step
                .min_weight_bits
                .is_some_and(|b| b > self.config.weight_bits)
            {
                unsupported.push(i);
            } else if first_of_session {
                eligible.push(i);
            }
        }

        let mut plan = if eligible.iter().any(|&i| pending[i].deadline_s.is_some()) {
            self.dftsp_pass(pending, &eligible, free_kv_bytes)?
        } else {
            self.fcfs_pass(pending, &eligible, free_kv_bytes)
        };
        plan.unsupported = unsupported;
        let run: Vec<&Step> = plan.run.iter().map(|&i| &pending[i]).collect();
        plan.tokens = run.iter().map(|s| u64::from(s.new_tokens)).sum();
        plan.kv_bytes = run.iter().fold(0u64, |a, s| a.saturating_add(s.kv_bytes));
        plan.predicted_s = self.cost.pass_seconds(&run);
        Ok(plan)
    }

    fn fcfs_pass(&self, pending: &[Step], eligible: &[usize], free_kv: u64) -> PassPlan {
        let mut run = Vec::new();
        let mut tokens = 0u64;
        let mut kv = 0u64;
        for &i in eligible {
            let step = &pending[i];
            // Memory is a hard limit even for the oldest: a step that does not fit waits.
            let Some(new_kv) = kv.checked_add(step.kv_bytes).filter(|&b| b <= free_kv) else {
                continue;
            };
            let new_tokens = tokens + u64::from(step.new_tokens);
            if !run.is_empty() && new_tokens > u64::from(self.config.token_budget) {
                continue;
            }
            run.push(i);
            tokens = new_tokens;
            kv = new_kv;
        }
        PassPlan {
            policy: Policy::Fcfs,
            run,
            missed: Vec::new(),
            unsupported: Vec::new(),
            tokens: 0,
            kv_bytes: 0,
            predicted_s: 0.0,
            search: None,
        }
    }

    /// Memory, budget and deadlines of a set of steps: DFTSP's oracle. Monotone: each test only
    /// tightens as steps are added (the budget exempts a lone step, and a lone step is every
    /// batch's subset, not superset).
    fn fits(&self, steps: &[&Step], free_kv: u64) -> bool {
        let kv = steps
            .iter()
            .try_fold(0u64, |a, s| a.checked_add(s.kv_bytes));
        if kv.is_none_or(|kv| kv > free_kv) {
            return false;
        }
        let tokens: u64 = steps.iter().map(|s| u64::from(s.new_tokens)).sum();
        if steps.len() > 1 && tokens > u64::from(self.config.token_budget) {
            return false;
        }
        let pass = self.cost.pass_seconds(steps);
        steps.iter().all(|s| meets(s, pass))
    }

    fn dftsp_pass(&self, pending: &[Step], eligible: &[usize], free_kv: u64) -> Result<PassPlan> {
        let mut missed = Vec::new();
        let mut cand_steps = Vec::new();
        for &i in eligible {
            let step = &pending[i];
            let alone = self.cost.pass_seconds(&[step]);
            if !(alone.is_finite() && alone >= 0.0) {
                return Err(BatchError::CostNotFinite { value: alone });
            }
            if meets(step, alone) {
                cand_steps.push(i);
            } else {
                missed.push(i);
            }
        }
        let candidates: Vec<Candidate> = cand_steps
            .iter()
            .map(|&i| {
                let s = &pending[i];
                Candidate {
                    value: u64::from(s.new_tokens),
                    deadline: s.deadline_s.unwrap_or(f64::INFINITY),
                    arrival: s.seq,
                    size: u64::from(s.new_tokens),
                }
            })
            .collect();
        let config = SearchConfig {
            node_cap: self.config.node_cap,
        };
        let mut buf: Vec<&Step> = Vec::with_capacity(cand_steps.len());
        let selection = dftsp(&candidates, &config, |batch| {
            buf.clear();
            buf.extend(batch.iter().map(|&c| &pending[cand_steps[c]]));
            self.fits(&buf, free_kv)
        })?;
        // Candidates are in age order, so ascending candidate ids are oldest first.
        let run = selection.chosen.iter().map(|&c| cand_steps[c]).collect();
        Ok(PassPlan {
            policy: Policy::Dftsp,
            run,
            missed,
            unsupported: Vec::new(),
            tokens: 0,
            kv_bytes: 0,
            predicted_s: 0.0,
            search: Some(selection.stats),
        })
    }

    /// Whether a session opening with `target` can be served beside the steps this node already
    /// runs each pass (`serving`, typically one decode step per session, with their deadlines).
    ///
    /// `opening` is the new session's decode step as it will look at its longest (context = prompt
    /// plus the tokens it may generate), since a pass only gets slower as context grows; its own
    /// `deadline_s` is ignored in favour of `target`. KV memory is not judged here: a step that
    /// does not fit waits in [`PassScheduler::plan`].
    ///
    /// Errors: an invalid target, an invalid step (the opening one is named as index
    /// `serving.len()`), or a cost model that answers NaN, infinity or a negative time.
    pub fn admit(
        &self,
        serving: &[Step],
        opening: &Step,
        target: LatencyTarget,
    ) -> Result<Admission> {
        let target_s = target.per_token_seconds()?;
        for (i, step) in serving.iter().enumerate() {
            step.validate(i)?;
        }
        opening.validate(serving.len())?;
        if let Some(required_bits) = opening
            .min_weight_bits
            .filter(|&b| b > self.config.weight_bits)
        {
            return Ok(Admission::Refuse(Refusal::Precision {
                required_bits,
                node_bits: self.config.weight_bits,
            }));
        }
        let finite = |t: f64| {
            if t.is_finite() && t >= 0.0 {
                Ok(t)
            } else {
                Err(BatchError::CostNotFinite { value: t })
            }
        };
        let alone = opening.comm_s + finite(self.cost.pass_seconds(&[opening]))?;
        if alone > target_s + DEADLINE_EPSILON {
            return Ok(Admission::Refuse(Refusal::TooSlowAlone {
                latency_s: alone,
                target_s,
            }));
        }
        let mut all: Vec<&Step> = serving.iter().collect();
        all.push(opening);
        let tokens: u64 = all.iter().map(|s| u64::from(s.new_tokens)).sum();
        if all.len() > 1 && tokens > u64::from(self.config.token_budget) {
            return Ok(Admission::Refuse(Refusal::TokenBudget {
                tokens,
                budget: self.config.token_budget,
            }));
        }
        let pass_s = finite(self.cost.pass_seconds(&all))?;
        let latency_s = opening.comm_s + pass_s;
        if latency_s > target_s + DEADLINE_EPSILON {
            return Ok(Admission::Refuse(Refusal::TooSlowUnderLoad {
                latency_s,
                target_s,
            }));
        }
        let mut by_age: Vec<&Step> = serving.iter().collect();
        by_age.sort_by_key(|s| s.seq);
        if let Some(broken) = by_age.iter().find(|s| !meets(s, pass_s)) {
            return Ok(Admission::Refuse(Refusal::BreaksSession {
                session: broken.session,
                latency_s: broken.comm_s + pass_s,
                deadline_s: broken.deadline_s.unwrap_or(f64::INFINITY),
            }));
        }
        Ok(Admission::Accept {
            pass_s,
            latency_s,
            headroom_s: target_s - latency_s,
        })
    }
}

/// A step meets its deadline (if any) in a pass of `pass_s` seconds. NaN times never do.
fn meets(step: &Step, pass_s: f64) -> bool {
    step.deadline_s
        .is_none_or(|d| step.comm_s + pass_s <= d + DEADLINE_EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{FlopCost, LinearCost};
    use crate::search::brute_force;

    /// 10 ms per pass, 1 ms per new token, nothing per context: easy to count by hand.
    fn simple() -> PassScheduler<LinearCost> {
        PassScheduler::new(
            LinearCost::new(0.010, 0.001, 0.0).unwrap(),
            SchedulerConfig {
                token_budget: 256,
                ..SchedulerConfig::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn fcfs_takes_oldest_first_within_the_budget() {
        let pending = [
            Step::prefill_chunk(3, 30, 200, 0),
            Step::decode(1, 10, 50),
            Step::prefill_chunk(2, 20, 128, 0),
            Step::decode(4, 40, 9),
        ];
        let plan = simple().plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.policy, Policy::Fcfs);
        // seq 10 (1 token), 20 (128), 30 (200 would make 329 > 256: skipped), 40 (1).
        assert_eq!(plan.run, vec![1, 2, 3]);
        assert_eq!(plan.tokens, 130);
        assert!((plan.predicted_s - (0.010 + 0.130)).abs() < 1e-12);
        assert_eq!(plan.search, None);
        assert!(plan.missed.is_empty());
    }

    #[test]
    fn fcfs_always_runs_the_oldest_even_over_budget() {
        let pending = [Step::decode(2, 2, 0), Step::prefill_chunk(1, 1, 1000, 0)];
        let plan = simple().plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.run, vec![1]);
        assert_eq!(plan.tokens, 1000);
    }

    #[test]
    fn fcfs_respects_free_kv_memory() {
        let pending = [
            Step::decode(1, 1, 0).with_kv_bytes(600),
            Step::decode(2, 2, 0).with_kv_bytes(500),
            Step::decode(3, 3, 0).with_kv_bytes(400),
        ];
        let plan = simple().plan(&pending, 1000).unwrap();
        assert_eq!(plan.run, vec![0, 2]);
        assert_eq!(plan.kv_bytes, 1000);
        // Even the oldest waits when it alone does not fit.
        let plan = simple().plan(&pending, 550).unwrap();
        assert_eq!(plan.run, vec![1]);
    }

    #[test]
    fn only_a_sessions_oldest_step_is_eligible() {
        let pending = [
            Step::prefill_chunk(1, 2, 64, 64),
            Step::prefill_chunk(1, 1, 64, 0),
            Step::decode(2, 3, 5),
        ];
        let plan = simple().plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.run, vec![1, 2]);
    }

    #[test]
    fn precision_floor_above_the_node_is_unsupported() {
        let sched = PassScheduler::new(
            LinearCost::new(0.01, 0.001, 0.0).unwrap(),
            SchedulerConfig {
                weight_bits: 4,
                ..SchedulerConfig::default()
            },
        )
        .unwrap();
        let pending = [
            Step::decode(1, 1, 0).with_min_weight_bits(8),
            Step::decode(2, 2, 0).with_min_weight_bits(4),
            Step::decode(3, 3, 0),
        ];
        let plan = sched.plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.unsupported, vec![0]);
        assert_eq!(plan.run, vec![1, 2]);
    }

    #[test]
    fn deadlines_switch_to_dftsp_and_report_misses() {
        // Pass = 10 ms + 1 ms/token. Step 0 cannot make 5 ms even alone. Steps 2 and 3 (94
        // tokens, no deadlines) take 104 ms; adding step 1 would break its 50 ms, and step 1
        // with either prefill (31 or 65 tokens) is worth less.
        let pending = [
            Step::decode(1, 1, 0).with_deadline(0.005),
            Step::decode(2, 2, 0).with_deadline(0.050),
            Step::prefill_chunk(3, 3, 30, 0),
            Step::prefill_chunk(4, 4, 64, 0),
        ];
        let plan = simple().plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.policy, Policy::Dftsp);
        assert_eq!(plan.missed, vec![0]);
        assert_eq!(plan.run, vec![2, 3]);
        assert_eq!(plan.tokens, 94);
        let stats = plan.search.unwrap();
        assert!(!stats.capped);
        assert!(stats.oracle_calls >= 3);
    }

    #[test]
    fn dftsp_keeps_deadlines_and_memory() {
        let pending = [
            Step::decode(1, 1, 0).with_deadline(0.050).with_kv_bytes(10),
            Step::prefill_chunk(2, 2, 64, 0)
                .with_deadline(0.200)
                .with_kv_bytes(640),
            Step::prefill_chunk(3, 3, 32, 0).with_kv_bytes(320),
            Step::decode(4, 4, 0).with_deadline(0.100).with_comm(0.020),
        ];
        let sched = simple();
        let plan = sched.plan(&pending, 700).unwrap();
        // 64 + 32 would break memory (960 > 700); 64 + 1 + 1 = 66 tokens -> 76 ms: step 0 (50 ms)
        // breaks, step 3 (20 + 76 = 96 ms) holds. 64 + 1 (step 3) = 65 tokens -> 75 ms, +20 = 95 ms:
        // value 65. 32 + 1 + 1 = 34 -> 44 ms, all hold: value 34. Best: {1, 3}.
        assert_eq!(plan.run, vec![1, 3]);
        assert_eq!(plan.tokens, 65);
        assert!(plan.kv_bytes <= 700);
        for &i in &plan.run {
            let s = &pending[i];
            assert!(
                s.deadline_s
                    .is_none_or(|d| s.comm_s + plan.predicted_s <= d + 1e-12)
            );
        }
        // Brute force over the same oracle agrees.
        let refs: Vec<&Step> = pending.iter().collect();
        let cands: Vec<Candidate> = pending
            .iter()
            .map(|s| Candidate {
                value: u64::from(s.new_tokens),
                deadline: s.deadline_s.unwrap_or(f64::INFINITY),
                arrival: s.seq,
                size: 0,
            })
            .collect();
        let bf = brute_force(&cands, |b| {
            let steps: Vec<&Step> = b.iter().map(|&i| refs[i]).collect();
            sched.fits(&steps, 700)
        })
        .unwrap();
        assert_eq!(bf.value, 65);
    }

    #[test]
    fn invalid_steps_and_configs_are_errors() {
        let sched = simple();
        assert!(matches!(
            sched.plan(
                &[Step::decode(1, 1, 0), Step::prefill_chunk(2, 2, 0, 0)],
                10
            ),
            Err(BatchError::InvalidStep { index: 1, .. })
        ));
        let cost = LinearCost::new(0.0, 0.0, 0.0).unwrap();
        for config in [
            SchedulerConfig {
                token_budget: 0,
                ..SchedulerConfig::default()
            },
            SchedulerConfig {
                node_cap: 0,
                ..SchedulerConfig::default()
            },
        ] {
            assert!(matches!(
                PassScheduler::new(cost, config),
                Err(BatchError::Zero { .. })
            ));
        }
    }

    /// A cost model that answers NaN, as a broken measurement might.
    struct Broken;
    impl CostModel for Broken {
        fn pass_seconds(&self, _: &[&Step]) -> f64 {
            f64::NAN
        }
    }

    #[test]
    fn a_nan_cost_model_is_an_error_not_a_panic() {
        let sched = PassScheduler::new(Broken, SchedulerConfig::default()).unwrap();
        let pending = [Step::decode(1, 1, 0).with_deadline(1.0)];
        assert!(matches!(
            sched.plan(&pending, 10),
            Err(BatchError::CostNotFinite { .. })
        ));
        assert!(matches!(
            sched.admit(&[], &pending[0], LatencyTarget::TokensPerSecond(10.0)),
            Err(BatchError::CostNotFinite { .. })
        ));
        // Without deadlines FCFS never asks for a time it must compare.
        let plan = sched.plan(&[Step::decode(1, 1, 0)], 10).unwrap();
        assert_eq!(plan.run, vec![0]);
        assert!(plan.predicted_s.is_nan());
    }

    #[test]
    fn admission_reasons() {
        let sched = simple();
        let opening = Step::decode(9, 100, 500).with_comm(0.005);
        // Alone: 10 + 1 ms pass + 5 ms comm = 16 ms.
        let refused = sched
            .admit(&[], &opening, LatencyTarget::TokensPerSecond(100.0))
            .unwrap();
        assert!(
            matches!(
                refused,
                Admission::Refuse(Refusal::TooSlowAlone { latency_s, target_s })
                    if (latency_s - 0.016).abs() < 1e-12 && target_s == 0.01
            ),
            "{refused:?}"
        );
        match sched
            .admit(&[], &opening, LatencyTarget::PerTokenSeconds(0.020))
            .unwrap()
        {
            Admission::Accept {
                pass_s,
                latency_s,
                headroom_s,
            } => {
                assert!((pass_s - 0.011).abs() < 1e-12);
                assert!((latency_s - 0.016).abs() < 1e-12);
                assert!((headroom_s - 0.004).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        // Under load: 20 decodes already -> pass 10 + 21 ms = 31 ms + 5 ms comm.
        let serving: Vec<Step> = (0..20).map(|i| Step::decode(i, i, 100)).collect();
        let refused = sched
            .admit(&serving, &opening, LatencyTarget::PerTokenSeconds(0.020))
            .unwrap();
        assert!(matches!(
            refused,
            Admission::Refuse(Refusal::TooSlowUnderLoad { latency_s, .. })
                if (latency_s - 0.036).abs() < 1e-12
        ));
        // It fits its own target, but session 7's 25 ms deadline breaks (session 3's 40 ms holds).
        let mut tight = serving.clone();
        tight[7].deadline_s = Some(0.025);
        tight[3].deadline_s = Some(0.040);
        let refused = sched
            .admit(&tight, &opening, LatencyTarget::PerTokenSeconds(0.050))
            .unwrap();
        assert!(
            matches!(
                refused,
                Admission::Refuse(Refusal::BreaksSession { session: 7, latency_s, deadline_s: 0.025 })
                    if (latency_s - 0.031).abs() < 1e-12
            ),
            "{refused:?}"
        );
        // Without that session, it is admitted with 14 ms to spare.
        tight[7].deadline_s = None;
        let accepted = sched
            .admit(&tight, &opening, LatencyTarget::PerTokenSeconds(0.050))
            .unwrap();
        assert!(
            matches!(accepted, Admission::Accept { headroom_s, .. } if (headroom_s - 0.014).abs() < 1e-12),
            "{accepted:?}"
        );
        // Past the token budget.
        let big = [Step::prefill_chunk(1, 1, 256, 0)];
        assert_eq!(
            sched
                .admit(&big, &opening, LatencyTarget::PerTokenSeconds(10.0))
                .unwrap(),
            Admission::Refuse(Refusal::TokenBudget {
                tokens: 257,
                budget: 256
            })
        );
        // Precision floor.
        assert_eq!(
            sched
                .admit(
                    &[],
                    &opening.with_min_weight_bits(32),
                    LatencyTarget::PerTokenSeconds(10.0)
                )
                .unwrap(),
            Admission::Refuse(Refusal::Precision {
                required_bits: 32,
                node_bits: 16
            })
        );
        // Invalid targets.
        for bad in [
            LatencyTarget::TokensPerSecond(0.0),
            LatencyTarget::TokensPerSecond(f64::NAN),
            LatencyTarget::PerTokenSeconds(-1.0),
            LatencyTarget::PerTokenSeconds(f64::INFINITY),
        ] {
            assert!(matches!(
                sched.admit(&[], &opening, bad),
                Err(BatchError::NotPositive { .. })
            ));
        }
    }

    #[test]
    fn flop_cost_scheduler_runs_end_to_end() {
        // 16 blocks of a 4096-wide model at 1e13 FLOP/s: a decode over 1000 tokens costs
        // 16 * (24 * 4096^2 + 4 * 4096 * 1001) / 1e13 = 0.6705 ms.
        let cost = FlopCost::new(16, 4096, 1e13).unwrap();
        let sched = PassScheduler::new(cost, SchedulerConfig::default()).unwrap();
        let decode = Step::decode(1, 1, 1000);
        let one = sched.cost_model().pass_seconds(&[&decode]);
        assert!((one - 6.704_857_088e-4).abs() < 1e-15, "{one}");
        let pending: Vec<Step> = (0..8)
            .map(|i| Step::decode(i, i, 1000).with_deadline(4.0 * one))
            .collect();
        // Four decodes take 4x one; five would not meet 4x one.
        let plan = sched.plan(&pending, u64::MAX).unwrap();
        assert_eq!(plan.run, vec![0, 1, 2, 3]);
        assert!(plan.predicted_s <= 4.0 * one + 1e-12);
    }
}
