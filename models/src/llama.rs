//! The Llama forward pass in burn: blocks (attention with grouped-query heads and a KV cache,
//! SwiGLU MLP, RMSNorm), a contiguous range of blocks, and the client-side head (token embedding,
//! final norm, LM head).
//!
//! Shapes follow one convention throughout: activations are `[1, tokens, hidden]`, linear weights
//! are kept as stored by Hugging Face (`[out, in]`) and used through a transposed view, because
//! pre-transposing them was measured slower on flex (see STACK.md).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::ModelError;
use crate::config::LlamaConfig;
use crate::packed::PackedMatrix;
use crate::rope::RopeTables;

mod host;

/// Hidden states of a run of consecutive tokens, row-major `[n_tokens, dim]`: the currency passed
/// between block ranges, over the wire as well as in one process.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenStates {
    pub n_tokens: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl HiddenStates {
    pub fn new(n_tokens: usize, dim: usize, data: Vec<f32>) -> Result<Self, ModelError> {
        if n_tokens == 0 {
            return Err(ModelError::BadInput("hidden states hold no tokens".into()));
        }
        if data.len() != n_tokens * dim {
            return Err(ModelError::BadInput(format!(
                "hidden states of {n_tokens} tokens x {dim} need {} values, got {}",
                n_tokens * dim,
                data.len()
            )));
        }
        Ok(Self {
            n_tokens,
            dim,
            data,
        })
    }

    fn to_tensor(&self, device: &Device) -> Tensor<3> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [1, self.n_tokens, self.dim]),
            device,
        )
    }

    fn from_tensor(t: Tensor<3>) -> Result<Self, ModelError> {
        let [_, n_tokens, dim] = t.dims();
        let data = t
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
        Ok(Self {
            n_tokens,
            dim,
            data,
        })
    }
}

/// The weights of one transformer block, with Q/K/V and gate/up fused so that each becomes one
/// matrix product.
pub(crate) struct BlockWeights {
    pub attn_norm: Tensor<1>,
    pub wqkv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor<1>,
    pub w_gate_up: Linear,
    pub w_down: Linear,
}

/// One session's keys and values for the blocks of one range.
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

/// One block's cached keys and values.
enum LayerKv {
    /// `[1, kv heads, positions, head_dim]` tensors on the blocks' device.
    Tensors(Box<(Tensor<4>, Tensor<4>)>),
    /// On the CPU: `[positions, kv heads, head_dim]` in growable buffers, so that a decode step
    /// appends its row instead of copying the whole cache into a new tensor.
    Host { k: Vec<f32>, v: Vec<f32> },
}

impl KvCache {
    /// Number of positions the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything, e.g. before replaying a prefix.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Keeps the first `len` positions and forgets the rest (a hop recomputing a replayed
    /// suffix whose inputs changed); a `len` at or past [`Self::len`] changes nothing.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        if len == 0 {
            return self.clear();
        }
        let old = self.len;
        for layer in self.layers.iter_mut().flatten() {
            match layer {
                LayerKv::Tensors(kv) => {
                    let (k, v) = &mut **kv;
                    *k = k.clone().narrow(2, 0, len);
                    *v = v.clone().narrow(2, 0, len);
                }
                LayerKv::Host { k, v } => {
                    let per_position = k.len() / old;
                    k.truncate(len * per_position);
                    v.truncate(len * per_position);
                }
            }
        }
        self.len = len;
    }

    /// Bytes held by keys and values (f32).
    pub fn bytes(&self, cfg: &LlamaConfig) -> usize {
        self.len * cfg.kv_dim() * 2 * 4 * self.layers.len()
    }
}

/// A contiguous range of transformer blocks, with only those blocks' weights in memory.
pub struct LoadedBlocks {
    cfg: Arc<LlamaConfig>,
    range: Range<usize>,
    blocks: Vec<BlockWeights>,
    rope: RopeTables,
    device: Device,
    /// On the CPU: each block's attention and MLP norm weights as plain values, for decode
    /// steps without tensors (`host.rs`); their caches live on the host. None elsewhere.
    host_norms: Option<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl LoadedBlocks {
    pub(crate) fn new(
        cfg: Arc<LlamaConfig>,
        range: Range<usize>,
        blocks: Vec<BlockWeights>,
        device: Device,
    ) -> Self {
        let rope = RopeTables::new(&cfg);
        let host_norms = (device == Device::flex())
            .then(|| {
                let values = |t: &Tensor<1>| t.clone().try_into_vec_as::<f32>().ok();
                blocks
                    .iter()
                    .map(|b| Some((values(&b.attn_norm)?, values(&b.ffn_norm)?)))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten();
        Self {
            cfg,
            range,
            blocks,
            rope,
            device,
            host_norms,
        }
    }

    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the blocks' linear-layer weights occupy (packed on the CPU, f32 elsewhere).
    pub fn weight_bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| {
                [&b.wqkv, &b.wo, &b.w_gate_up, &b.w_down]
                    .map(Linear::bytes)
                    .iter()
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Runs the blocks over new tokens whose positions continue from `cache.len()`. On the CPU
    /// each token is computed exactly as a one-token step would compute it (`host.rs`), so a
    /// prompt gives the same cache and outputs whole, in chunks, or token by token.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        input: &HiddenStates,
    ) -> Result<HiddenStates, ModelError> {
        let input = self.check_input(cache, input)?;
        if self.host_norms.is_some() {
            return rayon::scope(|_| {
                let mut out = self.forward_rows_host(&mut [cache], &[input])?;
                Ok(out.remove(0))
            });
        }
        // On a pool thread, so that the products' parallel parts start on this thread and the
        // other workers instead of handing every product over to the pool and sleeping until
        // it is done (a futex round trip per product, 16 % of the CPU time in system calls).
        rayon::scope(|_| {
            let x = self.forward_tensor(cache, input.to_tensor(&self.device))?;
            HiddenStates::from_tensor(x)
        })
    }

    fn check_input<'a>(
        &self,
        cache: &KvCache,
        input: &'a HiddenStates,
    ) -> Result<&'a HiddenStates, ModelError> {
        if input.dim != self.cfg.hidden_size {
            return Err(ModelError::BadInput(format!(
                "hidden states have dim {}, the model's hidden size is {}",
                input.dim, self.cfg.hidden_size
            )));
        }
        if input.n_tokens == 0 || input.data.len() != input.n_tokens * input.dim {
            return Err(ModelError::BadInput(
                "hidden states are empty or of the wrong length".into(),
            ));
        }
        if cache.layers.len() != self.blocks.len() {
            return Err(ModelError::BadInput(
                "KV cache belongs to another block range".into(),
            ));
        }
        let on_host = self.host_norms.is_some();
        if cache
            .layers
            .iter()
            .flatten()
            .any(|l| matches!(l, LayerKv::Host { .. }) != on_host)
        {
            return Err(ModelError::BadInput(
                "KV cache belongs to blocks on another device".into(),
            ));
        }
        if cache.len + input.n_tokens > self.cfg.max_seq_len {
            return Err(ModelError::ContextFull {
                max: self.cfg.max_seq_len,
                needed: cache.len + input.n_tokens,
            });
        }
        if let Some(bad) = input.data.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::BadInput(format!(
                "hidden states contain a non-finite value ({bad})"
            )));
        }
        Ok(input)
    }

    pub(crate) fn forward_tensor(
        &self,
        cache: &mut KvCache,
        mut x: Tensor<3>,
    ) -> Result<Tensor<3>, ModelError> {
        let [_, n, _] = x.dims();
        let start = cache.len;
        let (cos, sin) = self.rope.tables(start, n, &self.device);
        let mask = causal_mask(
            start,
            n,
            self.cfg.n_heads / self.cfg.n_kv_heads,
            &self.device,
        );
        for (i, block) in self.blocks.iter().enumerate() {
            let _span = tracing::trace_span!("block", index = self.range.start + i).entered();
            x = self.block_forward(block, &mut cache.layers[i], x, &cos, &sin, mask.as_ref())?;
        }
        cache.len += n;
        Ok(x)
    }

    fn block_forward(
        &self,
        w: &BlockWeights,
        kv: &mut Option<LayerKv>,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<4>>,
    ) -> Result<Tensor<3>, ModelError> {
        let cfg = &*self.cfg;
        let h = rms_norm(x.clone(), &w.attn_norm, cfg.rms_norm_eps);
        let qkv = linear(h, &w.wqkv)?;
        let attn = self.attend(qkv, kv, cos, sin, mask)?;
        let x = x.add(linear(attn, &w.wo)?);
        self.feed_forward(w, x, linear)
    }

    /// Attention of `n` new tokens whose fused q, k, v projections are `qkv` (`[1, n, ...]`),
    /// against the session's cached keys and values, which it extends. Returns `[1, n, heads x
    /// head_dim]`, before the output projection.
    fn attend(
        &self,
        qkv: Tensor<3>,
        kv: &mut Option<LayerKv>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<4>>,
    ) -> Result<Tensor<3>, ModelError> {
        let cfg = &*self.cfg;
        let [_, n, _] = qkv.dims();
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let group = nh / nkv;
        let q = qkv.clone().narrow(2, 0, nh * hd);
        let k = qkv.clone().narrow(2, nh * hd, nkv * hd);
        let v = qkv.narrow(2, (nh + nkv) * hd, nkv * hd);
        // [1, n, heads, hd] -> [1, heads, n, hd]
        let q = q.reshape([1, n, nh, hd]).swap_dims(1, 2);
        let k = k.reshape([1, n, nkv, hd]).swap_dims(1, 2);
        let v = v.reshape([1, n, nkv, hd]).swap_dims(1, 2);
        let q = self.rope.apply(q, cos, sin);
        let k = self.rope.apply(k, cos, sin);
        // Only blocks off the CPU come here; their caches are tensors (`check_input`).
        let (k, v) = match kv.take() {
            Some(LayerKv::Tensors(prev)) => {
                let (pk, pv) = *prev;
                (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2))
            }
            _ => (k, v),
        };
        *kv = Some(LayerKv::Tensors(Box::new((k.clone(), v.clone()))));
        // Grouped-query attention without repeating K/V: the query heads that share a KV head are
        // stacked along the row axis, so one matmul per KV head serves the whole group.
        let q = q.reshape([1, nkv, group * n, hd]);
        let mut scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt());
        if let Some(mask) = mask {
            scores = scores.add(mask.clone());
        }
        let probs = softmax(scores, 3);
        let attn = probs.matmul(v); // [1, nkv, group*n, hd]
        debug_assert_eq!(attn.dims(), [1, nkv, group * n, hd]);
        Ok(attn
            .reshape([1, nh, n, hd])
            .swap_dims(1, 2)
            .reshape([1, n, nh * hd]))
    }

    /// The block's second half: norm, gated MLP, residual. `product` is how the linear layers
    /// run: alone ([`linear`]) or row by row for a batch of decode steps ([`linear_each`]).
    fn feed_forward(
        &self,
        w: &BlockWeights,
        x: Tensor<3>,
        product: fn(Tensor<3>, &Linear) -> Result<Tensor<3>, ModelError>,
    ) -> Result<Tensor<3>, ModelError> {
        let cfg = &*self.cfg;
        let [_, n, d] = x.dims();
        let h = rms_norm(x.clone(), &w.ffn_norm, cfg.rms_norm_eps);
        let gu = product(h, &w.w_gate_up)?;
        let ffn = cfg.intermediate_size;
        let gate = gu.clone().narrow(2, 0, ffn);
        let up = gu.narrow(2, ffn, ffn);
        let act = silu(gate).mul(up);
        let out = product(act, &w.w_down)?;
        debug_assert_eq!(out.dims(), [1, n, d]);
        Ok(x.add(out))
    }

    /// Runs one pass for the steps of several sessions (continuous batching). The decode steps
    /// (one token each, or several marked [`BatchStep::stepwise`]) go through every linear layer
    /// together, each weight read once for all of them and each row computed exactly as it would
    /// be alone; attention is per session against its own cache, row by row. On the CPU prompt
    /// chunks join them, their rows computed as their decode steps would be; elsewhere they run
    /// on their own within the pass. On the CPU every step's output and cache are bit-identical
    /// to running it alone, and to running its rows one token at a time. A step that is invalid
    /// (wrong width, full context, non-finite values) fails alone.
    pub fn forward_batch(
        &self,
        steps: &mut [BatchStep<'_>],
    ) -> Vec<Result<HiddenStates, ModelError>> {
        let mut results: Vec<Option<Result<HiddenStates, ModelError>>> =
            (0..steps.len()).map(|_| None).collect();
        let mut decodes = Vec::new();
        for (i, step) in steps.iter_mut().enumerate() {
            match self.check_input(step.cache, step.input) {
                Err(e) => results[i] = Some(Err(e)),
                // On the CPU a prompt chunk's rows are computed as its decode steps would be,
                // so it shares the pass's products with the other sessions' steps.
                Ok(input) if input.n_tokens == 1 || step.stepwise || self.host_norms.is_some() => {
                    decodes.push(i)
                }
                Ok(_) => results[i] = Some(self.forward(step.cache, step.input)),
            }
        }
        if decodes.len() == 1 && steps[decodes[0]].input.n_tokens == 1 {
            let step = &mut steps[decodes[0]];
            results[decodes[0]] = Some(self.forward(step.cache, step.input));
        } else if !decodes.is_empty() {
            let mut caches = Vec::with_capacity(decodes.len());
            let mut inputs = Vec::with_capacity(decodes.len());
            // Disjoint borrows of the chosen steps, in order.
            let mut rest: &mut [BatchStep<'_>] = steps;
            let mut offset = 0;
            for &i in &decodes {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - offset);
                let (step, tail) = tail.split_first_mut().expect("index inside the steps");
                caches.push(&mut *step.cache);
                inputs.push(step.input);
                rest = tail;
                offset = i + 1;
            }
            let outs = rayon::scope(|_| {
                if self.host_norms.is_some() {
                    self.forward_rows_host(&mut caches, &inputs)
                } else {
                    self.forward_stepwise(&mut caches, &inputs)
                }
            });
            match outs {
                Ok(outs) => {
                    for (&i, out) in decodes.iter().zip(outs) {
                        results[i] = Some(Ok(out));
                    }
                }
                Err(e) => {
                    for &i in &decodes {
                        results[i] = Some(Err(ModelError::Backend(e.to_string())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::BadInput("step was not run".into()))))
            .collect()
    }

    /// The rows of several sessions' steps, each row computed as a one-token step of its session
    /// would be: every linear layer over all rows at once ([`linear_each`]), attention row by row
    /// in each session's order, so a row sees exactly the cache its own decode step would.
    fn forward_stepwise(
        &self,
        caches: &mut [&mut KvCache],
        inputs: &[&HiddenStates],
    ) -> Result<Vec<HiddenStates>, ModelError> {
        let d = self.cfg.hidden_size;
        let rows: usize = inputs.iter().map(|i| i.n_tokens).sum();
        let mut data = Vec::with_capacity(rows * d);
        for input in inputs {
            data.extend_from_slice(&input.data);
        }
        let mut x: Tensor<3> = Tensor::from_data(TensorData::new(data, [1, rows, d]), &self.device);
        // Each row's rotary tables, as its own step would compute them.
        let tables: Vec<Vec<(Tensor<4>, Tensor<4>)>> = caches
            .iter()
            .zip(inputs)
            .map(|(c, input)| {
                (0..input.n_tokens)
                    .map(|r| self.rope.tables(c.len + r, 1, &self.device))
                    .collect()
            })
            .collect();
        for (li, w) in self.blocks.iter().enumerate() {
            let _span = tracing::trace_span!("block", index = self.range.start + li).entered();
            let h = rms_norm(x.clone(), &w.attn_norm, self.cfg.rms_norm_eps);
            let qkv = linear_each(h, &w.wqkv)?;
            let mut attn = Vec::with_capacity(rows);
            let mut row = 0;
            for (cache, session_tables) in caches.iter_mut().zip(&tables) {
                for (cos, sin) in session_tables {
                    attn.push(self.attend(
                        qkv.clone().narrow(1, row, 1),
                        &mut cache.layers[li],
                        cos,
                        sin,
                        None,
                    )?);
                    row += 1;
                }
            }
            x = x.add(linear_each(Tensor::cat(attn, 1), &w.wo)?);
            x = self.feed_forward(w, x, linear_each)?;
        }
        for (cache, input) in caches.iter_mut().zip(inputs) {
            cache.len += input.n_tokens;
        }
        let out = HiddenStates::from_tensor(x)?;
        Ok(split_rows(&out.data, inputs, d))
    }
}

/// The rows of a pass (`[rows, d]`, the inputs' rows in order) cut back into one result per
/// input.
fn split_rows(data: &[f32], inputs: &[&HiddenStates], d: usize) -> Vec<HiddenStates> {
    let mut rest = data;
    inputs
        .iter()
        .map(|input| {
            let (mine, tail) = rest.split_at(input.n_tokens * d);
            rest = tail;
            HiddenStates {
                n_tokens: input.n_tokens,
                dim: d,
                data: mine.to_vec(),
            }
        })
        .collect()
}

/// One session's step in a batched pass ([`LoadedBlocks::forward_batch`]).
pub struct BatchStep<'a> {
    pub cache: &'a mut KvCache,
    pub input: &'a HiddenStates,
    /// The rows are consecutive decode steps (a replay after failover): each is computed
    /// exactly as its own one-token step would be, not as a prompt chunk, whose products and
    /// attention run in another order and round differently.
    pub stepwise: bool,
}

/// Additive mask for `n` new queries at positions `start..start+n` against `start+n` keys,
/// repeated for the `group` query heads stacked per KV head. None when no position is masked.
fn causal_mask(start: usize, n: usize, group: usize, device: &Device) -> Option<Tensor<4>> {
    if n == 1 {
        return None;
    }
    let total = start + n;
    let mut data = Vec::with_capacity(group * n * total);
    for _ in 0..group {
        for i in 0..n {
            for j in 0..total {
                data.push(if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                });
            }
        }
    }
    Some(Tensor::from_data(
        TensorData::new(data, [1, 1, group * n, total]),
        device,
    ))
}

/// A linear layer's `[out, in]` weight. On the CPU it stays in its packed (often quantized) form
/// and our kernels multiply it: a one-token product is a matrix-vector product bound by reading
/// the weight, which flex ran on gemm's general kernel at well under the memory bandwidth
/// (BENCHMARKS.md, Models). Other devices get an f32 tensor.
pub(crate) enum Linear {
    Packed {
        weight: PackedMatrix,
        device: Device,
    },
    Tensor {
        weight: Box<Tensor<2>>,
        out: usize,
    },
}

impl Linear {
    pub(crate) fn new(weight: PackedMatrix, device: &Device) -> Self {
        if *device == Device::flex() {
            Linear::Packed {
                weight: weight.for_products(),
                device: device.clone(),
            }
        } else {
            let (out, inp) = (weight.rows(), weight.cols());
            Linear::Tensor {
                weight: Box::new(Tensor::from_data(
                    TensorData::new(weight.into_f32(), [out, inp]),
                    device,
                )),
                out,
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Linear::Packed { weight, .. } => weight.bytes(),
            Linear::Tensor { weight, .. } => weight.shape().num_elements() * 4,
        }
    }

    fn out(&self) -> usize {
        match self {
            Linear::Packed { weight, .. } => weight.rows(),
            Linear::Tensor { out, .. } => *out,
        }
    }

    /// `x @ w^T` for `[n, in]`. The tensor product runs in 2-D so that the transposed weight is
    /// read through strides; a batched 3-D product copied the whole weight on every call.
    fn forward2(&self, x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
        match self {
            Linear::Tensor { weight, .. } => Ok(x.matmul((**weight).clone().transpose())),
            Linear::Packed { weight, device } => {
                let [n, k] = x.dims();
                if k != weight.cols() {
                    return Err(ModelError::BadInput(format!(
                        "a linear layer of width {} got inputs of width {k}",
                        weight.cols()
                    )));
                }
                let x = x
                    .try_into_vec_as::<f32>()
                    .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
                let mut out = vec![0f32; n * weight.rows()];
                weight.matmul(&x, n, &mut out)?;
                Ok(Tensor::from_data(
                    TensorData::new(out, [n, weight.rows()]),
                    device,
                ))
            }
        }
    }

    fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, ModelError> {
        let [b, n, k] = x.dims();
        Ok(self
            .forward2(x.reshape([b * n, k]))?
            .reshape([b, n, self.out()]))
    }

    /// Rows `ids` of the weight, e.g. embeddings from a tied LM head.
    fn rows(&self, ids: &[u32]) -> Tensor<2> {
        match self {
            Linear::Tensor { weight, .. } => {
                let rows = ids
                    .iter()
                    .map(|&id| (**weight).clone().narrow(0, id as usize, 1))
                    .collect();
                Tensor::cat(rows, 0)
            }
            Linear::Packed { weight, device } => Tensor::from_data(
                TensorData::new(packed_rows(weight, ids), [ids.len(), weight.cols()]),
                device,
            ),
        }
    }
}

/// Rows `ids` of a packed weight, widened to f32 (`[ids.len(), cols]`).
fn packed_rows(weight: &PackedMatrix, ids: &[u32]) -> Vec<f32> {
    let cols = weight.cols();
    let mut data = vec![0f32; ids.len() * cols];
    for (&id, row) in ids.iter().zip(data.chunks_exact_mut(cols)) {
        weight.dequantize_row(id as usize, row);
    }
    data
}

fn linear(x: Tensor<3>, w: &Linear) -> Result<Tensor<3>, ModelError> {
    w.forward(x)
}

/// [`linear`] with each row computed as a one-token product (see [`LoadedBlocks::forward_batch`]).
fn linear_each(x: Tensor<3>, w: &Linear) -> Result<Tensor<3>, ModelError> {
    let [b, n, k] = x.dims();
    let rows = match w {
        Linear::Tensor { .. } => w.forward2(x.reshape([b * n, k]))?,
        Linear::Packed { weight, device } => {
            let x = x
                .try_into_vec_as::<f32>()
                .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
            let mut out = vec![0f32; b * n * weight.rows()];
            weight.matmul_each(&x, b * n, &mut out)?;
            Tensor::from_data(TensorData::new(out, [b * n, weight.rows()]), device)
        }
    };
    Ok(rows.reshape([b, n, w.out()]))
}

fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let inv = x
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x.mul(inv).mul(weight.clone().unsqueeze())
}

/// Where a [`Head`] reads token embeddings from.
pub(crate) enum Embedding {
    /// A table of its own.
    Table(Box<Tensor<2>>),
    /// The rows of the LM head (tied embeddings).
    Tied,
    /// Not loaded: the head of a node, which only applies the LM head.
    NotLoaded,
}

/// The client's part of the model: token embedding, final norm and LM head. The last hop of a
/// route holds one too, without the embeddings, to pick tokens for its sessions.
pub struct Head {
    cfg: Arc<LlamaConfig>,
    embedding: Embedding,
    norm: Tensor<1>,
    lm_head: Linear,
    device: Device,
    /// On the CPU: the final norm's weight as plain values, so that the logits of one session
    /// and of many at once run the same row operations (see [`Head::logits_last_many`]).
    host_norm: Option<Vec<f32>>,
    /// The logits of the last call to [`Head::logits_last_each`], kept for the next: a fresh
    /// buffer of 8 sessions' logits (1.5 MiB for SmolLM2) was mapped and zeroed anew on every
    /// pass, a page fault every 4 KiB.
    scratch: Mutex<Vec<f32>>,
}

impl Head {
    pub(crate) fn new(
        cfg: Arc<LlamaConfig>,
        embedding: Embedding,
        norm: Tensor<1>,
        lm_head: Linear,
        device: Device,
    ) -> Self {
        let host_norm = matches!(lm_head, Linear::Packed { .. })
            .then(|| norm.clone().try_into_vec_as::<f32>().ok())
            .flatten();
        Self {
            cfg,
            embedding,
            norm,
            lm_head,
            device,
            host_norm,
            scratch: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Refuses an empty list and ids outside the vocabulary.
    fn check_ids(&self, ids: &[u32]) -> Result<(), ModelError> {
        if ids.is_empty() {
            return Err(ModelError::BadInput("no tokens to embed".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(ModelError::BadInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    pub(crate) fn embed_tensor(&self, ids: &[u32]) -> Result<Tensor<3>, ModelError> {
        self.check_ids(ids)?;
        Ok(match &self.embedding {
            Embedding::Table(table) => {
                let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let idx =
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [ids.len()]), &self.device);
                (**table).clone().select(0, idx).unsqueeze()
            }
            Embedding::Tied => self.lm_head.rows(ids).unsqueeze(),
            Embedding::NotLoaded => {
                return Err(ModelError::BadInput(
                    "this head was loaded without the token embeddings".into(),
                ));
            }
        })
    }

    /// Embeds token ids into the hidden states that enter block 0.
    pub fn embed(&self, ids: &[u32]) -> Result<HiddenStates, ModelError> {
        // Tied to a packed LM head (SmolLM2 on the CPU): the rows straight into the states.
        // Through a tensor and back (made, reshaped and read back by burn), a client's one
        // token a step was an eighth of its decode loop's samples in a profile.
        if let (Embedding::Tied, Linear::Packed { weight, .. }) = (&self.embedding, &self.lm_head) {
            self.check_ids(ids)?;
            return HiddenStates::new(ids.len(), weight.cols(), packed_rows(weight, ids));
        }
        HiddenStates::from_tensor(self.embed_tensor(ids)?)
    }

    pub(crate) fn logits_last_tensor(&self, hidden: Tensor<3>) -> Result<Tensor<1>, ModelError> {
        let [_, n, d] = hidden.dims();
        let last = hidden.narrow(1, n - 1, 1);
        let normed = rms_norm(last, &self.norm, self.cfg.rms_norm_eps);
        Ok(self
            .lm_head
            .forward2(normed.reshape([1, d]))?
            .reshape([self.cfg.vocab_size]))
    }

    /// Logits of the last token of `hidden` (the output of the last block).
    pub fn logits_last(&self, hidden: &HiddenStates) -> Result<Vec<f32>, ModelError> {
        let mut logits = self.logits_last_many(&[hidden])?;
        Ok(logits.pop().expect("one logits row per input"))
    }

    /// [`logits_last`](Self::logits_last) of several sessions at once. On the CPU the LM head
    /// (the largest matrix a client holds: 28 M values for SmolLM2-135M) is read once for all of
    /// them, and each row is computed exactly as it is alone, so a session's logits do not
    /// depend on which others share the call.
    pub fn logits_last_many(&self, hidden: &[&HiddenStates]) -> Result<Vec<Vec<f32>>, ModelError> {
        if let Some((weight, x)) = self.host_rows(hidden)? {
            let vocab = weight.rows();
            let mut out = vec![0f32; hidden.len() * vocab];
            weight.matmul_each(&x, hidden.len(), &mut out)?;
            if hidden.len() == 1 {
                // One session (every CLI client): its row is the whole buffer, no copy.
                return Ok(vec![out]);
            }
            return Ok(out.chunks_exact(vocab).map(<[f32]>::to_vec).collect());
        }
        self.logits_last_tensors(hidden)
    }

    /// [`logits_last_many`](Self::logits_last_many), each session's logits handed to `each`
    /// (with the session's index) instead of returned: for callers that only pick a token from
    /// them. On the CPU the rows are computed into a buffer the head keeps between calls.
    pub fn logits_last_each(
        &self,
        hidden: &[&HiddenStates],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        if let Some((weight, x)) = self.host_rows(hidden)? {
            let vocab = weight.rows();
            let mut kept = self.scratch.try_lock();
            let mut fresh = Vec::new();
            // A second caller at the same time gets a buffer of its own.
            let out: &mut Vec<f32> = match kept.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fresh,
            };
            out.resize(hidden.len() * vocab, 0.0);
            weight.matmul_each(&x, hidden.len(), out)?;
            for (i, row) in out.chunks_exact(vocab).enumerate() {
                each(i, row);
            }
            return Ok(());
        }
        for (i, row) in self.logits_last_tensors(hidden)?.iter().enumerate() {
            each(i, row);
        }
        Ok(())
    }

    /// On the CPU with a packed LM head: the head's weight and the final-normed last row of
    /// every hidden state (`[n, hidden]`); `None` elsewhere. Refuses wrong shapes.
    fn host_rows<'h>(
        &'h self,
        hidden: &[&HiddenStates],
    ) -> Result<Option<(&'h PackedMatrix, Vec<f32>)>, ModelError> {
        let d = self.cfg.hidden_size;
        for h in hidden {
            if h.dim != d || h.n_tokens == 0 || h.data.len() != h.n_tokens * h.dim {
                return Err(ModelError::BadInput(format!(
                    "final hidden states have shape [{}, {}], expected [n >= 1, {d}]",
                    h.n_tokens, h.dim
                )));
            }
        }
        let (Some(norm), Linear::Packed { weight, .. }) = (&self.host_norm, &self.lm_head) else {
            return Ok(None);
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = vec![0f32; hidden.len() * d];
        for (h, row) in hidden.iter().zip(x.chunks_exact_mut(d)) {
            host::rms_norm_row(&h.data[(h.n_tokens - 1) * d..], norm, eps, row);
        }
        Ok(Some((weight, x)))
    }

    /// Each row's logits through burn's tensors (devices other than the CPU).
    fn logits_last_tensors(&self, hidden: &[&HiddenStates]) -> Result<Vec<Vec<f32>>, ModelError> {
        hidden
            .iter()
            .map(|h| {
                rayon::scope(|_| {
                    let t = self.logits_last_tensor(h.to_tensor(&self.device))?;
                    t.try_into_vec_as::<f32>()
                        .map_err(|e| ModelError::Backend(format!("{e:?}")))
                })
            })
            .collect()
    }
}
