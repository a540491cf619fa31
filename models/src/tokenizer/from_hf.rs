//! Loads a tokenizer from a Hugging Face model folder: `tokenizer.json` plus the optional
//! `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::{TextTokenizer, TokenizerError};

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TokenizerError::BadConfig {
                    path: path.to_path_buf(),
                    why: format!("not valid JSON: {e}"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": "..."}`.
fn token_content(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which "default" is used.
fn chat_template(config: &Value, path: &Path) -> Result<Option<String>, TokenizerError> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string)),
        Some(_) => Err(TokenizerError::BadConfig {
            path: path.to_path_buf(),
            why: "chat_template is neither a string nor a list of named templates".into(),
        }),
    }
}

pub(super) fn build(dir: &Path) -> Result<TextTokenizer, TokenizerError> {
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(TokenizerError::Io {
            path: tokenizer_path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        });
    }
    let inner =
        Tokenizer::from_file(&tokenizer_path).map_err(|source| TokenizerError::Tokenizers {
            what: format!("loading {}", tokenizer_path.display()),
            source,
        })?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?.unwrap_or(Value::Null);
    let lookup = |key: &str| -> Result<Option<u32>, TokenizerError> {
        match token_content(config.get(key)) {
            None => Ok(None),
            Some(text) => {
                inner
                    .token_to_id(text)
                    .map(Some)
                    .ok_or_else(|| TokenizerError::BadConfig {
                        path: config_path.clone(),
                        why: format!("{key} {text:?} is not in the vocabulary"),
                    })
            }
        }
    };
    let bos_id = lookup("bos_token")?;
    let mut eos_ids: Vec<u32> = lookup("eos_token")?.into_iter().collect();

    // generation_config.json may list several ids that end a generation (Llama 3: eot and eom)
    let generation_path = dir.join("generation_config.json");
    if let Some(generation) = read_json(&generation_path)? {
        match generation.get("eos_token_id") {
            Some(Value::Number(n)) => eos_ids.extend(n.as_u64().map(|n| n as u32)),
            Some(Value::Array(ids)) => {
                eos_ids.extend(ids.iter().filter_map(Value::as_u64).map(|n| n as u32))
            }
            _ => {}
        }
    }
    let vocab_size = inner.get_vocab_size(true);
    if let Some(&bad) = eos_ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(TokenizerError::BadConfig {
            path: generation_path,
            why: format!("eos_token_id {bad} is outside the vocabulary ({vocab_size} tokens)"),
        });
    }

    // Without an explicit add_bos_token, do what the tokenizer's own post-processor does.
    let add_bos = match config.get("add_bos_token").and_then(Value::as_bool) {
        Some(add) => add,
        None => post_processor_adds_bos(&inner, bos_id),
    };

    let jinja_path: PathBuf = dir.join("chat_template.jinja");
    let template = match std::fs::read_to_string(&jinja_path) {
        Ok(source) => Some(source),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => chat_template(&config, &config_path)?,
        Err(source) => {
            return Err(TokenizerError::Io {
                path: jinja_path,
                source,
            });
        }
    };
    Ok(TextTokenizer::assemble(
        inner, add_bos, bos_id, eos_ids, template,
    ))
}

fn post_processor_adds_bos(inner: &Tokenizer, bos_id: Option<u32>) -> bool {
    let Some(bos) = bos_id else { return false };
    inner
        .encode("a", true)
        .is_ok_and(|e| e.get_ids().first() == Some(&bos))
}
