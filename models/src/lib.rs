//! Llama-family models in burn, whole or by block range.
//!
//! A swarm peer hosts a contiguous range of transformer blocks and the client holds the token
//! embedding, the final norm and the LM head (as in Petals). This crate provides exactly those
//! pieces: [`Model::open`] reads a model's config and weight index without loading weights,
//! [`Model::load_blocks`] loads blocks `a..b` only, [`Model::load_head`] the client's part, and
//! [`LoadedBlocks::forward`] runs hidden states through the blocks with one [`KvCache`] per session.
//!
//! Weights come from GGUF files, Hugging Face safetensors folders, or a deterministic random
//! generator (`random:SHAPE`); see [`ModelSource`]. On the CPU, linear weights stay in their
//! Q4_0/Q4_1/Q8_0 blocks and our own kernels multiply them (`packed`); other types, and other
//! devices, get f32. Activations are always f32.

pub mod alias;
mod awake;
pub mod backend;
pub mod chat;
pub mod config;
pub mod fetch;
pub mod ggml;
pub mod gguf;
pub mod llama;
pub mod model;
pub(crate) mod packed;
pub mod quant;
pub mod rng;
pub mod rope;
pub(crate) mod safetensors_f32;
pub mod sampling;
pub mod source;
pub mod tokenizer;
pub(crate) mod weights;

use std::path::{Path, PathBuf};

pub use backend::{BackendKind, device};
pub use burn::tensor::Device;
pub use config::LlamaConfig;
pub use llama::{BatchStep, Head, HiddenStates, KvCache, LoadedBlocks};
pub use model::{Model, ModelId};
pub use packed::{int8_activations, int8_supported, set_int8_activations};
pub use source::ModelSource;
pub use tokenizer::{ChatMessage, TextTokenizer};

/// Everything that can go wrong while finding, loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file not found: {0}")]
    MissingFile(PathBuf),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("invalid model config: {field}: {why}")]
    InvalidConfig { field: &'static str, why: String },
    #[error("tensor {0} is missing from the model's weights")]
    MissingTensor(String),
    #[error("tensor {tensor} has shape {got:?}, expected {expected:?}")]
    WrongShape {
        tensor: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor {tensor} has unsupported type {dtype}")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("bad weights: {0}")]
    BadWeights(String),
    #[error("block range {start}..{end} is not within the model's {n_layers} blocks")]
    BlocksOutsideModel {
        start: usize,
        end: usize,
        n_layers: usize,
    },
    #[error("unknown model {0:?}: give an alias ({aliases}), a .gguf file, a Hugging Face folder, hf:OWNER/REPO, or random:SHAPE ({shapes})", aliases = source::ALIAS_NAMES.join(", "), shapes = config::LlamaConfig::RANDOM_SHAPES.join(", "))]
    UnknownModel(String),
    #[error("download of {what} failed: {why}")]
    Download { what: String, why: String },
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error("backend {backend} is not available: {why}")]
    BackendUnavailable { backend: String, why: String },
    #[error("backend error: {0}")]
    Backend(String),
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("context is full: {needed} positions needed, the model holds {max}")]
    ContextFull { max: usize, needed: usize },
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile(path.to_path_buf())
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
