//! Typed errors of the batching crate. Each variant names the offending input, so a bad step from
//! the wire or a bad configuration is reported as what it is instead of surfacing later as a NaN
//! pass time or a silently empty batch.

use thiserror::Error;

/// Why a search, a cost model, a scheduler call or a simulation rejected its input.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A number that orders or bounds something (a deadline, a perplexity) was NaN.
    #[error("{what} must not be NaN")]
    NotANumber { what: &'static str },
    /// A time, rate or amount that must be finite and at least zero.
    #[error("{what} must be finite and at least 0 (got {value})")]
    Negative { what: &'static str, value: f64 },
    /// A rate, capacity or target that must be finite and above zero.
    #[error("{what} must be finite and above 0 (got {value})")]
    NotPositive { what: &'static str, value: f64 },
    /// A count that must be at least one (token budget, chunk size, node cap...).
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    /// A pending step with a field outside its domain.
    #[error("step {index}: {field} {reason}")]
    InvalidStep {
        index: usize,
        field: &'static str,
        reason: &'static str,
    },
    /// The values of the items sum past `u64::MAX`, so the search's bounds would wrap.
    #[error("the item values sum past u64::MAX")]
    ValueOverflow,
    /// Brute force enumerates `2^K - 1` subsets; past this many items it would not finish.
    #[error("brute force is limited to {max} items (got {items})")]
    TooManyItems { items: usize, max: usize },
    /// A batch named an item that does not exist.
    #[error("index {index} out of range for {len} items")]
    IndexOutOfRange { index: usize, len: usize },
    /// A least-squares fit with fewer samples than coefficients.
    #[error("the fit needs at least {needed} samples (got {got})")]
    TooFewSamples { needed: usize, got: usize },
    /// Samples that cannot tell the coefficients apart (e.g. every pass had the same size).
    #[error("degenerate fit data: {reason}")]
    DegenerateFit { reason: &'static str },
    /// A cost model returned a pass time that is NaN, infinite or negative where a number is needed.
    #[error("the cost model returned {value} s for a pass")]
    CostNotFinite { value: f64 },
    /// `best_quantization` was handed no quantization.
    #[error("no quantization to choose from")]
    NoQuantization,
    /// A configuration whose fields contradict each other.
    #[error("{what}: {reason}")]
    InvalidConfig {
        what: &'static str,
        reason: &'static str,
    },
}

/// Result alias for the batching crate.
pub type Result<T> = std::result::Result<T, BatchError>;

/// Rejects NaN, infinities and negatives: times, byte rates and the like.
pub(crate) fn non_negative(what: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(BatchError::Negative { what, value })
    }
}

/// Rejects NaN, infinities, zero and negatives: rates and capacities something is divided by.
pub(crate) fn positive(what: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(BatchError::NotPositive { what, value })
    }
}

/// Rejects NaN only: deadlines and accuracy bounds may be infinite ("none").
pub(crate) fn not_nan(what: &'static str, value: f64) -> Result<()> {
    if value.is_nan() {
        Err(BatchError::NotANumber { what })
    } else {
        Ok(())
    }
}
