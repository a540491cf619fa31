//! Scheduling policies (spec sec. 6): weights over the candidate peers of one layer, computed from
//! the energy state each peer gossips.
//!
//! A policy sees only [`PeerEnergyState`] records, so a client can run it on gossiped state and a
//! simulation on its emulated devices, with the same code. Peers that are not available (R6: in
//! power saving, or their single pending place taken) always get weight 0; the others' weights sum
//! to 1, or every weight is 0 when no peer is available (the job is dropped).

use serde::{Deserialize, Serialize};

/// The energy state a peer announces; plain data, carried over the network as is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeerEnergyState {
    /// Battery level in energy units.
    pub battery: i64,
    /// Battery capacity in energy units.
    pub capacity: i64,
    /// In power saving: refuses work until it recovers.
    pub power_saving: bool,
    /// Can take one more job now (R6: active and its pending place is free).
    pub available: bool,
    /// eq. 5 maximum input rate of this peer, from its own chain (jobs per slot).
    pub lambda_max: f64,
    /// Index of its current power mode in its mode table (0 = lowest power).
    pub mode: u8,
    /// Whether its battery puts a dynamic table in the critical (lowest) mode.
    pub critical: bool,
    /// Probability that the peer falls into power saving within the next few stages if it takes a
    /// job now, from its chain's transient law (see [`crate::profile`]); 0 when unknown.
    pub saving_risk: f64,
}

impl PeerEnergyState {
    /// Whether the peer may be given a job.
    pub fn eligible(&self) -> bool {
        self.available && !self.power_saving
    }
}

/// A rule that turns candidate peers' states into selection probabilities.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Short name used in tables and JSON.
    fn name(&self) -> &'static str;

    /// Writes one weight per peer into `out` (cleared first): 0 for ineligible peers, summing to 1
    /// over eligible ones, all 0 if none is eligible.
    fn weights_into(&self, peers: &[PeerEnergyState], out: &mut Vec<f64>);

    /// Allocating convenience around [`Policy::weights_into`].
    fn weights(&self, peers: &[PeerEnergyState]) -> Vec<f64> {
        let mut out = Vec::with_capacity(peers.len());
        self.weights_into(peers, &mut out);
        out
    }
}

/// Normalises `out` in place; leaves all zeros if the total is not positive.
fn normalise(out: &mut [f64]) -> bool {
    let total: f64 = out.iter().sum();
    if total > 0.0 && total.is_finite() {
        out.iter_mut().for_each(|w| *w /= total);
        true
    } else {
        out.iter_mut().for_each(|w| *w = 0.0);
        false
    }
}

/// Long-term raw weights: lambda_max over eligible peers (negative or NaN rates count as 0).
fn long_term_raw(peers: &[PeerEnergyState], out: &mut Vec<f64>) {
    out.clear();
    out.extend(peers.iter().map(|p| {
        if p.eligible() && p.lambda_max > 0.0 {
            p.lambda_max
        } else {
            0.0
        }
    }));
}

/// Equal weights over available peers (paper).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uniform;

impl Policy for Uniform {
    fn name(&self) -> &'static str {
        "uniform"
    }
    fn weights_into(&self, peers: &[PeerEnergyState], out: &mut Vec<f64>) {
        out.clear();
        out.extend(peers.iter().map(|p| if p.eligible() { 1.0 } else { 0.0 }));
        normalise(out);
    }
}

/// eq. 6: weights proportional to each peer's maximum input rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct LongTerm;

impl Policy for LongTerm {
    fn name(&self) -> &'static str {
        "longterm"
    }
    fn weights_into(&self, peers: &[PeerEnergyState], out: &mut Vec<f64>) {
        long_term_raw(peers, out);
        if !normalise(out) {
            // Every eligible peer reports a zero rate: still serve the job rather than drop it.
            Uniform.weights_into(peers, out);
        }
    }
}

/// Long-term weights, each critical-mode peer's cut by the share beta / n_l of the layer that is
/// critical (paper idea, spec form).
#[derive(Debug, Clone, Copy, Default)]
pub struct Adaptive;

impl Policy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }
    fn weights_into(&self, peers: &[PeerEnergyState], out: &mut Vec<f64>) {
        long_term_raw(peers, out);
        let n_l = peers.len().max(1) as f64;
        let beta = peers.iter().filter(|p| p.eligible() && p.critical).count() as f64;
        let cut = 1.0 - beta / n_l;
        for (w, p) in out.iter_mut().zip(peers) {
            if p.eligible() && p.critical {
                *w *= cut;
            }
        }
        if !normalise(out) {
            LongTerm.weights_into(peers, out);
        }
    }
}

/// Our policy: long-term weights times the chance that the peer does *not* fall into power
/// saving soon if given the job, `lambda_max * (1 - saving_risk)^sharpness`. It reads the peer's
/// instantaneous battery through its chain's transient law, instead of the paper's coarse
/// "critical mode" flag. If every eligible peer is sure to fall, it falls back to long-term.
#[derive(Debug, Clone, Copy)]
pub struct Lookahead {
    /// Exponent on the survival probability: 1 is proportional, larger avoids risky peers harder.
    pub sharpness: f64,
}

impl Default for Lookahead {
    fn default() -> Self {
        Self { sharpness: 2.0 }
    }
}

impl Policy for Lookahead {
    fn name(&self) -> &'static str {
        "lookahead"
    }
    fn weights_into(&self, peers: &[PeerEnergyState], out: &mut Vec<f64>) {
        long_term_raw(peers, out);
        for (w, p) in out.iter_mut().zip(peers) {
            let survive = (1.0 - p.saving_risk).clamp(0.0, 1.0);
            *w *= survive.powf(self.sharpness);
        }
        if !normalise(out) {
            LongTerm.weights_into(peers, out);
        }
    }
}

/// The policies by name, for command lines and configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// [`Uniform`].
    Uniform,
    /// [`LongTerm`].
    #[serde(rename = "longterm")]
    LongTerm,
    /// [`Adaptive`].
    Adaptive,
    /// [`Lookahead`] with its default sharpness.
    Lookahead,
}

impl PolicyKind {
    /// The paper's three policies, in the order of its figures.
    pub const PAPER: [PolicyKind; 3] = [
        PolicyKind::Uniform,
        PolicyKind::LongTerm,
        PolicyKind::Adaptive,
    ];
    /// The paper's three and ours.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Uniform,
        PolicyKind::LongTerm,
        PolicyKind::Adaptive,
        PolicyKind::Lookahead,
    ];

    /// The policy object.
    pub fn policy(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::Uniform => Box::new(Uniform),
            PolicyKind::LongTerm => Box::new(LongTerm),
            PolicyKind::Adaptive => Box::new(Adaptive),
            PolicyKind::Lookahead => Box::new(Lookahead::default()),
        }
    }

    /// Name used in tables and the JSON document.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Uniform => "uniform",
            PolicyKind::LongTerm => "longterm",
            PolicyKind::Adaptive => "adaptive",
            PolicyKind::Lookahead => "lookahead",
        }
    }
}

/// Picks an index from weights with a uniform draw `u` in [0, 1); `None` if all weights are 0.
pub fn pick(weights: &[f64], u: f64) -> Option<usize> {
    let mut acc = 0.0;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last = Some(i);
            if u < acc {
                return Some(i);
            }
        }
    }
    // Rounding can leave the total a hair under 1: the last positive weight takes the remainder.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(lambda: f64, critical: bool, available: bool) -> PeerEnergyState {
        PeerEnergyState {
            battery: 50,
            capacity: 100,
            power_saving: false,
            available,
            lambda_max: lambda,
            mode: 1,
            critical,
            saving_risk: 0.0,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn uniform_and_long_term() {
        let peers = [
            peer(0.1, false, true),
            peer(0.3, false, true),
            peer(0.5, false, false),
        ];
        assert!(close(&Uniform.weights(&peers), &[0.5, 0.5, 0.0]));
        assert!(close(&LongTerm.weights(&peers), &[0.25, 0.75, 0.0]));
        let mut saving = peers;
        saving[0].power_saving = true;
        assert!(close(&Uniform.weights(&saving), &[0.0, 1.0, 0.0]));
    }

    #[test]
    fn adaptive_cuts_critical_peers_by_their_share() {
        // One of three critical: its weight times 2/3.
        let peers = [
            peer(0.3, true, true),
            peer(0.3, false, true),
            peer(0.3, false, true),
        ];
        let w = Adaptive.weights(&peers);
        let raw = [0.3 * 2.0 / 3.0, 0.3, 0.3];
        let t: f64 = raw.iter().sum();
        assert!(close(&w, &raw.map(|x| x / t)));
        // All three critical: every weight becomes 0, so long-term is used.
        let all = [
            peer(0.1, true, true),
            peer(0.3, true, true),
            peer(0.4, true, true),
        ];
        assert!(close(&Adaptive.weights(&all), &LongTerm.weights(&all)));
        // Two critical and one unavailable: beta = 2 of n_l = 3.
        let mixed = [
            peer(0.2, true, true),
            peer(0.2, true, true),
            peer(0.2, false, false),
        ];
        assert!(close(&Adaptive.weights(&mixed), &[0.5, 0.5, 0.0]));
    }

    #[test]
    fn nobody_available_means_all_zero() {
        let peers = [peer(0.1, false, false), peer(0.3, true, false)];
        for k in PolicyKind::ALL {
            let w = k.policy().weights(&peers);
            assert!(w.iter().all(|&x| x == 0.0), "{}", k.name());
            assert_eq!(pick(&w, 0.3), None);
        }
        assert!(Uniform.weights(&[]).is_empty());
    }

    #[test]
    fn lookahead_prefers_safe_peers_and_falls_back() {
        let mut a = peer(0.4, false, true);
        let mut b = peer(0.4, false, true);
        a.saving_risk = 0.5;
        b.saving_risk = 0.0;
        let w = Lookahead { sharpness: 1.0 }.weights(&[a, b]);
        assert!(close(&w, &[1.0 / 3.0, 2.0 / 3.0]));
        a.saving_risk = 1.0;
        b.saving_risk = 1.0;
        assert!(close(&Lookahead::default().weights(&[a, b]), &[0.5, 0.5]));
    }

    #[test]
    fn pick_follows_cumulative_weights() {
        let w = [0.0, 0.25, 0.0, 0.75];
        assert_eq!(pick(&w, 0.0), Some(1));
        assert_eq!(pick(&w, 0.2499), Some(1));
        assert_eq!(pick(&w, 0.25), Some(3));
        assert_eq!(pick(&w, 0.999_999_999_999_999_9), Some(3));
    }

    #[test]
    fn state_round_trips_through_serde() {
        let p = PeerEnergyState {
            saving_risk: 0.125,
            ..peer(0.25, true, true)
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"lambda_max\":0.25"), "{json}");
        assert_eq!(serde_json::from_str::<PeerEnergyState>(&json).unwrap(), p);
        assert_eq!(
            serde_json::to_string(&PolicyKind::LongTerm).unwrap(),
            "\"longterm\""
        );
    }
}
