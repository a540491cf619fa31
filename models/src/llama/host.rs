//! Every step on the CPU without tensors: every op of a block (norms, rotary embedding,
//! attention against the session's cache, SwiGLU) on plain slices, the linear layers through the
//! packed kernels.
//!
//! A decode step is one row per session; through burn each small op of a row was a tensor
//! allocation and a dispatch, and attention grew the cache by concatenating it whole on every
//! token, so more than half of a batched pass went to everything but the products. Here each row
//! of a pass (one session's decode token, or one row of a prompt chunk or a stepwise replay) runs
//! exactly the operations it would run alone as a decode step, in the same order, so a batch is
//! bit-identical to its members' steps one at a time, whichever threads run them, and a prompt
//! gives the same cache however it is chunked.
//!
//! Prompts went through burn's tensors until 2026-12-04: a pass then ran each prompt chunk on its
//! own beside the decode steps, reading every weight once more. Here a chunk's rows join the
//! pass's products; its rows' attention runs in parallel, each row against the positions up to
//! its own. SmolLM2-135M, a 16-token prompt alone: 1.04-1.27 ms a token with 8-bit activations
//! against 1.69-1.85 through burn.

use rayon::prelude::*;

use super::{HiddenStates, KvCache, LayerKv, Linear, LoadedBlocks, split_rows};
use crate::ModelError;
use crate::awake::KeepAwake;
use crate::packed::{PackedMatrix, attend_heads, dot_f32, swiglu};

/// Context length from which one session's attention is split over the heads in parallel.
const PARALLEL_HEADS_FROM: usize = 64;

/// A session's rows in a pass: its cache, its rows' hidden states, the positions they take.
struct SessionRows<'c> {
    cache: &'c mut KvCache,
    first_row: usize,
    rows: usize,
}

impl LoadedBlocks {
    /// The rows of several sessions' decode steps through every block, on the CPU (see the
    /// module comment). `caches[s]` takes `inputs[s]`'s rows as its next positions.
    pub(super) fn forward_rows_host(
        &self,
        caches: &mut [&mut KvCache],
        inputs: &[&HiddenStates],
    ) -> Result<Vec<HiddenStates>, ModelError> {
        let cfg = &*self.cfg;
        let d = cfg.hidden_size;
        let rows: usize = inputs.iter().map(|i| i.n_tokens).sum();
        let mut x = Vec::with_capacity(rows * d);
        for input in inputs {
            x.extend_from_slice(&input.data);
        }
        let mut sessions = Vec::with_capacity(caches.len());
        let mut first_row = 0;
        for (cache, input) in caches.iter_mut().zip(inputs) {
            sessions.push(SessionRows {
                cache,
                first_row,
                rows: input.n_tokens,
            });
            first_row += input.n_tokens;
        }
        // Each row's rotary angles, as its own step computes them.
        let rope: Vec<(Vec<f32>, Vec<f32>)> = sessions
            .iter()
            .flat_map(|s| (0..s.rows).map(move |r| s.cache.len + r))
            .map(|pos| self.rope.angles(pos))
            .collect();
        let eps = cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let ffn = cfg.intermediate_size;
        let norms = self.host_norms.as_ref().ok_or_else(|| {
            ModelError::Backend("host decode on blocks loaded for another device".into())
        })?;
        let mut h = vec![0f32; rows * d];
        // One row's products are too short for the other workers to fall asleep between them.
        let _awake = (rows > 1).then(KeepAwake::start);
        for (li, w) in self.blocks.iter().enumerate() {
            let _span = tracing::trace_span!("block", index = self.range.start + li).entered();
            let (attn_norm, ffn_norm) = &norms[li];
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rms_norm_row(xr, attn_norm, eps, hr);
            }
            let mut qkv = product(&w.wqkv, &h, rows)?;
            let mut attn = vec![0f32; rows * q_dim];
            let width = q_dim + 2 * kv_dim;
            let attend_session = |s: &mut SessionRows<'_>, qkv: &mut [f32], out: &mut [f32]| {
                let layer = s.cache.layers[li].get_or_insert_with(|| LayerKv::Host {
                    k: Vec::new(),
                    v: Vec::new(),
                });
                let LayerKv::Host { k, v } = layer else {
                    unreachable!("a CPU block range keeps its caches on the host")
                };
                let before = k.len() / kv_dim;
                grow(k, s.rows * kv_dim, kv_dim);
                grow(v, s.rows * kv_dim, kv_dim);
                for (r, row) in qkv.chunks_exact_mut(width).enumerate() {
                    let (cos, sin) = &rope[s.first_row + r];
                    let (q, kv) = row.split_at_mut(q_dim);
                    for head in q
                        .chunks_exact_mut(hd)
                        .chain(kv[..kv_dim].chunks_exact_mut(hd))
                    {
                        self.rope.rotate(head, cos, sin);
                    }
                    k.extend_from_slice(&kv[..kv_dim]);
                    v.extend_from_slice(&kv[kv_dim..]);
                }
                // Row r sees the positions up to its own, exactly the cache its decode step
                // would see; so a prompt chunk's rows need not wait for each other.
                let (k, v) = (&k[..], &v[..]);
                let attend = |(r, (row, o)): (usize, (&[f32], &mut [f32]))| {
                    let end = (before + r + 1) * kv_dim;
                    attend_row(&row[..q_dim], &k[..end], &v[..end], nh, nkv, hd, o);
                };
                if s.rows > 1 {
                    qkv.par_chunks_exact(width)
                        .zip(out.par_chunks_exact_mut(q_dim))
                        .enumerate()
                        .for_each(attend);
                } else {
                    qkv.chunks_exact(width)
                        .zip(out.chunks_exact_mut(q_dim))
                        .enumerate()
                        .for_each(attend);
                }
            };
            if sessions.len() == 1 {
                attend_session(&mut sessions[0], &mut qkv, &mut attn);
            } else {
                // Sessions in parallel: each owns its cache, its qkv rows and its output rows.
                let mut jobs = Vec::with_capacity(sessions.len());
                let (mut qkv_rest, mut attn_rest) = (qkv.as_mut_slice(), attn.as_mut_slice());
                for s in sessions.iter_mut() {
                    let (mine, tail) = std::mem::take(&mut qkv_rest).split_at_mut(s.rows * width);
                    let (out, out_tail) =
                        std::mem::take(&mut attn_rest).split_at_mut(s.rows * q_dim);
                    qkv_rest = tail;
                    attn_rest = out_tail;
                    jobs.push((s, mine, out));
                }
                jobs.into_par_iter()
                    .for_each(|(s, qkv, out)| attend_session(s, qkv, out));
            }
            let o = product(&w.wo, &attn, rows)?;
            add_into(&mut x, &o);
            for (hr, xr) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rms_norm_row(xr, ffn_norm, eps, hr);
            }
            let gu = product(&w.w_gate_up, &h, rows)?;
            let mut act = vec![0f32; rows * ffn];
            let swiglu = |(a, g): (&mut [f32], &[f32])| {
                let (gate, up) = g.split_at(ffn);
                swiglu(a, gate, up);
            };
            // Rows over the pool (the bits are the same): 12288 exps a block at 8 sessions, on
            // one thread while the other polled, were a third of a pass outside the products
            // and attention (bench_batch: 159-162 -> 106-115 µs a token).
            if rows > 1 {
                act.par_chunks_exact_mut(ffn)
                    .zip(gu.par_chunks_exact(2 * ffn))
                    .for_each(swiglu);
            } else {
                act.chunks_exact_mut(ffn)
                    .zip(gu.chunks_exact(2 * ffn))
                    .for_each(swiglu);
            }
            let down = product(&w.w_down, &act, rows)?;
            add_into(&mut x, &down);
        }
        for s in &mut sessions {
            s.cache.len += s.rows;
        }
        Ok(split_rows(&x, inputs, d))
    }
}

/// `x[rows, in] · Wᵀ`, each row as a one-token product.
fn product(w: &Linear, x: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
    let weight: &PackedMatrix = match w {
        Linear::Packed { weight, .. } => weight,
        Linear::Tensor { .. } => {
            return Err(ModelError::Backend(
                "host decode needs packed weights (blocks loaded for the CPU)".into(),
            ));
        }
    };
    let mut out = vec![0f32; rows * weight.rows()];
    weight.matmul_each(x, rows, &mut out)?;
    Ok(out)
}

/// Room for `more` values in a cache buffer of `per_position` values a position, growing it by
/// a quarter (at least 16 positions) when full: doubling would leave up to half of a long
/// session's cache unused, and the node budgets KV memory by what caches hold.
pub(super) fn grow(buf: &mut Vec<f32>, more: usize, per_position: usize) {
    if buf.capacity() - buf.len() < more {
        buf.reserve_exact(more.max(buf.len() / 4).max(16 * per_position));
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
pub(super) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = dot_f32(x, x) / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = x * inv * w;
    }
}

/// One row's attention: each query head against every cached position of its KV head
/// (`k`, `v`: `[positions, kv heads, head_dim]`), softmax, weighted sum of the values.
fn attend_row(q: &[f32], k: &[f32], v: &[f32], nh: usize, nkv: usize, hd: usize, out: &mut [f32]) {
    let kv_dim = nkv * hd;
    let positions = k.len() / kv_dim;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    // Each KV head's query heads together (their keys and values read once for all), in
    // two parts where there are fewer KV heads than twice the threads, so that the threads
    // share the work evenly (SmolLM2-135M: 3 KV heads of 3 query heads each).
    let part = if nkv >= 2 * rayon::current_num_threads() {
        group
    } else {
        group.div_ceil(2)
    };
    let heads = |first: usize, out: &mut [f32]| {
        let g = first / group;
        let q = &q[first * hd..first * hd + out.len()];
        attend_heads(
            q,
            hd,
            &k[g * hd..],
            &v[g * hd..],
            kv_dim,
            positions,
            scale,
            out,
        );
    };
    // Parts never straddle two KV heads.
    let parts = (0..nkv).flat_map(|g| {
        (g * group..(g + 1) * group)
            .step_by(part)
            .map(move |first| (first, part.min((g + 1) * group - first)))
    });
    if positions >= PARALLEL_HEADS_FROM {
        let mut outs: Vec<(usize, &mut [f32])> = Vec::with_capacity(nh);
        let mut rest = out;
        for (first, n) in parts {
            let (mine, more) = rest.split_at_mut(n * hd);
            outs.push((first, mine));
            rest = more;
        }
        outs.into_par_iter().for_each(|(first, o)| heads(first, o));
    } else {
        for (first, n) in parts {
            heads(first, &mut out[first * hd..(first + n) * hd]);
        }
    }
}
