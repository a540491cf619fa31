//! `swarm-node`: a Sunswarm peer. It loads a contiguous range of transformer blocks, announces the
//! range and its energy state in the swarm, and serves inference sessions along client-chosen routes.
//!
//! - [`net`]: the libp2p host (Client handle + EventLoop), shared with `swarm-client`.
//! - [`session`]: serving one session per activation stream, forwarding to the next hop.
//! - [`compute`]: the block runner interface (real model or a test runner).
//! - [`energy`]: the node's energy state and admission (mains today; policies fill it later).
//! - [`node`]: starting, announcing, refreshing and leaving.
//! - [`runtime`]: the binaries' runtime, whose thread is also a compute worker.

pub mod compute;
pub mod energy;
pub mod net;
pub mod node;
pub mod runtime;
pub mod session;
