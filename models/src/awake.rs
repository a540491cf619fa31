//! Keeps a rayon pool's other workers looking for work while one thread runs a batched pass.
//!
//! A pass of several sessions alternates parallel products with short serial stretches (norms,
//! attention set-up, the activation). An idle rayon worker spins briefly and then sleeps, and
//! in a VM a sleeping vCPU takes tens of microseconds to wake: at 8 sessions the second worker
//! slept through most stretches and woke too late to take its half of the next product, so two
//! threads ran a pass no faster than one (SmolLM2-135M, 8 rows: 2.7 ms a token on two threads,
//! 2.9 on one; kept awake, 2.1). While a pass runs, the other workers poll the pool for work
//! instead, yielding the CPU between polls, and stop when the pass ends or when they have found
//! no work for [`MAX_IDLE`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Polls between two `sched_yield`s of a worker that found no work.
const SPINS_PER_YIELD: u32 = 64;

/// How long a worker polls without finding work before it goes back to rayon (and may sleep):
/// longer than the serial stretches between a pass's products (tens of microseconds at 8
/// sessions), short enough that a copy of the loop that a worker started inside one of the
/// pass's own jobs, and that holds that job up, costs little.
const MAX_IDLE: Duration = Duration::from_micros(500);

/// While alive, every other worker of the current rayon pool looks for work without sleeping.
pub(crate) struct KeepAwake {
    done: Arc<AtomicBool>,
}

impl KeepAwake {
    /// Starts keeping the pool awake; from inside a pool of one thread, or outside any pool, it
    /// does nothing.
    pub(crate) fn start() -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let me = rayon::current_thread_index();
        if me.is_some() && rayon::current_num_threads() > 1 {
            let flag = done.clone();
            rayon::spawn_broadcast(move |ctx| {
                // This thread runs the pass; it may meet its own copy while it waits inside it.
                if Some(ctx.index()) == me {
                    return;
                }
                let mut idle = 0u32;
                let mut last_work = Instant::now();
                while !flag.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                        last_work = Instant::now();
                        continue;
                    }
                    idle += 1;
                    if !idle.is_multiple_of(SPINS_PER_YIELD) {
                        std::hint::spin_loop();
                        continue;
                    }
                    // Found no work for a while: maybe this copy runs inside a job of the pass
                    // (a worker waiting inside a job takes queued jobs, this one too), which
                    // cannot finish until the loop returns.
                    if last_work.elapsed() > MAX_IDLE {
                        return;
                    }
                    std::thread::yield_now();
                }
            });
        }
        KeepAwake { done }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn workers_take_work_while_awake_and_are_released_after() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let sum: u64 = pool.install(|| {
            let _awake = KeepAwake::start();
            (0..10_000u64).into_par_iter().map(|x| x * x).sum()
        });
        assert_eq!(sum, (0..10_000u64).map(|x| x * x).sum::<u64>());
        // Every worker runs this only once its spinner has returned: it would hang otherwise.
        let ran = pool.broadcast(|ctx| ctx.index());
        assert_eq!(ran, vec![0, 1, 2]);
    }

    /// A worker may start its copy of the loop while it waits inside a job of the pass, below
    /// which that job cannot finish: the loop must give the thread back when it finds no work,
    /// or the pass waits for it forever (this hung within a few hundred passes before).
    #[test]
    fn many_passes_of_nested_parallel_work_all_finish() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            for pass in 0..3000u64 {
                let total: u64 = pool.install(|| {
                    let _awake = KeepAwake::start();
                    (0..8u64)
                        .into_par_iter()
                        .map(|i| {
                            (0..64u64)
                                .into_par_iter()
                                .map(|j| i * j + pass)
                                .sum::<u64>()
                        })
                        .sum()
                });
                assert_eq!(total, 28 * 2016 + 512 * pass);
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(120))
            .expect("3000 passes finish within two minutes (they take well under a second)");
    }

    #[test]
    fn outside_a_pool_or_in_a_pool_of_one_it_does_nothing() {
        drop(KeepAwake::start());
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        one.install(|| drop(KeepAwake::start()));
        assert_eq!(one.broadcast(|ctx| ctx.index()), vec![0]);
    }
}
