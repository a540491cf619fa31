//! Pacing a session (one job) to its power mode's time per job. The energy source tells a job's
//! ticket when the job's processing stage starts and how long it lasts in wall time; the session
//! then holds back each forward until the share of that time its tokens stand for has passed, so a
//! slower mode really answers slower and the client's timing sees it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Where a job stands in its node's energy model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Accepted, waiting for the job before it to finish (the model's single pending place).
    Waiting,
    /// Being processed since `start`, for `wall` in all.
    Running { start: Instant, wall: Duration },
    /// Its processing stage is over: nothing more to pace.
    Done,
}

/// The share of a job's wall time that `done` of `total` tokens stand for.
pub fn pace_offset(wall: Duration, done: u32, total: u32) -> Duration {
    if total == 0 {
        return wall;
    }
    let share = f64::from(done.min(total)) / f64::from(total);
    wall.mul_f64(share)
}

/// A session's handle on its job. Unpaced tickets (mains, real batteries) never wait. The session
/// holds its ticket until it ends, so a guard attached with [`JobTicket::with_guard`] is dropped
/// when the session is over (a node that is about to move counts its open sessions this way).
#[derive(Debug)]
pub struct JobTicket {
    phase: Option<watch::Receiver<JobPhase>>,
    total_tokens: u32,
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl JobTicket {
    /// A ticket that never holds a session back.
    pub fn unpaced() -> Self {
        JobTicket {
            phase: None,
            total_tokens: 0,
            guard: None,
        }
    }

    /// A ticket following `phase`, for a session of at most `total_tokens` tokens.
    pub fn paced(phase: watch::Receiver<JobPhase>, total_tokens: u32) -> Self {
        JobTicket {
            phase: Some(phase),
            total_tokens,
            guard: None,
        }
    }

    /// This ticket, also holding `guard` until it is dropped with the session.
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Whether this ticket ever waits.
    pub fn is_paced(&self) -> bool {
        self.phase.is_some()
    }

    /// The instant before which a session that has computed `done` tokens must not answer, or
    /// `None` when it need not wait; `Err(())` while the job is still waiting for its stage.
    pub(crate) fn deadline(&self, done: u32) -> Result<Option<Instant>, ()> {
        let Some(rx) = &self.phase else {
            return Ok(None);
        };
        match *rx.borrow() {
            JobPhase::Waiting => Err(()),
            JobPhase::Running { start, wall } => {
                Ok(Some(start + pace_offset(wall, done, self.total_tokens)))
            }
            JobPhase::Done => Ok(None),
        }
    }

    /// Waits until the session may answer after `done` tokens: first for the job's processing
    /// stage to start, then for its share of the stage's wall time.
    pub async fn pace(&mut self, done: u32) {
        loop {
            match self.deadline(done) {
                Ok(None) => return,
                Ok(Some(at)) => {
                    tokio::time::sleep_until(at).await;
                    return;
                }
                Err(()) => {
                    // Only paced tickets wait. The sender goes away only with the energy source:
                    // stop pacing then.
                    let Some(rx) = self.phase.as_mut() else {
                        return;
                    };
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_shares_of_the_wall_time() {
        let w = Duration::from_secs(3);
        assert_eq!(pace_offset(w, 0, 10), Duration::ZERO);
        assert_eq!(pace_offset(w, 5, 10), Duration::from_millis(1500));
        assert_eq!(pace_offset(w, 10, 10), w);
        assert_eq!(pace_offset(w, 99, 10), w, "never past the job's end");
        assert_eq!(
            pace_offset(w, 0, 0),
            w,
            "a session of unknown length takes the whole job"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_waits_for_its_stage_then_for_its_share() {
        let (tx, rx) = watch::channel(JobPhase::Waiting);
        let mut t = JobTicket::paced(rx, 4);
        assert!(t.is_paced());
        let t0 = Instant::now();
        let stage_start = t0 + Duration::from_secs(5);
        let feeder = tokio::spawn(async move {
            tokio::time::sleep_until(stage_start).await;
            tx.send(JobPhase::Running {
                start: stage_start,
                wall: Duration::from_secs(8),
            })
            .unwrap();
            tx
        });
        t.pace(1).await;
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(7),
            "5 s waiting, then 1/4 of 8 s"
        );
        t.pace(4).await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(13));
        let tx = feeder.await.unwrap();
        tx.send(JobPhase::Done).unwrap();
        let before = Instant::now();
        t.pace(4).await;
        assert_eq!(Instant::now(), before, "a finished job is not paced");
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_and_orphaned_tickets_do_not_wait() {
        let t0 = Instant::now();
        JobTicket::unpaced().pace(3).await;
        let (tx, rx) = watch::channel(JobPhase::Waiting);
        drop(tx);
        JobTicket::paced(rx, 3).pace(3).await;
        assert_eq!(Instant::now(), t0);
    }
}
