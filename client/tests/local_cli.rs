//! `swarm-client generate --local` as a user runs it: JSON output, greedy determinism, block
//! splits that must not change the output, and clear errors for bad input (never a panic).

use std::process::{Command, Output};

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarm-client"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run swarm-client")
}

fn json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {stdout}"));
    serde_json::from_str(line).unwrap()
}

fn failure(args: &[&str]) -> String {
    let out = client(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    stderr
}

const BASE: &[&str] = &[
    "generate",
    "--local",
    "--model",
    "random:tiny:seed=3",
    "--max-new-tokens",
    "12",
    "--ignore-eos",
    "--json",
];

#[test]
fn local_generation_prints_json_and_a_split_does_not_change_it() {
    let mut args = BASE.to_vec();
    args.extend(["--prompt", "<|im_start|>user\nhello<|im_end|>\n"]);
    let whole = client(&args);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let a = json_line(&whole);
    assert_eq!(
        a["prompt_tokens"][0], 1,
        "control tokens are recognized: {a}"
    );
    assert_eq!(a["tokens"].as_array().unwrap().len(), 12);
    assert!(a["ttft_ms"].as_f64().unwrap() > 0.0);
    args.extend(["--local-split", "0-1,2-3,4-5"]);
    let b = json_line(&client(&args));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["text"], b["text"]);
}

#[test]
fn chat_wraps_the_prompt_in_the_template() {
    let mut args = BASE.to_vec();
    args.extend(["--chat", "--prompt", "hi"]);
    let v = json_line(&client(&args));
    // <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n in the byte-level vocabulary.
    let ids: Vec<u64> = v["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2, "{ids:?}");
    assert_eq!(ids.last(), Some(&(b'\n' as u64 + 3)));
}

#[test]
fn bad_input_gets_a_named_error() {
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "no-such-model",
            "--prompt",
            "x"
        ])
        .contains("unknown model")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "/nope/model.gguf",
            "--prompt",
            "x"
        ])
        .contains("/nope/model.gguf")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "random:tiny",
            "--prompt",
            ""
        ])
        .contains("prompt is empty")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "random:tiny",
            "--prompt",
            "x",
            "--backend",
            "tpu"
        ])
        .contains("tpu")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "random:tiny",
            "--prompt",
            "x",
            "--local-split",
            "0-2,4-5"
        ])
        .contains("split")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "random:tiny",
            "--prompt",
            "x",
            "--top-p",
            "0"
        ])
        .contains("top-p")
    );
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            "random:tiny",
            "--prompt",
            "x",
            "--temperature=-1"
        ])
        .contains("temperature")
    );
    let dir = std::env::temp_dir().join(format!("sunswarm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert!(
        failure(&[
            "generate",
            "--local",
            "--model",
            junk.to_str().unwrap(),
            "--prompt",
            "x"
        ])
        .contains("GGUF")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a one-core machine (one rayon thread) generation finishes: the runtime thread once was
/// the pool's only worker and waited for work it had to run itself, and this hung for ever.
#[test]
fn generation_finishes_on_one_thread() {
    let mut args = BASE.to_vec();
    args.extend(["--prompt", "one thread"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarm-client"))
        .args(&args)
        .env("RAYON_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run swarm-client");
    // Generous: the run takes well under a second; a hang never ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("wait for swarm-client").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("swarm-client generate with RAYON_NUM_THREADS=1 did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("swarm-client output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_line(&out)["tokens"].as_array().unwrap().len(), 12);
}
