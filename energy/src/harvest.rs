//! Harvest distributions: how many energy units a device receives per slot.
//!
//! The paper draws each slot's harvest i.i.d. and discrete-uniform on `{min..=max}`. For real solar
//! data a [`HarvestTrace`] gives both an empirical per-slot law (for the chain, which assumes i.i.d.
//! slots) and a replayable sequence (for emulation, which keeps the trace's day/night correlation).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{EnergyError, Result, non_negative};

/// A probability mass function on the integers `offset..offset + probs.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pmf {
    offset: i64,
    probs: Vec<f64>,
}

impl Pmf {
    /// The pmf that puts all its mass on `value`.
    pub fn point(value: i64) -> Self {
        Self {
            offset: value,
            probs: vec![1.0],
        }
    }

    /// Smallest value in the support (with possibly zero mass at the ends of traces).
    pub fn min(&self) -> i64 {
        self.offset
    }

    /// Largest value in the support.
    pub fn max(&self) -> i64 {
        self.offset + self.probs.len() as i64 - 1
    }

    /// `(value, probability)` pairs with non-zero probability.
    pub fn iter(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.probs
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 0.0)
            .map(move |(i, p)| (self.offset + i as i64, *p))
    }

    /// Probability of exactly `value`.
    pub fn prob(&self, value: i64) -> f64 {
        let i = value - self.offset;
        if i < 0 {
            0.0
        } else {
            self.probs.get(i as usize).copied().unwrap_or(0.0)
        }
    }

    /// Mean of the law.
    pub fn mean(&self) -> f64 {
        self.iter().map(|(v, p)| v as f64 * p).sum()
    }

    /// Law of the sum of two independent variables.
    pub fn convolve(&self, other: &Pmf) -> Pmf {
        let mut probs = vec![0.0; self.probs.len() + other.probs.len() - 1];
        for (i, a) in self.probs.iter().enumerate() {
            if *a == 0.0 {
                continue;
            }
            for (j, b) in other.probs.iter().enumerate() {
                probs[i + j] += a * b;
            }
        }
        Pmf {
            offset: self.offset + other.offset,
            probs,
        }
    }

    /// `f^(n)`: law of the total over `n` independent slots (`n = 0` is the point mass at 0).
    pub fn convolve_power(&self, n: u32) -> Pmf {
        (0..n).fold(Pmf::point(0), |acc, _| acc.convolve(self))
    }
}

/// A recorded per-slot harvest sequence (e.g. from a solar panel log), in energy units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarvestTrace {
    samples: Vec<i64>,
}

impl HarvestTrace {
    /// Validates that the trace is non-empty and every sample is a non-negative energy.
    pub fn new(samples: Vec<i64>) -> Result<Self> {
        if samples.is_empty() {
            return Err(EnergyError::EmptyTrace);
        }
        for &s in &samples {
            non_negative("harvest trace sample", s)?;
        }
        Ok(Self { samples })
    }

    /// The samples in slot order.
    pub fn samples(&self) -> &[i64] {
        &self.samples
    }
}

/// The per-slot harvest law of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Harvest {
    /// Discrete uniform on `{min..=max}` units per slot (paper).
    Uniform { min: i64, max: i64 },
    /// Empirical law of a trace for the chain; replayed in order by [`HarvestSource`].
    Trace(HarvestTrace),
}

impl Harvest {
    /// Discrete uniform harvest, validated.
    pub fn uniform(min: i64, max: i64) -> Result<Self> {
        let h = Harvest::Uniform { min, max };
        h.validate()?;
        Ok(h)
    }

    /// The paper's network sizing (spec sec. 7): bounds `round(0.5 mu)` and `round(1.5 mu)`,
    /// halves rounded to even, clamped so that `0 <= min <= max`.
    pub fn around_mean(mu: f64) -> Result<Self> {
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(EnergyError::Invalid {
                param: "mean harvest",
                reason: format!("must be a finite non-negative number (got {mu})"),
            });
        }
        let min = (0.5 * mu).round_ties_even().max(0.0) as i64;
        let max = ((1.5 * mu).round_ties_even() as i64).max(min);
        Harvest::uniform(min, max)
    }

    /// Checks signs and order of the bounds, or the trace's samples.
    pub fn validate(&self) -> Result<()> {
        match self {
            Harvest::Uniform { min, max } => {
                non_negative("harvest min", *min)?;
                non_negative("harvest max", *max)?;
                if min > max {
                    return Err(EnergyError::OutOfOrder {
                        low_param: "harvest min",
                        low: *min,
                        high_param: "harvest max",
                        high: *max,
                    });
                }
                Ok(())
            }
            Harvest::Trace(t) => HarvestTrace::new(t.samples.clone()).map(|_| ()),
        }
    }

    /// The per-slot pmf `f` used by the chain.
    pub fn pmf(&self) -> Pmf {
        match self {
            Harvest::Uniform { min, max } => {
                let n = (max - min + 1) as usize;
                Pmf {
                    offset: *min,
                    probs: vec![1.0 / n as f64; n],
                }
            }
            Harvest::Trace(t) => {
                let lo = *t.samples.iter().min().unwrap_or(&0);
                let hi = *t.samples.iter().max().unwrap_or(&0);
                let mut probs = vec![0.0; (hi - lo + 1) as usize];
                let w = 1.0 / t.samples.len() as f64;
                for &s in &t.samples {
                    probs[(s - lo) as usize] += w;
                }
                Pmf { offset: lo, probs }
            }
        }
    }

    /// Mean harvest per slot.
    pub fn mean(&self) -> f64 {
        self.pmf().mean()
    }
}

/// A stateful per-slot harvest generator for simulations and emulated batteries.
#[derive(Debug, Clone)]
pub struct HarvestSource {
    harvest: Harvest,
    /// Position in the trace; unused for i.i.d. laws.
    cursor: usize,
}

impl HarvestSource {
    /// Starts a source; a trace starts at `start` (modulo its length) so runs can decorrelate.
    pub fn new(harvest: Harvest, start: usize) -> Self {
        let cursor = match &harvest {
            Harvest::Trace(t) => start % t.samples.len(),
            Harvest::Uniform { .. } => 0,
        };
        Self { harvest, cursor }
    }

    /// The harvest of the next slot.
    pub fn next_slot<R: Rng + ?Sized>(&mut self, rng: &mut R) -> i64 {
        match &self.harvest {
            Harvest::Uniform { min, max } => rng.random_range(*min..=*max),
            Harvest::Trace(t) => {
                let v = t.samples[self.cursor];
                self.cursor = (self.cursor + 1) % t.samples.len();
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_pmf_and_convolution() {
        let f = Harvest::uniform(6, 14).unwrap().pmf();
        assert_eq!((f.min(), f.max()), (6, 14));
        assert!((f.mean() - 10.0).abs() < 1e-12);
        let f3 = f.convolve_power(3);
        assert_eq!((f3.min(), f3.max()), (18, 42));
        assert!((f3.iter().map(|(_, p)| p).sum::<f64>() - 1.0).abs() < 1e-12);
        // The middle of three U{6..14} is the most likely total: 25 of 729 ways... check by count.
        assert!((f3.prob(30) - 61.0 / 729.0).abs() < 1e-12);
        assert_eq!(f.convolve_power(0), Pmf::point(0));
    }

    #[test]
    fn around_mean_rounds_halves_to_even() {
        // mu = 1: 0.5 -> 0, 1.5 -> 2.
        assert_eq!(
            Harvest::around_mean(1.0).unwrap(),
            Harvest::Uniform { min: 0, max: 2 }
        );
        // mu = 5: 2.5 -> 2, 7.5 -> 8.
        assert_eq!(
            Harvest::around_mean(5.0).unwrap(),
            Harvest::Uniform { min: 2, max: 8 }
        );
        assert!(Harvest::around_mean(-1.0).is_err());
    }

    #[test]
    fn validation_names_the_parameter() {
        let e = Harvest::uniform(-1, 3).unwrap_err();
        assert!(e.to_string().contains("harvest min"), "{e}");
        let e = Harvest::uniform(5, 3).unwrap_err();
        assert!(matches!(e, EnergyError::OutOfOrder { .. }), "{e}");
        assert_eq!(
            HarvestTrace::new(vec![]).unwrap_err(),
            EnergyError::EmptyTrace
        );
        assert!(
            HarvestTrace::new(vec![1, -2])
                .unwrap_err()
                .to_string()
                .contains("trace")
        );
    }

    #[test]
    fn trace_pmf_is_empirical_and_replay_cycles() {
        let t = HarvestTrace::new(vec![0, 0, 4, 2]).unwrap();
        let h = Harvest::Trace(t);
        let f = h.pmf();
        assert_eq!(f.prob(0), 0.5);
        assert_eq!(f.prob(1), 0.0);
        assert_eq!(f.prob(4), 0.25);
        let mut src = HarvestSource::new(h, 2);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let got: Vec<i64> = (0..5).map(|_| src.next_slot(&mut rng)).collect();
        assert_eq!(got, vec![4, 2, 0, 0, 4]);
    }
}
