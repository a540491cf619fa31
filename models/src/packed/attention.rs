//! One query head's attention on the CPU: its scores against every cached key, the softmax, and
//! the weighted sum of the values.
//!
//! The scores were one dot product per key, each ending in a horizontal sum of a register, and
//! for SmolLM2's 64-value heads that sum cost as much as the products. With AVX-512 the
//! scores are taken sixteen keys at a time: each key's 64 products go into one register (the
//! value `i` of each 16 into lane `i`), then the sixteen registers are folded in halves into
//! one register of sixteen scores (lane `i` plus lane `i + 8`, then `+ 4`, `+ 2`, `+ 1`), which
//! takes 45 shuffles and additions where sixteen horizontal sums took about a hundred. The
//! softmax's exponentials are computed sixteen at a time too (a polynomial, within two units in
//! the last place of the true value), and the weighted sum of the values keeps 64 outputs in
//! four registers.
//!
//! A key's score takes the same operations whichever of the sixteen places it has and however
//! many keys there are, and nothing depends on other sessions, so a row gets the same bits alone,
//! in a batch and in a prompt chunk. [`scores_portable`] computes the scores with the same
//! operations in plain Rust (the tests check them bit for bit); the exponentials differ from the
//! portable `exp` in the last places, which is the kind of difference that two peers on
//! different kernels already have (see the module comment of `packed`).

use super::{Kernels, weighted_sum};

/// Head sizes the sixteen-key kernel takes: whole registers of 16 values.
const LANES: usize = 16;

/// `out = softmax(scale · q·kᵀ) · v` for each of the query heads in `q` (`out.len() ==
/// q.len()`, `hd` values a head) that share one KV head: `k` and `v` hold that head's key and
/// value of each of `positions` positions, `stride` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_heads(
    q: &[f32],
    hd: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    positions: usize,
    scale: f32,
    out: &mut [f32],
) {
    let end = positions.saturating_sub(1) * stride + hd;
    assert!(
        hd > 0
            && q.len().is_multiple_of(hd)
            && out.len() == q.len()
            && (positions == 0 || (k.len() >= end && v.len() >= end))
    );
    let heads = q.len() / hd;
    let mut scores = vec![0f32; heads * positions];
    #[cfg(target_arch = "x86_64")]
    if Kernels::detect() == Kernels::Avx512 && hd.is_multiple_of(LANES) {
        // SAFETY: detect() saw AVX-512F; every key and value of `positions` lies in k and v (the
        // assertion), hd is a whole number of registers, and scores and out hold every head's.
        unsafe {
            avx512::scores(q, hd, k, stride, scale, &mut scores);
            for s in scores.chunks_exact_mut(positions.max(1)) {
                avx512::softmax(s);
            }
            avx512::weighted_sums(out, hd, &scores, v, stride);
        }
        return;
    }
    for ((q, out), scores) in q
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(hd))
        .zip(scores.chunks_exact_mut(positions.max(1)))
    {
        if Kernels::detect() == Kernels::Portable && hd.is_multiple_of(LANES) {
            scores_portable(q, k, stride, scale, scores);
        } else {
            super::dots_f32(q, k, stride, scores);
            for s in scores.iter_mut() {
                *s *= scale;
            }
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in scores.iter_mut() {
            *s /= sum;
        }
        weighted_sum(out, scores, v, stride);
    }
}

/// SwiGLU's product, `out = gate · σ(gate) · up = gate / (1 + e^-gate) · up`, with the vector
/// exponential where the CPU has AVX-512 (12288 exponentials a block for 8 sessions of
/// SmolLM2-135M, which libm's `expf` took one at a time).
pub(crate) fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if Kernels::detect() == Kernels::Avx512 {
        // SAFETY: detect() saw AVX-512F; the slices have one length (the assertion).
        unsafe { avx512::swiglu(out, gate, up) };
        return;
    }
    for ((a, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *a = g / (1.0 + (-g).exp()) * u;
    }
}

/// The sixteen-key kernel's scores in plain Rust, operation for operation: per key, the
/// products of value `i` of each 16 summed into lane `i` (a product, then fused multiply-adds),
/// the lanes folded in halves, times `scale`.
pub(crate) fn scores_portable(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(hd.is_multiple_of(LANES));
    for (p, o) in out.iter_mut().enumerate() {
        let key = &k[p * stride..p * stride + hd];
        let mut lanes = [0f32; LANES];
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = q[i] * key[i];
            for c in (LANES..hd).step_by(LANES) {
                *lane = q[c + i].mul_add(key[c + i], *lane);
            }
        }
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for i in 0..width {
                lanes[i] += lanes[i + width];
            }
        }
        *o = lanes[0] * scale;
    }
}

/// The AVX-512 weighted sums in plain Rust, operation for operation: per head and value, from
/// zero, a fused multiply-add per position in order.
#[cfg(test)]
fn weighted_sums_portable(
    out: &mut [f32],
    hd: usize,
    weights: &[f32],
    values: &[f32],
    stride: usize,
) {
    let heads = out.len() / hd;
    let positions = weights.len() / heads.max(1);
    for (h, out) in out.chunks_exact_mut(hd).enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            *o = 0.0;
            for p in 0..positions {
                *o = weights[h * positions + p].mul_add(values[p * stride + i], *o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// One key's lanes: value `i` of each 16 of `q · key` summed into lane `i`.
    ///
    /// # Safety
    /// AVX-512F; `q` and `key` hold `hd` values, a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn key_lanes(q: *const f32, key: *const f32, hd: usize) -> __m512 {
        // SAFETY: every load is inside the hd values of q and key.
        unsafe {
            let mut acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(key));
            let mut c = LANES;
            while c < hd {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c)), _mm512_loadu_ps(key.add(c)), acc);
                c += LANES;
            }
            acc
        }
    }

    /// One fold of the scores: the sum of two 128-bit-quarter shuffles of `a` and `b`
    /// (`_mm512_shuffle_f32x4` with `LO` and `HI`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_quarters<const LO: i32, const HI: i32>(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<LO>(a, b),
            _mm512_shuffle_f32x4::<HI>(a, b),
        )
    }

    /// One fold of the scores within each 128-bit quarter: the sum of two `_mm512_shuffle_ps`
    /// of `a` and `b` (with `LO` and `HI`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_lanes<const LO: i32, const HI: i32>(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_ps::<LO>(a, b), _mm512_shuffle_ps::<HI>(a, b))
    }

    /// `out[h * positions + p] = scale · q_h·k_p` for each head `h` of `qs` (`hd` values a
    /// head), sixteen keys at a time, every head of a block of keys before the next block (so
    /// that the keys are read from L1 after the first head); the same bits as
    /// [`super::scores_portable`].
    ///
    /// # Safety
    /// AVX-512F; `hd` is a multiple of 16, `out.len()` is the heads times `positions`, and `k`
    /// holds `positions` keys `stride` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(
        qs: &[f32],
        hd: usize,
        k: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let heads = qs.len() / hd;
        if heads == 0 {
            return;
        }
        let positions = out.len() / heads;
        let scale = _mm512_set1_ps(scale);
        let mut p = 0;
        while p < positions {
            let here = (positions - p).min(LANES);
            let mask: __mmask16 = if here == LANES {
                !0
            } else {
                (1u16 << here) - 1
            };
            for (h, q) in qs.chunks_exact(hd).enumerate() {
                // The folds leave key `4 (x % 4) + x / 4` of the sixteen where key `x` went in,
                // so key `x` goes in at slot `4 (x % 4) + x / 4` (the same transposition) and
                // comes out in order. A missing key (past the end) is zeros.
                let mut slots = [_mm512_setzero_ps(); LANES];
                for x in 0..here {
                    // SAFETY: key p + x < positions lies in k (the caller's promise).
                    slots[4 * (x % 4) + x / 4] =
                        unsafe { key_lanes(q.as_ptr(), k.as_ptr().add((p + x) * stride), hd) };
                }
                // Two keys' 16 lanes to 8 each: lane i plus lane i + 8, the first key's in the
                // low half.
                let f8: [__m512; 8] = std::array::from_fn(|i| {
                    fold_quarters::<0x44, 0xEE>(slots[2 * i], slots[2 * i + 1])
                });
                // Four keys' 4 lanes: lane i plus lane i + 4, key by key in the quarters.
                let f4: [__m512; 4] =
                    std::array::from_fn(|i| fold_quarters::<0x88, 0xDD>(f8[2 * i], f8[2 * i + 1]));
                // Lane i plus lane i + 2: quarter k holds the first register's key k, then the
                // second's.
                let f2 = [
                    fold_lanes::<0x44, 0xEE>(f4[0], f4[1]),
                    fold_lanes::<0x44, 0xEE>(f4[2], f4[3]),
                ];
                // Lane 0 plus lane 1: quarter k gets four keys' scores.
                let scores = _mm512_mul_ps(fold_lanes::<0x88, 0xDD>(f2[0], f2[1]), scale);
                // SAFETY: the mask writes out[h * positions + p..][..here] only.
                unsafe {
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(h * positions + p), mask, scores)
                };
            }
            p += here;
        }
    }

    /// `e^x` for sixteen values: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its Taylor
    /// series to `r^7` (the first term left out is under 1e-8 of the result), times `2^n`.
    /// `x` is taken within -87..=88, so the result is never a subnormal nor infinite.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts: n · LN2_HI is exact for the n that occur.
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// `out[h * hd + i] = Σ_p weights[h * positions + p] · values[p * stride + i]` for each
    /// head `h`, summed from zero in the order of `p` with fused multiply-adds (as
    /// [`super::weighted_sums_portable`]), up to four heads at a time so that each value is
    /// loaded once for all of them.
    ///
    /// # Safety
    /// AVX-512F; `hd` is a multiple of 16, `weights` holds `positions` weights for each of the
    /// `out.len() / hd` heads, and `values` holds `positions` positions' `hd` values, `stride`
    /// apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sums(
        out: &mut [f32],
        hd: usize,
        weights: &[f32],
        values: &[f32],
        stride: usize,
    ) {
        let heads = out.len() / hd;
        if heads == 0 {
            return;
        }
        let positions = weights.len() / heads;
        let mut h = 0;
        while h < heads {
            let outs = &mut out[h * hd..];
            let w = &weights[h * positions..];
            // SAFETY: passed on, for heads h.. of out and weights.
            h += unsafe {
                match heads - h {
                    4.. => heads_sum::<4>(outs, hd, w, positions, values, stride),
                    3 => heads_sum::<3>(outs, hd, w, positions, values, stride),
                    2 => heads_sum::<2>(outs, hd, w, positions, values, stride),
                    _ => heads_sum::<1>(outs, hd, w, positions, values, stride),
                }
            };
        }
    }

    /// [`weighted_sums`] of the first `G` heads of `out` and `weights`, 16 outputs of each at a
    /// time (64 where it can); returns `G`.
    ///
    /// # Safety
    /// As [`weighted_sums`], for `G` heads.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn heads_sum<const G: usize>(
        out: &mut [f32],
        hd: usize,
        weights: &[f32],
        positions: usize,
        values: &[f32],
        stride: usize,
    ) -> usize {
        let pv = values.as_ptr();
        let pw = weights.as_ptr();
        let mut i = 0;
        // SAFETY: every load reads values[p * stride + i..][..16] with i + 16 <= hd or
        // weights[g * positions + p], inside them (the caller's promise); every store writes
        // out[g * hd + i..][..16].
        unsafe {
            // Four registers of each head: four chains of additions to wait on, not two (with
            // one head, two chains left the loop waiting on each sum).
            while i + 4 * LANES <= hd {
                let mut acc = [[_mm512_setzero_ps(); 4]; G];
                for p in 0..positions {
                    let row = pv.add(p * stride + i);
                    let v: [__m512; 4] =
                        std::array::from_fn(|j| _mm512_loadu_ps(row.add(LANES * j)));
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*pw.add(g * positions + p));
                        for (acc, v) in acc.iter_mut().zip(v) {
                            *acc = _mm512_fmadd_ps(w, v, *acc);
                        }
                    }
                }
                for (g, acc) in acc.iter().enumerate() {
                    let o = out.as_mut_ptr().add(g * hd + i);
                    for (j, acc) in acc.iter().enumerate() {
                        _mm512_storeu_ps(o.add(LANES * j), *acc);
                    }
                }
                i += 4 * LANES;
            }
            while i < hd {
                let mut acc = [_mm512_setzero_ps(); G];
                for p in 0..positions {
                    let v = _mm512_loadu_ps(pv.add(p * stride + i));
                    for (g, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(*pw.add(g * positions + p)), v, *acc);
                    }
                }
                for (g, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(g * hd + i), *acc);
                }
                i += LANES;
            }
        }
        G
    }

    /// `out = gate / (1 + e^-gate) * up`, sixteen values at a time.
    ///
    /// # Safety
    /// AVX-512F; `gate` and `up` hold `out.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
        let n = out.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let here = (n - i).min(LANES);
            let m: __mmask16 = if here == LANES {
                !0
            } else {
                (1u16 << here) - 1
            };
            // SAFETY: the masks touch [i..i + here] of each slice only.
            unsafe {
                let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
                let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let a = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, a);
            }
            i += here;
        }
    }

    /// `e^x` of sixteen values at a time, for the tests.
    #[cfg(test)]
    pub fn exp16(x: &[f32; LANES]) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        // SAFETY: only called where detect() saw AVX-512F; 16 values each way.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// `s = e^(s - max) / Σ e^(s - max)` over all of `s`.
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax(s: &mut [f32]) {
        let n = s.len();
        let mask = |i: usize| -> __mmask16 {
            let here = (n - i).min(LANES);
            if here == LANES {
                !0
            } else {
                (1u16 << here) - 1
            }
        };
        let ptr = s.as_mut_ptr();
        // SAFETY: every masked load and store touches s[i..i + here] only.
        unsafe {
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut i = 0;
            while i < n {
                let v = _mm512_mask_loadu_ps(max, mask(i), ptr.add(i));
                max = _mm512_max_ps(max, v);
                i += LANES;
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let mut sum = _mm512_setzero_ps();
            let mut i = 0;
            while i < n {
                let m = mask(i);
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, ptr.add(i)), max));
                let e = _mm512_maskz_mov_ps(m, e);
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(ptr.add(i), m, e);
                i += LANES;
            }
            let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
            let mut i = 0;
            while i < n {
                let m = mask(i);
                let v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, ptr.add(i)), sum);
                _mm512_mask_storeu_ps(ptr.add(i), m, v);
                i += LANES;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::values;
    use super::*;
    use crate::rng::SplitMix64;

    /// softmax(scale q·k) · v in f64, the plain definition.
    fn reference(q: &[f32], k: &[f32], v: &[f32], stride: usize, scale: f32) -> Vec<f64> {
        let hd = q.len();
        let positions = (k.len() - hd) / stride + 1;
        let s: Vec<f64> = (0..positions)
            .map(|p| {
                let key = &k[p * stride..p * stride + hd];
                q.iter()
                    .zip(key)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|i| {
                (0..positions)
                    .map(|p| e[p] / sum * v[p * stride + i] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn sixteen_keys_at_a_time_give_each_key_its_portable_bits() {
        for (hd, stride, count) in [
            (64, 192, 37),
            (64, 64, 1),
            (16, 48, 16),
            (128, 128, 17),
            (64, 192, 0),
        ] {
            // Three heads sharing the keys.
            let qs = values(3 * hd, 1);
            let q = &qs[..hd];
            let k = values(stride * count.max(1), 2);
            let mut want = vec![0f32; count];
            scores_portable(q, &k, stride, 0.125, &mut want);
            #[cfg(target_arch = "x86_64")]
            if Kernels::detect() == Kernels::Avx512 {
                // Every count of keys, so that each key takes every slot of the sixteen.
                for n in 0..=count {
                    let mut got = vec![0f32; 3 * n];
                    // SAFETY: detect() saw AVX-512F; k holds `count` keys.
                    unsafe { avx512::scores(&qs, hd, &k, stride, 0.125, &mut got) };
                    for (h, got) in got.chunks_exact(n.max(1)).enumerate() {
                        let mut want = vec![0f32; n];
                        scores_portable(&qs[h * hd..(h + 1) * hd], &k, stride, 0.125, &mut want);
                        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "hd {hd}, {n} keys, head {h} key {p}"
                            );
                        }
                    }
                }
            }
            for (p, &w) in want.iter().enumerate() {
                let exact: f64 = q
                    .iter()
                    .zip(&k[p * stride..])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                assert!(
                    (w as f64 - exact * 0.125).abs() < 1e-5,
                    "key {p}: {w} vs {}",
                    exact * 0.125
                );
            }
        }
    }

    #[test]
    fn a_head_attends_as_the_plain_definition_says() {
        for (hd, nkv, positions) in [
            (64, 3, 1),
            (64, 3, 45),
            (64, 1, 200),
            (40, 2, 7),
            (128, 1, 33),
        ] {
            let stride = nkv * hd;
            // Two query heads on each KV head.
            let q = values(2 * hd, 5);
            // Large scores too, so that the softmax is not flat.
            let k: Vec<f32> = values(stride * positions, 6)
                .iter()
                .map(|x| x * 4.0)
                .collect();
            let v = values(stride * positions, 7);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut out = vec![0f32; 2 * hd];
            // The last KV head: its keys end hd values before the end of k.
            let g = nkv - 1;
            attend_heads(
                &q,
                hd,
                &k[g * hd..],
                &v[g * hd..],
                stride,
                positions,
                scale,
                &mut out,
            );
            for h in 0..2 {
                let qh = &q[h * hd..(h + 1) * hd];
                let want = reference(qh, &k[g * hd..], &v[g * hd..], stride, scale);
                for (i, (o, w)) in out[h * hd..].iter().zip(&want).enumerate() {
                    assert!(
                        (*o as f64 - w).abs() < 2e-6,
                        "hd {hd} positions {positions} head {h} value {i}: {o} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn weighted_sums_of_one_to_six_heads_give_each_head_its_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if Kernels::detect() == Kernels::Avx512 {
            for (hd, stride, positions) in [(64, 192, 37), (16, 16, 1), (48, 96, 20), (128, 128, 5)]
            {
                let v = values(stride * positions, 8);
                for heads in 1..=6 {
                    let w = values(heads * positions, 9);
                    let mut got = vec![f32::NAN; heads * hd];
                    // SAFETY: detect() saw AVX-512F; v holds every position's values.
                    unsafe { avx512::weighted_sums(&mut got, hd, &w, &v, stride) };
                    let mut want = vec![0f32; heads * hd];
                    weighted_sums_portable(&mut want, hd, &w, &v, stride);
                    let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "hd {hd}, {heads} heads");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_exponential_is_within_two_units_in_the_last_place() {
        if Kernels::detect() != Kernels::Avx512 {
            return;
        }
        let mut rng = SplitMix64(3);
        let mut xs: Vec<f32> = (0..4096).map(|_| rng.uniform_pm1() * 87.0).collect();
        xs.extend([
            0.0, -0.0, -1e-30, -0.346, -0.347, -0.35, -86.9, -87.0, 87.9, 88.0,
        ]);
        xs.resize(xs.len().next_multiple_of(LANES), -1.0);
        for chunk in xs.chunks_exact(LANES) {
            let got = avx512::exp16(chunk.try_into().expect("16 values"));
            for (x, got) in chunk.iter().zip(got) {
                let want = (*x as f64).exp();
                let ulp = f32::EPSILON as f64 * want;
                assert!(
                    (got as f64 - want).abs() <= 2.0 * ulp,
                    "e^{x}: {got} vs {want}"
                );
            }
        }
        // Below -87, e^-87 (tiny, and never a subnormal).
        let low = avx512::exp16(&[-100.0; LANES]);
        assert!(low.iter().all(|&e| e == avx512::exp16(&[-87.0; LANES])[0]));
        let inf = avx512::exp16(&[f32::NEG_INFINITY; LANES]);
        assert!(inf.iter().all(|e| e.is_normal()));
        // Above 88, e^88: finite.
        let high = avx512::exp16(&[f32::INFINITY; LANES]);
        assert!(
            high.iter()
                .all(|&e| e.is_finite() && e == avx512::exp16(&[88.0; LANES])[0])
        );
    }

    #[test]
    fn swiglu_is_the_gate_times_its_sigmoid_times_the_up_value() {
        let mut rng = SplitMix64(4);
        // Every length up to three registers, and gates far on both sides.
        for n in 0..=48 {
            let gate: Vec<f32> = (0..n).map(|_| rng.uniform_pm1() * 30.0).collect();
            let up = values(n, 5);
            let mut out = vec![f32::NAN; n];
            swiglu(&mut out, &gate, &up);
            for i in 0..n {
                let (g, u) = (gate[i] as f64, up[i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (out[i] as f64 - want).abs() <= 4e-7 * want.abs() + 1e-30,
                    "{g} {u}: {} vs {want}",
                    out[i]
                );
            }
        }
        let mut out = [0f32; 2];
        swiglu(&mut out, &[-200.0, 200.0], &[1.0, 1.0]);
        assert_eq!(out[1], 200.0);
        assert!(out[0] <= 0.0 && out[0] > -1e-30, "{}", out[0]);
    }
}
