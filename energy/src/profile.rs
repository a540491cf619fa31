//! What a peer works out once, offline, from its own chain and then gossips with its live state:
//! its eq. 5 maximum input rate and a table, per battery level, of the chance that taking a job
//! now leads it into power saving within a few stages (the chain's transient law). The table
//! lets a client judge the instantaneous battery without knowing the peer's harvest or modes.

use serde::{Deserialize, Serialize};

use crate::chain::Chain;
use crate::device::DeviceParams;
use crate::emulated::EmulatedBattery;
use crate::error::{EnergyError, Result};
use crate::maxrate::{CrossingRule, MaxRate, max_input_rate_with};
use crate::policy::PeerEnergyState;

/// Default look-ahead of the saving-risk table, in stages.
pub const DEFAULT_HORIZON: u32 = 3;

/// A peer's offline energy profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// eq. 5 for this peer.
    pub max_rate: MaxRate,
    /// `saving_risk[e]`: P(power saving within `horizon` stages | a job starts now at level e).
    pub saving_risk: Vec<f64>,
    /// Stages looked ahead.
    pub horizon: u32,
}

impl DeviceProfile {
    /// Computes the profile at risk tolerance `delta` (threshold e_L) and look-ahead `horizon`.
    pub fn compute(dev: &DeviceParams, delta: f64, horizon: u32) -> Result<Self> {
        Self::compute_with(dev, delta, horizon, CrossingRule::Endpoint)
    }

    /// As [`DeviceProfile::compute`], with an explicit lambda* search rule.
    pub fn compute_with(
        dev: &DeviceParams,
        delta: f64,
        horizon: u32,
        rule: CrossingRule,
    ) -> Result<Self> {
        validate_horizon(horizon)?;
        let max_rate = max_input_rate_with(dev, delta, dev.e_low, rule)?;
        // The peer expects to run near its own maximum rate.
        let chain = Chain::build(dev, max_rate.lam_max)?;
        let saving_risk = saving_risk_table(&chain, horizon);
        Ok(Self {
            max_rate,
            saving_risk,
            horizon,
        })
    }

    /// The record a peer announces, from its emulated battery's current state.
    pub fn state(&self, battery: &EmulatedBattery) -> PeerEnergyState {
        let e = battery.level();
        PeerEnergyState {
            battery: e,
            capacity: battery.params().capacity,
            power_saving: battery.power_saving(),
            available: battery.available(),
            lambda_max: self.max_rate.lam_max,
            mode: battery.mode_index().min(u8::MAX as usize) as u8,
            critical: battery.critical(),
            saving_risk: self
                .saving_risk
                .get(e.max(0) as usize)
                .copied()
                .unwrap_or(0.0),
        }
    }
}

/// For each battery level e, the probability that the chain started at (q = 1, e, s = 1) reaches a
/// power-saving state within `horizon` stages. Backward recursion with saving states absorbing:
/// O(horizon * non-zeros).
pub fn saving_risk_table(chain: &Chain, horizon: u32) -> Vec<f64> {
    let n = chain.len();
    let absorbed: Vec<bool> = (0..n).map(|i| chain.state(i).s == 0).collect();
    let mut v: Vec<f64> = absorbed
        .iter()
        .map(|&a| if a { 1.0 } else { 0.0 })
        .collect();
    for _ in 0..horizon {
        v = (0..n)
            .map(|i| {
                if absorbed[i] {
                    1.0
                } else {
                    chain.row(i).map(|(j, p)| p * v[j]).sum::<f64>().min(1.0)
                }
            })
            .collect();
    }
    (0..=chain.capacity())
        .map(|e| v[chain.index(1, e, 1)])
        .collect()
}

/// Rejects a horizon of zero stages, which would make every risk 0.
pub fn validate_horizon(horizon: u32) -> Result<()> {
    if horizon == 0 {
        return Err(EnergyError::Invalid {
            param: "look-ahead horizon",
            reason: "must be at least one stage".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::Harvest;

    #[test]
    fn one_stage_risk_is_the_chance_a_job_ends_below_e_low() {
        let dev = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
        let chain = Chain::build(&dev, 0.4).unwrap();
        let t = saving_risk_table(&chain, 1);
        // 15 W at e = 20: e' = 20 + (18..42) - 26 < 20 iff the 3-slot harvest < 26.
        let f3 = dev.harvest.pmf().convolve_power(3);
        let expect: f64 = (18..26).map(|h| f3.prob(h)).sum();
        assert!((t[20] - expect).abs() < 1e-12);
        // 30 W and 60 W levels cannot fall below 20 in one job.
        assert!(t[40..].iter().all(|&r| r == 0.0));
        // More stages, more risk; lower battery, more risk.
        let t3 = saving_risk_table(&chain, 3);
        assert!(t3.iter().zip(&t).all(|(a, b)| a >= b));
        assert!(t3[20] > t3[30] && t3[30] > t3[60]);
    }

    #[test]
    fn profile_state_reflects_the_battery() {
        let dev = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
        let prof = DeviceProfile::compute(&dev, 0.02, DEFAULT_HORIZON).unwrap();
        let b = EmulatedBattery::new(dev, 25).unwrap();
        let s = prof.state(&b);
        assert_eq!(s.battery, 25);
        assert!(s.critical && s.available && !s.power_saving);
        assert_eq!(s.saving_risk, prof.saving_risk[25]);
        assert!(s.saving_risk > 0.0);
        assert!(
            validate_horizon(0)
                .unwrap_err()
                .to_string()
                .contains("horizon")
        );
    }
}
