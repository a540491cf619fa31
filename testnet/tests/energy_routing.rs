//! Energy-aware routing in a live swarm: three real node processes serve the whole model on
//! emulated batteries (accelerated clock), one of them harvesting far less. Each node derives its
//! own max job rate from its semi-Markov model and gossips it; the client's long-term policy must
//! then send that node a smaller share of real sessions than the uniform policy does.

mod common;

use std::time::{Duration, Instant};

use common::{build_binaries, opts};
use sunswarm_client::swarm::{SwarmClient, SwarmSession};
use sunswarm_energy::policy::{LongTerm, Policy, Uniform};
use sunswarm_models::{HiddenStates, Model, ModelSource};
use sunswarm_protocol::{BlockRange, DType, PowerSetting};
use sunswarm_testnet::net::{Split, Testnet};

/// Sessions per policy.
const SESSIONS: usize = 40;

fn emulated(harvest: &str) -> Vec<String> {
    [
        "--energy",
        // A large battery, full at the start: nobody reaches power saving during the test, so
        // the shares reflect the routing weights alone.
        &format!("emulated:capacity=1000,harvest=uniform({harvest}),initial=1000,slot=100"),
        "--power-mode",
        "15w",
        "--clock-scale",
        "2000",
        "--gossip-interval",
        "0.5",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_term_policy_sends_fewer_sessions_to_the_low_harvest_node() {
    build_binaries();
    let mut o = opts("random:tiny", Split::Even, 1, 30.0);
    o.node_args = emulated("6,14");
    let mut net = Testnet::start(&o).await.unwrap();
    let all = BlockRange {
        start: 0,
        end: net.n_layers,
    };
    net.add_node_with(all, &emulated("6,14")).unwrap();
    let low = net.add_node_with(all, &emulated("0,2")).unwrap();
    let low_peer = net.nodes[low].peer.parse::<libp2p::PeerId>().unwrap();
    let (model_id, n_layers) = (net.model_id, net.n_layers);

    let client = SwarmClient::connect(
        vec![net.bootstrap.parse().unwrap()],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    // Wait until all three are discovered with their emulated energy state.
    let until = Instant::now() + Duration::from_secs(60);
    let anns = loop {
        let anns = client.discover(&model_id, n_layers).await.unwrap();
        if anns.len() == 3
            && anns
                .iter()
                .all(|a| a.energy.power_mode == PowerSetting::Fixed { watts: 15 })
        {
            break anns;
        }
        assert!(Instant::now() < until, "3 emulated nodes never announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rate = |a: &sunswarm_protocol::Announcement| a.energy.max_job_rate;
    let low_rate = anns
        .iter()
        .find(|a| a.peer_id == low_peer.to_bytes())
        .map(rate)
        .unwrap();
    assert!(
        anns.iter()
            .filter(|a| a.peer_id != low_peer.to_bytes())
            .all(|a| rate(a) > low_rate),
        "the low-harvest node should announce the lowest max job rate: {:?}",
        anns.iter().map(rate).collect::<Vec<_>>()
    );

    let dim = Model::open(&ModelSource::parse("random:tiny").unwrap())
        .unwrap()
        .config()
        .hidden_size;
    let mut to_low = Vec::new();
    let policies: [&dyn Policy; 2] = [&Uniform, &LongTerm];
    for policy in policies {
        let mut n = 0usize;
        for _ in 0..SESSIONS {
            let route = client
                .choose_route(&model_id, n_layers, policy, &[])
                .await
                .unwrap();
            assert_eq!(route.len(), 1);
            let mut s =
                SwarmSession::open(client.network(), model_id, route.clone(), DType::F32, 4)
                    .await
                    .unwrap();
            let x = HiddenStates::new(1, dim, vec![0.25; dim]).unwrap();
            s.forward_hidden(&x).await.unwrap();
            s.close().await;
            if route[0].peer_id == low_peer.to_bytes() {
                n += 1;
            }
        }
        to_low.push(n);
    }
    eprintln!(
        "sessions to the low-harvest node out of {SESSIONS}: uniform {}, long-term {} \
         (max job rates: low {low_rate}, others {:?})",
        to_low[0],
        to_low[1],
        anns.iter().map(rate).collect::<Vec<_>>()
    );
    // Uniform sends it Bin(40, 1/3) sessions (mean 13.3); long-term weights it by its rate,
    // an order of magnitude below the others'. Long-term reaching uniform's count has a
    // probability far below 1e-4 for a correct client.
    assert!(
        to_low[1] < to_low[0],
        "long-term sent the low-harvest node {} sessions, uniform {}",
        to_low[1],
        to_low[0]
    );
    client.stop().await;
}
