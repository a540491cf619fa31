//! Points where a node's behaviour can be changed from outside the crate. An honest node
//! ([`Honest`]) changes nothing; the testnet's hostile peers (`swarm-testnet byzantine-node`)
//! use them to misbehave the way a stranger in an open swarm could, so that the defences are
//! tested against real processes. Nothing here is reachable from `swarm-node`'s flags.

use libp2p::PeerId;
use sunswarm_net::Network;
use sunswarm_protocol::{Announcement, BlockRange, ModelDigest, OpenSession, WireError};

/// Changes to a node's behaviour; every method's default is what an honest node does.
pub trait Hooks: Send + Sync + 'static {
    /// The node is announced and serving (a hostile peer starts its own tasks here).
    fn started(&self, _net: &Network, _blocks: BlockRange, _model: &ModelDigest) {}
    /// The node's announcement, before it is signed and published.
    fn announce(&self, _ann: &mut Announcement) {}
    /// The open this node passes on to its next hop (the route after this hop included).
    fn open_next(&self, _open: &mut OpenSession) {}
    /// A step's output rows, before they are framed, receipted and passed on.
    fn output(&self, _open: &OpenSession, _step: u32, _rows: &mut [f32]) {}
    /// The token the last hop picked for step `step`, before it goes to the client.
    fn token(&self, _open: &OpenSession, _step: u32, _token: &mut Option<u32>) {}
    /// Instead of passing step `step` on: this error goes up the route and the session ends.
    fn fail_step(
        &self,
        _open: &OpenSession,
        _step: u32,
        _next: Option<PeerId>,
    ) -> Option<WireError> {
        None
    }
}

/// What every `swarm-node` does: nothing different.
#[derive(Debug, Clone, Copy, Default)]
pub struct Honest;

impl Hooks for Honest {}
