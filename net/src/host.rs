//! The libp2p host that nodes and clients share: TCP + noise + yamux, identify, Kademlia (records
//! and provider keys), gossipsub (announcements with fresh energy state) and raw streams
//! (activations). One [`EventLoop`] owns the `Swarm`; everything else talks to it through the
//! cloneable [`Network`] handle, whose methods send a [`Command`] with a oneshot reply (the
//! rust-libp2p `file-sharing` pattern). Activation streams bypass the loop entirely: they are
//! opened and accepted through the `libp2p_stream::Control` the handle carries.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::{Transport, upgrade};
use libp2p::kad::{
    self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, identity, noise, tcp, yamux,
};
use sunswarm_protocol::{Announcement, codec};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Kademlia protocol name: a separate DHT from the public IPFS one.
pub const KAD_PROTOCOL: &str = "/sunswarm/kad/1";
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/sunswarm/id/1";

/// Why the host could not be built or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("building the libp2p transport: {0}")]
    Transport(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dialing {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("the network event loop has stopped")]
    Stopped,
}

/// How to build the host.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Identity; a fresh ed25519 key when `None`.
    pub keypair: Option<identity::Keypair>,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Nodes serve the DHT (Kademlia server mode); clients only query it.
    pub dht_server: bool,
    /// Time-to-live of provider keys and records this host publishes.
    pub record_ttl: Duration,
    /// How long a DHT query may run.
    pub query_timeout: Duration,
    /// A private swarm's pre-shared key (`--swarm-key`): every connection is encrypted with it
    /// before anything else is said, so peers without it cannot even complete a handshake.
    /// Private swarms run over TCP only (libp2p's pnet does not wrap QUIC).
    pub swarm_key: Option<PreSharedKey>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            keypair: None,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            dht_server: true,
            record_ttl: Duration::from_secs(30),
            query_timeout: Duration::from_secs(10),
            swarm_key: None,
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// Requests to the event loop.
enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    RoutingPeers(oneshot::Sender<usize>),
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        done: oneshot::Sender<()>,
    },
    PutRecord {
        key: [u8; 32],
        value: Vec<u8>,
        ttl: Duration,
    },
    RemoveRecord {
        key: [u8; 32],
    },
    StartProviding {
        key: [u8; 32],
    },
    StopProviding {
        key: [u8; 32],
    },
    GetProviders {
        key: [u8; 32],
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    GetRecords {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
    Subscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
    },
    GossipView(oneshot::Sender<Vec<Announcement>>),
    Shutdown {
        grace: Duration,
        reply: oneshot::Sender<()>,
    },
}

type ProvidersQuery = (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>);
type RecordsQuery = (Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>);

/// Cloneable handle to the host.
#[derive(Clone)]
pub struct Network {
    tx: mpsc::Sender<Command>,
    local_peer: PeerId,
    control: libp2p_stream::Control,
}

/// Owns the swarm; run it with [`EventLoop::run`] on its own task.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    pending_providers: HashMap<QueryId, ProvidersQuery>,
    pending_records: HashMap<QueryId, RecordsQuery>,
    /// Latest announcement gossiped by each peer (newest timestamp wins).
    gossip: HashMap<PeerId, Announcement>,
    bootstrapped: bool,
}

/// The protocols every host runs, over whichever transport.
fn behaviour(
    key: &identity::Keypair,
    cfg: &NetConfig,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kcfg.set_query_timeout(cfg.query_timeout);
    kcfg.set_record_ttl(Some(cfg.record_ttl));
    kcfg.set_provider_record_ttl(Some(cfg.record_ttl));
    // Nodes refresh their own announcements before expiry (see `announcer`), so the DHT's own
    // republication would only resurrect records of nodes that died.
    kcfg.set_publication_interval(None);
    kcfg.set_replication_interval(None);
    kcfg.set_provider_publication_interval(None);
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kcfg);
    kad.set_mode(Some(if cfg.dht_server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .max_transmit_size(64 * 1024)
        .build()?;
    let gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)?;
    let identify = identify::Behaviour::new(identify::Config::new(
        IDENTIFY_PROTOCOL.to_string(),
        key.public(),
    ));
    Ok(Behaviour {
        kad,
        gossipsub,
        identify,
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// Reads a swarm key file in the go-ipfs `swarm.key` format (`/key/swarm/psk/1.0.0/`, `/base16/`,
/// 64 hex digits).
pub fn read_swarm_key(path: &std::path::Path) -> Result<PreSharedKey, NetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NetError::Transport(format!("reading swarm key {}: {e}", path.display())))?;
    text.parse().map_err(|e| {
        NetError::Transport(format!(
            "swarm key {}: {e} (expected /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits)",
            path.display()
        ))
    })
}

/// Builds the host, starts listening and dials the bootstrap peers.
pub fn new(cfg: NetConfig) -> Result<(Network, EventLoop), NetError> {
    let keypair = cfg
        .keypair
        .clone()
        .unwrap_or_else(identity::Keypair::generate_ed25519);
    let local_peer = keypair.public().to_peer_id();
    let transport_err = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(120));
    let mut swarm = match cfg.swarm_key {
        None => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport_err(&e))?
            .with_quic()
            .with_behaviour(|key| behaviour(key, &cfg))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(idle)
            .build(),
        Some(psk) => builder
            .with_other_transport(
                |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let noise = noise::Config::new(key)?;
                    Ok(
                        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                            .upgrade(upgrade::Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex(yamux::Config::default()),
                    )
                },
            )
            .map_err(|e| transport_err(&e))?
            .with_behaviour(|key| behaviour(key, &cfg))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(idle)
            .build(),
    };
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    for addr in &cfg.bootstrap {
        swarm.dial(addr.clone()).map_err(|e| NetError::Dial {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    }
    let control = swarm.behaviour().stream.new_control();
    let (tx, rx) = mpsc::channel(256);
    let event_loop = EventLoop {
        swarm,
        rx,
        pending_providers: HashMap::new(),
        pending_records: HashMap::new(),
        gossip: HashMap::new(),
        bootstrapped: false,
    };
    Ok((
        Network {
            tx,
            local_peer,
            control,
        },
        event_loop,
    ))
}

impl Network {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer
    }

    /// A stream control for opening and accepting activation streams.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Addresses the host listens on (empty until the listeners are up).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Peers in the Kademlia routing table.
    pub async fn routing_peers(&self) -> Result<usize, NetError> {
        self.ask(Command::RoutingPeers).await
    }

    /// Polls until the listeners are up and, with bootstrap peers, the DHT knows a peer.
    pub async fn wait_ready(
        &self,
        need_peers: bool,
        deadline: Duration,
    ) -> Result<Vec<Multiaddr>, NetError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let addrs = self.listen_addrs().await?;
            let peers_ok = !need_peers || self.routing_peers().await? > 0;
            if (!addrs.is_empty() || need_peers) && peers_ok {
                return Ok(addrs);
            }
            if tokio::time::Instant::now() >= until {
                return Err(NetError::Dial {
                    addr: Multiaddr::empty(),
                    reason: format!("no listener or DHT peer within {deadline:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets the swarm dial `peer` at these addresses (e.g. the next hop of a route), and dials it
    /// there unless a connection exists or is being made.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        // Answered once the swarm holds them: a dial right after this call must find them
        // (a stream opened through libp2p-stream asks the swarm for the peer's addresses).
        self.ask(|done| Command::AddAddresses { peer, addrs, done })
            .await
    }

    pub async fn put_record(
        &self,
        key: [u8; 32],
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), NetError> {
        self.send(Command::PutRecord { key, value, ttl }).await
    }

    pub async fn remove_record(&self, key: [u8; 32]) -> Result<(), NetError> {
        self.send(Command::RemoveRecord { key }).await
    }

    pub async fn start_providing(&self, key: [u8; 32]) -> Result<(), NetError> {
        self.send(Command::StartProviding { key }).await
    }

    pub async fn stop_providing(&self, key: [u8; 32]) -> Result<(), NetError> {
        self.send(Command::StopProviding { key }).await
    }

    /// Every provider of `key` the DHT query found.
    pub async fn get_providers(&self, key: [u8; 32]) -> Result<HashSet<PeerId>, NetError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    /// Every copy of the record under `key` the DHT query found (possibly different versions).
    pub async fn get_records(&self, key: [u8; 32]) -> Result<Vec<Vec<u8>>, NetError> {
        self.ask(|reply| Command::GetRecords { key, reply }).await
    }

    pub async fn subscribe(&self, topic: String) -> Result<(), NetError> {
        self.send(Command::Subscribe { topic }).await
    }

    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Publish { topic, data }).await
    }

    /// Latest gossiped announcement of each peer (validated, signed by that peer).
    pub async fn gossip_view(&self) -> Result<Vec<Announcement>, NetError> {
        self.ask(Command::GossipView).await
    }

    /// Keeps the loop running for `grace` (so queued messages, like a leave announcement, go
    /// out), then stops it.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), NetError> {
        self.ask(|reply| Command::Shutdown { grace, reply }).await
    }
}

impl EventLoop {
    /// Runs until every [`Network`] handle is dropped or [`Network::shutdown`] is called.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.rx.recv() => match cmd {
                    None => return,
                    Some(Command::Shutdown { grace, reply }) => {
                        let until = tokio::time::sleep(grace);
                        tokio::pin!(until);
                        loop {
                            tokio::select! {
                                ev = self.swarm.select_next_some() => self.on_event(ev),
                                _ = &mut until => break,
                            }
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd),
                },
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::RoutingPeers(reply) => {
                let n = b.kad.kbuckets().map(|k| k.num_entries()).sum();
                let _ = reply.send(n);
            }
            Command::AddAddresses { peer, addrs, done } => {
                // No behaviour here keeps an address book that a bare dial by peer id would
                // consult (Kademlia only knows peers it learned itself), so a stream to a peer
                // the DHT has not met yet failed with "no addresses". Dial now, at these
                // addresses: the stream opened next rides this connection (libp2p-stream's own
                // dial sees one in progress and waits for it).
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => debug!(%peer, "dialling: {e}"),
                }
                let _ = done.send(());
            }
            Command::PutRecord { key, value, ttl } => {
                let mut rec = Record::new(RecordKey::new(&key), value);
                rec.expires = Some(std::time::Instant::now() + ttl);
                if let Err(e) = b.kad.put_record(rec, Quorum::One) {
                    warn!("storing a DHT record locally failed: {e}");
                }
            }
            Command::RemoveRecord { key } => b.kad.remove_record(&RecordKey::new(&key)),
            Command::StartProviding { key } => {
                if let Err(e) = b.kad.start_providing(RecordKey::new(&key)) {
                    warn!("providing a DHT key failed: {e}");
                }
            }
            Command::StopProviding { key } => b.kad.stop_providing(&RecordKey::new(&key)),
            Command::GetProviders { key, reply } => {
                let id = b.kad.get_providers(RecordKey::new(&key));
                self.pending_providers.insert(id, (HashSet::new(), reply));
            }
            Command::GetRecords { key, reply } => {
                let id = b.kad.get_record(RecordKey::new(&key));
                self.pending_records.insert(id, (Vec::new(), reply));
            }
            Command::Subscribe { topic } => {
                if let Err(e) = b.gossipsub.subscribe(&gossipsub::IdentTopic::new(topic)) {
                    warn!("gossip subscribe failed: {e}");
                }
            }
            Command::Publish { topic, data } => {
                // No subscribed peer yet is normal for the first node of a swarm.
                if let Err(e) = b.gossipsub.publish(gossipsub::IdentTopic::new(topic), data) {
                    debug!("gossip publish: {e}");
                }
            }
            Command::GossipView(reply) => {
                let _ = reply.send(self.gossip.values().cloned().collect());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => debug!(%address, "listening"),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                // Only peers that speak our DHT protocol belong in the routing table; clients
                // (Kademlia client mode) do not announce it.
                if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                    if !self.bootstrapped {
                        self.bootstrapped = true;
                        let _ = kad.bootstrap();
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => {
                self.on_query(id, result, step.last);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                self.on_gossip(message);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, "outgoing connection failed: {error}");
            }
            _ => {}
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(res) => {
                let done = match res {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        if let Some((found, _)) = self.pending_providers.get_mut(&id) {
                            found.extend(providers);
                        }
                        last
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        debug!("provider query ended: {e}");
                        true
                    }
                };
                if done && let Some((found, reply)) = self.pending_providers.remove(&id) {
                    let _ = reply.send(found);
                }
            }
            QueryResult::GetRecord(res) => {
                let done = match res {
                    Ok(GetRecordOk::FoundRecord(r)) => {
                        if let Some((found, _)) = self.pending_records.get_mut(&id) {
                            found.push(r.record.value);
                        }
                        last
                    }
                    Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        debug!("record query ended: {e}");
                        true
                    }
                };
                if done && let Some((found, reply)) = self.pending_records.remove(&id) {
                    let _ = reply.send(found);
                }
            }
            QueryResult::PutRecord(Err(e)) => debug!("record replication: {e}"),
            QueryResult::StartProviding(Err(e)) => debug!("provider announcement: {e}"),
            QueryResult::Bootstrap(Ok(_)) if last => info!("DHT bootstrapped"),
            _ => {}
        }
    }

    fn on_gossip(&mut self, message: gossipsub::Message) {
        let Some(source) = message.source else { return };
        let ann: Announcement = match codec::decode(&message.data) {
            Ok(a) => a,
            Err(e) => {
                debug!(%source, "ignoring malformed gossip: {e}");
                return;
            }
        };
        // Signed gossip: an announcement counts only when its author is the peer it describes.
        if PeerId::from_bytes(&ann.peer_id).ok() != Some(source) {
            debug!(%source, "ignoring gossip announcing another peer");
            return;
        }
        let newer = self
            .gossip
            .get(&source)
            .is_none_or(|old| old.timestamp_ms <= ann.timestamp_ms);
        if newer {
            self.gossip.insert(source, ann);
        }
    }
}
