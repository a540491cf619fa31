//! Continuous batching: one executor per node runs the pending steps of all its sessions
//! together, a pass at a time. A session hands its step (its cache and the new hidden states) to
//! the executor and waits; when a pass ends, the executor answers its steps, lets their sessions
//! pass the outputs on and read their next frames, and starts the next pass with whatever is
//! pending then. Which pending steps go into a pass is the pure scheduler's choice
//! (`sunswarm_batching`: first come, first served up to a token budget); the pass itself is the
//! runner's [`BlockRunner::forward_batch`], in which decode steps share every weight read.
//!
//! A pass may wait briefly for the sessions it serves that are not pending yet ([`Gather`]):
//! without that, sessions whose answers left in one pass came back a few milliseconds apart,
//! the first of them started a pass of its own, and 8 sessions settled into alternating passes
//! of 3 and 5 steps, each reading every weight. A pass waits until the sessions answered lately
//! are due back (each one's usual return time after its answer), up to half a pass, or up to
//! the fixed part of a pass in the measured cost model if that is longer: what running them
//! later in a pass of their own would cost everyone.
//!
//! Half a pass keeps one group together, but cannot merge groups that are passes apart, as the
//! stages of a pipeline on shared cores leave them: in a 3-node swarm on one 2-core machine,
//! 8 sessions ran mostly in passes of one or two steps per node. Waiting longer costs latency
//! when a node has its cores to itself, and nothing when they are contended, since another
//! process runs meanwhile, and every pass saved is a read of every weight saved for everyone.
//! So while the machine's CPUs are contended ([`CpuPressure`]: Linux's pressure stall
//! information) a pass waits up to four passes for sessions due within that time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sunswarm_batching::{
    Admission, CostModel, LatencyTarget, LinearCost, PassScheduler, Refusal, SchedulerConfig, Step,
};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::compute::{BatchItem, BlockRunner, ComputeError, SessionCache};
use sunswarm_models::sampling::Draw;

/// How the executor forms passes.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// New tokens one pass may take (a decode step is one, a prompt chunk its length); the
    /// oldest pending step always runs, even alone above the budget.
    pub token_budget: u32,
    /// Steps that may wait for a pass at once; more wait for room in the queue.
    pub queue: usize,
    /// The most tokens of one step a pass runs: a longer step (a whole prompt sent at once) runs
    /// in chunks over several passes, so the decode steps of other sessions go on beside it.
    /// Clients chunk their prompts at the same size, so their steps are never cut.
    pub max_chunk: u32,
    /// The longest a pass waits for served sessions expected back soon (never longer than half
    /// the last pass took, or four passes while the CPUs are contended); zero never waits.
    pub max_gather: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            token_budget: 256,
            queue: 256,
            max_chunk: 128,
            max_gather: Duration::from_millis(20),
        }
    }
}

/// A step's result and its pass.
pub struct StepDone {
    /// The session's cache, handed back.
    pub cache: Box<dyn SessionCache>,
    pub output: Result<Vec<f32>, ComputeError>,
    /// Compute time of the whole pass the step ran in.
    pub pass_compute: Duration,
    /// Steps in that pass.
    pub pass_steps: usize,
    /// The token picked from the output's last row, when the step asked for a draw
    /// ([`StepTerms::draw`]) and the runner holds the LM head.
    pub token: Option<u32>,
}

/// What a step says of itself beyond its rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTerms {
    /// The session it belongs to ([`Serving::terms`]); a step without one is never waited for.
    pub session: Option<u64>,
    /// This hop's share of the session's per-token deadline.
    pub deadline_s: Option<f64>,
    /// Pick the next token from the output's last row in the same pass
    /// ([`BlockRunner::draw_tokens`]), with the LM head read once for every step that asks.
    pub draw: Option<Draw>,
}

struct StepJob {
    cache: Box<dyn SessionCache>,
    session: Option<u64>,
    /// When the session handed it over.
    sent: Instant,
    n_tokens: usize,
    data: Vec<f32>,
    seq: u64,
    reply: oneshot::Sender<StepDone>,
    /// Rows run so far (a step longer than a chunk runs over several passes).
    done: usize,
    /// Their outputs.
    out: Vec<f32>,
    /// Compute time of the passes it ran in so far.
    compute: Duration,
    /// This hop's share of the session's per-token deadline, for a decode step.
    deadline_s: Option<f64>,
    /// The rows are replayed decode steps ([`BatchItem::stepwise`]).
    stepwise: bool,
    draw: Option<Draw>,
}

impl StepJob {
    /// Rows of the next chunk.
    fn chunk(&self, max_chunk: usize) -> usize {
        (self.n_tokens - self.done).min(max_chunk.max(1))
    }
}

/// Why a step could not be handed to the executor.
#[derive(Debug, thiserror::Error)]
#[error("the node's compute executor has stopped")]
pub struct ExecutorStopped;

/// The handle sessions hand their steps to. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::Sender<StepJob>,
    shared: Arc<Shared>,
}

/// What the executor's task and the sessions' admission share: the scheduler (over the cost
/// model measured at start) and the sessions being served.
struct Shared {
    scheduler: PassScheduler<LinearCost>,
    cost: LinearCost,
    serving: Mutex<HashMap<u64, ServingSession>>,
    seq: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct ServingSession {
    deadline_s: Option<f64>,
    max_tokens: u32,
    seq: u64,
}

/// A session's place among those the executor serves; dropping it ends the place.
pub struct Serving {
    shared: Arc<Shared>,
    key: u64,
    /// This hop's share of the session's per-token deadline.
    pub deadline_s: Option<f64>,
}

impl Serving {
    /// What this session's steps carry.
    pub fn terms(&self) -> StepTerms {
        StepTerms {
            session: Some(self.key),
            deadline_s: self.deadline_s,
            draw: None,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.serving.lock() {
            s.remove(&self.key);
        }
    }
}

/// Why the executor cannot take a session with its deadline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DeadlineRefusal(pub String);

impl Executor {
    /// Measures the runner's pass times (its cost model) and starts the executor task on the
    /// current runtime.
    pub fn start(
        runner: Arc<dyn BlockRunner>,
        cfg: BatchConfig,
    ) -> (Executor, tokio::task::JoinHandle<()>) {
        let cost = measure_cost(runner.as_ref());
        Self::start_with_cost(runner, cfg, cost)
    }

    /// [`start`](Self::start) with a given cost model.
    pub fn start_with_cost(
        runner: Arc<dyn BlockRunner>,
        cfg: BatchConfig,
        cost: LinearCost,
    ) -> (Executor, tokio::task::JoinHandle<()>) {
        let scheduler = PassScheduler::new(
            cost,
            SchedulerConfig {
                token_budget: cfg.token_budget.max(1),
                ..SchedulerConfig::default()
            },
        )
        .or_else(|_| PassScheduler::new(cost, SchedulerConfig::default()))
        .unwrap_or_else(|_| unreachable_scheduler());
        let shared = Arc::new(Shared {
            scheduler,
            cost,
            serving: Mutex::default(),
            seq: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let task = tokio::spawn(run(runner, rx, cfg, shared.clone()));
        (Executor { tx, shared }, task)
    }

    /// Takes a session of up to `max_tokens` tokens whose steps must each take at most
    /// `deadline_s` here, if the passes with it and the sessions already served allow it (the
    /// cost model's judgement, seed 002's admission). A session without a deadline is always
    /// taken; its steps count in everyone else's passes.
    pub fn admit(
        &self,
        max_tokens: u32,
        deadline_s: Option<f64>,
    ) -> Result<Serving, DeadlineRefusal> {
        let mut serving = self
            .shared
            .serving
            .lock()
            .map_err(|_| DeadlineRefusal("the executor's session table is poisoned".into()))?;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        if let Some(target) = deadline_s {
            let steps: Vec<Step> = serving
                .iter()
                .map(|(&key, s)| {
                    let step = Step::decode(key, s.seq, s.max_tokens);
                    match s.deadline_s {
                        Some(d) => step.with_deadline(d),
                        None => step,
                    }
                })
                .collect();
            let opening = Step::decode(seq, seq, max_tokens);
            match self.shared.scheduler.admit(
                &steps,
                &opening,
                LatencyTarget::PerTokenSeconds(target),
            ) {
                Ok(Admission::Accept { .. }) => {}
                Ok(Admission::Refuse(r)) => return Err(DeadlineRefusal(describe(&r))),
                Err(e) => return Err(DeadlineRefusal(e.to_string())),
            }
        }
        serving.insert(
            seq,
            ServingSession {
                deadline_s,
                max_tokens,
                seq,
            },
        );
        Ok(Serving {
            shared: self.shared.clone(),
            key: seq,
            deadline_s,
        })
    }

    /// Runs `n_tokens` rows of `data` through the blocks with `cache` in the next pass that
    /// takes them, and hands the cache back with the output; `stepwise` rows are computed as
    /// one-token steps ([`BatchItem::stepwise`]). A decode step with a deadline that no pass can
    /// meet is answered with [`ComputeError::DeadlineMissed`].
    pub async fn step(
        &self,
        cache: Box<dyn SessionCache>,
        n_tokens: usize,
        data: Vec<f32>,
        stepwise: bool,
        terms: StepTerms,
    ) -> Result<StepDone, ExecutorStopped> {
        let (reply, done) = oneshot::channel();
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(StepJob {
                cache,
                session: terms.session,
                sent: Instant::now(),
                n_tokens,
                data,
                seq,
                reply,
                done: 0,
                out: Vec::new(),
                compute: Duration::ZERO,
                deadline_s: terms.deadline_s.filter(|_| n_tokens == 1),
                stepwise,
                draw: terms.draw,
            })
            .await
            .map_err(|_| ExecutorStopped)?;
        done.await.map_err(|_| ExecutorStopped)
    }
}

/// A refusal in words, for the wire.
fn describe(r: &Refusal) -> String {
    match r {
        Refusal::TooSlowAlone {
            latency_s,
            target_s,
        } => format!(
            "a token takes {:.1} ms on this node even alone; the deadline leaves it {:.1} ms",
            latency_s * 1e3,
            target_s * 1e3
        ),
        Refusal::TooSlowUnderLoad {
            latency_s,
            target_s,
        } => format!(
            "beside the sessions it serves, a token would take {:.1} ms on this node; the deadline leaves it {:.1} ms",
            latency_s * 1e3,
            target_s * 1e3
        ),
        Refusal::BreaksSession {
            latency_s,
            deadline_s,
            ..
        } => format!(
            "taking it would make a session it serves miss its deadline ({:.1} ms > {:.1} ms)",
            latency_s * 1e3,
            deadline_s * 1e3
        ),
        Refusal::TokenBudget { tokens, budget } => format!(
            "its steps and those it serves ({tokens} tokens) exceed a pass's budget of {budget}"
        ),
        other => format!("{other:?}"),
    }
}

/// The passes [`measure_cost`] times: (sessions, new tokens each, cached positions each).
/// Decode steps of 1, 2 and 4 sessions and prompt chunks of 16 and 32 tokens separate the fixed
/// cost from the per-token one; a decode step over 128 cached positions separates the
/// per-position cost (attention) from both. Without it every pass had 4 cached positions, the
/// token and token-position columns were proportional, and the fit always failed: every node
/// ran with a model in which any pass cost one decode step.
const COST_SAMPLES: [(usize, usize, usize); 6] = [
    (1, 1, 4),
    (2, 1, 4),
    (4, 1, 4),
    (1, 16, 4),
    (1, 32, 4),
    (1, 1, 128),
];

/// The scheduler's view of a timed pass of `sessions` steps of `tokens` new tokens over
/// `context` cached positions each.
fn cost_sample(sessions: usize, tokens: usize, context: usize) -> Vec<Step> {
    let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
    let context = u32::try_from(context).unwrap_or(u32::MAX);
    (0..sessions as u64)
        .map(|s| Step::prefill_chunk(s, s, tokens, context))
        .collect()
}

/// Times passes of this runner ([`COST_SAMPLES`], the fastest of two each, with each step's
/// token picked where the runner holds the LM head, as in a served pass) and fits the pass
/// time `c0 + c1 * tokens + c2 * tokens x context` to them. A runner too fast to measure gets
/// a model of its single decode step.
pub fn measure_cost(runner: &dyn BlockRunner) -> LinearCost {
    let dim = runner.hidden_size();
    let mut samples: Vec<(Vec<Step>, f64)> = Vec::new();
    for (sessions, tokens, context) in COST_SAMPLES {
        let mut caches: Vec<Box<dyn SessionCache>> =
            (0..sessions).map(|_| runner.new_session()).collect();
        for c in &mut caches {
            let _ = c.forward(context, vec![0.0; context * dim]);
        }
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            for c in &mut caches {
                c.truncate(context);
            }
            let mut items: Vec<BatchItem<'_>> = caches
                .iter_mut()
                .map(|c| BatchItem {
                    cache: c.as_mut(),
                    n_tokens: tokens,
                    rows: vec![0.0; tokens * dim],
                    stepwise: false,
                })
                .collect();
            let t = Instant::now();
            crate::session::blocking(|| {
                let outputs = runner.forward_batch(&mut items);
                // A last hop also picks each step's token in the pass (a no-op elsewhere).
                let rows: Vec<&[f32]> = outputs
                    .iter()
                    .filter_map(|o| o.as_ref().ok())
                    .filter(|o| o.len() >= dim)
                    .map(|o| &o[o.len() - dim..])
                    .collect();
                let greedy = Draw {
                    temperature: 0.0,
                    top_p: 1.0,
                    state: 0,
                };
                let _ = runner.draw_tokens(&rows, &vec![greedy; rows.len()]);
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        debug!(
            sessions,
            tokens,
            context,
            ms = best * 1e3,
            "pass timed for the cost model"
        );
        samples.push((cost_sample(sessions, tokens, context), best));
    }
    let cost = LinearCost::fit(samples.iter().map(|(steps, t)| (steps.as_slice(), *t)))
        .or_else(|_| LinearCost::new(samples[0].1.max(0.0), 0.0, 0.0))
        .unwrap_or_else(|_| zero_cost());
    let [c0, c1, c2] = cost.coefficients();
    tracing::info!(
        fixed_ms = format!("{:.2}", c0 * 1e3),
        token_ms = format!("{:.3}", c1 * 1e3),
        token_position_us = format!("{:.4}", c2 * 1e6),
        "pass cost measured"
    );
    cost
}

fn zero_cost() -> LinearCost {
    // Zero coefficients are valid (non-negative); this is the model of last resort.
    LinearCost::fit(std::iter::empty::<(&[Step], f64)>())
        .unwrap_or_else(|_| LinearCost::new(0.0, 0.0, 0.0).unwrap_or_else(|_| zero_cost()))
}

fn unreachable_scheduler() -> PassScheduler<LinearCost> {
    PassScheduler::new(zero_cost(), SchedulerConfig::default())
        .unwrap_or_else(|_| unreachable_scheduler())
}

async fn run(
    runner: Arc<dyn BlockRunner>,
    mut rx: mpsc::Receiver<StepJob>,
    cfg: BatchConfig,
    shared: Arc<Shared>,
) {
    let scheduler = &shared.scheduler;
    let mut pending: VecDeque<StepJob> = VecDeque::new();
    let mut gather = Gather::default();
    let mut pressure = CpuPressure::system();
    let mut last_pass = Duration::ZERO;
    // What the cost model gave for the last pass: with `last_pass`, how fast passes run now.
    let mut last_predicted = 0.0;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(job) => {
                    gather.arrived(job.session, job.sent);
                    pending.push_back(job);
                }
                None => return,
            }
        }
        // Sessions answered by the last pass read their next frames before this one is chosen.
        tokio::task::yield_now().await;
        while let Ok(job) = rx.try_recv() {
            gather.arrived(job.session, job.sent);
            pending.push_back(job);
        }
        // Steps with deadlines never wait for company.
        if pending.iter().all(|j| j.deadline_s.is_none()) {
            let contended = pressure.contended(Instant::now());
            let (limit, usual) = gather_limits(
                last_pass,
                last_predicted,
                shared.cost.coefficients()[0],
                contended,
            );
            let open = wait_for_missing(
                &mut rx,
                &mut pending,
                &mut gather,
                &shared,
                cfg.max_gather.min(limit),
                usual,
                !contended,
            )
            .await;
            if !open {
                return;
            }
        }
        // Answers to steps whose session stopped waiting (it ended) are simply dropped.
        pending.retain(|j| !j.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        let max_chunk = cfg.max_chunk as usize;
        let steps: Vec<Step> = pending
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let tokens = u32::try_from(j.chunk(max_chunk)).unwrap_or(u32::MAX);
                let context = u32::try_from(j.cache.len()).unwrap_or(u32::MAX);
                let step = Step::prefill_chunk(i as u64, j.seq, tokens, context);
                match j.deadline_s {
                    Some(d) => step.with_deadline(d),
                    None => step,
                }
            })
            .collect();
        // FCFS up to the budget; DFTSP once a step carries a deadline (seed 002).
        let (chosen, missed) = match scheduler.plan(&steps, u64::MAX) {
            Ok(plan) if !plan.run.is_empty() || !plan.missed.is_empty() => (plan.run, plan.missed),
            Ok(_) => (vec![0], Vec::new()),
            Err(e) => {
                // A step the scheduler cannot read (a size past u32) still runs, alone.
                debug!("scheduler refused the pending steps ({e}); running the oldest alone");
                (vec![0], Vec::new())
            }
        };
        let mut taken: Vec<StepJob> = Vec::with_capacity(chosen.len());
        let mut late: Vec<StepJob> = Vec::with_capacity(missed.len());
        let mut out_of_queue: Vec<(usize, bool)> = chosen
            .iter()
            .map(|&i| (i, true))
            .chain(missed.iter().map(|&i| (i, false)))
            .collect();
        out_of_queue.sort_unstable();
        out_of_queue.dedup_by_key(|(i, _)| *i);
        for &(i, run) in out_of_queue.iter().rev() {
            if let Some(job) = pending.remove(i) {
                if run { taken.push(job) } else { late.push(job) }
            }
        }
        taken.reverse();
        for job in late {
            let alone = Step::decode(0, 0, u32::try_from(job.cache.len()).unwrap_or(u32::MAX));
            let needs = shared.cost.pass_seconds(&[&alone]);
            let _ = job.reply.send(StepDone {
                cache: job.cache,
                output: Err(ComputeError::DeadlineMissed {
                    needs_ms: needs * 1e3,
                    deadline_ms: job.deadline_s.unwrap_or(0.0) * 1e3,
                }),
                pass_compute: Duration::ZERO,
                pass_steps: 0,
                token: None,
            });
        }
        if taken.is_empty() {
            continue;
        }
        // Steps with chunks left go back to the front, in their order: they stay the oldest.
        let started = Instant::now();
        let sessions: Vec<Option<u64>> = taken.iter().map(|j| j.session).collect();
        let run_steps: Vec<&Step> = chosen.iter().filter_map(|&i| steps.get(i)).collect();
        last_predicted = shared.cost.pass_seconds(&run_steps);
        gather.pass_started(started);
        let unfinished = pass(runner.as_ref(), taken, max_chunk);
        last_pass = started.elapsed();
        let answered = Instant::now();
        for session in sessions.into_iter().flatten() {
            if !unfinished.iter().any(|j| j.session == Some(session)) {
                gather.answered(session, answered);
            }
        }
        for job in unfinished.into_iter().rev() {
            pending.push_front(job);
        }
    }
}

/// How long a pass may wait for served sessions due back (`limit`), and how long a session may
/// usually take to come back and still be waited for (`usual`), after a pass that took
/// `last_pass` where the cost model, whose fixed part is `c0` seconds, predicted
/// `predicted_s`.
///
/// Uncontended, a pass waits up to half the last one, or up to the fixed part of a pass at the
/// speed passes run now, whichever is longer: running a due group with the pending one instead
/// of after it saves that much (a read of every weight), more than the wait costs the pending
/// steps. Half a pass alone left 8 sessions through one node in groups of 6 and 2 for tens of
/// passes, the 2-step pass costing 85 % of the 6-step one. Contended, up to four passes.
fn gather_limits(
    last_pass: Duration,
    predicted_s: f64,
    c0: f64,
    contended: bool,
) -> (Duration, Duration) {
    if contended {
        return (last_pass * 4, last_pass * 8);
    }
    // The model was fitted on an idle node; the passes now may run slower or faster.
    let speed = if predicted_s.is_finite() && predicted_s > 0.0 {
        (last_pass.as_secs_f64() / predicted_s).clamp(0.25, 4.0)
    } else {
        1.0
    };
    let fixed = Duration::try_from_secs_f64(c0 * speed).unwrap_or(Duration::ZERO);
    ((last_pass / 2).max(fixed.min(last_pass)), last_pass * 4)
}

/// Takes into `pending` the steps of served sessions that [`Gather::hold_until`] says to wait
/// for, for at most `limit`; false when the channel has closed.
async fn wait_for_missing(
    rx: &mut mpsc::Receiver<StepJob>,
    pending: &mut VecDeque<StepJob>,
    gather: &mut Gather,
    shared: &Shared,
    limit: Duration,
    usual: Duration,
    hidden_waits: bool,
) -> bool {
    let served: Vec<u64> = shared
        .serving
        .lock()
        .map(|s| s.keys().copied().collect())
        .unwrap_or_default();
    gather.forget_all_but(&served);
    let latest = Instant::now() + limit;
    if tracing::enabled!(tracing::Level::TRACE) {
        let now = Instant::now();
        let here: Vec<u64> = pending.iter().filter_map(|j| j.session).collect();
        let info: Vec<String> = served
            .iter()
            .filter(|k| !here.contains(k))
            .map(|k| match gather.sessions.get(k) {
                Some(r) => format!(
                    "{k}:ans{:?}/typ{:?}",
                    r.answered
                        .map(|a| now.saturating_duration_since(a).as_micros()),
                    r.typical.map(|t| t.as_micros())
                ),
                None => format!("{k}:?"),
            })
            .collect();
        tracing::trace!(here = here.len(), limit_us = limit.as_micros() as u64, usual_us = usual.as_micros() as u64, missing = ?info, "gather");
    }
    loop {
        let here: Vec<u64> = pending.iter().filter_map(|j| j.session).collect();
        let missing = served.iter().filter(|k| !here.contains(k));
        let Some(until) = gather.hold_until(missing, Instant::now(), usual, latest, hidden_waits)
        else {
            return true;
        };
        match tokio::time::timeout_at(until.into(), rx.recv()).await {
            Ok(Some(job)) => {
                gather.arrived(job.session, job.sent);
                pending.push_back(job);
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// When each served session's next step is expected: the time its last answer left, and how long
/// its steps typically take to come back after an answer (the client's and the route's part of
/// a token).
#[derive(Debug, Default)]
struct Gather {
    sessions: HashMap<u64, Returns>,
    /// When the last pass started.
    pass_started: Option<Instant>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Returns {
    /// When its last step was answered, while it has not sent the next one.
    answered: Option<Instant>,
    /// Smoothed time from an answer to the next step.
    typical: Option<Duration>,
    /// The last step came back while a pass ran, taking this long: no more than that, but it
    /// may have come sooner (its session's task waited for the CPU the pass held). Sessions that
    /// the node runs in two alternating groups only ever come back during the other group's pass,
    /// so their typical return looks like a whole pass, too long to wait for, and the groups
    /// never merged: 8 streams through one node ran in passes of 4 for a whole generation.
    hidden: Option<Duration>,
}

impl Gather {
    fn answered(&mut self, session: u64, at: Instant) {
        self.sessions.entry(session).or_default().answered = Some(at);
    }

    fn pass_started(&mut self, at: Instant) {
        self.pass_started = Some(at);
    }

    /// A step of `session` handed over at `sent`.
    fn arrived(&mut self, session: Option<u64>, sent: Instant) {
        let Some(session) = session else { return };
        let pass_started = self.pass_started;
        let r = self.sessions.entry(session).or_default();
        if let Some(at) = r.answered.take() {
            let took = sent.saturating_duration_since(at);
            r.hidden = pass_started
                .is_some_and(|p| p > at && p < sent)
                .then_some(took);
            r.typical = Some(match r.typical {
                // A quarter of each new sample: one slow token does not stop the waiting.
                Some(t) => (t * 3 + took) / 4,
                None => took,
            });
        }
    }

    fn forget_all_but(&mut self, served: &[u64]) {
        self.sessions.retain(|k, _| served.contains(k));
    }

    /// Until when a pass should wait for `missing` sessions: until the last of those due back by
    /// `latest` is due (its answer plus its usual return time, plus a quarter of that and half
    /// a millisecond of slack), never past `latest`; None if none is due by then. A session
    /// that usually takes longer than `usual` is not waited for, so one far-away client does
    /// not slow the others, nor is one past its slack (its client may be gone). With
    /// `hidden_waits`, a session whose last return was hidden behind a pass
    /// ([`Returns::hidden`]) may be due at any time up to what that return took: it is waited
    /// for until then or `latest`, whichever comes first, and its next return, seen while the
    /// node waits, says how long it really takes. (Not while the CPUs are contended: in a
    /// pipeline of nodes on shared cores every return crosses other nodes' passes, and waiting
    /// for each one that crossed this node's measured 0.88x the tokens of not waiting.)
    fn hold_until<'a>(
        &self,
        missing: impl Iterator<Item = &'a u64>,
        now: Instant,
        usual: Duration,
        latest: Instant,
        hidden_waits: bool,
    ) -> Option<Instant> {
        missing
            .filter_map(|k| {
                let r = self.sessions.get(k)?;
                let at = r.answered?;
                if let Some(took) = r.hidden.filter(|_| hidden_waits) {
                    let until = (at + took).min(latest);
                    return (took <= usual && now < until).then_some(until);
                }
                let typical = r.typical?;
                let due = at + typical;
                let slack = typical / 4 + Duration::from_micros(500);
                (typical <= usual && due <= latest && now <= due + slack)
                    .then(|| (due + slack).min(latest))
            })
            .max()
    }
}

/// Whether this machine's CPUs are contended, from Linux's pressure stall information: the share
/// of time in which some runnable thread waited for a CPU (`/proc/pressure/cpu`, "some"), over
/// the time since the last reading (at most every [`CpuPressure::EVERY`]). Contended from a
/// quarter of the time, and until it falls under a twentieth: batching harder lowers the
/// pressure it answers, and without the gap the node would switch back and forth. Never
/// contended where the file cannot be read (other systems, kernels without it).
#[derive(Debug)]
struct CpuPressure {
    path: Option<std::path::PathBuf>,
    /// The last reading: when, and the total stall time then (microseconds).
    last: Option<(Instant, u64)>,
    contended: bool,
}

impl CpuPressure {
    const EVERY: Duration = Duration::from_millis(200);
    const ENTER: f64 = 0.25;
    const LEAVE: f64 = 0.05;

    fn system() -> Self {
        CpuPressure {
            path: Some("/proc/pressure/cpu".into()),
            last: None,
            contended: false,
        }
    }

    fn contended(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < Self::EVERY)
        {
            return self.contended;
        }
        let Some(path) = &self.path else {
            return false;
        };
        let Some(total) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| stalled_us(&text))
        else {
            // Not available here: never look again.
            self.path = None;
            self.contended = false;
            return false;
        };
        if let Some((at, before)) = self.last {
            let share = total.saturating_sub(before) as f64
                / now.saturating_duration_since(at).as_micros().max(1) as f64;
            let was = self.contended;
            self.contended = still_contended(was, share);
            if self.contended != was {
                debug!(share, contended = self.contended, "CPU pressure");
            }
        }
        self.last = Some((now, total));
        self.contended
    }
}

/// The "some" line's total stall time, in microseconds, of a pressure file.
fn stalled_us(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The contention state after a reading of `share` (stalled time over elapsed time).
fn still_contended(was: bool, share: f64) -> bool {
    if was {
        share >= CpuPressure::LEAVE
    } else {
        share >= CpuPressure::ENTER
    }
}

/// One pass: the next chunk of every taken step through the blocks; the steps that are done are
/// answered, the others returned.
fn pass(runner: &dyn BlockRunner, mut jobs: Vec<StepJob>, max_chunk: usize) -> Vec<StepJob> {
    let n = jobs.len();
    let t = Instant::now();
    let outputs = crate::session::blocking(|| {
        let mut items: Vec<BatchItem<'_>> = jobs
            .iter_mut()
            .map(|j| {
                let rows = j.chunk(max_chunk);
                let input = if j.done == 0 && rows == j.n_tokens {
                    std::mem::take(&mut j.data)
                } else {
                    let dim = j.data.len() / j.n_tokens.max(1);
                    j.data[j.done * dim..(j.done + rows) * dim].to_vec()
                };
                BatchItem {
                    cache: j.cache.as_mut(),
                    n_tokens: rows,
                    rows: input,
                    stepwise: j.stepwise,
                }
            })
            .collect();
        let outputs = runner.forward_batch(&mut items);
        drop(items);
        let tokens = draw_tokens(runner, &jobs, &outputs, max_chunk);
        (outputs, tokens)
    });
    let (outputs, mut tokens) = outputs;
    let pass_compute = t.elapsed();
    debug!(steps = n, us = pass_compute.as_micros() as u64, "pass");
    let mut unfinished = Vec::new();
    for ((mut job, output), token) in jobs.into_iter().zip(outputs).zip(tokens.drain(..)) {
        job.compute += pass_compute;
        let output = match output {
            Ok(rows) => {
                job.done += job.chunk(max_chunk);
                if job.done < job.n_tokens {
                    job.out.extend_from_slice(&rows);
                    unfinished.push(job);
                    continue;
                }
                if job.out.is_empty() {
                    Ok(rows)
                } else {
                    job.out.extend_from_slice(&rows);
                    Ok(std::mem::take(&mut job.out))
                }
            }
            Err(e) => Err(e),
        };
        let _ = job.reply.send(StepDone {
            cache: job.cache,
            output,
            pass_compute: job.compute,
            pass_steps: n,
            token,
        });
    }
    unfinished
}

/// The tokens of the steps that end in this pass and asked for a draw, picked from their last
/// rows in one head product; one entry per job, None for the others (and for every job when the
/// runner holds no head or its product failed: the client then picks the token itself).
fn draw_tokens(
    runner: &dyn BlockRunner,
    jobs: &[StepJob],
    outputs: &[Result<Vec<f32>, ComputeError>],
    max_chunk: usize,
) -> Vec<Option<u32>> {
    let mut tokens = vec![None; jobs.len()];
    let dim = runner.hidden_size();
    let mut asking = Vec::new();
    let mut rows = Vec::new();
    let mut draws = Vec::new();
    for (i, (job, out)) in jobs.iter().zip(outputs).enumerate() {
        let (Some(draw), Ok(out)) = (job.draw, out) else {
            continue;
        };
        let ends_here = job.done + job.chunk(max_chunk) == job.n_tokens;
        if ends_here && dim > 0 && out.len() >= dim {
            asking.push(i);
            rows.push(&out[out.len() - dim..]);
            draws.push(draw);
        }
    }
    if asking.is_empty() {
        return tokens;
    }
    match runner.draw_tokens(&rows, &draws) {
        Some(Ok(picked)) => {
            for (i, t) in asking.into_iter().zip(picked) {
                tokens[i] = Some(t);
            }
        }
        Some(Err(e)) => debug!(error = %e, "the LM head failed; the clients pick their tokens"),
        None => {}
    }
    tokens
}

/// What a session holds while its cache is with the executor: a step can never run on it.
pub(crate) struct Lent;

impl SessionCache for Lent {
    fn len(&self) -> usize {
        0
    }

    fn forward(&mut self, _n_tokens: usize, _data: Vec<f32>) -> Result<Vec<f32>, ComputeError> {
        Err(ComputeError::Foreign)
    }

    fn truncate(&mut self, _len: usize) {}

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A gather in which session 1 came back 3 ms after its answer and session 2 30 ms after,
    /// both answered again at `t0`.
    fn two_sessions(t0: Instant) -> Gather {
        let mut g = Gather::default();
        g.answered(1, t0 - 10 * MS);
        g.arrived(Some(1), t0 - 7 * MS);
        g.answered(2, t0 - 40 * MS);
        g.arrived(Some(2), t0 - 10 * MS);
        g.answered(1, t0);
        g.answered(2, t0);
        g
    }

    /// The timed passes separate all three costs: passes that take exactly a model's time give
    /// back that model.
    #[test]
    fn the_timed_passes_give_back_every_coefficient() {
        for truth in [[0.004, 0.0008, 2e-6], [0.010, 0.0, 0.0], [0.0, 0.001, 1e-5]] {
            let model = LinearCost::new(truth[0], truth[1], truth[2]).unwrap();
            let samples: Vec<(Vec<Step>, f64)> = COST_SAMPLES
                .iter()
                .map(|&(n, t, c)| {
                    let steps = cost_sample(n, t, c);
                    let refs: Vec<&Step> = steps.iter().collect();
                    let seconds = model.pass_seconds(&refs);
                    (steps, seconds)
                })
                .collect();
            let fitted = LinearCost::fit(samples.iter().map(|(s, t)| (s.as_slice(), *t)))
                .expect("the timed passes separate the coefficients");
            for (got, want) in fitted.coefficients().iter().zip(truth) {
                assert!(
                    (got - want).abs() <= 1e-9 + want * 1e-6,
                    "{truth:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn a_pass_waits_up_to_the_fixed_part_of_a_pass_it_saves() {
        // Passes run at the model's speed: 10 ms, of which 8 are fixed.
        let (limit, usual) = gather_limits(10 * MS, 0.010, 0.008, false);
        assert_eq!((limit, usual), (8 * MS, 40 * MS));
        // Twice slower than the model: the fixed part is 16 ms, but never more than a pass.
        assert_eq!(gather_limits(20 * MS, 0.010, 0.008, false).0, 16 * MS);
        assert_eq!(gather_limits(10 * MS, 0.010, 0.020, false).0, 10 * MS);
        // A small fixed part: half the last pass.
        assert_eq!(gather_limits(10 * MS, 0.010, 0.001, false).0, 5 * MS);
        // No prediction (the first pass) and a broken one: the model's own fixed part.
        assert_eq!(gather_limits(10 * MS, 0.0, 0.008, false).0, 8 * MS);
        assert_eq!(gather_limits(10 * MS, f64::NAN, 0.008, false).0, 8 * MS);
        // The speed estimate is bounded: a pass 100 times slower counts as 4 times.
        assert_eq!(gather_limits(1000 * MS, 0.010, 0.008, false).0, 500 * MS);
        assert_eq!(
            gather_limits(Duration::ZERO, 0.010, 0.008, false).0,
            Duration::ZERO
        );
        // Contended: four passes, whatever the model.
        assert_eq!(
            gather_limits(10 * MS, 0.010, 0.008, true),
            (40 * MS, 80 * MS)
        );
    }

    #[test]
    fn a_pass_waits_until_answered_sessions_are_due_back() {
        let t0 = Instant::now();
        let g = two_sessions(t0);
        let (now, latest) = (t0 + MS, t0 + 5 * MS);
        assert_eq!(g.sessions[&1].typical, Some(3 * MS));
        assert_eq!(g.sessions[&2].typical, Some(30 * MS));
        let hold =
            |missing: &[u64], usual, latest| g.hold_until(missing.iter(), now, usual, latest, true);
        // Session 1 is due at t0 + 3 ms; slack: a quarter of 3 ms and half a millisecond.
        let one_due = t0 + 3 * MS + 1250 * MS / 1000;
        assert_eq!(hold(&[1], 10 * MS, latest), Some(one_due));
        assert_eq!(
            hold(&[1], 10 * MS, t0 + 4 * MS),
            Some(t0 + 4 * MS),
            "never past latest"
        );
        assert_eq!(hold(&[2], 10 * MS, latest), None, "usually slower");
        assert_eq!(hold(&[1, 2], 10 * MS, latest), Some(one_due));
        assert_eq!(hold(&[2], 40 * MS, latest), None, "due after the latest");
        let two_due = t0 + 30 * MS + 8 * MS;
        assert_eq!(
            hold(&[1, 2], 40 * MS, t0 + 40 * MS),
            Some(two_due),
            "the last one due"
        );
        assert_eq!(hold(&[3], 40 * MS, latest), None, "never seen");
        assert_eq!(hold(&[], 40 * MS, latest), None, "nobody missing");
        // Overdue: answered 5 ms ago, usually back in 3 ms (slack 1.25 ms).
        let late = t0 + 5 * MS;
        assert_eq!(
            g.hold_until([1].iter(), late, 10 * MS, late + MS, true),
            None
        );
    }

    /// Two groups that alternate passes: each group's steps come back while the other's pass
    /// runs, so their returns look a whole pass long. Such a return is taken as an upper bound:
    /// the group is waited for until then (or the limit), and a return seen while the node
    /// waits becomes the typical one again.
    #[test]
    fn a_return_hidden_behind_a_pass_is_waited_for_up_to_what_it_took() {
        let t0 = Instant::now();
        let mut g = Gather::default();
        // Session 1 was answered at t0 - 12 ms; the other group's pass started at t0 - 11 ms and
        // ended at t0 - 2 ms, and session 1's step was handed over then.
        g.answered(1, t0 - 12 * MS);
        g.pass_started(t0 - 11 * MS);
        g.arrived(Some(1), t0 - 2 * MS);
        assert_eq!(g.sessions[&1].hidden, Some(10 * MS));
        assert_eq!(g.sessions[&1].typical, Some(10 * MS));
        // Answered again now: waited for up to 10 ms, never past the latest.
        g.answered(1, t0);
        let hold =
            |g: &Gather, now, usual, latest| g.hold_until([1].iter(), now, usual, latest, true);
        assert_eq!(hold(&g, t0, 40 * MS, t0 + 30 * MS), Some(t0 + 10 * MS));
        assert_eq!(hold(&g, t0, 40 * MS, t0 + 4 * MS), Some(t0 + 4 * MS));
        assert_eq!(
            hold(&g, t0, 5 * MS, t0 + 30 * MS),
            None,
            "longer than usual"
        );
        assert_eq!(
            hold(&g, t0 + 11 * MS, 40 * MS, t0 + 30 * MS),
            None,
            "past it"
        );
        // Without hidden waits (contended CPUs), the return counts as a typical one: due at
        // t0 + 10 ms, after a latest of t0 + 4 ms.
        assert_eq!(
            g.hold_until([1].iter(), t0, 40 * MS, t0 + 4 * MS, false),
            None
        );
        // It comes back 1 ms after its answer, with no pass in between: seen as it is.
        g.arrived(Some(1), t0 + MS);
        assert_eq!(g.sessions[&1].hidden, None);
        assert_eq!(g.sessions[&1].typical, Some((30 * MS + MS) / 4));
    }

    #[test]
    fn the_pressure_file_gives_the_stalled_time() {
        let text = "some avg10=0.92 avg60=5.97 avg300=6.94 total=676263636\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(stalled_us(text), Some(676_263_636));
        assert_eq!(
            stalled_us("full avg10=0.00 total=5\n"),
            None,
            "no some line"
        );
        assert_eq!(stalled_us("some avg10=0.00 total=x\n"), None);
        assert_eq!(stalled_us(""), None);
    }

    #[test]
    fn contention_starts_at_a_quarter_and_ends_under_a_twentieth() {
        assert!(!still_contended(false, 0.2));
        assert!(still_contended(false, 0.25));
        assert!(still_contended(true, 0.1), "stays while the pressure stays");
        assert!(!still_contended(true, 0.04));
        assert!(!still_contended(false, 0.0));
    }

    #[test]
    fn a_missing_pressure_file_means_never_contended() {
        let mut p = CpuPressure {
            path: Some("/nonexistent/pressure/cpu".into()),
            last: None,
            contended: false,
        };
        assert!(!p.contended(Instant::now()));
        assert!(p.path.is_none(), "not read again");
    }

    #[test]
    fn pressure_is_the_stalled_share_of_the_time_between_readings() {
        let dir = std::env::temp_dir().join(format!("sunswarm-psi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cpu");
        let write = |total: u64| {
            std::fs::write(
                &file,
                format!("some avg10=0 avg60=0 avg300=0 total={total}\n"),
            )
            .unwrap()
        };
        let mut p = CpuPressure {
            path: Some(file.clone()),
            last: None,
            contended: false,
        };
        let t0 = Instant::now();
        write(1_000_000);
        assert!(!p.contended(t0), "one reading says nothing");
        // 300 ms later, 90 ms more stalled: 30 %.
        write(1_090_000);
        assert!(p.contended(t0 + 300 * MS));
        // Read again only after 200 ms: a quiet file meanwhile changes nothing.
        write(1_090_000);
        assert!(p.contended(t0 + 400 * MS));
        // 300 ms after the last reading, 20 ms stalled (6.7 %): still contended; then none.
        write(1_110_000);
        assert!(p.contended(t0 + 600 * MS));
        assert!(!p.contended(t0 + 900 * MS));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_session_whose_step_is_in_is_not_waited_for_and_its_return_is_smoothed() {
        let t0 = Instant::now();
        let mut g = two_sessions(t0);
        // Session 1's next step took 11 ms: a quarter of the change.
        g.arrived(Some(1), t0 + 11 * MS);
        assert_eq!(g.sessions[&1].typical, Some(5 * MS));
        assert_eq!(
            g.hold_until([1].iter(), t0 + 11 * MS, 10 * MS, t0 + 20 * MS, true),
            None
        );
        // A step without a session changes nothing.
        g.arrived(None, t0 + 12 * MS);
        assert_eq!(g.sessions.len(), 2);
    }

    #[test]
    fn ended_sessions_are_forgotten() {
        let t0 = Instant::now();
        let mut g = two_sessions(t0);
        g.forget_all_but(&[2, 7]);
        assert_eq!(g.sessions.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
