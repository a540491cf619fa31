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

/// `out = softmax(scale · q·kᵀ) · v` for one query head: `k` and `v` hold the head's key and
/// value of each of `positions` positions, `stride` apart, `q.len()` values each.
pub(crate) fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    positions: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let end = positions.saturating_sub(1) * stride + hd;
    assert!(out.len() == hd && (positions == 0 || (k.len() >= end && v.len() >= end)));
    let mut scores = vec![0f32; positions];
    #[cfg(target_arch = "x86_64")]
    if Kernels::detect() == Kernels::Avx512 && hd.is_multiple_of(LANES) {
        // SAFETY: detect() saw AVX-512F; every key and value of `positions` lies in k and v (the
        // assertion), and hd is a whole number of registers.
        unsafe {
            avx512::scores(q, k, stride, scale, &mut scores);
            avx512::softmax(&mut scores);
            avx512::weighted_sum(out, &scores, v, stride);
        }
        return;
    }
    if Kernels::detect() == Kernels::Portable && hd.is_multiple_of(LANES) {
        scores_portable(q, k, stride, scale, &mut scores);
    } else {
        super::dots_f32(q, k, stride, &mut scores);
        for s in &mut scores {
            *s *= scale;
        }
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in &mut scores {
        *s /= sum;
    }
    weighted_sum(out, &scores, v, stride);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, weighted_sum as weighted_sum_any};

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

    /// Two keys' 16 lanes to 8 each: lane `i` plus lane `i + 8`; `a`'s in the low half.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold8(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    }

    /// Two registers of two keys' 8 lanes to four keys' 4: lane `i` plus lane `i + 4`, key by
    /// key in the four 128-bit quarters.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold4(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    }

    /// Two registers of four keys' 4 lanes to 2 lanes of eight keys: lane `i` plus lane
    /// `i + 2`; quarter `k` holds `a`'s key `k` then `b`'s.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold2(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    }

    /// The last fold, lane 0 plus lane 1: quarter `k` gets the scores of `a`'s two keys then
    /// `b`'s two keys of that quarter.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold1(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    }

    /// `out[p] = scale · q·k_p`, sixteen keys at a time (see the module comment); the same bits
    /// as [`super::scores_portable`].
    ///
    /// # Safety
    /// AVX-512F; `q.len()` is a multiple of 16 and `k` holds `out.len()` keys `stride` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let scale = _mm512_set1_ps(scale);
        let mut p = 0;
        while p < out.len() {
            let here = (out.len() - p).min(LANES);
            // The folds leave key `4 (x % 4) + x / 4` of the sixteen where key `x` went in,
            // so key `x` goes in at slot `4 (x % 4) + x / 4` (the same transposition) and
            // comes out in order. A missing key (past the end) is zeros.
            let mut slots = [_mm512_setzero_ps(); LANES];
            for x in 0..here {
                // SAFETY: key p + x < out.len() lies in k (the caller's promise).
                slots[4 * (x % 4) + x / 4] =
                    unsafe { key_lanes(q.as_ptr(), k.as_ptr().add((p + x) * stride), hd) };
            }
            let f8: [__m512; 8] = std::array::from_fn(|i| fold8(slots[2 * i], slots[2 * i + 1]));
            let f4: [__m512; 4] = std::array::from_fn(|i| fold4(f8[2 * i], f8[2 * i + 1]));
            let f2 = [fold2(f4[0], f4[1]), fold2(f4[2], f4[3])];
            let scores = _mm512_mul_ps(fold1(f2[0], f2[1]), scale);
            let mask: __mmask16 = if here == LANES {
                !0
            } else {
                (1u16 << here) - 1
            };
            // SAFETY: the mask writes out[p..p + here] only.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(p), mask, scores) };
            p += here;
        }
    }

    /// `e^x` for sixteen values at most 0 (a softmax's `s - max`): `x = n ln 2 + r` with `|r|
    /// <= ln 2 / 2`, `e^r` by its Taylor series to `r^7` (the first term left out is under
    /// 1e-8 of the result), times `2^n`. Values under -87 give `e^-87` or less, never
    /// subnormals.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
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

    /// [`weighted_sum_any`] 64 outputs at a time in four registers, then 16, then
    /// the rest: the same operations in the same order, so the same bits.
    ///
    /// # Safety
    /// AVX-512F; `values` holds every position's `out.len()` values, `stride` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
        let n = out.len();
        let pv = values.as_ptr();
        let mut i = 0;
        // SAFETY: every load reads values[p * stride + i + j] with i + j < n, inside the values
        // (the caller's promise); every store writes out[i..i + 16k] with i + 16k <= n.
        unsafe {
            while i + 4 * LANES <= n {
                let mut acc = [_mm512_setzero_ps(); 4];
                for (p, &w) in weights.iter().enumerate() {
                    let (w, row) = (_mm512_set1_ps(w), pv.add(p * stride + i));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let v = _mm512_loadu_ps(row.add(LANES * j));
                        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(w, v));
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(i + LANES * j), *acc);
                }
                i += 4 * LANES;
            }
            while i + LANES <= n {
                let mut acc = _mm512_setzero_ps();
                for (p, &w) in weights.iter().enumerate() {
                    let v = _mm512_loadu_ps(pv.add(p * stride + i));
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(w), v));
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(i), acc);
                i += LANES;
            }
        }
        if i < n {
            weighted_sum_any(&mut out[i..], weights, &values[i..], stride);
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
    use super::*;
    use crate::rng::SplitMix64;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| rng.uniform_pm1()).collect()
    }

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
            let q = values(hd, 1);
            let k = values(stride * count.max(1), 2);
            let mut want = vec![0f32; count];
            scores_portable(&q, &k, stride, 0.125, &mut want);
            #[cfg(target_arch = "x86_64")]
            if Kernels::detect() == Kernels::Avx512 {
                // Every count of keys, so that each key takes every slot of the sixteen.
                for n in 0..=count {
                    let mut got = vec![0f32; n];
                    // SAFETY: detect() saw AVX-512F; k holds `count` keys.
                    unsafe { avx512::scores(&q, &k, stride, 0.125, &mut got) };
                    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "hd {hd}, {n} keys, key {p}");
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
            let q = values(hd, 5);
            // Large scores too, so that the softmax is not flat.
            let k: Vec<f32> = values(stride * positions, 6)
                .iter()
                .map(|x| x * 4.0)
                .collect();
            let v = values(stride * positions, 7);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut out = vec![0f32; hd];
            // The last KV head: its keys end hd values before the end of k.
            let g = nkv - 1;
            attend_head(
                &q,
                &k[g * hd..],
                &v[g * hd..],
                stride,
                positions,
                scale,
                &mut out,
            );
            let want = reference(&q, &k[g * hd..], &v[g * hd..], stride, scale);
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*o as f64 - w).abs() < 2e-6,
                    "hd {hd} positions {positions} value {i}: {o} vs {w}"
                );
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
        let mut xs: Vec<f32> = (0..4096).map(|_| -rng.uniform_pm1().abs() * 87.0).collect();
        xs.extend([0.0, -0.0, -1e-30, -0.346, -0.347, -0.35, -86.9, -87.0]);
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
    }
}
