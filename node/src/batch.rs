//! Continuous batching: one executor per node runs the pending steps of all its sessions
//! together, a pass at a time. A session hands its step (its cache and the new hidden states) to
//! the executor and waits; when a pass ends, the executor answers its steps, lets their sessions
//! pass the outputs on and read their next frames, and starts the next pass with whatever is
//! pending then. Which pending steps go into a pass is the pure scheduler's choice
//! (`sunswarm_batching`: first come, first served up to a token budget); the pass itself is the
//! runner's [`BlockRunner::forward_batch`], in which decode steps share every weight read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sunswarm_batching::{LinearCost, PassScheduler, SchedulerConfig, Step};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::compute::{BatchItem, BlockRunner, ComputeError, SessionCache};

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
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            token_budget: 256,
            queue: 256,
            max_chunk: 128,
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
}

struct StepJob {
    cache: Box<dyn SessionCache>,
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
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Executor {
    /// Starts the executor task on the current runtime.
    pub fn start(
        runner: Arc<dyn BlockRunner>,
        cfg: BatchConfig,
    ) -> (Executor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let task = tokio::spawn(run(runner, rx, cfg));
        (
            Executor {
                tx,
                seq: Arc::default(),
            },
            task,
        )
    }

    /// Runs `n_tokens` rows of `data` through the blocks with `cache` in the next pass that
    /// takes them, and hands the cache back with the output.
    pub async fn step(
        &self,
        cache: Box<dyn SessionCache>,
        n_tokens: usize,
        data: Vec<f32>,
    ) -> Result<StepDone, ExecutorStopped> {
        let (reply, done) = oneshot::channel();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx
            .send(StepJob {
                cache,
                n_tokens,
                data,
                seq,
                reply,
                done: 0,
                out: Vec::new(),
                compute: Duration::ZERO,
            })
            .await
            .map_err(|_| ExecutorStopped)?;
        done.await.map_err(|_| ExecutorStopped)
    }
}

async fn run(runner: Arc<dyn BlockRunner>, mut rx: mpsc::Receiver<StepJob>, cfg: BatchConfig) {
    // FCFS does not consult the cost model; DFTSP (steps with deadlines) will.
    let scheduler = match LinearCost::new(0.0, 0.0, 0.0).and_then(|cost| {
        PassScheduler::new(
            cost,
            SchedulerConfig {
                token_budget: cfg.token_budget.max(1),
                ..SchedulerConfig::default()
            },
        )
    }) {
        Ok(s) => s,
        Err(e) => {
            warn!("the pass scheduler could not start: {e}");
            return;
        }
    };
    let mut pending: VecDeque<StepJob> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(job) => pending.push_back(job),
                None => return,
            }
        }
        // Sessions answered by the last pass read their next frames before this one is chosen.
        tokio::task::yield_now().await;
        while let Ok(job) = rx.try_recv() {
            pending.push_back(job);
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
                if tokens == 1 {
                    Step::decode(i as u64, j.seq, context)
                } else {
                    Step::prefill_chunk(i as u64, j.seq, tokens, context)
                }
            })
            .collect();
        let chosen: Vec<usize> = match scheduler.plan(&steps, u64::MAX) {
            Ok(plan) if !plan.run.is_empty() => plan.run,
            Ok(_) => vec![0],
            Err(e) => {
                // A step the scheduler cannot read (a size past u32) still runs, alone.
                debug!("scheduler refused the pending steps ({e}); running the oldest alone");
                vec![0]
            }
        };
        let mut taken: Vec<StepJob> = Vec::with_capacity(chosen.len());
        let mut chosen = chosen;
        chosen.sort_unstable();
        for &i in chosen.iter().rev() {
            if let Some(job) = pending.remove(i) {
                taken.push(job);
            }
        }
        taken.reverse();
        // Steps with chunks left go back to the front, in their order: they stay the oldest.
        for job in pass(runner.as_ref(), taken, max_chunk).into_iter().rev() {
            pending.push_front(job);
        }
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
                (j.cache.as_mut(), rows, input)
            })
            .collect();
        runner.forward_batch(&mut items)
    });
    let pass_compute = t.elapsed();
    debug!(steps = n, us = pass_compute.as_micros() as u64, "pass");
    let mut unfinished = Vec::new();
    for (mut job, output) in jobs.into_iter().zip(outputs) {
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
        });
    }
    unfinished
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

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
