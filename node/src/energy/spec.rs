//! Parsing of `--energy emulated:KEY=VALUE,...` and `--power-mode`, pure. Units follow
//! `paper-model.md`: energies in kJ (the model's unit), times in seconds of battery time.
//!
//! ```text
//! emulated:capacity=100,harvest=uniform(6,14),slot=100,initial=50,low=20,high=40,delta=0.02,seed=7
//! ```
//!
//! Every key is optional (the defaults are the paper's device); `emulated` alone means all
//! defaults. Unknown or repeated keys and bad values are errors that name the key.

use std::str::FromStr;

use sunswarm_energy::modes::{self, ModeTable};
use sunswarm_energy::{DeviceParams, Harvest};

/// Why an emulated-battery spec or a power mode was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("emulated energy: {item:?} is not KEY=VALUE")]
    NotKeyValue { item: String },
    #[error("emulated energy: unknown key {key:?} (known: {})", KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("emulated energy: {key} is given twice")]
    Repeated { key: String },
    #[error("emulated energy: {key}={value:?} is not {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("emulated energy: unbalanced parentheses in {0:?}")]
    Parentheses(String),
    #[error("emulated energy: {0}")]
    Device(#[from] sunswarm_energy::EnergyError),
    #[error("unknown power mode {0:?}: expected 15w, 30w, 60w or dynamic")]
    PowerMode(String),
}

const KEYS: [&str; 8] = [
    "capacity", "harvest", "slot", "initial", "low", "high", "delta", "seed",
];

/// The parameters of an emulated battery and harvester.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedParams {
    /// B, in kJ.
    pub capacity: i64,
    /// Per-slot harvest, discrete uniform on `harvest.0..=harvest.1` kJ.
    pub harvest: (i64, i64),
    /// T: one slot, in seconds of battery time.
    pub slot_secs: f64,
    /// E0, in kJ.
    pub initial: i64,
    /// e_L: power saving starts below this (kJ).
    pub low: i64,
    /// e_H: power saving ends at or above this (kJ).
    pub high: i64,
    /// Risk tolerance of the max-rate search (eq. 5).
    pub delta: f64,
    /// Seed of the harvest draws; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for EmulatedParams {
    /// The paper's device (spec sec. 1 and Fig. 2a).
    fn default() -> Self {
        EmulatedParams {
            capacity: 100,
            harvest: (6, 14),
            slot_secs: 100.0,
            initial: 50,
            low: 20,
            high: 40,
            delta: 0.02,
            seed: None,
        }
    }
}

impl EmulatedParams {
    /// The energy model's device for these parameters and a power mode.
    pub fn device(&self, mode: PowerModeArg) -> Result<DeviceParams, SpecError> {
        let dev = DeviceParams {
            capacity: self.capacity,
            e_low: self.low,
            e_high: self.high,
            harvest: Harvest::uniform(self.harvest.0, self.harvest.1)?,
            modes: mode.table(self.capacity)?,
        };
        dev.validate()?;
        dev.validate_level("initial", self.initial)?;
        Ok(dev)
    }

    /// Mean harvested power in watts (kJ per slot over the slot's seconds).
    pub fn harvest_watts(&self) -> f64 {
        (self.harvest.0 + self.harvest.1) as f64 / 2.0 * 1000.0 / self.slot_secs
    }
}

/// Splits on commas that are not inside parentheses (`harvest=uniform(6,14)` holds one).
fn split_items(s: &str) -> Result<Vec<&str>, SpecError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SpecError::Parentheses(s.to_string()));
                }
            }
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SpecError::Parentheses(s.to_string()));
    }
    items.push(&s[start..]);
    Ok(items
        .into_iter()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect())
}

fn int(key: &'static str, v: &str) -> Result<i64, SpecError> {
    v.trim().parse().map_err(|_| SpecError::BadValue {
        key,
        value: v.to_string(),
        expected: "a whole number of kJ",
    })
}

fn uniform(v: &str) -> Result<(i64, i64), SpecError> {
    let bad = || SpecError::BadValue {
        key: "harvest",
        value: v.to_string(),
        expected: "uniform(MIN,MAX) in whole kJ per slot",
    };
    let inner = v
        .trim()
        .strip_prefix("uniform(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?;
    let (a, b) = inner.split_once(',').ok_or_else(bad)?;
    let a: i64 = a.trim().parse().map_err(|_| bad())?;
    let b: i64 = b.trim().parse().map_err(|_| bad())?;
    Ok((a, b))
}

impl FromStr for EmulatedParams {
    type Err = SpecError;

    /// Parses the part after `emulated:`; values are range-checked by [`EmulatedParams::device`].
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut p = EmulatedParams::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in split_items(s)? {
            let (key, value) = item.split_once('=').ok_or_else(|| SpecError::NotKeyValue {
                item: item.to_string(),
            })?;
            let key = key.trim();
            let Some(&known) = KEYS.iter().find(|k| **k == key) else {
                return Err(SpecError::UnknownKey {
                    key: key.to_string(),
                });
            };
            if seen.contains(&known) {
                return Err(SpecError::Repeated {
                    key: key.to_string(),
                });
            }
            seen.push(known);
            match known {
                "capacity" => p.capacity = int("capacity", value)?,
                "harvest" => p.harvest = uniform(value)?,
                "slot" => {
                    p.slot_secs = value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0)
                        .ok_or_else(|| SpecError::BadValue {
                            key: "slot",
                            value: value.to_string(),
                            expected: "a number of seconds in (0, 86400]",
                        })?
                }
                "initial" => p.initial = int("initial", value)?,
                "low" => p.low = int("low", value)?,
                "high" => p.high = int("high", value)?,
                "delta" => {
                    p.delta = value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| *v > 0.0 && *v < 1.0)
                        .ok_or_else(|| SpecError::BadValue {
                            key: "delta",
                            value: value.to_string(),
                            expected: "a probability in (0, 1)",
                        })?
                }
                "seed" => {
                    p.seed = Some(value.trim().parse().map_err(|_| SpecError::BadValue {
                        key: "seed",
                        value: value.to_string(),
                        expected: "a non-negative whole number",
                    })?)
                }
                _ => unreachable!("every known key is handled"),
            }
        }
        Ok(p)
    }
}

/// `--power-mode`: one of the paper's measured modes, or the dynamic table by battery level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PowerModeArg {
    W15,
    W30,
    W60,
    /// 15 W below 0.4 B, 30 W below 0.6 B, 60 W above (spec sec. 1).
    #[default]
    Dynamic,
}

/// Watts of the dynamic table's modes, by index (the paper's 15 / 30 / 60 W).
const DYNAMIC_WATTS: [u16; 3] = [15, 30, 60];

impl PowerModeArg {
    /// The mode table for a battery of `capacity` kJ.
    pub fn table(self, capacity: i64) -> Result<ModeTable, sunswarm_energy::EnergyError> {
        match self {
            PowerModeArg::W15 => ModeTable::fixed(modes::paper::w15()),
            PowerModeArg::W30 => ModeTable::fixed(modes::paper::w30()),
            PowerModeArg::W60 => ModeTable::fixed(modes::paper::w60()),
            PowerModeArg::Dynamic => Ok(modes::paper::dynamic(capacity)),
        }
    }

    /// The protocol's view of this mode when the table's mode `index` is in force.
    pub fn announced(self, index: usize) -> sunswarm_protocol::PowerSetting {
        use sunswarm_protocol::PowerSetting;
        match self {
            PowerModeArg::W15 => PowerSetting::Fixed { watts: 15 },
            PowerModeArg::W30 => PowerSetting::Fixed { watts: 30 },
            PowerModeArg::W60 => PowerSetting::Fixed { watts: 60 },
            PowerModeArg::Dynamic => PowerSetting::Dynamic {
                watts: DYNAMIC_WATTS[index.min(2)],
            },
        }
    }
}

impl FromStr for PowerModeArg {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "15w" | "15" => Ok(PowerModeArg::W15),
            "30w" | "30" => Ok(PowerModeArg::W30),
            "60w" | "60" => Ok(PowerModeArg::W60),
            "dynamic" => Ok(PowerModeArg::Dynamic),
            _ => Err(SpecError::PowerMode(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_is_the_papers_device() {
        let p: EmulatedParams = "".parse().unwrap();
        assert_eq!(p, EmulatedParams::default());
        let dev = p.device(PowerModeArg::Dynamic).unwrap();
        assert_eq!(
            dev,
            DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap())
        );
        assert!(
            (p.harvest_watts() - 100.0).abs() < 1e-9,
            "10 kJ per 100 s is 100 W"
        );
    }

    #[test]
    fn every_key_parses() {
        let p: EmulatedParams =
            "capacity=200, harvest=uniform( 2 ,5),slot=0.5,initial=150,low=30,high=90,delta=0.05,seed=9".parse().unwrap();
        assert_eq!(
            p,
            EmulatedParams {
                capacity: 200,
                harvest: (2, 5),
                slot_secs: 0.5,
                initial: 150,
                low: 30,
                high: 90,
                delta: 0.05,
                seed: Some(9)
            }
        );
        assert!(p.device(PowerModeArg::W30).is_ok());
    }

    fn err(s: &str) -> String {
        match s.parse::<EmulatedParams>() {
            Ok(p) => p.device(PowerModeArg::Dynamic).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert!(err("capacity").contains("\"capacity\" is not KEY=VALUE"));
        assert!(err("volts=3").contains("unknown key \"volts\""));
        assert!(err("low=1,low=2").contains("low is given twice"));
        assert!(err("capacity=ten").contains("capacity=\"ten\""));
        assert!(err("harvest=normal(1,2)").contains("uniform(MIN,MAX)"));
        assert!(err("harvest=uniform(1)").contains("harvest"));
        assert!(err("harvest=uniform(1,2").contains("unbalanced"));
        assert!(err("harvest=uniform(1,2))").contains("unbalanced"));
        assert!(err("slot=0").contains("slot"));
        assert!(err("slot=-3").contains("slot"));
        assert!(err("slot=inf").contains("slot"));
        assert!(err("delta=1.5").contains("delta"));
        assert!(err("seed=-1").contains("seed"));
        // Range checks come from the energy model and still name the parameter.
        assert!(err("initial=101").contains("initial"));
        assert!(err("low=50,high=40").contains("e_low"));
        assert!(err("high=120").contains("e_high"));
        assert!(err("capacity=0").contains("capacity"));
        assert!(
            err("harvest=uniform(5,2)").contains("harvest"),
            "{}",
            err("harvest=uniform(5,2)")
        );
    }

    #[test]
    fn power_modes() {
        for (s, m) in [
            ("15w", PowerModeArg::W15),
            ("30W", PowerModeArg::W30),
            ("60", PowerModeArg::W60),
            ("Dynamic", PowerModeArg::Dynamic),
        ] {
            assert_eq!(s.parse::<PowerModeArg>().unwrap(), m);
        }
        assert!(
            "45w"
                .parse::<PowerModeArg>()
                .unwrap_err()
                .to_string()
                .contains("\"45w\"")
        );
        let t = PowerModeArg::Dynamic.table(100).unwrap();
        assert_eq!(t.bounds(), &[40, 60]);
        assert_eq!(
            PowerModeArg::Dynamic.announced(1),
            sunswarm_protocol::PowerSetting::Dynamic { watts: 30 }
        );
        assert_eq!(
            PowerModeArg::W60.announced(0),
            sunswarm_protocol::PowerSetting::Fixed { watts: 60 }
        );
        assert_eq!(PowerModeArg::W15.table(100).unwrap().modes()[0].slots, 3);
    }
}
