//! `--announce-addr`: a node behind port forwarding (here a TCP forwarder in the test) announces
//! the forwarded address; peers dial it there, and a session through it works.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use libp2p::{Multiaddr, StreamProtocol};
use sunswarm_net::{self as net, NetConfig};
use sunswarm_node::compute::ShiftRunner;
use sunswarm_node::energy::Mains;
use sunswarm_node::node::{self, NodeConfig};
use sunswarm_protocol::io::{read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, BlockRange, DType, Forward, Hop, OpenSession, Request, Response,
    SessionId, TensorFrame,
};

/// Accepts on a fresh port and pipes every connection to `to`; counts the connections.
async fn forwarder(to: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_dial_the_announced_address() {
    // The node listens on a port of its own; "the router" forwards another port to it.
    let listen_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (forwarded, connections) = forwarder(listen_port).await;
    let announce: Multiaddr = format!("/ip4/127.0.0.1/tcp/{forwarded}").parse().unwrap();
    let cfg = NodeConfig {
        net: NetConfig {
            listen: vec![format!("/ip4/127.0.0.1/tcp/{listen_port}").parse().unwrap()],
            announce: vec![announce.clone()],
            ..NetConfig::default()
        },
        model_id: [3; 32],
        n_layers: 2,
        blocks: BlockRange::new(0, 2).unwrap(),
        backend: "test".into(),
        max_sessions: 4,
        max_tokens: 64,
        announce_ttl: Duration::from_secs(30),
        gossip_interval: Duration::from_secs(1),
        next_hop_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        limits: Default::default(),
        max_kv_mib: 16,
        batch: Default::default(),
        throughput: 1.0,
    };
    let node = node::start(
        cfg,
        Arc::new(ShiftRunner { dim: 2, shift: 1.0 }),
        Arc::new(Mains),
    )
    .await
    .unwrap();
    // What it announces (and prints for others to dial) is the forwarded address only.
    let addrs = node.listen_addrs();
    assert_eq!(
        addrs,
        vec![announce.clone().with_p2p(node.peer_id()).unwrap()]
    );

    // A client that knows only the announcement joins and runs a session through it.
    let (client, ev) = net::new(NetConfig {
        listen: Vec::new(),
        bootstrap: addrs.clone(),
        dht_server: false,
        ..NetConfig::default()
    })
    .unwrap();
    tokio::spawn(ev.run());
    client
        .wait_ready(true, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "nobody dialled the forwarded port"
    );
    client
        .add_addresses(node.peer_id(), addrs.clone())
        .await
        .unwrap();
    let mut s = client
        .control()
        .open_stream(node.peer_id(), StreamProtocol::new(ACTIVATIONS_PROTOCOL))
        .await
        .unwrap();
    let session = SessionId([5; 16]);
    let open = Request::Open(OpenSession {
        session,
        model_id: [3; 32],
        route: vec![Hop {
            peer_id: node.peer_id().to_bytes(),
            addrs: addrs.iter().map(Multiaddr::to_string).collect(),
            blocks: BlockRange::new(0, 2).unwrap(),
        }],
        hop: 0,
        dtype: DType::F32,
        max_tokens: 8,
        client: client.local_peer_id().to_bytes(),
        token_deadline_us: 0,
        resume: false,
    });
    write_message(&mut s, &open).await.unwrap();
    let answer: Response = read_message(&mut s, &mut Vec::new()).await.unwrap();
    assert_eq!(answer, Response::Opened { session });
    let mut out = client
        .control()
        .open_stream(node.peer_id(), StreamProtocol::new(ACTIVATIONS_PROTOCOL))
        .await
        .unwrap();
    write_message(&mut out, &Request::Attach { session })
        .await
        .unwrap();
    let answer: Response = read_message(&mut out, &mut Vec::new()).await.unwrap();
    assert_eq!(answer, Response::Opened { session });
    let f = Request::Forward(Forward {
        session,
        step: 0,
        position: 0,
        hidden: TensorFrame::from_f32(&[1, 2], &[1.0, 2.0], DType::F32).unwrap(),
        receipts: Vec::new(),
        stepwise: false,
        tap: false,
        taps: Vec::new(),
        draw: None,
    });
    write_message(&mut s, &f).await.unwrap();
    let Response::Hidden { hidden, .. } = read_message(&mut out, &mut Vec::new()).await.unwrap()
    else {
        panic!("no output");
    };
    assert_eq!(hidden.to_hidden(2).unwrap().0, 1);
}
