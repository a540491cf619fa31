//! The LM head shared by every generation of one process, run for all of them at once.
//!
//! A client applies the final norm and the LM head to each session's last hidden state: for
//! SmolLM2-135M that is a 49152 x 576 matrix, as many values as a quarter of the blocks, read
//! once per token. A `swarm-client serve` process carries many sessions, and a node's batched
//! pass answers them within a millisecond of each other; computing their heads one after another
//! read the matrix once per session and kept each session's next step waiting behind the others'
//! heads. Here one thread takes every request waiting when it is free and runs them through
//! [`Head::logits_last_many`], which reads the matrix once for all and gives each row exactly the
//! logits it gets alone, so a session's tokens do not depend on the company it keeps.
//!
//! The thread also waits briefly for the company: a node answers the sessions of one pass
//! within a fraction of a millisecond, but the first answer to be read woke the idle thread,
//! which computed it alone while the others queued behind it. In a 3-node swarm serving 8
//! streams most heads ran as one session and then seven (and the sessions went on in two groups,
//! each costing the nodes a pass). So each generation says when its step leaves
//! ([`SharedHead::departing`]), and the thread waits for the steps that left with the first one
//! it holds (no later than shortly after it), for at most as long as a head product took last,
//! which is what computing a straggler on its own would cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sunswarm_models::{Head, HiddenStates, ModelError};
use tokio::sync::oneshot;

/// One session's request: its last hidden states, when its step left, and where its logits go.
struct Job {
    hidden: HiddenStates,
    left: Option<Instant>,
    reply: oneshot::Sender<Result<Vec<f32>, ModelError>>,
}

/// Steps that left for the blocks and whose hidden states have not reached the head yet: ticket
/// number to the time it left.
#[derive(Default)]
struct InFlight {
    next: AtomicU64,
    left: Mutex<HashMap<u64, Instant>>,
    /// Products the thread has computed.
    products: AtomicU64,
}

/// Steps that leave within this long of each other count as one group: a generation samples
/// and embeds its next token in well under a millisecond, so a pass's sessions leave within
/// about that much of each other.
const TOGETHER: Duration = Duration::from_millis(2);

/// The head thread never waits longer than this for company, whatever a product took.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// A step on its way through the blocks, from [`SharedHead::departing`]; it stops being
/// waited for when its hidden states reach the head or when it is dropped (the step failed).
pub struct Departure {
    flights: Arc<InFlight>,
    ticket: u64,
    left: Instant,
}

impl Drop for Departure {
    fn drop(&mut self) {
        if let Ok(mut left) = self.flights.left.lock() {
            left.remove(&self.ticket);
        }
    }
}

/// A [`Head`] whose logits are computed on a thread of their own, for all waiting sessions in one
/// product. Cheap to share: clones use the same thread.
#[derive(Clone)]
pub struct SharedHead {
    head: Arc<Head>,
    /// None when the thread could not be started: logits are then computed in the caller.
    jobs: Option<mpsc::Sender<Job>>,
    flights: Arc<InFlight>,
}

impl SharedHead {
    pub fn new(head: Head) -> Self {
        Self::start(head, None)
    }

    /// Waits up to `wait` for company, whatever a product takes (for tests, whose tiny models'
    /// products take microseconds).
    #[cfg(test)]
    fn with_wait(head: Head, wait: Duration) -> Self {
        Self::start(head, Some(wait))
    }

    fn start(head: Head, fixed_wait: Option<Duration>) -> Self {
        let head = Arc::new(head);
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = head.clone();
        let flights = Arc::new(InFlight::default());
        let watched = flights.clone();
        let started = std::thread::Builder::new()
            .name("lm-head".into())
            .spawn(move || serve_jobs(&worker, &rx, &watched, fixed_wait));
        if let Err(e) = &started {
            tracing::warn!(error = %e, "no thread for the LM head; each session computes its own");
        }
        Self {
            head,
            jobs: started.ok().map(|_| tx),
            flights,
        }
    }

    /// Marks a step leaving for the blocks now, so that the head waits for its hidden states
    /// when steps that left with it arrive first. Hand it to [`Self::logits_after`].
    pub fn departing(&self) -> Departure {
        let ticket = self.flights.next.fetch_add(1, Ordering::Relaxed);
        let left = Instant::now();
        if let Ok(mut flights) = self.flights.left.lock() {
            flights.insert(ticket, left);
        }
        Departure {
            flights: self.flights.clone(),
            ticket,
            left,
        }
    }

    /// [`Self::logits_last`] of the hidden states that came back for `departure`.
    pub async fn logits_after(
        &self,
        departure: Departure,
        hidden: HiddenStates,
    ) -> Result<Vec<f32>, ModelError> {
        let left = departure.left;
        // Arrived: no longer waited for.
        drop(departure);
        self.request(hidden, Some(left)).await
    }

    /// The head itself (embeddings, config).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Logits of the last token of `hidden`, computed with those of every other session that is
    /// waiting at the same time.
    pub async fn logits_last(&self, hidden: HiddenStates) -> Result<Vec<f32>, ModelError> {
        self.request(hidden, None).await
    }

    async fn request(
        &self,
        hidden: HiddenStates,
        left: Option<Instant>,
    ) -> Result<Vec<f32>, ModelError> {
        let Some(jobs) = &self.jobs else {
            return self.head.logits_last(&hidden);
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = jobs.send(Job {
            hidden,
            left,
            reply,
        }) {
            return self.head.logits_last(&job.hidden);
        }
        answer.await.unwrap_or_else(|_| {
            Err(ModelError::Backend(
                "the LM head thread stopped before answering".into(),
            ))
        })
    }
}

/// Until every sender is gone: wait for a request, take all others already waiting and those
/// whose steps left with them ([`company_due`]), answer them from one product.
fn serve_jobs(
    head: &Head,
    rx: &mpsc::Receiver<Job>,
    flights: &InFlight,
    fixed_wait: Option<Duration>,
) {
    let mut last_product = Duration::ZERO;
    let mut trip = Trip::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let until = Instant::now() + fixed_wait.unwrap_or(last_product.min(MAX_WAIT));
        let mut timed = 0;
        loop {
            let now = Instant::now();
            for job in &jobs[timed..] {
                if let Some(left) = job.left {
                    trip.add(now.saturating_duration_since(left));
                }
            }
            timed = jobs.len();
            let group_left = jobs.iter().filter_map(|j| j.left).max();
            let due = match group_left {
                Some(last) => flights
                    .left
                    .lock()
                    .map(|left| company_due(last, now, trip.typical, left.values()))
                    .unwrap_or(false),
                None => false,
            };
            if !due {
                break;
            }
            match rx.recv_timeout(until.saturating_duration_since(now)) {
                Ok(job) => {
                    jobs.push(job);
                    jobs.extend(rx.try_iter());
                }
                Err(_) => break,
            }
        }
        let hidden: Vec<&HiddenStates> = jobs.iter().map(|j| &j.hidden).collect();
        let started = Instant::now();
        let result = head.logits_last_many(&hidden);
        last_product = started.elapsed();
        tracing::debug!(
            sessions = jobs.len(),
            us = last_product.as_micros() as u64,
            "LM head pass"
        );
        flights.products.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(rows) => {
                for (job, logits) in jobs.into_iter().zip(rows) {
                    let _ = job.reply.send(Ok(logits));
                }
            }
            // One bad request must not fail the others: each is answered on its own.
            Err(_) => {
                for job in jobs {
                    let logits = head.logits_last(&job.hidden);
                    let _ = job.reply.send(logits);
                }
            }
        }
    }
}

/// How long steps take from leaving to reaching the head, smoothed (a quarter of each new one).
#[derive(Default)]
struct Trip {
    typical: Option<Duration>,
}

impl Trip {
    fn add(&mut self, took: Duration) {
        self.typical = Some(match self.typical {
            Some(t) => (t * 3 + took) / 4,
            None => took,
        });
    }
}

/// Whether a step still on its way is due with the group the head holds: it left no later than
/// [`TOGETHER`] after the last of the group's steps (one that left with them, or before them and
/// was held back on the way to go on with them, as nodes do to batch their sessions), and it is
/// not overdue (on its way for less than twice the typical trip, else its route is slower or
/// stuck). With no trip measured yet, only steps that left together are due.
fn company_due<'a>(
    last: Instant,
    now: Instant,
    typical_trip: Option<Duration>,
    mut in_flight: impl Iterator<Item = &'a Instant>,
) -> bool {
    in_flight.any(|&left| {
        let not_overdue = match typical_trip {
            Some(trip) => now.saturating_duration_since(left) <= trip * 2,
            None => left + TOGETHER >= last,
        };
        left <= last + TOGETHER && not_overdue
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_models::{BackendKind, Model, ModelSource, device};

    fn random_head() -> Head {
        let model = Model::open(&ModelSource::parse("random:tiny:seed=3").unwrap()).unwrap();
        model.load_head(&device(BackendKind::Cpu).unwrap()).unwrap()
    }

    fn hidden(seed: usize, n_tokens: usize, dim: usize) -> HiddenStates {
        HiddenStates {
            n_tokens,
            dim,
            data: (0..n_tokens * dim)
                .map(|i| (((i * 37 + seed * 101) % 97) as f32 - 48.0) / 24.0)
                .collect(),
        }
    }

    #[test]
    fn the_head_waits_for_steps_due_with_its_group() {
        let ms = Duration::from_millis;
        // The group's last step left at `last`; it is now `last` + 30 ms; trips take 30 ms.
        let last = Instant::now() + Duration::from_secs(1);
        let now = last + ms(30);
        let due = |flights: &[Instant]| company_due(last, now, Some(ms(30)), flights.iter());
        assert!(due(&[last]), "left with it");
        assert!(due(&[last + ms(1)]), "left just after");
        assert!(
            due(&[last - ms(20)]),
            "left before it, held back on the way"
        );
        assert!(!due(&[last - ms(40)]), "overdue: on its way for 70 ms");
        assert!(!due(&[last + ms(5)]), "left after: the next round");
        assert!(!due(&[]), "nothing on its way");
        assert!(due(&[last - ms(50), last]));
        // No trip measured yet: only steps that left together.
        let first_time = |left| company_due(last, now, None, [left].iter());
        assert!(first_time(last - ms(1)));
        assert!(!first_time(last - ms(20)));
    }

    /// Two steps leave together and come back 50 ms apart: one product computes both. A step
    /// dropped on its way (it failed) is not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_waits_for_a_step_that_left_with_the_one_it_holds() {
        let wait = Duration::from_secs(30);
        let shared = SharedHead::with_wait(random_head(), wait);
        let dim = shared.head().config().hidden_size;
        let products = || shared.flights.products.load(Ordering::Relaxed);
        let (a, b) = (shared.departing(), shared.departing());
        let early = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.logits_after(a, hidden(1, 1, dim)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            products(),
            0,
            "the head waits for the step that left with the first"
        );
        let late = shared.logits_after(b, hidden(2, 1, dim)).await.unwrap();
        let early = early.await.unwrap().unwrap();
        assert_eq!(products(), 1, "both in one product");
        assert_eq!(late, shared.head().logits_last(&hidden(2, 1, dim)).unwrap());
        assert_eq!(
            early,
            shared.head().logits_last(&hidden(1, 1, dim)).unwrap()
        );

        let (c, d) = (shared.departing(), shared.departing());
        drop(c);
        let started = Instant::now();
        shared.logits_after(d, hidden(3, 1, dim)).await.unwrap();
        assert!(started.elapsed() < wait, "a dropped step is not waited for");
        assert_eq!(products(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sessions_get_their_own_logits_and_a_bad_one_fails_alone() {
        let shared = SharedHead::new(random_head());
        let dim = shared.head().config().hidden_size;
        let mut tasks = Vec::new();
        for s in 0..12 {
            let shared = shared.clone();
            // Session 5 sends states of the wrong width.
            let h = hidden(s, 1 + s % 3, if s == 5 { dim + 1 } else { dim });
            tasks.push(tokio::spawn(async move {
                let want = shared.head().logits_last(&h);
                (s, want, shared.logits_last(h).await)
            }));
        }
        for task in tasks {
            let (s, want, got) = task.await.unwrap();
            if s == 5 {
                let err = got.expect_err("a wrong width is refused");
                assert!(err.to_string().contains("expected"), "{err}");
                assert!(want.is_err());
            } else {
                assert_eq!(got.unwrap(), want.unwrap(), "session {s}");
            }
        }
    }
}
