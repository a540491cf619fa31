//! Beyond loopback: swarms whose every connection crosses an emulated wide-area link (a proxy in
//! front of each node, [`sunswarm_testnet::net::LinkEmulator`]), and nodes reachable only
//! through a relay. What a generation gives must not depend on how far apart the peers are.

mod common;

use std::time::Duration;

use common::{build_binaries, client_json, opts, route, tokens};
use sunswarm_testnet::net::{LinkProfile, Split, Testnet};

/// SmolLM2's hidden size: every forward carries at least this many values over each link.
const HIDDEN: u64 = 576;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_across_30_ms_links_with_jitter_generate_what_local_does() {
    build_binaries();
    common::require_real_model();
    let mut o = opts("smollm2-135m", Split::Even, 3, 30.0);
    o.link = Some(LinkProfile {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        ..LinkProfile::default()
    });
    let net = Testnet::start(&o).await.unwrap();
    let n = 16u64;
    let common = [
        "--model",
        "smollm2-135m",
        "--prompt",
        "The three primary colours are",
        "--max-new-tokens",
        &n.to_string(),
        "--ignore-eos",
    ];
    let before: Vec<u64> = (0..3).map(|i| net.link_bytes(i).unwrap()).collect();
    let swarm = client_json(&[&common[..], &["--bootstrap", &net.bootstrap]].concat());
    let local = client_json(&[&common[..], &["--local"]].concat());
    assert_eq!(tokens(&swarm), tokens(&local));
    assert_eq!(route(&swarm).len(), 3);
    // Every crossing took the link (no side path on loopback: AutoNAT once confirmed the
    // nodes' own listen addresses and peers dialled around the proxies): a token's trip
    // crosses hops + 1 links, each at least latency - jitter = 20 ms. A lower bound the
    // emulation guarantees (its delays are sleeps), not a speed.
    let transit = swarm["swarm"]["transit_us_median"].as_f64().unwrap();
    assert!(transit >= 4.0 * 20_000.0, "transit {transit} us");
    // The activations really crossed every node's link (not a side path on loopback): each
    // node receives at least one hidden state per token through its proxy.
    for (i, b) in before.iter().enumerate() {
        let crossed = net.link_bytes(i).unwrap() - b;
        assert!(
            crossed >= n * HIDDEN,
            "node {i}: only {crossed} bytes crossed its link"
        );
    }
}

/// The last hop accepts no direct connection (`--no-listen`): AutoNAT finds it unreachable, it
/// listens through node 0 (a relay it found in the DHT) and announces only the relay's address.
/// The client and the hop before it reach it there, and the text is still `--local`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reachable_only_through_a_relay_serves_its_blocks() {
    build_binaries();
    common::require_real_model();
    let mut o = opts("smollm2-135m", "0-9,10-19,20-29".parse().unwrap(), 3, 30.0);
    o.relayed = vec![2];
    let mut net = Testnet::start(&o).await.unwrap();
    let relay = net.nodes[0].peer.clone();
    let announced = net.nodes[2].listen.clone();
    assert!(
        announced.contains(&format!("/p2p/{relay}/p2p-circuit/")),
        "node 2 announces {announced}, not a circuit through node 0"
    );
    let reach = net
        .wait_node_line(2, "REACH=", Duration::from_secs(10))
        .unwrap();
    assert!(
        reach.starts_with("relayed nat=Private") && reach.contains(&format!("relay={relay}")),
        "{reach}"
    );
    let common = [
        "--model",
        "smollm2-135m",
        "--prompt",
        "Name a planet of the solar system.",
        "--max-new-tokens",
        "12",
        "--ignore-eos",
    ];
    let swarm = client_json(&[&common[..], &["--bootstrap", &net.bootstrap]].concat());
    let local = client_json(&[&common[..], &["--local"]].concat());
    assert_eq!(tokens(&swarm), tokens(&local));
    let r = route(&swarm);
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[2].0, net.nodes[2].peer,
        "the relayed node served the last range"
    );
}
