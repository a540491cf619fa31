//! `swarm-testnet up` (a local swarm that runs until SIGINT/SIGTERM) and `swarm-testnet demo`
//! (the main job end to end: model, 3 nodes, a chat answer through them, printed with the route).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::launch::{Byzantine, Slowdown, Split, Testnet, TestnetOptions, apply_slowdowns};
use super::link::LinkProfile;
use super::process::find_binary;

/// `swarm-testnet up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of nodes (with `--split even`).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Model every node serves.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// `even`, `auto` (every node runs `--blocks auto`, started one after another), or one
    /// inclusive range per node: 0-9,10-19,10-19,20-29 (replicas allowed).
    #[arg(long, default_value = "even")]
    pub split: Split,
    /// Compute backend of every node: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Announcement lifetime of every node, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub announce_ttl: f64,
    /// Folder for node logs (default: a fresh temporary folder).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Make the swarm private with this pre-shared key file (go-ipfs `swarm.key` format).
    #[arg(long)]
    pub swarm_key: Option<PathBuf>,
    /// An extra flag for every node (repeatable; `{i}` becomes the node's index), e.g.
    /// `--node-arg=--energy --node-arg=emulated:initial=6{i},seed={i}`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// `I:FACTOR`: node I computes FACTOR times slower (a weaker device); repeatable, e.g.
    /// `--slowdown 2:2 --slowdown 3:4`.
    #[arg(long = "slowdown")]
    pub slowdowns: Vec<Slowdown>,
    /// `I:MODE`: node I runs a hostile behaviour (`swarm-testnet byzantine-node --mode MODE`):
    /// wrong-output, rewrite-route, flood-gossip, forge-announcements, inflate-rate,
    /// hold-sessions, blame-next or idle-connections, some with parameters (e.g.
    /// `1:flood-gossip:keys=1000`). Repeatable.
    #[arg(long = "byzantine")]
    pub byzantine: Vec<Byzantine>,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Node I accepts no direct connection (as behind a NAT): it finds itself unreachable and
    /// listens through node 0, which runs as a relay. Repeatable; not node 0.
    #[arg(long = "relayed")]
    pub relayed: Vec<usize>,
}

/// Wide-area links: with any of these, every connection to a node (from a client or another
/// node) passes through a proxy with these properties, in both directions.
#[derive(Debug, Default, clap::Args)]
pub struct LinkArgs {
    /// One-way delay of every link, in milliseconds.
    #[arg(long)]
    pub link_latency_ms: Option<u64>,
    /// Each chunk's delay varies uniformly by up to this many milliseconds (order is kept).
    #[arg(long)]
    pub link_jitter_ms: Option<u64>,
    /// Each link's rate in each direction, in kilobits per second.
    #[arg(long)]
    pub link_bandwidth_kbps: Option<u64>,
    /// A connection is cut once this many bytes have crossed it in one direction.
    #[arg(long)]
    pub link_loss_after_bytes: Option<u64>,
}

impl LinkArgs {
    /// The links' profile, or `None` when no `--link-*` flag was given (plain loopback).
    pub fn profile(&self) -> Result<Option<LinkProfile>> {
        if self.link_latency_ms.is_none()
            && self.link_jitter_ms.is_none()
            && self.link_bandwidth_kbps.is_none()
            && self.link_loss_after_bytes.is_none()
        {
            return Ok(None);
        }
        let ms = |v: Option<u64>| std::time::Duration::from_millis(v.unwrap_or(0));
        let p = LinkProfile {
            latency: ms(self.link_latency_ms),
            jitter: ms(self.link_jitter_ms),
            bandwidth_kbps: self.link_bandwidth_kbps,
            loss_after_bytes: self.link_loss_after_bytes,
        };
        p.check().context("--link-* flags")?;
        Ok(Some(p))
    }
}

/// `swarm-testnet demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(
        long,
        default_value = "What is the capital of France? Answer in one sentence."
    )]
    pub prompt: String,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn options(
    nodes: usize,
    model: &str,
    split: Split,
    backend: &str,
    ttl: f64,
    log_dir: Option<PathBuf>,
) -> Result<TestnetOptions> {
    if let Split::List(l) = &split {
        anyhow::ensure!(
            nodes == 3 || nodes == l.len(),
            "--nodes {nodes} disagrees with --split ({} ranges)",
            l.len()
        );
    }
    anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
    Ok(TestnetOptions {
        nodes,
        model: model.into(),
        split,
        backend: backend.into(),
        announce_ttl: ttl,
        log_dir,
        node_args: Vec::new(),
        ..TestnetOptions::default()
    })
}

/// Runs `up`: start, print the bootstrap address and the nodes, wait for a signal, stop all.
pub fn up(args: UpArgs) -> Result<()> {
    init_logs();
    let mut opts = options(
        args.nodes,
        &args.model,
        args.split,
        &args.backend,
        args.announce_ttl,
        args.log_dir,
    )?;
    opts.swarm_key = args.swarm_key;
    opts.byzantine = args.byzantine;
    opts.link = args.link.profile()?;
    opts.relayed = args.relayed;
    let count = match &opts.split {
        Split::List(l) => l.len(),
        Split::Even | Split::Auto => opts.nodes,
    };
    opts.per_node_args = (0..count)
        .map(|i| {
            args.node_args
                .iter()
                .map(|a| a.replace("{i}", &i.to_string()))
                .collect()
        })
        .collect();
    apply_slowdowns(&mut opts.per_node_args, count, &args.slowdowns)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let net = Testnet::start(&opts).await?;
        println!("SWARM_BOOTSTRAP={}", net.bootstrap);
        for l in net.node_lines() {
            println!("{l}");
        }
        eprintln!("logs in {}; Ctrl-C stops every node", net.log_dir.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        eprintln!("stopping {} nodes", net.nodes.len());
        drop(net);
        Ok(())
    })
}

/// Runs `demo`: a chat answer through a fresh 3-node swarm, with the route.
pub fn demo(args: DemoArgs) -> Result<()> {
    init_logs();
    let client = find_binary("swarm-client")?;
    let opts = options(
        args.nodes,
        &args.model,
        Split::Even,
        &args.backend,
        30.0,
        None,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        eprintln!(
            "starting {} nodes serving {} (the model is fetched first if needed)...",
            opts.nodes, opts.model
        );
        let net = Testnet::start(&opts).await?;
        for l in net.node_lines() {
            eprintln!("{l}");
        }
        eprintln!("asking: {}", args.prompt);
        let out = Command::new(&client)
            .args([
                "generate",
                "--model",
                &args.model,
                "--chat",
                "--prompt",
                &args.prompt,
                "--json",
            ])
            .args([
                "--max-new-tokens",
                &args.max_new_tokens.to_string(),
                "--backend",
                &args.backend,
            ])
            .args(["--bootstrap", &net.bootstrap])
            .output()
            .context("running swarm-client")?;
        anyhow::ensure!(
            out.status.success(),
            "swarm-client failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .context("swarm-client printed no JSON")?;
        // The end-of-turn token is part of the generated text; the answer is what precedes it.
        let text = json["text"].as_str().unwrap_or_default();
        println!(
            "{}",
            text.split("<|im_end|>").next().unwrap_or_default().trim()
        );
        println!();
        if let Some(route) = json["route"].as_array() {
            for (i, hop) in route.iter().enumerate() {
                let b = &hop["blocks"];
                println!(
                    "hop {i}: blocks {}..{} on {}",
                    b[0],
                    b[1],
                    hop["peer"].as_str().unwrap_or("?")
                );
            }
        }
        println!(
            "time to first token {:.0} ms, decode {:.1} tokens/s, overhead per hop {:.0} us",
            json["ttft_ms"].as_f64().unwrap_or(0.0),
            json["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            json["swarm"]["overhead_per_hop_us_median"]
                .as_f64()
                .unwrap_or(0.0)
        );
        drop(net);
        Ok(())
    })
}
