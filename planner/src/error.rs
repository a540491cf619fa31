//! Typed errors of the planner. Every variant names what was wrong (the field, the peer, the
//! limit), so that a bad peers file or a bad announcement is reported as what it is instead of
//! surfacing later as a NaN latency or an empty plan.

use thiserror::Error;

/// Why an input was refused or no plan exists.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The peers file is not JSON of the planner's format (the message is serde's, with line and
    /// column).
    #[error("peers file: {0}")]
    Json(String),
    /// A model of zero blocks: there is nothing to place.
    #[error("the model has zero blocks")]
    ZeroBlocks,
    /// More blocks than [`crate::MAX_BLOCKS`].
    #[error("the model has {blocks} blocks, more than the planner's limit of {limit}")]
    TooManyBlocks { blocks: u64, limit: u32 },
    /// A number outside its domain: NaN, infinite, negative, zero where it must be positive, a
    /// rate above 1.
    #[error("{what} must be {expected} (got {value})")]
    BadNumber {
        what: String,
        value: f64,
        expected: &'static str,
    },
    /// An empty peer list.
    #[error("no peers given")]
    NoPeers,
    /// A peer id that is empty.
    #[error("peer #{index} has an empty id")]
    EmptyPeerId { index: usize },
    /// Two peers with the same id.
    #[error("peer id {id:?} appears more than once")]
    DuplicatePeer { id: String },
    /// A link table (or another cross-reference) names a peer that is not in the peer list.
    #[error("{context} names unknown peer {id:?}")]
    UnknownPeer { id: String, context: String },
    /// A link from a peer to itself (a peer never hops to itself: one range per peer).
    #[error("link from peer {id:?} to itself")]
    SelfLink { id: String },
    /// The same directed link given twice.
    #[error("link {from:?} -> {to:?} is given more than once")]
    DuplicateLink { from: String, to: String },
    /// A field needed to derive a value is missing.
    #[error("peer {id:?}: {what}")]
    Missing { id: String, what: &'static str },
    /// More peers than an exact path accepts (the exact segment DP, the paper's algorithms, the
    /// brute force), or more than the planner accepts at all.
    #[error("{what}: {count} peers, more than the limit of {limit}")]
    TooManyPeers {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// A search space larger than the limit of an exhaustive method.
    #[error("{what}: {size} cases, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u128,
        limit: u128,
    },
    /// A table whose shape does not match the instance (e.g. a link matrix of the wrong size).
    #[error("{what}: expected {expected} entries, got {got}")]
    Shape {
        what: String,
        expected: usize,
        got: usize,
    },
    /// An index outside the instance (a source device, a peer in a stage).
    #[error("{what}: index {index} is outside 0..{len}")]
    Index {
        what: &'static str,
        index: usize,
        len: usize,
    },
    /// A block range that is empty or reaches past the model.
    #[error(
        "{context}: block range {start}..{end} is empty or outside the model's {blocks} blocks"
    )]
    BadRange {
        context: String,
        start: u32,
        end: u32,
        blocks: u32,
    },
    /// A plan given for evaluation that is not a valid one-range-per-peer plan.
    #[error("invalid plan: {reason}")]
    InvalidPlan { reason: String },
    /// No plan places every block (not enough memory, every peer excluded, every link too slow).
    #[error("no plan places all {blocks} blocks: {reason}")]
    Infeasible { blocks: u32, reason: String },
}

/// Result alias for the planner.
pub type Result<T> = std::result::Result<T, PlanError>;

/// Checks that `value` is finite and `>= 0`; the planner's times are all of this kind.
pub(crate) fn non_negative(what: impl FnOnce() -> String, value: f64) -> Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(PlanError::BadNumber {
            what: what(),
            value,
            expected: "a finite number >= 0",
        })
    }
}

/// The largest time the planner accepts, ms (about 31 years). Bounding times keeps every sum
/// and product of the DPs finite (4096 blocks x 16 peers), so no comparison meets an infinity.
pub const MAX_TIME_MS: f64 = 1e12;

/// Checks that a time is finite, `>= 0` and at most [`MAX_TIME_MS`].
pub(crate) fn time_ms(what: impl FnOnce() -> String, value: f64) -> Result<f64> {
    if value.is_finite() && (0.0..=MAX_TIME_MS).contains(&value) {
        Ok(value)
    } else {
        Err(PlanError::BadNumber {
            what: what(),
            value,
            expected: "a time in ms, finite, >= 0 and <= 1e12",
        })
    }
}

/// Checks that `value` is finite and `> 0` (per-block times, bandwidths, rates).
pub(crate) fn positive(what: impl FnOnce() -> String, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(PlanError::BadNumber {
            what: what(),
            value,
            expected: "a finite number > 0",
        })
    }
}

/// Checks that `value` is a probability-like rate in `[0, 1]` (a max job rate).
pub(crate) fn unit_rate(what: impl FnOnce() -> String, value: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(PlanError::BadNumber {
            what: what(),
            value,
            expected: "a rate in [0, 1]",
        })
    }
}
