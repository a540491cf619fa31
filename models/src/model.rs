//! An opened model: its config, its weight source and its identity, with weights loaded on
//! demand by block range (for nodes) or as the head (for clients).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::ModelError;
use crate::config::LlamaConfig;
use crate::gguf::{GgufFile, GgufValue};
use crate::llama::{BlockWeights, Embedding, Head, Linear, LoadedBlocks};
use crate::packed::PackedMatrix;
use crate::source::{self, ModelSource};
use crate::tokenizer::TextTokenizer;
use crate::weights::{F32Tensor, GgufWeights, RandomWeights, SafetensorsWeights, WeightSource};

/// blake3 of a model's config and weights: peers whose ids differ never share a route.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ModelId(pub [u8; 32]);

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::fetch::hex(&self.0))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", &crate::fetch::hex(&self.0)[..16])
    }
}

impl FromStr for ModelId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::BadInput(format!("model id {s:?} is not 64 hex digits"));
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(ModelId(out))
    }
}

enum Files {
    /// The file, parsed once: its metadata also holds the tokenizer (parsing it again was a
    /// quarter of a client's start).
    Gguf(Arc<GgufFile>),
    HfDir(PathBuf),
    Random,
}

/// A model whose config and weight index are read but whose weights are not loaded.
pub struct Model {
    source: ModelSource,
    files: Files,
    cfg: Arc<LlamaConfig>,
    weights: Arc<dyn WeightSource>,
    id: ModelId,
}

impl Model {
    /// Resolves the source (downloading an alias on first use) and reads its config.
    pub fn open(src: &ModelSource) -> Result<Model, ModelError> {
        match src {
            ModelSource::Alias(alias) => {
                let path = source::fetch_alias(alias)?;
                Self::open_gguf(src.clone(), &path)
            }
            ModelSource::GgufFile(path) => Self::open_gguf(src.clone(), path),
            ModelSource::HfDir(dir) => Self::open_hf_dir(src.clone(), dir),
            ModelSource::HfHub { repo, revision } => {
                let dir = source::fetch_hf_repo(repo, revision.as_deref())?;
                Self::open_hf_dir(src.clone(), &dir)
            }
            ModelSource::Random { shape, seed } => {
                let cfg = LlamaConfig::random_shape(shape)
                    .ok_or_else(|| ModelError::UnknownModel(format!("random:{shape}")))?;
                let mut h = blake3::Hasher::new();
                h.update(b"sunswarm-random-model/1");
                h.update(&serde_json::to_vec(&cfg).expect("config serializes"));
                h.update(&seed.to_le_bytes());
                let id = ModelId(*h.finalize().as_bytes());
                let weights = Arc::new(RandomWeights {
                    cfg: cfg.clone(),
                    seed: *seed,
                });
                Ok(Model {
                    source: src.clone(),
                    files: Files::Random,
                    cfg: Arc::new(cfg),
                    weights,
                    id,
                })
            }
        }
    }

    fn open_gguf(src: ModelSource, path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open(path)?;
        let mut cfg = config_from_gguf(&file)?;
        if let Some(info) = file.tensor("rope_freqs.weight") {
            let _ = info;
            let (factors, _) = file.dequantize("rope_freqs.weight")?;
            cfg.rope_freq_factors = Some(factors);
        }
        cfg.validate()?;
        let id = model_id_of(&cfg, &[path.to_path_buf()], &id_records())?;
        let file = Arc::new(file);
        let weights = Arc::new(GgufWeights {
            file: file.clone(),
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
        });
        Ok(Model {
            source: src,
            files: Files::Gguf(file),
            cfg: Arc::new(cfg),
            weights,
            id,
        })
    }

    fn open_hf_dir(src: ModelSource, dir: &Path) -> Result<Model, ModelError> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let cfg = LlamaConfig::from_hf_json(&text)?;
        let weights = SafetensorsWeights::open(dir)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        let id = model_id_of(&cfg, &files, &id_records())?;
        Ok(Model {
            source: src,
            files: Files::HfDir(dir.to_path_buf()),
            cfg: Arc::new(cfg),
            weights: Arc::new(weights),
            id,
        })
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn model_id(&self) -> ModelId {
        self.id
    }

    pub fn tokenizer(&self) -> Result<TextTokenizer, ModelError> {
        Ok(match &self.files {
            Files::Gguf(file) => TextTokenizer::from_gguf(file)?,
            Files::HfDir(dir) => TextTokenizer::from_hf_dir(dir)?,
            Files::Random => {
                let bytes = crate::gguf::gguf_bytes(
                    &byte_level_tokenizer_metadata(self.cfg.vocab_size),
                    &[],
                )?;
                TextTokenizer::from_gguf(&GgufFile::from_bytes(bytes)?)?
            }
        })
    }

    fn tensor(&self, name: &str, expected: &[usize]) -> Result<F32Tensor, ModelError> {
        let t = self.weights.load(name)?;
        if t.shape != expected {
            return Err(ModelError::WrongShape {
                tensor: name.to_string(),
                got: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    fn tensor2(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Tensor<2>, ModelError> {
        let t = self.tensor(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [rows, cols]),
            device,
        ))
    }

    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<PackedMatrix, ModelError> {
        self.weights.load_packed(name, rows, cols)
    }

    fn tensor1(&self, name: &str, len: usize, device: &Device) -> Result<Tensor<1>, ModelError> {
        let t = self.tensor(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(t.data, [len]), device))
    }

    /// One tensor by its GGUF name, as f32 in Hugging Face layout, with its shape (for tools and
    /// tests that convert or compare weights).
    pub fn load_tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let t = self.weights.load(name)?;
        Ok((t.data, t.shape))
    }

    /// Loads blocks `range` (half-open) and nothing else.
    pub fn load_blocks(
        &self,
        range: Range<usize>,
        device: &Device,
    ) -> Result<LoadedBlocks, ModelError> {
        let c = &*self.cfg;
        if range.start >= range.end || range.end > c.n_layers {
            return Err(ModelError::BlocksOutsideModel {
                start: range.start,
                end: range.end,
                n_layers: c.n_layers,
            });
        }
        let d = c.hidden_size;
        let mut blocks = Vec::with_capacity(range.len());
        for i in range.clone() {
            let _span = tracing::debug_span!("load_block", index = i).entered();
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            let qkv = PackedMatrix::concat_rows(vec![
                self.packed(&name("attn_q"), c.q_dim(), d)?,
                self.packed(&name("attn_k"), c.kv_dim(), d)?,
                self.packed(&name("attn_v"), c.kv_dim(), d)?,
            ])?;
            let gate_up = PackedMatrix::concat_rows(vec![
                self.packed(&name("ffn_gate"), c.intermediate_size, d)?,
                self.packed(&name("ffn_up"), c.intermediate_size, d)?,
            ])?;
            blocks.push(BlockWeights {
                attn_norm: self.tensor1(&name("attn_norm"), d, device)?,
                wqkv: Linear::new(qkv, device),
                wo: Linear::new(self.packed(&name("attn_output"), d, c.q_dim())?, device),
                ffn_norm: self.tensor1(&name("ffn_norm"), d, device)?,
                w_gate_up: Linear::new(gate_up, device),
                w_down: Linear::new(
                    self.packed(&name("ffn_down"), d, c.intermediate_size)?,
                    device,
                ),
            });
        }
        Ok(LoadedBlocks::new(
            self.cfg.clone(),
            range,
            blocks,
            device.clone(),
        ))
    }

    /// Loads the client's part: token embedding, final norm and LM head (tied or not).
    pub fn load_head(&self, device: &Device) -> Result<Head, ModelError> {
        self.head_with(true, device)
    }

    /// Loads the final norm and the LM head alone, for the last hop of a route to pick its
    /// sessions' tokens: the embeddings of an untied model stay unloaded.
    pub fn load_output_head(&self, device: &Device) -> Result<Head, ModelError> {
        self.head_with(false, device)
    }

    fn head_with(&self, embeddings: bool, device: &Device) -> Result<Head, ModelError> {
        let c = &*self.cfg;
        let norm = self.tensor1("output_norm.weight", c.hidden_size, device)?;
        // The LM head runs every token and has no kernel of its own for K-quants and the like:
        // widened once here, it costs memory on the client instead of time per token.
        let (embedding, lm_head) = if self.weights.has("output.weight") {
            let head = self.head_weight("output.weight", device)?;
            let embedding = if embeddings {
                Embedding::Table(Box::new(self.tensor2(
                    "token_embd.weight",
                    c.vocab_size,
                    c.hidden_size,
                    device,
                )?))
            } else {
                Embedding::NotLoaded
            };
            (embedding, Linear::new(head, device))
        } else {
            let table = self.head_weight("token_embd.weight", device)?;
            (Embedding::Tied, Linear::new(table, device))
        };
        Ok(Head::new(
            self.cfg.clone(),
            embedding,
            norm,
            lm_head,
            device.clone(),
        ))
    }
}

impl Model {
    /// The LM head's weight `name`, as the products will use it. With 8-bit activations on the
    /// CPU its tiles come from a file in the cache folder (`tiles/`, named after the model id)
    /// that every process of this machine maps: each client reads the whole head every token,
    /// and eight clients with copies of their own read eight times the bytes
    /// ([`crate::packed::mapped`]).
    fn head_weight(&self, name: &str, device: &Device) -> Result<PackedMatrix, ModelError> {
        let c = &*self.cfg;
        let load = || self.packed(name, c.vocab_size, c.hidden_size)?.widen_raw();
        if *device != Device::flex()
            || !crate::packed::int8_activations()
            || matches!(self.files, Files::Random)
        {
            return load();
        }
        let path = crate::fetch::cache_dir()
            .join("tiles")
            .join(format!("{}-{name}", self.id));
        crate::packed::mapped::shared(&path, c.vocab_size, c.hidden_size, || {
            Ok(load()?.for_products())
        })
    }
}

/// Where model-id records are kept: `model-ids` in the cache folder, so that nothing is
/// written beside a user's own model files.
fn id_records() -> PathBuf {
    crate::fetch::cache_dir().join("model-ids")
}

/// The model id of `files` under `cfg`: from its record in `records` (named after the first
/// file's full path) while the config and every file's size and mtime are those recorded,
/// else hashed and recorded. Every node and client start hashed the whole model: 0.1 s of a
/// SmolLM2-135M client's 0.2 s start, about a second for a 1 GB file. A file changed in place
/// changes its mtime, and is hashed again; a record that cannot be written (a read-only cache)
/// only costs the hash next time. As with git's index, a record written within
/// [`SETTLED`] of a file's mtime is not trusted: a file rewritten at the same size within the
/// filesystem clock's tick would keep its mtime.
fn model_id_of(
    cfg: &LlamaConfig,
    files: &[PathBuf],
    records: &Path,
) -> Result<ModelId, ModelError> {
    let (stamp, newest) = files_stamp(cfg, files).unzip();
    let record = files.first().map(|f| {
        let full = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        let key = blake3::hash(full.as_os_str().as_encoded_bytes()).to_hex();
        records.join(&key.as_str()[..32])
    });
    let settled = |record: &Path| {
        let written = std::fs::metadata(record).and_then(|m| m.modified());
        matches!((written, newest), (Ok(w), Some(n)) if w.duration_since(n).is_ok_and(|d| d >= SETTLED))
    };
    if let (Some(stamp), Some(record)) = (&stamp, &record)
        && settled(record)
        && let Ok(text) = std::fs::read_to_string(record)
        && let Some((recorded, id)) = text.trim_end().rsplit_once(' ')
        && recorded == stamp
        && let Ok(id) = id.parse::<ModelId>()
    {
        return Ok(id);
    }
    let id = hash_files(cfg, files)?;
    if let (Some(stamp), Some(record)) = (stamp, record) {
        // Written aside and renamed, so that processes starting together never read half a
        // record; one not written only costs the hash next time.
        let _ = crate::fetch::write_aside(&record, &[format!("{stamp} {id}\n").as_bytes()]);
    }
    Ok(id)
}

/// How long after the files' last change a model-id record must have been written to be read.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// What the model id depends on besides the files' bytes, and each file's size and mtime, with
/// the newest mtime; None when a file's metadata cannot be read (the id is then hashed every
/// time).
fn files_stamp(cfg: &LlamaConfig, files: &[PathBuf]) -> Option<(String, std::time::SystemTime)> {
    let cfg_json = serde_json::to_vec(cfg).ok()?;
    let mut stamp = format!("v1 {}", blake3::hash(&cfg_json).to_hex());
    let mut newest = std::time::UNIX_EPOCH;
    for path in files {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?;
        let mtime = modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        stamp.push_str(&format!(" {}:{mtime}", meta.len()));
        newest = newest.max(modified);
    }
    Some((stamp, newest))
}

fn hash_files(cfg: &LlamaConfig, files: &[PathBuf]) -> Result<ModelId, ModelError> {
    // Read through the page cache rather than the mmap so that hashing does not count towards
    // the resident memory of a node that holds only some blocks.
    let mut h = blake3::Hasher::new();
    h.update(b"sunswarm-model/1");
    h.update(&serde_json::to_vec(cfg).expect("config serializes"));
    for path in files {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        h.update_reader(&mut f)
            .map_err(|e| ModelError::io(path, e))?;
    }
    Ok(ModelId(*h.finalize().as_bytes()))
}

fn config_from_gguf(f: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = f
        .get_str("general.architecture")
        .unwrap_or("llama")
        .to_string();
    if arch != "llama" {
        return Err(ModelError::InvalidConfig {
            field: "general.architecture",
            why: format!("{arch:?} is not supported (only llama)"),
        });
    }
    let need = |key: &'static str| {
        f.get_u64(&format!("llama.{key}"))
            .map(|v| v as usize)
            .ok_or(ModelError::InvalidConfig {
                field: key,
                why: "missing from the GGUF metadata".into(),
            })
    };
    let hidden_size = need("embedding_length")?;
    let n_heads = need("attention.head_count")?;
    let head_dim = f
        .get_u64("llama.attention.key_length")
        .map(|v| v as usize)
        .unwrap_or(hidden_size / n_heads.max(1));
    let vocab_size = match f.get_u64("llama.vocab_size") {
        Some(v) => v as usize,
        None => match f.tensor("token_embd.weight") {
            Some(t) => t.shape()[0],
            None => return Err(ModelError::MissingTensor("token_embd.weight".into())),
        },
    };
    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")?,
        n_layers: need("block_count")?,
        n_heads,
        n_kv_heads: f
            .get_u64("llama.attention.head_count_kv")
            .map(|v| v as usize)
            .unwrap_or(n_heads),
        head_dim,
        rope_theta: f.get_f64("llama.rope.freq_base").unwrap_or(10000.0),
        rope_dim: f
            .get_u64("llama.rope.dimension_count")
            .map(|v| v as usize)
            .unwrap_or(head_dim),
        rope_scaling: None,
        rope_freq_factors: None,
        rms_norm_eps: f
            .get_f64("llama.attention.layer_norm_rms_epsilon")
            .unwrap_or(1e-5),
        max_seq_len: f
            .get_u64("llama.context_length")
            .map(|v| v as usize)
            .unwrap_or(4096),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
    })
}

/// GPT-2 style byte-to-character table: each byte becomes one printable character.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32)
        .chain('¡' as u32..='¬' as u32)
        .chain('®' as u32..='ÿ' as u32)
        .collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if let Some(pos) = printable.iter().position(|&c| c == b) {
            chars[b as usize] = char::from_u32(b).expect("valid");
            printable.remove(pos);
        } else {
            chars[b as usize] = char::from_u32(256 + extra).expect("valid");
            extra += 1;
        }
    }
    chars
}

/// Tokenizer metadata of random models: ChatML control tokens, the 256 bytes, no merges, then
/// filler tokens up to the vocabulary size.
pub fn byte_level_tokenizer_metadata(vocab_size: usize) -> Vec<(String, GgufValue)> {
    const CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut tokens: Vec<String> = CONTROL.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3i32; CONTROL.len()];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    while tokens.len() < vocab_size {
        tokens.push(format!("<x{}>", tokens.len()));
        types.push(1);
    }
    tokens.truncate(vocab_size);
    types.truncate(vocab_size);
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let s = |v: &str| GgufValue::String(v.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(false),
        ),
        ("tokenizer.chat_template".into(), s(template)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_id_round_trips_through_hex() {
        let id = ModelId([0xab; 32]);
        assert_eq!(id.to_string().parse::<ModelId>().unwrap(), id);
        assert!("xyz".parse::<ModelId>().is_err());
    }

    #[test]
    fn a_model_id_is_recorded_and_read_back_until_a_file_changes() {
        let dir = std::env::temp_dir().join(format!("sunswarm-model-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weights.bin");
        let write_long_ago = |bytes: &[u8]| {
            std::fs::write(&file, bytes).unwrap();
            let ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
            let f = std::fs::File::options().write(true).open(&file).unwrap();
            f.set_modified(ago).unwrap();
        };
        write_long_ago(b"some weights");
        let files = [file.clone()];
        let cfg = LlamaConfig::random_shape("tiny").unwrap();
        let records = dir.join("records");
        let model_id_of = |cfg: &LlamaConfig, files: &[PathBuf]| model_id_of(cfg, files, &records);
        let hashed = hash_files(&cfg, &files).unwrap();
        assert_eq!(model_id_of(&cfg, &files).unwrap(), hashed);
        let written: Vec<_> = std::fs::read_dir(&records).unwrap().collect();
        assert_eq!(written.len(), 1, "one record, in the records folder");
        let record = written[0].as_ref().unwrap().path();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "nothing beside the file"
        );
        // The record is what a second start reads: make it say another id, same stamp.
        let text = std::fs::read_to_string(&record).unwrap();
        let other = ModelId([7; 32]);
        let forged = format!("{} {other}\n", text.trim_end().rsplit_once(' ').unwrap().0);
        std::fs::write(&record, forged).unwrap();
        assert_eq!(
            model_id_of(&cfg, &files).unwrap(),
            other,
            "read from the record"
        );
        // Another config, or a file of another size, is hashed again.
        let mut cfg2 = cfg.clone();
        cfg2.rms_norm_eps *= 2.0;
        assert_eq!(
            model_id_of(&cfg2, &files).unwrap(),
            hash_files(&cfg2, &files).unwrap()
        );
        write_long_ago(b"other weights!");
        let rehashed = model_id_of(&cfg, &files).unwrap();
        assert_eq!(rehashed, hash_files(&cfg, &files).unwrap());
        assert_ne!(rehashed, hashed);
        // A record written right after its file changed is not trusted (a same-size rewrite
        // within the clock's tick would keep the mtime), even with the right stamp.
        std::fs::write(&file, b"other weights!").unwrap();
        let _ = model_id_of(&cfg, &files).unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        let forged = format!("{} {other}\n", text.trim_end().rsplit_once(' ').unwrap().0);
        std::fs::write(&record, forged).unwrap();
        assert_eq!(model_id_of(&cfg, &files).unwrap(), rehashed, "not settled");
        // An unreadable record is ignored.
        std::fs::write(&record, "garbage").unwrap();
        assert_eq!(model_id_of(&cfg, &files).unwrap(), rehashed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn byte_chars_are_distinct() {
        let mut c = byte_chars();
        c.sort();
        c.dedup();
        assert_eq!(c.len(), 256);
    }
}
