//! `--energy battery`: a real battery read from Linux `/sys/class/power_supply` (the first supply
//! whose `type` is `Battery`: `capacity` in percent, `status`, and `power_now` in microwatts where
//! the driver reports it). Nothing is modelled: the level is what the kernel says, power saving is
//! the same hysteresis as the model's (start below `low` %, end at `high` %), and the announced
//! max job rate is 1 (unknown) since there is no harvest law to derive it from.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sunswarm_protocol::EnergyState;
use tracing::warn;

use super::EnergySource;
use super::spec::PowerModeArg;

/// Where Linux lists power supplies.
pub const POWER_SUPPLY: &str = "/sys/class/power_supply";

/// Why a real battery could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatteryError {
    #[error(
        "--energy battery: no battery under {0} (no supply with type Battery and a capacity); use --energy mains or emulated:..."
    )]
    NotFound(PathBuf),
    #[error("--energy battery: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--energy battery: {path} holds {value:?}, not a percentage")]
    BadCapacity { path: PathBuf, value: String },
}

/// What the battery says now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// 0 to 100.
    pub percent: u8,
    /// `Charging`, `Discharging`, `Full`, `Not charging`, `Unknown`.
    pub status: String,
    /// Power drawn or supplied in watts, where reported.
    pub power_w: Option<f32>,
}

fn read_trimmed(path: &Path) -> Result<String, BatteryError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| BatteryError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// The first battery under `root` (sorted by name, so the choice is stable).
pub fn find(root: &Path) -> Result<PathBuf, BatteryError> {
    let entries =
        std::fs::read_dir(root).map_err(|_| BatteryError::NotFound(root.to_path_buf()))?;
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.into_iter()
        .find(|d| {
            std::fs::read_to_string(d.join("type")).is_ok_and(|t| t.trim() == "Battery")
                && d.join("capacity").exists()
        })
        .ok_or_else(|| BatteryError::NotFound(root.to_path_buf()))
}

/// Reads one battery directory.
pub fn read(dir: &Path) -> Result<Reading, BatteryError> {
    let cap_path = dir.join("capacity");
    let raw = read_trimmed(&cap_path)?;
    let percent =
        raw.parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or(BatteryError::BadCapacity {
                path: cap_path,
                value: raw,
            })?;
    let status = read_trimmed(&dir.join("status")).unwrap_or_else(|_| "Unknown".into());
    let power_w = read_trimmed(&dir.join("power_now"))
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|uw| (uw / 1e6) as f32);
    Ok(Reading {
        percent,
        status,
        power_w,
    })
}

/// The hysteresis of power saving: enter below `low`, leave at `high` or above.
pub fn next_saving(saving: bool, level: i64, low: i64, high: i64) -> bool {
    if saving { level < high } else { level < low }
}

/// A node on a real battery.
pub struct SysBattery {
    dir: PathBuf,
    mode: PowerModeArg,
    low: i64,
    high: i64,
    last: Mutex<(Reading, bool)>,
}

impl SysBattery {
    /// Finds the battery under `root` and reads it once, so a missing or unreadable battery is
    /// reported at start.
    pub fn open(root: &Path, mode: PowerModeArg) -> Result<Self, BatteryError> {
        let dir = find(root)?;
        let first = read(&dir)?;
        let (low, high) = (20, 40);
        let saving = next_saving(false, i64::from(first.percent), low, high);
        Ok(SysBattery {
            dir,
            mode,
            low,
            high,
            last: Mutex::new((first, saving)),
        })
    }

    /// Reads the battery again and updates the power-saving flag; keeps the last reading if the
    /// battery has become unreadable.
    fn refresh(&self) -> (Reading, bool) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match read(&self.dir) {
            Ok(r) => {
                let saving = next_saving(last.1, i64::from(r.percent), self.low, self.high);
                *last = (r, saving);
            }
            Err(e) => warn!("{e}; keeping the last reading"),
        }
        last.clone()
    }
}

impl EnergySource for SysBattery {
    fn state(&self) -> EnergyState {
        let (r, saving) = self.refresh();
        let level = i64::from(r.percent);
        let index = self.mode.table(100).map(|t| t.index_at(level)).unwrap_or(0);
        let charging = matches!(r.status.as_str(), "Charging" | "Full");
        EnergyState {
            battery_level: f32::from(r.percent) / 100.0,
            harvest_w: if charging {
                r.power_w.unwrap_or(0.0).max(0.0)
            } else {
                0.0
            },
            power_mode: self.mode.announced(index),
            power_saving: saving,
            max_job_rate: 1.0,
            mode_index: index as u8,
            critical: self.mode == PowerModeArg::Dynamic && index == 0,
            saving_risk: 0.0,
            takes_job: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_root(name: &str) -> Dir {
        let root = std::env::temp_dir().join(format!("sunswarm-psu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("AC")).unwrap();
        std::fs::write(root.join("AC/type"), "Mains\n").unwrap();
        Dir(root)
    }

    fn battery(root: &Path, name: &str, capacity: &str, status: &str) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), "Battery\n").unwrap();
        std::fs::write(d.join("capacity"), capacity).unwrap();
        std::fs::write(d.join("status"), status).unwrap();
    }

    #[test]
    fn hysteresis() {
        assert!(!next_saving(false, 20, 20, 40));
        assert!(next_saving(false, 19, 20, 40));
        assert!(next_saving(true, 39, 20, 40));
        assert!(!next_saving(true, 40, 20, 40));
    }

    #[test]
    fn no_battery_is_a_clear_error() {
        let root = fake_root("none");
        let err = SysBattery::open(&root.0, PowerModeArg::Dynamic)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no battery under") && err.contains("--energy mains"),
            "{err}"
        );
        let err = find(Path::new("/nonexistent/power_supply"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/power_supply"), "{err}");
    }

    #[test]
    fn reads_level_status_and_follows_hysteresis() {
        let root = fake_root("bat");
        battery(&root.0, "BAT0", "55\n", "Discharging\n");
        std::fs::write(root.0.join("BAT0/power_now"), "7500000\n").unwrap();
        let b = SysBattery::open(&root.0, PowerModeArg::Dynamic).unwrap();
        assert_eq!(
            read(&root.0.join("BAT0")).unwrap(),
            Reading {
                percent: 55,
                status: "Discharging".into(),
                power_w: Some(7.5)
            }
        );
        let s = b.state();
        assert_eq!(
            (s.battery_level, s.power_saving, s.mode_index),
            (0.55, false, 1)
        );
        assert_eq!(
            s.power_mode,
            sunswarm_protocol::PowerSetting::Dynamic { watts: 30 }
        );
        assert_eq!(s.harvest_w, 0.0, "discharging harvests nothing");
        std::fs::write(root.0.join("BAT0/capacity"), "19").unwrap();
        assert!(b.state().power_saving);
        assert!(b.admit().unwrap_err().contains("power saving"));
        std::fs::write(root.0.join("BAT0/capacity"), "39").unwrap();
        assert!(b.state().power_saving, "still below the high threshold");
        std::fs::write(root.0.join("BAT0/capacity"), "40").unwrap();
        std::fs::write(root.0.join("BAT0/status"), "Charging").unwrap();
        let s = b.state();
        assert!(!s.power_saving);
        assert_eq!(s.harvest_w, 7.5);
        std::fs::write(root.0.join("BAT0/capacity"), "lots").unwrap();
        assert_eq!(
            b.state().battery_level,
            0.4,
            "an unreadable value keeps the last reading"
        );
        let err = read(&root.0.join("BAT0")).unwrap_err().to_string();
        assert!(
            err.contains("\"lots\"") && err.contains("capacity"),
            "{err}"
        );
    }
}
