//! Typed errors of the energy model. Every variant names the offending parameter, so a bad flag or
//! a bad gossiped record is reported as what it is rather than as a numeric failure later on.

use thiserror::Error;

/// Why a parameter set, a chain or a root search was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum EnergyError {
    /// An energy amount (harvest, cost, threshold, level) below zero.
    #[error("{param} must not be negative (got {value})")]
    NegativeEnergy { param: &'static str, value: i64 },
    /// Battery capacity of zero units: no state space to model.
    #[error("{param} must be at least 1 energy unit (got {value})")]
    ZeroCapacity { param: &'static str, value: i64 },
    /// An energy level above the battery capacity.
    #[error("{param} = {value} exceeds the battery capacity {capacity}")]
    AboveCapacity {
        param: &'static str,
        value: i64,
        capacity: i64,
    },
    /// Two thresholds that must be ordered are not (e.g. e_L > e_H, harvest min > max).
    #[error("thresholds out of order: {low_param} = {low} must not exceed {high_param} = {high}")]
    OutOfOrder {
        low_param: &'static str,
        low: i64,
        high_param: &'static str,
        high: i64,
    },
    /// A probability (arrival rate, risk threshold) outside [0, 1] or not a number.
    #[error("{param} must be a probability in [0, 1] (got {value})")]
    Probability { param: &'static str, value: f64 },
    /// A mode table with no modes, or whose bounds do not match its modes.
    #[error("mode table: {reason}")]
    ModeTable { reason: String },
    /// A power mode that takes zero slots per job.
    #[error("{param} must take at least one slot per job (got {value})")]
    ZeroSlots { param: &'static str, value: u32 },
    /// A harvest trace with no samples.
    #[error("harvest trace is empty")]
    EmptyTrace,
    /// Any other parameter outside its domain.
    #[error("{param}: {reason}")]
    Invalid { param: &'static str, reason: String },
    /// The chain has several closed classes (e.g. no harvest at all), so its stationary law is not unique.
    #[error(
        "the chain has {classes} closed classes, so its stationary distribution is not unique (does the device harvest anything?)"
    )]
    NotErgodic { classes: usize },
    /// The root search was handed a bracket whose ends have the same sign.
    #[error("root not bracketed: f({a}) = {fa} and f({b}) = {fb} have the same sign")]
    NotBracketed { a: f64, b: f64, fa: f64, fb: f64 },
}

/// Result alias for the energy crate.
pub type Result<T> = std::result::Result<T, EnergyError>;

/// Rejects negative energies; used by every constructor that takes user input.
pub(crate) fn non_negative(param: &'static str, value: i64) -> Result<()> {
    if value < 0 {
        return Err(EnergyError::NegativeEnergy { param, value });
    }
    Ok(())
}

/// Rejects probabilities outside [0, 1] and NaN.
pub(crate) fn probability(param: &'static str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(EnergyError::Probability { param, value });
    }
    Ok(())
}
