//! Pure (de)quantization of ggml tensor data: bytes of one tensor in, f32 values out.
//!
//! Block layouts follow ggml's `block_*` structs (ggml-common.h): little-endian, f16 scales,
//! 4-bit values packed two per byte with the low nibbles holding the first half of the block.
//! Dequantization supports F32, F16, BF16, F64, I8, I16, I32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL and IQ4_XS; [`quantize`] encodes the simple types that
//! tests and random models need (F32, F16, BF16, Q8_0, Q4_0, Q4_1).

use half::{bf16, f16};

use crate::ggml::{GgmlType, QK_K};

/// Why a tensor's bytes could not be (de)quantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    #[error("unsupported tensor type {0}")]
    UnsupportedType(GgmlType),
    #[error("{n_elements} elements are not a whole number of {ty} blocks of {block_size}")]
    NotWholeBlocks {
        ty: GgmlType,
        n_elements: usize,
        block_size: usize,
    },
    #[error("{n_elements} {ty} elements take {expected} bytes, but {actual} were given")]
    LengthMismatch {
        ty: GgmlType,
        n_elements: usize,
        expected: usize,
        actual: usize,
    },
}

/// Decodes one block of `type_size` bytes into `block_size` values.
type BlockFn = fn(&[u8], &mut [f32]);

/// Dequantizes `n_elements` values of type `ty` from `bytes` (exactly the tensor's bytes).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0f32; n_elements];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes into `out`, whose length is the number of elements.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let decode = block_fn(ty).ok_or(QuantError::UnsupportedType(ty))?;
    let (block_size, type_size) = ty.block_geometry().ok_or(QuantError::UnsupportedType(ty))?;
    check_lengths(ty, block_size, type_size, bytes.len(), out.len())?;
    // One thread: the whole 135M model (538 MB of f32) takes 120-140 ms in release on the
    // 2-core dev machine, and splitting blocks over rayon measured no faster there.
    decode_blocks(decode, block_size, type_size, bytes, out);
    Ok(())
}

fn decode_blocks(
    decode: BlockFn,
    block_size: usize,
    type_size: usize,
    bytes: &[u8],
    out: &mut [f32],
) {
    for (block, values) in bytes
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block_size))
    {
        decode(block, values);
    }
}

fn check_lengths(
    ty: GgmlType,
    block_size: usize,
    type_size: usize,
    actual: usize,
    n_elements: usize,
) -> Result<(), QuantError> {
    if !n_elements.is_multiple_of(block_size) {
        return Err(QuantError::NotWholeBlocks {
            ty,
            n_elements,
            block_size,
        });
    }
    let expected = n_elements / block_size * type_size;
    if expected != actual {
        return Err(QuantError::LengthMismatch {
            ty,
            n_elements,
            expected,
            actual,
        });
    }
    Ok(())
}

fn block_fn(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::F32 => f32_block,
        GgmlType::F16 => f16_block,
        GgmlType::BF16 => bf16_block,
        GgmlType::F64 => f64_block,
        GgmlType::I8 => i8_block,
        GgmlType::I16 => i16_block,
        GgmlType::I32 => i32_block,
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        GgmlType::Q5_0 => q5_0_block,
        GgmlType::Q5_1 => q5_1_block,
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q2_K => q2_k_block,
        GgmlType::Q3_K => q3_k_block,
        GgmlType::Q4_K => q4_k_block,
        GgmlType::Q5_K => q5_k_block,
        GgmlType::Q6_K => q6_k_block,
        GgmlType::Q8_K => q8_k_block,
        GgmlType::IQ4_NL => iq4_nl_block,
        GgmlType::IQ4_XS => iq4_xs_block,
        _ => return None,
    })
}

pub(crate) fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn f32_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn f16_block(b: &[u8], out: &mut [f32]) {
    out[0] = half_at(b, 0);
}

fn bf16_block(b: &[u8], out: &mut [f32]) {
    out[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
}

fn f64_block(b: &[u8], out: &mut [f32]) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    out[0] = f64::from_le_bytes(a) as f32;
}

fn i8_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from(b[0] as i8);
}

fn i16_block(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from(i16::from_le_bytes([b[0], b[1]]));
}

fn i32_block(b: &[u8], out: &mut [f32]) {
    out[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
}

/// Q4_0: f16 d, 16 bytes of nibbles; x = (q - 8) * d.
fn q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = (i32::from(qs[j] & 0xF) - 8) as f32 * d;
        out[j + 16] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = q * d + m.
fn q4_1_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = f32::from(qs[j] & 0xF) * d + m;
        out[j + 16] = f32::from(qs[j] >> 4) * d + m;
    }
}

/// The fifth bits of a Q5 block: bit j of `qh` belongs to element j.
fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let lo = ((qh >> j) << 4) as u8 & 0x10;
    let hi = (qh >> (j + 12)) as u8 & 0x10;
    (lo, hi)
}

/// Q5_0: f16 d, u32 of fifth bits, 16 bytes of nibbles; x = (q - 16) * d.
fn q5_0_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let (lo, hi) = q5_high_bits(qh, j);
        out[j] = (i32::from((qs[j] & 0xF) | lo) - 16) as f32 * d;
        out[j + 16] = (i32::from((qs[j] >> 4) | hi) - 16) as f32 * d;
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; x = q * d + m.
fn q5_1_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let (lo, hi) = q5_high_bits(qh, j);
        out[j] = f32::from((qs[j] & 0xF) | lo) * d + m;
        out[j + 16] = f32::from((qs[j] >> 4) | hi) * d + m;
    }
}

/// Q8_0: f16 d, 32 signed bytes; x = q * d.
fn q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Q2_K: 16 bytes of 4-bit scale/min pairs, 64 bytes of 2-bit values, f16 d, f16 dmin.
fn q2_k_block(b: &[u8], out: &mut [f32]) {
    let scales = &b[0..16];
    let d = half_at(b, 80);
    let dmin = half_at(b, 82);
    let mut is = 0;
    let mut y = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * (n + 1)];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = dmin * f32::from(sc >> 4);
                for &qv in &q[16 * half..16 * (half + 1)] {
                    out[y] = dl * f32::from((qv >> shift) & 3) - ml;
                    y += 1;
                }
            }
        }
    }
}

/// Unpacks the twelve bytes of Q3_K's 16 six-bit scales (stored offset by 32).
fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    let mut scales = [0i8; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0xF
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    scales
}

/// Q3_K: 32 bytes of high bits, 64 bytes of 2-bit values, 12 bytes of scales, f16 d.
/// x = d * scale * (q2 - (high bit clear ? 4 : 0)).
fn q3_k_block(b: &[u8], out: &mut [f32]) {
    let hmask = &b[0..32];
    let d = half_at(b, 108);
    let scales = q3_k_scales(&b[96..108]);
    let mut is = 0;
    let mut y = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * (n + 1)];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d * f32::from(scales[is]);
                is += 1;
                for l in 16 * half..16 * (half + 1) {
                    let low = i32::from((q[l] >> shift) & 3);
                    let sub = if hmask[l] & m != 0 { 0 } else { 4 };
                    out[y] = dl * (low - sub) as f32;
                    y += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// The j-th six-bit (scale, min) pair of Q4_K/Q5_K's 12 packed bytes.
fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles, in 4 chunks of 64
/// (32 low nibbles, then 32 high nibbles of the same bytes).
fn q4_k_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    for chunk in 0..4 {
        let q = &b[16 + 32 * chunk..16 + 32 * (chunk + 1)];
        let (s1, m1) = k4_scale_min(2 * chunk, scales);
        let (s2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let y = &mut out[64 * chunk..64 * (chunk + 1)];
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0xF) - m1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// Q5_K: like Q4_K plus 32 bytes of fifth bits (two bits per byte used per 64-chunk).
fn q5_k_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for chunk in 0..4 {
        let ql = &b[48 + 32 * chunk..48 + 32 * (chunk + 1)];
        let (s1, m1) = k4_scale_min(2 * chunk, scales);
        let (s2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let y = &mut out[64 * chunk..64 * (chunk + 1)];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
            y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales, f16 d; two halves
/// of 128 values, each 4 runs of 32.
fn q6_k_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * (half + 1)];
        let qh = &b[128 + 32 * half..128 + 32 * (half + 1)];
        let sc = &b[192 + 8 * half..192 + 8 * (half + 1)];
        let y = &mut out[128 * half..128 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
}

/// Q8_K: f32 d, 256 signed bytes, 16 i16 block sums (not needed to dequantize).
fn q8_k_block(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in out.iter_mut().zip(&b[4..4 + QK_K]) {
        *o = f32::from(q as i8) * d;
    }
}

/// The non-linear 4-bit code book of IQ4_NL and IQ4_XS.
const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL: f16 d, 16 bytes of nibbles indexing the code book.
fn iq4_nl_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = d * f32::from(IQ4_VALUES[usize::from(qs[j] & 0xF)]);
        out[j + 16] = d * f32::from(IQ4_VALUES[usize::from(qs[j] >> 4)])
    }
}

/// IQ4_XS: f16 d, u16 high scale bits, 4 bytes of low scale nibbles, 128 bytes of code-book
/// nibbles; 8 sub-blocks of 32 with 6-bit scales offset by 32.
fn iq4_xs_block(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let scales_l = &b[4..8];
    for ib in 0..8 {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * (i32::from(low | (high << 4)) - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * (ib + 1)];
        let y = &mut out[32 * ib..32 * (ib + 1)];
        for j in 0..16 {
            y[j] = dl * f32::from(IQ4_VALUES[usize::from(qs[j] & 0xF)]);
            y[j + 16] = dl * f32::from(IQ4_VALUES[usize::from(qs[j] >> 4)]);
        }
    }
}

/// Encodes f32 values as `ty`. Supports F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (what tests and
/// random models need); other types give [`QuantError::UnsupportedType`].
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let (block_size, type_size) = ty.block_geometry().ok_or(QuantError::UnsupportedType(ty))?;
    let encode: fn(&[f32], &mut Vec<u8>) = match ty {
        GgmlType::F32 => |x, out| out.extend_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, out| out.extend_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, out| out.extend_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q8_0 => quantize_q8_0_block,
        GgmlType::Q4_0 => quantize_q4_0_block,
        GgmlType::Q4_1 => quantize_q4_1_block,
        _ => return Err(QuantError::UnsupportedType(ty)),
    };
    if !values.len().is_multiple_of(block_size) {
        return Err(QuantError::NotWholeBlocks {
            ty,
            n_elements: values.len(),
            block_size,
        });
    }
    let mut out = Vec::with_capacity(values.len() / block_size * type_size);
    for block in values.chunks_exact(block_size) {
        encode(block, &mut out);
    }
    Ok(out)
}

fn push_half(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn quantize_q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_half(out, d);
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

fn quantize_q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    // the signed value of largest magnitude maps to -8, so the full range [-8, 7] is used
    let max = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_half(out, d);
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

fn quantize_q4_1_block(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_half(out, d);
    push_half(out, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    fn deq(ty: GgmlType, block: &[u8]) -> Vec<f32> {
        let n = ty.block_size().unwrap();
        dequantize(ty, block, n).unwrap()
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high_minus_8() {
        let mut b = half(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = deq(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_scale_and_min() {
        let mut b = half(0.5).to_vec();
        b.extend(half(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = deq(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    /// Element i's fifth bit is bit i of qh.
    fn q5_expected(qh: u32, qs: &[u8], i: usize) -> u32 {
        let nibble = if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 };
        u32::from(nibble) | (((qh >> i) & 1) << 4)
    }

    #[test]
    fn q5_0_and_q5_1_take_bit_i_of_qh() {
        let qh: u32 = 0xA5C3_0F96;
        let qs: Vec<u8> = (0..16u8).map(|j| j.wrapping_mul(37)).collect();
        let mut b0 = half(0.25).to_vec();
        b0.extend(qh.to_le_bytes());
        b0.extend(&qs);
        let mut b1 = half(0.25).to_vec();
        b1.extend(half(2.0));
        b1.extend(qh.to_le_bytes());
        b1.extend(&qs);
        let out0 = deq(GgmlType::Q5_0, &b0);
        let out1 = deq(GgmlType::Q5_1, &b1);
        for i in 0..32 {
            let q = q5_expected(qh, &qs, i) as f32;
            assert_eq!(out0[i], (q - 16.0) * 0.25, "Q5_0 element {i}");
            assert_eq!(out1[i], q * 0.25 + 2.0, "Q5_1 element {i}");
        }
    }

    #[test]
    fn q8_0_signed_bytes_times_scale() {
        let mut b = half(0.5).to_vec();
        b.extend((-16i8..16).map(|q| q as u8));
        let out = deq(GgmlType::Q8_0, &b);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q2_k_two_bit_values_with_scale_and_min_per_16() {
        // sub-block s has scale s % 16 and min 1; values 0..3 chosen per shift
        let scales: Vec<u8> = (0..16u8).map(|s| s | (1 << 4)).collect();
        let mut b = scales.clone();
        b.extend(std::iter::repeat_n(0b1110_0100u8, 64)); // shift 0 -> 0, 2 -> 1, 4 -> 2, 6 -> 3
        b.extend(half(0.5));
        b.extend(half(0.25));
        let out = deq(GgmlType::Q2_K, &b);
        for (i, v) in out.iter().enumerate() {
            let q = ((i % 128) / 32) as f32;
            let sub = i / 16;
            assert_eq!(*v, 0.5 * sub as f32 * q - 0.25, "element {i}");
        }
    }

    #[test]
    fn q3_k_uniform_scale_and_high_bits() {
        let mut b = vec![0xFFu8; 32]; // every high bit set: no -4
        b[0] = 0; // element 0 (and 128) lose bit 0 of hmask byte 0 -> shift-0 values get -4
        b.extend(std::iter::repeat_n(0b1110_0100u8, 64));
        // every 6-bit scale = 33, i.e. 1 after the -32 offset
        b.extend([0x11; 8]);
        b.extend([0xAA; 4]);
        b.extend(half(0.5));
        let out = deq(GgmlType::Q3_K, &b);
        for (i, v) in out.iter().enumerate() {
            let k = i % 128;
            let q = (k / 32) as f32;
            // hmask byte i % 32, bit 4 * (i / 128) + k / 32 (the mask walks on across halves)
            let hbit = (b[i % 32] >> (4 * (i / 128) + k / 32)) & 1;
            let expected = 0.5 * (q - if hbit == 1 { 0.0 } else { 4.0 });
            assert_eq!(*v, expected, "element {i}");
        }
        assert_eq!(out[0], -2.0);
    }

    /// 12 scale bytes giving every sub-block scale 1 and min 2.
    fn k4_scales() -> Vec<u8> {
        let mut s = vec![1u8; 4];
        s.extend([2u8; 4]);
        s.extend([0x21u8; 4]);
        s
    }

    #[test]
    fn q4_k_scale_min_pairs() {
        let mut b = half(0.5).to_vec();
        b.extend(half(0.25));
        b.extend(k4_scales());
        b.extend(std::iter::repeat_n(0x5Au8, 128));
        let out = deq(GgmlType::Q4_K, &b);
        for (i, v) in out.iter().enumerate() {
            let q = if i % 64 < 32 { 10.0 } else { 5.0 };
            assert_eq!(*v, 0.5 * q - 0.25 * 2.0, "element {i}");
        }
    }

    #[test]
    fn q5_k_adds_sixteen_where_qh_bit_set() {
        let mut b = half(0.5).to_vec();
        b.extend(half(0.25));
        b.extend(k4_scales());
        b.extend([0b0101_0101u8; 32]); // bit 2c set for chunk c: first 32 of each 64 get +16
        b.extend(std::iter::repeat_n(0x5Au8, 128));
        let out = deq(GgmlType::Q5_K, &b);
        for (i, v) in out.iter().enumerate() {
            let q = if i % 64 < 32 { 26.0 } else { 5.0 };
            assert_eq!(*v, 0.5 * q - 0.5, "element {i}");
        }
    }

    #[test]
    fn q6_k_six_bit_values_offset_32() {
        let mut b = vec![0x21u8; 128]; // low nibble 1, high nibble 2
        b.extend([0b1110_0100u8; 64]); // high bits 0, 1, 2, 3 for the four runs
        b.extend([2u8; 16]);
        b.extend(half(0.5));
        let out = deq(GgmlType::Q6_K, &b);
        for (i, v) in out.iter().enumerate() {
            let run = (i % 128) / 32;
            let low = if run < 2 { 1 } else { 2 };
            let q = (low | (run << 4)) as f32 - 32.0;
            assert_eq!(*v, 0.5 * 2.0 * q, "element {i}");
        }
    }

    #[test]
    fn q8_k_f32_scale() {
        let mut b = 0.25f32.to_le_bytes().to_vec();
        b.extend((0..=255u8).map(|q| q.wrapping_sub(128)));
        b.extend([0u8; 32]);
        let out = deq(GgmlType::Q8_K, &b);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as i32 - 128) as f32 * 0.25);
        }
    }

    #[test]
    fn iq4_nl_uses_the_code_book() {
        let mut b = half(1.0).to_vec();
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let out = deq(GgmlType::IQ4_NL, &b);
        for j in 0..16 {
            assert_eq!(out[j], f32::from(IQ4_VALUES[j]));
            assert_eq!(out[j + 16], f32::from(IQ4_VALUES[j]));
        }
    }

    #[test]
    fn plain_types() {
        let b = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
        assert_eq!(dequantize(GgmlType::F32, &b, 2).unwrap(), vec![1.5, -2.0]);
        let b = [half(0.5), half(-3.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), vec![0.5, -3.0]);
        let b = [
            bf16::from_f32(1.25).to_le_bytes(),
            bf16::from_f32(-7.0).to_le_bytes(),
        ]
        .concat();
        assert_eq!(dequantize(GgmlType::BF16, &b, 2).unwrap(), vec![1.25, -7.0]);
        assert_eq!(dequantize(GgmlType::I8, &[0xFF], 1).unwrap(), vec![-1.0]);
        assert_eq!(
            dequantize(GgmlType::F64, &2.5f64.to_le_bytes(), 1).unwrap(),
            vec![2.5]
        );
    }

    #[test]
    fn quantizers_round_trip_within_their_rounding_error() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
            .collect();
        for (ty, steps) in [
            (GgmlType::Q8_0, 254.0),
            (GgmlType::Q4_0, 16.0),
            (GgmlType::Q4_1, 15.0),
        ] {
            let bytes = quantize(ty, &values).unwrap();
            let back = dequantize(ty, &bytes, values.len()).unwrap();
            for (block, back) in values.chunks(32).zip(back.chunks(32)) {
                let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let amax = lo.abs().max(hi.abs());
                let tolerance = match ty {
                    // the extreme of the other sign is clamped from +8 to +7: up to a full step
                    GgmlType::Q4_0 => amax / 8.0,
                    GgmlType::Q4_1 => (hi - lo) / steps * 0.5,
                    _ => amax / steps,
                } * 1.01
                    + 1e-3; // slack for the f16 scale
                for (a, b) in block.iter().zip(back) {
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{ty}: {a} -> {b} (tolerance {tolerance})"
                    );
                }
            }
        }
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let exact = [0.5f32, -2.0, 1024.0];
            let bytes = quantize(ty, &exact).unwrap();
            assert_eq!(dequantize(ty, &bytes, 3).unwrap(), exact, "{ty}");
        }
    }

    #[test]
    fn all_zero_blocks_quantize_to_zero() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bytes = quantize(ty, &[0.0; 32]).unwrap();
            assert_eq!(dequantize(ty, &bytes, 32).unwrap(), vec![0.0; 32], "{ty}");
        }
    }

    #[test]
    fn bad_lengths_and_types_are_typed_errors() {
        assert_eq!(
            dequantize(GgmlType::Q4_1, &[0; 20], 31).unwrap_err(),
            QuantError::NotWholeBlocks {
                ty: GgmlType::Q4_1,
                n_elements: 31,
                block_size: 32
            }
        );
        assert_eq!(
            dequantize(GgmlType::Q4_1, &[0; 19], 32).unwrap_err(),
            QuantError::LengthMismatch {
                ty: GgmlType::Q4_1,
                n_elements: 32,
                expected: 20,
                actual: 19
            }
        );
        let err = dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap_err();
        assert_eq!(err.to_string(), "unsupported tensor type IQ2_XXS");
        assert!(matches!(
            dequantize(GgmlType::Other(99), &[], 0),
            Err(QuantError::UnsupportedType(GgmlType::Other(99)))
        ));
        assert!(matches!(
            quantize(GgmlType::Q6_K, &[0.0; 256]),
            Err(QuantError::UnsupportedType(GgmlType::Q6_K))
        ));
        assert!(matches!(
            quantize(GgmlType::Q8_0, &[0.0; 33]),
            Err(QuantError::NotWholeBlocks { .. })
        ));
    }
}
