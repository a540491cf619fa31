//! What a node computes, behind a small interface: a [`BlockRunner`] makes one [`SessionCache`]
//! per session, and the cache runs hidden states through the node's blocks. The real runner
//! wraps `sunswarm_models::LoadedBlocks`; tests use [`ShiftRunner`], whose output is known exactly,
//! so the session and forwarding logic is tested without loading a model.

use std::sync::Arc;

use sunswarm_models::{HiddenStates, KvCache, LoadedBlocks};

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
}

/// Runs a node's blocks.
pub trait BlockRunner: Send + Sync + 'static {
    fn hidden_size(&self) -> usize;
    /// Bytes of KV cache one session position takes on this node (every block, K and V), so
    /// the node can cap its cache memory.
    fn kv_bytes_per_token(&self) -> usize;
    /// A fresh, empty cache for one session.
    fn new_session(&self) -> Box<dyn SessionCache>;
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
}

/// The real runner: a model's block range loaded on a device.
pub struct ModelRunner {
    blocks: Arc<LoadedBlocks>,
    slowdown: f64,
}

impl ModelRunner {
    pub fn new(blocks: LoadedBlocks) -> Self {
        ModelRunner {
            blocks: Arc::new(blocks),
            slowdown: 1.0,
        }
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

    fn new_session(&self) -> Box<dyn SessionCache> {
        Box::new(ModelSession {
            cache: self.blocks.new_cache(),
            blocks: self.blocks.clone(),
            slowdown: self.slowdown,
        })
    }
}

impl SessionCache for ModelSession {
    fn len(&self) -> usize {
        self.cache.len()
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
