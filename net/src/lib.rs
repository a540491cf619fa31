//! The network host that Sunswarm nodes and clients share.
//!
//! - [`announce`]: signing and checking announcements and the DHT records that carry them.
//! - [`discovery`]: every live announcement of a model, from the DHT and gossip.
//! - [`gossip`]: the bounded table of gossiped announcements.
//! - [`host`]: the libp2p host (a cloneable [`Network`] handle and the [`EventLoop`] that owns
//!   the swarm): transports, private-swarm keys, Kademlia records and providers, gossip.
//! - [`reach`]: whether peers can dial this host (AutoNAT), relays for those that cannot
//!   (circuit relay v2, found in the DHT), hole punching (DCUtR).
//! - [`stream`]: the activation protocol's streams and how a peer opens one.
//! - [`runtime`]: the binaries' runtime, whose one thread is also a compute worker.
//! - [`now_ms`]: the wall clock that announcements and their expiry are stamped with.

pub mod announce;
pub mod discovery;
pub mod gossip;
pub mod host;
pub mod reach;
pub mod runtime;
pub mod stream;
pub mod view;

pub use host::{EventLoop, HostStats, Limits, NetConfig, NetError, Network, new, read_swarm_key};
pub use reach::{Nat, Reachability};

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
