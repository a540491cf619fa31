//! Spot checks: the client re-runs the session's prefix through independently chosen replicas
//! and compares every hop's outputs, so a peer that returns hidden states of its choosing is
//! caught.
//!
//! With spot checks on, every forward asks each hop for a copy of its output (taps, each checked
//! against the hop's signed receipt; one row per hop per token, a few KiB), and the client keeps
//! them. On a checked step (the first [`SpotChecks::first`] forwards, then a drawn
//! [`SpotChecks::fraction`]) it runs the prefix through a second session, on a route that uses,
//! for every range, another replica where one exists (kept open between checks, so each check
//! sends only the inputs that came since the last, merged into one chunk), and compares the two
//! runs position by position, hop by hop ([`earliest_disagreement`]). So a check covers
//! everything before it: a
//! lie on an unchecked step is caught at the next check, and at the earliest differing position
//! the hops before the first differing one still agree, which localizes the liar even after its
//! lie has moved every later hop's cache.
//!
//! The check replays the steps as the main route took them: the prompt in the same chunks, and
//! each run of decode steps as one stepwise forward that every hop computes row by row as those
//! steps were, so on the same build and kernels the two runs agree bit for bit. (Decode steps
//! merged into one plain chunk moved hidden states by about 3e-7 relative in f32, and by 3e-2 to
//! 5.5e-2 with 8-bit activations, where honest peers were then banned. Since 2026-12-04 a CPU
//! computes a plain chunk row by row as well, so there the two agree; on GPUs they still do
//! not.) Outputs are compared
//! within [`SpotChecks::tolerance`] (relative L2 per row, 1e-3 by default), for replicas on
//! other kernels. The first range that disagrees gets a third opinion: the client runs
//! that range itself on the check's inputs, in the same forwards ([`Referee`]; it once ran plain
//! chunks, which with 8-bit activations could blame an honest peer). Whoever disagrees with it is
//! banned for this client; if it was on the main route, the route is repaired and the step
//! replayed, so from the detection on the text is what an honest swarm gives. Tokens emitted
//! between an unchecked lie and the check that catches it stay emitted (a stream cannot take
//! them back); the always-checked first forwards keep a peer that lies from the start out of
//! the text entirely.
//!
//! This module holds the pure parts: which steps to check, and how outputs are compared.

use std::sync::Arc;

use serde::Serialize;
use sunswarm_models::HiddenStates;
use sunswarm_protocol::BlockRange;

/// How a client spot-checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotChecks {
    /// Fraction of steps checked (0 turns checks off, the first steps included).
    pub fraction: f64,
    /// The first forwards of every session that are always checked (the prompt and the first
    /// tokens: a peer that lies from the start is caught before its lie reaches the text).
    pub first: u32,
    /// Largest relative L2 distance per row at which two outputs still agree.
    pub tolerance: f32,
}

/// Checks 2 % of steps by default, and the first two forwards.
pub const DEFAULT_FRACTION: f64 = 0.02;
pub const DEFAULT_FIRST: u32 = 2;
/// Replicas on other kernels (AVX2 against AVX-512) differ by ~1e-6 relative; a perturbation
/// that steers the text moves hidden states by far more (a scale of 1.01 is 1e-2).
pub const DEFAULT_TOLERANCE: f32 = 1e-3;

impl Default for SpotChecks {
    fn default() -> Self {
        SpotChecks {
            fraction: DEFAULT_FRACTION,
            first: DEFAULT_FIRST,
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

impl SpotChecks {
    /// No checks at all.
    pub fn off() -> Self {
        SpotChecks {
            fraction: 0.0,
            first: 0,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Checks the flags' values.
    pub fn new(fraction: f64, first: u32, tolerance: f32) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "--spot-check {fraction} is not a fraction in [0, 1]"
            ));
        }
        if !(tolerance.is_finite() && tolerance > 0.0) {
            return Err(format!(
                "--spot-check-tolerance {tolerance} must be above 0"
            ));
        }
        Ok(SpotChecks {
            fraction,
            first,
            tolerance,
        })
    }

    /// Whether forward `step` is checked, given a uniform draw in [0, 1).
    pub fn selects(&self, step: u32, draw: f64) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        step < self.first || draw < self.fraction
    }
}

/// What a generation's spot checks found, for the JSON output.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SpotReport {
    /// Steps checked.
    pub checked: usize,
    /// Checks where some range disagreed, or the last hop's token was not the head's.
    pub mismatches: usize,
    /// Tokens picked by the last hop that were checked against this client's LM head.
    pub tokens_checked: usize,
    /// Peers banned on a check (peer ids).
    pub banned: Vec<String>,
    /// The steps that were checked, in order.
    pub steps: Vec<u32>,
    /// Hops that checks ran through the very peer they checked, because no other replica of
    /// its blocks was known (summed over the checks opened): those hops were not verified.
    pub self_checked_hops: usize,
}

/// One forward of a replay: its rows, and whether they are one-token steps taken as one stepwise
/// forward (each row computed as its step was) rather than a prompt chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub rows: usize,
    pub stepwise: bool,
}

/// Runs a block range in the client, for a third opinion.
pub trait Referee: Send + Sync {
    /// Runs `blocks` over `input` (positions from 0) with a fresh cache, in `forwards` (their
    /// rows add up to the input's), as the main route took them, so that an honest peer on the
    /// same build gives the same bits.
    fn run(
        &self,
        blocks: BlockRange,
        input: &HiddenStates,
        forwards: &[Forward],
    ) -> Result<HiddenStates, String>;
}

/// A shared referee.
pub type SharedReferee = Arc<dyn Referee>;

/// Relative L2 distance of row `a` from row `b`: |a - b| / max(|b|, 1e-6).
pub fn row_distance(a: &[f32], b: &[f32]) -> f32 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = f64::from(*x) - f64::from(*y);
        diff += d * d;
        norm += f64::from(*y) * f64::from(*y);
    }
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    (diff.sqrt() / norm.sqrt().max(1e-6)) as f32
}

/// Where a session's outputs and a check run's first part: the earliest position at which some
/// hop's output disagrees, and the first such hop there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disagreement {
    pub position: usize,
    pub hop: usize,
    pub distance: f32,
}

/// The earliest (position, hop) at which `main[hop]` and `check[hop]` (every hop's outputs over
/// the same positions) disagree beyond `tolerance`. Position first: a hop that lied once moves
/// every later hop at that position and, through their caches, at later positions too, but at
/// the earliest differing position the hops before it still agree, so the first hop to differ
/// there received the same inputs as its check, and it (or its check) is wrong.
pub fn earliest_disagreement(
    main: &[HiddenStates],
    check: &[HiddenStates],
    tolerance: f32,
) -> Option<Disagreement> {
    let whole = Some(Disagreement {
        position: 0,
        hop: 0,
        distance: f32::INFINITY,
    });
    if main.len() != check.len() {
        return whole;
    }
    for (m, c) in main.iter().zip(check) {
        if m.n_tokens != c.n_tokens || m.dim != c.dim || m.dim == 0 {
            return whole;
        }
    }
    let n = main.first().map_or(0, |m| m.n_tokens);
    for position in 0..n {
        for (hop, (m, c)) in main.iter().zip(check).enumerate() {
            let row = position * m.dim..(position + 1) * m.dim;
            let distance = row_distance(&m.data[row.clone()], &c.data[row]);
            // A NaN distance never agrees.
            if distance.is_nan() || distance > tolerance {
                return Some(Disagreement {
                    position,
                    hop,
                    distance,
                });
            }
        }
    }
    None
}

/// The largest row distance between the first `rows` rows of `a` and of `b` (infinite when the
/// shapes do not fit). A NaN distance is kept: it never agrees.
pub fn head_distance(a: &HiddenStates, b: &HiddenStates, rows: usize) -> f32 {
    if a.dim != b.dim || a.dim == 0 || rows > a.n_tokens || rows > b.n_tokens {
        return f32::INFINITY;
    }
    let end = rows * a.dim;
    a.data[..end]
        .chunks(a.dim)
        .zip(b.data[..end].chunks(b.dim))
        .map(|(x, y)| row_distance(x, y))
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// Joins per-chunk outputs of one hop into one tensor of every position.
pub fn concat(parts: &[HiddenStates]) -> HiddenStates {
    let dim = parts.first().map_or(0, |p| p.dim);
    HiddenStates {
        n_tokens: parts.iter().map(|p| p.n_tokens).sum(),
        dim,
        data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
    }
}

/// Who a third opinion shows to be wrong, given each side's distance from the referee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The main route's hop disagrees with the referee; the check's replica agrees.
    Main,
    /// The check's replica disagrees; the main route's hop agrees.
    Check,
    Both,
    /// Both agree with the referee (they were just beyond the tolerance from each other).
    Neither,
}

pub fn verdict(main_distance: f32, check_distance: f32, tolerance: f32) -> Verdict {
    match (main_distance <= tolerance, check_distance <= tolerance) {
        (false, true) => Verdict::Main,
        (true, false) => Verdict::Check,
        (false, false) => Verdict::Both,
        (true, true) => Verdict::Neither,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(rows: &[&[f32]]) -> HiddenStates {
        HiddenStates {
            n_tokens: rows.len(),
            dim: rows[0].len(),
            data: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn the_first_steps_are_always_checked_and_then_a_fraction() {
        let s = SpotChecks::new(0.1, 2, 1e-3).unwrap();
        assert!(s.selects(0, 0.99) && s.selects(1, 0.99));
        assert!(!s.selects(2, 0.99));
        assert!(s.selects(7, 0.05));
        assert!(!SpotChecks::off().selects(0, 0.0));
        // Over many uniform draws, the rate of checked later steps is the fraction.
        use rand::{Rng, SeedableRng};
        for fraction in [0.02, 0.1, 0.5] {
            let s = SpotChecks::new(fraction, 2, 1e-3).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let n = 200_000;
            let hits = (0..n).filter(|_| s.selects(100, rng.random())).count();
            let mean = fraction * n as f64;
            let sd = (n as f64 * fraction * (1.0 - fraction)).sqrt();
            assert!((hits as f64 - mean).abs() < 5.0 * sd, "{fraction}: {hits}");
        }
        assert!(SpotChecks::new(1.5, 0, 1e-3).is_err());
        assert!(SpotChecks::new(0.1, 0, 0.0).is_err());
        assert!(SpotChecks::new(0.1, 0, f32::NAN).is_err());
    }

    #[test]
    fn distances_are_relative_per_row() {
        assert_eq!(row_distance(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((row_distance(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-6);
        assert_eq!(row_distance(&[1.0], &[1.0, 2.0]), f32::INFINITY);
        let a = hs(&[&[1.0, 1.0], &[5.0, 5.0]]);
        let b = hs(&[&[1.0, 1.0], &[9.0, 9.0]]);
        assert_eq!(head_distance(&a, &b, 1), 0.0);
        assert!(head_distance(&a, &b, 2) > 0.4);
        assert_eq!(head_distance(&a, &b, 3), f32::INFINITY);
        let nan = hs(&[&[f32::NAN, 1.0], &[5.0, 5.0]]);
        assert!(head_distance(&nan, &a, 2).is_nan());
    }

    #[test]
    fn the_earliest_position_and_the_first_hop_there_are_named() {
        let t = 1e-3;
        let good = hs(&[&[1.0, 2.0], &[3.0, 4.0], &[5.0, 6.0]]);
        // Hop 1 lied at position 1: hop 1 and hop 2 differ from there on; hop 2 also differs
        // at position 2 through its cache.
        let lied = hs(&[&[1.0, 2.0], &[3.5, 4.0], &[5.0, 6.0]]);
        let moved = hs(&[&[1.0, 2.0], &[9.0, 4.0], &[7.0, 6.0]]);
        let main = [good.clone(), lied, moved];
        let check = [good.clone(), good.clone(), good.clone()];
        let d = earliest_disagreement(&main, &check, t).unwrap();
        assert_eq!((d.position, d.hop), (1, 1));
        assert!(d.distance > 0.05);
        assert_eq!(earliest_disagreement(&check, &check, t), None);
        // Shapes that do not fit disagree at once.
        assert_eq!(
            earliest_disagreement(&check[..2], &check, t).map(|d| d.hop),
            Some(0)
        );
        let short = hs(&[&[1.0, 2.0]]);
        assert_eq!(
            earliest_disagreement(&[short], std::slice::from_ref(&good), t).map(|d| d.position),
            Some(0)
        );
        // NaN never agrees.
        let nan = hs(&[&[1.0, 2.0], &[f32::NAN, 4.0], &[5.0, 6.0]]);
        assert_eq!(
            earliest_disagreement(&[nan], &[good], t).map(|d| d.position),
            Some(1)
        );
    }

    #[test]
    fn the_referee_decides_who_is_wrong() {
        assert_eq!(verdict(0.5, 0.0, 1e-3), Verdict::Main);
        assert_eq!(verdict(0.0, 0.5, 1e-3), Verdict::Check);
        assert_eq!(verdict(0.5, 0.5, 1e-3), Verdict::Both);
        assert_eq!(verdict(1e-4, 2e-4, 1e-3), Verdict::Neither);
        assert_eq!(verdict(f32::NAN, 0.0, 1e-3), Verdict::Main);
    }
}
