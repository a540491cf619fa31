//! Outputs the client verifies (Protocol 6): spot checks against a peer that returns wrong hidden
//! states, signed receipts against a peer that rewrites the route, and blame from what the client
//! sees against a middle hop that says its next hop failed. Every hostile peer runs in its own
//! process (`swarm-testnet up --byzantine I:MODE`); every client run is a fresh `swarm-client`
//! process, so each starts with no peer banned.

mod common;

use std::time::Duration;

use common::{build_binaries, client_json, hostile_opts, route, tokens};
use sunswarm_testnet::net::Testnet;

fn generate(
    model: &str,
    prompt: &str,
    n: usize,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> serde_json::Value {
    let n = n.to_string();
    let mut a = vec![
        "--model",
        model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n,
        "--ignore-eos",
    ];
    match bootstrap {
        Some(b) => a.extend(["--bootstrap", b]),
        None => a.push("--local"),
    }
    a.extend_from_slice(extra);
    client_json(&a)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn numbers(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

/// SmolLM2 with a replica of blocks 10-19 that perturbs every output it gives (node 2): the
/// first forwards are always checked, and each check runs the other replica of 10-19 beside
/// the one on the route, so the liar is in every run's first check, whichever replica the route
/// drew. It is banned at that first mismatch and the text is what `--local` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_returning_wrong_outputs_is_banned_at_its_first_check_and_the_text_stays() {
    build_binaries();
    common::require_real_model();
    let model = "smollm2-135m";
    let net = Testnet::start(&hostile_opts(
        model,
        "0-9,10-19,10-19,20-29",
        2,
        "wrong-output",
    ))
    .await
    .unwrap();
    common::wait_until_settled(&net).await;
    let prompt = "The capital of France is";
    let local = generate(model, prompt, 12, None, &[]);
    let liar = net.nodes[2].peer.clone();
    for run in 0..3 {
        let out = generate(model, prompt, 12, Some(&net.bootstrap), &[]);
        assert_eq!(tokens(&out), tokens(&local), "run {run}: {out}");
        let spot = &out["spot_checks"];
        assert_eq!(
            strings(&spot["banned"]),
            vec![liar.clone()],
            "run {run}: {spot}"
        );
        // Caught at the first check; nothing disagrees after the ban.
        assert_eq!(spot["mismatches"], 1, "run {run}: {spot}");
        // Blocks 0-9 and 20-29 have one replica each: their hops can only be checked against
        // themselves, and the report says so.
        assert!(
            spot["self_checked_hops"].as_u64().unwrap() >= 2,
            "run {run}: {spot}"
        );
        assert_eq!(numbers(&spot["steps"])[0], 0, "run {run}: {spot}");
        assert!(
            route(&out).iter().all(|(peer, _, _)| *peer != liar),
            "run {run}: still routed to the liar"
        );
    }
}

/// A last hop that answers other tokens than its LM head picks (node 2, one of the two replicas
/// of the last blocks), beside honest hidden states. The first forwards are always checked: the
/// client's own head picks another token from the hidden states that came with the liar's, so
/// the liar is banned at its first token and the step redone on the other replica. Every token
/// still comes from a last hop, and the text is what `--local` gives. Routes draw either replica,
/// so runs go on until the liar has been caught twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_hop_picking_wrong_tokens_is_banned_at_its_first_token_and_the_text_stays() {
    build_binaries();
    let model = "random:tiny";
    let net = Testnet::start(&hostile_opts(model, "0-2,3-5,3-5", 2, "wrong-token"))
        .await
        .unwrap();
    common::wait_until_settled(&net).await;
    let prompt = "an open swarm";
    let local = generate(model, prompt, 8, None, &[]);
    assert_eq!(local["tokens_from_last_hop"], 0, "{local}");
    let liar = net.nodes[2].peer.clone();
    let mut caught = 0;
    for run in 0..16 {
        let out = generate(model, prompt, 8, Some(&net.bootstrap), &[]);
        assert_eq!(tokens(&out), tokens(&local), "run {run}: {out}");
        assert_eq!(out["tokens_from_last_hop"], 8, "run {run}: {out}");
        let spot = &out["spot_checks"];
        assert!(
            spot["tokens_checked"].as_u64().unwrap() >= 2,
            "run {run}: {spot}"
        );
        let banned = strings(&spot["banned"]);
        if banned.is_empty() {
            assert_eq!(spot["mismatches"], 0, "run {run}: {spot}");
            continue;
        }
        assert_eq!(banned, vec![liar.clone()], "run {run}: {spot}");
        assert_eq!(spot["mismatches"], 1, "run {run}: {spot}");
        assert_eq!(numbers(&spot["steps"])[0], 0, "run {run}: {spot}");
        assert!(
            route(&out).iter().all(|(peer, _, _)| *peer != liar),
            "run {run}: still routed to the liar"
        );
        caught += 1;
        if caught == 2 {
            break;
        }
    }
    assert_eq!(
        caught, 2,
        "the liar was drawn for fewer than 2 of 16 routes"
    );
}

/// A liar that perturbs one step only (step 4, past the always-checked first two). Every check
/// compares everything the route has output so far, so the lie is caught at the first check
/// drawn at or after step 4 while the liar is on the route, and never without one; later steps
/// are drawn at the configured fraction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_drawn_at_the_configured_fraction_and_catch_a_lie_at_the_next_one() {
    build_binaries();
    let model = "random:tiny";
    let net = Testnet::start(&hostile_opts(
        model,
        "0-1,2-3,2-3,4-5",
        2,
        "wrong-output:from=4,steps=1",
    ))
    .await
    .unwrap();
    common::wait_until_settled(&net).await;
    let liar = net.nodes[2].peer.clone();
    let fraction: f64 = 0.25;
    let (mut drawn, mut eligible) = (0usize, 0usize);
    let (mut lied, mut caught) = (0usize, 0usize);
    for run in 0..32 {
        let out = generate(
            model,
            "an open swarm",
            8,
            Some(&net.bootstrap),
            &["--spot-check", "0.25"],
        );
        let spot = &out["spot_checks"];
        let steps = numbers(&spot["steps"]);
        let banned = strings(&spot["banned"]);
        assert!(steps.starts_with(&[0, 1]), "run {run}: {spot}");
        // Forwards 2..=7 of an 8-token generation are drawn; a step redone after a ban is drawn
        // again, so each step counts once.
        let mut later: Vec<u64> = steps.iter().copied().filter(|s| *s >= 2).collect();
        later.dedup();
        drawn += later.len();
        eligible += 6;
        let checked_after_lie = steps.iter().any(|s| *s >= 4);
        let repaired_liar = out["failover_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["peer"] == liar.as_str());
        if !banned.is_empty() {
            assert_eq!(banned, vec![liar.clone()], "run {run}: {spot}");
        }
        if repaired_liar {
            // On the route at step 4 and caught by a later check.
            assert_eq!(banned, vec![liar.clone()], "run {run}: {spot}");
            assert!(
                checked_after_lie,
                "run {run}: caught with no check after the lie"
            );
            lied += 1;
            caught += 1;
        } else if route(&out).iter().any(|(p, _, _)| *p == liar) {
            // On the route throughout: no check came after its lie.
            assert!(
                !checked_after_lie,
                "run {run}: a check after the lie missed it: {spot}"
            );
            lied += 1;
        }
        // Otherwise it was on the check runs' route, whose own step 4 (the fifth check) it may
        // have lied in, and been banned for.
    }
    eprintln!("drawn {drawn} of {eligible} later steps; caught {caught} of {lied} lies");
    // The draw: a binomial count of the eligible steps, within 4 standard deviations.
    let mean = fraction * eligible as f64;
    let sd = (eligible as f64 * fraction * (1.0 - fraction)).sqrt();
    assert!(
        (drawn as f64 - mean).abs() <= 4.0 * sd,
        "{drawn} of {eligible} later steps checked, expected {mean} +- {sd:.1}"
    );
    // Detection: a lie at step 4 is caught if any of steps 4..=7 is drawn.
    let p = 1.0 - (1.0 - fraction).powi(4);
    let m = p * lied as f64;
    let s = (lied as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (caught as f64 - m).abs() <= 4.0 * s.max(0.5),
        "caught {caught} of {lied} lies, expected {m:.1} +- {s:.1}"
    );
}

/// A first hop that passes the session to another replica of blocks 2-3 than the client chose:
/// the first receipt is signed by the wrong peer, the first hop is banned, the route repaired, and
/// the tokens are those of `--local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_rewriting_the_route_is_caught_by_the_first_receipt() {
    build_binaries();
    let model = "random:tiny";
    let mut net = Testnet::start(&hostile_opts(
        model,
        "0-1,0-1,2-3,2-3,4-5",
        0,
        "rewrite-route",
    ))
    .await
    .unwrap();
    common::wait_until_settled(&net).await;
    // Once gossip has shown it every other node, it has a replica to rewrite to.
    let ready = net
        .wait_node_line(0, "READY", Duration::from_secs(120))
        .unwrap();
    assert!(ready.contains("peers=4"), "{ready}");
    let local = generate(model, "an open swarm", 8, None, &[]);
    let rewriter = net.nodes[0].peer.clone();
    // With spot checks off, only receipts can catch it: run until the route drew the rewriter
    // (each run draws one of the two 0-1 replicas; 1 in 2^24 that no run does).
    let mut caught = 0;
    for run in 0..24 {
        let out = generate(
            model,
            "an open swarm",
            8,
            Some(&net.bootstrap),
            &["--spot-check", "0"],
        );
        assert_eq!(tokens(&out), tokens(&local), "run {run}");
        let banned = strings(&out["spot_checks"]["banned"]);
        if banned.is_empty() {
            assert!(route(&out).iter().all(|(p, _, _)| *p != rewriter));
            continue;
        }
        assert_eq!(banned, vec![rewriter.clone()], "run {run}");
        let ev = &out["failover_events"][0];
        assert_eq!(ev["peer"], rewriter.as_str(), "run {run}: {ev}");
        assert!(
            ev["reason"]
                .as_str()
                .unwrap()
                .contains("signed by another peer"),
            "{ev}"
        );
        caught += 1;
        if caught == 2 {
            break;
        }
    }
    assert_eq!(caught, 2, "the route never drew the rewriter");
}

/// A middle hop that, at step 2, says its next hop failed (while the next hop is fine): the
/// client probes the next hop, finds it answering, and replaces the hop that said so. In 10 of
/// 10 runs that routed through it, the hostile hop is the one backed off, and the text stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_hop_blaming_its_next_hop_is_the_one_replaced() {
    build_binaries();
    let model = "random:tiny";
    let net = Testnet::start(&hostile_opts(
        model,
        "0-1,2-3,2-3,4-5",
        1,
        "blame-next:after=2",
    ))
    .await
    .unwrap();
    common::wait_until_settled(&net).await;
    let local = generate(model, "an open swarm", 8, None, &[]);
    let hostile_peer = net.nodes[1].peer.clone();
    let mut through_it = 0;
    for run in 0..60 {
        let out = generate(
            model,
            "an open swarm",
            8,
            Some(&net.bootstrap),
            &["--spot-check", "0"],
        );
        assert_eq!(tokens(&out), tokens(&local), "run {run}");
        let events = out["failover_events"].as_array().unwrap();
        if events.is_empty() {
            assert!(route(&out).iter().all(|(p, _, _)| *p != hostile_peer));
            continue;
        }
        assert_eq!(events.len(), 1, "run {run}: {events:?}");
        assert_eq!(
            events[0]["peer"],
            hostile_peer.as_str(),
            "run {run}: {events:?}"
        );
        assert_eq!(events[0]["hop"], 1, "run {run}: {events:?}");
        through_it += 1;
        if through_it == 10 {
            break;
        }
    }
    assert_eq!(
        through_it, 10,
        "fewer than 10 of 60 runs routed through the hostile hop"
    );
}
