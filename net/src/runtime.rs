//! The runtimes the `swarm-node` and `swarm-client` binaries run on: one tokio thread, and
//! rayon's global pool for compute.
//!
//! A node's tokio thread is also worker 0 of the pool ([`compute_runtime`]). Decode is a chain of short forwards (a few milliseconds per hop) with the network in between.
//! On a multi-threaded runtime each forward left the async thread twice: `block_in_place` handed
//! the runtime to another thread, and the forward was injected into the rayon pool and its end
//! signalled back, so every hop paid several thread wake-ups per token (tens of microseconds
//! each on a VM whose idle vCPUs halt). Here the thread that reads a frame runs the forward
//! itself as rayon worker 0 (the other workers join in its parallel loops) and writes the
//! result, with no hand-off. The cost: while a forward runs, this process's network waits, which
//! a compute-bound node would do anyway since its cores are busy. A client's pool has threads of
//! its own ([`client_runtime`]).

use std::io;

/// Builds the current-thread tokio runtime and makes this thread part of the global rayon pool
/// (`RAYON_NUM_THREADS` still sets the pool's size). Call once, from `main`.
pub fn compute_runtime() -> io::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let threads = pool_size();
    let mut pool = rayon::ThreadPoolBuilder::new();
    // With one thread this one cannot be the pool's only worker: work another thread hands to
    // the pool would wait for it while it awaits that work (the client's LM-head thread did,
    // when clients ran on this runtime, and `swarm-client generate` hung on one core).
    if threads > 1 {
        pool = pool.use_current_thread();
    }
    pool.build_global().map_err(io::Error::other)?;
    Ok(rt)
}

/// Builds the current-thread tokio runtime and a global rayon pool of its own threads
/// (`RAYON_NUM_THREADS`, else one per CPU). Call once, from `main`. For a client, whose compute
/// (the LM head) runs on a thread of its own and is handed to the pool: were this thread worker
/// 0, as on a node, it would join in only while it waits on rayon itself, never while it waits
/// for the network, so the head ran on one worker of two (SmolLM2-135M: 3.2 ms a token against
/// 1.7 on two).
pub fn client_runtime() -> io::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(pool_size())
        .build_global()
        .map_err(io::Error::other)?;
    Ok(rt)
}

/// `RAYON_NUM_THREADS` if set to a positive number, else one thread per CPU.
fn pool_size() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
