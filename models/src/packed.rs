//! Linear-layer weights kept on the CPU in their quantized block format, with the products the
//! blocks need: one-token matrix-vector products that dequantize as they read (decoding is bound
//! by reading the weights, and a Q4_1 row is a sixth of its f32 bytes), and products of many
//! rows (several sessions' steps, prompt chunks) that compute each row exactly as its one-token
//! product, each weight row read once for a block of rows while it is in cache.
//!
//! Q4_0 and Q4_1 become one 4-bit form (`value = d * q + m`, with `m = -8 d` for Q4_0), Q8_0
//! keeps its form, Q6_K becomes a byte per value with an f32 scale per 16 (the LM head of many
//! llama-quantize files: widened to f32 it read 400 MB a token on a 1.7B model); all store their
//! scales as f32 so that no f16 conversion sits in the inner loop. Other types stay in their file
//! bytes and are widened a row at a time. The x86-64 kernels use AVX-512F or
//! AVX2 + FMA when the CPU has them (checked at run time) and portable loops otherwise; setting
//! `SUNSWARM_NO_AVX512` keeps a CPU with AVX-512 on the AVX2 kernels. The widths sum in different
//! orders, so two peers on different kernels agree to rounding, not bit for bit. The host path's
//! attention and SwiGLU (`attention`) choose their kernels the same way.
//!
//! Opt-in, 4-bit rows can multiply 8-bit activations instead ([`set_int8_activations`], or
//! `SUNSWARM_INT8=1`, before the weights are loaded): the weight is stored in tiles of sixteen
//! rows, each token's values are rounded to a byte per value with a scale per 32 (once per
//! product), and AVX-512 VNNI integer dot products replace widening every weight to f32 (see
//! `int8`). A decode step is bound by that widening on this kind of CPU (one thread gave 7.4
//! tok/s against two threads' 13.8 on a 1.7B model, so not by memory). Rounding the activations
//! moves logits by about what llama.cpp's Q8 path does and can flip greedy near-ties, so it is
//! off by default and the f32 path is what the reference tests check; on, a row gets the same
//! bits alone and in a batch, as the f32 path. A tiled weight multiplies prompts the same way,
//! eight tokens per pass over its tiles: for SmolLM2 that ran prompts twice as fast as widening
//! the weight for an f32 matrix product, and the products no longer depend on how many threads
//! split them.

use rayon::prelude::*;

use crate::ModelError;
use crate::gguf::GgmlType;
use crate::quant::{self, half_at};

/// Values per quantized block (Q4_0, Q4_1, Q8_0).
pub(crate) const BLOCK: usize = 32;

/// 32 four-bit values: `value = d * q + m`; byte j holds value j (low nibble) and j + 16 (high).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q4Block {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// 32 eight-bit values: `value = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q8Block {
    pub d: f32,
    pub qs: [i8; 32],
}

/// 32 six-bit values of a Q6_K weight (two of its 16-value sub-blocks): `value = d[i / 16] *
/// q`, where `d` is the super-block's scale times the sub-block's, exactly as ggml's dequantizer
/// multiplies them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q6Block {
    pub d: [f32; 2],
    pub qs: [i8; 32],
}

/// Values per Q6_K super-block, and its bytes.
const Q6_K_VALUES: usize = 256;
const Q6_K_BYTES: usize = 210;

/// A Q6_K super-block as eight [`Q6Block`]s (the layout `quant::q6_k_block` reads).
fn q6_k_blocks(b: &[u8]) -> [Q6Block; 8] {
    let d = half_at(b, 208);
    let mut q = [0i8; Q6_K_VALUES];
    for half in 0..2 {
        let ql = &b[64 * half..64 * (half + 1)];
        let qh = &b[128 + 32 * half..128 + 32 * (half + 1)];
        let y = &mut q[128 * half..128 * (half + 1)];
        for l in 0..32 {
            // Six bits each (0..63) less 32: always an i8.
            y[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            y[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    // Sub-block j (values 16j..16j + 16) has scale byte j.
    let scale = |j: usize| d * f32::from(b[192 + j] as i8);
    std::array::from_fn(|i| Q6Block {
        d: [scale(2 * i), scale(2 * i + 1)],
        qs: q[32 * i..32 * (i + 1)].try_into().expect("32 values"),
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Store {
    F32(Vec<f32>),
    Q4(Vec<Q4Block>),
    Q8(Vec<Q8Block>),
    Q6(Vec<Q6Block>),
    /// 4-bit blocks of a weight loaded for 8-bit activations, sixteen rows a tile
    /// ([`int8::Q4Tile`]); `rows` rounded up to sixteen.
    Q4Tiles(mapped::Tiles<int8::Q4Tile>),
    /// Q8_0 blocks of a weight loaded for 8-bit activations ([`int8::Q8Tile`]).
    Q8Tiles(mapped::Tiles<int8::Q8Tile>),
    /// Any other ggml type (K-quants, Q5, F16...) kept as the file has it, `row_bytes` a row:
    /// rows are widened one at a time as products need them, so the weight takes its file size
    /// in memory rather than four bytes a value.
    Raw {
        ty: GgmlType,
        row_bytes: usize,
        bytes: Vec<u8>,
    },
}

/// A `[rows, cols]` weight (Hugging Face `[out, in]` layout), row-major, each row whole blocks
/// when quantized.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PackedMatrix {
    rows: usize,
    cols: usize,
    store: Store,
}

impl PackedMatrix {
    pub(crate) fn from_f32(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self, ModelError> {
        if data.len() != rows * cols {
            return Err(ModelError::BadWeights(format!(
                "a [{rows}, {cols}] weight needs {} values, got {}",
                rows * cols,
                data.len()
            )));
        }
        Ok(Self {
            rows,
            cols,
            store: Store::F32(data),
        })
    }

    /// Packs a ggml tensor's bytes: Q4_0, Q4_1 and Q8_0 rows of whole blocks stay quantized,
    /// everything else is dequantized to f32.
    pub(crate) fn from_ggml(
        ty: GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ModelError> {
        let n = rows * cols;
        if ty == GgmlType::Q6_K && cols.is_multiple_of(Q6_K_VALUES) {
            let expected = n / Q6_K_VALUES * Q6_K_BYTES;
            if bytes.len() != expected {
                return Err(ModelError::BadWeights(format!(
                    "a [{rows}, {cols}] {ty} weight takes {expected} bytes, got {}",
                    bytes.len()
                )));
            }
            let store = Store::Q6(
                bytes
                    .chunks_exact(Q6_K_BYTES)
                    .flat_map(q6_k_blocks)
                    .collect(),
            );
            return Ok(Self { rows, cols, store });
        }
        let type_size = match ty {
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            _ => 0,
        };
        if type_size == 0 || !cols.is_multiple_of(BLOCK) {
            let raw = match (ty.block_size(), ty.type_size()) {
                (Some(bs), Some(ts))
                    if ty != GgmlType::F32 && bs > 0 && cols.is_multiple_of(bs) =>
                {
                    Some(cols / bs * ts)
                }
                _ => None,
            };
            if let Some(row_bytes) = raw {
                if bytes.len() != rows * row_bytes {
                    return Err(ModelError::BadWeights(format!(
                        "a [{rows}, {cols}] {ty} weight takes {} bytes, got {}",
                        rows * row_bytes,
                        bytes.len()
                    )));
                }
                // Only a type this build can widen is kept: check one row now, not mid-product.
                let mut probe = vec![0f32; cols];
                if rows > 0 {
                    quant::dequantize_into(ty, &bytes[..row_bytes], &mut probe)
                        .map_err(|e| ModelError::BadWeights(format!("{ty} weight: {e}")))?;
                }
                return Ok(Self {
                    rows,
                    cols,
                    store: Store::Raw {
                        ty,
                        row_bytes,
                        bytes: bytes.to_vec(),
                    },
                });
            }
            let data = quant::dequantize(ty, bytes, n)
                .map_err(|e| ModelError::BadWeights(format!("{ty} weight: {e}")))?;
            return Self::from_f32(data, rows, cols);
        }
        let expected = n / BLOCK * type_size;
        if bytes.len() != expected {
            return Err(ModelError::BadWeights(format!(
                "a [{rows}, {cols}] {ty} weight takes {expected} bytes, got {}",
                bytes.len()
            )));
        }
        let blocks = bytes.chunks_exact(type_size);
        let store = match ty {
            GgmlType::Q4_0 => Store::Q4(
                blocks
                    .map(|b| {
                        let d = half_at(b, 0);
                        Q4Block {
                            d,
                            m: -8.0 * d,
                            qs: b[2..18].try_into().expect("16 bytes"),
                        }
                    })
                    .collect(),
            ),
            GgmlType::Q4_1 => Store::Q4(
                blocks
                    .map(|b| Q4Block {
                        d: half_at(b, 0),
                        m: half_at(b, 2),
                        qs: b[4..20].try_into().expect("16 bytes"),
                    })
                    .collect(),
            ),
            _ => Store::Q8(
                blocks
                    .map(|b| {
                        let mut qs = [0i8; 32];
                        for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
                            *q = byte as i8;
                        }
                        Q8Block {
                            d: half_at(b, 0),
                            qs,
                        }
                    })
                    .collect(),
            ),
        };
        Ok(Self { rows, cols, store })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weight occupies in memory.
    pub(crate) fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(v) => v.len() * 4,
            Store::Q4(v) => v.len() * size_of::<Q4Block>(),
            Store::Q8(v) => v.len() * size_of::<Q8Block>(),
            Store::Q6(v) => v.len() * size_of::<Q6Block>(),
            Store::Q4Tiles(v) => v.len() * size_of::<int8::Q4Tile>(),
            Store::Q8Tiles(v) => v.len() * size_of::<int8::Q8Tile>(),
            Store::Raw { bytes, .. } => bytes.len(),
        }
    }

    /// Whether the weight is kept in a packed form (as opposed to f32).
    #[cfg(test)]
    pub(crate) fn is_quantized(&self) -> bool {
        !matches!(self.store, Store::F32(_))
    }

    /// Stacks weights of equal width on top of each other (Q, K and V into one product). Parts
    /// of different formats are all dequantized.
    pub(crate) fn concat_rows(parts: Vec<PackedMatrix>) -> Result<Self, ModelError> {
        let Some(first) = parts.first() else {
            return Err(ModelError::BadWeights("no weights to stack".into()));
        };
        let cols = first.cols;
        if let Some(bad) = parts.iter().find(|p| p.cols != cols) {
            return Err(ModelError::BadWeights(format!(
                "cannot stack weights of widths {cols} and {}",
                bad.cols
            )));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let same = |f: fn(&Store) -> bool| parts.iter().all(|p| f(&p.store));
        let store = if same(|s| matches!(s, Store::Q4(_))) {
            Store::Q4(
                parts
                    .into_iter()
                    .flat_map(|p| match p.store {
                        Store::Q4(v) => v,
                        _ => Vec::new(),
                    })
                    .collect(),
            )
        } else if same(|s| matches!(s, Store::Q8(_))) {
            Store::Q8(
                parts
                    .into_iter()
                    .flat_map(|p| match p.store {
                        Store::Q8(v) => v,
                        _ => Vec::new(),
                    })
                    .collect(),
            )
        } else if let Store::Raw { ty, row_bytes, .. } = first.store
            && parts
                .iter()
                .all(|p| matches!(p.store, Store::Raw { ty: t, .. } if t == ty))
        {
            Store::Raw {
                ty,
                row_bytes,
                bytes: parts
                    .into_iter()
                    .flat_map(|p| match p.store {
                        Store::Raw { bytes, .. } => bytes,
                        _ => Vec::new(),
                    })
                    .collect(),
            }
        } else {
            Store::F32(parts.into_iter().flat_map(PackedMatrix::into_f32).collect())
        };
        Ok(Self { rows, cols, store })
    }

    /// The weight with its rows reordered: row `i` of the result is row `order[i]` of `self`.
    pub(crate) fn reorder_rows(self, order: &[usize]) -> Self {
        debug_assert_eq!(order.len(), self.rows);
        let this = self.untiled();
        fn gather<T: Copy>(v: &[T], per_row: usize, order: &[usize]) -> Vec<T> {
            order
                .iter()
                .flat_map(|&r| v[r * per_row..(r + 1) * per_row].iter().copied())
                .collect()
        }
        let store = match &this.store {
            Store::F32(v) => Store::F32(gather(v, this.cols, order)),
            Store::Q4(v) => Store::Q4(gather(v, this.cols / BLOCK, order)),
            Store::Q8(v) => Store::Q8(gather(v, this.cols / BLOCK, order)),
            Store::Q6(v) => Store::Q6(gather(v, this.cols / BLOCK, order)),
            Store::Q4Tiles(_) | Store::Q8Tiles(_) => unreachable!("untiled above"),
            Store::Raw {
                ty,
                row_bytes,
                bytes,
            } => Store::Raw {
                ty: *ty,
                row_bytes: *row_bytes,
                bytes: gather(bytes, *row_bytes, order),
            },
        };
        Self { store, ..this }
    }

    /// The weight as the products will use it: with 8-bit activations on
    /// ([`int8_activations`]), 4-bit and Q8_0 rows become tiles of sixteen rows for the integer
    /// kernels, and every later product of this weight multiplies 8-bit activations (so the
    /// switch applies to weights loaded after it is set). Other weights are returned unchanged.
    pub(crate) fn for_products(self) -> Self {
        if !int8_activations() {
            return self;
        }
        let (rows, nb) = (self.rows, self.cols / BLOCK);
        // Tiles keep scales as f16: a weight with any other scale keeps its blocks.
        let store = match self.store {
            Store::Q4(blocks) if int8::scales_fit::<int8::Q4Tile>(&blocks) => {
                Store::Q4Tiles(mapped::Tiles::Owned(int8::tile(blocks, rows, nb)))
            }
            Store::Q8(blocks) if int8::scales_fit::<int8::Q8Tile>(&blocks) => {
                Store::Q8Tiles(mapped::Tiles::Owned(int8::tile(blocks, rows, nb)))
            }
            store => store,
        };
        Self { store, ..self }
    }

    /// The weight with tiles turned back into rows of blocks.
    fn untiled(self) -> Self {
        let nb = self.cols / BLOCK;
        let rows = 0..self.rows;
        let store = match &self.store {
            Store::Q4Tiles(t) => Store::Q4(rows.flat_map(|r| int8::untile_row(t, nb, r)).collect()),
            Store::Q8Tiles(t) => Store::Q8(rows.flat_map(|r| int8::untile_row(t, nb, r)).collect()),
            _ => return self,
        };
        Self { store, ..self }
    }

    /// Row `r` as f32 values into `out` (`cols` long).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        match &self.store {
            Store::F32(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
            Store::Q4(v) => {
                for (blk, o) in v[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(32)) {
                    for j in 0..16 {
                        o[j] = f32::from(blk.qs[j] & 0xF) * blk.d + blk.m;
                        o[j + 16] = f32::from(blk.qs[j] >> 4) * blk.d + blk.m;
                    }
                }
            }
            Store::Q8(v) => {
                for (blk, o) in v[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(32)) {
                    for (o, &q) in o.iter_mut().zip(&blk.qs) {
                        *o = f32::from(q) * blk.d;
                    }
                }
            }
            Store::Q6(v) => {
                for (blk, o) in v[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(32)) {
                    for (i, (o, &q)) in o.iter_mut().zip(&blk.qs).enumerate() {
                        *o = blk.d[i / 16] * f32::from(q);
                    }
                }
            }
            Store::Q4Tiles(tiles) => int8::dequantize_row(tiles, nb, r, out),
            Store::Q8Tiles(tiles) => int8::dequantize_row(tiles, nb, r, out),
            Store::Raw {
                ty,
                row_bytes,
                bytes,
            } => {
                // Every row was checked to widen when the weight was packed.
                let _ =
                    quant::dequantize_into(*ty, &bytes[r * row_bytes..(r + 1) * row_bytes], out);
            }
        }
    }

    /// The weight with a type that has no kernel of its own ([`Store::Raw`]) widened to f32;
    /// other forms unchanged.
    pub(crate) fn widen_raw(self) -> Result<Self, ModelError> {
        if !matches!(self.store, Store::Raw { .. }) {
            return Ok(self);
        }
        let (rows, cols) = (self.rows, self.cols);
        Self::from_f32(self.to_f32(), rows, cols)
    }

    /// The whole weight as f32, row-major, without copying an f32 weight.
    pub(crate) fn into_f32(self) -> Vec<f32> {
        match self.store {
            Store::F32(v) => v,
            _ => self.to_f32(),
        }
    }

    /// The whole weight as f32, row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        if let Store::F32(v) = &self.store {
            return v.clone();
        }
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }

    /// `out[n, rows] = x[n, cols] · Wᵀ`, rows split over the rayon pool; several rows as
    /// [`matmul_each`](Self::matmul_each).
    pub(crate) fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), ModelError> {
        if n == 0 || x.len() != n * self.cols || out.len() != n * self.rows {
            return Err(ModelError::BadInput(format!(
                "a product with a [{}, {}] weight needs [{n}, {}] inputs and [{n}, {}] outputs, \
                 got {} and {} values",
                self.rows,
                self.cols,
                self.cols,
                self.rows,
                x.len(),
                out.len()
            )));
        }
        // Many rows: each computed as a one-token product. (A gemm on dequantized tiles was
        // faster here once, but gave other bits than the decode kernels; since prompts on the
        // CPU go through the host path, which multiplies row by row, nothing needs it.)
        if n > 1 {
            return self.matmul_each(x, n, out);
        }
        if self.tiled_products(x, n, out) {
            return Ok(());
        }
        let k = Kernels::detect();
        // A few chunks per thread so that a core shared with another process does not hold
        // the whole product back.
        let threads = rayon::current_num_threads();
        let chunk = self.rows.div_ceil(threads * 4).max(16);
        out.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = self.row_dot(k, c * chunk + i, x);
            }
        });
        Ok(())
    }

    /// `out[n, rows] = x[n, cols] · Wᵀ` with every row of `x` computed exactly as a one-token
    /// product ([`matmul`](Self::matmul) with `n = 1`: the same kernel, the same order), each
    /// weight row read once for all of them while it is in cache. The decode steps of many
    /// sessions share a pass this way, and each gets bit for bit what it would alone.
    pub(crate) fn matmul_each(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if n == 0 || x.len() != n * self.cols || out.len() != n * self.rows {
            return Err(ModelError::BadInput(format!(
                "a product with a [{}, {}] weight needs [{n}, {}] inputs and [{n}, {}] outputs, \
                 got {} and {} values",
                self.rows,
                self.cols,
                self.cols,
                self.rows,
                x.len(),
                out.len()
            )));
        }
        if n == 1 {
            return self.matmul(x, 1, out);
        }
        if self.tiled_products(x, n, out) {
            return Ok(());
        }
        let k = Kernels::detect();
        let threads = rayon::current_num_threads();
        let chunk = self.rows.div_ceil(threads * 4).max(16);
        let cols = self.cols;
        let xs: Vec<&[f32]> = x.chunks_exact(cols).collect();
        // Weight rows a few hundred KiB at a time, each against a block of tokens: sweeping all
        // of a long prompt's rows per weight row ran from L2 at best (a 128-token prompt of the
        // 1.7B shape is 1 MiB of activations). A token's result is the same in any block.
        let row_bytes = (self.bytes() / self.rows.max(1)).max(1);
        let rows_at_once = (WEIGHT_BLOCK_BYTES / row_bytes).max(1);
        // A power of two, so that the kernels take them eight or four at a time.
        let tokens_at_once = 1
            << (TOKEN_BLOCK_BYTES / (cols * 4).max(1))
                .clamp(1, 2 * MANY)
                .ilog2();
        // Rows too long for eight tokens' activations to stay in L1 go a stretch at a time.
        let stretched = cols * size_of::<f32>() * MANY > TOKEN_BLOCK_BYTES
            && matches!(self.store, Store::Q4(_) | Store::Q8(_) | Store::Q6(_));
        let mut transposed = vec![0f32; n * self.rows];
        transposed
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(c, out_t)| {
                for (b, block) in out_t.chunks_mut(rows_at_once * n).enumerate() {
                    let first = c * chunk + b * rows_at_once;
                    if stretched {
                        let mut t = 0;
                        while t < n {
                            t += match n - t {
                                8.. => self.stretched_dots::<MANY>(k, first, &xs, t, block),
                                4.. => self.stretched_dots::<4>(k, first, &xs, t, block),
                                2.. => self.stretched_dots::<2>(k, first, &xs, t, block),
                                _ => self.stretched_dots::<1>(k, first, &xs, t, block),
                            };
                        }
                        continue;
                    }
                    for t in (0..n).step_by(tokens_at_once) {
                        let end = (t + tokens_at_once).min(n);
                        for (i, col) in block.chunks_exact_mut(n).enumerate() {
                            self.row_dots(k, first + i, &xs[t..end], &mut col[t..end]);
                        }
                    }
                }
            });
        for (r, col) in transposed.chunks_exact(n).enumerate() {
            for (t, &v) in col.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        Ok(())
    }

    /// [`tile_products`](Self::tile_products) when the weight is tiled; false when it is not.
    fn tiled_products(&self, x: &[f32], n: usize, out: &mut [f32]) -> bool {
        match &self.store {
            Store::Q4Tiles(tiles) => self.tile_products(tiles, x, n, out),
            Store::Q8Tiles(tiles) => self.tile_products(tiles, x, n, out),
            _ => return false,
        }
        true
    }

    /// `out[n, rows] = x[n, cols] · Wᵀ` for a tiled weight: each token rounded once to 8 bits,
    /// then row groups split over the rayon pool, every group computed for all tokens while its
    /// tiles are in cache (each token's operations the same whatever `n`).
    fn tile_products<T: int8::Tile>(&self, tiles: &[T], x: &[f32], n: usize, out: &mut [f32]) {
        const LANES: usize = int8::TILE_ROWS;
        let nb = self.cols / BLOCK;
        let quantized: Vec<int8::QuantizedRow> = x
            .chunks_exact(self.cols)
            .map(int8::QuantizedRow::new)
            .collect();
        let xs: Vec<&int8::QuantizedRow> = quantized.iter().collect();
        let groups = tiles.len() / nb;
        // A few tasks per thread, as in `matmul`.
        let per_task = groups.div_ceil(rayon::current_num_threads() * 4).max(1);
        // Each task writes its groups' results straight into `out` (token-major): turning a
        // group-major buffer round afterwards ran on one thread while the other waited.
        let dst = SharedOut(out.as_mut_ptr());
        let rows = self.rows;
        assert!(out.len() >= n * rows && groups * LANES >= rows);
        (0..groups.div_ceil(per_task))
            .into_par_iter()
            .for_each(|c| {
                let mut group_out = vec![[0f32; LANES]; n];
                for g in c * per_task..((c + 1) * per_task).min(groups) {
                    int8::group_dots(&tiles[g * nb..(g + 1) * nb], &xs, &mut group_out);
                    let lanes = LANES.min(rows - g * LANES);
                    for (t, v) in group_out.iter().enumerate() {
                        // SAFETY: rows g·16.. of token t lie in out (the assertion) and belong to
                        // group g, which this task alone computes.
                        unsafe { dst.write(t * rows + g * LANES, &v[..lanes]) };
                    }
                }
            });
    }

    /// Tokens `t..t + N` of `xs` against the weight rows from `first` whose results `block`
    /// holds (`[row][token]`, every token of the product): each row a stretch of
    /// [`STRETCH_BLOCKS`] blocks at a time for all of them, the partial sums kept between
    /// stretches, so that the tokens' stretches stay in L1 while the rows go by. The same bits
    /// as [`row_dots`](Self::row_dots). Returns `N`.
    fn stretched_dots<const N: usize>(
        &self,
        k: Kernels,
        first: usize,
        xs: &[&[f32]],
        t: usize,
        block: &mut [f32],
    ) -> usize {
        let n = xs.len();
        let Some(these) = xs[t..].first_chunk::<N>() else {
            return N;
        };
        let nb = self.cols / BLOCK;
        let rows = block.len() / n;
        let mut acc = vec![[Partial::ZERO; N]; rows];
        let mut from = 0;
        while from < nb {
            let to = (from + STRETCH_BLOCKS).min(nb);
            let last = to == nb;
            for (i, (acc, col)) in acc.iter_mut().zip(block.chunks_exact_mut(n)).enumerate() {
                let r = first + i;
                let Some(out) = col[t..].first_chunk_mut::<N>() else {
                    continue;
                };
                let row = r * nb..(r + 1) * nb;
                match &self.store {
                    Store::Q4(v) => k.dot_q4_part(&v[row], these, (from, to), acc, last, out),
                    Store::Q8(v) => k.dot_q8_part(&v[row], these, (from, to), acc, last, out),
                    Store::Q6(v) => k.dot_q6_part(&v[row], these, (from, to), acc, last, out),
                    // Other stores take each row whole.
                    _ if last => {
                        self.row_dots_n::<N>(k, r, &xs[t..], out);
                    }
                    _ => {}
                }
            }
            from = to;
        }
        N
    }

    /// [`row_dot`](Self::row_dot) of row `r` for every token, [`MANY`] at a time (then 4, 2, 1).
    fn row_dots(&self, k: Kernels, r: usize, xs: &[&[f32]], out: &mut [f32]) {
        let mut t = 0;
        while t < out.len() {
            let left = out.len() - t;
            t += match left {
                8.. => self.row_dots_n::<MANY>(k, r, &xs[t..], &mut out[t..]),
                4.. => self.row_dots_n::<4>(k, r, &xs[t..], &mut out[t..]),
                2.. => self.row_dots_n::<2>(k, r, &xs[t..], &mut out[t..]),
                _ => self.row_dots_n::<1>(k, r, &xs[t..], &mut out[t..]),
            };
        }
    }

    /// The first `N` tokens of [`row_dots`](Self::row_dots); returns `N`.
    fn row_dots_n<const N: usize>(
        &self,
        k: Kernels,
        r: usize,
        xs: &[&[f32]],
        out: &mut [f32],
    ) -> usize {
        let (Some(xs), Some(out)) = (xs.first_chunk::<N>(), out.first_chunk_mut::<N>()) else {
            return N;
        };
        let nb = self.cols / BLOCK;
        match &self.store {
            Store::F32(v) => {
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = k.dot_f32(&v[r * self.cols..(r + 1) * self.cols], x);
                }
            }
            Store::Q4(v) => k.dot_q4_many(&v[r * nb..(r + 1) * nb], xs, out),
            Store::Q8(v) => k.dot_q8_many(&v[r * nb..(r + 1) * nb], xs, out),
            Store::Q6(v) => k.dot_q6_many(&v[r * nb..(r + 1) * nb], xs, out),
            Store::Q4Tiles(_) | Store::Q8Tiles(_) | Store::Raw { .. } => with_row(self, r, |w| {
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = k.dot_f32(w, x);
                }
            }),
        }
        N
    }

    fn row_dot(&self, k: Kernels, r: usize, x: &[f32]) -> f32 {
        let nb = self.cols / BLOCK;
        match &self.store {
            Store::F32(v) => k.dot_f32(&v[r * self.cols..(r + 1) * self.cols], x),
            Store::Q4(v) => k.dot_q4(&v[r * nb..(r + 1) * nb], x),
            Store::Q8(v) => k.dot_q8(&v[r * nb..(r + 1) * nb], x),
            Store::Q6(v) => k.dot_q6(&v[r * nb..(r + 1) * nb], x),
            Store::Q4Tiles(_) | Store::Q8Tiles(_) | Store::Raw { .. } => {
                with_row(self, r, |w| k.dot_f32(w, x))
            }
        }
    }
}

/// Calls `f` with row `r` of `w` widened to f32, in a buffer this thread keeps for it.
fn with_row<T>(w: &PackedMatrix, r: usize, f: impl FnOnce(&[f32]) -> T) -> T {
    thread_local! {
        static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ROW.with(|row| {
        let mut row = row.borrow_mut();
        row.resize(w.cols, 0.0);
        w.dequantize_row(r, &mut row);
        f(&row)
    })
}

/// An output buffer that the tasks of one product write disjoint parts of.
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint ranges (each caller's promise), and the buffer outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Copies `values` to `at..at + values.len()`.
    ///
    /// # Safety
    /// The range lies in the buffer, and no other thread reads or writes it meanwhile.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        // SAFETY: the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len()) };
    }
}

/// `Σ a·b` with the best f32 kernel this CPU runs (the one the products use for f32 rows).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    Kernels::detect().dot_f32(a, b)
}

/// `out[p] = q · keys[p * stride..][..q.len()]` for every `p` of `out`: one query against a
/// cache's keys, each as [`dot_f32`] computes it (bit for bit), in one call instead of a call and
/// a kernel lookup per key (attention spent more time in those than in the products).
pub(crate) fn dots_f32(q: &[f32], keys: &[f32], stride: usize, out: &mut [f32]) {
    assert!(out.is_empty() || (out.len() - 1) * stride + q.len() <= keys.len());
    Kernels::detect().dots_f32(q, keys, stride, out)
}

/// `out[i] = Σ_p weights[p] · values[p * stride + i]`, summed from zero in the order of `p`, each
/// term a product then a sum (no fused multiply-add) as the plain loop `out[i] += w * v` does:
/// the same bits whichever kernel runs. The kernel keeps `out` in registers over all positions.
pub(crate) fn weighted_sum(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
    assert!(weights.is_empty() || (weights.len() - 1) * stride + out.len() <= values.len());
    Kernels::detect().weighted_sum(out, weights, values, stride)
}

/// The [`Kernels`] entry points of one block type: a row against one token (`$one`) and against
/// `N` tokens sharing each block's widening (`$many`), on the detected kernels.
macro_rules! block_kernels {
    ($one:ident, $many:ident, $part:ident, $ty:ty) => {
        fn $one(self, row: &[$ty], x: &[f32]) -> f32 {
            match self {
                // SAFETY: detect() saw AVX2 and FMA on this CPU.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2Fma => unsafe { avx2::$one(row, x) },
                // SAFETY: detect() saw AVX-512F on this CPU.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 => unsafe { avx512::$one(row, x) },
                Kernels::Portable => portable::$one(row, x),
            }
        }

        fn $many<const N: usize>(self, row: &[$ty], xs: &[&[f32]; N], out: &mut [f32; N]) {
            match self {
                // SAFETY: as in the one-token entry.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2Fma => unsafe { avx2::$many(row, xs, out) },
                // SAFETY: as in the one-token entry.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 => unsafe { avx512::$many(row, xs, out) },
                Kernels::Portable => {
                    for t in 0..N {
                        out[t] = portable::$one(row, xs[t]);
                    }
                }
            }
        }

        /// `$many` a stretch of blocks at a time (see the kernels' `$part`). The portable
        /// loops have no stretches: they take the whole row at the last one.
        fn $part<const N: usize>(
            self,
            row: &[$ty],
            xs: &[&[f32]; N],
            blocks: (usize, usize),
            acc: &mut [Partial; N],
            last: bool,
            out: &mut [f32; N],
        ) {
            assert!(blocks.0 % 2 == 0 && blocks.1 <= row.len());
            assert!(xs.iter().all(|x| x.len() >= blocks.1 * BLOCK));
            match self {
                // SAFETY: as in the one-token entry; the blocks are inside the row and every
                // token (asserted).
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2Fma => unsafe { avx2::$part(row, xs, blocks, acc, last, out) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 => unsafe { avx512::$part(row, xs, blocks, acc, last, out) },
                Kernels::Portable if last => self.$many(row, xs, out),
                Kernels::Portable => {}
            }
        }
    };
}

/// Which implementation of the inner products runs on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512F for the block kernels (AVX2 for plain f32 rows).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernels {
    /// The best kernels this CPU runs, found once per process.
    fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(Self::probe)
    }

    fn probe() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if std::env::var_os("SUNSWARM_NO_AVX512").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                return Kernels::Avx512;
            }
            return Kernels::Avx2Fma;
        }
        Kernels::Portable
    }

    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            // SAFETY: detect() saw AVX2 and FMA on this CPU.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2Fma | Kernels::Avx512 => unsafe { avx2::dot_f32(a, b) },
            Kernels::Portable => portable::dot_f32(a, b),
        }
    }

    fn dots_f32(self, q: &[f32], keys: &[f32], stride: usize, out: &mut [f32]) {
        match self {
            // SAFETY: detect() saw AVX2 and FMA; dots_f32 checked the keys' length.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2Fma | Kernels::Avx512 => unsafe { avx2::dots_f32(q, keys, stride, out) },
            Kernels::Portable => {
                for (p, o) in out.iter_mut().enumerate() {
                    *o = portable::dot_f32(q, &keys[p * stride..p * stride + q.len()]);
                }
            }
        }
    }

    fn weighted_sum(self, out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
        match self {
            // SAFETY: detect() saw AVX2 and FMA; weighted_sum checked the values' length.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2Fma | Kernels::Avx512 => unsafe {
                avx2::weighted_sum(out, weights, values, stride)
            },
            Kernels::Portable => portable::weighted_sum(out, weights, values, stride),
        }
    }

    block_kernels!(dot_q4, dot_q4_many, dot_q4_part, Q4Block);
    block_kernels!(dot_q8, dot_q8_many, dot_q8_part, Q8Block);
    block_kernels!(dot_q6, dot_q6_many, dot_q6_part, Q6Block);
}

mod portable {
    use super::{Q4Block, Q6Block, Q8Block};

    pub fn dot_q6(row: &[Q6Block], x: &[f32]) -> f32 {
        row.iter()
            .zip(x.chunks_exact(32))
            .map(|(blk, x)| {
                let half = |h: usize| {
                    blk.d[h]
                        * blk.qs[16 * h..16 * (h + 1)]
                            .iter()
                            .zip(&x[16 * h..16 * (h + 1)])
                            .map(|(&q, &x)| f32::from(q) * x)
                            .sum::<f32>()
                };
                half(0) + half(1)
            })
            .sum()
    }

    pub fn weighted_sum(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
        out.fill(0.0);
        for (p, &w) in weights.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&values[p * stride..]) {
                *o += w * v;
            }
        }
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // Eight partial sums, like one vector register, so that the compiler can vectorize.
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (a, b) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += a[i] * b[i];
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(a, b)| a * b).sum::<f32>()
    }

    pub fn dot_q4(row: &[Q4Block], x: &[f32]) -> f32 {
        let mut total = 0f32;
        for (blk, x) in row.iter().zip(x.chunks_exact(32)) {
            let (mut qx, mut sx) = (0f32, 0f32);
            for j in 0..16 {
                qx += f32::from(blk.qs[j] & 0xF) * x[j] + f32::from(blk.qs[j] >> 4) * x[j + 16];
                sx += x[j] + x[j + 16];
            }
            total += blk.d * qx + blk.m * sx;
        }
        total
    }

    pub fn dot_q8(row: &[Q8Block], x: &[f32]) -> f32 {
        row.iter()
            .zip(x.chunks_exact(32))
            .map(|(blk, x)| {
                blk.d
                    * blk
                        .qs
                        .iter()
                        .zip(x)
                        .map(|(&q, &x)| f32::from(q) * x)
                        .sum::<f32>()
            })
            .sum()
    }
}

/// A row of blocks against x, `sum_b w_b . x_b`, two blocks at a time so that consecutive
/// blocks do not wait on each other's FMA, for one token (`$one`) and for up to [`MANY`] tokens
/// at once (`$many`). A block's weights are widened once to their values (`$unpack`: `d * q`,
/// plus `m` for 4-bit blocks, in one FMA), then applied to each token's values straight into that
/// token's accumulator (`$apply`: two or four FMAs). Folding `m` into the widening, rather than
/// adding `m * sum(x)` per block afterwards, keeps the many-token loop free of scalar
/// accumulators, which spilled its vector registers at eight tokens. The many-token version does
/// for each token exactly the operations of the one-token version, in the same order, so its
/// results are bit-identical, while the widening is shared. One body serves both block types and
/// both vector widths (`$ops` names the width's `zero`, `add` and `sum`).
#[cfg(target_arch = "x86_64")]
macro_rules! block_row_dot {
    ($features:literal, $one:ident, $many:ident, $part:ident, $ty:ty, $unpack:ident, $apply:ident, $ops:ident) => {
        /// # Safety
        /// The CPU has the features this function is compiled for.
        #[target_feature(enable = $features)]
        pub unsafe fn $one(row: &[$ty], x: &[f32]) -> f32 {
            let nb = row.len().min(x.len() / BLOCK);
            let (mut acc0, mut acc1) = ($ops::zero(), $ops::zero());
            let mut b = 0;
            // SAFETY: block b reads x[32b..32b + 32] with b < nb <= x.len() / 32.
            unsafe {
                let x = x.as_ptr();
                while b + 2 <= nb {
                    let (p, q) = (&row[b], &row[b + 1]);
                    let (xp, xq) = (x.add(b * BLOCK), x.add((b + 1) * BLOCK));
                    acc0 = $apply(&$unpack(p), xp, acc0);
                    acc1 = $apply(&$unpack(q), xq, acc1);
                    b += 2;
                }
                if b < nb {
                    acc0 = $apply(&$unpack(&row[b]), x.add(b * BLOCK), acc0);
                }
                $ops::sum($ops::add(acc0, acc1))
            }
        }

        /// `out[t] = $one(row, xs[t])` for exactly `N` tokens (a constant, so that the
        /// accumulators live in registers).
        ///
        /// # Safety
        /// The CPU has the features this function is compiled for.
        #[target_feature(enable = $features)]
        pub unsafe fn $many<const N: usize>(row: &[$ty], xs: &[&[f32]; N], out: &mut [f32; N]) {
            let mut nb = row.len();
            for t in 0..N {
                nb = nb.min(xs[t].len() / BLOCK);
            }
            // The whole row as one stretch, from zero partial sums.
            let mut acc = [super::Partial::ZERO; N];
            // SAFETY: every token has nb blocks.
            unsafe { $part(row, xs, (0, nb), &mut acc, true, out) }
        }

        /// The blocks `from..to` of a row for `N` tokens (`from` even), continuing from the
        /// partial sums in `acc` and leaving them there; with `last`, `to` is the row's end and
        /// `out` gets the results. `$many` is the whole row as one stretch; a row taken several
        /// stretches at a time runs the same operations in the same order, so the results are
        /// the same bits.
        ///
        /// # Safety
        /// The CPU has the features this function is compiled for; every token has `to` blocks.
        #[inline]
        #[target_feature(enable = $features)]
        pub unsafe fn $part<const N: usize>(
            row: &[$ty],
            xs: &[&[f32]; N],
            (from, to): (usize, usize),
            acc: &mut [super::Partial; N],
            last: bool,
            out: &mut [f32; N],
        ) {
            let mut acc0 = [$ops::zero(); N];
            let mut acc1 = [$ops::zero(); N];
            // SAFETY: a Partial holds 32 floats, two vectors of either width; block b reads
            // x[32b..32b + 32] with b < to (the caller's promise).
            unsafe {
                for t in 0..N {
                    acc0[t] = $ops::load(acc[t].0.as_ptr());
                    acc1[t] = $ops::load(acc[t].0.as_ptr().add(16));
                }
                let mut b = from;
                while b + 2 <= to {
                    let (wp, wq) = (
                        $unpack(row.get_unchecked(b)),
                        $unpack(row.get_unchecked(b + 1)),
                    );
                    for t in 0..N {
                        let x = xs[t].as_ptr();
                        let (xp, xq) = (x.add(b * BLOCK), x.add((b + 1) * BLOCK));
                        acc0[t] = $apply(&wp, xp, acc0[t]);
                        acc1[t] = $apply(&wq, xq, acc1[t]);
                    }
                    b += 2;
                }
                if b < to {
                    let wp = $unpack(row.get_unchecked(b));
                    for t in 0..N {
                        let xp = xs[t].as_ptr().add(b * BLOCK);
                        acc0[t] = $apply(&wp, xp, acc0[t]);
                    }
                }
                for t in 0..N {
                    if last {
                        out[t] = $ops::sum($ops::add(acc0[t], acc1[t]));
                    } else {
                        $ops::store(acc[t].0.as_mut_ptr(), acc0[t]);
                        $ops::store(acc[t].0.as_mut_ptr().add(16), acc1[t]);
                    }
                }
            }
        }
    };
}

/// A many-token kernel's two partial sums for one token, between stretches of a row: two
/// vectors of up to 16 lanes.
#[derive(Clone, Copy)]
struct Partial([f32; 32]);

impl Partial {
    const ZERO: Partial = Partial([0.0; 32]);
}

/// Blocks of a row a many-token product takes for all its tokens before the next row, where the
/// tokens' whole rows would not stay in the L1 cache (16 blocks: 2 KiB of each token).
const STRETCH_BLOCKS: usize = 16;

/// The most tokens one many-token kernel call takes (the accumulators stay in registers).
const MANY: usize = 8;

/// Bytes of activations a many-row product takes against each weight row before the next row
/// ([`PackedMatrix::matmul_each`]): they stay in the L1 cache meanwhile (8 rows of 576 values,
/// 4 of 2048). With all 128 rows of a 1.7B-shaped prompt chunk against each weight row (1 MiB,
/// read from L2) its prefill ran at 17.6 tok/s; blocks of 4 rows, 26-27; eight rows taken a
/// stretch of [`STRETCH_BLOCKS`] at a time, 29.4-29.8; a gemm on dequantized tiles (removed),
/// whose bits differed from the decode kernels', 30.3-32.8 beside it.
const TOKEN_BLOCK_BYTES: usize = 32 * 1024;

/// Bytes of weight rows a many-row product runs through one block of tokens before the next
/// block: they stay in the L2 cache for all of the prompt's tokens.
const WEIGHT_BLOCK_BYTES: usize = 256 * 1024;

/// Whether 4-bit rows multiply 8-bit activations: unset (the environment decides), off, on.
static INT8: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether this CPU runs the integer kernels (AVX-512 with VNNI, not turned off by
/// `SUNSWARM_NO_AVX512`).
pub fn int8_supported() -> bool {
    Kernels::detect() == Kernels::Avx512 && int8::vnni_detected()
}

/// Turns the 8-bit activation path of 4-bit rows on or off for the weights this process loads
/// from now on (see the module comment). Returns false, and leaves it off, when asked on a CPU
/// without the kernels.
pub fn set_int8_activations(on: bool) -> bool {
    let on = on && int8_supported();
    INT8.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
    on
}

/// Whether 4-bit rows multiply 8-bit activations now: as set, or else `SUNSWARM_INT8=1`.
pub fn int8_activations() -> bool {
    match INT8.load(std::sync::atomic::Ordering::Relaxed) {
        0 => set_int8_activations(std::env::var_os("SUNSWARM_INT8").is_some_and(|v| v == "1")),
        v => v == 2,
    }
}

mod attention;
mod int8;
pub(crate) mod mapped;

pub(crate) use attention::{attend_heads, swiglu};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q4Block, Q6Block, Q8Block};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// The 8-lane operations `block_row_dot!` needs.
    struct Ops256;

    impl Ops256 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn sum(v: __m256) -> f32 {
            hsum(v)
        }
        /// # Safety
        /// `p` points to 8 readable floats.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller's promise.
            unsafe { _mm256_loadu_ps(p) }
        }
        /// # Safety
        /// `p` points to 8 writable floats.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: the caller's promise.
            unsafe { _mm256_storeu_ps(p, v) }
        }
    }

    /// [`dot_f32`] of `q` against each key, `stride` apart.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_f32(q: &[f32], keys: &[f32], stride: usize, out: &mut [f32]) {
        for (p, o) in out.iter_mut().enumerate() {
            // SAFETY: passed on from the caller.
            *o = unsafe { dot_f32(q, &keys[p * stride..p * stride + q.len()]) };
        }
    }

    /// [`super::weighted_sum`]: 64 outputs at a time in eight registers, then 8, then the rest.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and the values hold every position's `out.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
        let n = out.len();
        let pv = values.as_ptr();
        let mut i = 0;
        // SAFETY: every load reads values[p * stride + i + j] with i + j < n, inside the values
        // (the caller's promise); every store writes out[i..i + 8k] with i + 8k <= n.
        unsafe {
            while i + 64 <= n {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (p, &w) in weights.iter().enumerate() {
                    let (w, row) = (_mm256_set1_ps(w), pv.add(p * stride + i));
                    for (k, acc) in acc.iter_mut().enumerate() {
                        *acc =
                            _mm256_add_ps(*acc, _mm256_mul_ps(w, _mm256_loadu_ps(row.add(8 * k))));
                    }
                }
                for (k, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(i + 8 * k), *acc);
                }
                i += 64;
            }
            while i + 8 <= n {
                let mut acc = _mm256_setzero_ps();
                for (p, &w) in weights.iter().enumerate() {
                    let v = _mm256_loadu_ps(pv.add(p * stride + i));
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(w), v));
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(i), acc);
                i += 8;
            }
        }
        super::portable::weighted_sum(&mut out[i..], weights, &values[i..], stride);
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats at i + 8k with i + 8k + 8 <= n.
        unsafe {
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let j = i + 8 * k;
                    *acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(pa.add(j)),
                        _mm256_loadu_ps(pb.add(j)),
                        *acc,
                    );
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(v)
            + a[i..n]
                .iter()
                .zip(&b[i..n])
                .map(|(a, b)| a * b)
                .sum::<f32>()
    }

    /// A 4-bit block's 32 values (`d * q + m`) as four vectors of 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn q4_unpack(blk: &Q4Block) -> [__m256; 4] {
        let mask = _mm_set1_epi8(0x0F);
        // SAFETY: qs is 16 bytes.
        let q = unsafe { _mm_loadu_si128(blk.qs.as_ptr().cast()) };
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        let (d, m) = (_mm256_set1_ps(blk.d), _mm256_set1_ps(blk.m));
        let f = |v: __m128i| _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), d, m);
        [
            f(lo),
            f(_mm_srli_si128(lo, 8)),
            f(hi),
            f(_mm_srli_si128(hi, 8)),
        ]
    }

    /// A six-bit block's 32 values (each half times its own scale) as four vectors of 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn q6_unpack(blk: &Q6Block) -> [__m256; 4] {
        let q = blk.qs.as_ptr();
        let (d0, d1) = (_mm256_set1_ps(blk.d[0]), _mm256_set1_ps(blk.d[1]));
        // SAFETY: qs is 32 bytes, read 8 at a time.
        let f = |k: usize, d: __m256| unsafe {
            _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * k).cast()))),
                d,
            )
        };
        [f(0, d0), f(1, d0), f(2, d1), f(3, d1)]
    }

    /// An 8-bit block's 32 weights, times its scale, as four vectors of 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn q8_unpack(blk: &Q8Block) -> [__m256; 4] {
        let q = blk.qs.as_ptr();
        let d = _mm256_set1_ps(blk.d);
        // SAFETY: qs is 32 bytes, read 8 at a time.
        let f = |k: usize| unsafe {
            _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * k).cast()))),
                d,
            )
        };
        [f(0), f(1), f(2), f(3)]
    }

    /// `acc + Σ w·x` of one block's scaled weights, as 8 partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply(w: &[__m256; 4], x: *const f32, acc: __m256) -> __m256 {
        // SAFETY: the caller passes 32 readable floats at x.
        unsafe {
            let mut s = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), acc);
            s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), s);
            s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), s);
            _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), s)
        }
    }

    block_row_dot!(
        "avx2,fma",
        dot_q4,
        dot_q4_many,
        dot_q4_part,
        Q4Block,
        q4_unpack,
        apply,
        Ops256
    );
    block_row_dot!(
        "avx2,fma",
        dot_q8,
        dot_q8_many,
        dot_q8_part,
        Q8Block,
        q8_unpack,
        apply,
        Ops256
    );
    block_row_dot!(
        "avx2,fma",
        dot_q6,
        dot_q6_many,
        dot_q6_part,
        Q6Block,
        q6_unpack,
        apply,
        Ops256
    );
}

/// The same kernels on 16 lanes: a 4-bit block is two widenings of 16 nibbles instead of four of
/// 8, which halves the shuffle work that bounds the AVX2 loop.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q4Block, Q6Block, Q8Block};

    /// The 16-lane operations `block_row_dot!` needs.
    struct Ops512;

    impl Ops512 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        /// # Safety
        /// `p` points to 16 readable floats.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller's promise.
            unsafe { _mm512_loadu_ps(p) }
        }
        /// # Safety
        /// `p` points to 16 writable floats.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: the caller's promise.
            unsafe { _mm512_storeu_ps(p, v) }
        }
    }

    /// A 4-bit block's 32 values (`d * q + m`) as two vectors of 16 floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q4_unpack(blk: &Q4Block) -> [__m512; 2] {
        let mask = _mm_set1_epi8(0x0F);
        let (d, m) = (_mm512_set1_ps(blk.d), _mm512_set1_ps(blk.m));
        // SAFETY: qs is 16 bytes.
        let q = unsafe { _mm_loadu_si128(blk.qs.as_ptr().cast()) };
        let f = |v: __m128i| _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)), d, m);
        [
            f(_mm_and_si128(q, mask)),
            f(_mm_and_si128(_mm_srli_epi16(q, 4), mask)),
        ]
    }

    /// A six-bit block's 32 values (each half times its own scale) as two vectors of 16 floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q6_unpack(blk: &Q6Block) -> [__m512; 2] {
        let q = blk.qs.as_ptr();
        // SAFETY: qs is 32 bytes, read 16 at a time.
        let f = |k: usize| unsafe {
            _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16 * k).cast()))),
                _mm512_set1_ps(blk.d[k]),
            )
        };
        [f(0), f(1)]
    }

    /// An 8-bit block's 32 weights, times its scale, as two vectors of 16 floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q8_unpack(blk: &Q8Block) -> [__m512; 2] {
        let q = blk.qs.as_ptr();
        let d = _mm512_set1_ps(blk.d);
        // SAFETY: qs is 32 bytes, read 16 at a time.
        unsafe {
            [
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast()))),
                    d,
                ),
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast()))),
                    d,
                ),
            ]
        }
    }

    /// `acc + Σ w·x` of one block's scaled weights, as 16 partial sums.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply(w: &[__m512; 2], x: *const f32, acc: __m512) -> __m512 {
        // SAFETY: the caller passes 32 readable floats at x.
        unsafe {
            _mm512_fmadd_ps(
                w[1],
                _mm512_loadu_ps(x.add(16)),
                _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), acc),
            )
        }
    }

    block_row_dot!(
        "avx512f",
        dot_q4,
        dot_q4_many,
        dot_q4_part,
        Q4Block,
        q4_unpack,
        apply,
        Ops512
    );
    block_row_dot!(
        "avx512f",
        dot_q8,
        dot_q8_many,
        dot_q8_part,
        Q8Block,
        q8_unpack,
        apply,
        Ops512
    );
    block_row_dot!(
        "avx512f",
        dot_q6,
        dot_q6_many,
        dot_q6_part,
        Q6Block,
        q6_unpack,
        apply,
        Ops512
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| rng.uniform_pm1()).collect()
    }

    pub(super) fn packed(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
        let w = values(rows * cols, seed);
        let bytes = quant::quantize(ty, &w).unwrap();
        PackedMatrix::from_ggml(ty, &bytes, rows, cols).unwrap()
    }

    /// `x · Wᵀ` in f64 over the dequantized weight: the reference every kernel must match.
    fn reference(w: &PackedMatrix, x: &[f32], n: usize) -> Vec<f64> {
        let dense = w.to_f32();
        let mut out = vec![0f64; n * w.rows()];
        for t in 0..n {
            for r in 0..w.rows() {
                out[t * w.rows() + r] = (0..w.cols())
                    .map(|c| f64::from(dense[r * w.cols() + c]) * f64::from(x[t * w.cols() + c]))
                    .sum();
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn packing_keeps_the_values_the_dequantizer_gives() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::F16,
        ] {
            let w = values(6 * 64, 3);
            let bytes = quant::quantize(ty, &w).unwrap();
            let p = PackedMatrix::from_ggml(ty, &bytes, 6, 64).unwrap();
            let want = quant::dequantize(ty, &bytes, w.len()).unwrap();
            for (i, (a, b)) in p.to_f32().iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{ty} value {i}: {a} vs {b}"
                );
            }
            // Every type stays packed, at its file size or a little more (f32 block scales: a
            // Q4_0 block of 18 bytes takes 24).
            assert!(p.is_quantized(), "{ty}");
            assert!(
                p.bytes() * 3 <= bytes.len() * 4,
                "{ty}: {} > {}",
                p.bytes(),
                bytes.len()
            );
        }
    }

    /// A weight of a type without its own kernel (here F16, and a K-quant written by hand) is
    /// kept as the file has it and multiplied row by row, one token or several, with the
    /// one-token and many-token products equal.
    /// A Q6_K weight of `rows` rows of 256: 210 bytes per row; d (f16) at the end, scales in the
    /// middle.
    /// `x`'s `n` rows through `m` one token at a time, `[n, rows]`.
    fn one_token_products(m: &PackedMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let (rows, cols) = (m.rows, m.cols);
        let mut one = vec![0f32; n * rows];
        for t in 0..n {
            m.matmul(
                &x[t * cols..(t + 1) * cols],
                1,
                &mut one[t * rows..(t + 1) * rows],
            )
            .unwrap();
        }
        one
    }

    fn q6_k_bytes(rows: usize) -> Vec<u8> {
        let mut q6 = vec![0u8; rows * 210];
        for (r, blk) in q6.chunks_exact_mut(210).enumerate() {
            for (i, b) in blk[..192].iter_mut().enumerate() {
                *b = ((i * 7 + r * 3) % 256) as u8;
            }
            for (i, b) in blk[192..208].iter_mut().enumerate() {
                *b = (i as i8 - 8) as u8;
            }
            blk[208..].copy_from_slice(&half::f16::from_f32(0.01 * (r + 1) as f32).to_le_bytes());
        }
        q6
    }

    #[test]
    fn every_q6_kernel_matches_the_reference_and_its_many_token_form() {
        let w = PackedMatrix::from_ggml(GgmlType::Q6_K, &q6_k_bytes(3), 3, 256).unwrap();
        let Store::Q6(blocks) = &w.store else {
            panic!("Q6_K is packed as six-bit blocks")
        };
        let xs: Vec<Vec<f32>> = (0..3).map(|t| values(256, 20 + t)).collect();
        let mut kernels = vec![Kernels::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Kernels::Avx2Fma);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernels::Avx512);
            }
        }
        for k in kernels {
            for r in 0..3 {
                let row = &blocks[r * 8..(r + 1) * 8];
                let one: Vec<f32> = xs.iter().map(|x| k.dot_q6(row, x)).collect();
                let mut many = [0f32; 3];
                k.dot_q6_many(row, &[&xs[0], &xs[1], &xs[2]], &mut many);
                assert_eq!(one, many, "{k:?} row {r}: many tokens are each one token");
                for (t, x) in xs.iter().enumerate() {
                    let want = reference(&w, x, 1)[r];
                    assert_close(&[one[t]], &[want], &format!("{k:?} row {r} token {t}"));
                }
            }
        }
    }

    #[test]
    fn other_types_stay_packed_and_multiply() {
        let (rows, cols) = (5, 256);
        let w = values(rows * cols, 9);
        let bytes = quant::quantize(GgmlType::F16, &w).unwrap();
        let p = PackedMatrix::from_ggml(GgmlType::F16, &bytes, rows, cols).unwrap();
        assert_eq!(p.bytes(), bytes.len());
        let q6 = q6_k_bytes(rows);
        let k = PackedMatrix::from_ggml(GgmlType::Q6_K, &q6, rows, cols).unwrap();
        // Q6_K gets a kernel of its own: a byte per value and an f32 scale per 16.
        assert!(matches!(k.store, Store::Q6(_)));
        assert_eq!(k.bytes(), rows * cols / 32 * 40);
        // Its values are exactly the ones ggml's layout gives.
        assert_eq!(
            k.to_f32(),
            quant::dequantize(GgmlType::Q6_K, &q6, rows * cols).unwrap()
        );
        for m in [&p, &k] {
            for n in [1, 3, 9] {
                let x = values(n * cols, 4);
                let one = one_token_products(m, &x, n);
                let mut each = vec![0f32; n * rows];
                m.matmul_each(&x, n, &mut each).unwrap();
                assert_eq!(one, each, "n = {n}");
                assert_close(&one, &reference(m, &x, n), "raw product");
                let mut prompt = vec![0f32; n * rows];
                m.matmul(&x, n, &mut prompt).unwrap();
                assert_close(&prompt, &reference(m, &x, n), "raw prompt product");
            }
        }
        // Bytes of the wrong length are refused.
        assert!(PackedMatrix::from_ggml(GgmlType::Q6_K, &q6[..209], rows, cols).is_err());
    }

    /// Rows too long for eight tokens' activations to stay in L1 go a stretch of blocks at a
    /// time, with the same bits as one token at a time: every block type with stretches, odd
    /// and even block counts past a stretch, token counts that leave 4, 2 and 1 at the end.
    #[test]
    fn long_rows_a_stretch_at_a_time_give_each_token_its_one_token_bits() {
        let rows = 3;
        let mut matrices = Vec::new();
        // 33 and 81 blocks: a last stretch of one block; 72: of eight.
        for cols in [1056, 2592] {
            let w = values(rows * cols, 5);
            for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
                let bytes = quant::quantize(ty, &w).unwrap();
                let m = PackedMatrix::from_ggml(ty, &bytes, rows, cols).unwrap();
                matrices.push((format!("{ty:?} x {cols}"), m));
            }
        }
        let q6 = q6_k_bytes(rows * 2304 / 256);
        let m = PackedMatrix::from_ggml(GgmlType::Q6_K, &q6, rows, 2304).unwrap();
        matrices.push(("Q6_K x 2304".into(), m));
        for (name, m) in &matrices {
            let cols = m.cols;
            assert!(cols * size_of::<f32>() * MANY > TOKEN_BLOCK_BYTES, "{name}");
            for n in [2, 8, 15] {
                let x = values(n * cols, 7);
                let one = one_token_products(m, &x, n);
                let mut each = vec![0f32; n * rows];
                m.matmul_each(&x, n, &mut each).unwrap();
                assert_eq!(one, each, "{name}, n = {n}");
            }
        }
    }

    #[test]
    fn packing_refuses_bytes_of_the_wrong_length() {
        let bytes = quant::quantize(GgmlType::Q4_1, &values(64, 1)).unwrap();
        let err = PackedMatrix::from_ggml(GgmlType::Q4_1, &bytes[..39], 2, 32).unwrap_err();
        assert!(err.to_string().contains("takes 40 bytes, got 39"), "{err}");
        assert!(PackedMatrix::from_f32(vec![0.0; 5], 2, 3).is_err());
        // Products check their shapes instead of reading past the input.
        let w = PackedMatrix::from_ggml(GgmlType::Q4_1, &bytes, 2, 32).unwrap();
        let mut out = vec![0f32; 2];
        let err = w.matmul(&[1.0; 31], 1, &mut out).unwrap_err();
        assert!(err.to_string().contains("needs [1, 32] inputs"), "{err}");
        assert!(w.matmul(&[1.0; 64], 2, &mut out).is_err());
        assert!(w.matmul(&[], 0, &mut []).is_err());
    }

    #[test]
    fn every_kernel_matches_the_dequantized_product() {
        for ty in [
            GgmlType::Q4_1,
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::F32,
        ] {
            // 96 columns: three blocks, an odd count for the two-accumulator loops.
            let w = packed(ty, 37, 96, 7);
            for n in [1, 2, 5, 9] {
                let x = values(n * 96, 11 + n as u64);
                let mut out = vec![0f32; n * 37];
                w.matmul(&x, n, &mut out).unwrap();
                assert_close(&out, &reference(&w, &x, n), &format!("{ty} n={n}"));
            }
        }
    }

    /// Row `r` of `w`'s values times the rounded token's values (`d_x q_x`) in f64: what the
    /// 8-bit activation kernels compute, and the sum of the terms' sizes.
    fn int8_reference(w: &PackedMatrix, r: usize, q: &int8::QuantizedRow) -> (f64, f64) {
        let dense = w.to_f32();
        let row = &dense[r * w.cols..(r + 1) * w.cols];
        let (mut total, mut size) = (0f64, 0f64);
        for (j, &v) in row.iter().enumerate() {
            let term = f64::from(v) * f64::from(q.d[j / 32]) * f64::from(q.q[j]);
            total += term;
            size += term.abs();
        }
        (total, size)
    }

    #[test]
    fn attention_kernels_give_the_bits_of_the_plain_loops() {
        for (len, stride, count) in [
            (64, 192, 37),
            (64, 64, 1),
            (13, 20, 5),
            (40, 40, 0),
            (136, 200, 9),
        ] {
            let q = values(len, 1);
            let keys = values(stride * count.max(1), 2);
            let mut got = vec![0f32; count];
            dots_f32(&q, &keys, stride, &mut got);
            for (p, &g) in got.iter().enumerate() {
                let want = dot_f32(&q, &keys[p * stride..p * stride + len]);
                assert_eq!(g.to_bits(), want.to_bits(), "len {len} key {p}");
            }
            let weights = values(count, 3);
            let mut out = values(len, 4);
            weighted_sum(&mut out, &weights, &keys, stride);
            let mut want = vec![0f32; len];
            for (p, &w) in weights.iter().enumerate() {
                for (o, &v) in want.iter_mut().zip(&keys[p * stride..]) {
                    *o += w * v;
                }
            }
            assert_eq!(out, want);
        }
    }

    #[test]
    fn rounded_activations_keep_each_value_within_half_a_step() {
        let x = values(96, 4);
        let q = int8::QuantizedRow::new(&x);
        for (b, block) in x.chunks_exact(32).enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!((q.d[b] * 127.0 - amax).abs() <= 1e-6);
            for (j, &v) in block.iter().enumerate() {
                let back = q.d[b] * f32::from(q.q[b * 32 + j]);
                assert!(
                    (back - v).abs() <= q.d[b] * 0.5 + 1e-7,
                    "block {b} value {j}"
                );
            }
            let qsum: i32 = q.q[b * 32..(b + 1) * 32]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            assert_eq!((q.qsum[b], q.sum[b]), (qsum, q.d[b] * qsum as f32));
        }
        // An all-zero block rounds to zeros, not to NaN.
        let z = int8::QuantizedRow::new(&[0.0; 32]);
        assert_eq!((z.d[0], z.q.iter().all(|&v| v == 0)), (0.0, true));
    }

    /// `w` stored as it is with 8-bit activations on (whatever the switch says).
    pub(super) fn tiled(w: &PackedMatrix) -> PackedMatrix {
        let nb = w.cols / BLOCK;
        let store = match &w.store {
            Store::Q4(blocks) => {
                Store::Q4Tiles(mapped::Tiles::Owned(int8::tile(blocks.clone(), w.rows, nb)))
            }
            Store::Q8(blocks) => {
                Store::Q8Tiles(mapped::Tiles::Owned(int8::tile(blocks.clone(), w.rows, nb)))
            }
            _ => panic!("not a 4-bit or Q8_0 weight"),
        };
        PackedMatrix { store, ..w.clone() }
    }

    const TILED_TYPES: [GgmlType; 3] = [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0];

    #[test]
    fn only_weights_whose_scales_are_f16_values_are_tiled() {
        // Every weight read from a file fits: its scales are f16 in the file.
        for ty in TILED_TYPES {
            let w = packed(ty, 20, 64, 3);
            let fits = match &w.store {
                Store::Q4(b) => int8::scales_fit::<int8::Q4Tile>(b),
                Store::Q8(b) => int8::scales_fit::<int8::Q8Tile>(b),
                _ => unreachable!(),
            };
            assert!(fits, "{ty}");
        }
        let q4 = |d: f32, m: f32| Q4Block {
            d,
            m,
            qs: [0x5A; 16],
        };
        // 1e-9 is below f16's smallest step; Q4_0's offset -8 d overflows f16 past d = 8188.
        for (blk, fits) in [
            (q4(0.5, -4.0), true),
            (q4(1e-9, 0.0), false),
            (q4(10_000.0, -80_000.0), false),
            (q4(f32::INFINITY, 0.0), true),
        ] {
            assert_eq!(int8::scales_fit::<int8::Q4Tile>(&[blk]), fits, "{blk:?}");
        }
        let q8 = Q8Block {
            d: 0.1,
            qs: [3; 32],
        };
        assert!(!int8::scales_fit::<int8::Q8Tile>(&[q8]));
    }

    #[test]
    fn tiles_keep_every_row_and_value() {
        // 1 to 48 rows: one group, whole groups (tiled in place), and padded last groups.
        for ty in TILED_TYPES {
            for rows in [1, 5, 16, 17, 32, 33, 40, 48] {
                let w = packed(ty, rows, 96, rows as u64);
                let t = tiled(&w);
                assert_eq!(t.to_f32(), w.to_f32(), "{ty} {rows} rows");
                assert_eq!(t.clone().untiled(), w, "{ty} {rows} rows");
                let order: Vec<usize> = (0..rows).rev().collect();
                assert_eq!(t.reorder_rows(&order), w.clone().reorder_rows(&order));
            }
        }
    }

    #[test]
    fn int8_kernels_compute_the_rounded_product() {
        // 1 to 19 blocks, 37 rows (three row groups, the last one padded).
        for nb in [1, 2, 3, 4, 5, 16, 17, 18, 19] {
            for ty in TILED_TYPES {
                let w = packed(ty, 37, nb * 32, nb as u64);
                let t = tiled(&w);
                let x = values(nb * 32, 100 + nb as u64);
                let q = int8::QuantizedRow::new(&x);
                let mut got = vec![0f32; 37];
                t.matmul(&x, 1, &mut got).unwrap();
                // The portable form does the kernels' operations: the same bits.
                let portable = |r: usize| {
                    let (g, lane) = (r / 16, r % 16);
                    let group = match &t.store {
                        Store::Q4Tiles(v) => int8::portable_group_dot(&v[g * nb..][..nb], &q),
                        Store::Q8Tiles(v) => int8::portable_group_dot(&v[g * nb..][..nb], &q),
                        _ => unreachable!(),
                    };
                    group[lane]
                };
                for (r, &got) in got.iter().enumerate() {
                    let (want, size) = int8_reference(&w, r, &q);
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (1.0 + size),
                        "{ty} {nb} blocks row {r}: {got} vs {want}"
                    );
                    assert_eq!(got.to_bits(), portable(r).to_bits(), "{ty} {nb} row {r}");
                }
            }
        }
    }

    #[test]
    fn int8_rows_get_the_same_bits_alone_and_in_a_batch() {
        for ty in TILED_TYPES {
            let w = tiled(&packed(ty, 21, 19 * 32, 21));
            let x = values(16 * 19 * 32, 300);
            let mut alone = vec![0f32; 16 * 21];
            for (x, out) in x.chunks_exact(19 * 32).zip(alone.chunks_exact_mut(21)) {
                w.matmul(x, 1, out).unwrap();
            }
            for n in 1..=16 {
                let mut out = vec![0f32; n * 21];
                w.matmul_each(&x[..n * 19 * 32], n, &mut out).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out), bits(&alone[..n * 21]), "{ty} {n} tokens");
            }
        }
    }

    #[test]
    fn portable_and_detected_kernels_agree() {
        let k = Kernels::detect();
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32] {
            let w = packed(ty, 5, 160, 5);
            let x = values(160, 9);
            for r in 0..5 {
                let a = w.row_dot(k, r, &x);
                let b = w.row_dot(Kernels::Portable, r, &x);
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{ty} row {r}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn stacking_and_reordering_move_whole_rows() {
        let a = packed(GgmlType::Q4_1, 3, 64, 1);
        let b = packed(GgmlType::Q4_1, 2, 64, 2);
        let s = PackedMatrix::concat_rows(vec![a.clone(), b.clone()]).unwrap();
        assert!(s.is_quantized());
        assert_eq!(s.rows(), 5);
        let dense: Vec<f32> = a.to_f32().into_iter().chain(b.to_f32()).collect();
        assert_eq!(s.to_f32(), dense);
        let r = s.clone().reorder_rows(&[4, 0, 3, 1, 2]);
        let rd = r.to_f32();
        for (i, &src) in [4, 0, 3, 1, 2].iter().enumerate() {
            assert_eq!(rd[i * 64..(i + 1) * 64], dense[src * 64..(src + 1) * 64]);
        }
        // Mixed formats are stacked as f32.
        let c = packed(GgmlType::Q8_0, 1, 64, 3);
        let m = PackedMatrix::concat_rows(vec![a.clone(), c.clone()]).unwrap();
        assert!(!m.is_quantized());
        assert_eq!(m.to_f32()[..192], a.to_f32()[..]);
        assert!(PackedMatrix::concat_rows(vec![a, packed(GgmlType::Q4_1, 1, 32, 4)]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn products_match_for_any_shape(
            rows in 1usize..70, blocks in 1usize..6, n in 1usize..7, seed in 0u64..1000,
            ty in prop::sample::select(vec![GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32]),
        ) {
            let cols = blocks * BLOCK;
            let w = packed(ty, rows, cols, seed);
            let x = values(n * cols, seed + 1);
            let mut out = vec![0f32; n * rows];
            w.matmul(&x, n, &mut out).unwrap();
            assert_close(&out, &reference(&w, &x, n), "proptest");
        }
    }
}
