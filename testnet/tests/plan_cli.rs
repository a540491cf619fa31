//! `swarm-testnet plan --peers FILE --json` on the planner's example file (seed 003's E2 as a
//! peers file, plus a fast peer in power saving): the command prints E2's plan, the latency
//! objective gives E2's 25.0 ms, and bad files fail with a message that names the problem.

use std::process::Command;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../planner/examples/peers.json"
);

fn plan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swarm-testnet"))
        .arg("plan")
        .args(args)
        .output()
        .expect("running swarm-testnet plan")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = plan(args);
    assert!(
        out.status.success(),
        "swarm-testnet plan {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan --json prints one JSON object")
}

fn route(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["peer"].as_str().unwrap().to_string(),
                s["start"].as_u64().unwrap(),
                s["end"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

#[test]
fn plans_the_example_file_to_e2() {
    let v = json(&["--peers", EXAMPLE, "--json"]);
    assert!(close(&v["bottleneck_ms"], 5.0), "{v}");
    assert!(close(&v["latency_ms"], 26.0), "{v}");
    assert!(close(&v["tokens_per_s"], 200.0), "{v}");
    let want = [("p2", 0, 1), ("p1", 1, 6), ("p0", 6, 8)];
    let want: Vec<(String, u64, u64)> = want
        .iter()
        .map(|(p, a, b)| (p.to_string(), *a, *b))
        .collect();
    assert_eq!(route(&v), want);
    assert_eq!(v["excluded"][0]["peer"], "solar-4");
    assert_eq!(v["exact"], true);
}

#[test]
fn latency_objective_gives_25_ms() {
    let v = json(&["--peers", EXAMPLE, "--json", "--objective", "latency"]);
    assert!(close(&v["latency_ms"], 25.0), "{v}");
    assert!(close(&v["bottleneck_ms"], 6.0), "{v}");
    assert_eq!(v["objective"], "latency");
}

#[test]
fn the_table_names_every_stage() {
    let out = plan(&["--peers", EXAMPLE]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "p2",
        "0..1",
        "p1",
        "1..6",
        "p0",
        "6..8",
        "bottleneck 5.000 ms",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(text.contains("excluded solar-4"), "{text}");
}

#[test]
fn bad_files_fail_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("sunswarm-plan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    // A misspelt field must not be ignored.
    std::fs::write(
        &bad,
        r#"{"model":{"blocks":4},"peers":[{"id":"a","max_block":4,"ms_per_block":1,"up_ms":1,"down_ms":1}]}"#,
    )
    .unwrap();
    let out = plan(&["--peers", bad.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_block"), "{err}");
    // Not enough memory for the model.
    std::fs::write(
        &bad,
        r#"{"model":{"blocks":9},"peers":[{"id":"a","max_blocks":4,"ms_per_block":1,"up_ms":1,"down_ms":1}]}"#,
    )
    .unwrap();
    let out = plan(&["--peers", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let missing = plan(&["--peers", dir.join("none.json").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("none.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
