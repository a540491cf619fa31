//! `swarm-client serve`: the OpenAI-compatible HTTP API (`/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, streamed or not), a live dashboard of the swarm at `/` (fed by
//! `/v1/swarm`), and Prometheus metrics at `/metrics`, all from one [`Engine`].
//!
//! Each generation runs in a task of its own and hands its text to the HTTP side through a
//! bounded channel. A client that goes away closes the channel; the generation's next piece of
//! text then finds nobody listening and stops, which closes its session on every hop.

pub mod metrics;
pub mod openai;
pub mod view;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use futures::Stream;
use sunswarm_models::BackendKind;
use sunswarm_net::now_ms;
use tokio::sync::{Semaphore, mpsc};

use crate::engine::{Completion, Engine, EngineConfig, EngineError, Mode, ServedModel};
use crate::generate::{FinishReason, TextSink};
use crate::swarm::parse_routing;
use metrics::Metrics;
use openai::{Answer, ApiError, Endpoint, GenerationParams, StopFilter, SwarmInfo, Usage};
use view::{ModelView, RECENT_REQUESTS, RequestRecord, SwarmView};

/// `swarm-client serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Multiaddr of a swarm peer to join through; may be repeated.
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Model to serve, under the name given here (alias, path, hf:OWNER/REPO, random:SHAPE);
    /// may be repeated.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: Vec<String>,
    /// Routing policy: uniform, long-term, adaptive, lookahead, or cs-ucb (learns each hop's
    /// peer from observed times under --deadline-ms, with --prior as its prior).
    #[arg(long, default_value = "uniform")]
    pub policy: String,
    /// The energy policy whose weights are cs-ucb's prior.
    #[arg(long, default_value = "uniform")]
    pub prior: String,
    /// Per-token deadline of cs-ucb in milliseconds.
    #[arg(long, default_value_t = crate::swarm::learned::DEFAULT_DEADLINE_MS)]
    pub deadline_ms: f64,
    /// Join a private swarm with this pre-shared key file.
    #[arg(long)]
    pub swarm_key: Option<std::path::PathBuf>,
    /// Serve from this process (every block loaded here), for comparison.
    #[arg(long)]
    pub local: bool,
    /// Compute backend for the client's part (and, with --local, the blocks): cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Generations at once; more are answered 429.
    #[arg(long, default_value_t = 16)]
    pub max_concurrent: usize,
    /// Tokens generated when a request gives no max_tokens (within the model's context).
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// How often the dashboard's view of the swarm is refreshed, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub refresh_ms: u64,
    /// How long to wait at start for the swarm to cover every model, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub coverage_timeout: f64,
    #[command(flatten)]
    pub guards: crate::cli::SafeguardArgs,
}

/// Everything the handlers share.
pub struct AppState {
    engine: Engine,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    default_max_tokens: usize,
    view: RwLock<SwarmView>,
    recent: Mutex<VecDeque<RequestRecord>>,
    metrics: Metrics,
    next_id: AtomicU64,
}

type Shared = Arc<AppState>;

/// Runs the server until Ctrl-C.
pub async fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    anyhow::ensure!(
        args.max_concurrent > 0,
        "--max-concurrent must be at least 1"
    );
    anyhow::ensure!(
        args.default_max_tokens > 0,
        "--default-max-tokens must be at least 1"
    );
    let mode = if args.local {
        Mode::Local { split: None }
    } else {
        Mode::Swarm {
            bootstrap: crate::commands::parse_bootstrap(&args.bootstrap)?,
            swarm_key: args.swarm_key.clone(),
            routing: parse_routing(&args.policy, &args.prior, args.deadline_ms)?,
        }
    };
    let listen: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not HOST:PORT", args.listen))?;
    let engine = Engine::start_with(
        EngineConfig {
            models: args.model.clone(),
            backend,
            mode,
            connect_timeout: Duration::from_secs(30),
        },
        args.guards.safeguards()?,
    )
    .await?;
    if let Some(swarm) = engine.swarm() {
        let wait = Duration::from_secs_f64(args.coverage_timeout.max(0.0));
        for m in engine.models() {
            if let Err(e) = swarm
                .wait_for_coverage(&m.model_id, m.n_layers, 1, wait)
                .await
            {
                tracing::warn!(model = %m.name, "not covered yet ({e}); serving anyway (503 until it is)");
            }
        }
    }
    let state = Arc::new(AppState {
        view: RwLock::new(empty_view(&engine)),
        engine,
        permits: Arc::new(Semaphore::new(args.max_concurrent)),
        max_concurrent: args.max_concurrent,
        default_max_tokens: args.default_max_tokens,
        recent: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
        next_id: AtomicU64::new(1),
    });
    refresh(&state).await;
    let refresher = tokio::spawn(refresh_loop(
        state.clone(),
        Duration::from_millis(args.refresh_ms.max(100)),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!("SERVING http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    refresher.abort();
    if let Some(swarm) = state.engine.swarm() {
        swarm.stop().await;
    }
    Ok(())
}

/// The routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/models", get(list_models))
        .route("/v1/swarm", get(swarm_view))
        .route("/metrics", get(metrics_text))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(state)
}

fn api_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(e.body())).into_response();
    if let Some(secs) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

async fn not_found() -> Response {
    api_error(&ApiError {
        status: 404,
        message: "no such endpoint; see /v1/models, /v1/chat/completions, /v1/completions".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
        retry_after: None,
    })
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn swarm_view(State(s): State<Shared>) -> Response {
    let mut v = s
        .view
        .read()
        .map(|v| v.clone())
        .unwrap_or_else(|_| empty_view(&s.engine));
    if let Ok(recent) = s.recent.lock() {
        v.requests = recent.iter().rev().cloned().collect();
    }
    axum::Json(v).into_response()
}

async fn list_models(State(s): State<Shared>) -> Response {
    let covered: Vec<String> = match s.view.read() {
        Ok(v) => v
            .models
            .iter()
            .filter(|m| m.covered)
            .map(|m| m.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let data: Vec<serde_json::Value> = covered
        .iter()
        .map(|name| {
            serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "sunswarm"})
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn chat_completions(State(s): State<Shared>, body: Bytes) -> Response {
    complete(s, Endpoint::Chat, body).await
}

async fn completions(State(s): State<Shared>, body: Bytes) -> Response {
    complete(s, Endpoint::Completion, body).await
}

async fn complete(s: Shared, endpoint: Endpoint, body: Bytes) -> Response {
    let resp = match start(&s, endpoint, &body).await {
        Ok(resp) => resp,
        Err(e) => api_error(&e),
    };
    s.metrics.count(endpoint.name(), resp.status().as_u16());
    resp
}

/// Checks the request, takes a place, and starts its generation.
async fn start(s: &Shared, endpoint: Endpoint, body: &[u8]) -> Result<Response, ApiError> {
    let params = match endpoint {
        Endpoint::Chat => openai::parse_chat(body)?,
        Endpoint::Completion => openai::parse_completion(body)?,
    };
    let model = s.engine.model(&params.model).map_err(|_| {
        let names: Vec<&str> = s.engine.models().iter().map(|m| m.name.as_str()).collect();
        ApiError::unknown_model(&params.model, &names)
    })?;
    let permit = s
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(s.max_concurrent))?;
    let ids = model.prompt_ids(&params.prompt).map_err(|e| match e {
        EngineError::EmptyPrompt => ApiError::bad_request(None, "the prompt is empty"),
        other => ApiError::bad_request(None, other.to_string()),
    })?;
    let max_new = max_new_tokens(&params, ids.len(), model, s.default_max_tokens)?;
    let opts = params.options(max_new);
    opts.validate()
        .map_err(|e| ApiError::bad_request(None, e.to_string()))?;
    if !covered(s, model).await {
        return Err(ApiError::unavailable(format!(
            "no live peers cover every block of {} now; try again shortly",
            model.name
        )));
    }

    let id = format!(
        "{}{:x}{:04x}",
        endpoint.id_prefix(),
        now_ms(),
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_ms() / 1000;
    let record = RequestRecord {
        id: id.clone(),
        model: model.name.clone(),
        endpoint: endpoint.name(),
        started_ms: now_ms(),
        finished_ms: None,
        status: "running",
        route: Vec::new(),
        prompt_tokens: ids.len(),
        completion_tokens: 0,
        ttft_ms: 0.0,
        tokens_per_s: 0.0,
        joules_per_token: None,
        failovers: 0,
        error: None,
    };
    remember(s, record);
    let (tx, rx) = mpsc::channel::<Piece>(64);
    let job = Job {
        state: s.clone(),
        model: model.name.clone(),
        ids,
        params: params.clone(),
        max_new,
        id: id.clone(),
    };
    tokio::spawn(async move {
        let _permit = permit;
        job.run(tx).await;
    });
    let reply = Reply {
        answer: Answer {
            endpoint,
            id,
            created,
            model: params.model.clone(),
        },
        include_usage: params.include_usage,
    };
    if params.stream {
        Ok(reply.stream(rx).into_response())
    } else {
        reply.whole(rx).await
    }
}

/// The tokens to generate: as asked (within the context), else the server's default cut to
/// what the context leaves.
fn max_new_tokens(
    params: &GenerationParams,
    prompt: usize,
    model: &ServedModel,
    default: usize,
) -> Result<usize, ApiError> {
    let context = model.context_len;
    if prompt >= context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(
                Some("messages"),
                format!("the prompt has {prompt} tokens; the model's context holds {context}"),
            )
        });
    }
    match params.max_tokens {
        Some(n) if prompt.saturating_add(n) > context => Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(
                Some("max_tokens"),
                format!(
                    "the prompt has {prompt} tokens and max_tokens asks for {n} more; the model's context holds {context}"
                ),
            )
        }),
        Some(n) => Ok(n),
        None => Ok(default.min(context - prompt)),
    }
}

/// Whether the model can be routed now: from the last view, looking again before saying no.
async fn covered(s: &Shared, model: &ServedModel) -> bool {
    let cached = s
        .view
        .read()
        .ok()
        .and_then(|v| {
            v.models
                .iter()
                .find(|m| m.name == model.name)
                .map(|m| m.covered)
        })
        .unwrap_or(false);
    cached || s.engine.check_coverage(model).await.is_ok()
}

fn remember(s: &Shared, record: RequestRecord) {
    if let Ok(mut recent) = s.recent.lock() {
        if let Some(r) = recent.iter_mut().find(|r| r.id == record.id) {
            *r = record;
            return;
        }
        recent.push_back(record);
        while recent.len() > RECENT_REQUESTS {
            // Drop the oldest finished request; running ones stay listed.
            match recent.iter().position(|r| r.finished_ms.is_some()) {
                Some(i) => {
                    recent.remove(i);
                }
                None => break,
            }
        }
    }
}

/// What a generation task tells the HTTP side.
enum Piece {
    Text(String),
    Done(Result<Finished, ApiError>),
}

struct Finished {
    finish: FinishReason,
    usage: Usage,
    info: SwarmInfo,
}

/// One generation, run in its own task.
struct Job {
    state: Shared,
    model: String,
    ids: Vec<u32>,
    params: GenerationParams,
    max_new: usize,
    id: String,
}

/// Hands text to the HTTP side, cut at the stop sequences; stops the generation when the
/// reader has gone away.
struct ChannelSink {
    tx: mpsc::Sender<Piece>,
    filter: StopFilter,
    gone: bool,
}

impl TextSink for ChannelSink {
    async fn piece(&mut self, text: &str) -> ControlFlow<()> {
        let (out, flow) = self.filter.push(text);
        if !out.is_empty() && self.tx.send(Piece::Text(out)).await.is_err() {
            self.gone = true;
            return ControlFlow::Break(());
        }
        flow
    }
}

impl Job {
    async fn run(self, tx: mpsc::Sender<Piece>) {
        let s = &self.state;
        s.metrics.active.inc();
        let t = Instant::now();
        let mut sink = ChannelSink {
            tx: tx.clone(),
            filter: StopFilter::new(self.params.stop.clone()),
            gone: false,
        };
        let outcome = match s.engine.model(&self.model) {
            Ok(model) => {
                s.engine
                    .generate(
                        model,
                        &self.ids,
                        &self.params.options(self.max_new),
                        &mut sink,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        s.metrics.active.dec();
        let mut record = s
            .recent
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|r| r.id == self.id).cloned());
        let done = match outcome {
            Ok(done) => {
                if !sink.filter.stopped() {
                    let rest = sink.filter.finish();
                    if !rest.is_empty() {
                        let _ = tx.send(Piece::Text(rest)).await;
                    }
                }
                let finished = self.finished(&done, sink.filter.stopped());
                self.observe(&done, &finished, t.elapsed());
                if let Some(r) = record.as_mut() {
                    r.status = if sink.gone { "cancelled" } else { "done" };
                    r.route = done.route_entries();
                    r.completion_tokens = finished.usage.completion_tokens;
                    r.ttft_ms = done.result.ttft_ms;
                    r.tokens_per_s = done.result.decode_tokens_per_s;
                    r.joules_per_token = done.joules_per_token;
                    r.failovers = done.failovers.len();
                }
                Ok(finished)
            }
            Err(e) => {
                tracing::warn!(request = %self.id, "generation failed: {e}");
                if let Some(r) = record.as_mut() {
                    r.status = "error";
                    r.error = Some(e.to_string());
                }
                Err(api_error_of(e))
            }
        };
        if let Some(mut r) = record {
            r.finished_ms = Some(now_ms());
            remember(s, r);
        }
        let _ = tx.send(Piece::Done(done)).await;
    }

    fn finished(&self, done: &Completion, stopped_by_sequence: bool) -> Finished {
        let r = &done.result;
        let eos = r.finish_reason == FinishReason::Stop
            && r.tokens.last().is_some_and(|t| self.is_eos(*t));
        // The end-of-sequence token is not part of the answer, so it is not counted in it.
        let completion = r.tokens.len() - usize::from(eos);
        Finished {
            finish: if stopped_by_sequence {
                FinishReason::Stop
            } else {
                r.finish_reason
            },
            usage: Usage::new(self.ids.len(), completion),
            info: SwarmInfo {
                route: done.route_entries(),
                failovers: done.failovers.len(),
                joules_per_token: done.joules_per_token,
                ttft_ms: r.ttft_ms,
                decode_tokens_per_s: r.decode_tokens_per_s,
            },
        }
    }

    fn is_eos(&self, token: u32) -> bool {
        self.state
            .engine
            .model(&self.model)
            .is_ok_and(|m| m.tokenizer.eos_ids().contains(&token))
    }

    fn observe(&self, done: &Completion, f: &Finished, took: Duration) {
        let m = &self.state.metrics;
        m.prompt_tokens.inc_by(f.usage.prompt_tokens as u64);
        m.completion_tokens.inc_by(f.usage.completion_tokens as u64);
        m.failovers.inc_by(done.failovers.len() as u64);
        m.duration.observe(took.as_secs_f64());
        m.ttft.observe(done.result.ttft_ms / 1e3);
        if done.result.decode_tokens_per_s > 0.0 {
            m.time_per_token
                .observe(1.0 / done.result.decode_tokens_per_s);
        }
    }
}

/// A failed generation as the API reports it: a swarm that cannot serve the model now (no peer
/// covers a range, or all of them refuse work) is a 503 to retry, anything else a 500.
fn api_error_of(e: EngineError) -> ApiError {
    use crate::swarm::SwarmError;
    let unavailable = match &e {
        EngineError::NotCovered(_) => true,
        EngineError::Swarm(SwarmError::Route(_) | SwarmError::NotCovered { .. }) => true,
        EngineError::Swarm(SwarmError::NoReplacement(inner)) => {
            matches!(
                **inner,
                SwarmError::Route(_) | SwarmError::NotCovered { .. }
            )
        }
        _ => false,
    };
    if unavailable {
        ApiError::unavailable(e.to_string())
    } else {
        ApiError::internal(e.to_string())
    }
}

/// How to answer: as a whole or as a stream of server-sent events.
struct Reply {
    answer: Answer,
    include_usage: bool,
}

impl Reply {
    async fn whole(&self, mut rx: mpsc::Receiver<Piece>) -> Result<Response, ApiError> {
        let mut text = String::new();
        while let Some(piece) = rx.recv().await {
            match piece {
                Piece::Text(t) => text.push_str(&t),
                Piece::Done(Ok(f)) => {
                    let body = self.answer.full(&text, f.finish, f.usage, &f.info);
                    return Ok(axum::Json(body).into_response());
                }
                Piece::Done(Err(e)) => return Err(e),
            }
        }
        Err(ApiError::internal("the generation ended without an answer"))
    }

    fn stream(
        self,
        rx: mpsc::Receiver<Piece>,
    ) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
        enum Phase {
            First,
            Text,
            Ended,
        }
        let stream = futures::stream::unfold(
            (rx, self, Phase::First),
            |(mut rx, reply, phase)| async move {
                if matches!(phase, Phase::Ended) {
                    return None;
                }
                let first = matches!(phase, Phase::First);
                let events: Vec<Event> = match rx.recv().await {
                    Some(Piece::Text(t)) => vec![reply.event(Some(&t), first, None)],
                    Some(Piece::Done(Ok(f))) => {
                        let mut evs = vec![reply.event(None, first, Some(f.finish))];
                        if reply.include_usage {
                            evs.push(json_event(&reply.answer.usage_chunk(f.usage)));
                        }
                        evs.push(Event::default().data("[DONE]"));
                        return Some((
                            futures::stream::iter(evs.into_iter().map(Ok)),
                            (rx, reply, Phase::Ended),
                        ));
                    }
                    Some(Piece::Done(Err(e))) => {
                        let evs = vec![json_event(&e.body()), Event::default().data("[DONE]")];
                        return Some((
                            futures::stream::iter(evs.into_iter().map(Ok)),
                            (rx, reply, Phase::Ended),
                        ));
                    }
                    None => return None,
                };
                Some((
                    futures::stream::iter(events.into_iter().map(Ok)),
                    (rx, reply, Phase::Text),
                ))
            },
        );
        use futures::StreamExt;
        Sse::new(stream.flatten()).keep_alive(KeepAlive::default())
    }

    fn event(&self, text: Option<&str>, first: bool, finish: Option<FinishReason>) -> Event {
        json_event(&self.answer.chunk(text, first, finish))
    }
}

fn json_event(v: &serde_json::Value) -> Event {
    Event::default().data(v.to_string())
}

fn empty_view(engine: &Engine) -> SwarmView {
    SwarmView {
        mode: if engine.swarm().is_some() {
            "swarm"
        } else {
            "local"
        },
        policy: engine.policy_name(),
        updated_ms: 0,
        models: engine
            .models()
            .iter()
            .map(|m| ModelView {
                name: m.name.clone(),
                model_id: m.model_id.iter().map(|b| format!("{b:02x}")).collect(),
                n_layers: m.n_layers,
                // Local models are always covered; a swarm's are once looked up.
                covered: engine.swarm().is_none(),
                replicas: vec![u32::from(engine.swarm().is_none()); m.n_layers as usize],
                gaps: Vec::new(),
            })
            .collect(),
        peers: Vec::new(),
        requests: Vec::new(),
    }
}

/// Looks the swarm up once and replaces the view.
async fn refresh(s: &Shared) {
    let Some(swarm) = s.engine.swarm() else {
        return;
    };
    let mut v = empty_view(&s.engine);
    let now = now_ms();
    let recent = s.recent.lock().map(|r| r.clone()).unwrap_or_default();
    let direct = swarm.network().direct_peers().await.unwrap_or_default();
    for (m, mv) in s.engine.models().iter().zip(v.models.iter_mut()) {
        let anns = match swarm.discover(&m.model_id, m.n_layers).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(model = %m.name, "refreshing the view failed: {e}");
                // Keep the last view rather than showing a swarm that vanished.
                return;
            }
        };
        let (replicas, gaps) = view::coverage(&anns, m.n_layers);
        mv.covered = gaps.is_empty() && m.n_layers > 0;
        mv.replicas = replicas;
        mv.gaps = gaps;
        let mut peers: Vec<_> = anns
            .iter()
            .map(|a| {
                let peer = libp2p::PeerId::from_bytes(&a.peer_id).ok();
                let direct = peer.is_some_and(|p| direct.contains(&p));
                view::peer_view(a, &m.name, &recent, now, direct)
            })
            .collect();
        peers.sort_by(|a, b| a.blocks.cmp(&b.blocks).then(a.peer_id.cmp(&b.peer_id)));
        v.peers.extend(peers);
    }
    v.updated_ms = now;
    if let Ok(mut view) = s.view.write() {
        *view = v;
    }
}

async fn refresh_loop(s: Shared, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh(&s).await;
    }
}
