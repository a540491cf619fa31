//! The EdgeShard paper's problem and algorithms, as seed 003 sections 1-3 state them, kept so that
//! the worked examples E1 and E3 are tests and so that the reason Sunswarm does not use
//! Algorithm 1 stays demonstrable.
//!
//! The paper's form differs from Sunswarm's ([`crate::segment`]): layers have per-device times
//! and per-layer memory, layer 0 must run on the source device `src` (it holds the user's data),
//! the output returns to `src`, and a hop costs `comm(size, k, j) = size / bandwidth[k][j] +
//! latency[k][j]` (kbit / Mbps = ms), 0 on the same device.
//!
//! * [`algorithm1`]: the latency DP with one memory vector carried per cell. Exact only when
//!   memory does not bind (E3 shows it returning 10.6 ms where 9.6 ms exists).
//! * [`algorithm2`]: the bitmask throughput DP over `(layers done, devices used, last device)`.
//! * [`segment_dp`]: the same DP with `sum` or `max`, the exact one-stage-per-device optimum.
//! * [`brute_force_latency`], [`brute_force_stages`]: exhaustive checks for small instances.

use std::collections::BTreeMap;

use crate::error::{PlanError, Result, non_negative, positive};

/// Most devices the paper methods accept (the bitmask DP's `2^N`).
pub const PAPER_DEVICE_LIMIT: usize = 16;
/// Most DP states `(L+1) * 2^N * N` the bitmask DP accepts.
pub const PAPER_STATE_LIMIT: u128 = 1 << 24;
/// Most placements the brute force enumerates.
pub const PAPER_BRUTE_LIMIT: u128 = 10_000_000;
/// Memory comparisons tolerate this much rounding (GiB or whatever unit the instance uses).
const MEM_EPS: f64 = 1e-9;

/// An EdgeShard instance (seed 003, section 1).
#[derive(Clone, Debug, PartialEq)]
pub struct PaperInstance {
    /// `layer_ms[device][layer]`: execution time of a layer on a device, ms.
    pub layer_ms: Vec<Vec<f64>>,
    /// Memory each layer needs.
    pub layer_mem: Vec<f64>,
    /// Memory available on each device (same unit as `layer_mem`).
    pub device_mem: Vec<f64>,
    /// `bandwidth_mbps[k][j]`, Mbps; the diagonal is never read.
    pub bandwidth_mbps: Vec<Vec<f64>>,
    /// `latency_ms[k][j]`, the fixed part of a hop, ms; the diagonal is never read.
    pub latency_ms: Vec<Vec<f64>>,
    /// Activation size sent between consecutive layers, kbit.
    pub act_kbit: f64,
    /// Output of the last layer returned to `src`, kbit.
    pub out_kbit: f64,
    /// The source device: runs layer 0 and receives the output.
    pub src: usize,
}

/// A layer-by-layer placement (Algorithm 1, brute force): `devices[i]` runs layer `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlacement {
    pub devices: Vec<usize>,
    pub latency_ms: f64,
}

/// What Algorithm 1 computed: its answer (`None` when it reports "infeasible") and its table.
#[derive(Clone, Debug, PartialEq)]
pub struct Algorithm1 {
    pub best: Option<LayerPlacement>,
    /// `table[i][j]` = `D[i][j]`, least latency of layers `0..=i` with layer `i` on `j` along the
    /// path the DP kept; `f64::INFINITY` where it found none.
    pub table: Vec<Vec<f64>>,
}

/// One stage of a stage placement: `device` runs layers `start..end` (half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaperStage {
    pub device: usize,
    pub start: usize,
    pub end: usize,
}

/// A placement of one contiguous stage per device, with its objective value.
#[derive(Clone, Debug, PartialEq)]
pub struct StagePlacement {
    pub stages: Vec<PaperStage>,
    pub value_ms: f64,
}

/// How stage values combine: latency (`Sum`) or the pipeline bottleneck (`Max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaperObjective {
    Sum,
    Max,
}

impl PaperObjective {
    fn apply(self, a: f64, b: f64, c: f64) -> f64 {
        match self {
            PaperObjective::Sum => a + b + c,
            PaperObjective::Max => a.max(b).max(c),
        }
    }
}

impl PaperInstance {
    fn devices(&self) -> usize {
        self.device_mem.len()
    }

    fn layers(&self) -> usize {
        self.layer_mem.len()
    }

    /// Checks shapes and numbers (finite, non-negative; bandwidths positive; `src` in range).
    pub fn validate(&self) -> Result<()> {
        let n = self.devices();
        let l = self.layers();
        if n == 0 {
            return Err(PlanError::NoPeers);
        }
        if l == 0 {
            return Err(PlanError::ZeroBlocks);
        }
        if self.src >= n {
            return Err(PlanError::Index {
                what: "source device",
                index: self.src,
                len: n,
            });
        }
        let shape = |what: String, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(PlanError::Shape {
                    what,
                    expected,
                    got,
                })
            }
        };
        shape("layer_ms (devices)".into(), n, self.layer_ms.len())?;
        shape("bandwidth_mbps (rows)".into(), n, self.bandwidth_mbps.len())?;
        shape("latency_ms (rows)".into(), n, self.latency_ms.len())?;
        for d in 0..n {
            shape(format!("layer_ms[{d}]"), l, self.layer_ms[d].len())?;
            shape(
                format!("bandwidth_mbps[{d}]"),
                n,
                self.bandwidth_mbps[d].len(),
            )?;
            shape(format!("latency_ms[{d}]"), n, self.latency_ms[d].len())?;
            non_negative(|| format!("device_mem[{d}]"), self.device_mem[d])?;
            for (i, &t) in self.layer_ms[d].iter().enumerate() {
                non_negative(|| format!("layer_ms[{d}][{i}]"), t)?;
            }
            for j in 0..n {
                if j != d {
                    positive(
                        || format!("bandwidth_mbps[{d}][{j}]"),
                        self.bandwidth_mbps[d][j],
                    )?;
                    non_negative(|| format!("latency_ms[{d}][{j}]"), self.latency_ms[d][j])?;
                }
            }
        }
        for (i, &m) in self.layer_mem.iter().enumerate() {
            non_negative(|| format!("layer_mem[{i}]"), m)?;
        }
        non_negative(|| "act_kbit".into(), self.act_kbit)?;
        non_negative(|| "out_kbit".into(), self.out_kbit)?;
        Ok(())
    }

    /// `comm(size, k, j) = size / B[k][j] + lat[k][j]`, 0 on the same device.
    pub fn comm(&self, size_kbit: f64, k: usize, j: usize) -> f64 {
        if k == j {
            0.0
        } else {
            size_kbit / self.bandwidth_mbps[k][j] + self.latency_ms[k][j]
        }
    }

    fn check_devices(&self, what: &'static str) -> Result<()> {
        if self.devices() > PAPER_DEVICE_LIMIT {
            return Err(PlanError::TooManyPeers {
                what,
                count: self.devices(),
                limit: PAPER_DEVICE_LIMIT,
            });
        }
        Ok(())
    }
}

/// Algorithm 1 of the seed (3.1), exactly: `D[i][j]` over layers and devices, one vector of
/// remaining memory carried per cell, predecessors tried in ascending order with a strict `<`
/// (the first minimum stays), answer `min_j D[L-1][j]` with the smallest `j` on ties.
pub fn algorithm1(inst: &PaperInstance) -> Result<Algorithm1> {
    inst.validate()?;
    inst.check_devices("Algorithm 1")?;
    let n = inst.devices();
    let l = inst.layers();
    let src = inst.src;
    let mut d = vec![vec![f64::INFINITY; n]; l];
    let mut par: Vec<Vec<Option<usize>>> = vec![vec![None; n]; l];
    let mut rem: Vec<Vec<Option<Vec<f64>>>> = vec![vec![None; n]; l];
    if inst.layer_mem[0] <= inst.device_mem[src] + MEM_EPS {
        let mut r = inst.device_mem.clone();
        r[src] -= inst.layer_mem[0];
        // A one-layer model returns from src to src, which costs 0.
        d[0][src] = inst.layer_ms[src][0];
        rem[0][src] = Some(r);
    }
    for i in 1..l {
        for j in 0..n {
            for k in 0..n {
                let Some(prev_rem) = &rem[i - 1][k] else {
                    continue;
                };
                if !d[i - 1][k].is_finite() || prev_rem[j] + MEM_EPS < inst.layer_mem[i] {
                    continue;
                }
                let mut c = d[i - 1][k] + inst.layer_ms[j][i] + inst.comm(inst.act_kbit, k, j);
                if i == l - 1 {
                    c += inst.comm(inst.out_kbit, j, src);
                }
                if c < d[i][j] {
                    let mut r = prev_rem.clone();
                    r[j] -= inst.layer_mem[i];
                    d[i][j] = c;
                    par[i][j] = Some(k);
                    rem[i][j] = Some(r);
                }
            }
        }
    }
    let mut best: Option<(f64, usize)> = None;
    for (j, &v) in d[l - 1].iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(b, _)| v < b) {
            best = Some((v, j));
        }
    }
    let best = best.map(|(latency_ms, mut j)| {
        let mut devices = vec![j];
        for i in (1..l).rev() {
            // Every finite cell past layer 0 has a parent.
            j = par[i][j].unwrap_or(src);
            devices.push(j);
        }
        devices.reverse();
        LayerPlacement {
            devices,
            latency_ms,
        }
    });
    Ok(Algorithm1 { best, table: d })
}

/// Algorithm 2 of the seed (3.2): the bitmask DP for the pipeline bottleneck; `include_return`
/// adds the output's hop back to `src` to the bottleneck (the unofficial code leaves it out).
pub fn algorithm2(inst: &PaperInstance, include_return: bool) -> Result<Option<StagePlacement>> {
    segment_dp(inst, PaperObjective::Max, include_return)
}

type Key = (usize, u32, usize); // (layers done, used set, last device)

/// The one-stage-per-device DP over `(layers done, used set, last device)` with `sum` (latency,
/// exact under "one contiguous stage per device") or `max` (Algorithm 2). The first stage is on
/// `src` and starts at layer 0; a stage's memory is the sum of its layers' memory. With
/// `include_return` the output's hop to `src` is added (`Sum`) or maxed in (`Max`).
pub fn segment_dp(
    inst: &PaperInstance,
    objective: PaperObjective,
    include_return: bool,
) -> Result<Option<StagePlacement>> {
    inst.validate()?;
    inst.check_devices("paper segment DP")?;
    let n = inst.devices();
    let l = inst.layers();
    let states = (l as u128 + 1) * (1u128 << n) * n as u128;
    if states > PAPER_STATE_LIMIT {
        return Err(PlanError::TooLarge {
            what: "paper segment DP states",
            size: states,
            limit: PAPER_STATE_LIMIT,
        });
    }
    let src = inst.src;
    let mut h: BTreeMap<Key, (f64, Option<Key>)> = BTreeMap::new();
    // The source's stage is [0, j].
    let (mut time, mut mem) = (0.0, 0.0);
    for j in 0..l {
        time += inst.layer_ms[src][j];
        mem += inst.layer_mem[j];
        if mem > inst.device_mem[src] + MEM_EPS {
            break;
        }
        h.insert((j + 1, 1 << src, src), (time, None));
    }
    for i in 1..l {
        let keys: Vec<Key> = h.range((i, 0, 0)..(i + 1, 0, 0)).map(|(k, _)| *k).collect();
        for key in keys {
            let (v, _) = h[&key];
            let (_, set, k) = key;
            for dev in 0..n {
                if set >> dev & 1 == 1 {
                    continue;
                }
                let hop = inst.comm(inst.act_kbit, k, dev);
                let (mut time, mut mem) = (0.0, 0.0);
                for j in i..l {
                    time += inst.layer_ms[dev][j];
                    mem += inst.layer_mem[j];
                    if mem > inst.device_mem[dev] + MEM_EPS {
                        break;
                    }
                    let nv = objective.apply(v, time, hop);
                    let nk = (j + 1, set | 1 << dev, dev);
                    let old = h.get(&nk).map_or(f64::INFINITY, |e| e.0);
                    if nv < old - 1e-12 {
                        h.insert(nk, (nv, Some(key)));
                    }
                }
            }
        }
    }
    let mut best: Option<(f64, Key)> = None;
    for (&key, &(v, _)) in h.range((l, 0, 0)..) {
        let tot = if include_return {
            objective.apply(v, inst.comm(inst.out_kbit, key.2, src), 0.0)
        } else {
            v
        };
        if best.is_none_or(|(b, _)| tot < b - 1e-12) {
            best = Some((tot, key));
        }
    }
    let Some((value_ms, mut key)) = best else {
        return Ok(None);
    };
    let mut stages = Vec::new();
    loop {
        let parent = h[&key].1;
        stages.push(PaperStage {
            device: key.2,
            start: parent.map_or(0, |p| p.0),
            end: key.0,
        });
        match parent {
            Some(p) => key = p,
            None => break,
        }
    }
    stages.reverse();
    Ok(Some(StagePlacement { stages, value_ms }))
}

/// Latency of a layer placement (layer 0 on `src`, any device any number of layers, memory
/// summed per device), or `None` if it breaks memory or the source rule.
pub fn placement_latency(inst: &PaperInstance, devices: &[usize]) -> Option<f64> {
    inst.validate().ok()?;
    let l = inst.layers();
    if devices.len() != l || devices.first() != Some(&inst.src) {
        return None;
    }
    let mut used = vec![0.0; inst.devices()];
    for (i, &d) in devices.iter().enumerate() {
        *used.get_mut(d)? += inst.layer_mem[i];
    }
    if used
        .iter()
        .zip(&inst.device_mem)
        .any(|(u, m)| *u > m + MEM_EPS)
    {
        return None;
    }
    let mut total = inst.layer_ms[devices[0]][0];
    for i in 1..l {
        total +=
            inst.comm(inst.act_kbit, devices[i - 1], devices[i]) + inst.layer_ms[devices[i]][i];
    }
    Some(total + inst.comm(inst.out_kbit, devices[l - 1], inst.src))
}

/// The exact latency optimum of section 2.1 (a device may host several runs of layers): every
/// one of the `N^(L-1)` placements with layer 0 on `src`.
pub fn brute_force_latency(inst: &PaperInstance) -> Result<Option<LayerPlacement>> {
    inst.validate()?;
    let n = inst.devices();
    let l = inst.layers();
    let size = (n as u128).checked_pow(u32::try_from(l - 1).unwrap_or(u32::MAX));
    match size {
        Some(s) if s <= PAPER_BRUTE_LIMIT => {}
        _ => {
            return Err(PlanError::TooLarge {
                what: "paper brute force placements",
                size: size.unwrap_or(u128::MAX),
                limit: PAPER_BRUTE_LIMIT,
            });
        }
    }
    // Layer 0 on the source; the odometer over layers 1.. starts at device 0.
    let mut devices = vec![0; l];
    devices[0] = inst.src;
    let mut best: Option<LayerPlacement> = None;
    loop {
        if let Some(lat) = placement_latency(inst, &devices)
            && best.as_ref().is_none_or(|b| lat < b.latency_ms)
        {
            best = Some(LayerPlacement {
                devices: devices.clone(),
                latency_ms: lat,
            });
        }
        // Next placement of layers 1..L-1 in lexicographic order (an odometer).
        let mut i = l - 1;
        loop {
            if i == 0 {
                return Ok(best);
            }
            devices[i] += 1;
            if devices[i] < n {
                break;
            }
            devices[i] = 0;
            i -= 1;
        }
    }
}

/// Every placement of one contiguous stage per device (first stage on `src` from layer 0),
/// scored with `objective`; the exhaustive check of [`segment_dp`] and [`algorithm2`].
pub fn brute_force_stages(
    inst: &PaperInstance,
    objective: PaperObjective,
    include_return: bool,
) -> Result<Option<StagePlacement>> {
    inst.validate()?;
    if inst.devices() > 10 || inst.layers() > 12 {
        return Err(PlanError::TooLarge {
            what: "paper brute force stages (devices <= 10, layers <= 12)",
            size: (inst.devices() * inst.layers()) as u128,
            limit: 120,
        });
    }
    let mut best: Option<StagePlacement> = None;
    let mut stages = Vec::new();
    stage_search(
        inst,
        objective,
        include_return,
        0,
        0,
        &mut stages,
        &mut best,
    );
    Ok(best)
}

fn stage_search(
    inst: &PaperInstance,
    objective: PaperObjective,
    include_return: bool,
    used: u32,
    start: usize,
    stages: &mut Vec<PaperStage>,
    best: &mut Option<StagePlacement>,
) {
    let l = inst.layers();
    if start == l {
        let mut v = 0.0;
        let mut prev: Option<usize> = None;
        for s in stages.iter() {
            let hop = prev.map_or(0.0, |k| inst.comm(inst.act_kbit, k, s.device));
            let time: f64 = (s.start..s.end).map(|i| inst.layer_ms[s.device][i]).sum();
            v = objective.apply(v, time, hop);
            prev = Some(s.device);
        }
        if include_return && let Some(k) = prev {
            v = objective.apply(v, inst.comm(inst.out_kbit, k, inst.src), 0.0);
        }
        if best.as_ref().is_none_or(|b| v < b.value_ms) {
            *best = Some(StagePlacement {
                stages: stages.clone(),
                value_ms: v,
            });
        }
        return;
    }
    for dev in 0..inst.devices() {
        // The first stage is the source's; later stages are on unused devices.
        if (start == 0) != (dev == inst.src) || used >> dev & 1 == 1 {
            continue;
        }
        let mut mem = 0.0;
        for end in (start + 1)..=l {
            mem += inst.layer_mem[end - 1];
            if mem > inst.device_mem[dev] + MEM_EPS {
                break;
            }
            stages.push(PaperStage {
                device: dev,
                start,
                end,
            });
            stage_search(
                inst,
                objective,
                include_return,
                used | 1 << dev,
                end,
                stages,
                best,
            );
            stages.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Seed 003, E1: three devices, five layers.
    fn e1() -> PaperInstance {
        let bw = |a: usize, b: usize| match (a.min(b), a.max(b)) {
            (0, 1) => 100.0,
            (0, 2) => 10.0,
            _ => 1000.0,
        };
        PaperInstance {
            layer_ms: vec![
                vec![1.0, 10.0, 10.0, 10.0, 2.0],
                vec![1.0, 6.0, 6.0, 6.0, 1.5],
                vec![0.5, 1.0, 1.0, 1.0, 0.5],
            ],
            layer_mem: vec![1.0, 2.0, 2.0, 2.0, 1.0],
            device_mem: vec![3.0, 6.0, 8.0],
            bandwidth_mbps: (0..3).map(|a| (0..3).map(|b| bw(a, b)).collect()).collect(),
            latency_ms: vec![vec![1.0; 3]; 3],
            act_kbit: 64.0,
            out_kbit: 512.0,
            src: 0,
        }
    }

    /// Seed 003, E3: Algorithm 1 is not exact when memory binds.
    fn e3() -> PaperInstance {
        PaperInstance {
            layer_ms: vec![
                vec![2.0, 6.0, 2.0, 4.0],
                vec![4.0, 4.0, 1.0, 2.0],
                vec![4.0, 4.0, 5.0, 3.0],
            ],
            layer_mem: vec![1.0; 4],
            device_mem: vec![1.0, 2.0, 3.0],
            bandwidth_mbps: vec![vec![100.0; 3]; 3],
            latency_ms: vec![vec![0.0; 3]; 3],
            act_kbit: 20.0,
            out_kbit: 20.0,
            src: 0,
        }
    }

    fn stage(device: usize, start: usize, end: usize) -> PaperStage {
        PaperStage { device, start, end }
    }

    #[test]
    fn e1_latency_is_20_084_by_all_three_methods() {
        let a1 = algorithm1(&e1()).unwrap().best.unwrap();
        assert!(close(a1.latency_ms, 20.084), "{a1:?}");
        assert_eq!(a1.devices, vec![0, 2, 2, 2, 1]);
        let bf = brute_force_latency(&e1()).unwrap().unwrap();
        assert!(close(bf.latency_ms, 20.084));
        assert_eq!(bf.devices, vec![0, 2, 2, 2, 1]);
        let seg = segment_dp(&e1(), PaperObjective::Sum, true)
            .unwrap()
            .unwrap();
        assert!(close(seg.value_ms, 20.084));
        assert_eq!(
            seg.stages,
            vec![stage(0, 0, 1), stage(2, 1, 4), stage(1, 4, 5)]
        );
    }

    #[test]
    fn e1_comparison_placements_match_the_seed() {
        let lat = |d: &[usize]| placement_latency(&e1(), d);
        assert!(close(lat(&[0, 2, 2, 2, 0]).unwrap(), 20.8));
        assert!(close(lat(&[0, 2, 2, 2, 2]).unwrap(), 64.1));
        assert!(close(lat(&[0, 1, 1, 2, 2]).unwrap(), 69.404));
        assert_eq!(lat(&[0, 0, 0, 0, 0]), None);
        assert_eq!(lat(&[0, 1, 1, 1, 1]), None);
    }

    #[test]
    fn e1_throughput_is_6_without_return_and_7_4_with() {
        let without = algorithm2(&e1(), false).unwrap().unwrap();
        assert!(close(without.value_ms, 6.0), "{without:?}");
        assert_eq!(
            without.stages,
            vec![stage(0, 0, 1), stage(1, 1, 2), stage(2, 2, 5)]
        );
        let with = algorithm2(&e1(), true).unwrap().unwrap();
        assert!(close(with.value_ms, 7.4), "{with:?}");
        assert_eq!(
            with.stages,
            vec![stage(0, 0, 1), stage(2, 1, 4), stage(1, 4, 5)]
        );
        for (ret, want) in [(false, 6.0), (true, 7.4)] {
            let bf = brute_force_stages(&e1(), PaperObjective::Max, ret)
                .unwrap()
                .unwrap();
            assert!(close(bf.value_ms, want));
        }
    }

    #[test]
    fn e3_algorithm1_returns_10_6_with_the_seed_table() {
        let a1 = algorithm1(&e3()).unwrap();
        let inf = f64::INFINITY;
        let want = [
            [2.0, inf, inf],
            [inf, 6.2, 6.2],
            [inf, 7.2, 11.2],
            [inf, 13.6, 10.6],
        ];
        for (row, want_row) in a1.table.iter().zip(want) {
            for (&got, w) in row.iter().zip(want_row) {
                assert!(got == w || close(got, w), "table {:?}", a1.table);
            }
        }
        let best = a1.best.unwrap();
        assert!(close(best.latency_ms, 10.6));
        assert_eq!(best.devices, vec![0, 1, 1, 2]);
    }

    #[test]
    fn e3_exact_optimum_is_9_6_and_algorithm1_misses_it() {
        let bf = brute_force_latency(&e3()).unwrap().unwrap();
        assert!(close(bf.latency_ms, 9.6), "{bf:?}");
        assert_eq!(bf.devices, vec![0, 2, 1, 1]);
        let seg = segment_dp(&e3(), PaperObjective::Sum, true)
            .unwrap()
            .unwrap();
        assert!(close(seg.value_ms, 9.6));
        assert_eq!(
            seg.stages,
            vec![stage(0, 0, 1), stage(2, 1, 2), stage(1, 2, 4)]
        );
        // The regression: Algorithm 1 is worse than the exact optimum on this instance.
        let a1 = algorithm1(&e3()).unwrap().best.unwrap();
        assert!(a1.latency_ms > bf.latency_ms + 0.5);
    }

    #[test]
    fn e3_bottleneck_is_4_with_the_same_stages() {
        let seg = algorithm2(&e3(), true).unwrap().unwrap();
        assert!(close(seg.value_ms, 4.0), "{seg:?}");
        assert_eq!(
            seg.stages,
            vec![stage(0, 0, 1), stage(2, 1, 2), stage(1, 2, 4)]
        );
    }

    #[test]
    fn algorithm1_reports_infeasible_when_the_source_cannot_hold_layer_0() {
        let mut inst = e3();
        inst.device_mem[0] = 0.5;
        let a1 = algorithm1(&inst).unwrap();
        assert!(a1.best.is_none());
        assert!(brute_force_latency(&inst).unwrap().is_none());
    }

    #[test]
    fn bad_instances_are_named() {
        let mut inst = e1();
        inst.layer_ms[1][3] = f64::NAN;
        let err = algorithm1(&inst).unwrap_err();
        assert!(err.to_string().contains("layer_ms[1][3]"), "{err}");
        let mut inst = e1();
        inst.bandwidth_mbps[0][2] = 0.0;
        assert!(segment_dp(&inst, PaperObjective::Max, true).is_err());
        let mut inst = e1();
        inst.src = 7;
        assert!(matches!(algorithm1(&inst), Err(PlanError::Index { .. })));
        let mut inst = e1();
        inst.layer_ms.pop();
        assert!(matches!(algorithm1(&inst), Err(PlanError::Shape { .. })));
        let mut inst = e1();
        inst.layer_mem.clear();
        for row in &mut inst.layer_ms {
            row.clear();
        }
        assert_eq!(algorithm1(&inst), Err(PlanError::ZeroBlocks));
    }
}
