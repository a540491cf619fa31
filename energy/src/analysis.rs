//! Time averages of the semi-Markov process (spec sec. 4, eq. 2-4).
//!
//! The embedded chain counts stages; a processing stage lasts N_m slots. Weighting each state's
//! stationary probability by its dwell time, w(x) = pi(x) tau(x), turns stage averages into slot
//! averages: the battery of a slot is the battery at the start of its stage (R8).

use crate::chain::Chain;
use crate::device::DeviceParams;
use crate::error::Result;
use crate::stationary::stationary;

/// Stationary time averages of one device at one arrival rate.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Stationary law of the embedded chain, indexed like [`Chain`].
    pub pi: Vec<f64>,
    /// Share of slots spent at each battery level, 0..=B (sums to 1).
    pub level_share: Vec<f64>,
    /// eq. 2: mean battery in units.
    pub mean_battery: f64,
    /// Share of slots in power saving.
    pub ps_frac: f64,
    /// Jobs finished per slot.
    pub throughput: f64,
    /// eq. 4: mean slots per job over processing stages.
    pub nbar: f64,
    /// Battery capacity B.
    pub capacity: i64,
}

impl Analysis {
    /// Builds the chain at arrival rate `p`, solves it, and takes the time averages.
    pub fn new(dev: &DeviceParams, p: f64) -> Result<Self> {
        let chain = Chain::build(dev, p)?;
        Self::of_chain(&chain)
    }

    /// Time averages of an already built chain.
    pub fn of_chain(chain: &Chain) -> Result<Self> {
        let pi = stationary(chain)?;
        let b = chain.capacity();
        let mut level_share = vec![0.0; b as usize + 1];
        let (mut total, mut battery, mut saving) = (0.0, 0.0, 0.0);
        let (mut busy, mut busy_slots) = (0.0, 0.0);
        let mut max_slots: f64 = 1.0;
        for (i, &p) in pi.iter().enumerate() {
            let st = chain.state(i);
            max_slots = max_slots.max(chain.job_slots(i));
            let w = p * chain.dwell(i);
            total += w;
            battery += w * st.e as f64;
            level_share[st.e as usize] += w;
            if st.s == 0 {
                saving += w;
            }
            if st.q == 1 && st.s == 1 {
                busy += p;
                busy_slots += p * chain.job_slots(i);
            }
        }
        for v in &mut level_share {
            *v /= total;
        }
        // With no processing mass (p = 0) eq. 4 is 0/0; the longest job is the cautious reading.
        let nbar = if busy > 0.0 {
            busy_slots / busy
        } else {
            max_slots
        };
        Ok(Self {
            pi,
            level_share,
            mean_battery: battery / total,
            ps_frac: saving / total,
            throughput: busy / total,
            nbar,
            capacity: b,
        })
    }

    /// eq. 3: share of slots with battery strictly below `e_th`.
    pub fn risk(&self, e_th: i64) -> f64 {
        let end = e_th.clamp(0, self.capacity + 1) as usize;
        self.level_share[..end].iter().sum::<f64>().min(1.0)
    }

    /// Mean battery as a fraction of capacity.
    pub fn mean_battery_frac(&self) -> f64 {
        self.mean_battery / self.capacity as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::Harvest;
    use crate::modes::{ModeTable, paper};

    #[test]
    fn fixed_mode_nbar_is_its_job_length() {
        for (mode, n) in [
            (paper::w15(), 3.0),
            (paper::w30(), 2.0),
            (paper::w60(), 1.0),
        ] {
            let d = DeviceParams::paper(
                Harvest::uniform(6, 14).unwrap(),
                ModeTable::fixed(mode).unwrap(),
            );
            let a = Analysis::new(&d, 0.5).unwrap();
            assert!((a.nbar - n).abs() < 1e-12);
            assert!((a.level_share.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn no_arrivals_means_full_battery_and_no_work() {
        let d = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
        let a = Analysis::new(&d, 0.0).unwrap();
        assert!((a.mean_battery - 100.0).abs() < 1e-9);
        assert_eq!(a.throughput, 0.0);
        assert_eq!(a.risk(20), 0.0);
        assert_eq!(a.risk(101), 1.0);
    }

    #[test]
    fn energy_balance_holds() {
        // In steady state, harvest kept = energy spent: throughput * cost can't exceed mean harvest.
        let d = DeviceParams::paper(
            Harvest::uniform(6, 14).unwrap(),
            ModeTable::fixed(paper::w60()).unwrap(),
        );
        let a = Analysis::new(&d, 1.0).unwrap();
        assert!(a.throughput * 23.0 <= 10.0 + 1e-9, "{}", a.throughput);
        assert!(
            a.throughput * 23.0 > 9.0,
            "almost no harvest should be wasted at p = 1: {}",
            a.throughput
        );
    }
}
