//! Slow, literal methods that the exact planner is checked against: the seed's segment DP over
//! `(blocks placed, used set, last peer)` exactly as in its appendix, and brute force over every
//! plan. Both work on the same [`Instance`] as [`crate::segment::solve`] and use the same
//! [`Instance::stage_ms`] and [`Instance::evaluate`], so their numbers are comparable bit for bit
//! where the arithmetic is the same. They are public so that tests and tools can use them on
//! small instances; they refuse large ones with a typed error instead of running for hours.

use std::collections::BTreeMap;

use crate::error::{PlanError, Result};
use crate::segment::{Instance, Objective, Solution, Stage, within};

/// The most peers the literal DP accepts.
pub const REFERENCE_PEER_LIMIT: usize = 12;
/// The most states (`(B+1) * 2^N * N`) the literal DP accepts.
pub const REFERENCE_STATE_LIMIT: u128 = 1 << 24;
/// The most peers brute force accepts.
pub const BRUTE_PEER_LIMIT: usize = 10;
/// The most complete plans brute force enumerates before it gives up.
pub const BRUTE_PLAN_LIMIT: u64 = 5_000_000;

/// How the literal DP combines a path value with a hop and a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// `v + hop + stage` (latency).
    Sum,
    /// `max(v, hop, stage)` (bottleneck).
    Max,
}

impl Combine {
    fn apply(self, v: f64, hop: f64, stage: f64) -> f64 {
        match self {
            // Left to right, as the seed's Python does.
            Combine::Sum => v + hop + stage,
            Combine::Max => v.max(hop).max(stage),
        }
    }
}

/// A plan found by the literal DP, with its objective value.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferencePlan {
    pub value_ms: f64,
    pub stages: Vec<Stage>,
}

type Key = (u32, u32, usize); // (blocks placed, used set, last peer), sorted as in the seed

/// The seed's segment DP (appendix `plan`), literally: states `(j, S, k)` in a sorted map,
/// processed in increasing `j`; a state is replaced only by a value better by more than 1e-12.
///
/// `threshold` restricts every stage and hop (and the return when `include_return`) to times
/// `<= threshold + 1e-9`: phase 2 of the throughput tie-break. With `Combine::Max`, the return
/// counts in the value only when `include_return`; with `Combine::Sum` it is always added
/// (latency includes it). Returns `Ok(None)` when no plan exists.
pub fn segment_dp(
    inst: &Instance,
    combine: Combine,
    include_return: bool,
    threshold: Option<f64>,
) -> Result<Option<ReferencePlan>> {
    inst.validate()?;
    let n = inst.peers.len();
    if n > REFERENCE_PEER_LIMIT {
        return Err(PlanError::TooManyPeers {
            what: "literal segment DP",
            count: n,
            limit: REFERENCE_PEER_LIMIT,
        });
    }
    let states = u128::from(inst.blocks + 1) * (1u128 << n) * n as u128;
    if states > REFERENCE_STATE_LIMIT {
        return Err(PlanError::TooLarge {
            what: "literal segment DP states",
            size: states,
            limit: REFERENCE_STATE_LIMIT,
        });
    }
    let thr = threshold.unwrap_or(f64::INFINITY);
    let b = inst.blocks;
    let mut h: BTreeMap<Key, (f64, Option<Key>)> = BTreeMap::new();
    for p in 0..n {
        let cap = inst.peers[p].max_blocks.min(b);
        if !within(inst.peers[p].up_ms, thr) {
            continue;
        }
        for len in 1..=cap {
            let stage = inst.stage_time(p, len);
            if !within(stage, thr) {
                break;
            }
            let key = (len, 1u32 << p, p);
            let v = combine.apply(0.0, inst.peers[p].up_ms, stage);
            if h.get(&key).is_none_or(|&(old, _)| v < old) {
                h.insert(key, (v, None));
            }
        }
    }
    for i in 1..b {
        let keys: Vec<Key> = h.range((i, 0, 0)..(i + 1, 0, 0)).map(|(k, _)| *k).collect();
        for key in keys {
            let (v, _) = h[&key];
            let (_, set, k) = key;
            for m in 0..n {
                if set >> m & 1 == 1 {
                    continue;
                }
                let hop = inst.links_ms[k][m];
                if !within(hop, thr) {
                    continue;
                }
                let cap = inst.peers[m].max_blocks;
                let last = b.min(i.saturating_add(cap));
                for j in (i + 1)..=last {
                    let stage = inst.stage_time(m, j - i);
                    if !within(stage, thr) {
                        break;
                    }
                    let nv = combine.apply(v, hop, stage);
                    let nk = (j, set | 1 << m, m);
                    let old = h.get(&nk).map_or(f64::INFINITY, |e| e.0);
                    if nv < old - 1e-12 {
                        h.insert(nk, (nv, Some(key)));
                    }
                }
            }
        }
    }
    let mut best: Option<(f64, Key)> = None;
    for (&key, &(v, _)) in h.range((b, 0, 0)..) {
        let down = inst.peers[key.2].down_ms;
        let tot = match combine {
            Combine::Sum => {
                if include_return && !within(down, thr) {
                    continue;
                }
                combine.apply(v, down, 0.0)
            }
            Combine::Max if include_return => combine.apply(v, down, 0.0),
            Combine::Max => v,
        };
        if best.is_none_or(|(bv, _)| tot < bv - 1e-12) {
            best = Some((tot, key));
        }
    }
    let Some((value_ms, mut key)) = best else {
        return Ok(None);
    };
    let mut stages = Vec::new();
    loop {
        let parent = h[&key].1;
        let start = parent.map_or(0, |p| p.0);
        stages.push(Stage {
            peer: key.2,
            start,
            end: key.0,
        });
        match parent {
            Some(p) => key = p,
            None => break,
        }
    }
    stages.reverse();
    Ok(Some(ReferencePlan { value_ms, stages }))
}

/// Section 7's planner built from the literal DP: for latency one `Sum` pass; for throughput
/// phase 1 (`Max`) then phase 2 (`Sum` restricted to `m* + 1e-9`).
pub fn two_phase(
    inst: &Instance,
    objective: Objective,
    include_return: bool,
) -> Result<Option<Solution>> {
    let plan = match objective {
        Objective::Latency => segment_dp(inst, Combine::Sum, include_return, None)?,
        Objective::Throughput => match segment_dp(inst, Combine::Max, include_return, None)? {
            None => None,
            Some(p1) => segment_dp(inst, Combine::Sum, include_return, Some(p1.value_ms))?,
        },
    };
    let Some(plan) = plan else { return Ok(None) };
    let e = inst.evaluate(&plan.stages, include_return)?;
    Ok(Some(Solution {
        stages: plan.stages,
        latency_ms: e.latency_ms,
        bottleneck_ms: e.bottleneck_ms,
    }))
}

/// What brute force found.
#[derive(Clone, Debug, PartialEq)]
pub struct BruteForce {
    /// Number of valid plans (one range per peer, memory respected).
    pub plans: u64,
    /// Least latency and a plan that reaches it (the first in enumeration order).
    pub latency: Option<(f64, Vec<Stage>)>,
    /// Least bottleneck `m*`, then the least latency among plans with bottleneck
    /// `<= m* + 1e-9`, and such a plan.
    pub throughput: Option<(f64, f64, Vec<Stage>)>,
}

/// Every plan: every ordered choice of distinct peers and every split of the blocks among them.
pub fn brute_force(inst: &Instance, include_return: bool) -> Result<BruteForce> {
    inst.validate()?;
    let n = inst.peers.len();
    if n > BRUTE_PEER_LIMIT {
        return Err(PlanError::TooManyPeers {
            what: "brute force",
            count: n,
            limit: BRUTE_PEER_LIMIT,
        });
    }
    let mut all: Vec<(f64, f64, Vec<Stage>)> = Vec::new();
    let mut count = 0u64;
    let mut stages = Vec::new();
    enumerate(inst, 0, 0, &mut stages, &mut |plan: &[Stage]| {
        count += 1;
        if count > BRUTE_PLAN_LIMIT {
            return Err(PlanError::TooLarge {
                what: "brute force plans",
                size: u128::from(count),
                limit: u128::from(BRUTE_PLAN_LIMIT),
            });
        }
        let e = inst.evaluate(plan, include_return)?;
        all.push((e.bottleneck_ms, e.latency_ms, plan.to_vec()));
        Ok(())
    })?;
    let mut latency: Option<(f64, Vec<Stage>)> = None;
    let mut m_star = f64::INFINITY;
    for (m, lat, plan) in &all {
        if latency.as_ref().is_none_or(|(l, _)| lat < l) {
            latency = Some((*lat, plan.clone()));
        }
        m_star = m_star.min(*m);
    }
    let mut throughput: Option<(f64, f64, Vec<Stage>)> = None;
    for (m, lat, plan) in &all {
        if within(*m, m_star) && throughput.as_ref().is_none_or(|(_, l, _)| lat < l) {
            throughput = Some((m_star, *lat, plan.clone()));
        }
    }
    Ok(BruteForce {
        plans: count,
        latency,
        throughput,
    })
}

fn enumerate(
    inst: &Instance,
    used: u32,
    start: u32,
    stages: &mut Vec<Stage>,
    visit: &mut dyn FnMut(&[Stage]) -> Result<()>,
) -> Result<()> {
    if start == inst.blocks {
        return visit(stages);
    }
    for p in 0..inst.peers.len() {
        if used >> p & 1 == 1 {
            continue;
        }
        let cap = inst.peers[p].max_blocks.min(inst.blocks - start);
        for len in 1..=cap {
            stages.push(Stage {
                peer: p,
                start,
                end: start + len,
            });
            enumerate(inst, used | 1 << p, start + len, stages, visit)?;
            stages.pop();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::PeerCost;
    use crate::segment::tests::e2;

    #[test]
    fn e2_has_1099_valid_plans() {
        assert_eq!(brute_force(&e2(), true).unwrap().plans, 1099);
    }

    #[test]
    fn e2_brute_force_matches_the_seed() {
        let bf = brute_force(&e2(), true).unwrap();
        let (lat, _) = bf.latency.unwrap();
        assert!((lat - 25.0).abs() < 1e-9);
        let (m, lat, _) = bf.throughput.unwrap();
        assert!((m - 5.0).abs() < 1e-9 && (lat - 26.0).abs() < 1e-9);
    }

    #[test]
    fn e2_literal_dp_matches_the_seed() {
        let lat = two_phase(&e2(), Objective::Latency, true).unwrap().unwrap();
        assert!((lat.latency_ms - 25.0).abs() < 1e-9);
        let thr = two_phase(&e2(), Objective::Throughput, true)
            .unwrap()
            .unwrap();
        assert!((thr.bottleneck_ms - 5.0).abs() < 1e-9);
        assert!((thr.latency_ms - 26.0).abs() < 1e-9);
        let s = |peer, start, end| Stage { peer, start, end };
        assert_eq!(thr.stages, vec![s(2, 0, 1), s(1, 1, 6), s(0, 6, 8)]);
    }

    #[test]
    fn e2_runner_up_latency_is_26_twice() {
        // The seed: "Runner-up 26.0 (two plans)". Counted over brute force's plans.
        let inst = e2();
        let mut at_26 = 0;
        let mut stages = Vec::new();
        enumerate(&inst, 0, 0, &mut stages, &mut |plan: &[Stage]| {
            let e = inst.evaluate(plan, true)?;
            if (e.latency_ms - 26.0).abs() < 1e-9 {
                at_26 += 1;
            }
            assert!(e.latency_ms >= 25.0 - 1e-9);
            Ok(())
        })
        .unwrap();
        assert_eq!(at_26, 2);
    }

    /// A single DP that keeps, per state, the lexicographically least (bottleneck, latency)
    /// pair: the tie-break that section 7 says is not exact. Returns the final pair.
    fn lexicographic_dp(inst: &Instance) -> (f64, f64) {
        let b = inst.blocks;
        let better = |x: (f64, f64), y: Option<&(f64, f64)>| {
            y.is_none_or(|y| x.0 < y.0 || (x.0 == y.0 && x.1 < y.1))
        };
        let mut h: BTreeMap<Key, (f64, f64)> = BTreeMap::new();
        for (p, peer) in inst.peers.iter().enumerate() {
            for len in 1..=peer.max_blocks.min(b) {
                let st = inst.stage_time(p, len);
                let v = (peer.up_ms.max(st), peer.up_ms + st);
                if better(v, h.get(&(len, 1 << p, p))) {
                    h.insert((len, 1 << p, p), v);
                }
            }
        }
        for i in 1..b {
            let states: Vec<(Key, (f64, f64))> = h
                .range((i, 0, 0)..(i + 1, 0, 0))
                .map(|(k, v)| (*k, *v))
                .collect();
            for ((_, set, k), v) in states {
                for m in (0..inst.peers.len()).filter(|m| set >> m & 1 == 0) {
                    let hop = inst.links_ms[k][m];
                    for j in (i + 1)..=b.min(i + inst.peers[m].max_blocks) {
                        let st = inst.stage_time(m, j - i);
                        let nv = (v.0.max(hop).max(st), v.1 + hop + st);
                        if better(nv, h.get(&(j, set | 1 << m, m))) {
                            h.insert((j, set | 1 << m, m), nv);
                        }
                    }
                }
            }
        }
        let mut best: Option<(f64, f64)> = None;
        for (&(_, _, k), &v) in h.range((b, 0, 0)..) {
            let down = inst.peers[k].down_ms;
            let tot = (v.0.max(down), v.1 + down);
            if better(tot, best.as_ref()) {
                best = Some(tot);
            }
        }
        best.unwrap()
    }

    #[test]
    fn a_single_lexicographic_dp_is_not_exact_and_two_phase_is() {
        // Found by random search: three peers of one block each. Two prefixes reach the same
        // state; the one with the smaller bottleneck so far has the larger latency, and the
        // final bottleneck (5) does not depend on which is kept, so keeping it loses 1 ms.
        let peer = |ms_per_block, up_ms, down_ms| PeerCost {
            ms_per_block,
            max_blocks: 1,
            up_ms,
            down_ms,
            floor_ms: 0.0,
        };
        let inst = Instance {
            blocks: 3,
            peers: vec![
                peer(4.0, 5.0, 5.0),
                peer(2.0, 4.0, 5.0),
                peer(2.0, 5.0, 3.0),
            ],
            links_ms: vec![
                vec![0.0, 5.0, 5.0],
                vec![0.0, 0.0, 0.0],
                vec![4.0, 1.0, 0.0],
            ],
        };
        assert_eq!(lexicographic_dp(&inst), (5.0, 20.0));
        let two = two_phase(&inst, Objective::Throughput, true)
            .unwrap()
            .unwrap();
        assert_eq!((two.bottleneck_ms, two.latency_ms), (5.0, 19.0));
        let fast = crate::segment::solve(&inst, Objective::Throughput, true).unwrap();
        assert_eq!((fast.bottleneck_ms, fast.latency_ms), (5.0, 19.0));
        let (m, lat, _) = brute_force(&inst, true).unwrap().throughput.unwrap();
        assert_eq!((m, lat), (5.0, 19.0));
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut inst = e2();
        let p = inst.peers[0].clone();
        inst.peers = vec![p; BRUTE_PEER_LIMIT + 1];
        inst.links_ms = vec![vec![1.0; BRUTE_PEER_LIMIT + 1]; BRUTE_PEER_LIMIT + 1];
        assert!(matches!(
            brute_force(&inst, true),
            Err(PlanError::TooManyPeers { .. })
        ));
        inst.blocks = 4000;
        assert!(matches!(
            segment_dp(&inst, Combine::Sum, true, None),
            Err(PlanError::TooLarge { .. })
        ));
    }
}
