//! A pending step of one session on this node, and how a prompt is cut into prefill chunks.
//!
//! A session's work on a node is a sequence of steps: its prompt in chunks of at most a fixed
//! number of tokens, then one decode token at a time. Chunking bounds how long one session's
//! prefill can hold a pass, so the decode steps of other sessions keep flowing beside it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{BatchError, Result};

/// One session's pending step: what the scheduler needs to know to batch it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The session it belongs to. Only a session's oldest pending step can run in a pass: a later
    /// one needs the KV cache the earlier one writes.
    pub session: u64,
    /// Arrival sequence number on this node; lower is older.
    pub seq: u64,
    /// Tokens this step adds: 1 for a decode, up to the chunk size for a prefill chunk. Also its
    /// value to the scheduler (tokens advanced).
    pub new_tokens: u32,
    /// Tokens of this session already in the node's KV cache (what the new tokens attend to).
    pub context: u32,
    /// Seconds from now by which this node's pass must be done, communication included: the
    /// client's per-token deadline less the time spent upstream and the estimated time downstream
    /// (seed §6). `None`: no latency target.
    pub deadline_s: Option<f64>,
    /// Time this hop spends receiving the input and sending the output (the seed's fixed
    /// communication model), counted against the deadline.
    pub comm_s: f64,
    /// The lowest weight precision the session accepts, in bits per weight ("q8 or better" = 8).
    pub min_weight_bits: Option<u8>,
    /// KV-cache bytes the step writes on this node (see [`kv_bytes`]).
    pub kv_bytes: u64,
}

impl Step {
    /// A decode step: one new token over `context` cached ones.
    pub fn decode(session: u64, seq: u64, context: u32) -> Self {
        Self::prefill_chunk(session, seq, 1, context)
    }

    /// A prefill chunk of `tokens` prompt tokens after `context` cached ones.
    pub fn prefill_chunk(session: u64, seq: u64, tokens: u32, context: u32) -> Self {
        Self {
            session,
            seq,
            new_tokens: tokens,
            context,
            deadline_s: None,
            comm_s: 0.0,
            min_weight_bits: None,
            kv_bytes: 0,
        }
    }

    /// Sets the deadline (seconds from now).
    pub fn with_deadline(mut self, deadline_s: f64) -> Self {
        self.deadline_s = Some(deadline_s);
        self
    }

    /// Sets the communication time of the hop.
    pub fn with_comm(mut self, comm_s: f64) -> Self {
        self.comm_s = comm_s;
        self
    }

    /// Sets the precision floor.
    pub fn with_min_weight_bits(mut self, bits: u8) -> Self {
        self.min_weight_bits = Some(bits);
        self
    }

    /// Sets the KV bytes the step writes.
    pub fn with_kv_bytes(mut self, bytes: u64) -> Self {
        self.kv_bytes = bytes;
        self
    }

    /// A step at position `index` of its list is usable: it adds at least one token, its deadline
    /// is a number (a negative one is merely already missed), its comm time finite and >= 0.
    pub(crate) fn validate(&self, index: usize) -> Result<()> {
        let bad = |field, reason| BatchError::InvalidStep {
            index,
            field,
            reason,
        };
        if self.new_tokens == 0 {
            return Err(bad("new_tokens", "must be at least 1"));
        }
        if self.deadline_s.is_some_and(f64::is_nan) {
            return Err(bad("deadline_s", "must not be NaN"));
        }
        if !(self.comm_s.is_finite() && self.comm_s >= 0.0) {
            return Err(bad("comm_s", "must be finite and at least 0"));
        }
        Ok(())
    }
}

/// KV bytes that `tokens` new tokens write on a node hosting `blocks` blocks: a key and a value of
/// `kv_width` numbers (`n_kv_heads * head_dim`; the hidden size without grouped-query attention)
/// of `bytes_per_value` bytes each, per block. Saturates rather than wraps.
pub fn kv_bytes(blocks: u32, kv_width: u32, bytes_per_value: u32, tokens: u32) -> u64 {
    [blocks, kv_width, bytes_per_value, tokens]
        .iter()
        .fold(2u64, |acc, &f| acc.saturating_mul(u64::from(f)))
}

/// The token ranges of a prefill of `tokens` prompt tokens cut into chunks of at most `chunk`.
/// The `context` of the chunk `start..end` is `start` (plus whatever was cached before).
pub fn prefill_chunks(tokens: u32, chunk: u32) -> Result<PrefillChunks> {
    if chunk == 0 {
        return Err(BatchError::Zero {
            what: "prefill chunk size",
        });
    }
    Ok(PrefillChunks {
        next: 0,
        end: tokens,
        chunk,
    })
}

/// Iterator over prefill chunks (see [`prefill_chunks`]); lazy, so a huge prompt with a chunk of
/// one token allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillChunks {
    next: u32,
    end: u32,
    chunk: u32,
}

impl Iterator for PrefillChunks {
    type Item = Range<u32>;

    fn next(&mut self) -> Option<Range<u32>> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        let end = start.saturating_add(self.chunk).min(self.end);
        self.next = end;
        Some(start..end)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next.min(self.end)).div_ceil(self.chunk);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for PrefillChunks {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_prompt_in_order() {
        let chunks: Vec<_> = prefill_chunks(600, 256).unwrap().collect();
        assert_eq!(chunks, vec![0..256, 256..512, 512..600]);
        assert_eq!(prefill_chunks(600, 256).unwrap().len(), 3);
        assert_eq!(
            prefill_chunks(512, 256).unwrap().collect::<Vec<_>>(),
            vec![0..256, 256..512]
        );
        assert_eq!(
            prefill_chunks(5, 256).unwrap().collect::<Vec<_>>(),
            vec![0..5]
        );
        assert_eq!(prefill_chunks(0, 256).unwrap().len(), 0);
        assert_eq!(prefill_chunks(0, 256).unwrap().next(), None);
    }

    #[test]
    fn chunks_near_u32_max_do_not_wrap() {
        let mut it = prefill_chunks(u32::MAX, u32::MAX - 1).unwrap();
        assert_eq!(it.len(), 2);
        assert_eq!(it.next(), Some(0..u32::MAX - 1));
        assert_eq!(it.next(), Some(u32::MAX - 1..u32::MAX));
        assert_eq!(it.next(), None);
        assert_eq!(
            prefill_chunks(u32::MAX, 1).unwrap().len(),
            u32::MAX as usize
        );
    }

    #[test]
    fn zero_chunk_is_an_error() {
        assert_eq!(
            prefill_chunks(10, 0),
            Err(BatchError::Zero {
                what: "prefill chunk size"
            })
        );
    }

    #[test]
    fn kv_bytes_per_hosted_blocks() {
        // 16 blocks of a 4096-wide fp16 model, 128 tokens: 2 * 16 * 4096 * 2 * 128.
        assert_eq!(kv_bytes(16, 4096, 2, 128), 33_554_432);
        assert_eq!(kv_bytes(u32::MAX, u32::MAX, u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn step_validation() {
        assert!(Step::decode(1, 1, 10).validate(0).is_ok());
        assert_eq!(
            Step::prefill_chunk(1, 1, 0, 0).validate(3),
            Err(BatchError::InvalidStep {
                index: 3,
                field: "new_tokens",
                reason: "must be at least 1"
            })
        );
        let nan = Step::decode(1, 1, 0).with_deadline(f64::NAN);
        assert!(matches!(
            nan.validate(0),
            Err(BatchError::InvalidStep {
                field: "deadline_s",
                ..
            })
        ));
        let neg = Step::decode(1, 1, 0).with_comm(-0.1);
        assert!(matches!(
            neg.validate(0),
            Err(BatchError::InvalidStep {
                field: "comm_s",
                ..
            })
        ));
        // Already late is valid input: the scheduler reports it as missed.
        assert!(
            Step::decode(1, 1, 0)
                .with_deadline(-1.0)
                .validate(0)
                .is_ok()
        );
    }
}
