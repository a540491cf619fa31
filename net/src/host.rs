//! The libp2p host that nodes and clients share: TCP + noise + yamux, identify, Kademlia (records
//! and provider keys), gossipsub (announcements with fresh energy state), raw streams
//! (activations) and connection limits. One [`EventLoop`] owns the `Swarm`; everything else talks to it through the
//! cloneable [`Network`] handle, whose methods send a [`Command`] with a oneshot reply (the
//! rust-libp2p `file-sharing` pattern). Activation streams bypass the loop entirely: they are
//! opened and accepted through the `libp2p_stream::Control` the handle carries.
//!
//! An open swarm lets strangers connect, so everything a peer can make this host keep is
//! bounded: connections (per peer and in all, [`Limits`]), streams per connection, the gossip
//! table ([`crate::gossip`]: capped per relaying peer and in all, expired entries pruned) and the
//! DHT store (records are checked before they are stored, [`crate::announce::check_record`];
//! provider keys are capped per provider; expired records and providers are purged every
//! [`PURGE_INTERVAL`]). Gossip runs in validation mode: a message is relayed only once it has
//! been checked, so an invalid one stops at the first honest peer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::{Transport, upgrade};
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{
    self, GetProvidersOk, GetRecordOk, InboundRequest, ProviderRecord, QueryId, QueryResult,
    Quorum, Record, RecordKey,
};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, gossipsub,
    identify, identity, noise, relay, tcp, yamux,
};
use sunswarm_protocol::{Announcement, ModelDigest, SignedAnnouncement};
use tokio::sync::{mpsc, oneshot, watch};

use crate::reach::{Nat, Reachability};
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
    #[error("signing the announcement: {0}")]
    Sign(#[from] crate::announce::AnnounceError),
}

/// How often expired DHT records and providers and expired gossip entries are dropped.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(5);
/// Most DHT records a host stores (announcements are a few hundred bytes, at most
/// [`MAX_RECORD_BYTES`]).
pub const MAX_RECORDS: usize = 4096;
/// Largest DHT record value a host stores; an announcement with 16 addresses of 256 bytes is
/// under 5 KiB.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Most distinct provider keys a host stores, and most that one provider may hold (a node
/// provides one key per block it serves).
pub const MAX_PROVIDER_KEYS: usize = 16 * 1024;
/// Most providers a host stores per key (libp2p's default is 20). Provider keys outlive their
/// nodes' records (`NetConfig::provider_ttl`), so under churn some are of nodes that left; room
/// for more keeps new replicas of a popular block from being turned away by them.
pub const MAX_PROVIDERS_PER_KEY: usize = 64;
/// Most provider keys one peer may make this host store.
pub const MAX_KEYS_PER_PROVIDER: usize = 1024;

/// Connection and stream limits of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections still in their handshake, coming in.
    pub max_pending_incoming: u32,
    /// Established connections coming in.
    pub max_established_incoming: u32,
    /// Established connections with one peer (both directions).
    pub max_established_per_peer: u32,
    /// Multiplexed streams on one connection.
    pub max_streams_per_connection: usize,
    /// A connection with no stream open is closed after this long.
    pub idle_connection: Duration,
    /// A connection must complete its handshake within this.
    pub handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_incoming: 256,
            max_established_incoming: 2048,
            max_established_per_peer: 8,
            max_streams_per_connection: 256,
            idle_connection: Duration::from_secs(30),
            handshake: Duration::from_secs(5),
        }
    }
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
    /// Time-to-live of the records this host publishes and stores (announcements: liveness).
    pub record_ttl: Duration,
    /// Time-to-live of provider keys (who serves which block: changes only when a node comes or
    /// goes). Longer than the records': a provider whose record expired is dropped by the walk
    /// anyway, and re-providing every key at the records' pace was most of an idle node's DHT
    /// traffic.
    pub provider_ttl: Duration,
    /// How long a DHT query may run.
    pub query_timeout: Duration,
    /// A private swarm's pre-shared key (`--swarm-key`): every connection is encrypted with it
    /// before anything else is said, so peers without it cannot even complete a handshake.
    /// Private swarms run over TCP only (libp2p's pnet does not wrap QUIC).
    pub swarm_key: Option<PreSharedKey>,
    /// Connection and stream limits.
    pub limits: Limits,
    /// The addresses others should dial (`--announce-addr`: port forwarding, a proxy, a public
    /// address the host cannot see). When given, identify reports these instead of the listen
    /// addresses, so peers learn only them.
    pub announce: Vec<Multiaddr>,
    /// Serve as a circuit relay v2 for peers that cannot be dialled (`--relay-server`): the
    /// host provides `dht::relay_key` and relays their connections within [`RelayLimits`].
    pub relay_server: Option<RelayLimits>,
}

/// What a relay lends the peers that listen through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers holding a reservation at once.
    pub max_reservations: usize,
    /// Relayed connections at once, in all and per peer.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// A relayed connection is closed after this long or this many bytes (each direction).
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// libp2p's defaults (2 minutes, 128 KiB per circuit) are sized for a hole punch's
    /// handshake; a relayed swarm peer carries its sessions' activations over the circuit, so a
    /// circuit lasts an hour and carries up to 1 GiB.
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 1 << 30,
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            keypair: None,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            dht_server: true,
            record_ttl: Duration::from_secs(30),
            provider_ttl: Duration::from_secs(300),
            query_timeout: Duration::from_secs(10),
            swarm_key: None,
            limits: Limits::default(),
            announce: Vec::new(),
            relay_server: None,
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
    /// Dialling and listening through relays (every host: a client must reach relayed nodes).
    relay_client: relay::client::Behaviour,
    /// Relaying for others (`NetConfig::relay_server`).
    relay: Toggle<relay::Behaviour>,
    /// Hole punching over relayed connections.
    dcutr: dcutr::Behaviour,
    /// Whether this host's addresses can be dialled (nodes only; clients need not be).
    autonat: Toggle<autonat::Behaviour>,
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
    SignedView {
        model_id: ModelDigest,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
    Stats(oneshot::Sender<HostStats>),
    DirectPeers(oneshot::Sender<HashSet<PeerId>>),
    ListenViaRelay {
        relay: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Shutdown {
        grace: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// Providers found so far, peers that answered with some, and where the result goes.
type ProvidersQuery = (HashSet<PeerId>, usize, oneshot::Sender<HashSet<PeerId>>);
type RecordsQuery = (Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>);

/// A provider lookup ends once this many peers answered with providers. Every one of the
/// key's closest peers holds (about) the whole set, so asking on until the lookup runs out of
/// closer peers, as Kademlia does by default, only made a walk grow with the swarm (a client's
/// route choice took 5.6 times as long at 30 peers as at 10). Two, so that one peer that
/// answers with a partial set does not hide the rest.
pub const PROVIDER_ANSWERS: usize = 2;
/// A record lookup ends once this many copies arrived: the walk keeps the newest valid one, and
/// two keep a junk copy from one peer from hiding the record.
pub const RECORD_COPIES: usize = 2;

/// What a host holds of other peers' state (for tests and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    pub gossip_entries: usize,
    pub dht_records: usize,
    pub provider_keys: usize,
    pub connections: usize,
    /// Gossip messages refused as invalid (not relayed) and ignored (valid, not kept).
    pub gossip_rejected: u64,
    pub gossip_ignored: u64,
    /// DHT records and provider keys refused on store.
    pub records_refused: u64,
}

/// Cloneable handle to the host.
#[derive(Clone)]
pub struct Network {
    tx: mpsc::Sender<Command>,
    local_peer: PeerId,
    keypair: identity::Keypair,
    control: libp2p_stream::Control,
    reach: watch::Receiver<Reachability>,
}

/// Owns the swarm; run it with [`EventLoop::run`] on its own task.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    rx: mpsc::Receiver<Command>,
    pending_providers: HashMap<QueryId, ProvidersQuery>,
    pending_records: HashMap<QueryId, RecordsQuery>,
    /// Latest valid announcement gossiped by each peer (newest timestamp wins), bounded.
    gossip: crate::gossip::GossipTable,
    /// Provider keys stored for other peers, per provider, so each is capped and all can be
    /// purged when they expire (the store cannot list them).
    provided_by: HashMap<PeerId, HashSet<RecordKey>>,
    stats: HostStats,
    bootstrapped: bool,
    /// This host's reachability, kept current here and watched by [`Network`] handles.
    reach: watch::Sender<Reachability>,
    relay_server: bool,
    /// Connections not through a relay, per peer (for [`Network::direct_peers`]).
    direct: HashMap<PeerId, u32>,
}

/// The protocols every host runs, over whichever transport.
fn behaviour(
    key: &identity::Keypair,
    relay_client: relay::client::Behaviour,
    cfg: &NetConfig,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kcfg.set_query_timeout(cfg.query_timeout);
    kcfg.set_record_ttl(Some(cfg.record_ttl));
    kcfg.set_provider_record_ttl(Some(cfg.provider_ttl));
    // Nodes refresh their own announcements before expiry (see `announcer`), so the DHT's own
    // republication would only resurrect records of nodes that died.
    kcfg.set_publication_interval(None);
    kcfg.set_replication_interval(None);
    kcfg.set_provider_publication_interval(None);
    // Records and provider keys that others send are checked before they are stored
    // (`EventLoop::on_inbound`); and a record is stored only by the peer it announces, so the
    // caching of found records at other peers (which stores them in the finder's name) is off.
    kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
    kcfg.set_caching(kad::Caching::Disabled);
    let store = MemoryStore::with_config(
        peer,
        MemoryStoreConfig {
            max_records: MAX_RECORDS,
            max_value_bytes: MAX_RECORD_BYTES,
            max_provided_keys: MAX_PROVIDER_KEYS,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer, store, kcfg);
    kad.set_mode(Some(if cfg.dht_server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    // Validation mode: a message is relayed only after `on_gossip` accepts it.
    // Each peer receives every message about once per mesh peer (they all forward it), so the
    // mesh degree multiplies the gossip traffic: 4 (libp2p's default is 6) still reaches a
    // hundred peers in a few hops, and the heartbeat's IHAVE gossip repairs what a thin mesh
    // misses. IHAVE goes to exactly `gossip_lazy` peers per heartbeat: libp2p's default sends it
    // to a quarter of all connected topic peers when that is more, and since DHT lookups leave a
    // node connected to most of a 100-peer swarm, that was the part of an idle node's traffic
    // that grew with the swarm.
    let gcfg = gossipsub::ConfigBuilder::default()
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .mesh_outbound_min(2)
        .gossip_lazy(4)
        .gossip_factor(0.0)
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(64 * 1024)
        .build()?;
    let gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)?;
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_hide_listen_addrs(!cfg.announce.is_empty()),
    );
    let l = cfg.limits;
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(l.max_pending_incoming))
            .with_max_established_incoming(Some(l.max_established_incoming))
            .with_max_established_per_peer(Some(l.max_established_per_peer)),
    );
    let relay = cfg.relay_server.map(|r| {
        relay::Behaviour::new(
            peer,
            relay::Config {
                max_reservations: r.max_reservations,
                max_circuits: r.max_circuits,
                max_circuits_per_peer: r.max_circuits_per_peer,
                max_circuit_duration: r.max_circuit_duration,
                max_circuit_bytes: r.max_circuit_bytes,
                ..relay::Config::default()
            },
        )
    });
    // Nodes probe their own reachability and answer others' probes. The dial-back goes only to
    // the asking peer's observed IP (AutoNAT replaces any other), so allowing private and
    // loopback addresses lets a LAN or a local testnet work without letting anyone aim it
    // elsewhere.
    //
    // Not with `--announce-addr`: the operator has said where the host is reachable, and a
    // probe would confirm the listen addresses behind it as external ones, which identify then
    // tells every peer (a node behind a proxy was dialled around it that way).
    let autonat = (cfg.dht_server && cfg.announce.is_empty()).then(|| {
        autonat::Behaviour::new(
            peer,
            autonat::Config {
                boot_delay: Duration::from_secs(1),
                retry_interval: Duration::from_secs(10),
                refresh_interval: Duration::from_secs(300),
                throttle_server_period: Duration::from_secs(5),
                timeout: Duration::from_secs(10),
                only_global_ips: false,
                ..autonat::Config::default()
            },
        )
    });
    Ok(Behaviour {
        limits,
        kad,
        gossipsub,
        identify,
        stream: libp2p_stream::Behaviour::new(),
        relay_client,
        relay: relay.into(),
        dcutr: dcutr::Behaviour::new(peer),
        autonat: autonat.into(),
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
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair.clone()).with_tokio();
    let limits = cfg.limits;
    let idle =
        move |c: libp2p::swarm::Config| c.with_idle_connection_timeout(limits.idle_connection);
    let mux = move || {
        let mut y = yamux::Config::default();
        y.set_max_num_streams(limits.max_streams_per_connection);
        y
    };
    let mut swarm = match cfg.swarm_key {
        None => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                mux,
            )
            .map_err(|e| transport_err(&e))?
            .with_quic()
            .with_relay_client(noise::Config::new, mux)
            .map_err(|e| transport_err(&e))?
            .with_behaviour(|key, relay| behaviour(key, relay, &cfg))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(idle)
            .with_connection_timeout(limits.handshake)
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
                            .multiplex(mux()),
                    )
                },
            )
            .map_err(|e| transport_err(&e))?
            .with_relay_client(noise::Config::new, mux)
            .map_err(|e| transport_err(&e))?
            .with_behaviour(|key, relay| behaviour(key, relay, &cfg))
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(idle)
            .with_connection_timeout(limits.handshake)
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
    for addr in &cfg.announce {
        swarm.add_external_address(addr.clone());
    }
    for addr in &cfg.bootstrap {
        swarm.dial(addr.clone()).map_err(|e| NetError::Dial {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    }
    let control = swarm.behaviour().stream.new_control();
    let (tx, rx) = mpsc::channel(256);
    let (reach, reach_rx) = watch::channel(Reachability {
        announce: cfg.announce.clone(),
        ..Reachability::default()
    });
    let event_loop = EventLoop {
        swarm,
        rx,
        pending_providers: HashMap::new(),
        pending_records: HashMap::new(),
        gossip: crate::gossip::GossipTable::new(),
        provided_by: HashMap::new(),
        stats: HostStats::default(),
        // A client's lookups start from the bootstrap peer and fill its table as they go; its
        // own bootstrap (a lookup of its id, then one per bucket) dialled a fifth of a 100-peer
        // swarm while its first route choice ran, and kad still bootstraps it 500 ms after
        // its table last grew.
        bootstrapped: !cfg.dht_server,
        reach,
        relay_server: cfg.relay_server.is_some(),
        direct: HashMap::new(),
    };
    Ok((
        Network {
            tx,
            local_peer,
            keypair,
            control,
            reach: reach_rx,
        },
        event_loop,
    ))
}

impl Network {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer
    }

    /// Signs `ann` (this host's own announcement) with the host's key.
    pub fn sign_announcement(&self, ann: Announcement) -> Result<SignedAnnouncement, NetError> {
        Ok(crate::announce::sign(&self.keypair, ann)?)
    }

    /// Signs `message` with the host's key (receipts, errors).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, NetError> {
        self.keypair
            .sign(message)
            .map_err(|e| NetError::Sign(crate::announce::AnnounceError::Signing(e.to_string())))
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

    /// The signed announcements of `model_id` that gossip brought, as they came in: the live
    /// ones and the withdrawals still held ([`crate::gossip::GossipTable::signed_of`]).
    pub async fn signed_view(&self, model_id: ModelDigest) -> Result<Vec<Vec<u8>>, NetError> {
        self.ask(|reply| Command::SignedView { model_id, reply })
            .await
    }

    /// How others can reach this host now.
    pub fn reachability(&self) -> Reachability {
        self.reach.borrow().clone()
    }

    /// Peers this host holds a direct (not relayed) connection with.
    pub async fn direct_peers(&self) -> Result<HashSet<PeerId>, NetError> {
        self.ask(Command::DirectPeers).await
    }

    /// Changes of [`Self::reachability`].
    pub fn reach_changes(&self) -> watch::Receiver<Reachability> {
        self.reach.clone()
    }

    /// Listens through `relay` (a peer the DHT knows): reserves a place there, so others reach
    /// this host at the relay's address. Answered once the listener is set up; the relayed
    /// address appears in [`Self::reachability`] once the relay accepts.
    pub async fn listen_via_relay(&self, relay: PeerId) -> Result<(), NetError> {
        self.ask(|reply| Command::ListenViaRelay { relay, reply })
            .await?
    }

    /// How much of other peers' state this host holds.
    pub async fn stats(&self) -> Result<HostStats, NetError> {
        self.ask(Command::Stats).await
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
        let mut purge = tokio::time::interval(PURGE_INTERVAL);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = purge.tick() => self.purge(),
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
                rec.expires = Some(Instant::now() + ttl);
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
                self.pending_providers
                    .insert(id, (HashSet::new(), 0, reply));
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
            Command::SignedView { model_id, reply } => {
                let _ = reply.send(self.gossip.signed_of(&model_id, crate::now_ms()));
            }
            Command::GossipView(reply) => {
                let _ = reply.send(self.gossip.announcements());
            }
            Command::Stats(reply) => {
                let mut stats = self.stats;
                stats.gossip_entries = self.gossip.len();
                stats.dht_records = self.swarm.behaviour_mut().kad.store_mut().records().count();
                stats.provider_keys = self.provided_by.values().map(HashSet::len).sum();
                stats.connections = self
                    .swarm
                    .network_info()
                    .connection_counters()
                    .num_established() as usize;
                let _ = reply.send(stats);
            }
            Command::DirectPeers(reply) => {
                let _ = reply.send(self.direct.keys().copied().collect());
            }
            Command::ListenViaRelay { relay, reply } => {
                let _ = reply.send(self.listen_via_relay(relay));
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    /// Listens on a circuit through `relay`, at an address the DHT's routing table has for it.
    fn listen_via_relay(&mut self, relay: PeerId) -> Result<(), NetError> {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for bucket in kad.kbuckets() {
            for entry in bucket.iter() {
                if *entry.node.key.preimage() == relay {
                    addrs.extend(entry.node.value.iter().cloned());
                }
            }
        }
        let base = addrs
            .into_iter()
            .find(|a| !crate::reach::is_relayed(a))
            .ok_or_else(|| NetError::Dial {
                addr: Multiaddr::empty(),
                reason: format!("no direct address known for relay {relay}"),
            })?;
        let base = if base.iter().any(|p| matches!(p, Protocol::P2p(_))) {
            base
        } else {
            base.with(Protocol::P2p(relay))
        };
        let circuit = base.with(Protocol::P2pCircuit);
        self.swarm
            .listen_on(circuit.clone())
            .map(|_| ())
            .map_err(|e| NetError::Listen {
                addr: circuit,
                reason: e.to_string(),
            })
    }

    /// Updates the reachability the handles watch (only when it changed).
    fn update_reach(&mut self, change: impl FnOnce(&mut Reachability)) {
        self.reach.send_if_modified(|r| {
            let before = r.clone();
            change(r);
            *r != before
        });
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                debug!(%address, "listening");
                if crate::reach::is_relayed(&address) {
                    info!(%address, "reachable through a relay");
                    let a = address.clone();
                    self.update_reach(|r| r.relayed.push(a));
                } else {
                    // A relay must be reachable, so it vouches for its own listen addresses
                    // (libp2p's relay only serves once the host has a confirmed address).
                    if self.relay_server && self.reach.borrow().announce.is_empty() {
                        self.swarm.add_external_address(address.clone());
                    }
                    self.update_reach(|r| r.listen.push(address));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if !crate::reach::is_relayed(endpoint.get_remote_address()) => {
                *self.direct.entry(peer_id).or_default() += 1;
            }
            SwarmEvent::ConnectionClosed {
                peer_id, endpoint, ..
            } if !crate::reach::is_relayed(endpoint.get_remote_address()) => {
                if let std::collections::hash_map::Entry::Occupied(mut e) =
                    self.direct.entry(peer_id)
                {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.update_reach(|r| r.forget(&[address]));
            }
            SwarmEvent::ListenerClosed { addresses, .. } => {
                self.update_reach(|r| r.forget(&addresses));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let nat = match new {
                    autonat::NatStatus::Public(_) => Nat::Public,
                    autonat::NatStatus::Private => Nat::Private,
                    autonat::NatStatus::Unknown => Nat::Unknown,
                };
                info!(?nat, "AutoNAT");
                self.update_reach(|r| r.nat = nat);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                self.update_reach(|r| r.relay = Some(relay_peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    info!(peer = %remote_peer_id, "hole punched: direct connection");
                    self.update_reach(|r| r.punched += 1);
                }
                Err(e) => {
                    debug!(peer = %remote_peer_id, "hole punching failed: {e}");
                    self.update_reach(|r| r.punch_failed += 1);
                }
            },
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
                propagation_source,
                message_id,
                message,
            })) => {
                self.on_gossip(propagation_source, message_id, message);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest { request })) => {
                self.on_inbound(request);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, "outgoing connection failed: {error}");
            }
            _ => {}
        }
    }

    /// Ends a lookup that has what it asked for.
    fn finish_query(&mut self, id: QueryId) {
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetProviders(res) => {
                let done = match res {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        let mut enough = false;
                        // Kademlia reports every peer's answer, also one without providers.
                        if let Some((found, answers, _)) = self.pending_providers.get_mut(&id)
                            && !providers.is_empty()
                        {
                            found.extend(providers);
                            *answers += 1;
                            enough = *answers >= PROVIDER_ANSWERS;
                        }
                        if enough && !last {
                            self.finish_query(id);
                        }
                        last || enough
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        debug!("provider query ended: {e}");
                        true
                    }
                };
                if done && let Some((found, _, reply)) = self.pending_providers.remove(&id) {
                    let _ = reply.send(found);
                }
            }
            QueryResult::GetRecord(res) => {
                let done = match res {
                    Ok(GetRecordOk::FoundRecord(r)) => {
                        let mut enough = false;
                        if let Some((found, _)) = self.pending_records.get_mut(&id) {
                            found.push(r.record.value);
                            enough = found.len() >= RECORD_COPIES;
                        }
                        if enough && !last {
                            self.finish_query(id);
                        }
                        last || enough
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

    /// Checks a gossip message; only a valid one is relayed, and only one that fits the table
    /// is kept.
    fn on_gossip(
        &mut self,
        propagation_source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        use crate::gossip::GossipRefusal;
        let now = crate::now_ms();
        let outcome = match message.source {
            None => Err(GossipRefusal::Invalid("unsigned gossip".into())),
            Some(author) => crate::gossip::check(&author, &message.data, now).and_then(|ann| {
                self.gossip
                    .insert(author, propagation_source, ann, message.data.clone(), now)
            }),
        };
        let acceptance = match &outcome {
            Ok(()) => gossipsub::MessageAcceptance::Accept,
            Err(GossipRefusal::Invalid(why)) => {
                self.stats.gossip_rejected += 1;
                debug!(source = %propagation_source, "refusing gossip: {why}");
                gossipsub::MessageAcceptance::Reject
            }
            Err(GossipRefusal::Ignored(why)) => {
                self.stats.gossip_ignored += 1;
                debug!(source = %propagation_source, "ignoring gossip: {why}");
                gossipsub::MessageAcceptance::Ignore
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &propagation_source, acceptance);
    }

    /// A record or provider key another peer asks this host to store: stored only if it
    /// passes the checks of [`crate::announce::check_record`] or the per-provider cap.
    fn on_inbound(&mut self, request: InboundRequest) {
        match request {
            InboundRequest::PutRecord {
                source,
                record: Some(record),
                ..
            } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let held = store.get(&record.key).map(|r| r.into_owned());
                match crate::announce::check_record(
                    &record,
                    &source,
                    held.as_ref(),
                    crate::now_ms(),
                ) {
                    Ok(_) => {
                        if let Err(e) = store.put(record) {
                            self.stats.records_refused += 1;
                            debug!(%source, "DHT record not stored: {e}");
                        }
                    }
                    Err(e) => {
                        self.stats.records_refused += 1;
                        debug!(%source, "refusing a DHT record: {e}");
                    }
                }
            }
            InboundRequest::AddProvider {
                record: Some(record),
            } => self.add_provider(record),
            _ => {}
        }
    }

    fn add_provider(&mut self, record: ProviderRecord) {
        let keys = self.provided_by.entry(record.provider).or_default();
        if !keys.contains(&record.key) && keys.len() >= MAX_KEYS_PER_PROVIDER {
            self.stats.records_refused += 1;
            debug!(provider = %record.provider, "refusing a provider key: at its cap");
            return;
        }
        let (provider, key) = (record.provider, record.key.clone());
        match self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record)
        {
            Ok(()) => {
                keys.insert(key);
            }
            Err(e) => {
                self.stats.records_refused += 1;
                debug!(%provider, "provider key not stored: {e}");
            }
        }
    }

    /// Drops expired DHT records, provider keys and gossip entries: Kademlia only drops an
    /// expired record when someone asks for it, so without this, junk or ordinary churn would
    /// fill the store for good.
    fn purge(&mut self) {
        let now = Instant::now();
        let pruned = self.gossip.prune(crate::now_ms());
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let expired: Vec<RecordKey> = store
            .records()
            .filter(|r| r.is_expired(now))
            .map(|r| r.key.clone())
            .collect();
        for k in &expired {
            store.remove(k);
        }
        let mut providers_dropped = 0;
        self.provided_by.retain(|provider, keys| {
            keys.retain(|k| {
                let live = store
                    .providers(k)
                    .iter()
                    .any(|p| &p.provider == provider && !p.is_expired(now));
                if !live {
                    store.remove_provider(k, provider);
                    providers_dropped += 1;
                }
                live
            });
            !keys.is_empty()
        });
        if pruned + expired.len() + providers_dropped > 0 {
            debug!(
                gossip = pruned,
                records = expired.len(),
                providers = providers_dropped,
                "purged expired state"
            );
        }
    }
}
