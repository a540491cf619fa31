//! The runtime the `swarm-node` and `swarm-client` binaries run on: one tokio thread that is also
//! a worker of rayon's global pool.
//!
//! Decode is a chain of short forwards (a few milliseconds per hop) with the network in between.
//! On a multi-threaded runtime each forward left the async thread twice: `block_in_place` handed
//! the runtime to another thread, and the forward was injected into the rayon pool and its end
//! signalled back, so every hop paid several thread wake-ups per token (tens of microseconds
//! each on a VM whose idle vCPUs halt). Here the thread that reads a frame runs the forward
//! itself as rayon worker 0 (the other workers join in its parallel loops) and writes the
//! result, with no hand-off. The cost: while a forward runs, this process's network waits, which
//! a compute-bound node would do anyway since its cores are busy.

use std::io;

/// Builds the current-thread tokio runtime and makes this thread part of the global rayon pool
/// (`RAYON_NUM_THREADS` still sets the pool's size). Call once, from `main`.
pub fn compute_runtime() -> io::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut pool = rayon::ThreadPoolBuilder::new();
    // With one thread this one cannot be the pool's only worker: work another thread hands to
    // the pool (the client's LM-head thread) waited for it while it awaited that work, and
    // `swarm-client generate` hung on a one-core machine (`RAYON_NUM_THREADS=1`).
    if threads > 1 {
        pool = pool.use_current_thread();
    }
    pool.build_global().map_err(io::Error::other)?;
    Ok(rt)
}
