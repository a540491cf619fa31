//! Builds a byte-level BPE tokenizer from GGUF `tokenizer.*` metadata (`tokenizer.ggml.model =
//! gpt2`), following the Hugging Face tokenizer that the GGUF was converted from.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::{TextTokenizer, TokenizerError};
use crate::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`llama_token_type`): only these two are matched in raw text.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama 3 split regex (tokenizer.json of Meta-Llama-3), used with `tokenizer.ggml.pre =
/// llama-bpe`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer names this module knows (`tokenizer.ggml.pre`).
const SUPPORTED_PRE: &[&str] = &["smollm", "llama-bpe", "llama3", "default", "gpt-2", "gpt2"];

/// How one `tokenizer.ggml.pre` value is tokenized.
struct PreRecipe {
    pre_tokenizer: PreTokenizerWrapper,
    /// llama.cpp's `ignore_merges`: a word that is itself in the vocabulary is one token.
    ignore_merges: bool,
    /// Overrides `tokenizer.ggml.add_bos_token` where converters are known to write a value the
    /// original tokenizer does not follow.
    add_bos: Option<bool>,
}

fn recipe(pre: &str) -> Result<PreRecipe, TokenizerError> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    Ok(match pre {
        // SmolLM (StarCoder-style): digits one by one, then GPT-2 byte-level splitting.
        // Its GGUFs carry add_bos_token=true with BOS = <|im_start|>, but the Hugging Face
        // tokenizer never adds BOS (verified against reference/smollm2-greedy.json).
        "smollm" => PreRecipe {
            pre_tokenizer: PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
            ignore_merges: false,
            add_bos: Some(false),
        },
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|source| TokenizerError::Tokenizers {
                what: "Llama 3 split regex".into(),
                source,
            })?;
            PreRecipe {
                pre_tokenizer: PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    byte_level(false),
                ])),
                ignore_merges: true,
                add_bos: None,
            }
        }
        // llama.cpp's fallback for an unnamed BPE pre-tokenizer is GPT-2's regex
        "default" | "gpt-2" | "gpt2" => PreRecipe {
            pre_tokenizer: byte_level(true),
            ignore_merges: false,
            add_bos: None,
        },
        other => {
            return Err(TokenizerError::UnsupportedPreTokenizer {
                name: other.to_string(),
                supported: SUPPORTED_PRE.join(", "),
            });
        }
    })
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    let items = gguf
        .get_array(key)
        .ok_or_else(|| TokenizerError::MissingMetadata(key.to_string()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| TokenizerError::BadMetadata {
                key: key.to_string(),
                why: format!("element {i} is a {}, not a string", v.type_name()),
            })
        })
        .collect()
}

fn token_id(gguf: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = gguf.metadata(key) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
        _ => Err(TokenizerError::BadMetadata {
            key: key.to_string(),
            why: format!("{value:?} is not a token id below {n_tokens}"),
        }),
    }
}

pub(super) fn build(gguf: &GgufFile) -> Result<TextTokenizer, TokenizerError> {
    let model_key = "tokenizer.ggml.model";
    let model = gguf
        .get_str(model_key)
        .ok_or_else(|| TokenizerError::MissingMetadata(model_key.into()))?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model.to_string()));
    }
    // older converters wrote no pre-tokenizer name; llama.cpp treats that as "default"
    let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let recipe = recipe(pre)?;

    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let merges_key = "tokenizer.ggml.merges";
    let merges = string_array(gguf, merges_key)?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::BadMetadata {
                    key: merges_key.into(),
                    why: format!("merge {i} ({m:?}) is not two tokens separated by one space"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let token_types: Vec<i64> = match gguf.get_array("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(types) if types.len() == tokens.len() => {
            types.iter().map(|v| v.as_i64().unwrap_or(1)).collect()
        }
        Some(types) => {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.token_type".into(),
                why: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
    };

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if vocab.insert(token.to_string(), id as u32).is_some() {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.tokens".into(),
                why: format!("token {token:?} appears twice (second time at id {id})"),
            });
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(recipe.ignore_merges)
        .build()
        .map_err(|source| TokenizerError::Tokenizers {
            what: "building the BPE model from GGUF vocabulary and merges".into(),
            source,
        })?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(recipe.pre_tokenizer));
    inner.with_decoder(Some(ByteLevel::default()));

    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| **ty == wanted)
            .map(|(t, _)| AddedToken::from(t.to_string(), special).normalized(false))
            .collect()
    };
    let registering = |source| TokenizerError::Tokenizers {
        what: "registering the GGUF's control tokens".into(),
        source,
    };
    inner
        .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(registering)?;
    inner
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(registering)?;

    let bos_id = token_id(gguf, "tokenizer.ggml.bos_token_id", tokens.len())?;
    let mut eos_ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        eos_ids.extend(token_id(gguf, key, tokens.len())?);
    }
    // llama.cpp's default for BPE vocabularies without the key is to add no BOS
    let add_bos = recipe.add_bos.unwrap_or_else(|| {
        gguf.get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false)
    });
    let chat_template = match gguf.metadata("tokenizer.chat_template") {
        None => None,
        Some(GgufValue::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.chat_template".into(),
                why: format!("a {}, not a string", other.type_name()),
            });
        }
    };
    tracing::debug!(
        pre,
        n_tokens = tokens.len(),
        add_bos,
        ?bos_id,
        "tokenizer built from GGUF metadata"
    );
    Ok(TextTokenizer::assemble(
        inner,
        add_bos,
        bos_id,
        eos_ids,
        chat_template,
    ))
}
