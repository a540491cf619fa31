//! The generation loop: embed, run the hidden states through the blocks (locally or through the
//! swarm, behind [`Pipeline`]), apply the LM head, sample, repeat. The loop is the same for both,
//! which is what makes "the swarm generates exactly what one process generates" checkable.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sunswarm_models::{HiddenStates, KvCache, LoadedBlocks, ModelError, TextTokenizer};

use crate::head::SharedHead;
use sunswarm_models::sampling::{Draw, Sampler};

/// Why a pipeline step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("peer {peer} failed: {reason}")]
    Peer { peer: String, reason: String },
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("network: {0}")]
    Network(String),
}

/// What one pass through the blocks gave back.
#[derive(Debug, Clone)]
pub struct Stepped {
    /// The last block's output.
    pub hidden: HiddenStates,
    /// The next token, when the pipeline's last stage applied the LM head and picked it with
    /// the draw it was given ([`Pipeline::forward_drawing`]).
    pub token: Option<u32>,
}

/// Carries hidden states through every block of the model, keeping per-session state (KV caches)
/// wherever the blocks live. Each call passes the tokens that follow the previous call's.
pub trait Pipeline: Send {
    fn forward(
        &mut self,
        input: HiddenStates,
    ) -> impl Future<Output = Result<HiddenStates, PipelineError>> + Send;

    /// [`forward`](Self::forward), letting the stage that runs the last block also pick the
    /// next token from the last row with `draw`, where it holds the LM head: in a swarm the last
    /// hop picks the tokens of all its sessions with one read of the head. By default no token
    /// comes back, and the caller applies the head itself.
    fn forward_drawing(
        &mut self,
        input: HiddenStates,
        _draw: Draw,
    ) -> impl Future<Output = Result<Stepped, PipelineError>> + Send {
        async move {
            Ok(Stepped {
                hidden: self.forward(input).await?,
                token: None,
            })
        }
    }
}

/// All blocks in this process: a chain of block ranges, each with this session's own KV cache.
/// The blocks are shared, so many sessions can run over one copy of the weights.
pub struct LocalPipeline {
    stages: Vec<(Arc<LoadedBlocks>, KvCache)>,
}

impl LocalPipeline {
    pub fn new(ranges: Vec<Arc<LoadedBlocks>>) -> Self {
        Self {
            stages: ranges
                .into_iter()
                .map(|r| {
                    let c = r.new_cache();
                    (r, c)
                })
                .collect(),
        }
    }

    /// Runs the stages synchronously (the model is CPU/GPU-bound; there is nothing to await).
    pub fn forward_sync(&mut self, input: HiddenStates) -> Result<HiddenStates, ModelError> {
        let mut x = input;
        for (range, cache) in &mut self.stages {
            x = range.forward(cache, &x)?;
        }
        Ok(x)
    }
}

impl Pipeline for LocalPipeline {
    fn forward(
        &mut self,
        input: HiddenStates,
    ) -> impl Future<Output = Result<HiddenStates, PipelineError>> + Send {
        let out = self.forward_sync(input).map_err(PipelineError::from);
        std::future::ready(out)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub ignore_eos: bool,
    /// The prompt goes through the blocks in chunks of at most this many tokens, so that on a
    /// shared node a long prompt takes turns with other sessions' decode steps. Local and swarm
    /// runs chunk alike, so they stay identical.
    pub prefill_chunk: usize,
    /// The time one token may take through the whole route, in milliseconds, stated to every
    /// hop when the session opens (0: none). A hop that cannot meet its share refuses and
    /// another is chosen; the hops schedule the session's steps to meet it.
    pub token_deadline_ms: f64,
}

/// Prompt tokens per forward (the nodes' `max_chunk` is the same).
pub const PREFILL_CHUNK: usize = 128;

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            ignore_eos: false,
            prefill_chunk: PREFILL_CHUNK,
            token_deadline_ms: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid option {name}: {why}")]
    InvalidOption { name: &'static str, why: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token, or the text sink asked to stop (a stop sequence).
    Stop,
    /// The token limit.
    Length,
}

/// Receives a generation's text as it forms.
pub trait TextSink: Send {
    /// A piece of text made of whole characters. [`ControlFlow::Break`] ends the generation after
    /// this piece, with [`FinishReason::Stop`] (a stop sequence, or a reader that went away).
    fn piece(&mut self, text: &str) -> impl Future<Output = ControlFlow<()>> + Send;

    /// The route a swarm generation opened its session on, before its first forward.
    fn route_opened(&mut self, _route: &[sunswarm_protocol::Hop]) {}
}

/// A [`TextSink`] from a closure that never stops the generation.
pub struct EachPiece<F>(pub F);

impl<F: FnMut(&str) + Send> TextSink for EachPiece<F> {
    fn piece(&mut self, text: &str) -> impl Future<Output = ControlFlow<()>> + Send {
        (self.0)(text);
        std::future::ready(ControlFlow::Continue(()))
    }
}

/// What one generation produced, with its timings.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationResult {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub ttft_ms: f64,
    pub decode_tokens_per_s: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Median time of one decode step's pass through every block, as the client waits for it:
    /// the blocks' compute with `--local`, the round trip through the route in a swarm. The
    /// rest of a step (LM head, sampling, embedding) is the same code either way.
    pub decode_forward_us_median: f64,
    /// Tokens the last hop picked (with this client's draws); the others were picked here.
    pub tokens_from_last_hop: usize,
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<(), GenerateError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(GenerateError::InvalidOption {
                name: "temperature",
                why: format!("{} is not >= 0", self.temperature),
            });
        }
        if !(self.token_deadline_ms.is_finite() && self.token_deadline_ms >= 0.0) {
            return Err(GenerateError::InvalidOption {
                name: "token-deadline-ms",
                why: format!(
                    "{} is not a number of milliseconds >= 0",
                    self.token_deadline_ms
                ),
            });
        }
        if self.prefill_chunk == 0 {
            return Err(GenerateError::InvalidOption {
                name: "prefill-chunk",
                why: "must be at least 1".into(),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenerateError::InvalidOption {
                name: "top-p",
                why: format!("{} is not in (0, 1]", self.top_p),
            });
        }
        Ok(())
    }
}

/// Generates from `prompt_ids`, handing each piece of text to `sink` as soon as it forms whole
/// characters.
pub async fn generate<P: Pipeline>(
    shared_head: &SharedHead,
    tokenizer: &TextTokenizer,
    pipeline: &mut P,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    sink: &mut impl TextSink,
) -> Result<GenerationResult, GenerateError> {
    opts.validate()?;
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let head = shared_head.head();
    let start = Instant::now();
    let mut sampler = Sampler::new(opts.temperature, opts.top_p, opts.seed);
    let mut decoder = tokenizer.stream_decoder();
    let mut tokens = Vec::with_capacity(opts.max_new_tokens);
    let mut text = String::new();
    // Every chunk of the prompt but the last goes through the blocks first; the loop below runs
    // the last one, whose output gives the first token.
    let last_chunk = (prompt_ids.len() - 1) / opts.prefill_chunk * opts.prefill_chunk;
    for chunk in prompt_ids[..last_chunk].chunks(opts.prefill_chunk) {
        pipeline.forward(head.embed(chunk)?).await?;
    }
    let mut input = head.embed(&prompt_ids[last_chunk..])?;
    let mut first_token_at = None;
    let mut prefill_ms = 0.0;
    let mut decode_forward_us = Vec::with_capacity(opts.max_new_tokens);
    let mut finish_reason = FinishReason::Length;
    let mut sink_stopped = false;
    let mut tokens_from_last_hop = 0;
    while tokens.len() < opts.max_new_tokens {
        let forward_start = Instant::now();
        let departure = shared_head.departing();
        let draw = sampler.next_draw();
        let stepped = pipeline
            .forward_drawing(
                std::mem::replace(
                    &mut input,
                    HiddenStates {
                        n_tokens: 0,
                        dim: 0,
                        data: Vec::new(),
                    },
                ),
                draw,
            )
            .await?;
        if first_token_at.is_some() {
            decode_forward_us.push(forward_start.elapsed().as_secs_f64() * 1e6);
        }
        let id = match stepped.token {
            Some(id) => {
                // No head product here: the shared head must not wait for this step.
                drop(departure);
                tokens_from_last_hop += 1;
                id
            }
            None => draw.pick(&shared_head.logits_after(departure, stepped.hidden).await?),
        };
        if first_token_at.is_none() {
            prefill_ms = start.elapsed().as_secs_f64() * 1e3;
            first_token_at = Some(Instant::now());
        }
        tokens.push(id);
        // The end-of-sequence token ends the answer; its text (e.g. <|im_end|>) is not part of it.
        if !opts.ignore_eos && tokenizer.eos_ids().contains(&id) {
            finish_reason = FinishReason::Stop;
            break;
        }
        if let Some(piece) = decoder.push(id).map_err(ModelError::from)? {
            text.push_str(&piece);
            if sink.piece(&piece).await.is_break() {
                finish_reason = FinishReason::Stop;
                sink_stopped = true;
                break;
            }
        }
        if tokens.len() < opts.max_new_tokens {
            input = head.embed(&[id])?;
        }
        // A local pipeline never waits, so without this one generation would hold the thread
        // (and every other session on it) until it ends.
        tokio::task::yield_now().await;
    }
    if !sink_stopped && let Some(piece) = decoder.finish().map_err(ModelError::from)? {
        text.push_str(&piece);
        let _ = sink.piece(&piece).await;
    }
    let decode_s = first_token_at
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    let decode_tokens_per_s = if tokens.len() > 1 && decode_s > 0.0 {
        (tokens.len() - 1) as f64 / decode_s
    } else {
        0.0
    };
    Ok(GenerationResult {
        prompt_tokens: prompt_ids.to_vec(),
        tokens,
        text,
        finish_reason,
        ttft_ms: prefill_ms,
        decode_tokens_per_s,
        prefill_ms,
        decode_ms: decode_s * 1e3,
        decode_forward_us_median: median(decode_forward_us),
        tokens_from_last_hop,
    })
}

/// The middle value (the upper one of an even count); 0 for none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
