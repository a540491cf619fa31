//! `swarm-node --blocks auto [--max-blocks N]`: which contiguous range a joining (or re-planning)
//! node takes, Petals-style, energy-aware. Pure decisions; the node supplies what it measured and
//! what the swarm announced, and acts on the answer.
//!
//! # The model
//!
//! * A Sunswarm route uses **whole ranges**: a hop runs every block its peer hosts, and the
//!   next hop starts where it ends. So the hosted ranges are arcs of a graph over block
//!   boundaries `0..=blocks` (a range `start..end` joins boundary `start` to `end`), and a
//!   route is a path from `0` to `blocks`. Blocks that are hosted but do not chain (`0..12`,
//!   `12..24`, `19..30`) leave the model without a route even though every block has a host.
//! * A peer hosting `len` blocks with a compute speed of `r` blocks per second (`1000 /
//!   ms_per_block`) passes `r / len` tokens per second through its range: the arc's capacity.
//!   It is weighed by the peer's availability, its max job rate `lambda` in `[0, 1]`
//!   (`paper-model.md` eq. 5; 1 on mains), and is 0 in power saving (such an arc carries no
//!   route: clients do not route to it).
//! * The swarm's **throughput** is the maximum flow from boundary `0` to `blocks` (tokens per
//!   second that all routes together can carry); 0 while no route exists.
//! * Its **coverage** is the number of blocks on a partial route: held by an arc reachable from
//!   `0` or from which `blocks` is reachable. It is `blocks` exactly when a full route exists
//!   (capped at `blocks - 1` otherwise), so "covered" means "routable".
//! * A block's **capacity** sums the arcs that hold it on a full route (or, while there is none,
//!   on a partial one): the tie-breaker.
//!
//! # The choice
//!
//! [`best_range`] tries every contiguous range of at most `max_blocks` blocks that could lie on
//! a route (it starts at `0` or where a reachable range ends, or ends at `blocks` or where a
//! range that reaches the end starts; no other range can be on a route) and keeps the best by:
//! coverage, then throughput (within a part in 1e9), then the capacity vector in **leximin**
//! order (compare the sorted capacities from the smallest up), so ties go to the range that
//! helps the weakest blocks. Remaining ties go to the lowest start, then the longest range:
//! deterministic, so two nodes that see the same swarm agree. "Given everyone else stays": the
//! other peers' ranges are taken as fixed.
//!
//! # Moving
//!
//! A node that already hosts a range re-plans when the coverage changes ([`replan_reason`]: a
//! block lost a host or became uncovered), and moves only if [`should_move`] says the gain is
//! clear: more coverage or, with a route either way, a throughput at least `1 + min_gain` times
//! the current one ([`Hysteresis`], 20 % by default; Petals' own default
//! `balance_quality = 0.75` asks for about 33 %). Moving costs reloading weights, so small or
//! noisy gains are not worth it, and without a margin two nodes that see near-equal choices
//! would swap ranges back and forth. The node finishes its open sessions before it reloads
//! ([`Decision::Move`]).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::MAX_BLOCKS;
use crate::error::{PlanError, Result, non_negative, positive, unit_rate};

/// The default hysteresis: move only for a throughput gain above 20 %.
pub const DEFAULT_MIN_GAIN: f64 = 0.2;

/// Above this many `candidates x (blocks + arcs)` steps, [`best_range`] tries only ranges of
/// exactly `max_blocks` blocks (Petals' rule), so that a 4096-block model does not take minutes.
const SEARCH_BUDGET: u64 = 20_000_000;

/// How fast another peer is, as its announcement says.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speed {
    /// Decode time of one block for one token, ms.
    MsPerBlock(f64),
    /// Blocks per second for one token stream (`1000 / ms_per_block`).
    BlocksPerSecond(f64),
    /// Tokens per second through the peer's whole range (the announcement's `throughput`).
    TokensPerSecond(f64),
}

/// Another live peer's hosted range `start..end` (half-open) and what it is worth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostedRange {
    pub start: u32,
    pub end: u32,
    pub speed: Speed,
    /// Max job rate in `[0, 1]` (1 on mains).
    pub max_job_rate: f64,
    pub power_saving: bool,
}

/// The deciding node itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwnPeer {
    /// Its measured decode time per block, ms.
    pub ms_per_block: f64,
    /// The most blocks it may host (`--max-blocks`, or what its memory holds).
    pub max_blocks: u32,
    pub max_job_rate: f64,
    pub power_saving: bool,
}

/// The swarm as it would be with this node on `start..end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeScore {
    pub start: u32,
    pub end: u32,
    /// Each block's capacity, tokens per second: the ranges holding it on a full route (on a
    /// partial one while there is no full route).
    pub capacity: Vec<f64>,
    /// Blocks on a partial route; `blocks` exactly when a full route exists (module docs).
    pub covered: u32,
    /// The maximum flow of routes from block 0 to the end, tokens per second; 0 without a route.
    pub throughput: f64,
}

/// The margin a move must clear.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hysteresis {
    /// Relative throughput gain a move needs: move when `best > current * (1 + min_gain)`.
    pub min_gain: f64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            min_gain: DEFAULT_MIN_GAIN,
        }
    }
}

impl Hysteresis {
    /// A checked margin (finite, `>= 0`).
    pub fn new(min_gain: f64) -> Result<Self> {
        non_negative(|| "hysteresis min_gain".into(), min_gain)?;
        Ok(Hysteresis { min_gain })
    }
}

/// What the node should do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// It hosts nothing yet: load this range.
    Take(RangeScore),
    /// Keep the current range (`best` is what was on offer).
    Stay {
        current: RangeScore,
        best: RangeScore,
    },
    /// Finish the open sessions (refuse new ones), then unload `from` and load `to`.
    Move { from: RangeScore, to: RangeScore },
}

fn availability(max_job_rate: f64, power_saving: bool) -> f64 {
    if power_saving { 0.0 } else { max_job_rate }
}

fn check_range(blocks: u32, start: u32, end: u32, context: impl FnOnce() -> String) -> Result<()> {
    if start >= end || end > blocks {
        return Err(PlanError::BadRange {
            context: context(),
            start,
            end,
            blocks,
        });
    }
    Ok(())
}

fn check_blocks(blocks: u32) -> Result<()> {
    if blocks == 0 {
        return Err(PlanError::ZeroBlocks);
    }
    if blocks > MAX_BLOCKS {
        return Err(PlanError::TooManyBlocks {
            blocks: u64::from(blocks),
            limit: MAX_BLOCKS,
        });
    }
    Ok(())
}

fn check_own(me: &OwnPeer) -> Result<()> {
    positive(|| "own ms_per_block".into(), me.ms_per_block)?;
    unit_rate(|| "own max_job_rate".into(), me.max_job_rate)?;
    if me.max_blocks == 0 {
        return Err(PlanError::BadNumber {
            what: "own max_blocks".into(),
            value: 0.0,
            expected: "at least 1",
        });
    }
    Ok(())
}

/// A hosted range as an arc of the boundary graph, with its weighed capacity (tokens/s).
#[derive(Clone, Copy, Debug)]
struct RangeArc {
    start: u32,
    end: u32,
    rate: f64,
}

/// The other peers' ranges as arcs (validated).
fn base_arcs(blocks: u32, others: &[HostedRange]) -> Result<Vec<RangeArc>> {
    check_blocks(blocks)?;
    let mut arcs = Vec::with_capacity(others.len() + 1);
    for (i, h) in others.iter().enumerate() {
        check_range(blocks, h.start, h.end, || format!("peer #{i}"))?;
        unit_rate(|| format!("peer #{i}: max_job_rate"), h.max_job_rate)?;
        let len = f64::from(h.end - h.start);
        let tokens_per_s = match h.speed {
            Speed::MsPerBlock(ms) => {
                1000.0 / positive(|| format!("peer #{i}: ms_per_block"), ms)? / len
            }
            Speed::BlocksPerSecond(r) => {
                positive(|| format!("peer #{i}: blocks_per_second"), r)? / len
            }
            Speed::TokensPerSecond(t) => {
                non_negative(|| format!("peer #{i}: tokens_per_second"), t)?
            }
        };
        arcs.push(RangeArc {
            start: h.start,
            end: h.end,
            rate: tokens_per_s * availability(h.max_job_rate, h.power_saving),
        });
    }
    Ok(arcs)
}

fn own_arc(me: &OwnPeer, start: u32, end: u32) -> RangeArc {
    RangeArc {
        start,
        end,
        rate: 1000.0 / me.ms_per_block / f64::from(end - start)
            * availability(me.max_job_rate, me.power_saving),
    }
}

/// Boundaries reachable from 0 (`fwd`) and from which `blocks` is reachable (`bwd`), over the
/// arcs that carry anything.
fn reach(blocks: u32, arcs: &[RangeArc]) -> (Vec<bool>, Vec<bool>) {
    let n = blocks as usize;
    let mut by_start: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (i, a) in arcs.iter().enumerate() {
        if a.rate > 0.0 {
            by_start[a.start as usize].push(i);
        }
    }
    let mut fwd = vec![false; n + 1];
    fwd[0] = true;
    // Arcs go forward, so one pass in boundary order settles reachability.
    for b in 0..n {
        if fwd[b] {
            for &i in &by_start[b] {
                fwd[arcs[i].end as usize] = true;
            }
        }
    }
    let mut bwd = vec![false; n + 1];
    bwd[n] = true;
    for b in (0..n).rev() {
        bwd[b] = by_start[b].iter().any(|&i| bwd[arcs[i].end as usize]);
    }
    (fwd, bwd)
}

/// Maximum flow from boundary 0 to `blocks` over `arcs` (Edmonds-Karp on the boundaries the
/// arcs use; arcs sharing both ends are merged).
fn max_flow(blocks: u32, arcs: &[RangeArc]) -> f64 {
    let mut nodes: Vec<u32> = arcs.iter().flat_map(|a| [a.start, a.end]).collect();
    nodes.extend([0, blocks]);
    nodes.sort_unstable();
    nodes.dedup();
    let idx = |b: u32| nodes.binary_search(&b).unwrap_or(0);
    // Residual graph: edge list with paired reverse edges.
    let mut to: Vec<usize> = Vec::new();
    let mut cap: Vec<f64> = Vec::new();
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for a in arcs.iter().filter(|a| a.rate > 0.0) {
        let (u, v) = (idx(a.start), idx(a.end));
        adj[u].push(to.len());
        to.push(v);
        cap.push(a.rate);
        adj[v].push(to.len());
        to.push(u);
        cap.push(0.0);
    }
    let (s, t) = (idx(0), idx(blocks));
    let mut flow = 0.0;
    // Each augmenting path saturates an arc, so at most (arcs) x (nodes) rounds; the cap only
    // guards against float residue making endless tiny paths.
    for _ in 0..(to.len() + 1) * (nodes.len() + 1) {
        let mut prev: Vec<Option<usize>> = vec![None; nodes.len()];
        let mut seen = vec![false; nodes.len()];
        seen[s] = true;
        let mut queue = std::collections::VecDeque::from([s]);
        while let Some(u) = queue.pop_front() {
            for &e in &adj[u] {
                let v = to[e];
                if !seen[v] && cap[e] > 1e-12 {
                    seen[v] = true;
                    prev[v] = Some(e);
                    queue.push_back(v);
                }
            }
        }
        if !seen[t] {
            break;
        }
        let mut push = f64::INFINITY;
        let mut v = t;
        while let Some(e) = prev[v] {
            push = push.min(cap[e]);
            v = to[e ^ 1];
        }
        let mut v = t;
        while let Some(e) = prev[v] {
            cap[e] -= push;
            cap[e ^ 1] += push;
            v = to[e ^ 1];
        }
        flow += push;
    }
    flow
}

/// The swarm of `arcs` as a score for the range `start..end` (the last arc is that range).
fn evaluate(blocks: u32, arcs: &[RangeArc], start: u32, end: u32) -> RangeScore {
    let n = blocks as usize;
    let (fwd, bwd) = reach(blocks, arcs);
    let routable = fwd[n];
    let live = |a: &&RangeArc| a.rate > 0.0;
    let on_path = |a: &&RangeArc| fwd[a.start as usize] && bwd[a.end as usize];
    let useful = |a: &&RangeArc| fwd[a.start as usize] || bwd[a.end as usize];
    let mut held = vec![false; n];
    for a in arcs.iter().filter(live).filter(useful) {
        held[a.start as usize..a.end as usize].fill(true);
    }
    let held = held.iter().filter(|&&h| h).count() as u32;
    let covered = if routable {
        blocks
    } else {
        held.min(blocks - 1)
    };
    let mut capacity = vec![0.0; n];
    let counted: Vec<RangeArc> = arcs
        .iter()
        .filter(live)
        .filter(|a| if routable { on_path(a) } else { useful(a) })
        .copied()
        .collect();
    for a in &counted {
        for c in &mut capacity[a.start as usize..a.end as usize] {
            *c += a.rate;
        }
    }
    let throughput = if routable {
        max_flow(blocks, &counted)
    } else {
        0.0
    };
    RangeScore {
        start,
        end,
        capacity,
        covered,
        throughput,
    }
}

fn score(base: &[RangeArc], blocks: u32, me: &OwnPeer, start: u32, end: u32) -> RangeScore {
    let mut arcs = base.to_vec();
    arcs.push(own_arc(me, start, end));
    evaluate(blocks, &arcs, start, end)
}

/// The swarm with this node on `start..end` and the others where they are.
pub fn score_range(
    blocks: u32,
    others: &[HostedRange],
    me: &OwnPeer,
    start: u32,
    end: u32,
) -> Result<RangeScore> {
    check_own(me)?;
    let base = base_arcs(blocks, others)?;
    check_range(blocks, start, end, || "own range".into())?;
    Ok(score(&base, blocks, me, start, end))
}

/// Two capacities are equal when they differ by less than a part in 1e9: a re-measured speed
/// must not reorder ranges on rounding alone.
fn nearly_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-12
}

/// Leximin order of two capacity vectors: sorted ascending, compared from the smallest.
fn leximin(a: &[f64], b: &[f64]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if !nearly_equal(*x, *y) {
            return x.total_cmp(y);
        }
    }
    Ordering::Equal
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// The candidate ranges that could lie on a route, in the order ties are settled: lowest
/// start, then longest. With `full_only`, only ranges of exactly `max_len` blocks (or fewer
/// where the model ends first).
fn candidates(blocks: u32, base: &[RangeArc], max_len: u32, full_only: bool) -> Vec<(u32, u32)> {
    let (fwd, bwd) = reach(blocks, base);
    let mut set = std::collections::BTreeSet::new();
    let lengths = |set: &mut std::collections::BTreeSet<(u32, std::cmp::Reverse<u32>)>,
                   start: u32,
                   room: u32| {
        let top = max_len.min(room);
        let low = if full_only { top } else { 1 };
        for len in low..=top {
            set.insert((start, std::cmp::Reverse(len)));
        }
    };
    for b in 0..blocks {
        if fwd[b as usize] {
            lengths(&mut set, b, blocks - b);
        }
    }
    for e in 1..=blocks {
        if bwd[e as usize] {
            let top = max_len.min(e);
            let low = if full_only { top } else { 1 };
            for len in low..=top {
                set.insert((e - len, std::cmp::Reverse(len)));
            }
        }
    }
    set.into_iter().map(|(s, l)| (s, s + l.0)).collect()
}

/// The range that raises the swarm's throughput most, given everyone else stays (module docs).
pub fn best_range(blocks: u32, others: &[HostedRange], me: &OwnPeer) -> Result<RangeScore> {
    check_own(me)?;
    let base = base_arcs(blocks, others)?;
    let max_len = me.max_blocks.min(blocks);
    let mut cands = candidates(blocks, &base, max_len, false);
    let work = (cands.len() as u64).saturating_mul(u64::from(blocks) + base.len() as u64);
    if work > SEARCH_BUDGET {
        cands = candidates(blocks, &base, max_len, true);
    }
    // The best so far, with its leximin key computed only when a tie needs it.
    struct Best {
        score: RangeScore,
        key: Option<Vec<f64>>,
    }
    let mut best: Option<Best> = None;
    for (start, end) in cands {
        let s = score(&base, blocks, me, start, end);
        let better = match &mut best {
            None => true,
            Some(b) => match s.covered.cmp(&b.score.covered) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal if !nearly_equal(s.throughput, b.score.throughput) => {
                    s.throughput > b.score.throughput
                }
                Ordering::Equal => {
                    let key = b.key.get_or_insert_with(|| sorted(&b.score.capacity));
                    leximin(&sorted(&s.capacity), key) == Ordering::Greater
                }
            },
        };
        if better {
            best = Some(Best {
                score: s,
                key: None,
            });
        }
    }
    // At least one candidate exists: 0 is always reachable and max_len >= 1.
    best.map(|b| b.score).ok_or(PlanError::Infeasible {
        blocks,
        reason: "no range fits".into(),
    })
}

/// Whether moving from `current` to `best` is a clear gain: more coverage, or a route either way
/// and a throughput above `current * (1 + min_gain)`. Less coverage, or no route either way
/// with no more coverage, is never a reason to move.
pub fn should_move(current: &RangeScore, best: &RangeScore, hysteresis: Hysteresis) -> bool {
    match best.covered.cmp(&current.covered) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => {
            current.throughput > 0.0
                && best.throughput > current.throughput * (1.0 + hysteresis.min_gain)
        }
    }
}

/// Take, stay or move: [`best_range`] given the others, compared with the current range (if
/// any) through [`should_move`]. The current range may be longer than `max_blocks` (the limit
/// was lowered since it was loaded); it is scored as it is.
pub fn decide(
    blocks: u32,
    others: &[HostedRange],
    me: &OwnPeer,
    current: Option<(u32, u32)>,
    hysteresis: Hysteresis,
) -> Result<Decision> {
    Hysteresis::new(hysteresis.min_gain)?;
    let best = best_range(blocks, others, me)?;
    let Some((start, end)) = current else {
        return Ok(Decision::Take(best));
    };
    check_range(blocks, start, end, || "current range".into())?;
    let base = base_arcs(blocks, others)?;
    let current = score(&base, blocks, me, start, end);
    if (current.start, current.end) != (best.start, best.end)
        && should_move(&current, &best, hysteresis)
    {
        Ok(Decision::Move {
            from: current,
            to: best,
        })
    } else {
        Ok(Decision::Stay { current, best })
    }
}

/// How many live peers host each block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub hosts: Vec<u32>,
}

impl Coverage {
    /// Counts hosts per block over the given half-open ranges (every live announcement of the
    /// model, the node's own included; power saving peers count: they keep their blocks and
    /// come back, and reloading weights for a rest that ends on its own is not worth it).
    pub fn of(blocks: u32, ranges: impl IntoIterator<Item = (u32, u32)>) -> Result<Self> {
        check_blocks(blocks)?;
        let mut hosts = vec![0u32; blocks as usize];
        for (i, (start, end)) in ranges.into_iter().enumerate() {
            check_range(blocks, start, end, || format!("range #{i}"))?;
            for h in &mut hosts[start as usize..end as usize] {
                *h = h.saturating_add(1);
            }
        }
        Ok(Coverage { hosts })
    }

    /// Blocks that no peer hosts.
    pub fn uncovered(&self) -> Vec<u32> {
        (0..self.hosts.len() as u32)
            .filter(|&b| self.hosts[b as usize] == 0)
            .collect()
    }

    pub fn is_full(&self) -> bool {
        self.hosts.iter().all(|&h| h > 0)
    }
}

/// Why a node should re-plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplanReason {
    /// The block count differs (a different model config): plan from scratch.
    ModelChanged,
    /// These blocks had a host and now have none.
    Uncovered { blocks: Vec<u32> },
    /// These blocks lost a host but are still covered (a peer left or moved away).
    HostLost { blocks: Vec<u32> },
}

/// The re-plan trigger: `Some` when coverage dropped between two looks at the swarm (a peer
/// left, a range went uncovered). A peer joining does not trigger: it chose its own range
/// against everyone else, and a node re-planning on every join would churn for nothing.
pub fn replan_reason(before: &Coverage, after: &Coverage) -> Option<ReplanReason> {
    if before.hosts.len() != after.hosts.len() {
        return Some(ReplanReason::ModelChanged);
    }
    let pairs = || before.hosts.iter().zip(&after.hosts).enumerate();
    let uncovered: Vec<u32> = pairs()
        .filter(|(_, (b, a))| **b > 0 && **a == 0)
        .map(|(i, _)| i as u32)
        .collect();
    if !uncovered.is_empty() {
        return Some(ReplanReason::Uncovered { blocks: uncovered });
    }
    let lost: Vec<u32> = pairs()
        .filter(|(_, (b, a))| **a < **b)
        .map(|(i, _)| i as u32)
        .collect();
    if !lost.is_empty() {
        return Some(ReplanReason::HostLost { blocks: lost });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn hosted(start: u32, end: u32, ms: f64) -> HostedRange {
        HostedRange {
            start,
            end,
            speed: Speed::MsPerBlock(ms),
            max_job_rate: 1.0,
            power_saving: false,
        }
    }

    fn me(ms: f64, max_blocks: u32) -> OwnPeer {
        OwnPeer {
            ms_per_block: ms,
            max_blocks,
            max_job_rate: 1.0,
            power_saving: false,
        }
    }

    /// A simulated swarm: each node's own speed and limit, and where it is now.
    struct Node {
        own: OwnPeer,
        range: Option<(u32, u32)>,
    }

    fn others_of(nodes: &[Node], skip: usize) -> Vec<HostedRange> {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .filter_map(|(_, n)| {
                n.range.map(|(s, e)| HostedRange {
                    start: s,
                    end: e,
                    speed: Speed::MsPerBlock(n.own.ms_per_block),
                    max_job_rate: n.own.max_job_rate,
                    power_saving: n.own.power_saving,
                })
            })
            .collect()
    }

    fn coverage(blocks: u32, nodes: &[Node]) -> Coverage {
        Coverage::of(blocks, nodes.iter().filter_map(|n| n.range)).unwrap()
    }

    /// One re-planning round: each node in turn decides given the others; returns the moves.
    fn round(blocks: u32, nodes: &mut [Node], h: Hysteresis) -> usize {
        let mut moves = 0;
        for i in 0..nodes.len() {
            let others = others_of(nodes, i);
            match decide(blocks, &others, &nodes[i].own, nodes[i].range, h).unwrap() {
                Decision::Take(s) | Decision::Move { to: s, .. } => {
                    nodes[i].range = Some((s.start, s.end));
                    moves += 1;
                }
                Decision::Stay { .. } => {}
            }
        }
        moves
    }

    fn four_nodes() -> Vec<Node> {
        vec![
            Node {
                own: me(2.0, 10),
                range: None,
            },
            Node {
                own: me(1.5, 12),
                range: None,
            },
            Node {
                own: me(1.0, 14),
                range: None,
            },
            Node {
                own: me(1.2, 16),
                range: None,
            },
        ]
    }

    fn throughput(blocks: u32, nodes: &[Node]) -> f64 {
        // The swarm's throughput, computed from scratch over all nodes.
        let all = base_arcs(blocks, &others_of(nodes, usize::MAX)).unwrap();
        evaluate(blocks, &all, 0, 1).throughput
    }

    /// Whether the nodes' ranges chain from block 0 to the end (a client can route).
    fn routable(blocks: u32, nodes: &[Node]) -> bool {
        let all = base_arcs(blocks, &others_of(nodes, usize::MAX)).unwrap();
        reach(blocks, &all).0[blocks as usize]
    }

    #[test]
    fn four_peers_joining_one_after_another_cover_thirty_blocks() {
        let b = 30;
        let mut nodes = four_nodes();
        let mut covered = Vec::new();
        for i in 0..nodes.len() {
            let others = others_of(&nodes, i);
            let Decision::Take(s) =
                decide(b, &others, &nodes[i].own, None, Hysteresis::default()).unwrap()
            else {
                panic!("a node without a range must take one");
            };
            assert!(s.end - s.start <= nodes[i].own.max_blocks);
            nodes[i].range = Some((s.start, s.end));
            covered.push(coverage(b, &nodes).hosts.iter().filter(|&&h| h > 0).count());
        }
        // Each of the first three covers as much new ground as it can: 10, then 22, then all,
        // each range starting where the one before ends.
        assert_eq!(covered, vec![10, 22, 30, 30]);
        assert!(coverage(b, &nodes).is_full());
        assert!(
            routable(b, &nodes[..3]),
            "{:?}",
            nodes.iter().map(|n| n.range).collect::<Vec<_>>()
        );
        // The fourth adds throughput to a covered swarm.
        let with_three = throughput(b, &nodes[..3]);
        let with_four = throughput(b, &nodes);
        assert!(
            with_three > 0.0 && with_four > with_three,
            "{with_three} -> {with_four}"
        );
        // And once settled, a round of re-planning moves nobody.
        assert_eq!(round(b, &mut nodes, Hysteresis::default()), 0);
    }

    #[test]
    fn when_a_peer_leaves_the_others_re_cover_the_gap() {
        let b = 30;
        for leaver in 0..4 {
            let mut nodes = four_nodes();
            round(b, &mut nodes, Hysteresis::default());
            // Settle, then one node leaves.
            for _ in 0..5 {
                if round(b, &mut nodes, Hysteresis::default()) == 0 {
                    break;
                }
            }
            let before = coverage(b, &nodes);
            assert!(before.is_full());
            nodes.remove(leaver);
            let after = coverage(b, &nodes);
            let reason = replan_reason(&before, &after);
            assert!(reason.is_some(), "leaving must trigger a re-plan");
            let mut rounds = 0;
            while round(b, &mut nodes, Hysteresis::default()) > 0 {
                rounds += 1;
                assert!(rounds < 10, "re-planning does not settle");
            }
            let cov = coverage(b, &nodes);
            // The three that stay hold at least 10 + 12 + 14 = 36 >= 30 blocks.
            assert!(
                cov.is_full(),
                "node {leaver} left; uncovered {:?}",
                cov.uncovered()
            );
            assert!(
                routable(b, &nodes),
                "node {leaver} left; ranges {:?} do not chain",
                nodes.iter().map(|n| n.range).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn hysteresis_prevents_flapping_between_equal_choices() {
        // Two halves of 20 blocks, each held by one peer of the same speed; a third node of
        // the same speed can add itself to either half: equal choices. Each round the others'
        // announced speeds jitter by up to 5 % (measurement noise). Without a margin the node
        // chases the momentarily weaker half; with the default 20 % it stays.
        let b = 20;
        let run = |h: Hysteresis| {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let node = me(1.0, 10);
            let mut range = Some((0, 10));
            let mut moves = 0;
            for _ in 0..50 {
                let others = vec![
                    hosted(0, 10, rng.random_range(0.95..1.05)),
                    hosted(10, 20, rng.random_range(0.95..1.05)),
                ];
                match decide(b, &others, &node, range, h).unwrap() {
                    Decision::Move { to, .. } => {
                        range = Some((to.start, to.end));
                        moves += 1;
                    }
                    Decision::Stay { .. } => {}
                    Decision::Take(_) => unreachable!("the node has a range"),
                }
            }
            moves
        };
        let naive = run(Hysteresis::new(0.0).unwrap());
        assert!(
            naive >= 5,
            "the scenario must make a margin-free node flap ({naive} moves)"
        );
        assert_eq!(run(Hysteresis::default()), 0);
    }

    #[test]
    fn should_move_rules() {
        let s = |covered, throughput| RangeScore {
            start: 0,
            end: 1,
            capacity: vec![],
            covered,
            throughput,
        };
        let h = Hysteresis::default();
        assert!(should_move(&s(9, 0.0), &s(10, 1.0), h), "coverage gain");
        assert!(!should_move(&s(10, 1.0), &s(9, 0.0), h), "coverage loss");
        assert!(
            !should_move(&s(10, 100.0), &s(10, 119.0), h),
            "19 % is not clear"
        );
        assert!(should_move(&s(10, 100.0), &s(10, 121.0), h), "21 % is");
        assert!(
            !should_move(&s(8, 0.0), &s(8, 0.0), h),
            "partial either way"
        );
    }

    #[test]
    fn availability_weighs_capacity() {
        // Two halves held by equally fast peers; the second's battery sustains a fifth of the
        // jobs. A joining node must take the second half. Without the weighing the halves tie
        // and the lowest start (the first half) would win.
        let b = 20;
        let mut weak = hosted(10, 20, 1.0);
        weak.max_job_rate = 0.2;
        let s = best_range(b, &[hosted(0, 10, 1.0), weak.clone()], &me(1.0, 10)).unwrap();
        assert_eq!((s.start, s.end), (10, 20));
        let tie = best_range(b, &[hosted(0, 10, 1.0), hosted(10, 20, 1.0)], &me(1.0, 10)).unwrap();
        assert_eq!((tie.start, tie.end), (0, 10));
        // In power saving a peer adds nothing: its blocks count as uncovered.
        weak.power_saving = true;
        let s = best_range(b, &[hosted(0, 10, 1.0), weak], &me(1.0, 10)).unwrap();
        assert_eq!((s.start, s.end), (10, 20));
        assert_eq!(s.covered, 20);
        assert!(s.throughput > 0.0);
    }

    #[test]
    fn speeds_convert_to_the_same_capacity() {
        let b = 10;
        let m = me(1.0, 1);
        let cap = |speed| {
            let h = HostedRange {
                start: 0,
                end: 10,
                speed,
                max_job_rate: 1.0,
                power_saving: false,
            };
            score_range(b, &[h], &m, 0, 1).unwrap().capacity[5]
        };
        // 2 ms per block over 10 blocks = 500 blocks/s = 50 tokens/s through the range.
        assert!((cap(Speed::MsPerBlock(2.0)) - 50.0).abs() < 1e-9);
        assert!((cap(Speed::BlocksPerSecond(500.0)) - 50.0).abs() < 1e-9);
        assert!((cap(Speed::TokensPerSecond(50.0)) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn replan_reasons() {
        let full = Coverage::of(6, [(0, 3), (3, 6), (2, 5)]).unwrap();
        let lost = Coverage::of(6, [(0, 3), (3, 6)]).unwrap();
        assert_eq!(
            replan_reason(&full, &lost),
            Some(ReplanReason::HostLost {
                blocks: vec![2, 3, 4]
            })
        );
        let gap = Coverage::of(6, [(0, 3), (2, 5)]).unwrap();
        assert_eq!(
            replan_reason(&full, &gap),
            Some(ReplanReason::Uncovered { blocks: vec![5] })
        );
        assert_eq!(replan_reason(&lost, &full), None, "a join does not trigger");
        assert_eq!(replan_reason(&full, &full), None);
        let other = Coverage::of(7, [(0, 7)]).unwrap();
        assert_eq!(
            replan_reason(&full, &other),
            Some(ReplanReason::ModelChanged)
        );
        assert_eq!(gap.uncovered(), vec![5]);
    }

    #[test]
    fn bad_inputs_are_named() {
        let m = me(1.0, 4);
        assert!(matches!(
            best_range(10, &[hosted(5, 12, 1.0)], &m),
            Err(PlanError::BadRange { .. })
        ));
        assert!(matches!(
            best_range(10, &[hosted(5, 5, 1.0)], &m),
            Err(PlanError::BadRange { .. })
        ));
        assert_eq!(best_range(0, &[], &m), Err(PlanError::ZeroBlocks));
        let err = best_range(10, &[hosted(0, 5, f64::NAN)], &m).unwrap_err();
        assert!(err.to_string().contains("peer #0: ms_per_block"), "{err}");
        assert!(best_range(10, &[], &me(f64::INFINITY, 4)).is_err());
        assert!(best_range(10, &[], &me(1.0, 0)).is_err());
        let mut h = hosted(0, 5, 1.0);
        h.max_job_rate = -0.1;
        assert!(best_range(10, &[h], &m).is_err());
        assert!(decide(10, &[], &m, Some((3, 11)), Hysteresis::default()).is_err());
        assert!(decide(10, &[], &m, None, Hysteresis { min_gain: f64::NAN }).is_err());
        assert!(Coverage::of(10, [(4, 2)]).is_err());
    }

    #[test]
    fn large_models_fall_back_to_full_length_ranges() {
        // 4096 blocks and 2000 per node is beyond the search budget: only full-length ranges
        // are tried, so the answer has exactly max_blocks blocks and lands on uncovered ground.
        let b = 4096;
        let s = best_range(b, &[hosted(0, 2000, 1.0)], &me(1.0, 2000)).unwrap();
        assert_eq!(s.end - s.start, 2000);
        assert!(s.start >= 2000);
    }

    #[test]
    fn ranges_must_chain_to_make_a_route() {
        // 0..12 and 12..24 held: the blocks 24..30 are best taken as 24..30 (a route), not as
        // 18..30 or 19..30, which hold every block but leave no route (a hop runs its whole
        // range, so 12..24 cannot hand over to a range that starts at 18).
        let b = 30;
        let others = [hosted(0, 12, 1.0), hosted(12, 24, 1.0)];
        let s = best_range(b, &others, &me(1.0, 12)).unwrap();
        assert_eq!((s.start, s.end), (24, 30));
        assert_eq!(s.covered, 30);
        assert!(s.throughput > 0.0);
        let dangling = score_range(b, &others, &me(1.0, 12), 18, 30).unwrap();
        assert!(dangling.covered < 30, "{dangling:?}");
        assert_eq!(dangling.throughput, 0.0);
        // A swarm whose ranges hold every block without chaining is not covered, and a
        // joining node closes the route: 12..19 bridges to 19..30 (24..30 would too, but its
        // route has more blocks at the weakest capacity).
        let broken = [hosted(0, 12, 1.0), hosted(12, 24, 1.0), hosted(19, 30, 1.0)];
        let c = Coverage::of(b, broken.iter().map(|h| (h.start, h.end))).unwrap();
        assert!(c.is_full(), "every block has a host");
        assert!(
            score_range(b, &broken[..2], &me(1.0, 1), 0, 1)
                .unwrap()
                .covered
                < 30
        );
        let s = best_range(b, &broken, &me(1.0, 12)).unwrap();
        assert_eq!((s.start, s.end), (12, 19));
        assert_eq!(s.covered, 30);
    }

    #[test]
    fn throughput_is_the_max_flow_of_routes() {
        let arc = |start, end, rate| RangeArc { start, end, rate };
        // Two routes: 0-10-20 (bottleneck 3) and 0-20 directly (4); plus a dead end.
        let arcs = [
            arc(0, 10, 5.0),
            arc(10, 20, 3.0),
            arc(0, 20, 4.0),
            arc(5, 15, 9.0),
        ];
        assert!((max_flow(20, &arcs) - 7.0).abs() < 1e-12);
        let s = evaluate(20, &arcs, 5, 15);
        assert_eq!(s.covered, 20);
        assert!((s.throughput - 7.0).abs() < 1e-12);
        // The dead end holds no capacity; 10..20 carries the two routes that pass it.
        assert!((s.capacity[12] - 7.0).abs() < 1e-12, "{:?}", s.capacity);
        // Shared arcs: 0-10 (2) feeds both 10-20 (5) and 10-15-20 (5, 5): bottleneck 2.
        let shared = [
            arc(0, 10, 2.0),
            arc(10, 20, 5.0),
            arc(10, 15, 5.0),
            arc(15, 20, 5.0),
        ];
        assert!((max_flow(20, &shared) - 2.0).abs() < 1e-12);
        // No route, no flow; power saving arcs (rate 0) carry nothing.
        assert_eq!(max_flow(20, &[arc(0, 10, 5.0)]), 0.0);
        let asleep = [arc(0, 10, 5.0), arc(10, 20, 0.0)];
        assert_eq!(evaluate(20, &asleep, 0, 10).covered, 10);
    }

    #[test]
    fn a_second_replica_goes_where_it_raises_the_flow() {
        // A chain whose second range is slow: the joining node doubles it.
        let b = 20;
        let others = [hosted(0, 10, 1.0), hosted(10, 20, 4.0)];
        let s = best_range(b, &others, &me(1.0, 10)).unwrap();
        assert_eq!((s.start, s.end), (10, 20));
        // 100 tokens/s on the first half; 25 + 100 on the second: the flow is 100.
        assert!((s.throughput - 100.0).abs() < 1e-9, "{s:?}");
    }
}
