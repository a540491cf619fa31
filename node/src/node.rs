//! A running node: the host, the session server, and the announcer that keeps the node's
//! announcement in the DHT (refreshed well before it expires) and on gossip (every few seconds,
//! with fresh energy state). [`RunningNode::leave`] withdraws everything so clients stop routing
//! here at once instead of waiting for expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use sunswarm_protocol::{Announcement, BlockRange, ModelDigest, codec, dht};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::batch::{BatchConfig, Executor};
use crate::compute::BlockRunner;
use crate::energy::EnergySource;
use crate::hooks::Hooks;
use crate::session::{self, SessionCtx, SessionSlots};
use sunswarm_net::{self as net, NetConfig, NetError, Network, now_ms};

/// Everything a node needs besides its blocks and energy source.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub net: NetConfig,
    pub model_id: ModelDigest,
    pub n_layers: u32,
    pub blocks: BlockRange,
    pub backend: String,
    pub max_sessions: u32,
    pub max_tokens: u32,
    /// Lifetime of an announcement; the node refreshes it in the DHT at a quarter of it.
    pub announce_ttl: Duration,
    /// How often the node gossips its announcement with fresh energy state.
    pub gossip_interval: Duration,
    pub next_hop_timeout: Duration,
    /// A session's idle budget: the time it may spend waiting for its next message, summed
    /// over the session (see [`crate::session::SessionLimits`] for what refills it).
    pub idle_timeout: Duration,
    /// Limits on what one peer, and strangers together, can hold on this node.
    pub limits: session::SessionLimits,
    /// KV-cache memory all sessions together may take, in MiB.
    pub max_kv_mib: u32,
    /// Decode throughput estimate through this node's blocks, tokens per second.
    pub throughput: f32,
    /// How the sessions' steps are batched into passes.
    pub batch: BatchConfig,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("accepting activation streams: {0}")]
    Accept(String),
    #[error("encoding the announcement: {0}")]
    Codec(#[from] codec::CodecError),
    #[error(
        "--max-kv-mib {budget_mib} cannot hold one pass's scratch memory ({scratch_mib} MiB for {pass_tokens} tokens against {max_tokens} positions); raise it or lower --pass-tokens or --max-tokens"
    )]
    Memory {
        budget_mib: u32,
        scratch_mib: u64,
        pass_tokens: u32,
        max_tokens: u32,
    },
    #[error(
        "after {waited:?} nothing others can dial: no listener or AutoNAT found the listen addresses unreachable ({nat:?}), and no relay took a reservation (start a peer with --relay-server, or give --announce-addr)"
    )]
    Unreachable {
        waited: Duration,
        nat: sunswarm_net::Nat,
    },
}

/// A node that serves and announces until [`RunningNode::leave`].
pub struct RunningNode {
    net: Network,
    cfg: NodeConfig,
    energy: Arc<dyn EnergySource>,
    slots: Arc<SessionSlots>,
    /// What others dial (announced).
    listen: Vec<Multiaddr>,
    /// Where the host listens.
    bound: Vec<Multiaddr>,
    hooks: Arc<dyn Hooks>,
    tasks: Vec<JoinHandle<()>>,
    event_loop: JoinHandle<()>,
}

/// Starts the host, the session server and the announcer.
pub async fn start(
    cfg: NodeConfig,
    runner: Arc<dyn BlockRunner>,
    energy: Arc<dyn EnergySource>,
) -> Result<RunningNode, NodeError> {
    start_with_hooks(cfg, runner, energy, Arc::new(crate::hooks::Honest)).await
}

/// [`start`] with [`Hooks`] that change how the node behaves (the testnet's hostile peers).
pub async fn start_with_hooks(
    cfg: NodeConfig,
    runner: Arc<dyn BlockRunner>,
    energy: Arc<dyn EnergySource>,
    hooks: Arc<dyn Hooks>,
) -> Result<RunningNode, NodeError> {
    let need_peers = !cfg.net.bootstrap.is_empty();
    // Timed before the host starts: on this one-thread runtime the measurement holds the thread,
    // and a host started first would not answer its peers meanwhile.
    let cost = crate::batch::measure_cost(runner.as_ref());
    let (net, event_loop) = net::new(cfg.net.clone())?;
    let event_loop = tokio::spawn(event_loop.run());
    let incoming = net
        .control()
        .accept(sunswarm_net::stream::protocol())
        .map_err(|e| NodeError::Accept(e.to_string()))?;
    let view_requests = net
        .control()
        .accept(sunswarm_net::view::protocol())
        .map_err(|e| NodeError::Accept(e.to_string()))?;
    let slots = SessionSlots::with_peer_cap(cfg.max_sessions, cfg.limits.max_sessions_per_peer);
    // One pass at a time runs on the compute thread; its scratch memory (attention scores and
    // activations of up to `token_budget` new tokens against `max_tokens` positions) comes out of
    // the same budget as the sessions' KV caches, reserved once.
    let budget_kib = u64::from(cfg.max_kv_mib) * 1024;
    let scratch_kib =
        (runner.scratch_bytes(cfg.batch.token_budget as usize, cfg.max_tokens as usize) as u64)
            .div_ceil(1024);
    if scratch_kib >= budget_kib {
        return Err(NodeError::Memory {
            budget_mib: cfg.max_kv_mib,
            scratch_mib: scratch_kib.div_ceil(1024),
            pass_tokens: cfg.batch.token_budget,
            max_tokens: cfg.max_tokens,
        });
    }
    info!(
        scratch_mib = format!("{:.1}", scratch_kib as f64 / 1024.0),
        kv_mib = format!("{:.1}", (budget_kib - scratch_kib) as f64 / 1024.0),
        "memory budget"
    );
    let (executor, executor_task) = Executor::start_with_cost(runner.clone(), cfg.batch, cost);
    let ctx = Arc::new(SessionCtx {
        local_peer: net.local_peer_id(),
        model_id: cfg.model_id,
        blocks: cfg.blocks,
        runner,
        energy: energy.clone(),
        slots: slots.clone(),
        net: net.clone(),
        max_tokens: cfg.max_tokens,
        next_hop_timeout: cfg.next_hop_timeout,
        idle_timeout: cfg.idle_timeout,
        limits: cfg.limits,
        streams: Arc::default(),
        kv_budget_kib: Arc::new(Semaphore::new(
            usize::try_from(budget_kib - scratch_kib).unwrap_or(usize::MAX),
        )),
        attach: Arc::default(),
        executor,
        hooks: hooks.clone(),
        sessions: Arc::default(),
    });
    let mut tasks = vec![
        tokio::spawn(session::accept_loop(ctx, incoming)),
        tokio::spawn(sunswarm_net::view::serve(net.clone(), view_requests)),
        executor_task,
    ];
    // A node with no listener (behind a NAT that forwards nothing) has only its peers to wait for.
    net.wait_ready(cfg.net.listen.is_empty(), Duration::from_secs(10))
        .await?;
    if need_peers {
        net.wait_ready(true, Duration::from_secs(30)).await?;
    }
    let bound = net.listen_addrs().await?;
    // Finds a relay whenever peers cannot dial this node (AutoNAT says so).
    tasks.push(tokio::spawn(sunswarm_net::reach::keep_reachable(
        net.clone(),
    )));
    // What others dial: the operator's addresses, the direct ones, or a relay's; a node with
    // nothing dialable has nothing to announce yet.
    let listen = reachable_addrs(&net, RELAY_WAIT).await?;
    net.subscribe(dht::energy_topic(&cfg.model_id)).await?;
    let mut node = RunningNode {
        net,
        cfg,
        energy,
        slots,
        listen,
        bound,
        hooks,
        tasks: Vec::new(),
        event_loop,
    };
    node.publish(true).await?;
    tasks.push(tokio::spawn(announcer(node.handle())));
    node.tasks = tasks;
    info!(peer = %node.peer_id(), blocks = %node.cfg.blocks, "announced");
    Ok(node)
}

/// How long a node that cannot be dialled looks for a relay before it gives up starting.
const RELAY_WAIT: Duration = Duration::from_secs(60);

/// Waits until the host has an address others can dial (at once, unless it has no listener or
/// the operator's address, and must wait for AutoNAT and a relay).
async fn reachable_addrs(net: &Network, deadline: Duration) -> Result<Vec<Multiaddr>, NodeError> {
    let mut changes = net.reach_changes();
    let wait = async {
        loop {
            let addrs = changes.borrow_and_update().advertised();
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            if changes.changed().await.is_err() {
                return Err(NodeError::Net(NetError::Stopped));
            }
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or_else(|_| {
            Err(NodeError::Unreachable {
                waited: deadline,
                nat: net.reachability().nat,
            })
        })
}

/// What the announcer task needs (cheap clones of the node's parts).
struct AnnounceHandle {
    net: Network,
    cfg: NodeConfig,
    energy: Arc<dyn EnergySource>,
    slots: Arc<SessionSlots>,
    hooks: Arc<dyn Hooks>,
}

impl RunningNode {
    fn handle(&self) -> AnnounceHandle {
        AnnounceHandle {
            net: self.net.clone(),
            cfg: self.cfg.clone(),
            energy: self.energy.clone(),
            slots: self.slots.clone(),
            hooks: self.hooks.clone(),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.net.local_peer_id()
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Where the host itself listens (differs from [`Self::listen_addrs`] with
    /// `--announce-addr`).
    pub fn bound_addrs(&self) -> &[Multiaddr] {
        &self.bound
    }

    /// Listen addresses, each with `/p2p/<peer id>` so they can be dialled as given.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let p = self.peer_id();
        self.listen
            .iter()
            .map(|a| a.clone().with_p2p(p).unwrap_or_else(|a| a))
            .collect()
    }

    async fn publish(&self, dht_too: bool) -> Result<(), NodeError> {
        self.handle().publish(dht_too, false).await
    }

    /// Withdraws the announcement (gossip says "gone now", DHT keys and record removed), lets
    /// the messages go out, and stops everything.
    pub async fn leave(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Err(e) = self.handle().publish(true, true).await {
            warn!("withdrawing the announcement: {e}");
        }
        let _ = self.net.shutdown(Duration::from_millis(300)).await;
        let _ = self.event_loop.await;
        info!("left the swarm");
    }
}

impl AnnounceHandle {
    fn announcement(&self, leaving: bool) -> Announcement {
        let now = now_ms();
        let ttl = self.cfg.announce_ttl.as_millis() as u64;
        let mut ann = Announcement {
            peer_id: self.net.local_peer_id().to_bytes(),
            // The relay's address once peers have found this node unreachable.
            addrs: self
                .net
                .reachability()
                .advertised()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            model_id: self.cfg.model_id,
            n_layers: self.cfg.n_layers,
            blocks: self.cfg.blocks,
            backend: self.cfg.backend.clone(),
            throughput: self.cfg.throughput,
            max_sessions: self.cfg.max_sessions,
            active_sessions: self.slots.active(),
            energy: self.energy.state(),
            timestamp_ms: now,
            expires_ms: if leaving { now } else { now + ttl },
        };
        self.hooks.announce(&mut ann);
        ann
    }

    async fn publish(&self, dht_too: bool, leaving: bool) -> Result<(), NodeError> {
        let parts = Parts {
            record: dht_too,
            providers: dht_too,
            gossip: true,
        };
        self.publish_parts(parts, leaving).await
    }

    /// Publishes the announcement record, the provider keys, gossip, or any of them.
    async fn publish_parts(&self, parts: Parts, leaving: bool) -> Result<(), NodeError> {
        // Other peers store and relay only announcements signed by the peer they describe.
        let signed = self.net.sign_announcement(self.announcement(leaving))?;
        let bytes = codec::encode(&signed)?;
        let model = &self.cfg.model_id;
        let record_key = dht::peer_record_key(model, &signed.announcement.peer_id);
        if parts.record || parts.providers {
            if leaving {
                self.net.remove_record(record_key).await?;
                for b in self.cfg.blocks.start..self.cfg.blocks.end {
                    self.net.stop_providing(dht::block_key(model, b)).await?;
                }
                if self.cfg.net.relay_server.is_some() {
                    self.net.stop_providing(dht::relay_key()).await?;
                }
                // A record stored on other peers cannot be deleted; overwrite it with one that
                // has already expired.
                self.net
                    .put_record(record_key, bytes.clone(), Duration::from_secs(1))
                    .await?;
            } else {
                if parts.record {
                    self.net
                        .put_record(record_key, bytes.clone(), self.cfg.announce_ttl)
                        .await?;
                }
                if parts.providers {
                    for b in self.cfg.blocks.start..self.cfg.blocks.end {
                        self.net.start_providing(dht::block_key(model, b)).await?;
                    }
                    if self.cfg.net.relay_server.is_some() {
                        self.net.start_providing(dht::relay_key()).await?;
                    }
                }
            }
        }
        if parts.gossip {
            self.net.publish(dht::energy_topic(model), bytes).await?;
        }
        Ok(())
    }
}

/// What one publication sends.
#[derive(Debug, Clone, Copy)]
struct Parts {
    record: bool,
    providers: bool,
    gossip: bool,
}

/// Gossips every `gossip_interval`, refreshes the DHT record every quarter of the TTL and the
/// provider keys every quarter of theirs. A quarter, not a third: a DHT lookup may return a copy
/// one or two refreshes old (measured on a loaded machine), and that copy must still be live.
///
/// A source whose state changes on its own clock (an emulated battery's slot ends) is announced
/// as it changes: a flip of whether it takes work (power saving, or its model's one pending
/// place taken or freed) at once, any other change when the last message is at least three
/// quarters of an interval old. With the interval at one slot, every slot's state is
/// gossiped the moment it exists, rather than up to a slot late at a tick of arbitrary phase
/// (which is what the simulator's routers see: the current state), and the rate stays one
/// message per interval. Taking the last free session place, or freeing one of a full node, is
/// announced at once too.
async fn announcer(h: AnnounceHandle) {
    let refresh = h.cfg.announce_ttl / 4;
    let provider_refresh = (h.cfg.net.provider_ttl / 4).max(refresh);
    // Gossiped entries must be refreshed well within their lifetime.
    let cap = h.cfg.announce_ttl / 2;
    let mut period = gossip_period(h.cfg.gossip_interval, 0, cap);
    let mut tick_every = period.min(refresh);
    let mut last_dht = Instant::now();
    let mut last_providers = Instant::now();
    // Peers in the routing table when the provider keys were last published: a key provided
    // while the node knew few peers (the first node of a swarm knows none) reached only those,
    // and would wait a whole provider refresh (75 s by default) to reach the rest.
    let mut provided_with = h.net.routing_peers().await.unwrap_or(0);
    let mut last_publish = Instant::now();
    let mut published_full = h.slots.is_full();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
    let mut changes = h.energy.state_changes();
    let mut published = changes.as_ref().map(|rx| *rx.borrow());
    let mut reach = h.net.reach_changes();
    let mut published_addrs = reach.borrow_and_update().advertised();
    loop {
        let mut moved = false;
        let mut ticked = false;
        tokio::select! {
            _ = tick.tick() => ticked = true,
            // A node that becomes reachable another way (a relay's address) says so at once,
            // in the DHT too: sessions routed to the old address would fail.
            Ok(()) = reach.changed() => {
                let now = reach.borrow_and_update().advertised();
                if now == published_addrs {
                    continue;
                }
                info!(addrs = ?now, "reachable at new addresses");
                published_addrs = now;
                moved = true;
            }
            Some(Ok(())) = async { match changes.as_mut() { Some(rx) => Some(rx.changed().await), None => None } } => {
                let now = changes.as_mut().map(|rx| *rx.borrow_and_update());
                let urgent = matches!((now, published), (Some(n), Some(p)) if n.routing_differs(&p));
                if !urgent && last_publish.elapsed() < period * 3 / 4 {
                    continue;
                }
            }
            // A node that fills up or has room again says so at once: availability is what
            // routes are drawn on (the simulator's routers see it exactly).
            _ = h.slots.changed() => {
                if h.slots.is_full() == published_full {
                    continue;
                }
            }
        }
        // Half a tick of tolerance, so timer jitter does not skip every other refresh.
        let dht_too = moved || last_dht.elapsed() + tick_every / 2 >= refresh;
        let routing_peers = if ticked {
            h.net.routing_peers().await.unwrap_or(0)
        } else {
            provided_with
        };
        let providers_too = moved
            || last_providers.elapsed() + tick_every / 2 >= provider_refresh
            || routing_peers >= (2 * provided_with).max(1);
        let gossip_too = !ticked || last_publish.elapsed() + tick_every / 2 >= period;
        if !dht_too && !gossip_too && !providers_too {
            continue;
        }
        if dht_too {
            last_dht = Instant::now();
        }
        if providers_too {
            last_providers = Instant::now();
            provided_with = routing_peers;
        }
        if gossip_too {
            published = changes.as_ref().map(|rx| *rx.borrow());
            published_full = h.slots.is_full();
        }
        let parts = Parts {
            record: dht_too,
            providers: providers_too,
            gossip: gossip_too,
        };
        if let Err(e) = h.publish_parts(parts, false).await {
            warn!("announcing: {e}");
            return;
        }
        if gossip_too {
            last_publish = Instant::now();
        }
        // The bigger the swarm, the less often each node gossips (see `gossip_period`).
        let peers = h.net.stats().await.map(|s| s.gossip_entries).unwrap_or(0);
        let next = gossip_period(h.cfg.gossip_interval, peers, cap);
        if next != period {
            period = next;
            tick_every = period.min(refresh);
            tick = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        } else if gossip_too {
            tick.reset();
        }
    }
}

/// Provider keys live this many announcement lifetimes (`NetConfig::provider_ttl`).
pub const PROVIDER_TTL_FACTOR: u32 = 10;

/// Peers up to which a node gossips at its base interval. Each announcement reaches every peer,
/// so a peer receives (peers / period) of them per second; beyond this many peers the period
/// grows with the swarm and that rate stays what this many peers at the base interval give.
pub const GOSSIP_PEERS_AT_BASE: usize = 16;

/// How often a node gossips its announcement in a swarm where it sees `peers` others: `base` up
/// to [`GOSSIP_PEERS_AT_BASE`], then in proportion, at most `cap` (entries must be refreshed
/// within their lifetime; past `cap` the rate per peer grows again, linearly).
pub fn gossip_period(base: Duration, peers: usize, cap: Duration) -> Duration {
    let scale = (peers as f64 / GOSSIP_PEERS_AT_BASE as f64).max(1.0);
    base.mul_f64(scale).min(cap.max(base))
}

/// Measures decode throughput through the blocks: a few one-token forwards on a scratch session.
pub fn estimate_throughput(runner: &dyn BlockRunner) -> f32 {
    let dim = runner.hidden_size();
    let mut s = runner.new_session();
    let x: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    if s.forward(1, x.clone()).is_err() {
        return 0.0;
    }
    let n = 4;
    let t = Instant::now();
    for _ in 0..n {
        if s.forward(1, x.clone()).is_err() {
            return 0.0;
        }
    }
    n as f32 / t.elapsed().as_secs_f32().max(1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_slows_down_as_the_swarm_grows_so_each_peer_hears_about_as_much() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(15);
        assert_eq!(gossip_period(base, 0, cap), base);
        assert_eq!(gossip_period(base, GOSSIP_PEERS_AT_BASE, cap), base);
        assert_eq!(gossip_period(base, 32, cap), Duration::from_secs(4));
        assert_eq!(gossip_period(base, 1000, cap), cap);
        // What one peer receives per second: bounded from 16 peers until the cap.
        let heard = |n: usize| n as f64 / gossip_period(base, n, cap).as_secs_f64();
        for n in [16, 20, 50, 100, 120] {
            assert!((heard(n) - 8.0).abs() < 1e-9, "{n}: {}", heard(n));
        }
        assert!(heard(10) < 8.0);
        // A cap below the base never speeds gossip up.
        assert_eq!(gossip_period(base, 100, Duration::from_secs(1)), base);
    }
}
