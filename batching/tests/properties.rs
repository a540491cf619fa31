//! Property tests: DFTSP against brute force (optimality, effort), the node scheduler's plans
//! against an independently written feasibility check, and no panics on hostile input.

use proptest::prelude::*;
use sunswarm_batching::paper::{CommModel, Decoder, EdgeNode, Epoch, Quantization, Request};
use sunswarm_batching::{
    Candidate, CostModel, LatencyTarget, LinearCost, PassScheduler, Policy, SchedulerConfig,
    SearchConfig, Step, brute_force, dftsp,
};

const GIB: u64 = 1 << 30;

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![64u64, 128, 256, 512, 1024, 2048]),
        prop::sample::select(vec![16u64, 32, 64, 128, 256, 512]),
        0.05f64..4.0,
        0.0f64..0.3,
        prop::sample::select(vec![5.5, 5.6, 6.0, f64::INFINITY]),
    )
        .prop_map(|(s, n, tau, comm, rho)| {
            Request::new(s, n, tau)
                .with_comm(comm)
                .with_max_perplexity(rho)
        })
}

fn epoch(max_k: usize) -> impl Strategy<Value = Epoch> {
    (
        prop::collection::vec(request(), 0..=max_k),
        0usize..3,
        0u64..(8 * GIB),
    )
        .prop_map(|(reqs, q, room)| {
            let quant = [
                Quantization::fp16_example(),
                Quantization::w8a8_example(),
                Quantization::w4a16_example(),
            ][q]
                .clone();
            let decoder = Decoder::new(32, 4096);
            let memory_bytes = decoder.weight_bytes(&quant) as u64 + room;
            let node = EdgeNode {
                decoder,
                memory_bytes,
                comm: CommModel::Fixed,
            };
            Epoch::new(node, quant, reqs).unwrap()
        })
}

/// A generic monotone oracle: two knapsack dimensions and a pass time that grows with the first,
/// checked against the earliest deadline in the batch.
#[derive(Debug, Clone)]
struct Knapsack2 {
    items: Vec<(u64, u64, u64, f64)>, // value, weight a, weight b, deadline
    cap_a: u64,
    cap_b: u64,
    base_s: f64,
    per_a_s: f64,
}

impl Knapsack2 {
    fn candidates(&self) -> Vec<Candidate> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, &(v, a, _, d))| Candidate {
                value: v,
                deadline: d,
                arrival: i as u64,
                size: a,
            })
            .collect()
    }

    fn feasible(&self, batch: &[usize]) -> bool {
        let a: u64 = batch.iter().map(|&i| self.items[i].1).sum();
        let b: u64 = batch.iter().map(|&i| self.items[i].2).sum();
        let t = self.base_s + self.per_a_s * a as f64;
        a <= self.cap_a && b <= self.cap_b && batch.iter().all(|&i| t <= self.items[i].3)
    }

    fn value(&self, batch: &[usize]) -> u64 {
        batch.iter().map(|&i| self.items[i].0).sum()
    }
}

fn knapsack2(max_k: usize) -> impl Strategy<Value = Knapsack2> {
    (
        prop::collection::vec((0u64..50, 0u64..40, 0u64..40, 0.0f64..3.0), 0..=max_k),
        0u64..150,
        0u64..150,
        0.0f64..0.5,
        0.0f64..0.05,
    )
        .prop_map(|(items, cap_a, cap_b, base_s, per_a_s)| Knapsack2 {
            items,
            cap_a,
            cap_b,
            base_s,
            per_a_s,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// DFTSP's value is brute force's on the paper model, its batch is feasible and worth what it
    /// says, and it never needs more oracle calls.
    #[test]
    fn dftsp_matches_brute_force_on_paper_epochs(epoch in epoch(12)) {
        let sel = epoch.dftsp(&SearchConfig::default()).unwrap();
        let bf = epoch.brute_force().unwrap();
        prop_assert_eq!(sel.value, bf.value);
        prop_assert!(epoch.feasible(&sel.chosen));
        let worth: u64 = sel.chosen.iter().map(|&i| epoch.requests()[i].generate_tokens).sum();
        prop_assert_eq!(worth, sel.value);
        prop_assert!(sel.stats.oracle_calls <= bf.stats.oracle_calls);
        prop_assert!(!sel.stats.capped);
        // The prefilter's rejects really are infeasible alone.
        for &r in &sel.rejected {
            prop_assert!(!epoch.feasible(&[r]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The same on a generic two-dimensional knapsack with a deadline coupling.
    #[test]
    fn dftsp_matches_brute_force_on_knapsacks(k in knapsack2(12)) {
        let cands = k.candidates();
        let sel = dftsp(&cands, &SearchConfig::default(), |b| k.feasible(b)).unwrap();
        let bf = brute_force(&cands, |b| k.feasible(b)).unwrap();
        prop_assert_eq!(sel.value, bf.value);
        prop_assert!(k.feasible(&sel.chosen));
        prop_assert_eq!(k.value(&sel.chosen), sel.value);
        prop_assert!(sel.stats.oracle_calls <= bf.stats.oracle_calls);
    }

    /// Capped, DFTSP still returns a feasible batch, no better than the optimum, within the cap.
    #[test]
    fn capped_dftsp_stays_feasible(k in knapsack2(12), cap in 0u64..40) {
        let cands = k.candidates();
        let sel = dftsp(&cands, &SearchConfig { node_cap: cap }, |b| k.feasible(b)).unwrap();
        let bf = brute_force(&cands, |b| k.feasible(b)).unwrap();
        prop_assert!(sel.stats.nodes <= cap);
        prop_assert!(k.feasible(&sel.chosen));
        prop_assert!(sel.value <= bf.value);
        prop_assert_eq!(k.value(&sel.chosen), sel.value);
        if !sel.stats.capped {
            prop_assert_eq!(sel.value, bf.value);
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u64..6,
        0u64..1000,
        prop_oneof![Just(1u32), 1u32..300],
        0u32..4000,
        prop::option::of(0.0f64..0.3),
        0.0f64..0.05,
        prop::option::of(prop::sample::select(vec![4u8, 8, 16])),
        0u64..1000,
    )
        .prop_map(|(session, seq, t, ctx, deadline, comm, bits, kv)| Step {
            session,
            seq,
            new_tokens: t,
            context: ctx,
            deadline_s: deadline,
            comm_s: comm,
            min_weight_bits: bits,
            kv_bytes: kv,
        })
}

/// The scheduler's constraints, written again from the module docs.
fn fits(cost: &LinearCost, budget: u32, steps: &[&Step], free_kv: u64) -> bool {
    let kv: u64 = steps.iter().map(|s| s.kv_bytes).sum();
    let tokens: u64 = steps.iter().map(|s| u64::from(s.new_tokens)).sum();
    let t = cost.pass_seconds(steps);
    kv <= free_kv
        && (steps.len() <= 1 || tokens <= u64::from(budget))
        && steps
            .iter()
            .all(|s| s.deadline_s.is_none_or(|d| s.comm_s + t <= d + 1e-12))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every plan runs a feasible set of eligible steps; under DFTSP it is as many tokens as brute
    /// force finds among the eligible, non-missed steps; under FCFS the oldest eligible step that
    /// fits memory always runs.
    #[test]
    fn plans_are_feasible_and_optimal(
        pending in prop::collection::vec(step(), 0..10),
        c in (0.0f64..0.02, 0.0f64..0.001, 0.0f64..1e-6),
        budget in 1u32..600,
        free_kv in 0u64..3000,
        weight_bits in prop::sample::select(vec![4u8, 8, 16]),
    ) {
        let cost = LinearCost::new(c.0, c.1, c.2).unwrap();
        let config = SchedulerConfig { token_budget: budget, weight_bits, ..SchedulerConfig::default() };
        let sched = PassScheduler::new(cost, config).unwrap();
        let plan = sched.plan(&pending, free_kv).unwrap();

        // Eligible: supported, and the oldest (by seq, then index) of its session.
        let mut order: Vec<usize> = (0..pending.len()).collect();
        order.sort_by_key(|&i| (pending[i].seq, i));
        let mut seen = std::collections::HashSet::new();
        let mut eligible = Vec::new();
        for &i in &order {
            let first = seen.insert(pending[i].session);
            let ok = pending[i].min_weight_bits.is_none_or(|b| b <= weight_bits);
            if first && ok {
                eligible.push(i);
            }
        }
        for &i in &plan.unsupported {
            prop_assert!(pending[i].min_weight_bits.is_some_and(|b| b > weight_bits));
        }
        for &i in &plan.run {
            prop_assert!(eligible.contains(&i));
            prop_assert!(!plan.missed.contains(&i));
        }
        let run: Vec<&Step> = plan.run.iter().map(|&i| &pending[i]).collect();
        prop_assert_eq!(plan.tokens, run.iter().map(|s| u64::from(s.new_tokens)).sum::<u64>());

        let has_deadline = eligible.iter().any(|&i| pending[i].deadline_s.is_some());
        if has_deadline {
            prop_assert_eq!(plan.policy, Policy::Dftsp);
            prop_assert!(fits(&cost, budget, &run, free_kv));
            for &i in &plan.missed {
                prop_assert!(!fits(&cost, u32::MAX, &[&pending[i]], u64::MAX));
            }
            let pool: Vec<usize> = eligible.iter().copied().filter(|i| !plan.missed.contains(i)).collect();
            let cands: Vec<Candidate> = pool.iter().map(|&i| Candidate {
                value: u64::from(pending[i].new_tokens),
                deadline: 0.0,
                arrival: 0,
                size: 0,
            }).collect();
            let bf = brute_force(&cands, |b| {
                let steps: Vec<&Step> = b.iter().map(|&c| &pending[pool[c]]).collect();
                fits(&cost, budget, &steps, free_kv)
            }).unwrap();
            prop_assert_eq!(plan.tokens, bf.value);
        } else {
            prop_assert_eq!(plan.policy, Policy::Fcfs);
            prop_assert!(plan.missed.is_empty());
            prop_assert!(run.iter().map(|s| s.kv_bytes).sum::<u64>() <= free_kv);
            prop_assert!(run.len() <= 1 || plan.tokens <= u64::from(budget));
            if let Some(&oldest) = eligible.iter().find(|&&i| pending[i].kv_bytes <= free_kv) {
                prop_assert_eq!(plan.run.first(), Some(&oldest));
            }
        }
    }

    /// Hostile numbers are errors or answers, never panics.
    #[test]
    fn no_panics_on_hostile_input(
        raw in prop::collection::vec(
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(),
             prop::option::of(any::<f64>()), any::<f64>(), prop::option::of(any::<u8>()), any::<u64>()),
            0..8),
        free_kv in any::<u64>(),
        budget in any::<u32>(),
        cap in any::<u64>(),
        coeffs in (any::<f64>(), any::<f64>(), any::<f64>()),
        target in any::<f64>(),
        seconds in prop::collection::vec(any::<f64>(), 0..8),
    ) {
        let steps: Vec<Step> = raw.into_iter().map(|(session, seq, t, ctx, d, comm, bits, kv)| Step {
            session, seq, new_tokens: t, context: ctx, deadline_s: d, comm_s: comm,
            min_weight_bits: bits, kv_bytes: kv,
        }).collect();
        let cost = LinearCost::new(coeffs.0, coeffs.1, coeffs.2)
            .unwrap_or_else(|_| LinearCost::new(0.01, 1e-4, 1e-8).unwrap());
        let config = SchedulerConfig { token_budget: budget, node_cap: cap.min(5_000), weight_bits: 8 };
        if let Ok(sched) = PassScheduler::new(cost, config) {
            let _ = sched.plan(&steps, free_kv);
            if let Some((opening, serving)) = steps.split_last() {
                let _ = sched.admit(serving, opening, LatencyTarget::TokensPerSecond(target));
                let _ = sched.admit(serving, opening, LatencyTarget::PerTokenSeconds(target));
            }
        }
        let samples: Vec<(&[Step], f64)> = seconds
            .iter()
            .enumerate()
            .map(|(i, &s)| (&steps[..i.min(steps.len())], s))
            .collect();
        let _ = LinearCost::fit(samples);
    }
}
