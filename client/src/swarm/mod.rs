//! The swarm side of `swarm-client`: join the swarm through a bootstrap peer, discover the peers
//! of the model ([`discovery`]), choose one peer per block range with the policy's weights
//! ([`route`]), open a session with the whole route and run the generation loop through it
//! ([`session`]). Only the embedding, final norm and LM head are loaded here.

pub mod discovery;
pub mod failover;
pub mod learned;
pub mod receipts;
pub mod route;
pub mod session;
pub mod share;
pub mod spot;

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;
use sunswarm_energy::policy::{Policy, PolicyKind};
use sunswarm_net::now_ms;
use sunswarm_net::{self as net, NetConfig, NetError, Network};
use sunswarm_protocol::{Announcement, Hop, ModelDigest, dht};
use tokio::task::JoinHandle;

use crate::generate::median;
pub use failover::{FailoverEvent, ResilientSession};
pub use learned::{CsUcbConfig, CsUcbRouter};
pub use route::{RouteError, Routing, Sampled};
pub use session::{ForwardTiming, OpenParams, SessionError, SwarmSession};

/// Why the swarm could not be joined, searched or used for a generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    #[error("swarm mode needs at least one bootstrap peer (--bootstrap MULTIADDR), or --local")]
    NoBootstrap,
    #[error("unknown --policy {0:?}: expected uniform, long-term, adaptive, lookahead or cs-ucb")]
    UnknownPolicy(String),
    #[error("--prior {0:?}: the prior of cs-ucb is uniform, long-term, adaptive or lookahead")]
    UnknownPrior(String),
    #[error(transparent)]
    Learned(#[from] learned::LearnedError),
    #[error(transparent)]
    Share(#[from] share::BadShare),
    #[error("joining the swarm: {0}")]
    Join(NetError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("after {waited:?}, {peers} live peers and the model is {coverage}")]
    NotCovered {
        waited: Duration,
        peers: usize,
        coverage: &'static str,
    },
    #[error("opening the session: {0}")]
    Open(SessionError),
    #[error("no replacement for the failed peer: {0}")]
    NoReplacement(Box<SwarmError>),
    #[error("gave up after {attempts} failovers: {last}")]
    TooManyFailovers { attempts: usize, last: SessionError },
}

/// Parses `--policy` (uniform, long-term, adaptive, lookahead).
pub fn parse_policy(s: &str) -> Result<PolicyKind, SwarmError> {
    Ok(match s {
        "uniform" => PolicyKind::Uniform,
        "long-term" | "longterm" => PolicyKind::LongTerm,
        "adaptive" => PolicyKind::Adaptive,
        "lookahead" => PolicyKind::Lookahead,
        other => return Err(SwarmError::UnknownPolicy(other.to_string())),
    })
}

/// How a client chooses each hop's peer: a draw with an energy policy's weights, or CS-UCB
/// learning from what it observes with such a policy as its prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RoutingKind {
    Policy(PolicyKind),
    CsUcb(CsUcbConfig),
}

impl RoutingKind {
    /// The routing object, with no peer taking more than
    /// [`share::DEFAULT_MAX_ROUTE_SHARE`] of a range's routes.
    pub fn routing(self) -> Result<Box<dyn OwnedRouting>, SwarmError> {
        self.routing_with_share(share::DEFAULT_MAX_ROUTE_SHARE)
    }

    /// The routing object, with no peer taking more than `max_share` of a range's routes
    /// (`--max-route-share`; see [`share`]).
    pub fn routing_with_share(self, max_share: f64) -> Result<Box<dyn OwnedRouting>, SwarmError> {
        let inner: Box<dyn OwnedRouting> = match self {
            RoutingKind::Policy(p) => Box::new(PolicyRouting(p.policy())),
            RoutingKind::CsUcb(cfg) => Box::new(CsUcbRouter::new(cfg)?),
        };
        Ok(Box::new(share::ShareCapped::new(inner, max_share)?))
    }
}

/// Parses `--policy` with `--prior` and `--deadline-ms` (which only cs-ucb reads).
pub fn parse_routing(
    policy: &str,
    prior: &str,
    deadline_ms: f64,
) -> Result<RoutingKind, SwarmError> {
    if matches!(policy, "cs-ucb" | "csucb") {
        let prior = parse_policy(prior).map_err(|_| SwarmError::UnknownPrior(prior.to_string()))?;
        return Ok(RoutingKind::CsUcb(CsUcbConfig::new(prior, deadline_ms)?));
    }
    Ok(RoutingKind::Policy(parse_policy(policy)?))
}

/// A [`Routing`] an engine owns, which can also say what it learned (none for a policy).
pub trait OwnedRouting: Routing + std::fmt::Debug {
    /// The learned router, when this is one.
    fn learned(&self) -> Option<&CsUcbRouter> {
        None
    }
}

/// An owned energy policy as a [`Routing`] (a [`Sampled`] draw).
#[derive(Debug)]
pub struct PolicyRouting(pub Box<dyn Policy>);

impl Routing for PolicyRouting {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn choose(
        &self,
        anns: &[Announcement],
        start: u32,
        candidates: &[usize],
        rng: &mut dyn rand::RngCore,
    ) -> Option<usize> {
        Sampled(self.0.as_ref()).choose(anns, start, candidates, rng)
    }
}

impl OwnedRouting for PolicyRouting {}

impl OwnedRouting for CsUcbRouter {
    fn learned(&self) -> Option<&CsUcbRouter> {
        Some(self)
    }
}

/// How long route choice keeps looking while the discovered peers leave a range uncovered.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(10);
/// How old a discovery may be for a new route to be drawn from it without walking the DHT.
pub const FRESH_VIEW: Duration = Duration::from_secs(2);

/// A client's connection to the swarm (a DHT client; it never serves).
pub struct SwarmClient {
    net: Network,
    event_loop: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// A second identity for spot-check sessions: peers cannot tell a check from a session by
    /// who opens it, and checks do not take this client's places on a node (a node gives one
    /// peer at most `--max-sessions-per-peer`).
    check_net: Network,
    check_loop: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Models whose energy gossip this client already follows.
    followed: std::sync::Mutex<std::collections::HashSet<ModelDigest>>,
    /// The last discovery's announcements: a failover first plans from these (liveness checked
    /// again) instead of walking the DHT while the generation waits.
    last_seen: std::sync::Mutex<Vec<Announcement>>,
    /// When each model was last discovered: a route drawn soon after plans from that view.
    discovered_at: std::sync::Mutex<std::collections::HashMap<ModelDigest, Instant>>,
    /// Peers this client caught breaking the protocol (a receipt, a spot check): never routed
    /// to again by this client.
    banned: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

impl SwarmClient {
    /// Dials the bootstrap peers and waits until the DHT knows one of them.
    pub async fn connect(
        bootstrap: Vec<Multiaddr>,
        deadline: Duration,
    ) -> Result<Self, SwarmError> {
        Self::connect_private(bootstrap, None, deadline).await
    }

    /// [`connect`](Self::connect) to a private swarm: every connection is first encrypted with
    /// `swarm_key`, so a swarm with another key (or none) never completes a handshake.
    pub async fn connect_private(
        bootstrap: Vec<Multiaddr>,
        swarm_key: Option<&std::path::Path>,
        deadline: Duration,
    ) -> Result<Self, SwarmError> {
        if bootstrap.is_empty() {
            return Err(SwarmError::NoBootstrap);
        }
        let key = swarm_key.map(net::read_swarm_key).transpose()?;
        let cfg = NetConfig {
            listen: Vec::new(),
            bootstrap,
            dht_server: false,
            swarm_key: key,
            ..NetConfig::default()
        };
        // The check host needs no DHT: it dials the peers of a check route directly.
        let (check_net, check_ev) = net::new(NetConfig {
            bootstrap: Vec::new(),
            ..cfg.clone()
        })?;
        let (net, ev) = net::new(cfg)?;
        let event_loop = tokio::spawn(ev.run());
        let check_loop = tokio::spawn(check_ev.run());
        net.wait_ready(true, deadline)
            .await
            .map_err(SwarmError::Join)?;
        Ok(SwarmClient {
            net,
            event_loop: std::sync::Mutex::new(Some(event_loop)),
            check_net,
            check_loop: std::sync::Mutex::new(Some(check_loop)),
            followed: Default::default(),
            last_seen: Default::default(),
            discovered_at: Default::default(),
            banned: Default::default(),
        })
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The host spot-check sessions are opened from (another peer id than [`network`]'s).
    ///
    /// [`network`]: Self::network
    pub fn check_network(&self) -> &Network {
        &self.check_net
    }

    /// Never routes to `peer` again (it was caught breaking the protocol); returns whether it
    /// is newly banned.
    pub fn ban(&self, peer: &[u8]) -> bool {
        self.banned
            .lock()
            .map(|mut b| b.insert(peer.to_vec()))
            .unwrap_or(false)
    }

    /// The peers this client has banned.
    pub fn banned(&self) -> Vec<Vec<u8>> {
        self.banned
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn is_banned(&self, peer: &[u8]) -> bool {
        self.banned.lock().is_ok_and(|b| b.contains(peer))
    }

    /// Subscribes to a model's energy gossip so later discoveries see fresh state (the DHT
    /// may return a copy of an announcement a few refreshes old; gossip carries the latest).
    pub async fn follow(&self, model_id: &ModelDigest) -> Result<(), SwarmError> {
        let new = self
            .followed
            .lock()
            .map(|mut f| f.insert(*model_id))
            .unwrap_or(true);
        if new {
            self.net.subscribe(dht::energy_topic(model_id)).await?;
        }
        Ok(())
    }

    /// The live announcements of this model (this model id and block count, not expired).
    pub async fn discover(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
    ) -> Result<Vec<Announcement>, SwarmError> {
        self.follow(model_id).await?;
        // Liveness is judged at the start of the lookup: a lookup on a loaded machine can take
        // seconds, and an announcement that was live when asked for is still a fair route.
        let asked_at = now_ms();
        // What the nodes this client is connected to hold, so that the walk starts knowing the
        // ranges (and needs no record lookups for the peers they describe).
        let heard =
            sunswarm_net::view::fetch_from_connected(&self.net, model_id, discovery::VIEW_PEERS)
                .await;
        let all = discovery::discover_heard(
            &self.net,
            model_id,
            n_layers,
            discovery::RECORDS_PER_BLOCK,
            heard,
        )
        .await?;
        let int8 = sunswarm_models::int8_activations();
        let mut live = route::usable(&all, model_id, n_layers, int8, asked_at);
        warn_of_other_activations(&all, int8);
        live.retain(|a| !self.is_banned(&a.peer_id));
        if let Ok(mut seen) = self.last_seen.lock() {
            seen.retain(|a| &a.model_id != model_id);
            seen.extend(live.iter().cloned());
        }
        if let Ok(mut at) = self.discovered_at.lock() {
            at.insert(*model_id, Instant::now());
        }
        Ok(live)
    }

    /// A route that keeps the surviving hops of `route` and replaces hop `failed` (see
    /// [`route::repair_candidates`]); when the survivors cannot be kept, any route that avoids
    /// `avoid`. Plans from the last discovery first, and walks the DHT again when that gives no
    /// route clear of `avoid` (a replacement may have joined since); only when the fresh view
    /// has none either may an avoided peer be taken again.
    pub async fn choose_replacement(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
        routing: &dyn Routing,
        route: &[Hop],
        failed: usize,
        avoid: &[Vec<u8>],
    ) -> Result<Vec<Hop>, SwarmError> {
        let cached = self.recent(model_id, n_layers);
        let clear = |anns: &[Announcement]| {
            let repair = route::repair_candidates(anns, route, failed, avoid);
            plan_hops(&repair, n_layers, routing)
                .or_else(|_| plan_clear_of(anns, n_layers, routing, avoid))
        };
        if let Ok(hops) = clear(&cached) {
            return Ok(hops);
        }
        // Under churn the cached view holds the peers that just failed, and the replacements
        // that joined since are only in the DHT: planning from the cache with the avoided peers
        // allowed back in sent a session to a leaving peer eight times over.
        if let Ok(anns) = self.discover(model_id, n_layers).await
            && let Ok(hops) = clear(&anns)
        {
            return Ok(hops);
        }
        self.plan_until_covered(model_id, n_layers, |anns| {
            clear(anns).or_else(|_| plan_hops(anns, n_layers, routing))
        })
        .await
    }

    /// Discovers and chooses a route. The DHT is eventually consistent (a lookup on a loaded
    /// machine can miss a peer or return an old copy of its announcement), so a lookup that
    /// leaves a range uncovered is repeated for up to [`ROUTE_DEADLINE`] before giving up.
    /// A discovery less than [`FRESH_VIEW`] old is planned from without walking the DHT again
    /// (liveness is checked again; a peer that died since fails the open and is replaced).
    pub async fn choose_route(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
        policy: &dyn Policy,
        avoid: &[Vec<u8>],
    ) -> Result<Vec<Hop>, SwarmError> {
        self.choose_route_with(model_id, n_layers, &Sampled(policy), avoid)
            .await
    }

    /// [`choose_route`](Self::choose_route) with any [`Routing`] choosing the hops.
    pub async fn choose_route_with(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
        routing: &dyn Routing,
        avoid: &[Vec<u8>],
    ) -> Result<Vec<Hop>, SwarmError> {
        let fresh = self
            .discovered_at
            .lock()
            .ok()
            .and_then(|at| at.get(model_id).map(Instant::elapsed))
            .is_some_and(|age| age < FRESH_VIEW);
        if fresh {
            let recent = self.recent(model_id, n_layers);
            if let Ok(hops) = plan_clear_of(&recent, n_layers, routing, avoid) {
                return Ok(hops);
            }
        }
        self.plan_until_covered(model_id, n_layers, |anns| {
            plan_avoiding(anns, n_layers, routing, avoid)
        })
        .await
    }

    /// A route for a spot check of `route`: for every hop, another live replica of the same
    /// blocks (drawn at random) where there is one, else the same peer.
    pub fn check_route(&self, model_id: &ModelDigest, n_layers: u32, route: &[Hop]) -> Vec<Hop> {
        let anns = self.recent(model_id, n_layers);
        route
            .iter()
            .map(|hop| {
                let others: Vec<&Announcement> = anns
                    .iter()
                    .filter(|a| a.blocks == hop.blocks && a.peer_id != hop.peer_id)
                    .collect();
                if others.is_empty() {
                    return hop.clone();
                }
                let a = others[rand::random::<u64>() as usize % others.len()];
                Hop {
                    peer_id: a.peer_id.clone(),
                    addrs: a.addrs.clone(),
                    blocks: a.blocks,
                }
            })
            .collect()
    }

    /// The live announcements of the last discovery of `model_id`.
    fn recent(&self, model_id: &ModelDigest, n_layers: u32) -> Vec<Announcement> {
        self.last_seen
            .lock()
            .map(|s| {
                let int8 = sunswarm_models::int8_activations();
                route::usable(&s, model_id, n_layers, int8, now_ms())
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !self.is_banned(&a.peer_id))
            .collect()
    }

    /// Discovers again and again until `plan` finds a route in the live announcements, for up
    /// to [`ROUTE_DEADLINE`].
    async fn plan_until_covered(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
        plan: impl Fn(&[Announcement]) -> Result<Vec<Hop>, RouteError>,
    ) -> Result<Vec<Hop>, SwarmError> {
        let until = Instant::now() + ROUTE_DEADLINE;
        loop {
            let anns = self.discover(model_id, n_layers).await?;
            match plan(&anns) {
                Ok(hops) => return Ok(hops),
                Err(e) if Instant::now() >= until => return Err(e.into()),
                Err(e) => tracing::debug!("no route yet ({e}); looking again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls discovery until the live ranges cover the model (or the deadline passes).
    pub async fn wait_for_coverage(
        &self,
        model_id: &ModelDigest,
        n_layers: u32,
        want_peers: usize,
        deadline: Duration,
    ) -> Result<Vec<Announcement>, SwarmError> {
        let until = Instant::now() + deadline;
        // In a big swarm one DHT walk returns some of each block's providers, a different
        // some each time: a peer counts as found once any walk has found it.
        let mut found: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        loop {
            let anns = self.discover(model_id, n_layers).await?;
            found.extend(anns.iter().map(|a| a.peer_id.clone()));
            let covered = route::plan(
                &anns,
                n_layers,
                &sunswarm_energy::policy::Uniform,
                &mut rand::rng(),
            )
            .is_ok();
            if covered && found.len() >= want_peers {
                return Ok(anns);
            }
            if Instant::now() >= until {
                return Err(SwarmError::NotCovered {
                    waited: deadline,
                    peers: found.len(),
                    coverage: if covered {
                        "covered by fewer peers than expected"
                    } else {
                        "not covered"
                    },
                });
            }
            // Every walk queries the DHT (a lookup per block, records of new providers): in a
            // big swarm, walking ten times a second was most of the load on the nodes it waited
            // for.
            let pause = 100 + 10 * found.len().min(200) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// The last discovered announcement of `peer`, if any.
    pub fn announcement_of(&self, peer: &[u8]) -> Option<Announcement> {
        let seen = self.last_seen.lock().ok()?;
        seen.iter().find(|a| a.peer_id == peer).cloned()
    }

    /// Stops the client's host (later calls on it fail with [`NetError::Stopped`]).
    pub async fn stop(&self) {
        let _ = self.net.shutdown(Duration::from_millis(0)).await;
        let _ = self.check_net.shutdown(Duration::from_millis(0)).await;
        for lp in [&self.event_loop, &self.check_loop] {
            let handle = lp.lock().ok().and_then(|mut h| h.take());
            if let Some(h) = handle {
                let _ = h.await;
            }
        }
    }
}

/// A route that leaves out the peers in `avoid` if one exists. Avoided peers are a last resort,
/// not a ban: a peer that failed once (a connection reset under load) is still better than no
/// route when it is the only one left.
fn plan_avoiding(
    anns: &[Announcement],
    n_layers: u32,
    routing: &dyn Routing,
    avoid: &[Vec<u8>],
) -> Result<Vec<Hop>, RouteError> {
    plan_clear_of(anns, n_layers, routing, avoid).or_else(|_| plan_hops(anns, n_layers, routing))
}

/// A route through none of `avoid`, or none.
fn plan_clear_of(
    anns: &[Announcement],
    n_layers: u32,
    routing: &dyn Routing,
    avoid: &[Vec<u8>],
) -> Result<Vec<Hop>, RouteError> {
    let clear: Vec<Announcement> = anns
        .iter()
        .filter(|a| !avoid.contains(&a.peer_id))
        .cloned()
        .collect();
    plan_hops(&clear, n_layers, routing)
}

/// [`route::plan_with`] as the hops of a route.
fn plan_hops(
    anns: &[Announcement],
    n_layers: u32,
    routing: &dyn Routing,
) -> Result<Vec<Hop>, RouteError> {
    let idx = route::plan_with(anns, n_layers, routing, &mut rand::rng())?;
    Ok(idx
        .into_iter()
        .map(|i| Hop {
            peer_id: anns[i].peer_id.clone(),
            addrs: anns[i].addrs.clone(),
            blocks: anns[i].blocks,
        })
        .collect())
}

/// Swarm timings in the JSON output.
#[derive(Debug, Serialize)]
pub struct SwarmTimings {
    pub connect_ms: f64,
    /// Discovery, route choice and opening the session on every hop.
    pub open_ms: f64,
    /// Of `open_ms`, discovery and route choice (the rest opens the session on every hop).
    pub route_ms: f64,
    /// Median client round trip of one decode step (one token through every hop and back).
    pub decode_rtt_us_median: f64,
    /// Median over decode steps of (round trip - compute of every hop) / hops.
    pub overhead_per_hop_us_median: f64,
    /// Median compute per decode step on each hop, in route order.
    pub hop_compute_us_median: Vec<f64>,
    /// Median per decode step of the time on the links: round trip - every hop's own time. A
    /// token crosses hops + 1 links one way (client -> hop 0 -> ... -> last hop -> client).
    pub transit_us_median: f64,
    /// Median per decode step of each hop's own time outside compute (reading, checking and
    /// writing frames, and pacing on emulated batteries), in route order.
    pub hop_handling_us_median: Vec<f64>,
}

/// Summarises a session's per-forward timings (decode steps only: one token each).
pub fn summarise(timings: &[ForwardTiming], hops: usize) -> (f64, f64, Vec<f64>) {
    let decode = decode_steps(timings, hops);
    let rtt = median(decode.iter().map(|t| t.rtt_us as f64).collect());
    let over = median(decode.iter().map(|t| t.overhead_per_hop_us()).collect());
    let per_hop = (0..hops)
        .map(|h| {
            median(
                decode
                    .iter()
                    .map(|t| f64::from(t.hops[h].compute_us))
                    .collect(),
            )
        })
        .collect();
    (rtt, over, per_hop)
}

/// The forwards that were decode steps over the whole route: one token each, not replays.
fn decode_steps(timings: &[ForwardTiming], hops: usize) -> Vec<&ForwardTiming> {
    timings
        .iter()
        .filter(|t| t.n_tokens == 1 && t.hops.len() == hops && !t.replay)
        .collect()
}

/// Where a decode step's time outside compute goes (see [`SwarmTimings`]): the links in all,
/// and each hop's handling.
pub fn transit_breakdown(timings: &[ForwardTiming], hops: usize) -> (f64, Vec<f64>) {
    let decode = decode_steps(timings, hops);
    let transit = median(
        decode
            .iter()
            .map(|t| {
                let on_hops: u64 = t.hops.iter().map(|h| u64::from(h.total_us)).sum();
                t.rtt_us.saturating_sub(on_hops) as f64
            })
            .collect(),
    );
    let handling = (0..hops)
        .map(|h| {
            median(
                decode
                    .iter()
                    .map(|t| f64::from(t.hops[h].total_us.saturating_sub(t.hops[h].compute_us)))
                    .collect(),
            )
        })
        .collect();
    (transit, handling)
}

/// Says once per process that peers computing with the other kind of activations were left out
/// (a client that finds no route otherwise sees only that a range has no peer).
fn warn_of_other_activations(anns: &[Announcement], int8: bool) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let others = anns.iter().filter(|a| a.int8_activations() != int8).count();
    if others > 0 && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let (theirs, ours) = if int8 {
            ("f32", "8-bit")
        } else {
            ("8-bit", "f32")
        };
        tracing::warn!(
            "{others} peers multiply {theirs} activations and this client {ours} ones \
             (SUNSWARM_INT8): a session keeps to peers of its own kind, so they are not used"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::HopTiming;

    fn step(rtt_us: u64, hops: &[(u32, u32)]) -> ForwardTiming {
        ForwardTiming {
            n_tokens: 1,
            rtt_us,
            hops: hops
                .iter()
                .enumerate()
                .map(|(i, &(compute_us, total_us))| HopTiming {
                    hop: i as u16,
                    compute_us,
                    total_us,
                    kept_rows: 0,
                })
                .collect(),
            replay: false,
        }
    }

    #[test]
    fn transit_is_the_round_trip_outside_every_hops_own_time() {
        // Client sees 1000 us; hop 0 spends 400 (300 computing), hop 1 spends 450 (400 computing).
        let t = step(1000, &[(300, 400), (400, 450)]);
        assert_eq!(transit_breakdown(&[t], 2), (150.0, vec![100.0, 50.0]));
        let (rtt, over, per_hop) = summarise(&[step(1000, &[(300, 400), (400, 450)])], 2);
        assert_eq!((rtt, over, per_hop), (1000.0, 150.0, vec![300.0, 400.0]));
        // Prompt chunks and replays are not decode steps.
        let mut prompt = step(5000, &[(3000, 4500), (1000, 1200)]);
        prompt.n_tokens = 7;
        let mut replay = step(5000, &[(3000, 4500), (1000, 1200)]);
        replay.replay = true;
        let t = step(1000, &[(300, 400), (400, 450)]);
        assert_eq!(
            transit_breakdown(&[prompt, replay, t], 2),
            (150.0, vec![100.0, 50.0])
        );
    }

    #[test]
    fn routing_flags_parse() {
        assert_eq!(
            parse_routing("long-term", "adaptive", 10.0).unwrap(),
            RoutingKind::Policy(PolicyKind::LongTerm)
        );
        let RoutingKind::CsUcb(cfg) = parse_routing("cs-ucb", "long-term", 250.0).unwrap() else {
            panic!("cs-ucb is the learned router")
        };
        assert_eq!(cfg.prior, PolicyKind::LongTerm);
        assert_eq!(cfg.deadline, Duration::from_millis(250));
        assert!(matches!(
            parse_routing("cs-ucb", "cs-ucb", 250.0),
            Err(SwarmError::UnknownPrior(_))
        ));
        assert!(matches!(
            parse_routing("cs-ucb", "uniform", 0.0),
            Err(SwarmError::Learned(_))
        ));
        assert!(matches!(
            parse_routing("fastest", "uniform", 1.0),
            Err(SwarmError::UnknownPolicy(_))
        ));
        let r = parse_routing("cs-ucb", "adaptive", 100.0)
            .unwrap()
            .routing()
            .unwrap();
        assert_eq!(r.name(), "cs-ucb");
        assert_eq!(r.learned().unwrap().prior(), PolicyKind::Adaptive);
        let p = RoutingKind::Policy(PolicyKind::Adaptive).routing().unwrap();
        assert_eq!(p.name(), "adaptive");
        assert!(p.learned().is_none());
    }
}
