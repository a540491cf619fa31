//! Rotary position embeddings in the Hugging Face "rotate half" pairing (dimension i with
//! i + rope_dim/2), with the Llama 3 frequency scaling. GGUF files store Q and K rows permuted for
//! llama.cpp's interleaved pairing; the loader un-permutes them so that this one pairing serves
//! every weight format.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::LlamaConfig;

pub(crate) struct RopeTables {
    inv_freq: Vec<f64>,
    rope_dim: usize,
    head_dim: usize,
}

impl RopeTables {
    pub(crate) fn new(cfg: &LlamaConfig) -> Self {
        let half = cfg.rope_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.rope_dim as f64))
            .collect();
        if let Some(factors) = cfg.rope_freq_factors.as_ref().filter(|f| f.len() == half) {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= *d as f64;
            }
        } else if let Some(s) = &cfg.rope_scaling {
            let orig = s.original_max_position_embeddings as f64;
            let low_wavelen = orig / s.low_freq_factor;
            let high_wavelen = orig / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / s.factor
                } else {
                    let smooth = (orig / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * *f / s.factor + smooth * *f
                };
            }
        }
        Self {
            inv_freq,
            rope_dim: cfg.rope_dim,
            head_dim: cfg.head_dim,
        }
    }

    /// cos and sin for positions `start..start+n`, shaped `[1, 1, n, head_dim]` (ones and zeros on
    /// the dimensions past rope_dim, so they pass through unrotated).
    pub(crate) fn tables(&self, start: usize, n: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let half = self.rope_dim / 2;
        let mut cos = Vec::with_capacity(n * self.head_dim);
        let mut sin = Vec::with_capacity(n * self.head_dim);
        for p in start..start + n {
            // Dimension i and i + rope_dim/2 share an angle.
            let (c, s) = self.angles(p);
            for _ in 0..2 {
                cos.extend_from_slice(&c);
                sin.extend_from_slice(&s);
            }
            for _ in 2 * half..self.head_dim {
                cos.push(1.0);
                sin.push(0.0);
            }
        }
        let shape = [1, 1, n, self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// cos and sin of each rotated pair's angle at position `pos` (`rope_dim / 2` each), computed
    /// in f64: the one source of the angles for [`tables`](Self::tables) and [`rotate`](Self::rotate).
    pub(crate) fn angles(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|f| {
                let a = pos as f64 * f;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip()
    }

    /// [`apply`](Self::apply) to one head's values in place, with [`angles`](Self::angles).
    pub(crate) fn rotate(&self, head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.rope_dim / 2;
        let (x1, x2) = head[..self.rope_dim].split_at_mut(half);
        for (((a, b), &c), &s) in x1.iter_mut().zip(x2).zip(cos).zip(sin) {
            let (lo, hi) = (*a, *b);
            *a = lo * c + -hi * s;
            *b = hi * c + lo * s;
        }
    }

    /// x * cos + rotate_half(x) * sin, on `[1, heads, n, head_dim]`.
    pub(crate) fn apply(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, n, hd] = x.dims();
        let half = self.rope_dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let mut parts = vec![x2.neg(), x1];
        if self.rope_dim < hd {
            parts.push(Tensor::zeros([b, h, n, hd - self.rope_dim], &x.device()));
        }
        let rotated = Tensor::cat(parts, 3);
        x.mul(cos.clone()).add(rotated.mul(sin.clone()))
    }
}
