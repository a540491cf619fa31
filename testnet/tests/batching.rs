//! Many users on one node: six `swarm-client generate` processes at once through one node that
//! holds every block of SmolLM2, one of them with a long prompt sent in small chunks. The node
//! batches their steps (its log shows passes of several sessions), and every client gets
//! exactly the tokens `--local` gives with the same chunking.
//!
//! Builds the swarm binaries on first use, unless SUNSWARM_NO_BUILD=1.

mod common;

use std::process::Command;

use common::{build_binaries, opts, require_real_model, tokens};
use sunswarm_testnet::net::{Split, Testnet, find_binary};

const MODEL: &str = "smollm2-135m";

fn args<'a>(prompt: &'a str, chunk: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        MODEL,
        "--prompt",
        prompt,
        "--chat",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--prefill-chunk",
        chunk,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_one_node_get_the_local_tokens() {
    build_binaries();
    require_real_model();
    // The nodes log every pass with its number of steps; the clients inherit it harmlessly.
    // SAFETY: set before any thread of this test reads the environment (nextest runs each test
    // in a process of its own).
    unsafe { std::env::set_var("RUST_LOG", "sunswarm_node::batch=debug") };
    let split: Split = "0-29".parse().unwrap();
    let net = Testnet::start(&opts(MODEL, split, 1, 30.0)).await.unwrap();
    let long = format!(
        "Summarize this: {}",
        "The sun rises in the east and sets in the west. ".repeat(12)
    );
    let prompts: Vec<(String, &str)> = vec![
        ("What is the capital of France?".into(), "128"),
        ("Name three colors.".into(), "128"),
        ("What is 2 + 2?".into(), "128"),
        ("Write a haiku about rain.".into(), "128"),
        ("Who wrote Hamlet?".into(), "128"),
        (long, "16"),
    ];
    let local: Vec<Vec<u64>> = prompts
        .iter()
        .map(|(p, chunk)| {
            tokens(&common::client_json(
                &[&args(p, chunk)[..], &["--local"]].concat(),
            ))
        })
        .collect();
    let client = find_binary("swarm-client").unwrap();
    let children: Vec<_> = prompts
        .iter()
        .map(|(p, chunk)| {
            Command::new(&client)
                .arg("generate")
                .args(args(p, chunk))
                .args(["--bootstrap", &net.bootstrap, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "client {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("no JSON");
        assert_eq!(tokens(&json), local[i], "client {i} ({:?})", prompts[i].0);
    }
    let log = std::fs::read_to_string(net.log_dir.join("node-0.log")).unwrap();
    let most = log
        .lines()
        .filter(|l| l.contains(" pass"))
        .filter_map(|l| {
            l.split("steps=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most >= 2,
        "no pass ran the steps of two sessions together (most {most}); node log:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
