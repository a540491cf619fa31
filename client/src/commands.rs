//! The `swarm-client` commands, each a thin shell over the [`Engine`].

use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use serde::Serialize;
use sunswarm_models::BackendKind;

use crate::cli::GenerateArgs;
use crate::engine::{Completion, Engine, EngineConfig, Mode, Prompt, RouteEntry};
use crate::generate::{GenerateOptions, GenerationResult, TextSink};
use crate::swarm::{FailoverEvent, SwarmTimings, parse_routing, summarise, transit_breakdown};

/// Parses `--bootstrap` values.
pub fn parse_bootstrap(values: &[String]) -> Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .with_context(|| format!("--bootstrap {s:?} is not a multiaddr"))
        })
        .collect()
}

pub fn options(args: &GenerateArgs) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        ignore_eos: args.ignore_eos,
        prefill_chunk: args.prefill_chunk,
        token_deadline_ms: args.token_deadline_ms,
    }
}

/// `swarm-client generate`: one generation, streamed to stdout, with `--json` last.
pub async fn generate(args: &GenerateArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    let mode = if args.local {
        Mode::Local {
            split: args.local_split.clone(),
        }
    } else {
        Mode::Swarm {
            bootstrap: parse_bootstrap(&args.bootstrap)?,
            swarm_key: args.swarm_key.clone(),
            routing: parse_routing(&args.policy, &args.prior, args.deadline_ms)?,
        }
    };
    if args.prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let engine = Engine::start_with(
        EngineConfig {
            models: vec![args.model.clone()],
            backend,
            mode,
            connect_timeout: Duration::from_secs(30),
        },
        args.guards.safeguards()?,
    )
    .await
    .with_context(|| format!("starting with model {}", args.model))?;
    let model = engine.model(&args.model)?;
    let prompt = if args.chat {
        Prompt::Chat(vec![sunswarm_models::ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        }])
    } else {
        Prompt::Text(args.prompt.clone())
    };
    let ids = model.prompt_ids(&prompt)?;
    let opts = options(args);
    let done = engine.generate(model, &ids, &opts, &mut Terminal).await?;
    println!();
    if args.json {
        if args.local {
            println!("{}", serde_json::to_string(&done.result)?);
        } else {
            println!(
                "{}",
                serde_json::to_string(&SwarmOutput::of(&done, engine.connect_ms()))?
            );
        }
    }
    if let Some(swarm) = engine.swarm() {
        swarm.stop().await;
    }
    Ok(())
}

/// Streams the text to stdout and says the route on stderr as soon as it is open.
struct Terminal;

impl TextSink for Terminal {
    async fn piece(&mut self, text: &str) -> std::ops::ControlFlow<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        std::ops::ControlFlow::Continue(())
    }

    fn route_opened(&mut self, route: &[sunswarm_protocol::Hop]) {
        eprintln!("route: {}", crate::swarm::failover::describe_route(route));
    }
}

#[derive(Debug, Serialize)]
struct SwarmOutput<'a> {
    #[serde(flatten)]
    result: &'a GenerationResult,
    route: Vec<RouteEntry>,
    /// Route repairs during the generation (a peer died, timed out or refused).
    failovers: usize,
    failover_events: &'a [FailoverEvent],
    /// Energy the route's jobs cost per generated token, from the power-mode tables of the
    /// emulated nodes; null when a hop's energy is not modelled (mains, real batteries).
    joules_per_token: Option<f64>,
    swarm: SwarmTimings,
    /// Steps re-run through other replicas, mismatches found, peers banned.
    spot_checks: &'a crate::swarm::spot::SpotReport,
}

impl<'a> SwarmOutput<'a> {
    fn of(done: &'a Completion, connect_ms: f64) -> Self {
        let hops = done.route.len();
        let (rtt, over, per_hop) = summarise(&done.timings, hops);
        let (transit, handling) = transit_breakdown(&done.timings, hops);
        SwarmOutput {
            result: &done.result,
            route: done.route_entries(),
            failovers: done.failovers.len(),
            failover_events: &done.failovers,
            joules_per_token: done.joules_per_token,
            spot_checks: &done.spot_checks,
            swarm: SwarmTimings {
                connect_ms,
                open_ms: done.open_ms,
                route_ms: done.route_ms,
                decode_rtt_us_median: rtt,
                overhead_per_hop_us_median: over,
                hop_compute_us_median: per_hop,
                transit_us_median: transit,
                hop_handling_us_median: handling,
            },
        }
    }
}

/// `swarm-client fetch`: the model into the cache, and its id.
pub fn fetch(model: &str) -> Result<()> {
    let source = sunswarm_models::ModelSource::parse(model)?;
    let m = sunswarm_models::Model::open(&source)?;
    println!("{} model id {}", source.display_name(), m.model_id());
    Ok(())
}
