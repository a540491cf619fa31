//! `swarm-node --blocks auto [--max-blocks N]`: which contiguous range a joining (or re-planning)
//! node takes, Petals-style, energy-aware. Pure decisions; the node supplies what it measured and
//! what the swarm announced, and acts on the answer.
//!
//! # The model
//!
//! * A peer hosting `len` blocks with a compute speed of `r` blocks per second (`1000 /
//!   ms_per_block`) passes `r / len` tokens per second through its range: a token of a
//!   Sunswarm route goes through the whole range of each hop. That rate is credited to each
//!   block of the range. (Petals divides a server's speed by the average number of blocks a
//!   request uses on it; Sunswarm routes use whole ranges, so the divisor is the range length.)
//! * The rate is weighed by the peer's availability: its max job rate `lambda` in `[0, 1]`
//!   (`paper-model.md` eq. 5; 1 on mains), and 0 in power saving. A peer that can take only a
//!   fifth of the jobs adds a fifth of its speed.
//! * A block's capacity is the sum of the weighed rates of the peers hosting it; the swarm's
//!   throughput is the least capacity over the blocks (0 while any block has no capacity).
//!
//! # The choice
//!
//! [`best_range`] tries every contiguous range of at most `max_blocks` blocks and keeps the one
//! whose resulting capacity vector is the largest in **leximin** order (compare the sorted
//! capacities from the smallest up). That order puts coverage first (fewer zero-capacity blocks
//! wins), then the swarm's throughput (the smallest capacity), then the next weakest blocks, and
//! so on, so ties in throughput go to the range that helps the most other blocks. Remaining ties
//! go to the lowest start, then the longest range: deterministic, so two nodes that see the same
//! swarm agree. "Given everyone else stays": the other peers' ranges are taken as fixed.
//!
//! # Moving
//!
//! A node that already hosts a range re-plans when the coverage changes ([`replan_reason`]: a
//! block lost a host or became uncovered), and moves only if [`should_move`] says the gain is
//! clear: more blocks covered, or, with the model covered either way, a throughput at least
//! `1 + min_gain` times the current one ([`Hysteresis`], 20 % by default; Petals' own default
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

/// Above this many `candidates x blocks` steps, [`best_range`] tries only ranges of exactly
/// `max_blocks` blocks (Petals' rule), so that a 4096-block model does not take minutes.
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
    /// Each block's capacity, tokens per second.
    pub capacity: Vec<f64>,
    /// Blocks with a capacity above 0.
    pub covered: u32,
    /// The least capacity, tokens per second; 0 unless every block is covered.
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

/// Each block's capacity from the other peers alone (validated).
fn base_capacity(blocks: u32, others: &[HostedRange]) -> Result<Vec<f64>> {
    check_blocks(blocks)?;
    let mut cap = vec![0.0; blocks as usize];
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
        let rate = tokens_per_s * availability(h.max_job_rate, h.power_saving);
        for c in &mut cap[h.start as usize..h.end as usize] {
            *c += rate;
        }
    }
    Ok(cap)
}

fn score(base: &[f64], me: &OwnPeer, start: u32, end: u32) -> RangeScore {
    let mut capacity = base.to_vec();
    let rate = 1000.0 / me.ms_per_block / f64::from(end - start)
        * availability(me.max_job_rate, me.power_saving);
    for c in &mut capacity[start as usize..end as usize] {
        *c += rate;
    }
    let covered = capacity.iter().filter(|&&c| c > 0.0).count() as u32;
    let throughput = if covered as usize == capacity.len() {
        capacity.iter().copied().fold(f64::INFINITY, f64::min)
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

/// The swarm with this node on `start..end` and the others where they are.
pub fn score_range(
    blocks: u32,
    others: &[HostedRange],
    me: &OwnPeer,
    start: u32,
    end: u32,
) -> Result<RangeScore> {
    check_own(me)?;
    let base = base_capacity(blocks, others)?;
    check_range(blocks, start, end, || "own range".into())?;
    Ok(score(&base, me, start, end))
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

/// The range that raises the swarm's throughput most, given everyone else stays (module docs).
pub fn best_range(blocks: u32, others: &[HostedRange], me: &OwnPeer) -> Result<RangeScore> {
    check_own(me)?;
    let base = base_capacity(blocks, others)?;
    let max_len = me.max_blocks.min(blocks);
    let candidates: u64 = (1..=max_len).map(|l| u64::from(blocks - l + 1)).sum();
    let lengths: Vec<u32> = if candidates.saturating_mul(u64::from(blocks)) > SEARCH_BUDGET {
        vec![max_len]
    } else {
        // Longest first, so that on a full tie the longest range at the lowest start wins.
        (1..=max_len).rev().collect()
    };
    // The best so far, with its leximin key computed only when a tie needs it: the first two
    // leximin elements are the number of uncovered blocks and the least positive capacity, so
    // comparing those first decides almost every pair without sorting.
    struct Best {
        score: RangeScore,
        least_positive: f64,
        key: Option<Vec<f64>>,
    }
    let least_positive = |cap: &[f64]| {
        cap.iter()
            .copied()
            .filter(|&c| c > 0.0)
            .fold(f64::INFINITY, f64::min)
    };
    let mut best: Option<Best> = None;
    for start in 0..blocks {
        for &len in &lengths {
            let end = start + len;
            if end > blocks {
                continue;
            }
            let s = score(&base, me, start, end);
            let lp = least_positive(&s.capacity);
            let better = match &mut best {
                None => true,
                Some(b) => match s.covered.cmp(&b.score.covered) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal if !nearly_equal(lp, b.least_positive) => lp > b.least_positive,
                    Ordering::Equal => {
                        let key = b.key.get_or_insert_with(|| sorted(&b.score.capacity));
                        leximin(&sorted(&s.capacity), key) == Ordering::Greater
                    }
                },
            };
            if better {
                best = Some(Best {
                    score: s,
                    least_positive: lp,
                    key: None,
                });
            }
        }
    }
    // At least one candidate exists: blocks >= 1 and max_len >= 1.
    best.map(|b| b.score).ok_or(PlanError::Infeasible {
        blocks,
        reason: "no range fits".into(),
    })
}

/// Whether moving from `current` to `best` is a clear gain: more blocks covered, or the model
/// covered either way and a throughput above `current * (1 + min_gain)`. Fewer blocks covered,
/// or a partial coverage either way with no more blocks, is never a reason to move.
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
    let base = base_capacity(blocks, others)?;
    let current = score(&base, me, start, end);
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
        let all = others_of(nodes, usize::MAX);
        let cap = base_capacity(blocks, &all).unwrap();
        if cap.iter().all(|&c| c > 0.0) {
            cap.iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            0.0
        }
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
        // Each of the first three covers as much new ground as it can: 10, then 22, then all.
        assert_eq!(covered, vec![10, 22, 30, 30]);
        assert!(coverage(b, &nodes).is_full());
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
}
