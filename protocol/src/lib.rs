//! Sunswarm's wire protocol: versioned messages, tensor frames, the codec with hard limits, and
//! the DHT keys that peers announce under. No I/O, no tokio, no burn: every other crate depends on
//! this one, so it stays small and changes rarely.
