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

use std::sync::Arc;
use std::sync::mpsc;

use sunswarm_models::{Head, HiddenStates, ModelError};
use tokio::sync::oneshot;

/// One session's request: its last hidden states, and where its logits go.
struct Job {
    hidden: HiddenStates,
    reply: oneshot::Sender<Result<Vec<f32>, ModelError>>,
}

/// A [`Head`] whose logits are computed on a thread of their own, for all waiting sessions in one
/// product. Cheap to share: clones use the same thread.
#[derive(Clone)]
pub struct SharedHead {
    head: Arc<Head>,
    /// None when the thread could not be started: logits are then computed in the caller.
    jobs: Option<mpsc::Sender<Job>>,
}

impl SharedHead {
    pub fn new(head: Head) -> Self {
        let head = Arc::new(head);
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = head.clone();
        let started = std::thread::Builder::new()
            .name("lm-head".into())
            .spawn(move || serve_jobs(&worker, &rx));
        if let Err(e) = &started {
            tracing::warn!(error = %e, "no thread for the LM head; each session computes its own");
        }
        Self {
            head,
            jobs: started.ok().map(|_| tx),
        }
    }

    /// The head itself (embeddings, config).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Logits of the last token of `hidden`, computed with those of every other session that is
    /// waiting at the same time.
    pub async fn logits_last(&self, hidden: HiddenStates) -> Result<Vec<f32>, ModelError> {
        let Some(jobs) = &self.jobs else {
            return self.head.logits_last(&hidden);
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::SendError(job)) = jobs.send(Job { hidden, reply }) {
            return self.head.logits_last(&job.hidden);
        }
        answer.await.unwrap_or_else(|_| {
            Err(ModelError::Backend(
                "the LM head thread stopped before answering".into(),
            ))
        })
    }
}

/// Until every sender is gone: wait for a request, take all others already waiting, answer them
/// from one product.
fn serve_jobs(head: &Head, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let hidden: Vec<&HiddenStates> = jobs.iter().map(|j| &j.hidden).collect();
        tracing::debug!(sessions = jobs.len(), "LM head pass");
        match head.logits_last_many(&hidden) {
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
