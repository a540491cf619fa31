//! `swarm-node`: a Sunswarm peer. It loads a contiguous range of transformer blocks, announces the
//! range and its energy state in the swarm, and serves inference sessions along client-chosen routes.
//!
//! - [`auto`]: `--blocks auto`, a node that chooses its own range and moves when the swarm
//!   changes (the planner's Petals-style rule).
//! - [`session`]: serving one session per activation stream, forwarding to the next hop.
//! - [`compute`]: the block runner interface (real model or a test runner).
//! - [`batch`]: the executor that runs the pending steps of all sessions together, a pass at a
//!   time (continuous batching).
//! - [`energy`]: the node's energy state and admission (mains today; policies fill it later).
//! - [`node`]: starting, announcing, refreshing and leaving.
//! - [`cli`]: the `swarm-node` binary's flags and body, shared with the testnet's hostile nodes.
//! - [`hooks`]: where a node's behaviour can be changed (the testnet's hostile peers).
//!
//! The libp2p host, the stream opener and the runtime live in `sunswarm-net`, shared with the
//! client.

pub mod auto;
pub mod batch;
pub mod cli;
pub mod compute;
pub mod energy;
pub mod hooks;
pub mod node;
pub mod resume;
pub mod session;
