//! Block placement over heterogeneous peers by dynamic programming (seed 003, EdgeShard), for
//! latency and for pipeline throughput, energy-aware. Pure logic: no I/O, no panics on any
//! input, typed errors ([`PlanError`]) that name what was wrong.
//!
//! A Sunswarm model is a chain of `B` identical transformer blocks; the client holds the
//! embedding and LM head, so it is the source and the sink of every route. Each volunteer peer
//! hosts one contiguous range of blocks within its memory, runs a block in `ms_per_block`, and
//! is `up`/`down` ms away from the client and `lp[a][b]` ms from other peers. Placing ranges on
//! peers is EdgeShard's joint device selection and partition problem in Sunswarm's form.
//!
//! - [`segment`]: the exact one-range-per-peer planner of seed 003 section 7, objectives latency
//!   (`sum`) and throughput (`max`, then the exact two-phase tie-break on latency), exact for up
//!   to [`EXACT_PEER_LIMIT`] peers.
//! - [`swarm`]: peers with ids, links and energy; [`plan`] excludes peers in power saving, adds
//!   the optional energy floor, keeps the best 16 peers when there are more, and reports.
//! - [`file`](mod@file): the JSON peers file and [`plan_from_json`] (`swarm-testnet plan --peers FILE`).
//! - [`auto`]: `swarm-node --blocks auto`: the range that raises the swarm's throughput most
//!   given everyone else stays, hysteresis against flapping, and the re-plan trigger.
//! - [`paper`]: the paper's Algorithm 1 (latency DP with memory carried per cell, not exact when
//!   memory binds) and Algorithm 2 (bitmask throughput DP), with brute force: worked examples
//!   E1 and E3 are its tests.
//! - [`reference`](mod@reference): the seed's segment DP literally and brute force, the cross-checks of
//!   [`segment`].
//!
//! Times are milliseconds for one token (decode), rates tokens per second. `README.md` beside
//! this crate lists where the choices differ from the seed.

pub mod auto;
pub mod error;
pub mod file;
pub mod paper;
pub mod reference;
pub mod segment;
pub mod swarm;

pub use auto::{
    Coverage, Decision, HostedRange, Hysteresis, OwnPeer, RangeScore, ReplanReason, Speed,
    best_range, decide, replan_reason, score_range, should_move,
};
pub use error::{MAX_TIME_MS, PlanError, Result};
pub use file::{PeersFile, plan_from_json};
pub use segment::{Instance, Objective, PeerCost, Solution, Stage, solve};
pub use swarm::{
    Excluded, Link, MissingLink, Peer, PlanOptions, PlanReport, StageReport, Swarm, plan,
};

/// The most peers the exact planner takes (its DP is exponential in the number of peers).
pub const EXACT_PEER_LIMIT: usize = 16;

/// The most blocks a model may have (the same limit as the wire protocol's block ranges).
pub const MAX_BLOCKS: u32 = 4096;

/// The most peers [`plan`] accepts before pruning to [`EXACT_PEER_LIMIT`] (the pruning compares
/// every pair of peers over every link, `O(N^3)`).
pub const MAX_PEERS: usize = 256;

/// Tolerance of time comparisons, ms: the seed's `m* + 1e-9` of the throughput tie-break.
pub const TIME_EPS_MS: f64 = 1e-9;
