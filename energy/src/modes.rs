//! Power modes and mode tables: how many slots and energy units one job costs, chosen by battery.
//!
//! A table is a list of modes in ascending battery order with the levels where each next mode
//! starts. A fixed mode is a table with one mode; the paper's dynamic table switches 15 W -> 30 W
//! at 0.4 B and 30 W -> 60 W at 0.6 B, each boundary belonging to the upper mode (inferred).

use serde::{Deserialize, Serialize};

use crate::error::{EnergyError, Result, non_negative};

/// One operating point: a job takes `slots` slots and `energy` units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerMode {
    /// Human label, e.g. `15W`.
    pub name: String,
    /// N_m: slots per job.
    pub slots: u32,
    /// c_m: energy units per job.
    pub energy: i64,
}

impl PowerMode {
    /// A validated mode.
    pub fn new(name: impl Into<String>, slots: u32, energy: i64) -> Result<Self> {
        let m = Self {
            name: name.into(),
            slots,
            energy,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        if self.slots == 0 {
            return Err(EnergyError::ZeroSlots {
                param: "mode slots per job",
                value: self.slots,
            });
        }
        non_negative("mode energy per job", self.energy)
    }
}

/// Modes by battery level: `modes[i]` is used for `bounds[i-1] <= e < bounds[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeTable {
    modes: Vec<PowerMode>,
    bounds: Vec<i64>,
}

impl ModeTable {
    /// A table that always uses `mode`.
    pub fn fixed(mode: PowerMode) -> Result<Self> {
        Self::new(vec![mode], vec![])
    }

    /// A table switching mode at each of `bounds` (strictly increasing, one fewer than modes).
    pub fn new(modes: Vec<PowerMode>, bounds: Vec<i64>) -> Result<Self> {
        let t = Self { modes, bounds };
        t.validate()?;
        Ok(t)
    }

    /// Checks the table is non-empty, modes valid and bounds increasing and non-negative.
    pub fn validate(&self) -> Result<()> {
        if self.modes.is_empty() {
            return Err(EnergyError::ModeTable {
                reason: "it has no modes".into(),
            });
        }
        if self.bounds.len() + 1 != self.modes.len() {
            return Err(EnergyError::ModeTable {
                reason: format!(
                    "{} modes need {} switch levels, got {}",
                    self.modes.len(),
                    self.modes.len() - 1,
                    self.bounds.len()
                ),
            });
        }
        for m in &self.modes {
            m.validate()?;
        }
        for &b in &self.bounds {
            non_negative("mode switch level", b)?;
        }
        for w in self.bounds.windows(2) {
            if w[0] >= w[1] {
                return Err(EnergyError::OutOfOrder {
                    low_param: "mode switch level",
                    low: w[0],
                    high_param: "next mode switch level",
                    high: w[1],
                });
            }
        }
        Ok(())
    }

    /// The modes in ascending battery order.
    pub fn modes(&self) -> &[PowerMode] {
        &self.modes
    }

    /// Switch levels between consecutive modes.
    pub fn bounds(&self) -> &[i64] {
        &self.bounds
    }

    /// Index of the mode used at battery level `e`.
    pub fn index_at(&self, e: i64) -> usize {
        self.bounds.partition_point(|&b| b <= e)
    }

    /// The mode used at battery level `e`.
    pub fn mode_at(&self, e: i64) -> &PowerMode {
        &self.modes[self.index_at(e)]
    }

    /// Whether `e` puts a dynamic table in its lowest (critical) mode; a fixed table is never critical.
    pub fn is_critical(&self, e: i64) -> bool {
        self.modes.len() > 1 && self.index_at(e) == 0
    }

    /// Longest job in slots (sizes the chain's band).
    pub fn max_slots(&self) -> u32 {
        self.modes.iter().map(|m| m.slots).max().unwrap_or(1)
    }
}

/// The paper's measured modes and tables (spec sec. 1).
pub mod paper {
    use super::*;

    /// 15 W: 3 slots, 26 kJ per job.
    pub fn w15() -> PowerMode {
        PowerMode {
            name: "15W".into(),
            slots: 3,
            energy: 26,
        }
    }
    /// 30 W: 2 slots, 22 kJ per job.
    pub fn w30() -> PowerMode {
        PowerMode {
            name: "30W".into(),
            slots: 2,
            energy: 22,
        }
    }
    /// 60 W: 1 slot, 23 kJ per job.
    pub fn w60() -> PowerMode {
        PowerMode {
            name: "60W".into(),
            slots: 1,
            energy: 23,
        }
    }

    /// Nominal-energy variant (power x time: 4.5 / 6 / 6 kJ), the hypothesis of spec sec. 0, scaled
    /// by `scale` units per kJ so that it stays integral (scale 2 gives 9 / 12 / 12 half-kJ).
    pub fn nominal(scale: i64) -> [PowerMode; 3] {
        [
            PowerMode {
                name: "15W".into(),
                slots: 3,
                energy: 9 * scale / 2,
            },
            PowerMode {
                name: "30W".into(),
                slots: 2,
                energy: 6 * scale,
            },
            PowerMode {
                name: "60W".into(),
                slots: 1,
                energy: 6 * scale,
            },
        ]
    }

    /// The dynamic table: 15 W below 0.4 B, 30 W below 0.6 B, 60 W above.
    pub fn dynamic(capacity: i64) -> ModeTable {
        dynamic_with([w15(), w30(), w60()], capacity)
    }

    /// The dynamic table's thresholds applied to any three modes.
    pub fn dynamic_with(modes: [PowerMode; 3], capacity: i64) -> ModeTable {
        let lo = (0.4 * capacity as f64).round() as i64;
        let hi = (0.6 * capacity as f64).round() as i64;
        ModeTable {
            modes: modes.to_vec(),
            bounds: vec![lo, hi],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_table_boundaries_belong_to_upper_mode() {
        let t = paper::dynamic(100);
        assert_eq!(t.mode_at(0).name, "15W");
        assert_eq!(t.mode_at(39).name, "15W");
        assert_eq!(t.mode_at(40).name, "30W");
        assert_eq!(t.mode_at(59).name, "30W");
        assert_eq!(t.mode_at(60).name, "60W");
        assert_eq!(t.mode_at(100).name, "60W");
        assert!(t.is_critical(39) && !t.is_critical(40));
        assert_eq!(t.max_slots(), 3);
        let f = ModeTable::fixed(paper::w15()).unwrap();
        assert!(!f.is_critical(0));
        assert_eq!(f.mode_at(7).slots, 3);
    }

    #[test]
    fn invalid_tables_name_the_problem() {
        assert!(
            ModeTable::new(vec![], vec![])
                .unwrap_err()
                .to_string()
                .contains("no modes")
        );
        assert!(
            ModeTable::new(vec![paper::w15(), paper::w30()], vec![])
                .unwrap_err()
                .to_string()
                .contains("switch levels")
        );
        let e = ModeTable::new(vec![paper::w15(), paper::w30(), paper::w60()], vec![60, 40])
            .unwrap_err();
        assert!(matches!(e, EnergyError::OutOfOrder { .. }), "{e}");
        assert!(
            PowerMode::new("x", 0, 1)
                .unwrap_err()
                .to_string()
                .contains("slots")
        );
        assert!(
            PowerMode::new("x", 1, -1)
                .unwrap_err()
                .to_string()
                .contains("energy per job")
        );
    }
}
