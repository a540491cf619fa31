//! Where the weights come from: a GGUF file, a Hugging Face folder of safetensors (sharded or
//! not), or a deterministic random generator. Every source answers for tensors by their GGUF
//! names (`blk.3.attn_q.weight`), returns them in Hugging Face layout, dequantized to f32 or, for
//! linear weights, packed in the quantized blocks the CPU kernels multiply directly
//! ([`WeightSource::load_packed`]), and reads only the tensors that are asked for, so that a node
//! hosting 10 of 30 blocks touches only those blocks' bytes.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::ModelError;
use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::packed::PackedMatrix;
use crate::rng::SplitMix64;

/// A tensor as f32 values, row-major, with its shape.
pub(crate) struct F32Tensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

pub(crate) trait WeightSource: Send + Sync {
    /// Loads one tensor by its GGUF name.
    fn load(&self, name: &str) -> Result<F32Tensor, ModelError>;
    fn has(&self, name: &str) -> bool;

    /// Loads a 2-D weight in the most compact form the CPU kernels multiply directly (its
    /// quantized blocks where the source has them), checking its shape.
    fn load_packed(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, ModelError> {
        let t = self.load(name)?;
        check_shape(name, &t.shape, rows, cols)?;
        PackedMatrix::from_f32(t.data, rows, cols)
    }
}

fn check_shape(name: &str, shape: &[usize], rows: usize, cols: usize) -> Result<(), ModelError> {
    if shape != [rows, cols] {
        return Err(ModelError::WrongShape {
            tensor: name.to_string(),
            got: shape.to_vec(),
            expected: vec![rows, cols],
        });
    }
    Ok(())
}

/// Tensors of a GGUF file. Q and K projection rows are un-permuted from llama.cpp's interleaved
/// rotary pairing to the Hugging Face one.
pub(crate) struct GgufWeights {
    pub file: Arc<GgufFile>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl WeightSource for GgufWeights {
    fn load(&self, name: &str) -> Result<F32Tensor, ModelError> {
        if self.file.tensor(name).is_none() {
            return Err(ModelError::MissingTensor(name.to_string()));
        }
        let (mut data, shape) = self.file.dequantize(name)?;
        if name.ends_with("attn_q.weight") {
            data = unpermute_rows(&data, &shape, self.n_heads)?;
        } else if name.ends_with("attn_k.weight") {
            data = unpermute_rows(&data, &shape, self.n_kv_heads)?;
        }
        Ok(F32Tensor { data, shape })
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn load_packed(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, ModelError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        check_shape(name, &info.shape(), rows, cols)?;
        let packed =
            PackedMatrix::from_ggml(info.ggml_type, self.file.tensor_bytes(info)?, rows, cols)
                .map_err(|e| ModelError::BadWeights(format!("{name}: {e}")))?;
        Ok(if name.ends_with("attn_q.weight") {
            packed.reorder_rows(&unpermuted_row_order(rows, self.n_heads)?)
        } else if name.ends_with("attn_k.weight") {
            packed.reorder_rows(&unpermuted_row_order(rows, self.n_kv_heads)?)
        } else {
            packed
        })
    }
}

/// Undoes the row permutation that GGUF converters apply to Q and K: within each head, GGUF row
/// `2i + j` holds Hugging Face row `j * half + i`.
pub(crate) fn unpermute_rows(
    data: &[f32],
    shape: &[usize],
    n_heads: usize,
) -> Result<Vec<f32>, ModelError> {
    let [rows, cols] = shape else {
        return Err(ModelError::BadWeights(format!(
            "Q/K projection has shape {shape:?}, expected 2 dimensions"
        )));
    };
    let cols = *cols;
    if data.len() != rows * cols {
        return Err(ModelError::BadWeights(format!(
            "Q/K projection of shape {shape:?} holds {} values",
            data.len()
        )));
    }
    Ok(unpermuted_row_order(*rows, n_heads)?
        .iter()
        .flat_map(|&src| data[src * cols..(src + 1) * cols].iter().copied())
        .collect())
}

/// For each Hugging Face row of a Q/K projection, the GGUF row that holds it.
pub(crate) fn unpermuted_row_order(rows: usize, n_heads: usize) -> Result<Vec<usize>, ModelError> {
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(ModelError::BadWeights(format!(
            "Q/K projection of {rows} rows cannot split into {n_heads} heads"
        )));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    Ok((0..rows)
        .map(|dst| {
            let (h, within) = (dst / head_dim, dst % head_dim);
            let (j, i) = (within / half, within % half);
            h * head_dim + 2 * i + j
        })
        .collect())
}

/// Maps a GGUF tensor name to its Hugging Face name.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, part) = rest.split_once('.')?;
    let hf_part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{idx}.{hf_part}"))
}

/// The safetensors files of a Hugging Face folder, memory-mapped.
pub(crate) struct SafetensorsWeights {
    shards: Vec<(PathBuf, Mmap)>,
    /// HF tensor name -> shard index.
    index: HashMap<String, usize>,
}

impl SafetensorsWeights {
    pub(crate) fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::BadWeights(format!("{}: {e}", index_path.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::BadWeights(format!("{}: no weight_map", index_path.display()))
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(ModelError::MissingFile(single));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the file is opened read-only; a concurrent truncation by another process
            // is outside what we can defend against, as for every mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::BadWeights(format!("{}: {e}", path.display())))?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            shards.push((path, mmap));
        }
        Ok(Self { shards, index })
    }
}

impl WeightSource for SafetensorsWeights {
    fn load(&self, name: &str) -> Result<F32Tensor, ModelError> {
        let hf = hf_name(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let &shard = self
            .index
            .get(&hf)
            .ok_or_else(|| ModelError::MissingTensor(hf.clone()))?;
        let (path, mmap) = &self.shards[shard];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| ModelError::BadWeights(format!("{}: {e}", path.display())))?;
        let view = st
            .tensor(&hf)
            .map_err(|e| ModelError::BadWeights(format!("{hf}: {e}")))?;
        use safetensors::Dtype;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ModelError::UnsupportedDtype {
                tensor: hf,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data = crate::safetensors_f32::to_f32(&view)
            .map_err(|why| ModelError::BadWeights(format!("{hf}: {why}")))?;
        Ok(F32Tensor {
            data,
            shape: view.shape().to_vec(),
        })
    }

    fn has(&self, name: &str) -> bool {
        hf_name(name).is_some_and(|hf| self.index.contains_key(&hf))
    }
}

/// Deterministic random weights: each tensor's values depend only on the seed and its name, so
/// a node hosting blocks 10-19 generates exactly the values a whole-model process does.
pub(crate) struct RandomWeights {
    pub cfg: LlamaConfig,
    pub seed: u64,
}

impl RandomWeights {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.cfg;
        let d = c.hidden_size;
        match name {
            "token_embd.weight" => return Some(vec![c.vocab_size, d]),
            "output.weight" if !c.tie_word_embeddings => return Some(vec![c.vocab_size, d]),
            "output_norm.weight" => return Some(vec![d]),
            _ => {}
        }
        let rest = name.strip_prefix("blk.")?;
        let (idx, part) = rest.split_once('.')?;
        if idx.parse::<usize>().ok()? >= c.n_layers {
            return None;
        }
        Some(match part {
            "attn_norm.weight" | "ffn_norm.weight" => vec![d],
            "attn_q.weight" => vec![c.q_dim(), d],
            "attn_k.weight" | "attn_v.weight" => vec![c.kv_dim(), d],
            "attn_output.weight" => vec![d, c.q_dim()],
            "ffn_gate.weight" | "ffn_up.weight" => vec![c.intermediate_size, d],
            "ffn_down.weight" => vec![d, c.intermediate_size],
            _ => return None,
        })
    }
}

impl WeightSource for RandomWeights {
    fn load(&self, name: &str) -> Result<F32Tensor, ModelError> {
        let shape = self
            .shape_of(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let n: usize = shape.iter().product();
        let mut key = blake3::Hasher::new();
        key.update(&self.seed.to_le_bytes());
        key.update(name.as_bytes());
        let mut rng = SplitMix64(u64::from_le_bytes(
            key.finalize().as_bytes()[..8].try_into().expect("8 bytes"),
        ));
        let data: Vec<f32> = if shape.len() == 1 {
            // Norm gains near 1, as in trained models.
            (0..n).map(|_| 1.0 + 0.1 * rng.uniform_pm1()).collect()
        } else {
            // Uniform with variance 1/fan_in keeps activations at unit scale through the blocks;
            // embeddings get unit variance so that the first norm sees typical inputs.
            let fan_in = shape[1] as f32;
            let scale = if name == "token_embd.weight" {
                3f32.sqrt()
            } else {
                (3.0 / fan_in).sqrt()
            };
            (0..n).map(|_| scale * rng.uniform_pm1()).collect()
        };
        Ok(F32Tensor { data, shape })
    }

    fn has(&self, name: &str) -> bool {
        self.shape_of(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_gguf_permutation() {
        // Build HF rows, apply the converter's permutation, and check we get them back.
        let (heads, hd, cols) = (3, 8, 2);
        let rows = heads * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + j * (hd / 2) + i;
                    let dst = h * hd + 2 * i + j;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, &[rows, cols], heads).unwrap(), hf);
        assert!(unpermute_rows(&gguf, &[rows, cols], 5).is_err());
        assert!(unpermute_rows(&gguf, &[rows * cols], 3).is_err());
    }

    #[test]
    fn hf_names_cover_every_block_tensor() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("blk.1.unknown.weight").is_none());
    }

    #[test]
    fn random_weights_depend_on_seed_and_name_only() {
        let cfg = LlamaConfig::random_shape("tiny").unwrap();
        let a = RandomWeights {
            cfg: cfg.clone(),
            seed: 1,
        };
        let b = RandomWeights {
            cfg: cfg.clone(),
            seed: 1,
        };
        let c = RandomWeights { cfg, seed: 2 };
        let name = "blk.2.attn_q.weight";
        assert_eq!(a.load(name).unwrap().data, b.load(name).unwrap().data);
        assert_ne!(a.load(name).unwrap().data, c.load(name).unwrap().data);
        assert_ne!(
            a.load(name).unwrap().data,
            a.load("blk.3.attn_q.weight").unwrap().data
        );
        assert!(matches!(
            a.load("blk.99.attn_q.weight"),
            Err(ModelError::MissingTensor(_))
        ));
    }
}
