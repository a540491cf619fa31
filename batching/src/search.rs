//! The batch search of seed 002, independent of any cost model: DFTSP (depth-first tree search
//! with pruning), brute force over all subsets, and the greedy baselines.
//!
//! Every function takes the items as [`Candidate`]s (an item's id is its index in the slice) and a
//! feasibility oracle `FnMut(&[usize]) -> bool` that judges a batch of item ids. The oracle must be
//! *monotone*: if a batch is infeasible, every superset is infeasible. That is what makes DFTSP's
//! two prunings exact; with a non-monotone oracle DFTSP still returns a feasible batch, but maybe
//! not the best one.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{BatchError, Result, not_nan};

/// Node cap of seed §6: past this many search nodes the incumbent is returned.
pub const DEFAULT_NODE_CAP: u64 = 10_000;

/// Brute force enumerates `2^K - 1` subsets; 30 items is already a billion oracle calls.
pub const BRUTE_FORCE_MAX_ITEMS: usize = 30;

/// One schedulable item as the searches see it. Its id is its index in the slice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// What scheduling it earns (tokens advanced; a priority weight may be folded in).
    pub value: u64,
    /// Its deadline in seconds; `f64::INFINITY` when it has none. Only orders the tree levels and
    /// EDF: the deadline *constraint* lives in the oracle.
    pub deadline: f64,
    /// Arrival order, for FCFS (ties broken by id).
    pub arrival: u64,
    /// Job size, for shortest-job-first (the paper form uses prompt + output tokens).
    pub size: u64,
}

/// Knobs of the DFTSP search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Search nodes visited before the search stops and returns its incumbent (still feasible,
    /// maybe not optimal). Zero visits nothing and returns the empty batch, flagged capped.
    pub node_cap: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            node_cap: DEFAULT_NODE_CAP,
        }
    }
}

/// Effort of one search: the seed's complexity measure is `oracle_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SearchStats {
    /// Search-tree nodes visited (DFTSP), or subsets enumerated (brute force), or items scanned
    /// (greedy).
    pub nodes: u64,
    /// Calls to the feasibility oracle, the singleton prefilter included.
    pub oracle_calls: u64,
    /// The node cap stopped the search: the batch is feasible but not proven optimal.
    pub capped: bool,
}

/// A chosen batch and what it cost to find.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selection {
    /// Ids of the chosen items, ascending.
    pub chosen: Vec<usize>,
    /// Sum of the chosen items' values.
    pub value: u64,
    /// Ids the prefilter found infeasible even alone, ascending (DFTSP only; empty otherwise).
    pub rejected: Vec<usize>,
    /// Search effort.
    pub stats: SearchStats,
}

/// What DFTSP did at one search node (see [`dftsp_traced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceAction {
    /// Tried to add `item`; `feasible` is the oracle's answer (or `true` for an empty batch, which
    /// needs no call because singletons passed the prefilter).
    Include { item: usize, feasible: bool },
    /// Every level decided.
    Leaf,
    /// The value so far plus everything the remaining levels could add does not beat the
    /// incumbent.
    BoundPrune,
}

/// One visited search node: the seed's `(depth, batch, value, action)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Tree level (number of candidates decided).
    pub depth: usize,
    /// Item ids in the batch, in the order they were added.
    pub batch: Vec<usize>,
    /// Value of the batch.
    pub value: u64,
    /// What happened there.
    pub action: TraceAction,
}

/// The baselines of seed §4: one pass over the items in a fixed order, adding each one the oracle
/// accepts alongside those already taken (an item that does not fit is skipped, not a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Baseline {
    /// Arrival order.
    Fcfs,
    /// Earliest deadline first.
    Edf,
    /// Smallest `size` first.
    ShortestJobFirst,
    /// DFTSP's level order (largest value, then earliest deadline), without backtracking.
    ValueGreedy,
}

impl Baseline {
    /// All baselines, in the seed's order.
    pub const ALL: [Baseline; 4] = [
        Baseline::Fcfs,
        Baseline::Edf,
        Baseline::ShortestJobFirst,
        Baseline::ValueGreedy,
    ];
}

/// DFTSP, exactly as seed §3: prefilter singletons, order the levels by (-value, deadline, id),
/// include-first depth-first search, prune a node whose value plus the suffix sum of the remaining
/// levels does not strictly beat the incumbent, prune the include-subtree of an infeasible
/// include, stop at the node cap. Returns the first optimum met in that order.
pub fn dftsp<F>(items: &[Candidate], config: &SearchConfig, feasible: F) -> Result<Selection>
where
    F: FnMut(&[usize]) -> bool,
{
    search(items, config, feasible, None)
}

/// [`dftsp`], also returning one [`TraceEvent`] per visited node (so `trace.len() == nodes`).
pub fn dftsp_traced<F>(
    items: &[Candidate],
    config: &SearchConfig,
    feasible: F,
) -> Result<(Selection, Vec<TraceEvent>)>
where
    F: FnMut(&[usize]) -> bool,
{
    let mut trace = Vec::new();
    let selection = search(items, config, feasible, Some(&mut trace))?;
    Ok((selection, trace))
}

/// Deadlines must order totally and the values must sum without wrapping, or the level order and
/// the suffix bounds would be meaningless.
fn validate(items: &[Candidate]) -> Result<()> {
    let mut total: u64 = 0;
    for item in items {
        not_nan("candidate deadline", item.deadline)?;
        total = total
            .checked_add(item.value)
            .ok_or(BatchError::ValueOverflow)?;
    }
    Ok(())
}

/// The seed's level order; ties that survive value and deadline go to the lower id so the result
/// is deterministic.
fn level_order(items: &[Candidate], a: usize, b: usize) -> Ordering {
    items[b]
        .value
        .cmp(&items[a].value)
        .then(items[a].deadline.total_cmp(&items[b].deadline))
        .then(a.cmp(&b))
}

/// Pending work of the explicit DFS stack. The search is iterative so that a node with thousands of
/// pending steps cannot overflow the thread's stack.
enum Frame {
    /// Visit the node at `depth` with the current batch, worth `value`.
    Visit { depth: usize, value: u64 },
    /// The include-subtree of level `depth` is done: drop that item and take the exclude branch.
    Exclude { depth: usize, value: u64 },
}

fn search<F>(
    items: &[Candidate],
    config: &SearchConfig,
    mut feasible: F,
    mut trace: Option<&mut Vec<TraceEvent>>,
) -> Result<Selection>
where
    F: FnMut(&[usize]) -> bool,
{
    validate(items)?;
    let mut stats = SearchStats::default();

    // Prefilter: an item infeasible alone is infeasible in every batch (monotonicity), so it is
    // never a level of the tree. This is also why the root's include needs no oracle call.
    let mut cand = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for id in 0..items.len() {
        stats.oracle_calls += 1;
        if feasible(&[id]) {
            cand.push(id);
        } else {
            rejected.push(id);
        }
    }
    cand.sort_by(|&a, &b| level_order(items, a, b));

    // suffix[d]: the most that levels d.. can still add; validated above not to overflow.
    let mut suffix = vec![0u64; cand.len() + 1];
    for d in (0..cand.len()).rev() {
        suffix[d] = suffix[d + 1].saturating_add(items[cand[d]].value);
    }

    let mut best_value = 0u64;
    let mut best: Vec<usize> = Vec::new();
    // Copying the batch at every improvement is quadratic on a deep include-first path, where
    // every node improves. Between an improvement and the next pop the batch only grows, so the
    // incumbent is still its prefix of this length; it is copied out just before that pop.
    let mut pending_best: Option<usize> = None;
    let mut batch: Vec<usize> = Vec::with_capacity(cand.len());
    let mut stack = vec![Frame::Visit { depth: 0, value: 0 }];

    while let Some(frame) = stack.pop() {
        let (depth, value) = match frame {
            Frame::Exclude { depth, value } => {
                if let Some(len) = pending_best.take() {
                    best.clear();
                    best.extend(batch.iter().take(len));
                }
                batch.pop();
                stack.push(Frame::Visit {
                    depth: depth + 1,
                    value,
                });
                continue;
            }
            Frame::Visit { depth, value } => (depth, value),
        };
        if stats.nodes >= config.node_cap {
            stats.capped = true;
            break;
        }
        stats.nodes += 1;
        // Strict: among equal values the first batch met in level order stays (the seed's tests
        // rely on which optimum is returned).
        if value > best_value {
            best_value = value;
            pending_best = Some(batch.len());
        }
        let mut record = |action: TraceAction, batch: &[usize]| {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(TraceEvent {
                    depth,
                    batch: batch.to_vec(),
                    value,
                    action,
                });
            }
        };
        if depth == cand.len() {
            record(TraceAction::Leaf, &batch);
            continue;
        }
        if value.saturating_add(suffix[depth]) <= best_value {
            record(TraceAction::BoundPrune, &batch);
            continue;
        }
        let item = cand[depth];
        let ok = if batch.is_empty() {
            true
        } else {
            stats.oracle_calls += 1;
            batch.push(item);
            let ok = feasible(&batch);
            batch.pop();
            ok
        };
        record(TraceAction::Include { item, feasible: ok }, &batch);
        if ok {
            // LIFO: the include branch runs first, its Exclude frame after its whole subtree.
            stack.push(Frame::Exclude { depth, value });
            batch.push(item);
            stack.push(Frame::Visit {
                depth: depth + 1,
                value: value.saturating_add(items[item].value),
            });
        } else {
            // Every superset of batch + item is infeasible: only the exclude branch is left.
            stack.push(Frame::Visit {
                depth: depth + 1,
                value,
            });
        }
    }

    if let Some(len) = pending_best {
        best.clear();
        best.extend(batch.iter().take(len));
    }
    best.sort_unstable();
    Ok(Selection {
        chosen: best,
        value: best_value,
        rejected,
        stats,
    })
}

/// The paper's complexity reference: the oracle on all `2^K - 1` non-empty subsets, keeping the
/// first best in mask order. Refuses more than [`BRUTE_FORCE_MAX_ITEMS`] items.
pub fn brute_force<F>(items: &[Candidate], mut feasible: F) -> Result<Selection>
where
    F: FnMut(&[usize]) -> bool,
{
    if items.len() > BRUTE_FORCE_MAX_ITEMS {
        return Err(BatchError::TooManyItems {
            items: items.len(),
            max: BRUTE_FORCE_MAX_ITEMS,
        });
    }
    validate(items)?;
    let mut stats = SearchStats::default();
    let mut best_value = 0u64;
    let mut best = Vec::new();
    let mut batch = Vec::with_capacity(items.len());
    for mask in 1u64..(1u64 << items.len()) {
        batch.clear();
        let mut value = 0u64;
        for (id, item) in items.iter().enumerate() {
            if mask & (1 << id) != 0 {
                batch.push(id);
                value = value.saturating_add(item.value);
            }
        }
        stats.nodes += 1;
        stats.oracle_calls += 1;
        if feasible(&batch) && value > best_value {
            best_value = value;
            best.clone_from(&batch);
        }
    }
    Ok(Selection {
        chosen: best,
        value: best_value,
        rejected: Vec::new(),
        stats,
    })
}

/// One of the greedy baselines of seed §4 (see [`Baseline`]). Ties in the ordering key go to the
/// lower id.
pub fn greedy<F>(items: &[Candidate], kind: Baseline, mut feasible: F) -> Result<Selection>
where
    F: FnMut(&[usize]) -> bool,
{
    validate(items)?;
    let mut order: Vec<usize> = (0..items.len()).collect();
    match kind {
        Baseline::Fcfs => order.sort_by_key(|&i| (items[i].arrival, i)),
        Baseline::Edf => order.sort_by(|&a, &b| {
            items[a]
                .deadline
                .total_cmp(&items[b].deadline)
                .then(a.cmp(&b))
        }),
        Baseline::ShortestJobFirst => order.sort_by_key(|&i| (items[i].size, i)),
        Baseline::ValueGreedy => order.sort_by(|&a, &b| level_order(items, a, b)),
    }
    let mut stats = SearchStats::default();
    let mut batch = Vec::with_capacity(items.len());
    let mut value = 0u64;
    for id in order {
        stats.nodes += 1;
        stats.oracle_calls += 1;
        batch.push(id);
        if feasible(&batch) {
            value = value.saturating_add(items[id].value);
        } else {
            batch.pop();
        }
    }
    batch.sort_unstable();
    Ok(Selection {
        chosen: batch,
        value,
        rejected: Vec::new(),
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(value: u64, deadline: f64) -> Candidate {
        Candidate {
            value,
            deadline,
            arrival: 0,
            size: value,
        }
    }

    /// A knapsack oracle: the batch fits when its values sum to at most `cap`.
    fn knapsack(items: &[Candidate], cap: u64) -> impl FnMut(&[usize]) -> bool + '_ {
        move |batch| batch.iter().map(|&i| items[i].value).sum::<u64>() <= cap
    }

    #[test]
    fn empty_input_visits_the_root_only() {
        let sel = dftsp(&[], &SearchConfig::default(), |_| true).unwrap();
        assert_eq!(sel.chosen, Vec::<usize>::new());
        assert_eq!(sel.stats.nodes, 1);
        assert_eq!(sel.stats.oracle_calls, 0);
        assert!(!sel.stats.capped);
    }

    #[test]
    fn knapsack_optimum_beats_value_greedy() {
        // Value-greedy takes 6 and then nothing else fits; the optimum is 5 + 5.
        let items = [item(6, 1.0), item(5, 1.0), item(5, 1.0)];
        let sel = dftsp(&items, &SearchConfig::default(), knapsack(&items, 10)).unwrap();
        assert_eq!(sel.chosen, vec![1, 2]);
        assert_eq!(sel.value, 10);
        let vg = greedy(&items, Baseline::ValueGreedy, knapsack(&items, 10)).unwrap();
        assert_eq!((vg.chosen, vg.value), (vec![0], 6));
        let bf = brute_force(&items, knapsack(&items, 10)).unwrap();
        assert_eq!(bf.value, 10);
        assert_eq!(bf.stats.oracle_calls, 7);
    }

    #[test]
    fn prefilter_rejects_items_infeasible_alone() {
        let items = [item(3, 1.0), item(20, 1.0), item(4, 1.0)];
        let sel = dftsp(&items, &SearchConfig::default(), knapsack(&items, 10)).unwrap();
        assert_eq!(sel.rejected, vec![1]);
        assert_eq!(sel.chosen, vec![0, 2]);
        assert_eq!(sel.value, 7);
    }

    #[test]
    fn node_cap_returns_a_feasible_incumbent_and_says_so() {
        let items: Vec<Candidate> = (1..=12).map(|v| item(v, 1.0)).collect();
        let cap = 5;
        let sel = dftsp(
            &items,
            &SearchConfig { node_cap: cap },
            knapsack(&items, 20),
        )
        .unwrap();
        assert!(sel.stats.capped);
        assert_eq!(sel.stats.nodes, cap);
        let sum: u64 = sel.chosen.iter().map(|&i| items[i].value).sum();
        assert_eq!(sum, sel.value);
        assert!(sel.value <= 20);
        // Include-first from the largest: 12, then 11 does not fit, 10 does not... the first path
        // reaches 12 + 8 = 20 only deeper than 5 nodes, so the incumbent is 12 alone.
        assert_eq!(sel.chosen, vec![11]);
        let uncapped = dftsp(&items, &SearchConfig::default(), knapsack(&items, 20)).unwrap();
        assert!(!uncapped.stats.capped);
        assert_eq!(uncapped.value, 20);
    }

    #[test]
    fn zero_node_cap_returns_nothing_capped() {
        let items = [item(1, 1.0)];
        let sel = dftsp(&items, &SearchConfig { node_cap: 0 }, |_| true).unwrap();
        assert_eq!(sel.value, 0);
        assert!(sel.stats.capped);
        assert_eq!(sel.stats.oracle_calls, 1);
    }

    #[test]
    fn nan_deadline_and_value_overflow_are_errors() {
        let nan = [item(1, f64::NAN)];
        assert_eq!(
            dftsp(&nan, &SearchConfig::default(), |_| true),
            Err(BatchError::NotANumber {
                what: "candidate deadline"
            })
        );
        let big = [item(u64::MAX, 1.0), item(1, 1.0)];
        assert_eq!(
            dftsp(&big, &SearchConfig::default(), |_| true),
            Err(BatchError::ValueOverflow)
        );
        assert_eq!(
            greedy(&big, Baseline::Fcfs, |_| true),
            Err(BatchError::ValueOverflow)
        );
        let many = vec![item(1, 1.0); BRUTE_FORCE_MAX_ITEMS + 1];
        assert_eq!(
            brute_force(&many, |_| true),
            Err(BatchError::TooManyItems {
                items: BRUTE_FORCE_MAX_ITEMS + 1,
                max: BRUTE_FORCE_MAX_ITEMS
            })
        );
    }

    #[test]
    fn deep_instances_do_not_overflow_the_stack() {
        // 50 000 levels, all feasible: the first path is 50 000 deep.
        let items = vec![item(1, 1.0); 50_000];
        let sel = dftsp(&items, &SearchConfig { node_cap: 60_000 }, |_| true).unwrap();
        assert_eq!(sel.value, 50_000);
    }

    #[test]
    fn greedy_orders() {
        // Each baseline puts a different item first.
        let items = [
            Candidate {
                value: 1,
                deadline: 5.0,
                arrival: 0,
                size: 9,
            },
            Candidate {
                value: 2,
                deadline: 1.0,
                arrival: 1,
                size: 8,
            },
            Candidate {
                value: 3,
                deadline: 4.0,
                arrival: 2,
                size: 1,
            },
            Candidate {
                value: 4,
                deadline: 3.0,
                arrival: 3,
                size: 7,
            },
        ];
        let one = |b: &[usize]| b.len() <= 1;
        let pick = |kind| greedy(&items, kind, one).unwrap();
        assert_eq!(pick(Baseline::Fcfs).chosen, vec![0]);
        assert_eq!(pick(Baseline::Edf).chosen, vec![1]);
        assert_eq!(pick(Baseline::ShortestJobFirst).chosen, vec![2]);
        assert_eq!(pick(Baseline::ValueGreedy).chosen, vec![3]);
        let g = pick(Baseline::ValueGreedy);
        assert_eq!((g.value, g.stats.oracle_calls), (4, 4));
        // A skipped item does not stop the scan: the two smallest still fit after 9 is refused.
        let small = |b: &[usize]| b.iter().map(|&i| items[i].size).sum::<u64>() <= 9;
        assert_eq!(
            greedy(&items, Baseline::Edf, small).unwrap().chosen,
            vec![1, 2]
        );
    }
}
