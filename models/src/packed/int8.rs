//! 4-bit weights against 8-bit activations, sixteen rows at a time.
//!
//! A weight loaded while the switch is on is stored as [`Q4Tile`]s: the same block at the same
//! position of sixteen consecutive rows, its four-bit values arranged so that one vector lane
//! holds one row. One VNNI `vpdpbusd` then multiplies four values of each of the sixteen rows by
//! the same four (broadcast) values of the token and adds them into that row's lane, so a block
//! of sixteen rows takes eight of them, a conversion and two FMAs per token, where the f32
//! kernels take thirty-two FMAs (and a first version with one row per vector took a conversion,
//! a scale blend and an FMA for every two blocks of every row). The unpacking of a tile is
//! shared by every token of a batch.
//!
//! Per token and row the floating-point operations are the same whatever the number of tokens,
//! `acc = fma(dot_b, d_w,b * d_x,b, acc)` then `acc = fma(m_b, Σx_b, acc)` for b in order (the
//! integer dot products are exact, so how they are summed does not matter), so a session gets
//! the same bits alone and in a batch; the portable version does the same operations and gives
//! the same bits too.
//!
//! Q8_0 weights ([`Q8Tile`]) take the same path: their values are signed, and `vpdpbusd`
//! multiplies unsigned bytes by signed ones, so a tile keeps each weight plus 128 (unsigned), and
//! `128 Σq` of the token's block (one integer per token and block) is taken off again, exactly.
//! The LM head of SmolLM2 is Q8_0: a client's share of each token.

use super::{BLOCK, Q4Block, Q8Block};

/// Rows per tile: one per lane of a 512-bit vector of f32.
pub const TILE_ROWS: usize = 16;

/// The most tokens one kernel call takes (their accumulators stay in registers).
const MANY: usize = 8;

/// One token's values for the integer kernels: per block of 32, `x ≈ d * q` with `q` in
/// -127..=127, and the sum of the rounded values, as `d Σq` (for the 4-bit blocks' offset `m`)
/// and as `Σq` (for the Q8_0 kernel's offset).
///
/// The offset term takes the rounded sum, not the exact one, so that the rounding errors `e`
/// meet the weights themselves, `Σ (d_w q_w + m) e`, which are centred on zero; with the exact
/// sum they met `d_w q_w` alone (q_w is 0..15, mean 7.5), and SmolLM2's first-token
/// log-probabilities moved by 0.34 against the reference instead of 0.16.
pub struct QuantizedRow {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
    pub qsum: Vec<i32>,
}

impl QuantizedRow {
    pub fn new(x: &[f32]) -> Self {
        let nb = x.len() / BLOCK;
        let mut row = QuantizedRow {
            q: vec![0; nb * BLOCK],
            d: Vec::with_capacity(nb),
            sum: Vec::with_capacity(nb),
            qsum: Vec::with_capacity(nb),
        };
        #[cfg(target_arch = "x86_64")]
        let vector = vnni_detected();
        for (block, q) in x.chunks_exact(BLOCK).zip(row.q.chunks_exact_mut(BLOCK)) {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks of BLOCK");
            let q: &mut [i8; BLOCK] = q.try_into().expect("chunks of BLOCK");
            #[cfg(target_arch = "x86_64")]
            let (d, qsum) = if vector {
                // SAFETY: the CPU has AVX-512F and BW.
                unsafe { vnni::round_block(block, q) }
            } else {
                round_block(block, q)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (d, qsum) = round_block(block, q);
            row.d.push(d);
            row.sum.push(d * qsum as f32);
            row.qsum.push(qsum);
        }
        row
    }

    fn blocks(&self) -> usize {
        self.d.len()
    }
}

/// Adding and taking off 1.5 * 2^23 rounds an f32 below 2^22 to the nearest integer (ties to
/// even) in two additions that vectorize; `f32::round` was a libm call per value.
const ROUND: f32 = 12_582_912.0;

/// One block of 32 values rounded to `q`, with its scale and the sum of its rounded values; the
/// vector kernel does the same operations, bit for bit.
fn round_block(block: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(block) {
        *q = (((v * inv).clamp(-127.0, 127.0) + ROUND) - ROUND) as i8;
    }
    (d, q.iter().map(|&v| i32::from(v)).sum())
}

/// Block `b` of sixteen rows. `qs` is four 64-byte groups; in group `g`, bytes `4r..4r + 4`
/// belong to row `r`: their low nibbles are the row's values `8g..8g + 4`, their high nibbles
/// values `8g + 4..8g + 8`, so masking a group gives one vector of the kernel and shifting it
/// gives the next. Value `j` of row `r` is `d[r] * q + m[r]`, as in [`Q4Block`]; `d` and `m`
/// are kept as the f16 bits the file has (see [`scales_fit`]).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q4Tile {
    pub qs: [u8; 256],
    pub d: [u16; TILE_ROWS],
    pub m: [u16; TILE_ROWS],
}

// SAFETY: bytes and u16s only, no padding (256 + 2 * 32 bytes, a multiple of the alignment 4):
// every bit pattern is a valid tile, as reading one from a mapped file needs.
unsafe impl bytemuck::Zeroable for Q4Tile {}
unsafe impl bytemuck::Pod for Q4Tile {}

impl Q4Tile {
    /// The four-bit value `j` (0..32) of lane `r`.
    fn q(&self, r: usize, j: usize) -> u8 {
        let (group, k) = (j / 8, j % 8);
        let byte = self.qs[64 * group + 4 * r + k % 4];
        if k < 4 { byte & 0xF } else { byte >> 4 }
    }
}

/// Block `b` of sixteen Q8_0 rows: `qs` is eight 64-byte groups, bytes `4r..4r + 4` of group
/// `g` row `r`'s values `4g..4g + 4`, each plus 128 (see the module comment); value `j` of row
/// `r` is `d[r] * q` (`d` as f16 bits).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Tile {
    pub qs: [u8; 512],
    pub d: [u16; TILE_ROWS],
}

// SAFETY: as for Q4Tile (512 + 32 bytes, no padding).
unsafe impl bytemuck::Zeroable for Q8Tile {}
unsafe impl bytemuck::Pod for Q8Tile {}

impl Q8Tile {
    /// The signed value `j` of lane `r`.
    fn q(&self, r: usize, j: usize) -> i8 {
        (self.qs[64 * (j / 4) + 4 * r + j % 4] ^ 0x80) as i8
    }
}

/// A block form that can be tiled sixteen rows at a time.
pub(crate) trait Tile: Copy + Send + Sync + Sized {
    /// The untiled block.
    type Block: Copy;
    /// A tile takes at most the bytes of sixteen blocks, with their alignment, so that a weight
    /// can be tiled in its own memory (checked when [`tile`] is compiled for a type).
    const FITS: () = assert!(
        size_of::<Self>() <= TILE_ROWS * size_of::<Self::Block>()
            && align_of::<Self>() == align_of::<Self::Block>()
            && size_of::<Self>().is_multiple_of(align_of::<Self>())
    );
    /// Whether every scale (and offset) of `blk` is an f16 value, as a tile keeps them.
    fn scales_fit(blk: &Self::Block) -> bool;
    /// A tile of zero rows.
    const ZERO: Self;
    /// Puts `blk` in lane `r`.
    fn set(&mut self, r: usize, blk: &Self::Block);
    /// The block in lane `r`.
    fn get(&self, r: usize) -> Self::Block;
    /// Lane `r`'s 32 values as f32, exactly as the untiled block's dequantizer gives them.
    fn dequantize(&self, r: usize, out: &mut [f32]);
    /// Lane `r`'s integer dot product with a token's 32 rounded values.
    fn dot(&self, r: usize, q: &[i8]) -> i32;
    /// Whether values have an offset `m` (`d * q + m`).
    const HAS_OFFSET: bool;
    /// Lane `r`'s offset `m`.
    fn offset(&self, r: usize) -> f32;
    /// Lane `r`'s scale.
    fn scale(&self, r: usize) -> f32;
    /// [`portable_group_dot`] for `N` tokens with the integer kernel.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI, and every token has at least `tiles.len()` blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const N: usize>(
        tiles: &[Self],
        xs: &[&QuantizedRow; N],
        out: &mut [[f32; TILE_ROWS]; N],
    );
}

impl Tile for Q4Tile {
    type Block = Q4Block;
    const HAS_OFFSET: bool = true;
    const ZERO: Self = Q4Tile {
        qs: [0; 256],
        d: [0; TILE_ROWS],
        m: [0; TILE_ROWS],
    };

    fn scales_fit(blk: &Q4Block) -> bool {
        is_f16(blk.d) && is_f16(blk.m)
    }

    fn set(&mut self, r: usize, blk: &Q4Block) {
        let value = |j: usize| {
            if j < 16 {
                blk.qs[j] & 0xF
            } else {
                blk.qs[j - 16] >> 4
            }
        };
        for group in 0..4 {
            for k in 0..4 {
                self.qs[64 * group + 4 * r + k] =
                    value(8 * group + k) | (value(8 * group + 4 + k) << 4);
            }
        }
        self.d[r] = f16_bits(blk.d);
        self.m[r] = f16_bits(blk.m);
    }

    fn get(&self, r: usize) -> Q4Block {
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = self.q(r, j) | (self.q(r, j + 16) << 4);
        }
        Q4Block {
            d: self.scale(r),
            m: self.offset(r),
            qs,
        }
    }

    fn dequantize(&self, r: usize, out: &mut [f32]) {
        let (d, m) = (self.scale(r), self.offset(r));
        for (group, o) in out.chunks_exact_mut(8).enumerate() {
            let bytes = &self.qs[64 * group + 4 * r..][..4];
            for (k, &byte) in bytes.iter().enumerate() {
                o[k] = f32::from(byte & 0xF) * d + m;
                o[k + 4] = f32::from(byte >> 4) * d + m;
            }
        }
    }

    fn dot(&self, r: usize, q: &[i8]) -> i32 {
        (0..BLOCK)
            .map(|j| i32::from(self.q(r, j)) * i32::from(q[j]))
            .sum()
    }

    fn offset(&self, r: usize) -> f32 {
        f16_value(self.m[r])
    }

    fn scale(&self, r: usize) -> f32 {
        f16_value(self.d[r])
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const N: usize>(
        tiles: &[Self],
        xs: &[&QuantizedRow; N],
        out: &mut [[f32; TILE_ROWS]; N],
    ) {
        // SAFETY: passed on from the caller.
        unsafe { vnni::q4_group_dots::<N>(tiles, xs, out) }
    }
}

impl Tile for Q8Tile {
    type Block = Q8Block;
    const HAS_OFFSET: bool = false;
    const ZERO: Self = Q8Tile {
        qs: [0x80; 512],
        d: [0; TILE_ROWS],
    };

    fn scales_fit(blk: &Q8Block) -> bool {
        is_f16(blk.d)
    }

    fn set(&mut self, r: usize, blk: &Q8Block) {
        for (j, &q) in blk.qs.iter().enumerate() {
            self.qs[64 * (j / 4) + 4 * r + j % 4] = q as u8 ^ 0x80;
        }
        self.d[r] = f16_bits(blk.d);
    }

    fn get(&self, r: usize) -> Q8Block {
        Q8Block {
            d: self.scale(r),
            qs: std::array::from_fn(|j| self.q(r, j)),
        }
    }

    fn dequantize(&self, r: usize, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = f32::from(self.q(r, j)) * self.scale(r);
        }
    }

    fn dot(&self, r: usize, q: &[i8]) -> i32 {
        (0..BLOCK)
            .map(|j| i32::from(self.q(r, j)) * i32::from(q[j]))
            .sum()
    }

    fn offset(&self, _: usize) -> f32 {
        0.0
    }

    fn scale(&self, r: usize) -> f32 {
        f16_value(self.d[r])
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni<const N: usize>(
        tiles: &[Self],
        xs: &[&QuantizedRow; N],
        out: &mut [[f32; TILE_ROWS]; N],
    ) {
        // SAFETY: passed on from the caller.
        unsafe { vnni::q8_group_dots::<N>(tiles, xs, out) }
    }
}

/// Whether every block's scales are f16 values, which a tile keeps as f16: true for every
/// weight read from a GGUF file (Q4_0's offset `-8 d` too, short of an overflow past 65504).
pub fn scales_fit<T: Tile>(blocks: &[T::Block]) -> bool {
    blocks.iter().all(T::scales_fit)
}

fn is_f16(v: f32) -> bool {
    f16_value(f16_bits(v)).to_bits() == v.to_bits()
}

fn f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

fn f16_value(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// `rows` rows of `nb` blocks as tiles, row group by row group (each group's `nb` tiles in
/// block order); a last group of fewer than sixteen rows is padded with zero rows. When `rows`
/// is a multiple of sixteen the tiles are written over the blocks' own memory, a group at a time,
/// and the buffer is then shrunk to the tiles' size: tiling into a second buffer and freeing the
/// first left the heap fragmented (a process holding 8 of the 24 blocks of a 1.7B-shaped model
/// kept 51 MiB more than with untiled weights). Every scale must fit ([`scales_fit`]).
pub fn tile<T: Tile>(mut blocks: Vec<T::Block>, rows: usize, nb: usize) -> Vec<T> {
    let () = T::FITS;
    blocks.shrink_to_fit();
    let len = blocks.len();
    if len == 0 || !rows.is_multiple_of(TILE_ROWS) || len != rows * nb || blocks.capacity() != len {
        return tile_copy(&blocks, rows, nb);
    }
    let mut blocks = std::mem::ManuallyDrop::new(blocks);
    let base = blocks.as_mut_ptr();
    let tiles = base.cast::<T>();
    let mut group: Vec<T::Block> = Vec::with_capacity(TILE_ROWS * nb);
    for g in 0..rows / TILE_ROWS {
        group.clear();
        // SAFETY: group g's blocks lie inside the buffer (len = rows * nb) and are copied out
        // before any tile is written. Tile g * nb + b ends at or before the end of group g's
        // blocks (a tile is at most sixteen blocks' bytes, T::FITS), so it only covers blocks
        // already copied out (of this group or earlier ones); it is aligned, as the buffer is
        // for blocks and a tile's size is a multiple of the common alignment (T::FITS).
        unsafe {
            let first = base.add(g * TILE_ROWS * nb);
            group.extend_from_slice(std::slice::from_raw_parts(first, TILE_ROWS * nb));
            for b in 0..nb {
                let mut t = T::ZERO;
                for r in 0..TILE_ROWS {
                    t.set(r, &group[r * nb + b]);
                }
                tiles.add(g * nb + b).write(t);
            }
        }
    }
    let count = len / TILE_ROWS;
    let (old, size) = (
        std::alloc::Layout::array::<T::Block>(len).expect("the blocks were allocated"),
        count * size_of::<T>(),
    );
    let tiles = if size == old.size() {
        tiles
    } else {
        // SAFETY: the buffer was allocated by the global allocator with layout `old` (a Vec of
        // len blocks, capacity == len), and size is not zero (len > 0).
        let shrunk = unsafe { std::alloc::realloc(base.cast(), old, size) };
        if shrunk.is_null() {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(size, old.align()).expect("a smaller size"),
            );
        }
        shrunk.cast::<T>()
    };
    // SAFETY: the buffer now holds `size` bytes with the blocks' alignment, which is the tiles'
    // (T::FITS): exactly `count` tiles, every one of them written above (realloc keeps them).
    unsafe { Vec::from_raw_parts(tiles, count, count) }
}

/// [`tile`] into a new buffer, padding the last group.
fn tile_copy<T: Tile>(blocks: &[T::Block], rows: usize, nb: usize) -> Vec<T> {
    let groups = rows.div_ceil(TILE_ROWS);
    let mut tiles = Vec::with_capacity(groups * nb);
    for g in 0..groups {
        for b in 0..nb {
            let mut t = T::ZERO;
            for r in 0..TILE_ROWS.min(rows - g * TILE_ROWS) {
                t.set(r, &blocks[(g * TILE_ROWS + r) * nb + b]);
            }
            tiles.push(t);
        }
    }
    tiles
}

/// Row `r` of a tiled weight of `nb` blocks a row, as f32 values (exactly as the untiled
/// blocks give them).
pub fn dequantize_row<T: Tile>(tiles: &[T], nb: usize, r: usize, out: &mut [f32]) {
    let (g, lane) = (r / TILE_ROWS, r % TILE_ROWS);
    for (t, o) in tiles[g * nb..(g + 1) * nb]
        .iter()
        .zip(out.chunks_exact_mut(BLOCK))
    {
        t.dequantize(lane, o);
    }
}

/// Row `r` as untiled blocks (for reordering and stacking).
pub fn untile_row<T: Tile>(tiles: &[T], nb: usize, r: usize) -> impl Iterator<Item = T::Block> {
    let (g, lane) = (r / TILE_ROWS, r % TILE_ROWS);
    tiles[g * nb..(g + 1) * nb].iter().map(move |t| t.get(lane))
}

/// One row group (its `nb` tiles) against every token: `out[t]` gets the group's sixteen
/// results for token `t`, [`MANY`] tokens per pass over the tiles (then 4, 2, 1).
pub fn group_dots<T: Tile>(tiles: &[T], xs: &[&QuantizedRow], out: &mut [[f32; TILE_ROWS]]) {
    let mut t = 0;
    while t < out.len() {
        t += match out.len() - t {
            8.. => many::<T, MANY>(tiles, &xs[t..], &mut out[t..]),
            4.. => many::<T, 4>(tiles, &xs[t..], &mut out[t..]),
            2.. => many::<T, 2>(tiles, &xs[t..], &mut out[t..]),
            _ => many::<T, 1>(tiles, &xs[t..], &mut out[t..]),
        };
    }
}

fn many<T: Tile, const N: usize>(
    tiles: &[T],
    xs: &[&QuantizedRow],
    out: &mut [[f32; TILE_ROWS]],
) -> usize {
    if let (Some(xs), Some(out)) = (xs.first_chunk::<N>(), out.first_chunk_mut::<N>()) {
        let nb = xs.iter().fold(tiles.len(), |nb, x| nb.min(x.blocks()));
        let tiles = &tiles[..nb];
        #[cfg(target_arch = "x86_64")]
        if vnni_detected() {
            // SAFETY: the CPU has AVX-512F, BW and VNNI; every token has nb blocks.
            unsafe { T::vnni::<N>(tiles, xs, out) };
            return N;
        }
        for t in 0..N {
            out[t] = portable_group_dot(tiles, xs[t]);
        }
    }
    N
}

/// The kernels' operations in plain Rust, bit for bit (`mul_add` is the FMA).
pub fn portable_group_dot<T: Tile>(tiles: &[T], x: &QuantizedRow) -> [f32; TILE_ROWS] {
    let mut acc = [0f32; TILE_ROWS];
    for (b, t) in tiles.iter().enumerate().take(x.blocks()) {
        let q = &x.q[b * BLOCK..(b + 1) * BLOCK];
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = (t.dot(r, q) as f32).mul_add(t.scale(r) * x.d[b], *acc);
            if T::HAS_OFFSET {
                *acc = t.offset(r).mul_add(x.sum[b], *acc);
            }
        }
    }
    acc
}

pub fn vnni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q4Tile, Q8Tile, QuantizedRow, TILE_ROWS};

    /// [`super::round_block`] sixteen values a vector: a row's rounding was a scalar loop with
    /// a saturating conversion per value, 7 % of a pass of 8 sessions.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn round_block(block: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, i32) {
        // SAFETY: block is 32 f32 and q 32 bytes: two vectors each.
        unsafe {
            let lo = _mm512_loadu_ps(block.as_ptr());
            let hi = _mm512_loadu_ps(block.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let d = amax / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let round = _mm512_set1_ps(super::ROUND);
            let (min, max) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
            let to_int = |v: __m512| {
                let clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), min), max);
                // Whole numbers after the rounding additions: the conversion is exact.
                _mm512_cvtps_epi32(_mm512_sub_ps(_mm512_add_ps(clamped, round), round))
            };
            let (qlo, qhi) = (to_int(lo), to_int(hi));
            _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qlo));
            _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qhi));
            (d, _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi)))
        }
    }

    /// Asks for the tile [`AHEAD`] places after `tile` (past the slice end too: the next
    /// group's tiles usually follow, and a prefetch never faults).
    #[inline(always)]
    fn prefetch_ahead<T>(tile: &T) {
        let at = (tile as *const T).wrapping_add(AHEAD).cast::<i8>();
        let mut line = 0;
        while line < size_of::<T>() {
            // SAFETY: a prefetch reads nothing and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line)) };
            line += 64;
        }
    }

    /// Tiles prefetched ahead of the one being computed. Without it the loads of each tile's
    /// weights stalled the kernel: a pass of 8 sessions through SmolLM2-135M took 1.65-1.98 ms
    /// a token, 1.31-1.57 with it (four runs each, alternated); 2 to 16 tiles ahead measured
    /// the same within the noise.
    const AHEAD: usize = 4;

    /// [`super::portable_group_dot`] of 4-bit tiles for `N` tokens, each tile unpacked once
    /// for all.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI, and every token has at least `tiles.len()` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q4_group_dots<const N: usize>(
        tiles: &[Q4Tile],
        xs: &[&QuantizedRow; N],
        out: &mut [[f32; TILE_ROWS]; N],
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, tile) in tiles.iter().enumerate() {
            // SAFETY: a tile's qs are four 64-byte groups, d and m sixteen f16 each; block b of
            // every token exists (the caller's promise).
            unsafe {
                prefetch_ahead(tile);
                let p = tile.qs.as_ptr();
                let mut w = [_mm512_setzero_si512(); 8];
                for g in 0..4 {
                    let v = _mm512_loadu_si512(p.add(64 * g).cast());
                    w[2 * g] = _mm512_and_si512(v, low);
                    w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.d.as_ptr().cast()));
                let m = _mm512_cvtph_ps(_mm256_loadu_si256(tile.m.as_ptr().cast()));
                for t in 0..N {
                    let x = xs[t];
                    let q = x.q.as_ptr().add(b * BLOCK).cast::<i32>();
                    let word = |k: usize| _mm512_set1_epi32(q.add(k).read_unaligned());
                    // Two chains so that consecutive products do not wait on each other.
                    let mut even = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], word(0));
                    let mut odd = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], word(1));
                    for k in (2..8).step_by(2) {
                        even = _mm512_dpbusd_epi32(even, w[k], word(k));
                        odd = _mm512_dpbusd_epi32(odd, w[k + 1], word(k + 1));
                    }
                    let dots = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(*x.d.get_unchecked(b)));
                    acc[t] = _mm512_fmadd_ps(dots, scale, acc[t]);
                    acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.sum.get_unchecked(b)), acc[t]);
                }
            }
        }
        for t in 0..N {
            // SAFETY: out[t] is sixteen f32.
            unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
        }
    }

    /// [`super::portable_group_dot`] of Q8_0 tiles for `N` tokens: the weights are stored plus
    /// 128 (unsigned, as `vpdpbusd` wants them), and `128 Σq` of the token's block is taken off.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI, and every token has at least `tiles.len()` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q8_group_dots<const N: usize>(
        tiles: &[Q8Tile],
        xs: &[&QuantizedRow; N],
        out: &mut [[f32; TILE_ROWS]; N],
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        for (b, tile) in tiles.iter().enumerate() {
            // SAFETY: a tile's qs are eight 64-byte groups, d sixteen f16; block b of every token
            // exists (the caller's promise).
            unsafe {
                prefetch_ahead(tile);
                let p = tile.qs.as_ptr();
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.d.as_ptr().cast()));
                for t in 0..N {
                    let x = xs[t];
                    let q = x.q.as_ptr().add(b * BLOCK).cast::<i32>();
                    let word = |k: usize| _mm512_set1_epi32(q.add(k).read_unaligned());
                    let w = |k: usize| _mm512_loadu_si512(p.add(64 * k).cast());
                    let mut even = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w(0), word(0));
                    let mut odd = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w(1), word(1));
                    for k in (2..8).step_by(2) {
                        even = _mm512_dpbusd_epi32(even, w(k), word(k));
                        odd = _mm512_dpbusd_epi32(odd, w(k + 1), word(k + 1));
                    }
                    let offset = _mm512_set1_epi32(128 * *x.qsum.get_unchecked(b));
                    let exact = _mm512_sub_epi32(_mm512_add_epi32(even, odd), offset);
                    let dots = _mm512_cvtepi32_ps(exact);
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(*x.d.get_unchecked(b)));
                    acc[t] = _mm512_fmadd_ps(dots, scale, acc[t]);
                }
            }
        }
        for t in 0..N {
            // SAFETY: out[t] is sixteen f32.
            unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn vector_rounding_matches_the_scalar_rounding_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if vnni_detected() {
            let mut rng = SplitMix64(11);
            let mut blocks: Vec<[f32; BLOCK]> = vec![[0.0; BLOCK], [-0.0; BLOCK], [1e-30; BLOCK]];
            for scale in [1e-6f32, 0.01, 1.0, 3.7, 1e4, 3e30] {
                for _ in 0..200 {
                    blocks.push(std::array::from_fn(|_| rng.uniform_pm1() * scale));
                }
            }
            // Ties at half steps, one value far above the rest, and a single non-zero value.
            blocks.push(std::array::from_fn(|i| (i as f32 - 15.5) * 127.0 / 31.0));
            blocks.push(std::array::from_fn(|i| if i == 3 { 1e3 } else { 0.5 }));
            blocks.push(std::array::from_fn(|i| if i == 31 { -2.0 } else { 0.0 }));
            for block in &blocks {
                let (mut scalar, mut vector) = ([0i8; BLOCK], [0i8; BLOCK]);
                let a = round_block(block, &mut scalar);
                // SAFETY: vnni_detected() saw AVX-512F and BW.
                let b = unsafe { vnni::round_block(block, &mut vector) };
                assert_eq!((a.0.to_bits(), a.1, scalar), (b.0.to_bits(), b.1, vector));
            }
        }
    }
}
