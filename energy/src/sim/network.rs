//! The layered network (Figs. 3-4): L layers of K devices, each job passes one device per layer;
//! the policy picks the device of every layer from the devices' current energy states.

use rand::{Rng, RngCore};

use crate::device::DeviceParams;
use crate::emulated::EmulatedBattery;
use crate::error::{EnergyError, Result, probability};
use crate::harvest::HarvestSource;
use crate::policy::{PeerEnergyState, Policy, pick};
use crate::profile::DeviceProfile;

/// Settings of a network run; devices are listed layer-major (device `l * per_layer + k`).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Every device, layer-major.
    pub devices: Vec<DeviceParams>,
    /// Devices per layer (K).
    pub per_layer: usize,
    /// Probability that a new job enters layer 1 in an arrival slot.
    pub p: f64,
    /// Arrival slots (N).
    pub slots: usize,
    /// Extra slots without arrivals so that jobs in flight can finish.
    pub drain: usize,
    /// Initial battery of every device.
    pub e0: i64,
}

/// Outcome of one network run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkRun {
    /// Mean over arrival slots and devices of [s = 0].
    pub ps_frac: f64,
    /// Jobs out of the last layer / jobs into the first (1 if none entered).
    pub throughput: f64,
    /// Jobs dropped at any layer because no device was available.
    pub dropped: u32,
    /// Jobs that entered layer 1.
    pub entered: u32,
    /// Jobs that left the last layer.
    pub completed: u32,
}

/// Runs one repetition (the generator is dynamic so the loop is compiled, optimised, in this crate
/// rather than in every caller) under `policy`, with `profiles[i]` the offline profile of device `i`.
pub fn run_network(
    cfg: &NetworkConfig,
    policy: &dyn Policy,
    profiles: &[DeviceProfile],
    rng: &mut dyn RngCore,
) -> Result<NetworkRun> {
    probability("arrival probability p", cfg.p)?;
    let n = cfg.devices.len();
    if cfg.per_layer == 0 || n == 0 || !n.is_multiple_of(cfg.per_layer) {
        return Err(EnergyError::Invalid {
            param: "network shape",
            reason: format!("{n} devices do not fill layers of {}", cfg.per_layer),
        });
    }
    if profiles.len() != n {
        return Err(EnergyError::Invalid {
            param: "device profiles",
            reason: format!("{} profiles for {n} devices", profiles.len()),
        });
    }
    let layers = n / cfg.per_layer;
    let mut devs = cfg
        .devices
        .iter()
        .map(|d| EmulatedBattery::new(d.clone(), cfg.e0))
        .collect::<Result<Vec<_>>>()?;
    let mut sources: Vec<HarvestSource> = cfg
        .devices
        .iter()
        .map(|d| HarvestSource::new(d.harvest.clone(), rng.random::<u32>() as usize))
        .collect();
    // waiting[l]: jobs to assign to layer l in the current slot.
    let mut waiting = vec![0u32; layers];
    let mut finished = vec![0u32; layers];
    let (mut saving, mut dropped, mut entered, mut completed) = (0u64, 0u32, 0u32, 0u32);
    let mut states: Vec<PeerEnergyState> = Vec::with_capacity(cfg.per_layer);
    let mut weights = Vec::with_capacity(cfg.per_layer);
    for t in 0..cfg.slots + cfg.drain {
        for d in &mut devs {
            d.begin_slot();
        }
        if t < cfg.slots {
            saving += devs.iter().filter(|d| d.power_saving()).count() as u64;
            if rng.random::<f64>() < cfg.p {
                waiting[0] += 1;
                entered += 1;
            }
        }
        #[allow(clippy::needless_range_loop)] // l also picks the layer's device range
        for l in 0..layers {
            let range = l * cfg.per_layer..(l + 1) * cfg.per_layer;
            for _ in 0..std::mem::take(&mut waiting[l]) {
                // Probabilities are recomputed per job: the previous job took a pending place.
                states.clear();
                states.extend(range.clone().map(|i| profiles[i].state(&devs[i])));
                policy.weights_into(&states, &mut weights);
                match pick(&weights, rng.random::<f64>()) {
                    Some(k) => {
                        let accepted = devs[range.start + k].offer_job();
                        debug_assert!(accepted, "policies only weight available devices");
                    }
                    None => dropped += 1,
                }
            }
        }
        for (i, d) in devs.iter_mut().enumerate() {
            if d.end_slot(sources[i].next_slot(rng)).job_done {
                finished[i / cfg.per_layer] += 1;
            }
        }
        // Outputs of layer l go to layer l + 1 in the next slot; the last layer's are done.
        for l in (0..layers).rev() {
            let f = std::mem::take(&mut finished[l]);
            if l + 1 < layers {
                waiting[l + 1] += f;
            } else {
                completed += f;
            }
        }
    }
    let ps_frac = saving as f64 / (cfg.slots.max(1) * n) as f64;
    let throughput = if entered == 0 {
        1.0
    } else {
        completed as f64 / entered as f64
    };
    Ok(NetworkRun {
        ps_frac,
        throughput,
        dropped,
        entered,
        completed,
    })
}
