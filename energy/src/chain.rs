//! The embedded chain of one device (spec sec. 2-3): states (q, e, s), transition matrix P(p)
//! filled rule by rule (R2 idle, R3 power saving, R4 processing), stored sparse.
//!
//! States are indexed as in the spec, `idx = (2q + s)(B + 1) + e`, and every state is kept, even
//! those no path reaches (they get stationary probability 0). Rows are compressed (CSR): a row has
//! at most `2 * |support of f^(N_m)|` entries, so 1000 battery levels cost a few hundred kB.

use crate::device::DeviceParams;
use crate::error::{Result, probability};
use crate::harvest::Pmf;

/// A state of the embedded chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    /// 1 when a job is waiting or about to be processed.
    pub q: u8,
    /// Battery level in units.
    pub e: i64,
    /// 0 = power saving, 1 = active.
    pub s: u8,
}

/// Sparse row-stochastic transition matrix P(p) of one device's embedded chain.
#[derive(Debug, Clone)]
pub struct Chain {
    capacity: i64,
    p: f64,
    row_ptr: Vec<usize>,
    cols: Vec<u32>,
    vals: Vec<f64>,
    /// R7 dwell time of each state, in slots.
    tau: Vec<f64>,
    /// N_m of the mode each state would process in (used by eq. 4).
    slots: Vec<f64>,
}

impl Chain {
    /// Builds P(p) for `dev` at arrival probability `p` per slot.
    pub fn build(dev: &DeviceParams, p: f64) -> Result<Self> {
        dev.validate()?;
        probability("arrival probability p", p)?;
        let b = dev.capacity;
        let levels = (b + 1) as usize;
        let n = 4 * levels;
        let f = dev.harvest.pmf();
        // f^(n) for each distinct job length, computed once.
        let max_slots = dev.modes.max_slots() as usize;
        let mut conv: Vec<Option<Pmf>> = vec![None; max_slots + 1];
        for m in dev.modes.modes() {
            let k = m.slots as usize;
            if conv[k].is_none() {
                conv[k] = Some(f.convolve_power(m.slots));
            }
        }

        let mut row_ptr = Vec::with_capacity(n + 1);
        let mut cols = Vec::new();
        let mut vals = Vec::new();
        let mut tau = vec![1.0; n];
        let mut slots = vec![0.0; n];
        // Scratch accumulator: clipping merges several harvests into one next state.
        let mut acc = vec![0.0f64; n];
        let mut touched: Vec<usize> = Vec::new();
        let add = |acc: &mut Vec<f64>, touched: &mut Vec<usize>, j: usize, w: f64| {
            if w > 0.0 {
                if acc[j] == 0.0 {
                    touched.push(j);
                }
                acc[j] += w;
            }
        };
        row_ptr.push(0);
        for i in 0..n {
            let st = Self::state_of(b, i);
            let (q, e, s) = (st.q, st.e, st.s);
            let mode = dev.modes.mode_at(e);
            slots[i] = mode.slots as f64;
            match (q, s) {
                (0, 1) => {
                    // R2: idle active slot; an arrival makes q' = 1, no threshold re-check.
                    for (h, fh) in f.iter() {
                        let e2 = dev.after_idle(e, h);
                        add(&mut acc, &mut touched, Self::index_in(b, 1, e2, 1), p * fh);
                        add(
                            &mut acc,
                            &mut touched,
                            Self::index_in(b, 0, e2, 1),
                            (1.0 - p) * fh,
                        );
                    }
                }
                (_, 0) => {
                    // R3: power saving keeps q, rejects arrivals, wakes at e_H.
                    for (h, fh) in f.iter() {
                        let (e2, wake) = dev.after_saving(e, h);
                        add(
                            &mut acc,
                            &mut touched,
                            Self::index_in(b, q, e2, wake as u8),
                            fh,
                        );
                    }
                }
                _ => {
                    // R4: a job of N_m slots; one new job is accepted if any of them has an arrival.
                    let nm = mode.slots;
                    tau[i] = nm as f64;
                    let a = 1.0 - (1.0 - p).powi(nm as i32);
                    let fnm = conv[nm as usize]
                        .as_ref()
                        .expect("every mode's convolution is precomputed");
                    for (h, fh) in fnm.iter() {
                        let (e2, active) = dev.after_job(e, h, mode.energy);
                        add(
                            &mut acc,
                            &mut touched,
                            Self::index_in(b, 1, e2, active as u8),
                            a * fh,
                        );
                        add(
                            &mut acc,
                            &mut touched,
                            Self::index_in(b, 0, e2, active as u8),
                            (1.0 - a) * fh,
                        );
                    }
                }
            }
            touched.sort_unstable();
            for &j in &touched {
                cols.push(j as u32);
                vals.push(acc[j]);
                acc[j] = 0.0;
            }
            touched.clear();
            row_ptr.push(cols.len());
        }
        Ok(Self {
            capacity: b,
            p,
            row_ptr,
            cols,
            vals,
            tau,
            slots,
        })
    }

    /// Number of states, 4(B + 1).
    pub fn len(&self) -> usize {
        self.tau.len()
    }

    /// Always false: a chain has at least the states of a one-unit battery.
    pub fn is_empty(&self) -> bool {
        self.tau.is_empty()
    }

    /// Battery capacity B.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Arrival probability the chain was built for.
    pub fn arrival(&self) -> f64 {
        self.p
    }

    /// Index of state (q, e, s): `(2q + s)(B + 1) + e`.
    pub fn index(&self, q: u8, e: i64, s: u8) -> usize {
        Self::index_in(self.capacity, q, e, s)
    }

    fn index_in(b: i64, q: u8, e: i64, s: u8) -> usize {
        (2 * q as usize + s as usize) * (b as usize + 1) + e as usize
    }

    /// The state at index `i`.
    pub fn state(&self, i: usize) -> State {
        Self::state_of(self.capacity, i)
    }

    fn state_of(b: i64, i: usize) -> State {
        let levels = b as usize + 1;
        let sub = i / levels;
        State {
            q: (sub / 2) as u8,
            e: (i % levels) as i64,
            s: (sub % 2) as u8,
        }
    }

    /// Non-zero entries of row `i` as (column, probability), columns ascending.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let r = self.row_ptr[i]..self.row_ptr[i + 1];
        self.cols[r.clone()]
            .iter()
            .map(|&c| c as usize)
            .zip(self.vals[r].iter().copied())
    }

    /// Number of stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.vals.len()
    }

    /// R7 dwell time of state `i` in slots.
    pub fn dwell(&self, i: usize) -> f64 {
        self.tau[i]
    }

    /// Slots per job of the mode state `i` processes in.
    pub fn job_slots(&self, i: usize) -> f64 {
        self.slots[i]
    }

    /// `x P` for a row vector `x` (used to check invariance and to propagate transient laws).
    pub fn left_mul(&self, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.len()];
        for (i, &xi) in x.iter().enumerate() {
            if xi != 0.0 {
                for (j, pij) in self.row(i) {
                    y[j] += xi * pij;
                }
            }
        }
        y
    }

    pub(crate) fn csr(&self) -> (&[usize], &[u32], &[f64]) {
        (&self.row_ptr, &self.cols, &self.vals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::Harvest;
    use crate::modes::{ModeTable, paper};

    fn chain(p: f64) -> Chain {
        Chain::build(
            &DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap()),
            p,
        )
        .unwrap()
    }

    #[test]
    fn shape_and_indexing() {
        let c = chain(0.3);
        assert_eq!(c.len(), 404);
        for i in 0..c.len() {
            let st = c.state(i);
            assert_eq!(c.index(st.q, st.e, st.s), i);
        }
        assert_eq!(c.index(1, 7, 0), 2 * 101 + 7);
    }

    #[test]
    fn rules_by_hand() {
        let c = chain(0.3);
        let row = |q, e, s| -> Vec<(State, f64)> {
            c.row(c.index(q, e, s))
                .map(|(j, w)| (c.state(j), w))
                .collect()
        };
        // R2 at e = 90: harvests 6..14 cap at 100 from 10 up, so e' = 96..99 get 1/9, 100 gets 5/9.
        let r = row(0, 90, 1);
        let w = |q, e| {
            r.iter()
                .find(|(st, _)| *st == State { q, e, s: 1 })
                .map(|x| x.1)
                .unwrap_or(0.0)
        };
        assert!((w(1, 96) - 0.3 / 9.0).abs() < 1e-12);
        assert!((w(0, 100) - 0.7 * 5.0 / 9.0).abs() < 1e-12);
        assert_eq!(r.len(), 10);
        // R3 from e = 30: e' = 36..44, wakes (s' = 1) from 40 on, q kept.
        let r = row(1, 30, 0);
        assert!(
            r.iter()
                .all(|(st, _)| st.q == 1 && (st.s == 1) == (st.e >= 40))
        );
        assert_eq!(r.len(), 9);
        // R4 at e = 70 (60 W, 1 slot, 23 units): e' = 53..61, all active; a = p.
        let r = row(1, 70, 1);
        assert!(
            r.iter()
                .all(|(st, _)| st.e >= 53 && st.e <= 61 && st.s == 1)
        );
        let acc: f64 = r.iter().filter(|(st, _)| st.q == 1).map(|x| x.1).sum();
        assert!((acc - 0.3).abs() < 1e-12);
        // R4 at e = 10 (15 W, 3 slots, 26 units): e' = clip(10 + 18..42 - 26) = 2..26.
        let r = row(1, 10, 1);
        let acc: f64 = r.iter().filter(|(st, _)| st.q == 1).map(|x| x.1).sum();
        assert!((acc - (1.0 - 0.7f64.powi(3))).abs() < 1e-12);
        assert!(r.iter().all(|(st, _)| (st.s == 1) == (st.e >= 20)));
        assert_eq!(c.dwell(c.index(1, 10, 1)), 3.0);
        assert_eq!(c.dwell(c.index(1, 10, 0)), 1.0);
    }

    #[test]
    fn clip_at_zero_merges_mass() {
        let dev = DeviceParams::paper(
            Harvest::uniform(0, 2).unwrap(),
            ModeTable::fixed(paper::w60()).unwrap(),
        );
        let c = Chain::build(&dev, 1.0).unwrap();
        // e = 5, cost 23: every harvest ends at 0, all with q' = 1 (p = 1).
        let r: Vec<_> = c.row(c.index(1, 5, 1)).collect();
        assert_eq!(r, vec![(c.index(1, 0, 0), 1.0)]);
    }

    #[test]
    fn bad_arrival_rate_is_named() {
        let dev = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
        assert!(
            Chain::build(&dev, 1.5)
                .unwrap_err()
                .to_string()
                .contains("arrival probability")
        );
        assert!(Chain::build(&dev, f64::NAN).is_err());
    }
}
