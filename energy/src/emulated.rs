//! A battery stepped slot by slot with the chain's stage rules (R2-R4, R9): what a live node runs
//! on an emulated (possibly accelerated) clock, and what the simulations run for every device.
//!
//! A stage starts at the beginning of a slot from the current (q, e, s), collects each slot's
//! harvest, and applies its rule only when it ends, exactly as the embedded chain does, so long
//! runs converge to the analytical averages.
//!
//! A node drives it once per (possibly accelerated) slot:
//!
//! ```
//! use sunswarm_energy::{DeviceParams, EmulatedBattery, Harvest};
//! use sunswarm_energy::emulated::StageKind;
//!
//! let dev = DeviceParams::paper_dynamic(Harvest::uniform(6, 14)?);
//! let mut battery = EmulatedBattery::new(dev, 50)?;
//! let mut finished = 0;
//! for slot in 0..10 {
//!     battery.begin_slot();
//!     // A request arriving during the slot is taken only if the battery allows it (R6).
//!     if slot % 2 == 0 && battery.available() {
//!         battery.offer_job();
//!     }
//!     if let Some(StageKind::Processing { mode }) = battery.stage() {
//!         let _slots_per_job = battery.params().modes.modes()[mode].slots; // pace the real job
//!     }
//!     finished += battery.end_slot(10).job_done as u32; // this slot's harvest, in units
//! }
//! assert!(finished > 0);
//! # Ok::<(), sunswarm_energy::EnergyError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::device::DeviceParams;
use crate::error::Result;

/// What the device is doing during the current stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageKind {
    /// R2: active with no job; one slot.
    Idle,
    /// R3: power saving; one slot; arrivals refused.
    Saving,
    /// R4: processing a job in mode `mode` (index into the table); N_m slots.
    Processing { mode: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stage {
    kind: StageKind,
    remaining: u32,
    harvested: i64,
    /// Whether the single pending place was taken during this stage (R6).
    accepted: bool,
}

/// What happened at the end of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotEnd {
    /// A processing stage ended: one job is finished.
    pub job_done: bool,
    /// A stage ended (the next slot starts a new one).
    pub stage_ended: bool,
}

/// The energy state of one device, stepped one slot at a time.
#[derive(Debug, Clone)]
pub struct EmulatedBattery {
    dev: DeviceParams,
    q: bool,
    e: i64,
    active: bool,
    stage: Option<Stage>,
}

impl EmulatedBattery {
    /// R9: starts at battery `e0` with no job, active iff `e0 >= e_L`, and no stage running.
    pub fn new(dev: DeviceParams, e0: i64) -> Result<Self> {
        dev.validate()?;
        dev.validate_level("initial battery", e0)?;
        let active = dev.starts_active(e0);
        Ok(Self {
            dev,
            q: false,
            e: e0,
            active,
            stage: None,
        })
    }

    /// Starts between stages in state (q, e, s) of the chain, e.g. to resume a saved node or to
    /// check one stage against the chain's row. Active below e_L is allowed (it is a state of the
    /// chain, merely unreachable).
    pub fn at(dev: DeviceParams, has_job: bool, e: i64, active: bool) -> Result<Self> {
        dev.validate()?;
        dev.validate_level("battery level", e)?;
        Ok(Self {
            dev,
            q: has_job,
            e,
            active,
            stage: None,
        })
    }

    /// The device's parameters.
    pub fn params(&self) -> &DeviceParams {
        &self.dev
    }

    /// Battery at the start of the current stage (R8: the level every slot of the stage records).
    pub fn level(&self) -> i64 {
        self.e
    }

    /// Whether the device is in power saving.
    pub fn power_saving(&self) -> bool {
        !self.active
    }

    /// Whether a job is waiting or in service (q).
    pub fn has_job(&self) -> bool {
        self.q
    }

    /// The current stage, if one is running.
    pub fn stage(&self) -> Option<StageKind> {
        self.stage.map(|s| s.kind)
    }

    /// Index of the mode the device would process in at its current level.
    pub fn mode_index(&self) -> usize {
        self.dev.modes.index_at(self.e)
    }

    /// Whether the current level puts a dynamic table in its critical (lowest) mode.
    pub fn critical(&self) -> bool {
        self.dev.modes.is_critical(self.e)
    }

    /// Step 1 of a slot: starts a stage if none is running, and returns the running stage.
    pub fn begin_slot(&mut self) -> StageKind {
        if let Some(s) = self.stage {
            return s.kind;
        }
        let (kind, len) = if !self.active {
            (StageKind::Saving, 1)
        } else if self.q {
            let mode = self.dev.modes.index_at(self.e);
            (
                StageKind::Processing { mode },
                self.dev.modes.modes()[mode].slots,
            )
        } else {
            (StageKind::Idle, 1)
        };
        self.stage = Some(Stage {
            kind,
            remaining: len,
            harvested: 0,
            accepted: false,
        });
        kind
    }

    /// R6: active, not saving, and the single pending place of this stage is still free.
    pub fn available(&self) -> bool {
        match self.stage {
            Some(s) => s.kind != StageKind::Saving && !s.accepted,
            None => self.active,
        }
    }

    /// Offers a job; returns whether it was accepted (the pending place is then taken).
    pub fn offer_job(&mut self) -> bool {
        if !self.available() {
            return false;
        }
        match self.stage.as_mut() {
            Some(s) => s.accepted = true,
            // Outside a stage (a live node between slots) the job starts the next stage.
            None => self.q = true,
        }
        true
    }

    /// Step 4 of a slot: adds the slot's harvest, and applies R2-R4 if the stage ends.
    pub fn end_slot(&mut self, harvest: i64) -> SlotEnd {
        let Some(mut st) = self.stage else {
            return SlotEnd::default();
        };
        st.harvested += harvest.max(0);
        st.remaining -= 1;
        if st.remaining > 0 {
            self.stage = Some(st);
            return SlotEnd::default();
        }
        self.stage = None;
        let mut out = SlotEnd {
            job_done: false,
            stage_ended: true,
        };
        match st.kind {
            StageKind::Idle => {
                self.e = self.dev.after_idle(self.e, st.harvested);
                self.q = st.accepted;
            }
            StageKind::Saving => {
                let (e, wake) = self.dev.after_saving(self.e, st.harvested);
                self.e = e;
                self.active = wake;
            }
            StageKind::Processing { mode } => {
                let cost = self.dev.modes.modes()[mode].energy;
                let (e, active) = self.dev.after_job(self.e, st.harvested, cost);
                self.e = e;
                self.active = active;
                self.q = st.accepted;
                out.job_done = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::Harvest;
    use crate::modes::{ModeTable, paper};

    fn dev15() -> DeviceParams {
        DeviceParams::paper(
            Harvest::uniform(6, 14).unwrap(),
            ModeTable::fixed(paper::w15()).unwrap(),
        )
    }

    #[test]
    fn a_job_runs_three_slots_and_charges_its_energy() {
        let mut b = EmulatedBattery::new(dev15(), 50).unwrap();
        assert_eq!(b.begin_slot(), StageKind::Idle);
        assert!(b.offer_job());
        assert!(!b.offer_job(), "one pending place per stage");
        assert_eq!(
            b.end_slot(10),
            SlotEnd {
                job_done: false,
                stage_ended: true
            }
        );
        assert_eq!(b.level(), 60);
        assert_eq!(b.begin_slot(), StageKind::Processing { mode: 0 });
        assert!(
            b.offer_job(),
            "a processing device still takes one pending job"
        );
        assert!(!b.end_slot(6).stage_ended);
        assert!(!b.end_slot(6).stage_ended);
        assert_eq!(
            b.level(),
            60,
            "the level changes only at the end of a stage"
        );
        assert!(b.end_slot(6).job_done);
        assert_eq!(b.level(), 60 + 18 - 26);
        assert!(b.has_job());
    }

    #[test]
    fn hysteresis_refuses_until_e_high() {
        let mut b = EmulatedBattery::new(dev15(), 30).unwrap();
        b.begin_slot();
        b.offer_job();
        b.end_slot(0);
        b.begin_slot();
        for _ in 0..3 {
            b.end_slot(0);
        }
        assert_eq!(b.level(), 4);
        assert!(b.power_saving());
        assert_eq!(b.begin_slot(), StageKind::Saving);
        assert!(!b.available() && !b.offer_job());
        b.end_slot(35);
        assert_eq!(b.level(), 39);
        assert_eq!(b.begin_slot(), StageKind::Saving);
        b.end_slot(1);
        assert!(!b.power_saving());
        assert_eq!(b.begin_slot(), StageKind::Idle);
    }

    #[test]
    fn starts_saving_below_e_low_and_rejects_bad_start() {
        let b = EmulatedBattery::new(dev15(), 19).unwrap();
        assert!(b.power_saving());
        assert!(
            EmulatedBattery::new(dev15(), 101)
                .unwrap_err()
                .to_string()
                .contains("initial battery")
        );
        assert!(
            EmulatedBattery::new(dev15(), -1)
                .unwrap_err()
                .to_string()
                .contains("initial battery")
        );
    }
}
