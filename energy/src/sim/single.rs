//! One device alone (Fig. 2a): Bernoulli arrivals, accepted only when the device is available.

use rand::{Rng, RngCore};

use crate::device::DeviceParams;
use crate::emulated::EmulatedBattery;
use crate::error::{Result, probability};
use crate::harvest::HarvestSource;

/// Settings of a single-device run.
#[derive(Debug, Clone)]
pub struct SingleConfig {
    /// The device.
    pub device: DeviceParams,
    /// Arrival probability per slot.
    pub p: f64,
    /// Slots simulated (N).
    pub slots: usize,
    /// Initial battery (E0).
    pub e0: i64,
}

/// Outcome of one single-device run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SingleRun {
    /// Jobs finished within the horizon.
    pub jobs: u32,
    /// Mean battery per slot (R8) as a fraction of capacity.
    pub avg_battery: f64,
    /// Share of slots in power saving.
    pub ps_frac: f64,
}

/// Runs one repetition (the generator is dynamic so the loop is compiled, optimised, in this crate
/// rather than in every caller).
pub fn run_single(cfg: &SingleConfig, rng: &mut dyn RngCore) -> Result<SingleRun> {
    probability("arrival probability p", cfg.p)?;
    let mut dev = EmulatedBattery::new(cfg.device.clone(), cfg.e0)?;
    let mut harvest = HarvestSource::new(cfg.device.harvest.clone(), rng.random::<u32>() as usize);
    let (mut jobs, mut battery, mut saving) = (0u32, 0i64, 0u32);
    for _ in 0..cfg.slots {
        dev.begin_slot();
        battery += dev.level();
        saving += dev.power_saving() as u32;
        if rng.random::<f64>() < cfg.p {
            // A busy or saving device loses the arrival.
            dev.offer_job();
        }
        jobs += dev.end_slot(harvest.next_slot(rng)).job_done as u32;
    }
    let n = cfg.slots.max(1) as f64;
    Ok(SingleRun {
        jobs,
        avg_battery: battery as f64 / n / cfg.device.capacity as f64,
        ps_frac: saving as f64 / n,
    })
}
