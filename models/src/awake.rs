//! Keeps a rayon pool's other workers looking for work while one thread runs a batched pass.
//!
//! A pass of several sessions alternates parallel products with short serial stretches (norms,
//! attention set-up, the activation). An idle rayon worker spins briefly and then sleeps, and
//! in a VM a sleeping vCPU takes tens of microseconds to wake: at 8 sessions the second worker
//! slept through most stretches and woke too late to take its half of the next product, so two
//! threads ran a pass no faster than one (SmolLM2-135M, 8 rows: 2.7 ms a token on two threads,
//! 2.9 on one; kept awake, 2.1). While a pass runs, the other workers poll the pool for work
//! instead, yielding the CPU between polls, and stop when the pass ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Polls between two `sched_yield`s of a worker that found no work.
const SPINS_PER_YIELD: u32 = 64;

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
                while !flag.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle.is_multiple_of(SPINS_PER_YIELD) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
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
