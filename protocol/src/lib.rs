//! Sunswarm's wire protocol: versioned messages, tensor frames, the codec with hard limits, and
//! the DHT keys that peers announce under. No I/O runtime, no burn: every other crate depends on
//! this one, so it stays small and changes rarely.
//!
//! - [`limits`]: the hard cap on every length a peer can send us.
//! - [`blocks`]: block ranges and the `--blocks` syntax (`0-33`, `0:34`, `all`).
//! - [`tensor`]: tensor frames (shape, dtype, little-endian bytes, blake3 checksum).
//! - [`announce`]: the announcement record a node puts in the DHT and gossips.
//! - [`message`]: the session messages that travel on activation streams.
//! - [`codec`]: versioned postcard encoding and length-prefixed framing, limit-checked.
//! - [`dht`]: DHT keys and gossip topics (blake3 of the model id and block index).
//! - [`view`]: the announcement exchange a new client plans its first route from.
//! - `io` (feature `io`): async read/write of frames over any `futures` byte stream.

pub mod announce;
pub mod blocks;
pub mod codec;
pub mod dht;
#[cfg(feature = "io")]
pub mod io;
pub mod limits;
pub mod message;
pub mod tensor;
pub mod view;

pub use announce::{Announcement, EnergyState, PowerSetting, SignedAnnouncement};
pub use blocks::{BlockRange, BlockSpec, BlocksError};
pub use codec::{CodecError, decode, encode};
pub use message::{
    ErrorKind, Forward, Hop, HopTiming, OpenSession, Receipt, Request, Response, SessionId,
    TokenDraw, WireError, route_digest,
};
pub use tensor::{DType, TensorError, TensorFrame};

/// Version of every message and record on the wire. A peer that receives another version answers
/// with [`ErrorKind::VersionMismatch`] instead of guessing at the layout.
pub const PROTOCOL_VERSION: u16 = 9;

/// libp2p stream protocol for inference sessions (open, forward hidden states, close).
pub const ACTIVATIONS_PROTOCOL: &str = "/sunswarm/activations/9";

/// libp2p stream protocol for the announcement exchange ([`view`]).
pub const VIEW_PROTOCOL: &str = "/sunswarm/view/1";

/// A model id: blake3 of the model's config and weight manifest (computed by `sunswarm-models`).
pub type ModelDigest = [u8; 32];

/// Lower-case hex of any byte string (model ids, session ids, keys) for logs and displays.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
