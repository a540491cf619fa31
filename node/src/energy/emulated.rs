//! `--energy emulated:...`: an [`EmulatedBattery`] stepped one slot per `slot / clock_scale` of
//! wall time by a node task, where a session is one job. Admission is the model's (R6): a node in
//! power saving refuses with the power-saving reason, and a node whose single pending place is
//! taken refuses as busy; an accepted job is processed in the mode the battery's level selects
//! when its stage starts, and its session is paced to that mode's time per job.
//!
//! [`EmulatedCore`] holds the whole state machine with time and harvest passed in, so it is tested
//! without clocks; [`EmulatedSource`] only adds the ticking task and a lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use sunswarm_energy::emulated::StageKind;
use sunswarm_energy::profile::{DEFAULT_HORIZON, DeviceProfile};
use sunswarm_energy::{EmulatedBattery, HarvestSource};
use sunswarm_protocol::EnergyState;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use super::pacing::{JobPhase, JobTicket};
use super::spec::{EmulatedParams, PowerModeArg, SpecError};
use super::{EnergySource, Refusal, StateChange};

/// Counters over the node's life, for logs and experiments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EnergyStats {
    /// Slots elapsed.
    pub slots: u64,
    /// Slots spent in power saving (R8: the state at the start of the slot's stage).
    pub saving_slots: u64,
    /// Jobs whose processing stage ended.
    pub jobs_done: u64,
    /// kJ charged by finished jobs, from the mode table.
    pub energy_spent: i64,
    /// Sessions refused because of power saving.
    pub refused_saving: u64,
    /// Sessions refused because the pending place was taken.
    pub refused_busy: u64,
}

/// The emulated battery, its profile and its jobs, with no clock of its own.
#[derive(Debug)]
pub struct EmulatedCore {
    battery: EmulatedBattery,
    profile: DeviceProfile,
    mode: PowerModeArg,
    harvest_w: f32,
    slot_wall: Duration,
    /// Accepted jobs whose processing stage has not started, oldest first.
    waiting: VecDeque<watch::Sender<JobPhase>>,
    /// The job being processed.
    running: Option<watch::Sender<JobPhase>>,
    stats: EnergyStats,
    changes: watch::Sender<StateChange>,
}

impl EmulatedCore {
    /// Builds the battery at its initial level, works out the node's max job rate (eq. 5) from its
    /// own chain, and starts the first slot at `now`.
    pub fn new(
        params: &EmulatedParams,
        mode: PowerModeArg,
        slot_wall: Duration,
        now: Instant,
    ) -> Result<Self, SpecError> {
        let dev = params.device(mode)?;
        let profile = DeviceProfile::compute(&dev, params.delta, DEFAULT_HORIZON)?;
        let battery = EmulatedBattery::new(dev, params.initial)?;
        let changes = watch::Sender::new(StateChange {
            seq: 0,
            power_saving: battery.power_saving(),
            takes_job: battery.available(),
        });
        let mut core = EmulatedCore {
            battery,
            profile,
            mode,
            harvest_w: params.harvest_watts() as f32,
            slot_wall,
            waiting: VecDeque::new(),
            running: None,
            stats: EnergyStats::default(),
            changes,
        };
        core.begin(now);
        Ok(core)
    }

    /// The node's eq. 5 maximum job rate (jobs per slot).
    pub fn max_job_rate(&self) -> f64 {
        self.profile.max_rate.lam_max
    }

    /// The battery as the model sees it.
    pub fn battery(&self) -> &EmulatedBattery {
        &self.battery
    }

    /// Counters so far.
    pub fn stats(&self) -> EnergyStats {
        self.stats
    }

    /// Signals every slot end and every admission (the only times the announced state changes).
    pub fn state_changes(&self) -> watch::Receiver<StateChange> {
        self.changes.subscribe()
    }

    fn begin(&mut self, now: Instant) {
        let fresh = self.battery.stage().is_none();
        let kind = self.battery.begin_slot();
        if !fresh {
            return;
        }
        if let StageKind::Processing { mode } = kind {
            let slots = self.battery.params().modes.modes()[mode].slots;
            let wall = self.slot_wall * slots;
            // A stage with no ticket behind it (a job accepted before a restart) still runs: the
            // model has q = 1; it simply paces nobody.
            if let Some(tx) = self.waiting.pop_front() {
                let _ = tx.send(JobPhase::Running { start: now, wall });
                self.running = Some(tx);
            }
            debug!(
                mode,
                slots,
                level = self.battery.level(),
                "job stage starts"
            );
        }
    }

    /// Ends the current slot with `harvest` kJ and starts the next one at `now`.
    pub fn tick(&mut self, harvest: i64, now: Instant) {
        let was_saving = self.battery.power_saving();
        self.stats.slots += 1;
        if self.battery.stage() == Some(StageKind::Saving) {
            self.stats.saving_slots += 1;
        }
        let mode = match self.battery.stage() {
            Some(StageKind::Processing { mode }) => Some(mode),
            _ => None,
        };
        let end = self.battery.end_slot(harvest);
        if end.job_done {
            self.stats.jobs_done += 1;
            if let Some(m) = mode {
                self.stats.energy_spent += self.battery.params().modes.modes()[m].energy;
            }
            if let Some(tx) = self.running.take() {
                let _ = tx.send(JobPhase::Done);
            }
        }
        let power_saving = self.battery.power_saving();
        if was_saving != power_saving {
            info!(
                saving = power_saving,
                level = self.battery.level(),
                "power saving changes"
            );
        }
        self.begin(now);
        self.signal_change();
    }

    /// Tells the announcer the battery's routing state may have changed (read from the battery,
    /// so the signal can never disagree with [`Self::state`]).
    fn signal_change(&self) {
        let (power_saving, takes_job) = (self.battery.power_saving(), self.battery.available());
        self.changes.send_modify(|c| {
            c.seq += 1;
            c.power_saving = power_saving;
            c.takes_job = takes_job;
        });
    }

    /// Takes a session as a job if the model allows it now (R6).
    pub fn try_admit(&mut self, max_tokens: u32) -> Result<JobTicket, Refusal> {
        if self.battery.power_saving() {
            self.stats.refused_saving += 1;
            return Err(self.saving_refusal());
        }
        if !self.battery.offer_job() {
            self.stats.refused_busy += 1;
            return Err(Refusal::Busy(
                "this node is processing a job and already holds the next one".into(),
            ));
        }
        let (tx, rx) = watch::channel(JobPhase::Waiting);
        self.waiting.push_back(tx);
        // The pending place is taken: clients must stop routing here until the next stage.
        self.signal_change();
        Ok(JobTicket::paced(rx, max_tokens))
    }

    fn saving_refusal(&self) -> Refusal {
        let p = self.battery.params();
        Refusal::PowerSaving(format!(
            "power saving: battery at {} of {} kJ, serving again from {} kJ",
            self.battery.level(),
            p.capacity,
            p.e_high
        ))
    }

    /// Whether new sessions are refused for power saving (a refusal is counted).
    pub fn admit(&mut self) -> Result<(), String> {
        if self.battery.power_saving() {
            self.stats.refused_saving += 1;
            Err(self.saving_refusal().to_string())
        } else {
            Ok(())
        }
    }

    /// The state the node announces.
    pub fn state(&self) -> EnergyState {
        let b = &self.battery;
        let peer = self.profile.state(b);
        EnergyState {
            battery_level: (b.level() as f64 / b.params().capacity as f64).clamp(0.0, 1.0) as f32,
            harvest_w: self.harvest_w,
            power_mode: self.mode.announced(b.mode_index()),
            power_saving: b.power_saving(),
            max_job_rate: self.max_job_rate() as f32,
            mode_index: peer.mode,
            critical: peer.critical,
            saving_risk: (peer.saving_risk as f32).clamp(0.0, 1.0),
            takes_job: b.available(),
        }
    }
}

/// An emulated battery on a (possibly accelerated) clock: a task ends one slot every
/// `slot / clock_scale` seconds of wall time, drawing the slot's harvest.
pub struct EmulatedSource {
    core: Arc<Mutex<EmulatedCore>>,
    ticker: tokio::task::JoinHandle<()>,
}

impl EmulatedSource {
    /// Builds the core and starts its ticking task; needs a tokio runtime.
    pub fn start(
        params: &EmulatedParams,
        mode: PowerModeArg,
        clock_scale: f64,
    ) -> Result<Self, super::EnergySetupError> {
        let slot_wall = slot_wall(params.slot_secs, clock_scale)?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| super::EnergySetupError::NoRuntime)?;
        let core = EmulatedCore::new(params, mode, slot_wall, Instant::now())?;
        info!(
            max_job_rate = core.max_job_rate(),
            slot_ms = slot_wall.as_millis() as u64,
            level = params.initial,
            ?mode,
            "emulated battery"
        );
        let core = Arc::new(Mutex::new(core));
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let harvest = sunswarm_energy::Harvest::uniform(params.harvest.0, params.harvest.1)
            .map_err(SpecError::from)?;
        let ticker = handle.spawn(tick_loop(
            Arc::downgrade(&core),
            HarvestSource::new(harvest, 0),
            rng,
            slot_wall,
        ));
        Ok(EmulatedSource { core, ticker })
    }

    /// Counters so far.
    pub fn stats(&self) -> EnergyStats {
        self.lock().stats()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EmulatedCore> {
        // A panic while holding the lock leaves a consistent battery (every method updates it in
        // one step), so keep serving rather than poisoning the node.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for EmulatedSource {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Wall time of one slot: `slot_secs / clock_scale`, at least a millisecond so the ticker can keep up.
pub fn slot_wall(slot_secs: f64, clock_scale: f64) -> Result<Duration, super::EnergySetupError> {
    if !(clock_scale.is_finite() && clock_scale > 0.0) {
        return Err(super::EnergySetupError::ClockScale(format!(
            "{clock_scale} is not a positive number"
        )));
    }
    let wall = slot_secs / clock_scale;
    if wall < 1e-3 {
        return Err(super::EnergySetupError::ClockScale(format!(
            "a {slot_secs} s slot at {clock_scale}x lasts {wall} s of wall time; keep it at 1 ms or more"
        )));
    }
    Ok(Duration::from_secs_f64(wall))
}

async fn tick_loop(
    core: Weak<Mutex<EmulatedCore>>,
    mut harvest: HarvestSource,
    mut rng: StdRng,
    slot_wall: Duration,
) {
    let mut every = tokio::time::interval_at(Instant::now() + slot_wall, slot_wall);
    loop {
        let now = every.tick().await;
        let Some(core) = core.upgrade() else { return };
        let h = harvest.next_slot(&mut rng);
        core.lock().unwrap_or_else(|p| p.into_inner()).tick(h, now);
    }
}

impl EnergySource for EmulatedSource {
    fn state(&self) -> EnergyState {
        self.lock().state()
    }

    fn admit(&self) -> Result<(), String> {
        self.lock().admit()
    }

    fn begin_job(&self, max_tokens: u32) -> Result<JobTicket, Refusal> {
        self.lock().try_admit(max_tokens)
    }

    fn state_changes(&self) -> Option<watch::Receiver<StateChange>> {
        Some(self.lock().state_changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::PowerSetting;

    fn core(spec: &str, mode: PowerModeArg) -> EmulatedCore {
        EmulatedCore::new(
            &spec.parse().unwrap(),
            mode,
            Duration::from_secs(1),
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn max_job_rate_is_the_models() {
        // Spec sec. 8 / docs/energy.md Fig. 2b: 15 W and 30 W are limited by time, 60 W by energy.
        let r15 = core("", PowerModeArg::W15).max_job_rate();
        let r30 = core("", PowerModeArg::W30).max_job_rate();
        let r60 = core("", PowerModeArg::W60).max_job_rate();
        let rdyn = core("", PowerModeArg::Dynamic).max_job_rate();
        assert!((r15 - 1.0 / 3.0).abs() < 1e-9, "{r15}");
        assert!((r30 - 0.5).abs() < 1e-9, "{r30}");
        assert!((r60 - 0.3997).abs() < 0.01, "{r60}");
        assert!((rdyn - 0.4284).abs() < 0.01, "{rdyn}");
        // A poorer harvest lowers the rate the node announces.
        let poor = core("harvest=uniform(2,6)", PowerModeArg::Dynamic);
        assert!(
            poor.max_job_rate() < rdyn - 0.05,
            "{} vs {rdyn}",
            poor.max_job_rate()
        );
        assert!((poor.state().max_job_rate - poor.max_job_rate() as f32).abs() < 1e-6);
    }

    #[test]
    fn a_job_drains_its_modes_energy_and_refuses_a_third() {
        let mut c = core("initial=50,seed=1", PowerModeArg::W30);
        let now = Instant::now();
        let mut first = c.try_admit(8).unwrap();
        let _second = c.try_admit(8).unwrap_err();
        assert!(
            matches!(c.try_admit(8), Err(Refusal::Busy(_))),
            "one pending place per stage"
        );
        c.tick(0, now); // the idle slot ends; the job's 2-slot stage starts
        assert!(matches!(first.deadline(8), Ok(Some(_))));
        let _next = c
            .try_admit(8)
            .expect("a processing node holds one pending job");
        c.tick(0, now);
        c.tick(0, now);
        assert_eq!(c.battery().level(), 50 - 22);
        assert_eq!(c.stats().jobs_done, 1);
        assert_eq!(c.stats().energy_spent, 22);
        assert_eq!(first.deadline(8), Ok(None), "the job is done");
        let _ = &mut first;
    }

    #[test]
    fn hysteresis_refuses_with_the_power_saving_reason_until_e_high() {
        let mut c = core("initial=30,low=20,high=40", PowerModeArg::W60);
        let mut changes = c.state_changes();
        let now = Instant::now();
        let _t = c.try_admit(4).unwrap();
        assert_eq!(
            *changes.borrow_and_update(),
            StateChange {
                seq: 1,
                power_saving: false,
                takes_job: false
            },
            "taking the pending place is signalled at once"
        );
        assert!(!c.state().takes_job);
        c.tick(0, now);
        assert!(
            changes.has_changed().unwrap(),
            "every slot end is signalled"
        );
        assert_eq!(
            *changes.borrow_and_update(),
            StateChange {
                seq: 2,
                power_saving: false,
                takes_job: true
            },
            "the job's stage starts, so the pending place is free again"
        );
        assert!(c.state().takes_job);
        c.tick(0, now); // 60 W job: 30 - 23 = 7 < 20
        assert_eq!(c.battery().level(), 7);
        assert!(c.state().power_saving);
        assert!(
            changes.has_changed().unwrap() && changes.borrow().power_saving,
            "the flip is signalled at the slot end that causes it"
        );
        assert!(!c.state().takes_job, "a saving node takes no job");
        let refusal = c.try_admit(4).unwrap_err();
        assert!(matches!(refusal, Refusal::PowerSaving(_)));
        assert!(
            refusal
                .to_string()
                .contains("power saving: battery at 7 of 100 kJ"),
            "{refusal}"
        );
        assert!(c.admit().is_err());
        c.tick(32, now); // 39: still below e_H
        assert!(c.try_admit(4).is_err());
        c.tick(1, now); // 40 = e_H: wakes
        assert!(!c.state().power_saving);
        assert_eq!(
            *changes.borrow(),
            StateChange {
                seq: 5,
                power_saving: false,
                takes_job: true
            },
            "an admission and four slot ends, the last one a wake"
        );
        assert!(c.try_admit(4).is_ok());
        assert_eq!(
            c.stats().refused_saving,
            3,
            "every refusal is counted, by admit or by try_admit"
        );
        assert_eq!(c.stats().saving_slots, 2);
    }

    #[test]
    fn dynamic_mode_switches_at_the_tables_thresholds() {
        let mut c = core("initial=38,low=20,high=40", PowerModeArg::Dynamic);
        let now = Instant::now();
        let mut seen = Vec::new();
        // Idle slots: the level rises by the harvest; the announced mode follows the table.
        for h in [0, 1, 1, 19, 1] {
            c.tick(h, now);
            let s = c.state();
            seen.push((c.battery().level(), s.power_mode, s.mode_index, s.critical));
        }
        let w = |watts| PowerSetting::Dynamic { watts };
        assert_eq!(
            seen,
            vec![
                (38, w(15), 0, true),
                (39, w(15), 0, true),
                (40, w(30), 1, false),
                (59, w(30), 1, false),
                (60, w(60), 2, false)
            ]
        );
        // A job started at 60 runs at 60 W: one slot, 23 kJ.
        let _t = c.try_admit(1).unwrap();
        c.tick(0, now);
        assert_eq!(c.battery().stage(), Some(StageKind::Processing { mode: 2 }));
        c.tick(0, now);
        assert_eq!(c.battery().level(), 37);
        assert_eq!(c.state().power_mode, w(15));
    }

    #[test]
    fn clock_scale_is_checked() {
        assert_eq!(slot_wall(100.0, 100.0).unwrap(), Duration::from_secs(1));
        assert!(
            slot_wall(100.0, 0.0)
                .unwrap_err()
                .to_string()
                .contains("clock-scale")
        );
        assert!(slot_wall(100.0, f64::NAN).is_err());
        assert!(
            slot_wall(1.0, 1e6)
                .unwrap_err()
                .to_string()
                .contains("1 ms")
        );
    }
}
