//! Heterogeneous testnets on real processes: `--slowdown I:FACTOR` makes node I compute FACTOR
//! times slower, and the client's per-hop timings see it, while the tokens stay those of
//! `--local`.

mod common;

use common::{build_binaries, client_json, opts, require_real_model, tokens};
use sunswarm_testnet::net::{Slowdown, Split, Testnet, apply_slowdowns};

const MODEL: &str = "smollm2-135m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_node_computes_factor_times_slower() {
    build_binaries();
    require_real_model();
    let mut o = opts(MODEL, Split::Even, 2, 30.0);
    apply_slowdowns(
        &mut o.per_node_args,
        2,
        &[Slowdown {
            node: 1,
            factor: 4.0,
        }],
    )
    .unwrap();
    let net = Testnet::start(&o).await.unwrap();
    let common = [
        "--model",
        MODEL,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "16",
        "--ignore-eos",
    ];
    let local = client_json(&[&common[..], &["--local"]].concat());
    let swarm = client_json(&[&common[..], &["--bootstrap", &net.bootstrap]].concat());
    assert_eq!(
        tokens(&swarm),
        tokens(&local),
        "a slower node computes the same"
    );
    let per_hop: Vec<f64> = swarm["swarm"]["hop_compute_us_median"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(per_hop.len(), 2, "{swarm}");
    // Both hops hold 15 blocks; the medians of 15 decode steps on a loaded machine still keep
    // the 4x well apart from 1x.
    let ratio = per_hop[1] / per_hop[0];
    assert!(
        (2.5..10.0).contains(&ratio),
        "hop 1 (slowdown 4) over hop 0: {ratio:.2} ({per_hop:?})"
    );
}
