//! Which pending session steps a Sunswarm node runs together in one forward pass (continuous
//! batching), after seed 002 (DFTSP: "Edge Intelligence Optimization for Large Language Model
//! Inference with Batching and Quantization", Zhang et al. 2024). Pure logic: no I/O, no clocks,
//! no panics; invalid input is a typed [`BatchError`].
//!
//! # The model
//!
//! A node holds a set of *pending steps*, one per session at a time: a decode token, or a chunk of
//! a prefill (a bounded number of prompt tokens, see [`prefill_chunks`]). Each pass it picks a
//! subset to run together. A subset is *feasible* when its new KV cache fits in free memory and
//! every member with a deadline still meets it after the pass; adding a step never makes a pass
//! cheaper or a deadline looser, so feasibility is *monotone*: an infeasible batch has no feasible
//! superset. Among feasible subsets the scheduler wants the most tokens advanced.
//!
//! That is a 0/1 knapsack-like problem (NP-hard in general). DFTSP solves it exactly by a
//! depth-first search over include/exclude decisions that prunes twice: an infeasible include
//! removes its whole subtree (monotonicity), and a node that cannot beat the best batch so far
//! even by taking every remaining step is cut (a suffix-sum bound). A node cap bounds the effort.
//!
//! # Modules
//!
//! - [`search`]: the generic searches over [`search::Candidate`]s and a feasibility oracle: DFTSP,
//!   brute force, and the greedy baselines (FCFS, EDF, shortest-job-first, value-greedy).
//! - [`paper`]: the paper's epoch model (FLOPs, memory, FDMA or fixed links, quantization), on which
//!   the seed's worked examples D1-D3 are unit tests.
//! - [`step`], [`cost`], [`scheduler`]: the node form (seed §6). A [`Step`] per pending session
//!   step, a [`CostModel`] for a pass's time ([`FlopCost`] or the fitted [`LinearCost`]), and the
//!   [`PassScheduler`]: FCFS under a token budget by default, DFTSP as soon as a step carries a
//!   deadline; plus the admission check for a session that opens with a latency target.
//! - [`sim`]: a seeded simulation comparing DFTSP with brute force and the baselines
//!   (`cargo run -p sunswarm-batching --example dftsp_sim` prints it).
//!
//! # Where this departs from the seed
//!
//! - The node's cost and memory are per step (continuous batching pads nothing), where the paper
//!   model pads every prompt to the longest and runs every request to the longest output.
//! - Under DFTSP the token budget still caps a pass of two or more steps, so a deadline-free pass
//!   cannot grow without bound; a lone step may exceed it, as under FCFS, so nothing starves.
//! - A session's later steps wait behind its oldest (they need its KV cache), and a step whose
//!   precision floor is above the node's weights is reported, not silently dropped.

/// Slack on every deadline comparison, as in the seed's reference code, so a latency computed
/// equal to its deadline does not flip on the last bit.
pub const DEADLINE_EPSILON: f64 = 1e-12;

pub mod cost;
pub mod error;
pub mod paper;
pub mod scheduler;
pub mod search;
pub mod sim;
pub mod step;

pub use cost::{CostModel, FlopCost, LinearCost};
pub use error::{BatchError, Result};
pub use scheduler::{
    Admission, LatencyTarget, PassPlan, PassScheduler, Policy, Refusal, SchedulerConfig,
};
pub use search::{
    Baseline, Candidate, SearchConfig, SearchStats, Selection, TraceAction, TraceEvent,
    brute_force, dftsp, dftsp_traced, greedy,
};
pub use sim::{Method, MethodSummary, SimConfig, SimReport, SizeRow, simulate};
pub use step::{PrefillChunks, Step, kv_bytes, prefill_chunks};
