//! Text tokenizers: byte-level BPE built from GGUF metadata, or a Hugging Face `tokenizer.json`;
//! with the model's chat template and an incremental detokenizer for streaming output.
//!
//! Both sources end up as a `tokenizers::Tokenizer` used without its post-processor: the BOS
//! decision is made here, once, from the model's configuration (see [`TextTokenizer::add_bos`]),
//! so a GGUF and an HF folder of the same model tokenize the same way.

mod from_gguf;
mod from_hf;
mod stream;

use std::path::PathBuf;

use crate::chat::{ChatTemplate, ChatTemplateError};
use crate::gguf::GgufFile;

pub use crate::chat::ChatMessage;
pub use stream::StreamDecoder;

/// Why a tokenizer could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("GGUF has no tokenizer metadata {0:?}")]
    MissingMetadata(String),
    #[error("GGUF tokenizer metadata {key:?} is invalid: {why}")]
    BadMetadata { key: String, why: String },
    #[error(
        "unsupported tokenizer model {0:?}: GGUF tokenizers of type \"gpt2\" (byte-level BPE) are supported; for others use a Hugging Face folder with tokenizer.json"
    )]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {name:?} (tokenizer.ggml.pre); supported: {supported}")]
    UnsupportedPreTokenizer { name: String, supported: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    BadConfig { path: PathBuf, why: String },
    #[error("{what}: {source}")]
    Tokenizers {
        what: String,
        #[source]
        source: tokenizers::Error,
    },
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownTokenId { id: u32, vocab_size: usize },
    #[error("the model has no chat template; give the prompt as plain text")]
    NoChatTemplate,
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
}

/// Token texts that end a generation when the model emits them (conventions of the common
/// model families: ChatML, Llama 3, Gemma, Phi, SentencePiece).
const END_OF_GENERATION_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// A model's tokenizer, its special tokens and its chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    add_bos: bool,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("add_bos", &self.add_bos)
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<TextTokenizer, TokenizerError> {
        from_gguf::build(gguf)
    }

    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` (chat template, BOS/EOS,
    /// `add_bos_token`), `chat_template.jinja` and `generation_config.json` (extra EOS ids).
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<TextTokenizer, TokenizerError> {
        from_hf::build(dir)
    }

    /// Assembles a tokenizer; `eos_ids` are extended with the vocabulary's end-of-generation
    /// control tokens and deduplicated.
    fn assemble(
        inner: tokenizers::Tokenizer,
        add_bos: bool,
        bos_id: Option<u32>,
        mut eos_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> TextTokenizer {
        let added = inner.get_added_tokens_decoder();
        for text in END_OF_GENERATION_TOKENS {
            // only tokens registered as special: a plain vocabulary word "</s>" stops nothing
            if let Some(id) = inner.token_to_id(text)
                && added.get(&id).is_some_and(|t| t.special)
            {
                eos_ids.push(id);
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|id| seen.insert(*id));
        let vocab_size = inner.get_vocab_size(true);
        TextTokenizer {
            inner,
            vocab_size,
            add_bos: add_bos && bos_id.is_some(),
            bos_id,
            eos_ids,
            chat_template,
        }
    }

    /// Tokenizes `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
    /// BOS is prepended only when the model asks for it ([`Self::add_bos`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner
                .encode(text, false)
                .map_err(|source| TokenizerError::Tokenizers {
                    what: "encoding failed".into(),
                    source,
                })?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, special tokens included (so `decode(encode(t)) == t` for
    /// byte-level BPE). Invalid UTF-8 (an incomplete character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.decode_with(ids, false)
    }

    /// Decodes ids to text without special tokens such as `<|im_end|>`.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.decode_with(ids, true)
    }

    fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|source| TokenizerError::Tokenizers {
                what: "decoding failed".into(),
                source,
            })
    }

    /// The text one token decodes to on its own (`" the"` for `Ġthe`), or `None` for an id
    /// outside the vocabulary. A token holding part of a character shows U+FFFD.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.decode(&[id]).ok()
    }

    /// The token's vocabulary entry as stored (`"Ġthe"`), or `None` outside the vocabulary.
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token given its vocabulary entry or special-token text.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Number of token ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Every id that ends a generation: the model's EOS (and EOT/EOM where declared) plus the
    /// special end-of-turn tokens its vocabulary has (`<|im_end|>`, `<|eot_id|>`, ...).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether [`Self::encode`] prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Overrides whether [`Self::encode`] prepends BOS (ignored when the model has no BOS).
    pub fn set_add_bos(&mut self, add_bos: bool) {
        self.add_bos = add_bos && self.bos_id.is_some();
    }

    /// The model's chat template source, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's own chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let source = self
            .chat_template
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let special = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_default()
        };
        let template = ChatTemplate {
            source: source.clone(),
            bos_token: special(self.bos_id),
            eos_token: special(self.eos_ids.first().copied()),
        };
        Ok(template.render(messages, add_generation_prompt)?)
    }

    /// The tokenizer as `tokenizer.json` text (the model, pre-tokenizer, decoder and special
    /// tokens; BOS handling and the chat template live in tokenizer_config.json).
    pub fn to_tokenizer_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|source| TokenizerError::Tokenizers {
                what: "serializing tokenizer.json".into(),
                source,
            })
    }

    /// An incremental detokenizer for streaming generated tokens.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}
