//! The hyper-parameters of a Llama-family model, read from GGUF metadata, from a Hugging Face
//! `config.json`, or from a named random shape.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Llama 3 style frequency scaling of the rotary embedding ("rope_type": "llama3").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// Number of leading dimensions of each head that are rotated (usually all of them).
    pub rope_dim: usize,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors read from a GGUF `rope_freqs.weight` tensor (llama.cpp's way of
    /// storing Llama 3 scaling); applied instead of `rope_scaling` when present.
    #[serde(default)]
    pub rope_freq_factors: Option<Vec<f32>>,
    pub rms_norm_eps: f64,
    pub max_seq_len: usize,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Rejects shapes the forward pass cannot run, naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &'static str, why: String| Err(ModelError::InvalidConfig { field, why });
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2)
            || !self.rope_dim.is_multiple_of(2)
            || self.rope_dim > self.head_dim
        {
            return bad(
                "rope_dim",
                format!(
                    "rope_dim {} must be even and at most head_dim {} (even)",
                    self.rope_dim, self.head_dim
                ),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_norm_eps),
            );
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Parameters of one transformer block (norms included).
    pub fn block_params(&self) -> usize {
        let d = self.hidden_size;
        d * (self.q_dim() + 2 * self.kv_dim())
            + self.q_dim() * d
            + 3 * d * self.intermediate_size
            + 2 * d
    }

    /// Named shapes for `random:SHAPE` models.
    pub fn random_shape(name: &str) -> Option<LlamaConfig> {
        let base = |vocab, hidden, ffn, layers, heads, kv_heads, theta: f64| LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: ffn,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hidden / heads,
            rope_theta: theta,
            rope_dim: hidden / heads,
            rope_scaling: None,
            rope_freq_factors: None,
            rms_norm_eps: 1e-5,
            max_seq_len: 8192,
            tie_word_embeddings: true,
        };
        match name {
            "tiny" => Some(base(272, 64, 128, 6, 4, 2, 10000.0)),
            "smollm2-135m" => Some(base(49152, 576, 1536, 30, 9, 3, 100000.0)),
            "llama-3.2-1b" => Some(LlamaConfig {
                rope_scaling: Some(Llama3RopeScaling {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                ..base(128256, 2048, 8192, 16, 32, 8, 500000.0)
            }),
            "llama-3-8b" => Some(LlamaConfig {
                tie_word_embeddings: false,
                ..base(128256, 4096, 14336, 32, 32, 8, 500000.0)
            }),
            _ => None,
        }
    }

    pub const RANDOM_SHAPES: &'static [&'static str] =
        &["tiny", "smollm2-135m", "llama-3.2-1b", "llama-3-8b"];

    /// Reads a Hugging Face `config.json` (LlamaForCausalLM and compatible).
    pub fn from_hf_json(text: &str) -> Result<LlamaConfig, ModelError> {
        #[derive(Deserialize)]
        struct Hf {
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rope_theta: Option<f64>,
            rope_scaling: Option<serde_json::Value>,
            rms_norm_eps: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| ModelError::InvalidConfig {
            field: "config.json",
            why: e.to_string(),
        })?;
        let head_dim = hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let rope_scaling = match hf.rope_scaling {
            Some(v) if !v.is_null() => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                if kind != "llama3" {
                    return Err(ModelError::InvalidConfig {
                        field: "rope_scaling",
                        why: format!("unsupported rope scaling type {kind:?} (only \"llama3\")"),
                    });
                }
                let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
                Some(Llama3RopeScaling {
                    factor: num("factor").unwrap_or(8.0),
                    low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                    high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                    original_max_position_embeddings: num("original_max_position_embeddings")
                        .unwrap_or(8192.0)
                        as usize,
                })
            }
            _ => None,
        };
        let cfg = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            rope_theta: hf.rope_theta.unwrap_or(10000.0),
            rope_dim: head_dim,
            rope_scaling,
            rope_freq_factors: None,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            max_seq_len: hf.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_shapes_are_valid() {
        for name in LlamaConfig::RANDOM_SHAPES {
            LlamaConfig::random_shape(name).unwrap().validate().unwrap();
        }
        assert!(LlamaConfig::random_shape("nope").is_none());
    }

    #[test]
    fn smollm2_shape_has_the_reference_parameter_count() {
        let c = LlamaConfig::random_shape("smollm2-135m").unwrap();
        let total = c.n_layers * c.block_params() + c.vocab_size * c.hidden_size + c.hidden_size;
        assert_eq!(total, 134_515_008);
    }

    #[test]
    fn hf_config_parses_and_rejects_bad_heads() {
        let ok = r#"{"vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"rope_theta":10000.0,"rms_norm_eps":1e-5,
            "tie_word_embeddings":true,"rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c = LlamaConfig::from_hf_json(ok).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_scaling.unwrap().factor, 32.0);
        let bad = ok.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3");
        let err = LlamaConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(err.contains("n_kv_heads"), "{err}");
    }
}
