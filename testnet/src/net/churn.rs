//! `swarm-testnet churn`: clients keep generating while peers leave (SIGKILL and SIGTERM, in
//! turn) and replacements join, as volunteers' devices come and go. Every generation is compared
//! with what `--local` gives for its prompt; the run prints how many completed, how many were
//! identical, how many failed, and how long each repair took.
//!
//! Node 0 is the bootstrap peer (the swarm's well-known entry, as a deployment's initial peers
//! are) and stays; every other node is fair game. Every range has at least two replicas, so a
//! leave never makes the model uncoverable: what is measured is repair, not outage.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use sunswarm_models::{Model, ModelSource};
use sunswarm_protocol::BlockRange;

use super::launch::{Split, Testnet, TestnetOptions};
use super::process::find_binary;

/// `swarm-testnet churn`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Nodes at any time (at least twice --ranges: every range has replicas).
    #[arg(long, default_value_t = 6)]
    pub nodes: usize,
    /// The model is split into this many ranges; nodes take them in turn.
    #[arg(long, default_value_t = 3)]
    pub ranges: u32,
    /// Clients generating at once, each one generation after another.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// How long the clients generate.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// A node leaves every this many seconds (killed and stopped in turn), and a replacement
    /// with its range joins at once.
    #[arg(long, default_value_t = 30.0)]
    pub leave_every: f64,
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// Tokens per generation.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Which node leaves next is drawn with this seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Announcement lifetime of every node, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub announce_ttl: f64,
    /// Folder for node logs (default: a fresh temporary folder).
    #[arg(long)]
    pub log_dir: Option<std::path::PathBuf>,
    /// Print the summary as one JSON line too.
    #[arg(long)]
    pub json: bool,
}

/// Prompts the clients cycle through.
const PROMPTS: [&str; 8] = [
    "The three primary colours are",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List four planets of the solar system:",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "A good breakfast includes",
    "Solar panels turn sunlight into",
];

/// One generation's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Finished with these tokens; the repairs it needed took these times.
    Done {
        identical: bool,
        repairs: Vec<Repair>,
    },
    Failed(String),
}

/// One repair's times (ms): in all, and choosing the new route, opening it, replaying the
/// prefix into it (the client's `failover_events`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Repair {
    pub recovery_ms: f64,
    pub choose_ms: f64,
    pub open_ms: f64,
    pub replay_ms: f64,
    /// Rows the replay sent through the new route, summed over its hops (replayed tokens times
    /// hops), and those of them that surviving hops answered from what they kept.
    pub replayed_rows: u64,
    pub kept_rows: u64,
}

/// What a churn run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChurnSummary {
    pub generations: usize,
    pub completed: usize,
    pub identical: usize,
    pub wrong: usize,
    pub failed: usize,
    pub completed_share: f64,
    pub leaves: usize,
    pub joins: usize,
    pub repairs: usize,
    pub recovery_ms_median: Option<f64>,
    pub recovery_ms_p90: Option<f64>,
    pub recovery_ms_max: Option<f64>,
    /// Medians of the repairs' parts.
    pub choose_ms_median: Option<f64>,
    pub open_ms_median: Option<f64>,
    pub replay_ms_median: Option<f64>,
    /// Of all rows replayed through repaired routes (per hop), the share that surviving hops
    /// answered from what they kept instead of computing.
    pub kept_share: Option<f64>,
    /// The first few failures' messages.
    pub failures: Vec<String>,
}

/// The `q` quantile (0..=1) of `xs` by nearest rank; `None` when empty.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

impl ChurnSummary {
    pub fn of(outcomes: &[Outcome], leaves: usize, joins: usize) -> Self {
        let mut s = ChurnSummary {
            generations: outcomes.len(),
            completed: 0,
            identical: 0,
            wrong: 0,
            failed: 0,
            completed_share: 0.0,
            leaves,
            joins,
            repairs: 0,
            recovery_ms_median: None,
            recovery_ms_p90: None,
            recovery_ms_max: None,
            choose_ms_median: None,
            open_ms_median: None,
            replay_ms_median: None,
            kept_share: None,
            failures: Vec::new(),
        };
        let mut recoveries = Vec::new();
        for o in outcomes {
            match o {
                Outcome::Done { identical, repairs } => {
                    s.completed += 1;
                    if *identical {
                        s.identical += 1;
                    } else {
                        s.wrong += 1;
                    }
                    recoveries.extend_from_slice(repairs);
                }
                Outcome::Failed(why) => {
                    s.failed += 1;
                    if s.failures.len() < 5 {
                        s.failures.push(why.clone());
                    }
                }
            }
        }
        s.completed_share = if outcomes.is_empty() {
            0.0
        } else {
            s.completed as f64 / outcomes.len() as f64
        };
        s.repairs = recoveries.len();
        let part = |f: fn(&Repair) -> f64| recoveries.iter().map(f).collect::<Vec<f64>>();
        let total = part(|r| r.recovery_ms);
        s.recovery_ms_median = quantile(&total, 0.5);
        s.recovery_ms_p90 = quantile(&total, 0.9);
        s.recovery_ms_max = quantile(&total, 1.0);
        s.choose_ms_median = quantile(&part(|r| r.choose_ms), 0.5);
        s.open_ms_median = quantile(&part(|r| r.open_ms), 0.5);
        s.replay_ms_median = quantile(&part(|r| r.replay_ms), 0.5);
        let replayed: u64 = recoveries.iter().map(|r| r.replayed_rows).sum();
        let kept: u64 = recoveries.iter().map(|r| r.kept_rows).sum();
        s.kept_share = (replayed > 0).then(|| kept as f64 / replayed as f64);
        s
    }
}

/// The node layout: `ranges` even ranges of the model, node i serving range i mod `ranges`.
pub fn layout(n_layers: u32, ranges: u32, nodes: usize) -> Result<Vec<BlockRange>> {
    anyhow::ensure!(ranges >= 1, "--ranges must be at least 1");
    anyhow::ensure!(
        nodes >= 2 * ranges as usize,
        "--nodes {nodes} cannot give each of {ranges} ranges two replicas"
    );
    let split = BlockRange::split_even(n_layers, ranges)?;
    Ok((0..nodes).map(|i| split[i % split.len()]).collect())
}

/// Runs `swarm-client generate` once; the outcome against `want`.
async fn generate(
    client: &std::path::Path,
    model: &str,
    bootstrap: &str,
    prompt: &str,
    tokens: usize,
    want: Option<&Vec<u64>>,
    failure_log: &std::path::Path,
) -> Outcome {
    let mut c = tokio::process::Command::new(client);
    c.args(["generate", "--model", model, "--prompt", prompt])
        .args([
            "--max-new-tokens",
            &tokens.to_string(),
            "--ignore-eos",
            "--json",
        ])
        .args(["--bootstrap", bootstrap])
        .env("RUST_LOG", "warn,sunswarm_client=info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = match c.output().await {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("running swarm-client: {e}")),
    };
    if !out.status.success() {
        // anyhow's `Error: ...` line, or a panic's message (a backtrace may follow either).
        let err = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::write(failure_log, err.as_bytes());
        let mut lines = err.lines();
        let why = match lines.position(|l| l.starts_with("Error:") || l.contains("panicked at")) {
            Some(i) => err.lines().skip(i).take(6).collect::<Vec<_>>().join(" "),
            None => err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string(),
        };
        return Outcome::Failed(why);
    }
    let Some(v) = last_json(&out.stdout) else {
        return Outcome::Failed("no JSON from swarm-client".into());
    };
    let got = token_list(&v);
    let ms = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(f64::NAN);
    let repairs = v["failover_events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let kept: Vec<u64> = e["kept_rows"]
                        .as_array()
                        .map(|k| k.iter().filter_map(|v| v.as_u64()).collect())
                        .unwrap_or_default();
                    Repair {
                        recovery_ms: ms(e, "recovery_ms"),
                        choose_ms: ms(e, "choose_ms"),
                        open_ms: ms(e, "open_ms"),
                        replay_ms: ms(e, "replay_ms"),
                        replayed_rows: e["replayed_tokens"].as_u64().unwrap_or(0)
                            * kept.len() as u64,
                        kept_rows: kept.iter().sum(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Outcome::Done {
        identical: want.is_some_and(|w| *w == got),
        repairs,
    }
}

fn last_json(stdout: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn token_list(v: &serde_json::Value) -> Vec<u64> {
    v["tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

/// `--local`'s tokens for each prompt (the reference every swarm generation must equal).
fn references(client: &std::path::Path, model: &str, tokens: usize) -> Result<Vec<Vec<u64>>> {
    PROMPTS
        .iter()
        .map(|p| {
            let out = std::process::Command::new(client)
                .args(["generate", "--model", model, "--prompt", p, "--local"])
                .args([
                    "--max-new-tokens",
                    &tokens.to_string(),
                    "--ignore-eos",
                    "--json",
                ])
                .output()
                .context("running swarm-client --local")?;
            anyhow::ensure!(
                out.status.success(),
                "swarm-client --local failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(token_list(&last_json(&out.stdout).context("no JSON")?))
        })
        .collect()
}

/// Runs the churn experiment and returns what it measured.
pub async fn run(args: &ChurnArgs) -> Result<ChurnSummary> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        args.minutes > 0.0 && args.minutes.is_finite(),
        "--minutes must be positive"
    );
    anyhow::ensure!(
        args.leave_every >= 1.0 && args.leave_every.is_finite(),
        "--leave-every must be at least 1 second"
    );
    let client = find_binary("swarm-client")?;
    let src = ModelSource::parse(&args.model)?;
    let model = tokio::task::spawn_blocking(move || Model::open(&src)).await??;
    let n_layers = u32::try_from(model.config().n_layers)?;
    drop(model);
    let ranges = layout(n_layers, args.ranges, args.nodes)?;
    eprintln!("references: --local for {} prompts", PROMPTS.len());
    let refs = {
        let (client, model, n) = (client.clone(), args.model.clone(), args.max_new_tokens);
        tokio::task::spawn_blocking(move || references(&client, &model, n)).await??
    };
    let opts = TestnetOptions {
        nodes: ranges.len(),
        model: args.model.clone(),
        split: Split::List(ranges.clone()),
        announce_ttl: args.announce_ttl,
        log_dir: args.log_dir.clone(),
        ..TestnetOptions::default()
    };
    eprintln!("starting {} nodes", ranges.len());
    let net = Testnet::start(&opts).await?;
    let bootstrap = net.bootstrap.clone();
    eprintln!(
        "swarm up (logs in {}); {} clients for {} min, a node leaves every {} s",
        net.log_dir.display(),
        args.clients,
        args.minutes,
        args.leave_every
    );
    let until = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let refs = Arc::new(refs);
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let (client, model, bootstrap) = (client.clone(), args.model.clone(), bootstrap.clone());
        let (outcomes, refs, n) = (outcomes.clone(), refs.clone(), args.max_new_tokens);
        let log_dir = net.log_dir.clone();
        clients.push(tokio::spawn(async move {
            let mut k = c;
            while Instant::now() < until {
                let p = k % PROMPTS.len();
                let log = log_dir.join(format!("client-{c}-failed-{k}.log"));
                let o = generate(
                    &client,
                    &model,
                    &bootstrap,
                    PROMPTS[p],
                    n,
                    refs.get(p),
                    &log,
                )
                .await;
                if let Outcome::Failed(why) = &o {
                    eprintln!("client {c}: generation failed: {why}");
                } else if matches!(
                    o,
                    Outcome::Done {
                        identical: false,
                        ..
                    }
                ) {
                    eprintln!("client {c}: WRONG output for prompt {p}");
                }
                if let Ok(mut all) = outcomes.lock() {
                    all.push(o);
                }
                k += prompt_stride(c);
            }
        }));
    }
    let leave_every = Duration::from_secs_f64(args.leave_every);
    let seed = args.seed;
    let churn = tokio::task::spawn_blocking(move || churn_nodes(net, until, leave_every, seed));
    // The swarm stays up until the last client's last generation has ended.
    let (net, leaves, joins) = churn.await??;
    for c in clients {
        c.await?;
    }
    drop(net);
    let all = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    Ok(ChurnSummary::of(&all, leaves, joins))
}

/// Each client walks the prompts with its own stride, so concurrent clients mix prompts.
fn prompt_stride(c: usize) -> usize {
    1 + c % 3
}

/// Every `leave_every` until `until`: a random node other than node 0 leaves (SIGKILL and
/// SIGTERM in turn) and a replacement with its range joins. Returns the swarm, still up, and
/// (leaves, joins).
fn churn_nodes(
    mut net: Testnet,
    until: Instant,
    leave_every: Duration,
    seed: u64,
) -> Result<(Testnet, usize, usize)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut live: Vec<usize> = (1..net.nodes.len()).collect();
    let (mut leaves, mut joins) = (0, 0);
    let mut by_range: HashMap<BlockRange, usize> = HashMap::new();
    for n in &net.nodes {
        *by_range.entry(n.blocks).or_default() += 1;
    }
    loop {
        let next = Instant::now() + leave_every;
        if next >= until {
            break;
        }
        std::thread::sleep(next - Instant::now());
        if live.is_empty() {
            break;
        }
        let victim = live.swap_remove(rng.random_range(0..live.len()));
        let kill = leaves % 2 == 0;
        let blocks = net.nodes[victim].blocks;
        eprintln!(
            "{} node {victim} (blocks {blocks})",
            if kill { "killing" } else { "stopping" }
        );
        net.stop_node(victim, kill);
        leaves += 1;
        match net.add_node(blocks) {
            Ok(i) => {
                eprintln!("node {i} joined (blocks {blocks})");
                live.push(i);
                joins += 1;
            }
            Err(e) => eprintln!("a replacement for blocks {blocks} did not start: {e:#}"),
        }
    }
    Ok((net, leaves, joins))
}

/// `swarm-testnet churn`: runs, prints the summary.
pub fn main(args: ChurnArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(run(&args))?;
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "generations {} | completed {} ({:.1} %) | identical to --local {} | wrong {} | failed {}",
        s.generations,
        s.completed,
        100.0 * s.completed_share,
        s.identical,
        s.wrong,
        s.failed
    );
    println!(
        "leaves {} | joins {} | repairs {} | recovery median {} p90 {} max {} (medians: choose {}, open {}, replay {}) | replayed rows answered from kept outputs {}",
        s.leaves,
        s.joins,
        s.repairs,
        ms(s.recovery_ms_median),
        ms(s.recovery_ms_p90),
        ms(s.recovery_ms_max),
        ms(s.choose_ms_median),
        ms(s.open_ms_median),
        ms(s.replay_ms_median),
        s.kept_share
            .map(|k| format!("{:.0} %", 100.0 * k))
            .unwrap_or_else(|| "-".into())
    );
    for f in &s.failures {
        println!("failure: {f}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.9), Some(3.0));
        let xs = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&xs, 0.5), Some(3.0));
        assert_eq!(quantile(&xs, 0.9), Some(5.0));
        assert_eq!(quantile(&xs, 0.0), Some(1.0));
        assert_eq!(quantile(&xs, 1.0), Some(5.0));
    }

    #[test]
    fn a_summary_counts_every_outcome_once() {
        let done = |identical, r: &[f64]| Outcome::Done {
            identical,
            repairs: r
                .iter()
                .map(|&t| Repair {
                    recovery_ms: t,
                    replay_ms: t / 2.0,
                    replayed_rows: 30,
                    kept_rows: 20,
                    ..Repair::default()
                })
                .collect(),
        };
        let s = ChurnSummary::of(
            &[
                done(true, &[]),
                done(true, &[100.0, 300.0]),
                done(false, &[200.0]),
                Outcome::Failed("no route".into()),
            ],
            3,
            2,
        );
        assert_eq!((s.generations, s.completed, s.identical), (4, 3, 2));
        assert_eq!((s.wrong, s.failed, s.repairs), (1, 1, 3));
        assert_eq!(s.completed_share, 0.75);
        assert_eq!(s.recovery_ms_median, Some(200.0));
        assert_eq!(s.recovery_ms_max, Some(300.0));
        assert_eq!(s.replay_ms_median, Some(100.0));
        assert_eq!(s.kept_share, Some(20.0 / 30.0));
        assert_eq!(s.failures, vec!["no route".to_string()]);
        assert_eq!((s.leaves, s.joins), (3, 2));
        let empty = ChurnSummary::of(&[], 0, 0);
        assert_eq!(empty.completed_share, 0.0);
        assert_eq!(empty.recovery_ms_median, None);
        assert_eq!(empty.kept_share, None);
    }

    #[test]
    fn every_range_gets_two_replicas_or_the_layout_is_refused() {
        let l = layout(30, 3, 6).unwrap();
        assert_eq!(l.len(), 6);
        assert_eq!(l[0], l[3]);
        assert_eq!(l[2], BlockRange { start: 20, end: 30 });
        assert!(layout(30, 3, 5).is_err());
        assert!(layout(30, 0, 6).is_err());
    }
}
