//! `examples/peers.json` is seed 003's E2 written as a peers file (one peer's memory in bytes,
//! one hop as a link), plus a fast peer in power saving. It must plan to E2's numbers with the
//! sleeping peer excluded, which is what `swarm-testnet plan --peers examples/peers.json --json`
//! prints.

use sunswarm_planner::{Objective, PeersFile, plan_from_json};

const EXAMPLE: &str = include_str!("../examples/peers.json");

#[test]
fn example_peers_file_plans_to_e2() {
    let r = plan_from_json(EXAMPLE).unwrap();
    assert_eq!(r.objective, Objective::Throughput);
    assert!((r.bottleneck_ms - 5.0).abs() < 1e-9, "{r:?}");
    assert!((r.latency_ms - 26.0).abs() < 1e-9, "{r:?}");
    assert!((r.tokens_per_s - 200.0).abs() < 1e-9);
    let route: Vec<(&str, u32, u32)> = r
        .stages
        .iter()
        .map(|s| (s.peer.as_str(), s.start, s.end))
        .collect();
    assert_eq!(route, vec![("p2", 0, 1), ("p1", 1, 6), ("p0", 6, 8)]);
    assert_eq!(r.excluded.len(), 1);
    assert_eq!(r.excluded[0].peer, "solar-4");
    assert!(r.exact);
}

#[test]
fn example_peers_file_for_latency_gives_25() {
    let mut file: PeersFile = serde_json::from_str(EXAMPLE).unwrap();
    file.objective = Objective::Latency;
    let json = serde_json::to_string(&file).unwrap();
    let r = plan_from_json(&json).unwrap();
    assert!((r.latency_ms - 25.0).abs() < 1e-9, "{r:?}");
    let route: Vec<(&str, u32, u32)> = r
        .stages
        .iter()
        .map(|s| (s.peer.as_str(), s.start, s.end))
        .collect();
    assert_eq!(route, vec![("p2", 0, 1), ("p1", 1, 7), ("p0", 7, 8)]);
}

#[test]
fn waking_the_solar_peer_changes_the_plan() {
    // The excluded peer is fast and close: once out of power saving it should be used, so
    // the exclusion is what kept it out (not, say, a parse that ignored it).
    let mut file: PeersFile = serde_json::from_str(EXAMPLE).unwrap();
    file.peers[4].power_saving = false;
    let json = serde_json::to_string(&file).unwrap();
    let r = plan_from_json(&json).unwrap();
    assert!(r.stages.iter().any(|s| s.peer == "solar-4"), "{r:?}");
    assert!(r.bottleneck_ms < 5.0);
}
