//! Churn: clients keep generating while nodes leave (killed and stopped in turn) and
//! replacements join. Every generation must equal `--local`, and none may fail: every range
//! keeps a live replica throughout, so a leave is always repairable.
//!
//! It runs alone (`.config/nextest.toml`): six processes and two clients already fill the two
//! cores.

mod common;

use common::build_binaries;
use sunswarm_testnet::net::churn::{ChurnArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_through_a_swarm_whose_nodes_come_and_go_stay_exact() {
    build_binaries();
    let args = ChurnArgs {
        nodes: 4,
        ranges: 2,
        clients: 2,
        minutes: 0.5,
        leave_every: 8.0,
        model: "random:tiny".into(),
        max_new_tokens: 16,
        seed: 7,
        announce_ttl: 30.0,
        log_dir: None,
        json: false,
    };
    let s = run(&args).await.unwrap();
    assert!(s.leaves >= 2 && s.joins == s.leaves, "{s:?}");
    assert!(s.generations >= 4, "{s:?}");
    assert_eq!(s.wrong, 0, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.identical, s.generations, "{s:?}");
}
