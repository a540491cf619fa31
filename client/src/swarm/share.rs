//! A cap on any one peer's share of a range's routes.
//!
//! Route choice leans on what peers say about themselves (battery, harvest, max job rate), and
//! a peer can say anything: one that announces the best possible state would take nearly every
//! route of its range under an energy-aware policy. Announced values are clamped to their
//! meaning ([`super::route::sanitize`]), and on top of that no peer may take more than
//! `max_share` of the routes that stand at one block: [`ShareCapped`] remembers the last
//! [`SHARE_WINDOW`] choices at each block, and a candidate that already has its share of them
//! is left out while another candidate remains. So in any [`SHARE_WINDOW`] consecutive choices
//! at a block, one peer gets at most `ceil(max_share x SHARE_WINDOW)` (a range served by one
//! peer has nobody to share with and is not capped).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rand::RngCore;
use sunswarm_protocol::{Announcement, Hop, ModelDigest};

use super::route::Routing;
use super::session::ForwardTiming;
use super::{CsUcbRouter, OwnedRouting};

/// Default `--max-route-share`: above what any honest weighting gives one of two replicas in
/// the policies' usual range, well below "all of them".
pub const DEFAULT_MAX_ROUTE_SHARE: f64 = 0.75;
/// Choices at a block that a share is counted over.
pub const SHARE_WINDOW: usize = 64;

/// Why a share cap was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--max-route-share {0} must be a fraction in (0, 1]")]
pub struct BadShare(pub f64);

/// A [`Routing`] whose choices give no peer more than `max_share` of a block's routes.
#[derive(Debug)]
pub struct ShareCapped<R> {
    inner: R,
    /// Most choices of [`SHARE_WINDOW`] one peer may get.
    max_count: usize,
    recent: Mutex<HashMap<(ModelDigest, u32), Window>>,
}

/// The peers of the last choices at one block, oldest first.
type Window = VecDeque<Vec<u8>>;

impl<R: Routing> ShareCapped<R> {
    pub fn new(inner: R, max_share: f64) -> Result<Self, BadShare> {
        if !(max_share > 0.0 && max_share <= 1.0) {
            return Err(BadShare(max_share));
        }
        Ok(ShareCapped {
            inner,
            max_count: (max_share * SHARE_WINDOW as f64).ceil() as usize,
            recent: Mutex::new(HashMap::new()),
        })
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R: Routing> Routing for ShareCapped<R> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn choose(
        &self,
        anns: &[Announcement],
        start: u32,
        candidates: &[usize],
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        let &first = candidates.first()?;
        let key = (anns[first].model_id, start);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let window = recent.entry(key).or_default();
        let count = |peer: &[u8]| window.iter().filter(|p| p.as_slice() == peer).count();
        let allowed: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| count(&anns[i].peer_id) < self.max_count)
            .collect();
        // The cap only bites when someone else can take the route.
        let pick = if !allowed.is_empty() && allowed.len() < candidates.len() {
            self.inner
                .choose(anns, start, &allowed, rng)
                .filter(|&p| p < allowed.len())
                .and_then(|p| candidates.iter().position(|&c| c == allowed[p]))
                .or_else(|| self.inner.choose(anns, start, candidates, rng))
        } else {
            self.inner.choose(anns, start, candidates, rng)
        };
        if let Some(&chosen) = pick.and_then(|p| candidates.get(p)) {
            window.push_back(anns[chosen].peer_id.clone());
            while window.len() > SHARE_WINDOW {
                window.pop_front();
            }
        }
        pick
    }

    fn observe(&self, model: &ModelDigest, route: &[Hop], steps: &[ForwardTiming]) {
        self.inner.observe(model, route, steps)
    }

    fn refused(&self, model: &ModelDigest, hop: &Hop) {
        self.inner.refused(model, hop)
    }

    fn failed(&self, model: &ModelDigest, hop: &Hop) {
        self.inner.failed(model, hop)
    }
}

impl OwnedRouting for ShareCapped<Box<dyn OwnedRouting>> {
    fn learned(&self) -> Option<&CsUcbRouter> {
        self.inner.learned()
    }
}

impl Routing for Box<dyn OwnedRouting> {
    fn name(&self) -> &'static str {
        self.as_ref().name()
    }

    fn choose(
        &self,
        anns: &[Announcement],
        start: u32,
        candidates: &[usize],
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        self.as_ref().choose(anns, start, candidates, rng)
    }

    fn observe(&self, model: &ModelDigest, route: &[Hop], steps: &[ForwardTiming]) {
        self.as_ref().observe(model, route, steps)
    }

    fn refused(&self, model: &ModelDigest, hop: &Hop) {
        self.as_ref().refused(model, hop)
    }

    fn failed(&self, model: &ModelDigest, hop: &Hop) {
        self.as_ref().failed(model, hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::route::{Sampled, plan_with, weights};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use sunswarm_energy::policy::LongTerm;
    use sunswarm_protocol::{BlockRange, EnergyState};

    fn ann(id: u8, start: u32, end: u32, rate: f32) -> Announcement {
        Announcement {
            peer_id: vec![id; 4],
            addrs: vec![],
            model_id: [1; 32],
            n_layers: 20,
            blocks: BlockRange { start, end },
            backend: "cpu".into(),
            throughput: 1.0,
            max_sessions: 4,
            active_sessions: 0,
            energy: EnergyState {
                max_job_rate: rate,
                ..EnergyState::mains()
            },
            timestamp_ms: 0,
            expires_ms: 1000,
        }
    }

    /// Share of each peer in the choices at `block`, over `n` routes.
    fn shares(routing: &dyn Routing, anns: &[Announcement], n: usize, seed: u64) -> Vec<f64> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0usize; anns.len()];
        for _ in 0..n {
            for i in plan_with(anns, 20, routing, &mut r).unwrap() {
                counts[i] += 1;
            }
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    #[test]
    fn an_inflated_peer_gets_at_most_its_share_in_every_window() {
        // Peer 2 claims a rate 30 times its replica's (clamped to 1, still 10x): under
        // long-term it would take 91 % of its range's routes.
        let anns = vec![ann(1, 0, 10, 1.0), ann(2, 10, 20, 1.0), ann(3, 10, 20, 0.1)];
        let w = weights(&LongTerm, &anns, &[1, 2]);
        assert!(w[0] / (w[0] + w[1]) > 0.9, "{w:?}");
        let uncapped = shares(&Sampled(&LongTerm), &anns, 2000, 1);
        assert!(uncapped[1] > 0.85, "{uncapped:?}");
        let capped = ShareCapped::new(Sampled(&LongTerm), 0.6).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(2);
        let mut seq = Vec::new();
        for _ in 0..2000 {
            let route = plan_with(&anns, 20, &capped, &mut r).unwrap();
            seq.push(route[1] == 1);
        }
        let max_count = (0.6 * SHARE_WINDOW as f64).ceil() as usize;
        for w in seq.windows(SHARE_WINDOW) {
            assert!(w.iter().filter(|&&b| b).count() <= max_count);
        }
        let share = seq.iter().filter(|&&b| b).count() as f64 / seq.len() as f64;
        assert!(
            (0.55..=0.6 + 1.0 / SHARE_WINDOW as f64).contains(&share),
            "{share}"
        );
        // The range with a single peer is never capped.
        assert_eq!(shares(&capped, &anns, 100, 3)[0], 1.0);
    }

    #[test]
    fn an_uncontested_cap_changes_nothing() {
        // Two equal replicas under a 0.75 cap: the draw stays fair.
        let anns = vec![ann(1, 0, 20, 1.0), ann(2, 0, 20, 1.0)];
        let capped = ShareCapped::new(Sampled(&LongTerm), DEFAULT_MAX_ROUTE_SHARE).unwrap();
        let s = shares(&capped, &anns, 4000, 5);
        assert!((s[0] - 0.5).abs() < 0.03, "{s:?}");
    }

    #[test]
    fn bad_shares_are_refused() {
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(ShareCapped::new(Sampled(&LongTerm), bad).is_err());
        }
        assert!(ShareCapped::new(Sampled(&LongTerm), 1.0).is_ok());
    }
}
