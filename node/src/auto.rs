//! `swarm-node --blocks auto [--max-blocks N]`: the node chooses its own range, Petals-style.
//!
//! 1. **Measure.** Load two blocks, time one-token forwards through them (with `--slowdown`),
//!    and take the time per block.
//! 2. **Read the swarm.** With a bootstrap peer, a short-lived DHT client walks the swarm's
//!    announcements of the model ([`sunswarm_net::discovery`]); the first node sees nobody.
//! 3. **Choose.** [`sunswarm_planner::auto::decide`]: the contiguous range of at most
//!    `--max-blocks` blocks that raises the swarm's throughput most given everyone else stays
//!    (coverage first, then the weakest block's capacity; each peer's capacity weighed by its
//!    announced max job rate, 0 in power saving). Load it and start serving.
//! 4. **Re-plan.** Every `--replan-interval` seconds the node reads the swarm again through its
//!    own host. A block that lost a host (a peer left, or one went uncovered) is logged as the
//!    reason; either way the node asks the planner, which says move only for more coverage or,
//!    covered either way, a throughput gain above `--min-gain` (hysteresis, 20 %).
//! 5. **Move.** After a random pause (up to `--replan-jitter`, so that two nodes that saw the
//!    same loss rarely both jump), it reads the swarm again and asks again; if the answer is
//!    still "move", it drains: refuses new sessions and announces itself as not taking work at
//!    once ([`MoveGate`]: power saving on the wire, which clients route around and other nodes'
//!    planners count as no capacity), waits for its open sessions to end (at most
//!    `--drain-timeout`), leaves, loads the new range and starts again with the same identity
//!    and, when it can bind it, the same listen address (so it stays a bootstrap peer).
//!
//! Announcements are peer input: ranges outside the model, non-finite speeds and rates are
//! dropped before they reach the planner, and nothing in this module panics on them.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use sunswarm_models::{Device, Model};
use sunswarm_net::{NetConfig, NetError, now_ms};
use sunswarm_planner::PlanError;
use sunswarm_planner::auto::DEFAULT_MIN_GAIN;
use sunswarm_planner::auto::{
    Coverage, Decision, HostedRange, Hysteresis, OwnPeer, Speed, decide, replan_reason,
};
use sunswarm_protocol::{
    Announcement, BlockRange, BlockSpec, BlocksError, EnergyState, ModelDigest,
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::compute::{BlockRunner, ModelRunner};
use crate::energy::{EnergySource, JobTicket, Refusal, StateChange};
use crate::node::{self, NodeConfig, NodeError, RunningNode};

/// `--blocks`: a fixed range (`0-9`, `0:10`, `all`) or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocksArg {
    Fixed(BlockSpec),
    Auto,
}

impl FromStr for BlocksArg {
    type Err = BlocksError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(BlocksArg::Auto)
        } else {
            s.parse().map(BlocksArg::Fixed)
        }
    }
}

/// The flags of `--blocks auto`, flattened into `swarm-node`'s command line.
#[derive(clap::Args, Debug, Clone)]
pub struct AutoArgs {
    /// With --blocks auto: the most blocks this node may host (default: the whole model).
    #[arg(long)]
    pub max_blocks: Option<u32>,
    /// With --blocks auto: seconds between looks at the swarm (re-planning).
    #[arg(long, default_value_t = 5.0)]
    pub replan_interval: f64,
    /// With --blocks auto: the most seconds of random pause before acting on a move, so that
    /// nodes that saw the same change rarely move at once.
    #[arg(long, default_value_t = 3.0)]
    pub replan_jitter: f64,
    /// With --blocks auto: the relative throughput gain a move must bring (hysteresis).
    #[arg(long, default_value_t = DEFAULT_MIN_GAIN)]
    pub min_gain: f64,
    /// With --blocks auto: the most seconds a move waits for open sessions to end.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
}

/// Checked [`AutoArgs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoOptions {
    pub max_blocks: Option<u32>,
    pub replan_interval: Duration,
    pub replan_jitter: Duration,
    pub hysteresis: Hysteresis,
    pub drain_timeout: Duration,
}

/// Why the automatic range choice could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutoError {
    #[error("--{flag} {value}: {expected}")]
    Flag {
        flag: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("--max-blocks applies to --blocks auto only")]
    MaxBlocksWithoutAuto,
    #[error("planning the range: {0}")]
    Plan(#[from] PlanError),
    #[error("loading blocks {range}: {source}")]
    Load {
        range: BlockRange,
        #[source]
        source: sunswarm_models::ModelError,
    },
    #[error("loaded blocks {got:?}, asked for {want}")]
    LoadedOther {
        got: std::ops::Range<usize>,
        want: BlockRange,
    },
    #[error("measuring this node's speed gave {0} tokens per second")]
    Measure(f32),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Blocks(#[from] BlocksError),
    #[error("the runtime stopped a loading task: {0}")]
    Join(String),
}

fn seconds(flag: &'static str, v: f64, zero_ok: bool) -> Result<Duration, AutoError> {
    let ok = v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) && v < 86_400.0;
    if !ok {
        return Err(AutoError::Flag {
            flag,
            value: v,
            expected: "a number of seconds below 86400",
        });
    }
    Ok(Duration::from_secs_f64(v))
}

impl AutoArgs {
    /// The checked options; `auto` says whether `--blocks auto` was given.
    pub fn options(&self, auto: bool) -> Result<AutoOptions, AutoError> {
        if !auto && self.max_blocks.is_some() {
            return Err(AutoError::MaxBlocksWithoutAuto);
        }
        if self.max_blocks == Some(0) {
            return Err(AutoError::Flag {
                flag: "max-blocks",
                value: 0.0,
                expected: "at least 1",
            });
        }
        Ok(AutoOptions {
            max_blocks: self.max_blocks,
            replan_interval: seconds("replan-interval", self.replan_interval, false)?,
            replan_jitter: seconds("replan-jitter", self.replan_jitter, true)?,
            hysteresis: Hysteresis::new(self.min_gain).map_err(|_| AutoError::Flag {
                flag: "min-gain",
                value: self.min_gain,
                expected: "a finite number of at least 0",
            })?,
            drain_timeout: seconds("drain-timeout", self.drain_timeout, true)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// From announcements to the planner's view (pure).

/// The live, well-formed announcements of `model` (with `n_layers` blocks) other than `me`'s, as
/// the planner's hosted ranges. Malformed ones (ranges outside the model, speeds or rates that
/// are not finite numbers in range) are dropped: they are peer input.
pub fn hosted_others(
    anns: &[Announcement],
    me: &[u8],
    model: &ModelDigest,
    n_layers: u32,
    now_ms: u64,
) -> Vec<HostedRange> {
    let mut out: Vec<(Vec<u8>, HostedRange)> = Vec::new();
    for a in anns {
        if &a.model_id != model || a.n_layers != n_layers || !a.is_live(now_ms) || a.peer_id == me {
            continue;
        }
        let Some(h) = hosted(a, n_layers) else {
            debug!(peer = ?PeerId::from_bytes(&a.peer_id).ok(), "announcement dropped by the planner's checks");
            continue;
        };
        // One range per peer: the newest announcement wins.
        match out.iter_mut().find(|(p, _)| *p == a.peer_id) {
            Some(slot) => slot.1 = h,
            None => out.push((a.peer_id.clone(), h)),
        }
    }
    out.into_iter().map(|(_, h)| h).collect()
}

fn hosted(a: &Announcement, n_layers: u32) -> Option<HostedRange> {
    let (start, end) = (a.blocks.start, a.blocks.end);
    if start >= end || end > n_layers {
        return None;
    }
    let t = f64::from(a.throughput);
    let rate = f64::from(a.energy.max_job_rate);
    if !((0.0..1e12).contains(&t) && rate.is_finite()) {
        return None;
    }
    Some(HostedRange {
        start,
        end,
        speed: Speed::TokensPerSecond(t),
        max_job_rate: rate.clamp(0.0, 1.0),
        power_saving: a.energy.power_saving,
    })
}

/// How many live peers host each block: the others and, if any, this node's own range.
pub fn coverage(
    n_layers: u32,
    others: &[HostedRange],
    mine: Option<BlockRange>,
) -> Result<Coverage, PlanError> {
    Coverage::of(
        n_layers,
        others
            .iter()
            .map(|h| (h.start, h.end))
            .chain(mine.map(|r| (r.start, r.end))),
    )
}

/// This node as the planner sees it, from its measured speed and its energy source's state.
pub fn own_peer(ms_per_block: f64, max_blocks: u32, state: &EnergyState) -> OwnPeer {
    let rate = f64::from(state.max_job_rate);
    OwnPeer {
        ms_per_block,
        max_blocks: max_blocks.max(1),
        max_job_rate: if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        },
        power_saving: state.power_saving,
    }
}

fn range_of(start: u32, end: u32) -> Result<BlockRange, AutoError> {
    Ok(BlockRange::new(start, end)?)
}

// ---------------------------------------------------------------------------------------------
// The gate a moving node closes: no new sessions, "not taking work" on the wire, open ones
// counted until they end.

/// An [`EnergySource`] around the node's own that a move can close ([`MoveGate::drain`]): while
/// closed it refuses new sessions and announces power saving and no free place (clients route
/// around it, other nodes' planners count it as no capacity), announced at once. It counts the
/// sessions it admitted until each ends.
pub struct MoveGate {
    inner: Arc<dyn EnergySource>,
    draining: AtomicBool,
    active: Arc<Active>,
    tx: watch::Sender<StateChange>,
}

#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a session's job ticket; counts the session until it ends.
struct SessionGuard(Arc<Active>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl MoveGate {
    /// Wraps `inner`; with a tokio runtime, `inner`'s own state changes are passed on.
    pub fn new(inner: Arc<dyn EnergySource>) -> Arc<Self> {
        let s = inner.state();
        let (tx, _) = watch::channel(StateChange {
            seq: 0,
            power_saving: s.power_saving,
            takes_job: s.takes_job,
        });
        let gate = Arc::new(MoveGate {
            inner: inner.clone(),
            draining: AtomicBool::new(false),
            active: Arc::default(),
            tx,
        });
        if let (Some(mut rx), Ok(rt)) =
            (inner.state_changes(), tokio::runtime::Handle::try_current())
        {
            let weak = Arc::downgrade(&gate);
            rt.spawn(async move {
                while rx.changed().await.is_ok() {
                    let Some(gate) = weak.upgrade() else { break };
                    let c = *rx.borrow_and_update();
                    gate.signal(c.power_saving, c.takes_job);
                }
            });
        }
        gate
    }

    fn signal(&self, power_saving: bool, takes_job: bool) {
        let draining = self.is_draining();
        self.tx.send_modify(|s| {
            s.seq += 1;
            s.power_saving = power_saving || draining;
            s.takes_job = takes_job && !draining;
        });
    }

    /// The wrapped source's own state (what the node plans with: draining is not a battery).
    pub fn inner_state(&self) -> EnergyState {
        self.inner.state()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Closes (`true`) or opens the gate, and announces the change at once.
    pub fn drain(&self, on: bool) {
        self.draining.store(on, Ordering::Release);
        let s = self.inner.state();
        self.signal(s.power_saving, s.takes_job);
    }

    /// Sessions admitted through the gate that have not ended.
    pub fn active(&self) -> usize {
        self.active.count.load(Ordering::Acquire)
    }

    /// Waits until no admitted session is open, for at most `limit`; whether they all ended.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.active.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.active() == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.active() == 0;
            }
        }
    }
}

impl EnergySource for MoveGate {
    fn state(&self) -> EnergyState {
        let mut s = self.inner.state();
        if self.is_draining() {
            s.power_saving = true;
            s.takes_job = false;
        }
        s
    }

    fn admit(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("moving to another block range: no new sessions".into());
        }
        self.inner.admit()
    }

    fn begin_job(&self, max_tokens: u32) -> Result<JobTicket, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Busy(
                "moving to another block range: no new sessions".into(),
            ));
        }
        let ticket = self.inner.begin_job(max_tokens)?;
        self.active.count.fetch_add(1, Ordering::AcqRel);
        Ok(ticket.with_guard(SessionGuard(self.active.clone())))
    }

    fn on_job(&self, compute: Duration) {
        self.inner.on_job(compute);
    }

    fn state_changes(&self) -> Option<watch::Receiver<StateChange>> {
        Some(self.tx.subscribe())
    }
}

// ---------------------------------------------------------------------------------------------
// The node that places itself.

/// What a node with `--blocks auto` is made of. `template` is the node's configuration with
/// every field but the blocks, the throughput and (on a restart) the addresses final.
pub struct AutoNode {
    model: Option<Model>,
    device: Device,
    slowdown: f64,
    template: NodeConfig,
    gate: Arc<MoveGate>,
    opts: AutoOptions,
    keypair: Keypair,
    n_layers: u32,
    ms_per_block: f64,
}

/// Told about every start: the running node, its range, and whether it is the first start.
pub trait StartObserver: Send {
    fn started(&mut self, node: &RunningNode, blocks: BlockRange, first: bool);
}

impl<F: FnMut(&RunningNode, BlockRange, bool) + Send> StartObserver for F {
    fn started(&mut self, node: &RunningNode, blocks: BlockRange, first: bool) {
        self(node, blocks, first)
    }
}

/// Strips a trailing `/p2p/<id>` from an address.
fn without_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// The bootstrap list of a restart: every live peer's announced addresses (with its id), then
/// the node's original bootstrap peers.
fn restart_bootstrap(anns: &[Announcement], me: &[u8], original: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    let now = now_ms();
    for a in anns.iter().filter(|a| a.peer_id != me && a.is_live(now)) {
        let Ok(peer) = PeerId::from_bytes(&a.peer_id) else {
            continue;
        };
        for s in a.addrs.iter().take(4) {
            let Ok(addr) = s.parse::<Multiaddr>() else {
                continue;
            };
            let addr = without_p2p(&addr).with(Protocol::P2p(peer));
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    for a in original {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

impl AutoNode {
    /// `energy` is the node's own source; the node serves through a [`MoveGate`] around it.
    pub fn new(
        model: Model,
        device: Device,
        slowdown: f64,
        template: NodeConfig,
        energy: Arc<dyn EnergySource>,
        opts: AutoOptions,
    ) -> Self {
        let n_layers = template.n_layers;
        let keypair = template
            .net
            .keypair
            .clone()
            .unwrap_or_else(Keypair::generate_ed25519);
        AutoNode {
            model: Some(model),
            device,
            slowdown,
            template,
            gate: MoveGate::new(energy),
            opts,
            keypair,
            n_layers,
            ms_per_block: 0.0,
        }
    }

    /// The most blocks this node may host.
    fn max_blocks(&self) -> u32 {
        self.opts
            .max_blocks
            .unwrap_or(self.n_layers)
            .clamp(1, self.n_layers.max(1))
    }

    async fn load(&mut self, range: BlockRange) -> Result<Arc<dyn BlockRunner>, AutoError> {
        let model = self
            .model
            .take()
            .ok_or_else(|| AutoError::Join("the model was lost by an earlier load".into()))?;
        let device = self.device.clone();
        let r = range.as_range();
        let (model, loaded) = tokio::task::spawn_blocking(move || {
            let b = ModelRunner::load(&model, r, &device);
            (model, b)
        })
        .await
        .map_err(|e| AutoError::Join(e.to_string()))?;
        self.model = Some(model);
        let runner = loaded.map_err(|source| AutoError::Load { range, source })?;
        if runner.blocks().range() != range.as_range() {
            return Err(AutoError::LoadedOther {
                got: runner.blocks().range(),
                want: range,
            });
        }
        Ok(Arc::new(runner.with_slowdown(self.slowdown)))
    }

    /// Times one-token forwards through (up to) two blocks: ms per block, the best of three
    /// measurements (the least disturbed by other processes).
    async fn measure(&mut self) -> Result<f64, AutoError> {
        let k = self.n_layers.min(2);
        let runner = self.load(range_of(0, k)?).await?;
        let mut best = 0f32;
        for _ in 0..3 {
            best = best.max(node::estimate_throughput(runner.as_ref()));
        }
        if !(best.is_finite() && best > 0.0) {
            return Err(AutoError::Measure(best));
        }
        Ok(1000.0 / f64::from(best) / f64::from(k))
    }

    fn me(&self) -> OwnPeer {
        own_peer(
            self.ms_per_block,
            self.max_blocks(),
            &self.gate.inner_state(),
        )
    }

    /// The swarm's announcements of this model as a short-lived DHT client sees them (the
    /// node's own host does not exist yet); empty without bootstrap peers.
    async fn first_look(&self) -> Vec<Announcement> {
        if self.template.net.bootstrap.is_empty() {
            return Vec::new();
        }
        let cfg = NetConfig {
            keypair: None,
            listen: Vec::new(),
            bootstrap: self.template.net.bootstrap.clone(),
            dht_server: false,
            ..self.template.net.clone()
        };
        let (net, ev) = match sunswarm_net::new(cfg) {
            Ok(x) => x,
            Err(e) => {
                warn!("reading the swarm before choosing a range: {e}");
                return Vec::new();
            }
        };
        let event_loop = tokio::spawn(ev.run());
        let mut found: Vec<Announcement> = Vec::new();
        if let Err(e) = net.wait_ready(true, Duration::from_secs(30)).await {
            warn!("reading the swarm before choosing a range: {e}");
        } else {
            net.subscribe(sunswarm_protocol::dht::energy_topic(
                &self.template.model_id,
            ))
            .await
            .ok();
            // Two walks, merged: a walk on a loaded machine can miss a peer.
            for _ in 0..2 {
                for a in self.look(&net).await {
                    match found.iter_mut().find(|f| f.peer_id == a.peer_id) {
                        Some(f) if f.timestamp_ms < a.timestamp_ms => *f = a,
                        Some(_) => {}
                        None => found.push(a),
                    }
                }
            }
        }
        let _ = net.shutdown(Duration::from_millis(0)).await;
        let _ = event_loop.await;
        found
    }

    /// One walk of the swarm (bounded; errors are logged and give nothing).
    async fn look(&self, net: &sunswarm_net::Network) -> Vec<Announcement> {
        let walk = sunswarm_net::discovery::discover(net, &self.template.model_id, self.n_layers);
        match tokio::time::timeout(Duration::from_secs(20), walk).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                warn!("reading the swarm: {e}");
                Vec::new()
            }
            Err(_) => {
                warn!("reading the swarm took over 20 s");
                Vec::new()
            }
        }
    }

    fn plan(
        &self,
        anns: &[Announcement],
        current: Option<BlockRange>,
    ) -> Result<(Decision, Vec<HostedRange>), AutoError> {
        let me = self.keypair.public().to_peer_id().to_bytes();
        let others = hosted_others(anns, &me, &self.template.model_id, self.n_layers, now_ms());
        let d = decide(
            self.n_layers,
            &others,
            &self.me(),
            current.map(|r| (r.start, r.end)),
            self.opts.hysteresis,
        )?;
        Ok((d, others))
    }

    async fn start(
        &mut self,
        range: BlockRange,
        bootstrap: Vec<Multiaddr>,
        listen: Vec<Multiaddr>,
    ) -> Result<RunningNode, AutoError> {
        info!(blocks = %range, "loading blocks");
        let runner = self.load(range).await?;
        let throughput = node::estimate_throughput(runner.as_ref());
        let mut cfg = self.template.clone();
        cfg.blocks = range;
        cfg.throughput = throughput;
        cfg.net.keypair = Some(self.keypair.clone());
        cfg.net.bootstrap = bootstrap;
        cfg.net.listen = listen.clone();
        let energy: Arc<dyn EnergySource> = self.gate.clone();
        match node::start(cfg.clone(), runner.clone(), energy.clone()).await {
            Ok(n) => Ok(n),
            Err(e) if listen != self.template.net.listen => {
                // The old address may not be free yet: any address will do.
                warn!("starting on the previous address failed ({e}); trying a fresh one");
                cfg.net.listen = self.template.net.listen.clone();
                Ok(node::start(cfg, runner, energy).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Measures, chooses, serves, and re-plans until `stop` turns true; then leaves.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut observer: impl StartObserver,
    ) -> Result<(), AutoError> {
        self.ms_per_block = self.measure().await?;
        info!(
            ms_per_block = format!("{:.3}", self.ms_per_block),
            max_blocks = self.max_blocks(),
            "measured"
        );
        let anns = self.first_look().await;
        let (decision, others) = self.plan(&anns, None)?;
        let Decision::Take(score) = decision else {
            return Err(AutoError::Plan(PlanError::Infeasible {
                blocks: self.n_layers,
                reason: "the planner kept a range the node does not hold".into(),
            }));
        };
        let mut current = range_of(score.start, score.end)?;
        info!(
            blocks = %current,
            peers_seen = others.len(),
            covered = score.covered,
            throughput = format!("{:.2}", score.throughput),
            "chose my range"
        );
        let mut running = self
            .start(
                current,
                self.template.net.bootstrap.clone(),
                self.template.net.listen.clone(),
            )
            .await?;
        observer.started(&running, current, true);
        let mut before: Option<Coverage> = None;
        let stopped = |rx: &mut watch::Receiver<bool>| *rx.borrow_and_update();
        loop {
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(self.opts.replan_interval) => {}
            }
            if stopped(&mut stop) {
                break;
            }
            let anns = self.look(running.network()).await;
            let (decision, others) = match self.plan(&anns, Some(current)) {
                Ok(x) => x,
                Err(e) => {
                    warn!("re-planning: {e}");
                    continue;
                }
            };
            let now = coverage(self.n_layers, &others, Some(current))?;
            if let Some(b) = &before
                && let Some(reason) = replan_reason(b, &now)
            {
                info!(?reason, "coverage dropped; re-planning");
            }
            before = Some(now);
            let Decision::Move { .. } = decision else {
                continue;
            };
            // A pause of random length, then the same question on a fresh look.
            let pause = self.opts.replan_jitter.mul_f64(rand::random::<f64>());
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            if stopped(&mut stop) {
                break;
            }
            let anns = self.look(running.network()).await;
            let Ok((Decision::Move { from, to }, _)) = self.plan(&anns, Some(current)) else {
                debug!("the move is no longer worth it");
                continue;
            };
            let to_range = range_of(to.start, to.end)?;
            info!(
                from = %current,
                to = %to_range,
                covered_before = from.covered,
                covered_after = to.covered,
                throughput_before = format!("{:.2}", from.throughput),
                throughput_after = format!("{:.2}", to.throughput),
                "moving"
            );
            self.gate.drain(true);
            let drained = tokio::select! {
                _ = stop.changed() => false,
                d = self.gate.wait_idle(self.opts.drain_timeout) => d,
            };
            if stopped(&mut stop) {
                break;
            }
            if !drained {
                warn!(
                    open = self.gate.active(),
                    "open sessions did not end within the drain timeout; moving anyway"
                );
            }
            let listen: Vec<Multiaddr> = running.listen_addrs().iter().map(without_p2p).collect();
            let me = self.keypair.public().to_peer_id().to_bytes();
            let bootstrap = restart_bootstrap(&anns, &me, &self.template.net.bootstrap);
            running.leave().await;
            self.gate.drain(false);
            current = to_range;
            running = match self.start(current, bootstrap, listen).await {
                Ok(r) => r,
                Err(e) => {
                    warn!("restarting on blocks {current}: {e}");
                    return Err(e);
                }
            };
            observer.started(&running, current, false);
            before = None;
        }
        info!("stopping: leaving the swarm");
        running.leave().await;
        Ok(())
    }
}

/// Waits for a signal of `stop`'s sender or the future `until`, whichever first; used by the
/// binary to turn Ctrl-C / SIGTERM into a stop.
pub async fn stop_on(tx: watch::Sender<bool>, until: impl Future<Output = ()>) {
    until.await;
    let _ = tx.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_planner::auto::{best_range, score_range};
    use sunswarm_protocol::EnergyState;

    use crate::energy::Mains;

    fn ann(id: u8, start: u32, end: u32, tps: f32) -> Announcement {
        Announcement {
            peer_id: vec![id; 4],
            addrs: vec![],
            model_id: [7; 32],
            n_layers: 30,
            blocks: BlockRange { start, end },
            backend: "cpu".into(),
            throughput: tps,
            max_sessions: 4,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: 10,
            expires_ms: 1000,
        }
    }

    #[test]
    fn blocks_flag_takes_auto_or_a_range() {
        assert_eq!("auto".parse::<BlocksArg>().unwrap(), BlocksArg::Auto);
        assert_eq!(
            "0-9".parse::<BlocksArg>().unwrap(),
            BlocksArg::Fixed(BlockSpec::Range(BlockRange { start: 0, end: 10 }))
        );
        assert_eq!(
            "all".parse::<BlocksArg>().unwrap(),
            BlocksArg::Fixed(BlockSpec::All)
        );
        assert!("autox".parse::<BlocksArg>().is_err());
    }

    #[test]
    fn options_are_checked() {
        let args = AutoArgs {
            max_blocks: Some(12),
            replan_interval: 5.0,
            replan_jitter: 0.0,
            min_gain: 0.2,
            drain_timeout: 60.0,
        };
        let o = args.options(true).unwrap();
        assert_eq!(o.max_blocks, Some(12));
        assert!(matches!(
            args.options(false),
            Err(AutoError::MaxBlocksWithoutAuto)
        ));
        for bad in [
            AutoArgs {
                replan_interval: 0.0,
                ..args.clone()
            },
            AutoArgs {
                min_gain: -1.0,
                ..args.clone()
            },
            AutoArgs {
                max_blocks: Some(0),
                ..args.clone()
            },
            AutoArgs {
                drain_timeout: f64::NAN,
                ..args.clone()
            },
        ] {
            assert!(bad.options(true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn others_drop_me_other_models_the_dead_and_the_malformed() {
        let mut other_model = ann(2, 0, 10, 5.0);
        other_model.model_id = [8; 32];
        let mut dead = ann(3, 0, 10, 5.0);
        dead.expires_ms = 5;
        let mut outside = ann(4, 20, 31, 5.0);
        outside.n_layers = 30;
        let nan = ann(5, 0, 10, f32::NAN);
        let mut bad_rate = ann(6, 0, 10, 5.0);
        bad_rate.energy.max_job_rate = f32::INFINITY;
        let mut high_rate = ann(7, 10, 20, 5.0);
        high_rate.energy.max_job_rate = 3.0;
        let me = ann(1, 0, 30, 5.0);
        let good = ann(9, 20, 30, 5.0);
        let mut newer = ann(9, 0, 10, 6.0);
        newer.timestamp_ms = 20;
        let anns = vec![
            me,
            other_model,
            dead,
            outside,
            nan,
            bad_rate,
            high_rate,
            good,
            newer,
        ];
        let o = hosted_others(&anns, &[1; 4], &[7; 32], 30, 100);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!((o[0].start, o[0].end, o[0].max_job_rate), (10, 20, 1.0));
        // The same peer twice: the later entry (its newer range) counts once.
        assert_eq!((o[1].start, o[1].end), (0, 10));
        assert_eq!(o[1].speed, Speed::TokensPerSecond(6.0));
    }

    /// Nodes joining one after another, each choosing against the ones before, as the
    /// integration test runs them: 4 nodes of at most 12 of 30 blocks, equal speed.
    fn join(n: usize, max_blocks: u32) -> Vec<(u32, u32)> {
        let me = OwnPeer {
            ms_per_block: 2.0,
            max_blocks,
            max_job_rate: 1.0,
            power_saving: false,
        };
        let mut placed: Vec<(u32, u32)> = Vec::new();
        for _ in 0..n {
            let others: Vec<HostedRange> = placed
                .iter()
                .map(|&(start, end)| HostedRange {
                    start,
                    end,
                    speed: Speed::MsPerBlock(2.0),
                    max_job_rate: 1.0,
                    power_saving: false,
                })
                .collect();
            let s = best_range(30, &others, &me).unwrap();
            placed.push((s.start, s.end));
        }
        placed
    }

    /// Whether `ranges` chain from block 0 to 30 (a client can route), as the planner scores it.
    fn routable(ranges: &[(u32, u32)]) -> bool {
        let hosted: Vec<HostedRange> = ranges
            .iter()
            .map(|&(start, end)| HostedRange {
                start,
                end,
                speed: Speed::MsPerBlock(2.0),
                max_job_rate: 1.0,
                power_saving: false,
            })
            .collect();
        let probe = OwnPeer {
            ms_per_block: 2.0,
            max_blocks: 1,
            max_job_rate: 0.0,
            power_saving: true,
        };
        score_range(30, &hosted, &probe, 0, 1).unwrap().covered == 30
    }

    #[test]
    fn sequential_auto_nodes_cover_the_model_and_recover_a_loss() {
        let placed = join(4, 12);
        assert!(routable(&placed), "{placed:?}");
        // Three could not do it without moving from where they stand: some node's loss opens
        // a gap, which a move of the others closes (12 x 3 >= 30).
        let gap = (0..4)
            .filter(|&i| {
                let rest = placed
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, r)| *r);
                !routable(&rest.collect::<Vec<_>>())
            })
            .count();
        assert!(gap >= 1, "no single loss uncovers anything: {placed:?}");
        for lost in 0..4 {
            let mut left: Vec<(u32, u32)> = placed
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != lost)
                .map(|(_, r)| *r)
                .collect();
            // One node at a time re-plans against the others (the jitter's intent) until
            // nobody moves; it must end covered within a few moves.
            let me = OwnPeer {
                ms_per_block: 2.0,
                max_blocks: 12,
                max_job_rate: 1.0,
                power_saving: false,
            };
            let mut moves = 0;
            'outer: for _round in 0..6 {
                for i in 0..left.len() {
                    let others: Vec<HostedRange> = left
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &(start, end))| HostedRange {
                            start,
                            end,
                            speed: Speed::MsPerBlock(2.0),
                            max_job_rate: 1.0,
                            power_saving: false,
                        })
                        .collect();
                    if let Decision::Move { to, .. } =
                        decide(30, &others, &me, Some(left[i]), Hysteresis::default()).unwrap()
                    {
                        left[i] = (to.start, to.end);
                        moves += 1;
                        continue 'outer;
                    }
                }
                break;
            }
            assert!(routable(&left), "lost {lost}: {left:?} after {moves} moves");
            assert!(moves <= 3, "lost {lost}: {moves} moves");
        }
    }

    #[tokio::test]
    async fn the_gate_refuses_while_draining_and_counts_sessions() {
        let gate = MoveGate::new(Arc::new(Mains));
        let mut changes = gate.state_changes().unwrap();
        let t1 = gate.begin_job(16).unwrap();
        let t2 = gate.begin_job(16).unwrap();
        assert_eq!(gate.active(), 2);
        assert!(gate.admit().is_ok());
        gate.drain(true);
        assert!(
            changes.has_changed().unwrap(),
            "draining is announced at once"
        );
        let c = *changes.borrow_and_update();
        assert!(c.power_saving && !c.takes_job);
        assert!(gate.state().power_saving);
        assert!(
            !gate.inner_state().power_saving,
            "the node plans with its real state"
        );
        assert!(gate.admit().is_err());
        assert!(matches!(gate.begin_job(16), Err(Refusal::Busy(_))));
        assert!(!gate.wait_idle(Duration::from_millis(20)).await);
        drop(t1);
        assert_eq!(gate.active(), 1);
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_idle(Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        drop(t2);
        assert!(
            waiter.await.unwrap(),
            "the last session's end wakes the mover"
        );
        gate.drain(false);
        assert!(gate.admit().is_ok());
        assert!(!changes.borrow_and_update().power_saving);
    }

    #[test]
    fn restart_bootstrap_names_live_peers_with_their_ids() {
        let peer = PeerId::random();
        let mut a = ann(0, 0, 10, 1.0);
        a.peer_id = peer.to_bytes();
        a.addrs = vec!["/ip4/127.0.0.1/tcp/4001".into(), "garbage".into()];
        a.expires_ms = u64::MAX;
        let mut dead = a.clone();
        dead.peer_id = PeerId::random().to_bytes();
        dead.expires_ms = 1;
        let orig: Multiaddr =
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWAZZyhycX5sY7NxHgdHqUt8C2Bd3vWi3YpXi6sJTSgvkR"
                .parse()
                .unwrap();
        let b = restart_bootstrap(&[a, dead], &[1; 4], std::slice::from_ref(&orig));
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(
            b[0],
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
                .parse::<Multiaddr>()
                .unwrap()
        );
        assert_eq!(b[1], orig);
    }
}
