//! `swarm-node --blocks auto` on real processes: four SmolLM2 nodes of at most 12 blocks each,
//! started one after another, choose ranges that cover all 30 blocks with a route (ranges that
//! chain from block 0 to the end); when one without which the route breaks leaves, the others
//! move to re-cover within [`RECOVER_BOUND`], and a generation through the swarm then equals
//! `--local`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{build_binaries, client_json, opts, require_real_model, tokens};
use sunswarm_planner::auto::{HostedRange, OwnPeer, Speed, score_range};
use sunswarm_protocol::{Announcement, BlockRange};
use sunswarm_testnet::net::{Split, Testnet};

const MODEL: &str = "smollm2-135m";
/// 12 x 3 >= 30 > 12 x 2: three nodes can cover the model, but only by standing where they
/// are needed, so losing a node that holds blocks alone forces a move.
const MAX_BLOCKS: u32 = 12;
/// How long the survivors may take to re-cover the lost blocks: a look every 2 s, a pause of
/// up to 2 s, a second look, the move (leave, load 12 blocks, join) and the announcement, with
/// room for a loaded 2-core machine and a second move if two nodes jump at once.
const RECOVER_BOUND: Duration = Duration::from_secs(150);

fn ranges(anns: &[Announcement]) -> HashMap<Vec<u8>, BlockRange> {
    anns.iter().map(|a| (a.peer_id.clone(), a.blocks)).collect()
}

/// Blocks on a partial route of these ranges, as the planner counts them: `n_layers` exactly
/// when the ranges chain from block 0 to the end (a hop runs its whole range).
fn covered(n_layers: u32, ranges: impl IntoIterator<Item = BlockRange>) -> u32 {
    let hosted: Vec<HostedRange> = ranges
        .into_iter()
        .map(|r| HostedRange {
            start: r.start,
            end: r.end,
            speed: Speed::MsPerBlock(1.0),
            max_job_rate: 1.0,
            power_saving: false,
        })
        .collect();
    // A probe that adds nothing (in power saving), on block 0.
    let probe = OwnPeer {
        ms_per_block: 1.0,
        max_blocks: 1,
        max_job_rate: 1.0,
        power_saving: true,
    };
    score_range(n_layers, &hosted, &probe, 0, 1)
        .unwrap()
        .covered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_nodes_cover_the_model_and_re_cover_a_lost_range() {
    build_binaries();
    require_real_model();
    let mut o = opts(MODEL, Split::Auto, 4, 30.0);
    o.node_args = [
        "--max-blocks",
        &MAX_BLOCKS.to_string(),
        "--replan-interval",
        "2",
        "--replan-jitter",
        "2",
        "--drain-timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Starts the four one after another and waits (bounded) until they cover the model.
    let mut net = Testnet::start(&o).await.unwrap();
    let n = net.n_layers;
    assert_eq!(n, 30);
    let client = net.client().await.unwrap();
    // Discovery is eventually consistent: a lookup right after the start may not see every
    // node yet (bounded).
    let until = Instant::now() + Duration::from_secs(30);
    let at_start = loop {
        let anns = client.discover(&net.model_id, n).await.unwrap();
        let at_start = ranges(&anns);
        if at_start.len() == 4 {
            break at_start;
        }
        assert!(
            Instant::now() < until,
            "discovery never saw all four nodes: {at_start:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        at_start.values().all(|r| r.len() <= MAX_BLOCKS),
        "{at_start:?}"
    );
    assert_eq!(covered(n, at_start.values().copied()), n, "{at_start:?}");
    for node in &net.nodes {
        eprintln!("node {} chose {}", node.index, node.blocks);
    }

    // The node (not the bootstrap one) whose departure uncovers the most blocks.
    let peer_bytes = |i: usize| {
        net.nodes[i]
            .peer
            .parse::<libp2p::PeerId>()
            .unwrap()
            .to_bytes()
    };
    let uncovered_without = |i: usize| {
        let me = peer_bytes(i);
        n - covered(
            n,
            at_start.iter().filter(|(p, _)| **p != me).map(|(_, r)| *r),
        )
    };
    let victim = (1..4).max_by_key(|&i| uncovered_without(i)).unwrap();
    let gap = uncovered_without(victim);
    assert!(
        gap > 0,
        "no node's loss breaks the route, so the test would prove nothing: {at_start:?}"
    );
    let victim_peer = peer_bytes(victim);
    eprintln!(
        "stopping node {victim} ({}), without which {gap} blocks are off every route",
        net.nodes[victim].blocks
    );
    net.stop_node(victim, false);
    let stopped = Instant::now();

    // Poll (bounded) until the live, non-draining announcements cover the model again.
    let recovered = loop {
        let anns = client.discover(&net.model_id, n).await.unwrap_or_default();
        let serving: Vec<&Announcement> = anns
            .iter()
            .filter(|a| a.peer_id != victim_peer && !a.energy.power_saving)
            .collect();
        if serving.len() == 3 && covered(n, serving.iter().map(|a| a.blocks)) == n {
            break serving
                .iter()
                .map(|a| (a.peer_id.clone(), a.blocks))
                .collect::<Vec<_>>();
        }
        assert!(
            stopped.elapsed() < RECOVER_BOUND,
            "not re-covered within {RECOVER_BOUND:?}: {:?} (logs in {})",
            serving.iter().map(|a| a.blocks).collect::<Vec<_>>(),
            net.log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = stopped.elapsed();
    eprintln!(
        "re-covered in {:.1} s: {:?}",
        took.as_secs_f64(),
        recovered.iter().map(|(_, r)| *r).collect::<Vec<_>>()
    );
    let moved = recovered
        .iter()
        .filter(|(p, r)| at_start.get(p) != Some(r))
        .count();
    assert!(moved >= 1, "someone must have moved to close the gap");

    // A generation through the survivors equals one in a single process.
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
    let boot: Vec<String> = net
        .nodes
        .iter()
        .filter(|nd| nd.index != victim)
        .flat_map(|nd| ["--bootstrap".to_string(), nd.listen.clone()])
        .collect();
    let boot: Vec<&str> = boot.iter().map(String::as_str).collect();
    let swarm = client_json(&[&common[..], &boot[..]].concat());
    assert_eq!(tokens(&swarm), tokens(&local));
    client.stop().await;
}
