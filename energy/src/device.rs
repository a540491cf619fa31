//! One device's energy parameters: battery capacity, power-saving hysteresis, harvest law and
//! mode table, plus the three energy-update rules shared by the chain and the emulator.

use serde::{Deserialize, Serialize};

use crate::error::{EnergyError, Result, non_negative};
use crate::harvest::Harvest;
use crate::modes::{self, ModeTable};

/// Everything the semi-Markov model needs to know about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceParams {
    /// B: battery capacity in energy units.
    pub capacity: i64,
    /// e_L: power saving starts when a job leaves the battery below this level.
    pub e_low: i64,
    /// e_H: power saving ends when the battery reaches this level.
    pub e_high: i64,
    /// Per-slot harvest law.
    pub harvest: Harvest,
    /// Power modes by battery level.
    pub modes: ModeTable,
}

impl DeviceParams {
    /// The paper's device (B = 100, e_L = 20, e_H = 40) with the given harvest and modes.
    pub fn paper(harvest: Harvest, modes: ModeTable) -> Self {
        Self {
            capacity: 100,
            e_low: 20,
            e_high: 40,
            harvest,
            modes,
        }
    }

    /// The paper's device with the dynamic mode table.
    pub fn paper_dynamic(harvest: Harvest) -> Self {
        Self::paper(harvest, modes::paper::dynamic(100))
    }

    /// Checks every parameter, naming the first one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.capacity < 1 {
            return Err(EnergyError::ZeroCapacity {
                param: "battery capacity",
                value: self.capacity,
            });
        }
        non_negative("e_low", self.e_low)?;
        non_negative("e_high", self.e_high)?;
        if self.e_low > self.e_high {
            return Err(EnergyError::OutOfOrder {
                low_param: "e_low",
                low: self.e_low,
                high_param: "e_high",
                high: self.e_high,
            });
        }
        if self.e_high > self.capacity {
            return Err(EnergyError::AboveCapacity {
                param: "e_high",
                value: self.e_high,
                capacity: self.capacity,
            });
        }
        self.harvest.validate()?;
        self.modes.validate()
    }

    /// Checks an initial battery level against this device.
    pub fn validate_level(&self, param: &'static str, e: i64) -> Result<()> {
        non_negative(param, e)?;
        if e > self.capacity {
            return Err(EnergyError::AboveCapacity {
                param,
                value: e,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// R2: idle active stage; the battery only gains, capped at B.
    pub fn after_idle(&self, e: i64, harvest: i64) -> i64 {
        (e + harvest).min(self.capacity)
    }

    /// R3: power-saving stage; returns the new level and whether the device wakes up (e' >= e_H).
    pub fn after_saving(&self, e: i64, harvest: i64) -> (i64, bool) {
        let e2 = (e + harvest).min(self.capacity);
        (e2, e2 >= self.e_high)
    }

    /// R4: processing stage (eq. 1 with the clip at 0); returns the new level and whether the
    /// device stays active (e' >= e_L).
    pub fn after_job(&self, e: i64, harvest: i64, cost: i64) -> (i64, bool) {
        let e2 = (e + harvest - cost).clamp(0, self.capacity);
        (e2, e2 >= self.e_low)
    }

    /// R9: a device starts active only if its initial battery is at least e_L.
    pub fn starts_active(&self, e0: i64) -> bool {
        e0 >= self.e_low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::paper;

    fn dev() -> DeviceParams {
        DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap())
    }

    #[test]
    fn hysteresis_rules() {
        let d = dev();
        assert_eq!(d.after_idle(95, 10), 100);
        assert_eq!(d.after_saving(30, 9), (39, false));
        assert_eq!(d.after_saving(30, 10), (40, true));
        assert_eq!(d.after_job(30, 6, 23), (13, false));
        assert_eq!(d.after_job(30, 13, 23), (20, true));
        assert_eq!(d.after_job(5, 0, 26), (0, false));
        assert!(d.starts_active(20) && !d.starts_active(19));
    }

    #[test]
    fn validation_names_the_parameter() {
        let mut d = dev();
        d.capacity = 0;
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("battery capacity")
        );
        let mut d = dev();
        d.e_low = 50;
        let e = d.validate().unwrap_err();
        assert!(
            matches!(
                e,
                EnergyError::OutOfOrder {
                    low_param: "e_low",
                    ..
                }
            ),
            "{e}"
        );
        let mut d = dev();
        d.e_low = -3;
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("e_low must not be negative")
        );
        let mut d = dev();
        d.e_high = 101;
        assert!(d.validate().unwrap_err().to_string().contains("e_high"));
        let d = DeviceParams::paper(
            Harvest::Uniform { min: 3, max: 1 },
            ModeTable::fixed(paper::w15()).unwrap(),
        );
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("harvest min")
        );
        assert!(dev().validate_level("initial battery", 101).is_err());
        assert!(dev().validate().is_ok());
    }
}
