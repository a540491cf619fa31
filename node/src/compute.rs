//! What a node computes, behind a small interface: a [`BlockRunner`] makes one [`SessionCache`]
//! per session, and the cache runs hidden states through the node's blocks. The real runner
//! wraps `sunswarm_models::LoadedBlocks`; tests use [`ShiftRunner`], whose output is known exactly,
//! so the session and forwarding logic is tested without loading a model.

use std::sync::Arc;

use sunswarm_models::sampling::Draw;
use sunswarm_models::{BatchStep, Head, HiddenStates, KvCache, LoadedBlocks};

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    #[error("input has {got} values, expected {n_tokens} x {dim}")]
    Shape {
        n_tokens: usize,
        dim: usize,
        got: usize,
    },
    #[error(transparent)]
    Model(#[from] sunswarm_models::ModelError),
    #[error("the step's cache belongs to another runner")]
    Foreign,
    #[error(
        "a step takes {needs_ms:.1} ms on this node even alone; its deadline here is {deadline_ms:.1} ms"
    )]
    DeadlineMissed { needs_ms: f64, deadline_ms: f64 },
}

/// Runs a node's blocks.
pub trait BlockRunner: Send + Sync + 'static {
    fn hidden_size(&self) -> usize;
    /// Bytes of KV cache one session position takes on this node (every block, K and V), so
    /// the node can cap its cache memory.
    fn kv_bytes_per_token(&self) -> usize;
    /// A fresh, empty cache for one session.
    fn new_session(&self) -> Box<dyn SessionCache>;
    /// Bytes of scratch memory one pass of `tokens` new tokens may take when each attends to up
    /// to `context` positions (attention scores, activations): counted in `--max-kv-mib` beside
    /// the caches. None by default (a runner with no real compute).
    fn scratch_bytes(&self, _tokens: usize, _context: usize) -> usize {
        0
    }

    /// Applies the final norm and the LM head to each of `rows` (last rows of sessions' outputs)
    /// in one product, and picks each one's token with its draw. None when this runner holds no
    /// LM head (its blocks are not the model's last).
    fn draw_tokens(
        &self,
        _rows: &[&[f32]],
        _draws: &[Draw],
    ) -> Option<Result<Vec<u32>, ComputeError>> {
        None
    }

    /// Runs the steps of several sessions in one pass (continuous batching); a step's result
    /// must not depend on the others. By default, one after another, and a stepwise step like
    /// any other (right for runners whose multi-token steps equal their one-token steps).
    fn forward_batch(&self, steps: &mut [BatchItem<'_>]) -> Vec<Result<Vec<f32>, ComputeError>> {
        steps
            .iter_mut()
            .map(|s| s.cache.forward(s.n_tokens, std::mem::take(&mut s.rows)))
            .collect()
    }
}

/// One step of a batched pass.
pub struct BatchItem<'a> {
    pub cache: &'a mut (dyn SessionCache + 'static),
    pub n_tokens: usize,
    /// The input rows, `[n_tokens, hidden]`.
    pub rows: Vec<f32>,
    /// The rows are consecutive decode steps replayed at once, to be computed exactly as one
    /// token at a time ([`sunswarm_models::BatchStep::stepwise`]).
    pub stepwise: bool,
}

/// One session's state on one node (its KV cache).
pub trait SessionCache: Send {
    /// Positions the cache holds.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Runs `n_tokens` rows of hidden states (row-major `[n_tokens, dim]`) through the blocks,
    /// appending to the cache; returns the output rows.
    fn forward(&mut self, n_tokens: usize, data: Vec<f32>) -> Result<Vec<f32>, ComputeError>;
    /// Keeps the first `len` positions and forgets the rest (nothing changes at or past
    /// [`Self::len`]).
    fn truncate(&mut self, len: usize);
    /// For a runner's batched pass to reach its own cache type.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// The real runner: a model's block range loaded on a device, and the LM head when the range
/// ends with the model's last block.
pub struct ModelRunner {
    blocks: Arc<LoadedBlocks>,
    head: Option<Head>,
    slowdown: f64,
}

impl ModelRunner {
    pub fn new(blocks: LoadedBlocks) -> Self {
        ModelRunner {
            blocks: Arc::new(blocks),
            head: None,
            slowdown: 1.0,
        }
    }

    /// Loads `range` of `model`, with the final norm and LM head when the range ends with the
    /// model's last block, so that this node can pick its sessions' tokens.
    pub fn load(
        model: &sunswarm_models::Model,
        range: std::ops::Range<usize>,
        device: &sunswarm_models::Device,
    ) -> Result<Self, sunswarm_models::ModelError> {
        let last = range.end == model.config().n_layers;
        let blocks = model.load_blocks(range, device)?;
        let head = if last {
            Some(model.load_output_head(device)?)
        } else {
            None
        };
        Ok(ModelRunner {
            head,
            ..ModelRunner::new(blocks)
        })
    }

    /// The blocks it runs.
    pub fn blocks(&self) -> &LoadedBlocks {
        &self.blocks
    }

    /// Whether it holds the LM head.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Makes every forward take `factor` times its compute time, holding the compute thread
    /// busy the rest of it as a slower device would (`--slowdown`, for heterogeneous testnets).
    pub fn with_slowdown(mut self, factor: f64) -> Self {
        self.slowdown = factor;
        self
    }
}

/// Stretches a forward that took `took` to `factor` times that, on the calling thread.
pub fn stretch(took: std::time::Duration, factor: f64) {
    if factor > 1.0 && factor.is_finite() {
        std::thread::sleep(took.mul_f64(factor - 1.0));
    }
}

struct ModelSession {
    blocks: Arc<LoadedBlocks>,
    cache: KvCache,
    slowdown: f64,
}

impl BlockRunner for ModelRunner {
    fn hidden_size(&self) -> usize {
        self.blocks.config().hidden_size
    }

    fn kv_bytes_per_token(&self) -> usize {
        let c = self.blocks.config();
        let blocks = self.blocks.range().len();
        blocks * 2 * c.n_kv_heads * c.head_dim * size_of::<f32>()
    }

    fn scratch_bytes(&self, tokens: usize, context: usize) -> usize {
        // An upper bound: every query row of the pass scores every position of every head at
        // once (one block at a time, the blocks reuse it), beside the pass's activations (the
        // residual, norm, attention output, and the MLP's gate, up and product rows) in f32.
        let c = self.blocks.config();
        let scores = tokens
            .saturating_mul(context)
            .saturating_mul(c.n_heads)
            .saturating_mul(size_of::<f32>());
        let activations = tokens
            .saturating_mul(4 * c.hidden_size + 3 * c.intermediate_size)
            .saturating_mul(size_of::<f32>());
        scores.saturating_add(activations)
    }

    fn new_session(&self) -> Box<dyn SessionCache> {
        Box::new(ModelSession {
            cache: self.blocks.new_cache(),
            blocks: self.blocks.clone(),
            slowdown: self.slowdown,
        })
    }

    fn draw_tokens(
        &self,
        rows: &[&[f32]],
        draws: &[Draw],
    ) -> Option<Result<Vec<u32>, ComputeError>> {
        let head = self.head.as_ref()?;
        let dim = self.blocks.config().hidden_size;
        let picked = (|| {
            if draws.len() != rows.len() {
                return Err(ComputeError::Model(sunswarm_models::ModelError::BadInput(
                    format!(
                        "{} rows to pick tokens for, with {} draws",
                        rows.len(),
                        draws.len()
                    ),
                )));
            }
            let hidden = rows
                .iter()
                .map(|r| HiddenStates::new(1, dim, r.to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&HiddenStates> = hidden.iter().collect();
            let mut picked = vec![0; refs.len()];
            head.logits_last_each(&refs, |i, logits| picked[i] = draws[i].pick(logits))?;
            Ok(picked)
        })();
        Some(picked)
    }

    fn forward_batch(&self, steps: &mut [BatchItem<'_>]) -> Vec<Result<Vec<f32>, ComputeError>> {
        let dim = self.blocks.config().hidden_size;
        let t = std::time::Instant::now();
        // The rows as hidden states; a step that is not this runner's session or not of the
        // right shape fails alone.
        let mut results: Vec<Option<Result<Vec<f32>, ComputeError>>> =
            (0..steps.len()).map(|_| None).collect();
        let mut inputs = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter_mut().enumerate() {
            match HiddenStates::new(step.n_tokens, dim, std::mem::take(&mut step.rows)) {
                Ok(h) => inputs.push(h),
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        let mut batch = Vec::with_capacity(inputs.len());
        let mut ran = Vec::with_capacity(inputs.len());
        let mut next_input = inputs.iter();
        for (i, step) in steps.iter_mut().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let Some(input) = next_input.next() else {
                break;
            };
            match step.cache.as_any_mut().downcast_mut::<ModelSession>() {
                Some(session) => {
                    batch.push(BatchStep {
                        cache: &mut session.cache,
                        input,
                        stepwise: step.stepwise,
                    });
                    ran.push(i);
                }
                None => results[i] = Some(Err(ComputeError::Foreign)),
            }
        }
        let outs = self.blocks.forward_batch(&mut batch);
        for (i, out) in ran.into_iter().zip(outs) {
            results[i] = Some(out.map(|h| h.data).map_err(ComputeError::from));
        }
        stretch(t.elapsed(), self.slowdown);
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ComputeError::Foreign)))
            .collect()
    }
}

impl SessionCache for ModelSession {
    fn len(&self) -> usize {
        self.cache.len()
    }

    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn forward(&mut self, n_tokens: usize, data: Vec<f32>) -> Result<Vec<f32>, ComputeError> {
        let dim = self.blocks.config().hidden_size;
        let input = HiddenStates::new(n_tokens, dim, data)?;
        let t = std::time::Instant::now();
        let out = self.blocks.forward(&mut self.cache, &input)?.data;
        stretch(t.elapsed(), self.slowdown);
        Ok(out)
    }
}

/// Test runner: adds `shift + 0.5 * position` to every value, so a route's output tells exactly
/// which hops ran, in which order of positions, with which cache length.
pub struct ShiftRunner {
    pub dim: usize,
    pub shift: f32,
}

struct ShiftSession {
    dim: usize,
    shift: f32,
    len: usize,
}

impl BlockRunner for ShiftRunner {
    fn hidden_size(&self) -> usize {
        self.dim
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.dim * size_of::<f32>()
    }

    /// The row itself is the logits (a test's "head" whose answer is known).
    fn draw_tokens(
        &self,
        rows: &[&[f32]],
        draws: &[Draw],
    ) -> Option<Result<Vec<u32>, ComputeError>> {
        Some(Ok(rows.iter().zip(draws).map(|(r, d)| d.pick(r)).collect()))
    }

    fn new_session(&self) -> Box<dyn SessionCache> {
        Box::new(ShiftSession {
            dim: self.dim,
            shift: self.shift,
            len: 0,
        })
    }
}

impl SessionCache for ShiftSession {
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn forward(&mut self, n_tokens: usize, mut data: Vec<f32>) -> Result<Vec<f32>, ComputeError> {
        if data.len() != n_tokens * self.dim {
            return Err(ComputeError::Shape {
                n_tokens,
                dim: self.dim,
                got: data.len(),
            });
        }
        for (i, row) in data.chunks_mut(self.dim).enumerate() {
            let pos = (self.len + i) as f32;
            row.iter_mut().for_each(|v| *v += self.shift + 0.5 * pos);
        }
        self.len += n_tokens;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_runner_follows_positions() {
        let r = ShiftRunner { dim: 2, shift: 1.0 };
        let mut s = r.new_session();
        assert_eq!(
            s.forward(2, vec![0.0; 4]).unwrap(),
            vec![1.0, 1.0, 1.5, 1.5]
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.forward(1, vec![0.0; 2]).unwrap(), vec![2.0, 2.0]);
        assert!(matches!(
            s.forward(1, vec![0.0; 3]),
            Err(ComputeError::Shape { .. })
        ));
    }
}
