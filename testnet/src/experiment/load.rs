//! Concurrent clients for the placement and routing experiments: one [`Engine`] in this process
//! (as `swarm-client serve` runs it: every generation shares its router), `clients` tasks each
//! running generations back to back, every generation's route and per-step timings recorded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use sunswarm_client::engine::{Engine, EngineConfig, Mode, Prompt};
use sunswarm_client::generate::{EachPiece, GenerateOptions};
use sunswarm_client::swarm::RoutingKind;
use sunswarm_models::BackendKind;
use sunswarm_protocol::BlockRange;

/// Prompts the clients cycle through (short, so decode dominates).
const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers:",
    "Why is the sky blue?",
    "Once upon a time, in a small village,",
    "The best way to learn a language is",
    "Explain photosynthesis briefly.",
    "A good name for a cat is",
];

/// One finished generation.
#[derive(Clone, Debug, Serialize)]
pub struct GenRecord {
    /// Order in which the generations started (0 first).
    pub order: usize,
    /// The route at the end: peer id bytes and range.
    #[serde(skip)]
    pub route: Vec<(Vec<u8>, BlockRange)>,
    pub tokens: usize,
    /// Each decode step's round trip, microseconds (one token through every hop and back).
    pub step_us: Vec<u64>,
    /// Each decode step's per-hop time (receiving the forward to passing it on), microseconds,
    /// in route order.
    #[serde(skip)]
    pub step_hop_total_us: Vec<Vec<u32>>,
    /// Each decode step's per-hop compute (of the whole pass it ran in), microseconds.
    #[serde(skip)]
    pub step_hop_compute_us: Vec<Vec<u32>>,
    pub failovers: usize,
}

/// A swarm engine for `model` joined at `bootstrap`, routing with `routing`, once its own
/// view of the swarm shows `peers` live peers covering the model (a first DHT walk can miss a
/// replica, and routes drawn before gossip fills it in would never see it).
pub async fn engine(
    model: &str,
    bootstrap: &str,
    routing: RoutingKind,
    peers: usize,
) -> Result<Engine> {
    let engine = Engine::start(EngineConfig {
        models: vec![model.to_string()],
        backend: BackendKind::Cpu,
        mode: Mode::Swarm {
            bootstrap: vec![bootstrap.parse().context("bootstrap address")?],
            swarm_key: None,
            routing,
        },
        connect_timeout: Duration::from_secs(30),
    })
    .await?;
    let m = engine.model(model)?;
    if let Some(s) = engine.swarm() {
        s.wait_for_coverage(&m.model_id, m.n_layers, peers, Duration::from_secs(60))
            .await
            .context("the client's view of the swarm")?;
    }
    Ok(engine)
}

/// Runs `clients` concurrent clients, each `per_client` generations of `tokens` new tokens back
/// to back; returns the records (in start order) and the wall time of the whole run.
pub async fn drive(
    engine: &Engine,
    model: &str,
    clients: usize,
    per_client: usize,
    tokens: usize,
    seed: u64,
) -> Result<(Vec<GenRecord>, Duration)> {
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let engine = engine.clone();
        let model = model.to_string();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_client);
            for k in 0..per_client {
                let m = engine.model(&model)?;
                let i = (seed as usize)
                    .wrapping_mul(7)
                    .wrapping_add(c * per_client + k);
                let ids = m.prompt_ids(&Prompt::Text(PROMPTS[i % PROMPTS.len()].into()))?;
                let opts = GenerateOptions {
                    max_new_tokens: tokens,
                    ignore_eos: true,
                    ..GenerateOptions::default()
                };
                let order = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let done = engine
                    .generate(m, &ids, &opts, &mut EachPiece(|_: &str| {}))
                    .await?;
                let hops = done.route.len();
                let steps: Vec<_> = done
                    .timings
                    .iter()
                    .filter(|t| t.n_tokens == 1 && !t.replay && t.hops.len() == hops)
                    .collect();
                out.push(GenRecord {
                    order,
                    route: done
                        .route
                        .iter()
                        .map(|h| (h.peer_id.clone(), h.blocks))
                        .collect(),
                    tokens: done.result.tokens.len(),
                    step_us: steps.iter().map(|t| t.rtt_us).collect(),
                    step_hop_total_us: steps
                        .iter()
                        .map(|t| t.hops.iter().map(|h| h.total_us).collect())
                        .collect(),
                    step_hop_compute_us: steps
                        .iter()
                        .map(|t| t.hops.iter().map(|h| h.compute_us).collect())
                        .collect(),
                    failovers: done.failovers.len(),
                });
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task panicked")??);
    }
    let wall = t0.elapsed();
    all.sort_by_key(|r| r.order);
    Ok((all, wall))
}

/// Mean and sample standard deviation.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// Nearest-rank percentile `p` in `[0, 100]` of `v` (0 for none).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(mean_sd(&[]), (0.0, 0.0));
        assert_eq!(mean_sd(&[2.0]), (2.0, 0.0));
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (sd - 1.0).abs() < 1e-12);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 95.0), 5.0);
        assert_eq!(percentile(&[], 95.0), 0.0);
    }
}
