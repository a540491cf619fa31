//! The live run: one group of `swarm-node` processes per harvest group, launched with the testnet
//! launcher (each group covers every layer, so every group's launch waits for a covered swarm;
//! groups after the first join the first through `--bootstrap`), then a Bernoulli stream of real
//! generations through the real swarm client, one per arrival, routed by the policy on the
//! gossiped energy state. Every slot samples each node's gossiped power-saving flag.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sunswarm_client::generate::{EachPiece, GenerateOptions, generate};
use sunswarm_client::swarm::{SessionError, SwarmClient, SwarmSession, route};
use sunswarm_energy::policy::PolicyKind;
use sunswarm_energy::sim::run_seed;
use sunswarm_models::{BackendKind, Model, ModelSource};
use sunswarm_protocol::{Announcement, BlockRange, DType, Hop};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::design::{Design, LiveCounts};
use sunswarm_testnet::net::{Split, Testnet, TestnetOptions};

/// Opens of one job that a hop refused, and the jobs the hops before the refusing one had
/// already taken on (each costs its node a job's energy without serving anything).
#[derive(Debug, Clone, Copy, Default)]
struct Refusals {
    opens: u64,
    wasted_hop_jobs: u64,
}

/// What became of one job.
enum JobEnd {
    Completed {
        tokens: u64,
        kilojoules: f64,
    },
    /// No route (every candidate of a layer in power saving or busy), or refused three times.
    Dropped,
    /// Opened but failed on the way (a node died, a timeout).
    Failed,
}

/// Gossip interval for the nodes: one slot, so each node announces every slot's state as its
/// slot ends (the announcer follows the battery's changes). Not faster: gossip several times a
/// slot starved debug-build nodes on a loaded machine (signed gossip verified by every peer)
/// until their streams timed out; power-saving flips are announced at once anyway.
fn gossip_secs(d: &Design) -> f64 {
    d.slot_wall().as_secs_f64().clamp(0.05, 2.0)
}

async fn start_swarm(
    d: &Design,
    model: &str,
    log_dir: &Path,
    n_layers: u32,
) -> Result<Vec<Testnet>> {
    let ranges = BlockRange::split_even(n_layers, u32::try_from(d.layers())?)?;
    let mut groups: Vec<Testnet> = Vec::new();
    for k in 0..d.groups {
        let mut node_args = vec!["--gossip-interval".to_string(), gossip_secs(d).to_string()];
        if let Some(first) = groups.first() {
            node_args.extend(["--bootstrap".to_string(), first.bootstrap.clone()]);
        }
        // Node i of the launch serves layer i; its battery (and harvest seed) is its own.
        let per_node_args = (0..ranges.len())
            .map(|layer| d.node_args(k, layer))
            .collect::<Result<_>>()?;
        let opts = TestnetOptions {
            nodes: ranges.len(),
            model: model.to_string(),
            split: Split::List(ranges.clone()),
            backend: "cpu".into(),
            announce_ttl: 30.0,
            log_dir: Some(log_dir.join(format!("group-{k}"))),
            node_args,
            per_node_args,
            ..TestnetOptions::default()
        };
        let net = Testnet::start(&opts)
            .await
            .with_context(|| format!("starting harvest group {k}"))?;
        info!(group = k, nodes = net.nodes.len(), "group up");
        groups.push(net);
    }
    Ok(groups)
}

struct Shared {
    client: SwarmClient,
    model: Model,
    head: sunswarm_client::head::SharedHead,
    tokenizer: sunswarm_models::TextTokenizer,
    policy: Box<dyn sunswarm_energy::policy::Policy>,
    tokens: usize,
}

/// `run_seed` stream of a job's route choices, from the job's seed.
const ROUTE_STREAM: u64 = 0x524F_5554;

async fn one_job(s: Rc<Shared>, seed: u64) -> (JobEnd, Refusals) {
    let mut refusals = Refusals::default();
    let end = job_attempts(s, seed, &mut refusals).await;
    (end, refusals)
}

async fn job_attempts(s: Rc<Shared>, seed: u64, refusals: &mut Refusals) -> JobEnd {
    // Route choices (uniform's draw, ties) follow the job's seed, so the design's seed reaches
    // every random choice the client makes; what the gossip shows at the time still varies.
    let mut route_rng = ChaCha8Rng::seed_from_u64(run_seed(seed, ROUTE_STREAM, 0));
    let model_id = s.model.model_id().0;
    let n_layers = s.model.config().n_layers as u32;
    let prompt = [1u32, 2, 3];
    let max_tokens = (prompt.len() + s.tokens) as u32;
    let mut avoid: Vec<Vec<u8>> = Vec::new();
    let mut session = loop {
        // Routes come from the gossiped state alone (what the policies are about), not from a
        // DHT walk per job, which on a loaded machine takes seconds.
        let gossip = s.client.network().gossip_view().await.unwrap_or_default();
        let int8 = sunswarm_models::int8_activations();
        let mut anns = route::usable(&gossip, &model_id, n_layers, int8, sunswarm_net::now_ms());
        anns.retain(|a| !avoid.contains(&a.peer_id));
        let idx = match route::plan(&anns, n_layers, s.policy.as_ref(), &mut route_rng) {
            Ok(r) => r,
            Err(e) => {
                debug!("job dropped: {e}");
                return JobEnd::Dropped;
            }
        };
        let route: Vec<Hop> = idx
            .iter()
            .map(|&i| Hop {
                peer_id: anns[i].peer_id.clone(),
                addrs: anns[i].addrs.clone(),
                blocks: anns[i].blocks,
            })
            .collect();
        let kj: f64 = idx
            .iter()
            .map(|&i| route::job_kilojoules(anns[i].energy.power_mode).unwrap_or(0.0))
            .sum();
        match SwarmSession::open(
            s.client.network(),
            model_id,
            route.clone(),
            DType::F32,
            max_tokens,
        )
        .await
        {
            Ok(session) => break (session, kj),
            Err(e) if avoid.len() < 3 => {
                debug!("open refused ({e}); choosing again");
                count_refusal(refusals, &route, &e);
                let culprit = match &e {
                    SessionError::Refused(w) => route.get(w.hop as usize),
                    _ => route.first(),
                };
                avoid.push(culprit.map(|h| h.peer_id.clone()).unwrap_or_default());
            }
            Err(e) => {
                count_refusal(refusals, &route, &e);
                debug!("job dropped after {} refusals: {e}", avoid.len());
                return JobEnd::Dropped;
            }
        }
    };
    debug!("job opened");
    let opts = GenerateOptions {
        max_new_tokens: s.tokens,
        ignore_eos: true,
        seed,
        ..GenerateOptions::default()
    };
    let out = generate(
        &s.head,
        &s.tokenizer,
        &mut session.0,
        &prompt,
        &opts,
        &mut EachPiece(|_: &str| {}),
    )
    .await;
    session.0.close().await;
    debug!(ok = out.is_ok(), "job ends");
    match out {
        Ok(r) => JobEnd::Completed {
            tokens: r.tokens.len() as u64,
            kilojoules: session.1,
        },
        Err(e) => {
            warn!("a job failed mid-generation: {e}");
            JobEnd::Failed
        }
    }
}

fn tally(counts: &mut LiveCounts, end: JobEnd) {
    match end {
        JobEnd::Completed { tokens, kilojoules } => {
            counts.completed += 1;
            counts.tokens += tokens;
            counts.kilojoules += kilojoules;
        }
        JobEnd::Dropped => counts.dropped += 1,
        JobEnd::Failed => {}
    }
}

/// Counts a refused open: the hops before the one to blame (the refusing hop, or the one a hop
/// could not reach) had each taken the job on.
fn count_refusal(r: &mut Refusals, route: &[Hop], e: &SessionError) {
    r.opens += 1;
    if let SessionError::Refused(_) = e {
        r.wasted_hop_jobs += sunswarm_client::swarm::session::failed_hop(route, e) as u64;
    }
}

/// Runs the live swarm under `policy` and counts what happened.
pub async fn run(
    d: &Design,
    policy: PolicyKind,
    model: &str,
    log_dir: &Path,
) -> Result<LiveCounts> {
    let src = ModelSource::parse(model)?;
    let m = Model::open(&src)?;
    let n_layers = u32::try_from(m.config().n_layers)?;
    anyhow::ensure!(
        n_layers as usize >= d.layers(),
        "model {model} has {n_layers} blocks, too few for {} layers",
        d.layers()
    );
    let dir: PathBuf = log_dir.join(policy.name());
    let swarm = start_swarm(d, model, &dir, n_layers).await?;
    // Dial every node up front: on a loaded machine a first dial at session open can time out.
    let addrs = swarm
        .iter()
        .flat_map(|g| g.nodes.iter().map(|n| n.listen.parse()))
        .collect::<Result<Vec<_>, _>>()?;
    let client = SwarmClient::connect(addrs, Duration::from_secs(30)).await?;
    let model_id = m.model_id().0;
    client.follow(&model_id).await?;
    client
        .wait_for_coverage(&model_id, n_layers, d.nodes, Duration::from_secs(60))
        .await?;
    let dev = sunswarm_models::device(BackendKind::Cpu)?;
    let head = m.load_head(&dev)?;
    let tokenizer = m.tokenizer()?;
    let shared = Rc::new(Shared {
        client,
        model: m,
        head: sunswarm_client::head::SharedHead::new(head),
        tokenizer,
        policy: policy.policy(),
        tokens: d.tokens_per_job,
    });

    // Probe: one job before the stream starts, so a swarm that cannot serve fails loudly rather
    // than reporting every job as dropped.
    let t0 = Instant::now();
    let probe = loop {
        // Dropped means no gossiped route yet: the gossip mesh may still be forming.
        match one_job(shared.clone(), 0).await.0 {
            JobEnd::Dropped if t0.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            end => break end,
        }
    };
    anyhow::ensure!(
        matches!(probe, JobEnd::Completed { .. }),
        "the probe job through the fresh swarm (bootstrap {}) did not complete in {:?}; node logs in {}",
        swarm[0].bootstrap,
        t0.elapsed(),
        dir.display()
    );
    info!(ms = t0.elapsed().as_millis() as u64, "probe job completed");
    let mut counts = LiveCounts::default();
    let mut rng = ChaCha8Rng::seed_from_u64(d.seed);
    let local = tokio::task::LocalSet::new();
    let mut jobs = Vec::new();
    local
        .run_until(async {
            let mut every = tokio::time::interval(d.slot_wall());
            for t in 0..d.slots + d.drain {
                every.tick().await;
                if t >= d.slots {
                    continue;
                }
                let now = sunswarm_net::now_ms();
                let anns = shared
                    .client
                    .network()
                    .gossip_view()
                    .await
                    .unwrap_or_default();
                let live: Vec<&Announcement> = anns
                    .iter()
                    .filter(|a| a.model_id == model_id && a.is_live(now))
                    .collect();
                counts.node_slots += live.len() as u64;
                let saving = live.iter().filter(|a| a.energy.power_saving).count();
                counts.saving_node_slots += saving as u64;
                debug!(
                    slot = t,
                    gossiped = anns.len(),
                    live = live.len(),
                    saving,
                    offered = counts.offered,
                    "slot"
                );
                if rng.random::<f64>() < d.job_prob {
                    counts.offered += 1;
                    jobs.push(tokio::task::spawn_local(one_job(
                        shared.clone(),
                        rng.random(),
                    )));
                }
            }
            // Jobs still running after the drain get a bounded wait, then count as not completed.
            let until = Instant::now() + d.slot_wall() * 30 + Duration::from_secs(10);
            for j in jobs {
                if let Ok(Ok((end, refusals))) = tokio::time::timeout_at(until, j).await {
                    counts.refused_opens += refusals.opens;
                    counts.wasted_hop_jobs += refusals.wasted_hop_jobs;
                    tally(&mut counts, end);
                }
            }
        })
        .await;
    drop(local);
    if let Ok(s) = Rc::try_unwrap(shared) {
        s.client.stop().await;
    }
    drop(swarm);
    Ok(counts)
}
