//! Hard limits on every length a peer can put on the wire. Decoders check these before they
//! allocate, so a hostile peer cannot make us reserve more than a frame's worth of memory.

/// Largest encoded message (one frame on a stream, one DHT record, one gossip message).
/// 64 MiB holds a prefill of 4096 tokens at hidden size 4096 in f32 with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Largest number of elements in one tensor frame (16 Mi f32 = 64 MiB).
pub const MAX_TENSOR_ELEMENTS: usize = 16 << 20;

/// Largest tensor rank; hidden states are `[tokens, dim]`.
pub const MAX_TENSOR_DIMS: usize = 4;

/// Most hops in a route (one per block range).
pub const MAX_ROUTE_HOPS: usize = 64;

/// Most blocks in a model, and so the largest block index + 1.
pub const MAX_BLOCKS: u32 = 4096;

/// Most listen addresses a peer may announce or a hop may carry.
pub const MAX_ADDRS: usize = 16;

/// Longest multiaddr text.
pub const MAX_ADDR_LEN: usize = 256;

/// Longest encoded libp2p peer id (identity-multihash of an ed25519 key is 38 bytes).
pub const MAX_PEER_ID_LEN: usize = 64;

/// Longest free-text field (error messages, backend names).
pub const MAX_TEXT_LEN: usize = 1024;

/// Most tokens one session may hold in its KV caches.
pub const MAX_SESSION_TOKENS: u32 = 1 << 16;

/// Longest announcement lifetime a node may claim; longer ones are refused so a dead node cannot
/// linger in routes.
pub const MAX_ANNOUNCE_TTL_MS: u64 = 3_600_000;

/// How far ahead of a receiver's clock an announcement's timestamp may be. Newer announcements
/// replace older ones, so a timestamp from the future would outlive the peer's real updates (and
/// keep a dead or fake entry routable); peers whose clocks differ by more are refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 10_000;

/// Longest signature (an ed25519 signature is 64 bytes; a secp256k1 one at most 72).
pub const MAX_SIGNATURE_LEN: usize = 128;
