//! What the `swarm-node` binary does, as a library so that another binary can run the same node
//! with [`Hooks`] of its own (`swarm-testnet byzantine-node` runs hostile peers for the tests):
//! parse flags ([`NodeArgs`]), load the blocks, join the swarm, serve until Ctrl-C or SIGTERM,
//! then leave cleanly. Prints `PEER_ID=<id>`, one `LISTEN=<multiaddr>` per address and `READY` on
//! stdout (machine-readable for `swarm-testnet`); logs go to stderr. Errors are `anyhow`, as in
//! a binary: this is a binary's body.

use std::sync::Arc;
use std::time::Duration;

use crate::auto::{self, AutoNode, BlocksArg};
use crate::batch::BatchConfig;
use crate::compute::{BlockRunner, ModelRunner};
use crate::energy;
use crate::hooks::Hooks;
use crate::node::{self, NodeConfig, RunningNode};
use crate::session::SessionLimits;
use anyhow::Context;
use clap::Parser;
use libp2p::Multiaddr;
use sunswarm_models::{BackendKind, Model, ModelSource};
use sunswarm_net::NetConfig;
use sunswarm_protocol::BlockRange;

/// Serve a range of a model's transformer blocks to a Sunswarm swarm.
#[derive(Parser, Debug, Clone)]
#[command(name = "swarm-node", version)]
pub struct NodeArgs {
    /// Model: an alias (smollm2-135m), a .gguf file, a Hugging Face folder, or random:SHAPE.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Blocks to serve: `0-9` (inclusive), `0:10` (half-open), `all`, or `auto` (the node
    /// measures itself, reads the swarm and takes the range that helps it most; see
    /// --max-blocks and the other re-planning flags).
    #[arg(long, default_value = "all")]
    blocks: BlocksArg,
    #[command(flatten)]
    auto: auto::AutoArgs,
    /// Address to listen on (repeatable).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: Vec<Multiaddr>,
    /// A peer of the swarm to join through (repeatable); none starts a new swarm.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// The address others should dial instead of the listen addresses (repeatable): port
    /// forwarding on a home router, a proxy, a public address this machine cannot see. It is
    /// what the node announces and what identify tells peers.
    #[arg(long = "announce-addr")]
    announce_addr: Vec<Multiaddr>,
    /// Accept no direct connection at all (as behind a NAT that forwards nothing): the node
    /// dials out only, AutoNAT finds it unreachable and it listens through a relay. Needs
    /// --bootstrap.
    #[arg(long, conflicts_with_all = ["listen", "announce_addr"])]
    no_listen: bool,
    /// Relay for peers that cannot be dialled (circuit relay v2): this node must be reachable
    /// itself; it provides the relay key in the DHT, where such peers look.
    #[arg(long)]
    relay_server: bool,
    /// Compute backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    #[command(flatten)]
    energy: energy::EnergyArgs,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 16)]
    max_sessions: u32,
    /// Most tokens one session may hold.
    #[arg(long, default_value_t = 4096)]
    max_tokens: u32,
    /// Run in a private swarm: a pre-shared key file (go-ipfs `swarm.key` format); peers
    /// without the same key cannot connect. Private swarms use TCP only.
    #[arg(long)]
    swarm_key: Option<std::path::PathBuf>,
    /// A session's idle budget in seconds: the time it may spend waiting for its next message,
    /// summed over the session; each token it sends earns back --session-idle-per-token, up to
    /// this. A session that runs out is closed and its cache freed.
    #[arg(long, default_value_t = 60.0)]
    session_idle_timeout: f64,
    /// Seconds of idle budget each token a session sends earns back.
    #[arg(long, default_value_t = 2.0)]
    session_idle_per_token: f64,
    /// Seconds a new stream has to send its first message (an open or an attach).
    #[arg(long, default_value_t = 10.0)]
    first_frame_timeout: f64,
    /// Session places one client may hold.
    #[arg(long, default_value_t = 8)]
    max_sessions_per_peer: u32,
    /// Streams that have not opened a session yet, in all; more are dropped unread.
    #[arg(long, default_value_t = 256)]
    max_pending_streams: usize,
    /// Streams from one peer that have not opened a session yet.
    #[arg(long, default_value_t = 32)]
    max_pending_streams_per_peer: usize,
    /// KV-cache memory all sessions together may reserve, in MiB; a session reserves its
    /// `max_tokens` worth when it opens and is refused when that does not fit.
    #[arg(long, default_value_t = 4096)]
    max_kv_mib: u32,
    /// Announcement lifetime in seconds; refreshed at a quarter of it. A dead node leaves routes
    /// within this time.
    #[arg(long, default_value_t = 30.0)]
    announce_ttl: f64,
    /// New tokens one batched pass may take: the decode steps of up to this many sessions, or
    /// prompt chunks, run together; the oldest waiting step always runs.
    #[arg(long, default_value_t = 256)]
    pass_tokens: u32,
    /// The longest, in milliseconds, a pass waits for sessions this node serves whose next step
    /// is expected back soon, so that they share the pass (never longer than half the last
    /// pass took, or four passes while the machine's CPUs are contended; 0 never waits).
    #[arg(long, default_value_t = 20.0)]
    max_gather_ms: f64,
    /// Compute this many times slower than this machine can (at least 1): emulates a weaker
    /// device in heterogeneous testnets.
    #[arg(long, default_value_t = 1.0)]
    slowdown: f64,
    /// Seconds between energy-state gossip messages.
    #[arg(long, default_value_t = 2.0)]
    gossip_interval: f64,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && v > 0.0 && v < 86_400.0,
        "--{name} must be between 0 and 86400 seconds, got {v}"
    );
    Ok(Duration::from_secs_f64(v))
}

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `swarm-node`'s main: parse the flags, run the node on the compute runtime.
pub fn main() -> anyhow::Result<()> {
    init_logs();
    let args = NodeArgs::parse();
    run_blocking(args, Arc::new(crate::hooks::Honest))
}

/// Runs a node with `hooks` on this thread's compute runtime until a signal stops it.
pub fn run_blocking(args: NodeArgs, hooks: Arc<dyn Hooks>) -> anyhow::Result<()> {
    let rt = sunswarm_net::runtime::compute_runtime()?;
    rt.block_on(run(args, hooks))
}

/// Runs a node with `hooks` until a signal stops it.
pub async fn run(args: NodeArgs, hooks: Arc<dyn Hooks>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let auto_opts = args.auto.options(args.blocks == BlocksArg::Auto)?;
    let energy: Arc<dyn energy::EnergySource> = Arc::from(args.energy.build()?);
    let src = ModelSource::parse(&args.model)?;
    let model = tokio::task::spawn_blocking(move || Model::open(&src)).await??;
    let n_layers = u32::try_from(model.config().n_layers).context("model has too many blocks")?;
    anyhow::ensure!(
        args.slowdown.is_finite() && args.slowdown >= 1.0,
        "--slowdown must be a number of at least 1, got {}",
        args.slowdown
    );
    let device = sunswarm_models::device(args.backend)?;
    let spec = match args.blocks {
        BlocksArg::Fixed(spec) => spec,
        BlocksArg::Auto => {
            // Blocks and throughput are the auto node's to fill in, range by range.
            let template = node_config(
                &args,
                model.model_id().0,
                n_layers,
                BlockRange::new(0, n_layers)?,
                0.0,
            )?;
            let model_id = model.model_id();
            let auto_node =
                AutoNode::new(model, device, args.slowdown, template, energy, auto_opts);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(auto::stop_on(stop_tx, async {
                if let Err(e) = wait_for_signal().await {
                    tracing::warn!("waiting for a signal: {e}");
                    std::future::pending::<()>().await;
                }
            }));
            let announce = move |running: &RunningNode, blocks: BlockRange, first: bool| {
                if first {
                    announce_ready(running, blocks, n_layers, &model_id);
                    tokio::spawn(report_reachability(running.network().clone()));
                } else {
                    println!("MOVED blocks={blocks}");
                }
            };
            auto_node.run(stop_rx, announce).await?;
            return Ok(());
        }
    };
    let blocks = spec.resolve(n_layers)?;
    tracing::info!(blocks = %blocks, model = %model.model_id(), "loading blocks");
    let range = blocks.as_range();
    let (model, loaded) = tokio::task::spawn_blocking(move || {
        let b = ModelRunner::load(&model, range, &device);
        (model, b)
    })
    .await?;
    let runner = loaded?.with_slowdown(args.slowdown);
    // The node keeps only its blocks: dropping the model unmaps the file, whose pages the load
    // touched and which would otherwise stay resident beside the packed copy (about twice the
    // blocks' bytes in all).
    let model_id = model.model_id();
    drop(model);
    tracing::info!(
        blocks = %blocks,
        weight_mib = format!("{:.1}", runner.blocks().weight_bytes() as f64 / (1 << 20) as f64),
        lm_head = runner.has_head(),
        "blocks loaded"
    );
    // The node must never hold blocks outside its announced range.
    anyhow::ensure!(
        runner.blocks().range() == blocks.as_range(),
        "loaded blocks {:?}, asked for {blocks}",
        runner.blocks().range()
    );
    let runner = Arc::new(runner);
    // On this thread, which is a compute worker (`compute_runtime`), so the estimate sees the
    // same threads a session's forwards get.
    let throughput = node::estimate_throughput(runner.as_ref());
    let cfg = node_config(&args, model_id.0, n_layers, blocks, throughput)?;
    let runner: Arc<dyn BlockRunner> = runner;
    let running = node::start_with_hooks(cfg, runner, energy, hooks.clone()).await?;
    announce_ready(&running, blocks, n_layers, &model_id);
    tokio::spawn(report_reachability(running.network().clone()));
    tokio::spawn(report_coverage(
        running.network().clone(),
        model_id.0,
        n_layers,
        blocks,
        started,
    ));
    hooks.started(running.network(), blocks, &model_id.0);
    wait_for_signal().await?;
    tracing::info!("stopping: leaving the swarm");
    running.leave().await;
    Ok(())
}

/// `PEER_ID=`, one `BOUND=` per address the host listens on, one `LISTEN=` per address others
/// dial (the same unless `--announce-addr`) and `READY ...` on stdout, for `swarm-testnet`.
fn announce_ready(
    running: &RunningNode,
    blocks: BlockRange,
    n_layers: u32,
    model_id: &sunswarm_models::ModelId,
) {
    println!("PEER_ID={}", running.peer_id());
    for a in running.bound_addrs() {
        println!("BOUND={a}");
    }
    for a in running.listen_addrs() {
        println!("LISTEN={a}");
    }
    println!("READY blocks={blocks} n_layers={n_layers} model={model_id}");
}

/// Prints `COVERED after_ms=<since start>` once this node's view of the swarm (its own blocks
/// and the live announcements gossip brought) covers every block of the model: from then on
/// it could route a whole generation, and an operator knows the swarm is complete.
async fn report_coverage(
    net: sunswarm_net::Network,
    model: sunswarm_protocol::ModelDigest,
    n_layers: u32,
    own: BlockRange,
    started: std::time::Instant,
) {
    let mut covered = vec![false; n_layers as usize];
    covered[own.as_range()].iter_mut().for_each(|c| *c = true);
    loop {
        let Ok(view) = net.gossip_view().await else {
            return;
        };
        let now = sunswarm_net::now_ms();
        for a in view
            .iter()
            .filter(|a| a.model_id == model && a.expires_ms > now && a.blocks.end <= n_layers)
        {
            covered[a.blocks.as_range()]
                .iter_mut()
                .for_each(|c| *c = true);
        }
        if covered.iter().all(|&c| c) {
            let ms = started.elapsed().as_millis();
            tracing::info!("the swarm covers every block after {ms} ms");
            println!("COVERED after_ms={ms}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints `REACH=<label> nat=<..> relay=<peer or ->` each time how others reach the node
/// changes (public, relayed, direct-after-punch...), and logs it.
async fn report_reachability(net: sunswarm_net::Network) {
    use std::io::Write;
    let mut changes = net.reach_changes();
    let mut last = String::new();
    loop {
        let line = {
            let r = changes.borrow_and_update();
            let relay = r.relay.map_or("-".to_string(), |p| p.to_string());
            format!(
                "REACH={} nat={:?} relay={relay} punched={} punch_failed={}",
                r.label(),
                r.nat,
                r.punched,
                r.punch_failed
            )
        };
        if line != last {
            tracing::info!("{line}");
            println!("{line}");
            let _ = std::io::stdout().flush();
            last = line;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The node's configuration for `blocks` with this throughput estimate.
fn node_config(
    args: &NodeArgs,
    model_id: sunswarm_protocol::ModelDigest,
    n_layers: u32,
    blocks: BlockRange,
    throughput: f32,
) -> anyhow::Result<NodeConfig> {
    anyhow::ensure!(
        !args.no_listen || !args.bootstrap.is_empty(),
        "--no-listen needs --bootstrap: a node nobody can dial must find the swarm itself"
    );
    let announce_ttl = secs("announce-ttl", args.announce_ttl)?;
    let gossip_interval = secs("gossip-interval", args.gossip_interval)?;
    Ok(NodeConfig {
        net: NetConfig {
            listen: if args.no_listen {
                Vec::new()
            } else {
                args.listen.clone()
            },
            relay_server: args
                .relay_server
                .then(sunswarm_net::host::RelayLimits::default),
            bootstrap: args.bootstrap.clone(),
            announce: args.announce_addr.clone(),
            dht_server: true,
            record_ttl: announce_ttl,
            provider_ttl: announce_ttl * node::PROVIDER_TTL_FACTOR,
            swarm_key: args
                .swarm_key
                .as_deref()
                .map(sunswarm_net::read_swarm_key)
                .transpose()?,
            ..NetConfig::default()
        },
        model_id,
        n_layers,
        blocks,
        backend: announced_backend(args.backend),
        max_sessions: args.max_sessions.max(1),
        max_tokens: args
            .max_tokens
            .clamp(1, sunswarm_protocol::limits::MAX_SESSION_TOKENS),
        announce_ttl,
        gossip_interval,
        next_hop_timeout: Duration::from_secs(30),
        idle_timeout: secs("session-idle-timeout", args.session_idle_timeout)?,
        limits: SessionLimits {
            first_frame: secs("first-frame-timeout", args.first_frame_timeout)?,
            idle_per_token: Duration::try_from_secs_f64(args.session_idle_per_token)
                .ok()
                .filter(|d| *d < Duration::from_secs(86_400))
                .context("--session-idle-per-token must be a number of seconds >= 0")?,
            max_sessions_per_peer: args.max_sessions_per_peer.max(1),
            max_pending_streams: args.max_pending_streams.max(1),
            max_pending_streams_per_peer: args.max_pending_streams_per_peer.max(1),
            ..SessionLimits::default()
        },
        max_kv_mib: args.max_kv_mib,
        batch: BatchConfig {
            token_budget: args.pass_tokens,
            max_gather: Duration::try_from_secs_f64(args.max_gather_ms / 1e3)
                .ok()
                .filter(|d| *d <= Duration::from_secs(10))
                .context("--max-gather-ms must be a number of milliseconds from 0 to 10000")?,
            ..BatchConfig::default()
        },
        throughput,
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The backend as announced: the CPU backend says whether its weights multiply 8-bit activations
/// (only its packed weights do), so that clients keep a session on peers of one kind.
fn announced_backend(backend: BackendKind) -> String {
    let name = backend.to_string();
    if backend == BackendKind::Cpu && sunswarm_models::int8_activations() {
        format!("{name}{}", sunswarm_protocol::announce::INT8_SUFFIX)
    } else {
        name
    }
}
