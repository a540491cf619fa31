//! The client as a library: one [`Engine`] holds the models' embeddings, LM heads and
//! tokenizers, and either the network host of a swarm or (`--local`) every block in this
//! process, and runs many generations at once. `swarm-client generate` runs one generation on it;
//! `swarm-client serve` runs many, one per HTTP request.
//!
//! A generation is: tokenize (or render the chat template), choose a route with the policy,
//! open a session on it, run the loop of [`crate::generate`] with failover, close the session.
//! A generation whose [`TextSink`] stops it (a stop sequence, or an HTTP reader that went away)
//! closes its session on every hop at once, so the peers free its cache.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;
use sunswarm_energy::policy::PolicyKind;
use sunswarm_models::{
    BackendKind, BatchStep, ChatMessage, HiddenStates, LoadedBlocks, Model, ModelError,
    ModelSource, TextTokenizer, device,
};
use sunswarm_protocol::{BlockRange, DType, Hop, ModelDigest};

use crate::generate::{
    GenerateError, GenerateOptions, GenerationResult, LocalPipeline, TextSink, generate,
};
use crate::head::SharedHead;
use crate::swarm::spot::{Forward, Referee, SharedReferee, SpotChecks, SpotReport};
use crate::swarm::{
    CsUcbRouter, FailoverEvent, ForwardTiming, OpenParams, OwnedRouting, ResilientSession,
    RoutingKind, SwarmClient, SwarmError, route,
};

/// Why an engine could not start, or a generation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("no model given")]
    NoModel,
    #[error("model {name}: {source}")]
    Model {
        name: String,
        #[source]
        source: ModelError,
    },
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("the model's blocks are not covered by live peers: {0}")]
    NotCovered(SwarmError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens and asks for {new} more: the model's context holds {context}"
    )]
    ContextExceeded {
        prompt: usize,
        new: usize,
        context: usize,
    },
    #[error("--local-split {0}")]
    BadSplit(String),
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("the runtime stopped a loading task: {0}")]
    Join(String),
}

/// Where the blocks run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Every block in this process; `split` chains block ranges (`0-9,10-19,20-29`) each with its
    /// own cache, which must not change the output.
    Local { split: Option<String> },
    /// Through a swarm, joined at `bootstrap`.
    Swarm {
        bootstrap: Vec<Multiaddr>,
        swarm_key: Option<PathBuf>,
        /// How each hop's peer is chosen (`--policy`, and for cs-ucb `--prior`, `--deadline-ms`).
        routing: RoutingKind,
    },
}

/// What a swarm client does against peers that misbehave (see `client/src/swarm/share.rs` and
/// the spot checks), beyond the checks it always makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Safeguards {
    /// Most of the routes at one block any one peer may get (`--max-route-share`).
    pub max_route_share: f64,
    /// Which steps are re-run through other replicas and compared (`--spot-check`).
    pub spot_checks: SpotChecks,
    /// Apply the LM head in this client instead of letting the last hop pick the tokens
    /// (`--client-head`).
    pub client_head: bool,
}

impl Default for Safeguards {
    fn default() -> Self {
        Safeguards {
            max_route_share: crate::swarm::share::DEFAULT_MAX_ROUTE_SHARE,
            spot_checks: SpotChecks::default(),
            client_head: false,
        }
    }
}

/// The client's own run of a block range, the third opinion when a spot check finds two peers
/// disagreeing. Loads a range from the model file the first time it is asked for.
struct BlockReferee {
    model: Model,
    device: sunswarm_models::Device,
    loaded: std::sync::Mutex<Vec<(BlockRange, Arc<LoadedBlocks>)>>,
}

impl Referee for BlockReferee {
    fn run(
        &self,
        blocks: BlockRange,
        input: &HiddenStates,
        forwards: &[Forward],
    ) -> Result<HiddenStates, String> {
        let held = self
            .loaded
            .lock()
            .map_err(|_| "referee lock poisoned".to_string())?
            .iter()
            .find(|(b, _)| *b == blocks)
            .map(|(_, l)| l.clone());
        let range = match held {
            Some(l) => l,
            None => {
                let l = Arc::new(
                    self.model
                        .load_blocks(blocks.start as usize..blocks.end as usize, &self.device)
                        .map_err(|e| e.to_string())?,
                );
                if let Ok(mut held) = self.loaded.lock() {
                    held.push((blocks, l.clone()));
                }
                l
            }
        };
        if forwards.iter().map(|f| f.rows).sum::<usize>() != input.n_tokens {
            return Err(format!(
                "the replay's forwards do not add up to the {} rows to check",
                input.n_tokens
            ));
        }
        let mut cache = range.new_cache();
        let mut out = Vec::with_capacity(input.data.len());
        let mut rest = &input.data[..];
        for f in forwards {
            let (rows, after) = rest.split_at(f.rows * input.dim);
            rest = after;
            let part =
                HiddenStates::new(f.rows, input.dim, rows.to_vec()).map_err(|e| e.to_string())?;
            let result = if f.stepwise {
                let mut step = [BatchStep {
                    cache: &mut cache,
                    input: &part,
                    stepwise: true,
                }];
                range.forward_batch(&mut step).remove(0)
            } else {
                range.forward(&mut cache, &part)
            };
            out.extend(result.map_err(|e| e.to_string())?.data);
        }
        HiddenStates::new(input.n_tokens, input.dim, out).map_err(|e| e.to_string())
    }
}

/// How to start an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Models as given to `--model`; each is served under that name.
    pub models: Vec<String>,
    pub backend: BackendKind,
    pub mode: Mode,
    /// How long joining the swarm may take.
    pub connect_timeout: Duration,
}

/// A model this engine serves: what the client holds of it (embedding, LM head, tokenizer) and,
/// in local mode, its blocks.
pub struct ServedModel {
    /// The name it was given (`--model`), which requests use.
    pub name: String,
    pub model_id: ModelDigest,
    pub n_layers: u32,
    /// Positions the model holds: prompt plus generated tokens.
    pub context_len: usize,
    pub tokenizer: TextTokenizer,
    /// Shared by every generation of this model, so that their LM heads run together.
    head: SharedHead,
    local: Vec<Arc<LoadedBlocks>>,
    /// Runs a block range in this process when a spot check needs a third opinion.
    referee: SharedReferee,
}

/// What a generation is asked to continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text as given (control tokens such as `<|im_start|>` are recognized).
    Text(String),
    /// Messages, rendered with the model's chat template and its generation prompt.
    Chat(Vec<ChatMessage>),
}

/// A finished generation and how it went.
#[derive(Debug, Clone)]
pub struct Completion {
    pub result: GenerationResult,
    /// The route at the end (empty in local mode).
    pub route: Vec<Hop>,
    pub failovers: Vec<FailoverEvent>,
    /// Every forward's timing through the route (empty in local mode).
    pub timings: Vec<ForwardTiming>,
    /// Energy of the route's jobs per generated token, from the peers' announced power modes;
    /// `None` in local mode and when a hop's energy is not modelled (mains, real batteries).
    pub joules_per_token: Option<f64>,
    /// Route choice and opening the session on every hop.
    pub open_ms: f64,
    /// The route choice alone (discovery and the routing policy), within `open_ms`.
    pub route_ms: f64,
    /// What the spot checks found (all zero in local mode).
    pub spot_checks: SpotReport,
}

/// One hop of a route, for JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteEntry {
    pub peer: String,
    /// Half-open block range.
    pub blocks: [u32; 2],
    /// `public` or `relayed` (the hop announced only a relay's address).
    pub reach: &'static str,
}

impl Completion {
    pub fn route_entries(&self) -> Vec<RouteEntry> {
        route_entries(&self.route)
    }
}

/// The hops of a route as peer names and ranges.
pub fn route_entries(route: &[Hop]) -> Vec<RouteEntry> {
    route
        .iter()
        .map(|h| RouteEntry {
            peer: crate::swarm::failover::peer_name(Some(h)),
            blocks: [h.blocks.start, h.blocks.end],
            reach: sunswarm_net::reach::peer_reach(&h.addrs, false),
        })
        .collect()
}

/// The client: models and the way to their blocks. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    models: Vec<ServedModel>,
    swarm: Option<SwarmClient>,
    /// Shared by every generation: a learned router learns from all of them.
    routing: Box<dyn OwnedRouting>,
    connect_ms: f64,
    spot_checks: SpotChecks,
    client_head: bool,
}

impl Engine {
    /// Loads every model's client part (and, in local mode, its blocks) and joins the swarm,
    /// with the default [`Safeguards`].
    pub async fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        Self::start_with(cfg, Safeguards::default()).await
    }

    /// [`start`](Self::start) with these [`Safeguards`].
    pub async fn start_with(cfg: EngineConfig, guards: Safeguards) -> Result<Engine, EngineError> {
        if cfg.models.is_empty() {
            return Err(EngineError::NoModel);
        }
        let split = match &cfg.mode {
            Mode::Local { split } => Some(split.clone()),
            Mode::Swarm { .. } => None,
        };
        let mut models = Vec::with_capacity(cfg.models.len());
        for name in &cfg.models {
            let (name, backend, split) = (name.clone(), cfg.backend, split.clone());
            let loaded = tokio::task::spawn_blocking(move || load_model(&name, backend, split))
                .await
                .map_err(|e| EngineError::Join(e.to_string()))??;
            models.push(loaded);
        }
        let (swarm, routing, connect_ms) = match cfg.mode {
            Mode::Local { .. } => (
                None,
                RoutingKind::Policy(PolicyKind::Uniform).routing()?,
                0.0,
            ),
            Mode::Swarm {
                bootstrap,
                swarm_key,
                routing,
            } => {
                let routing = routing.routing_with_share(guards.max_route_share)?;
                let t = Instant::now();
                let client = SwarmClient::connect_private(
                    bootstrap,
                    swarm_key.as_deref(),
                    cfg.connect_timeout,
                )
                .await?;
                for m in &models {
                    client.follow(&m.model_id).await?;
                }
                (Some(client), routing, t.elapsed().as_secs_f64() * 1e3)
            }
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                models,
                swarm,
                routing,
                connect_ms,
                spot_checks: guards.spot_checks,
                client_head: guards.client_head,
            }),
        })
    }

    pub fn models(&self) -> &[ServedModel] {
        &self.inner.models
    }

    /// The model served under `name`.
    pub fn model(&self, name: &str) -> Result<&ServedModel, EngineError> {
        self.inner
            .models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_string()))
    }

    /// The swarm this engine generates through (`None` in local mode).
    pub fn swarm(&self) -> Option<&SwarmClient> {
        self.inner.swarm.as_ref()
    }

    pub fn policy_name(&self) -> &'static str {
        self.inner.routing.name()
    }

    /// The learned router (`--policy cs-ucb`), to read what it has learned.
    pub fn learned(&self) -> Option<&CsUcbRouter> {
        self.inner.routing.learned()
    }

    /// Time it took to join the swarm (0 in local mode).
    pub fn connect_ms(&self) -> f64 {
        self.inner.connect_ms
    }

    /// Whether every block of `model` is served by a live peer now (always true locally).
    /// Looks the swarm up, so it costs a DHT walk.
    pub async fn check_coverage(&self, model: &ServedModel) -> Result<(), EngineError> {
        let Some(swarm) = self.swarm() else {
            return Ok(());
        };
        let anns = swarm.discover(&model.model_id, model.n_layers).await?;
        route::plan(
            &anns,
            model.n_layers,
            &sunswarm_energy::policy::Uniform,
            &mut rand::rng(),
        )
        .map(|_| ())
        .map_err(|e| EngineError::NotCovered(e.into()))
    }

    /// Generates from `prompt_ids` (see [`ServedModel::prompt_ids`]), streaming the text into
    /// `sink`. The session is closed on every hop however the generation ends.
    pub async fn generate(
        &self,
        model: &ServedModel,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        sink: &mut impl TextSink,
    ) -> Result<Completion, EngineError> {
        model.check_context(prompt_ids.len(), opts.max_new_tokens)?;
        match self.swarm() {
            None => {
                let mut pipeline = LocalPipeline::new(model.local.clone());
                let result = generate(
                    &model.head,
                    &model.tokenizer,
                    &mut pipeline,
                    prompt_ids,
                    opts,
                    sink,
                )
                .await?;
                Ok(Completion {
                    result,
                    route: Vec::new(),
                    failovers: Vec::new(),
                    timings: Vec::new(),
                    joules_per_token: None,
                    open_ms: 0.0,
                    route_ms: 0.0,
                    spot_checks: SpotReport::default(),
                })
            }
            Some(swarm) => {
                self.generate_through(swarm, model, prompt_ids, opts, sink)
                    .await
            }
        }
    }

    async fn generate_through(
        &self,
        swarm: &SwarmClient,
        model: &ServedModel,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        sink: &mut impl TextSink,
    ) -> Result<Completion, EngineError> {
        let max_tokens = u32::try_from(prompt_ids.len() + opts.max_new_tokens).unwrap_or(u32::MAX);
        let t = Instant::now();
        let mut session = ResilientSession::open(
            swarm,
            model.model_id,
            model.n_layers,
            self.inner.routing.as_ref(),
            OpenParams {
                dtype: DType::F32,
                max_tokens,
                token_deadline_us: (opts.token_deadline_ms * 1e3)
                    .round()
                    .clamp(0.0, f64::from(u32::MAX)) as u32,
            },
        )
        .await?
        .with_spot_checks(self.inner.spot_checks, Some(model.referee.clone()));
        if !self.inner.client_head {
            session = session.with_tokens_from_last_hop(model.head.clone());
        }
        let open_ms = t.elapsed().as_secs_f64() * 1e3;
        let route_ms = session.route_ms;
        tracing::info!(route = %crate::swarm::failover::describe_route(session.route()), "session open");
        sink.route_opened(session.route());
        let outcome = generate(
            &model.head,
            &model.tokenizer,
            &mut session,
            prompt_ids,
            opts,
            sink,
        )
        .await;
        let route = session.route().to_vec();
        let timings = session.timings();
        let failovers = std::mem::take(&mut session.failovers);
        let spot_checks = std::mem::take(&mut session.spot_report);
        session.close().await;
        let result = outcome?;
        // Each hop's session is one job in its announced power mode; mains hops have no model.
        let job_kj: Option<f64> = route
            .iter()
            .map(|h| {
                swarm
                    .announcement_of(&h.peer_id)
                    .and_then(|a| route::job_kilojoules(a.energy.power_mode))
            })
            .sum();
        let joules_per_token = job_kj
            .filter(|_| !result.tokens.is_empty())
            .map(|kj| kj * 1e3 / result.tokens.len() as f64);
        Ok(Completion {
            result,
            route,
            failovers,
            timings,
            joules_per_token,
            open_ms,
            route_ms,
            spot_checks,
        })
    }
}

impl ServedModel {
    /// The tokens of a prompt: the text as given, or the messages through the chat template.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let model_err = |source: ModelError| EngineError::Model {
            name: self.name.clone(),
            source,
        };
        let text = match prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(messages) => self
                .tokenizer
                .render_chat(messages, true)
                .map_err(|e| model_err(e.into()))?,
        };
        if text.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let ids = self
            .tokenizer
            .encode(&text)
            .map_err(|e| model_err(e.into()))?;
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(ids)
    }

    /// Refuses a generation that cannot fit the model's context.
    pub fn check_context(&self, prompt: usize, new: usize) -> Result<(), EngineError> {
        if prompt == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.saturating_add(new) > self.context_len {
            return Err(EngineError::ContextExceeded {
                prompt,
                new,
                context: self.context_len,
            });
        }
        Ok(())
    }
}

fn load_model(
    name: &str,
    backend: BackendKind,
    split: Option<Option<String>>,
) -> Result<ServedModel, EngineError> {
    let err = |source: ModelError| EngineError::Model {
        name: name.to_string(),
        source,
    };
    let source = ModelSource::parse(name).map_err(err)?;
    let dev = device(backend).map_err(err)?;
    let model = Model::open(&source).map_err(err)?;
    let cfg = model.config();
    let n_layers = cfg.n_layers;
    let context_len = cfg.max_seq_len;
    let tokenizer = model.tokenizer().map_err(err)?;
    let head = model.load_head(&dev).map_err(err)?;
    let local = match split {
        None => Vec::new(),
        Some(spec) => {
            let ranges: Vec<Range<usize>> = match spec {
                Some(spec) => crate::local::parse_split(&spec, n_layers)
                    .map_err(|e| EngineError::BadSplit(format!("{e:#}")))?,
                None => std::iter::once(0..n_layers).collect(),
            };
            ranges
                .into_iter()
                .map(|r| model.load_blocks(r, &dev).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?
        }
    };
    Ok(ServedModel {
        name: name.to_string(),
        model_id: model.model_id().0,
        n_layers: u32::try_from(n_layers).unwrap_or(u32::MAX),
        context_len,
        tokenizer,
        head: SharedHead::new(head),
        local,
        referee: Arc::new(BlockReferee {
            model,
            device: dev,
            loaded: Default::default(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The referee replays a range as a node took it (a prompt chunk, then decode steps as one
    /// stepwise forward), so it gets an honest node's bits, not a near copy.
    #[test]
    fn the_referee_computes_a_range_as_the_node_did() {
        let model = Model::open(&ModelSource::parse("random:tiny:seed=9").unwrap()).unwrap();
        let dev = device(BackendKind::Cpu).unwrap();
        let head = model.load_head(&dev).unwrap();
        let blocks = model.load_blocks(1..3, &dev).unwrap();
        let prompt = head.embed(&[3, 1, 4, 1, 5]).unwrap();
        let steps: Vec<HiddenStates> = [9u32, 2, 6]
            .iter()
            .map(|&id| head.embed(&[id]).unwrap())
            .collect();
        // The node: the prompt chunk, then each decode step on its own.
        let mut cache = blocks.new_cache();
        let mut node = blocks.forward(&mut cache, &prompt).unwrap().data;
        for s in &steps {
            node.extend(blocks.forward(&mut cache, s).unwrap().data);
        }
        let mut rows = prompt.data.clone();
        for s in &steps {
            rows.extend(&s.data);
        }
        let input = HiddenStates::new(8, prompt.dim, rows).unwrap();
        let referee = BlockReferee {
            model,
            device: dev,
            loaded: Default::default(),
        };
        let forwards = [
            Forward {
                rows: 5,
                stepwise: false,
            },
            Forward {
                rows: 3,
                stepwise: true,
            },
        ];
        let got = referee
            .run(BlockRange::new(1, 3).unwrap(), &input, &forwards)
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.data), bits(&node));
        // Forwards that do not cover the input are refused, not run.
        let short = [Forward {
            rows: 5,
            stepwise: false,
        }];
        let err = referee
            .run(BlockRange::new(1, 3).unwrap(), &input, &short)
            .unwrap_err();
        assert!(err.contains("do not add up"), "{err}");
    }
}
