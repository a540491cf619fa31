//! Pass scheduling for continuous batching on a node (placeholder; see seed 002).
