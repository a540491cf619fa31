//! Command-line arguments shared by `swarm-client generate` in local and swarm mode.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarm-client",
    version,
    about = "Generate text with a Sunswarm swarm, or locally"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streaming it to the terminal.
    Generate(GenerateArgs),
    /// Serve the OpenAI-compatible HTTP API and a live dashboard of the swarm.
    Serve(crate::serve::ServeArgs),
    /// Download a model into the local cache (aliases only) and print where it is.
    Fetch {
        /// Model alias, path, hf:OWNER/REPO or random:SHAPE.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Model: an alias (smollm2-135m), a .gguf file, a Hugging Face folder, hf:OWNER/REPO, or
    /// random:SHAPE[:seed=N] (tiny, smollm2-135m, llama-3.2-1b, llama-3-8b).
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    /// The prompt. Control tokens such as <|im_start|> are recognized.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// State a per-token deadline (ms, through the whole route) to every hop at open: a hop that
    /// cannot meet its share refuses, and the hops schedule this session's steps to meet it.
    #[arg(long, default_value_t = 0.0)]
    pub token_deadline_ms: f64,
    /// Prompt tokens per forward: a long prompt goes through the blocks in chunks of this size.
    #[arg(long, default_value_t = crate::generate::PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// Compute backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Print one JSON object (prompt_tokens, tokens, text, timings) as the last line.
    #[arg(long)]
    pub json: bool,
    /// Run every block in this process instead of through a swarm.
    #[arg(long)]
    pub local: bool,
    /// In --local mode, run the model as these block ranges (e.g. 0-9,10-19,20-29) chained in one
    /// process, each with its own KV cache; the output must not change.
    #[arg(long)]
    pub local_split: Option<String>,
    /// Multiaddr of a swarm peer to join through (swarm mode); may be repeated.
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Routing policy in swarm mode: uniform, long-term, adaptive, lookahead, or cs-ucb (learns
    /// each hop's peer from observed times under --deadline-ms, with --prior as its prior).
    #[arg(long, default_value = "uniform")]
    pub policy: String,
    /// The energy policy whose weights are cs-ucb's prior: uniform, long-term, adaptive or
    /// lookahead.
    #[arg(long, default_value = "uniform")]
    pub prior: String,
    /// Per-token deadline of cs-ucb in milliseconds: the route's time for one decode step.
    #[arg(long, default_value_t = crate::swarm::learned::DEFAULT_DEADLINE_MS)]
    pub deadline_ms: f64,
    /// Join a private swarm with this pre-shared key file (go-ipfs `swarm.key` format).
    #[arg(long)]
    pub swarm_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub guards: SafeguardArgs,
}

/// What a swarm client does against peers that misbehave.
#[derive(Debug, Clone, Args)]
pub struct SafeguardArgs {
    /// Most of the routes at one block any one peer may get (over any 64 route choices), in
    /// (0, 1]: a peer that announces the best possible state cannot take them all.
    #[arg(long, default_value_t = crate::swarm::share::DEFAULT_MAX_ROUTE_SHARE)]
    pub max_route_share: f64,
    /// Fraction of steps re-run through other replicas and compared, hop by hop (0 turns spot
    /// checks off): a peer caught returning wrong hidden states is banned and the step redone.
    #[arg(long, default_value_t = crate::swarm::spot::DEFAULT_FRACTION)]
    pub spot_check: f64,
    /// The first forwards of every session that are always checked (with --spot-check above 0).
    #[arg(long, default_value_t = crate::swarm::spot::DEFAULT_FIRST)]
    pub spot_check_first: u32,
    /// Largest relative distance per row at which a hop's output and its check still agree.
    #[arg(long, default_value_t = crate::swarm::spot::DEFAULT_TOLERANCE)]
    pub spot_check_tolerance: f32,
    /// Apply the LM head here instead of letting the last hop pick each token (it then reads
    /// the head once for all its sessions; the spot-checked steps' tokens are checked here).
    #[arg(long)]
    pub client_head: bool,
}

impl SafeguardArgs {
    pub fn safeguards(&self) -> anyhow::Result<crate::engine::Safeguards> {
        Ok(crate::engine::Safeguards {
            max_route_share: self.max_route_share,
            spot_checks: crate::swarm::spot::SpotChecks::new(
                self.spot_check,
                self.spot_check_first,
                self.spot_check_tolerance,
            )
            .map_err(anyhow::Error::msg)?,
            client_head: self.client_head,
        })
    }
}
