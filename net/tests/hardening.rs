//! What strangers can make a host keep, on real hosts over loopback: a DHT record stored in
//! another peer's name is refused, and a gossip message that fails validation stops at the
//! first honest peer (it is not relayed), while a valid one travels on; a node's view passes on
//! only what its gossip holds, and a peer known from views alone is not routable.

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use sunswarm_net::{self as net, NetConfig, Network, announce};
use sunswarm_protocol::{Announcement, BlockRange, EnergyState, codec, dht};

const MODEL: [u8; 32] = [7; 32];

async fn host(
    bootstrap: Vec<libp2p::Multiaddr>,
    dht_server: bool,
) -> (Network, Vec<libp2p::Multiaddr>) {
    let cfg = NetConfig {
        bootstrap: bootstrap.clone(),
        dht_server,
        ..NetConfig::default()
    };
    let (net, ev) = net::new(cfg).unwrap();
    tokio::spawn(ev.run());
    let addrs = net
        .wait_ready(!bootstrap.is_empty(), Duration::from_secs(20))
        .await
        .unwrap();
    let me = net.local_peer_id();
    let addrs = addrs.into_iter().map(|a| a.with_p2p(me).unwrap()).collect();
    (net, addrs)
}

fn announcement(peer: &libp2p::PeerId, now: u64) -> Announcement {
    Announcement {
        peer_id: peer.to_bytes(),
        addrs: vec!["/ip4/127.0.0.1/tcp/9".into()],
        model_id: MODEL,
        n_layers: 4,
        blocks: BlockRange { start: 0, end: 4 },
        backend: "cpu".into(),
        throughput: 1.0,
        max_sessions: 1,
        active_sessions: 0,
        energy: EnergyState::mains(),
        timestamp_ms: now,
        expires_ms: now + 30_000,
    }
}

/// Publishes `n`'s own announcement, fresh and validly signed, on `topic`.
async fn publish_own(n: &Network, topic: &str) {
    let signed = n
        .sign_announcement(announcement(&n.local_peer_id(), net::now_ms()))
        .unwrap();
    n.publish(topic.to_string(), codec::encode(&signed).unwrap())
        .await
        .unwrap();
}

async fn poll<T>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_another_peers_name_is_refused_and_the_peers_own_is_kept() {
    let (server, addrs) = host(vec![], true).await;
    let (victim, _) = host(addrs.clone(), true).await;
    let (forger, _) = host(addrs, true).await;
    let key = dht::peer_record_key(&MODEL, &victim.local_peer_id().to_bytes());
    // The victim's own signed record.
    let real = victim
        .sign_announcement(announcement(&victim.local_peer_id(), net::now_ms()))
        .unwrap();
    victim
        .put_record(key, codec::encode(&real).unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    poll(
        "the server to store the real record",
        Duration::from_secs(20),
        async || (server.stats().await.unwrap().dht_records >= 1).then_some(()),
    )
    .await;
    // The forger stores a newer one in the victim's name, pointing at its own address: signed
    // with its own key, and (to be sure) with a timestamp from the future.
    let mut fake = announcement(&victim.local_peer_id(), net::now_ms() + 3_600_000);
    fake.addrs = vec!["/ip4/6.6.6.6/tcp/6".into()];
    let forged = announce::sign(&Keypair::generate_ed25519(), fake).unwrap();
    forger
        .put_record(
            key,
            codec::encode(&forged).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    poll(
        "the server to refuse the forged record",
        Duration::from_secs(20),
        async || (server.stats().await.unwrap().records_refused >= 1).then_some(()),
    )
    .await;
    // What a reader finds under the victim's key is the real announcement only.
    let found: Vec<Announcement> = server
        .get_records(key)
        .await
        .unwrap()
        .iter()
        .filter_map(|v| announce::decode_record(&key, v, net::now_ms()).ok())
        .collect();
    assert!(!found.is_empty(), "the real record is gone");
    assert!(
        found.iter().all(|a| a.addrs == real.announcement.addrs),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_gossip_stops_at_the_first_honest_peer() {
    // a -- relay -- c: a and c are DHT clients, so they only ever talk through the relay.
    let (relay, addrs) = host(vec![], true).await;
    let (a, _) = host(addrs.clone(), false).await;
    let (c, _) = host(addrs, false).await;
    let topic = dht::energy_topic(&MODEL);
    for n in [&relay, &a, &c] {
        n.subscribe(topic.clone()).await.unwrap();
    }
    let me = a.local_peer_id();
    // Invalid: tampered after signing, and (separately) from the future.
    let mut tampered = a
        .sign_announcement(announcement(&me, net::now_ms()))
        .unwrap();
    tampered.announcement.energy.max_job_rate = 1e9;
    let future = a
        .sign_announcement(announcement(&me, net::now_ms() + 3_600_000))
        .unwrap();
    // Valid, sent last: once c has it, the invalid ones had their chance to arrive.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for bad in [&tampered, &future] {
            a.publish(topic.clone(), codec::encode(bad).unwrap())
                .await
                .unwrap();
        }
        publish_own(&a, &topic).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = c.gossip_view().await.unwrap();
        if !seen.is_empty() {
            assert_eq!(seen.len(), 1);
            assert!(seen[0].energy.max_job_rate <= 1.0);
            assert!(seen[0].timestamp_ms <= net::now_ms());
            break;
        }
        assert!(
            Instant::now() < until,
            "the valid announcement never reached c"
        );
    }
    let r = relay.stats().await.unwrap();
    assert!(r.gossip_rejected >= 2, "the relay refused nothing: {r:?}");
    let cs = c.stats().await.unwrap();
    assert_eq!(
        cs.gossip_rejected, 0,
        "an invalid message was relayed to c: {cs:?}"
    );
}

/// A node passes on the signed announcements its gossip holds to a client that asks for its
/// view; the client checks each one, and routes only through peers the DHT names as providers:
/// a peer known from views alone (as a flood of made-up peers would be) is not routable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_pass_on_signed_gossip_and_only_providers_become_routable() {
    let (relay, addrs) = host(vec![], true).await;
    let views = relay.control().accept(net::view::protocol()).unwrap();
    tokio::spawn(net::view::serve(relay.clone(), views));
    let (a, _) = host(addrs.clone(), true).await;
    let (c, _) = host(addrs, false).await;
    let topic = dht::energy_topic(&MODEL);
    for n in [&relay, &a] {
        n.subscribe(topic.clone()).await.unwrap();
    }
    let me = a.local_peer_id();
    let heard = poll(
        "a's announcement in the relay's view",
        Duration::from_secs(30),
        async || {
            publish_own(&a, &topic).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let heard = net::view::fetch_from_connected(&c, &MODEL, 2).await;
            (!heard.is_empty()).then_some(heard)
        },
    )
    .await;
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].peer_id, me.to_bytes());
    // Another model's view is empty.
    let other = net::view::fetch(&c, relay.local_peer_id(), &[1; 32])
        .await
        .expect("the relay answers");
    assert!(other.is_empty());
    // Heard but no provider entry: not routable.
    let found = net::discovery::discover_heard(&c, &MODEL, 4, 8, heard.clone())
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");
    // Once a provides block 0, the walk takes its announcement from what was heard.
    a.start_providing(dht::block_key(&MODEL, 0)).await.unwrap();
    let found = poll("a as a provider", Duration::from_secs(30), async || {
        let found = net::discovery::discover_heard(&c, &MODEL, 4, 8, heard.clone())
            .await
            .unwrap();
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].peer_id, me.to_bytes());
}
