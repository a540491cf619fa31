//! Real multi-process swarms on 127.0.0.1: find the `swarm-node`/`swarm-client` binaries, start
//! nodes with a block split, wait until the swarm announces every range, and stop every process
//! it started when dropped (pass or fail). `swarm-testnet up` and `demo` and the integration
//! tests all go through [`Testnet`].

pub mod churn;
pub mod cli;
pub mod launch;
pub mod link;
pub mod process;
pub mod scale;

pub use launch::{Byzantine, NodeInfo, Slowdown, Split, Testnet, TestnetOptions, apply_slowdowns};
pub use link::{LinkEmulator, LinkProfile};
pub use process::{Managed, find_binary};
