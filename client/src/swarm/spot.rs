//! Spot checks: the client re-runs a few steps through independently chosen replicas and
//! compares every hop's output, so a peer that returns hidden states of its choosing is caught.
//!
//! On a checked step the main route copies each hop's output to the client (taps, each checked
//! against the hop's signed receipt). The client then sends the whole prefix through a second
//! route that uses, for every range, another replica where one exists, and compares, range by
//! range, the rows of the checked step. Both runs use the same build and backend: where the check
//! replays the prefix in the chunks the main route saw (the prompt), outputs agree bit for bit;
//! decode steps are replayed merged into one chunk, whose different summation order moves
//! hidden states by about 1e-6 relative, so outputs are compared within [`SpotChecks::tolerance`]
//! (relative L2 per row). The first range where the two disagree gets a third opinion: the
//! client runs that range itself ([`Referee`]). Whoever disagrees with the referee is banned for
//! this client; if it was on the main route, the route is repaired and the step replayed, so the
//! text is what an honest swarm gives.
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
/// Merged and chunked runs differ by ~1e-6 relative; a perturbation that steers the text moves
/// hidden states by far more (a scale of 1.01 is 1e-2).
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
    /// Checks where some range disagreed.
    pub mismatches: usize,
    /// Peers banned on a check (peer ids).
    pub banned: Vec<String>,
    /// The steps that were checked, in order.
    pub steps: Vec<u32>,
}

/// Runs a block range in the client, for a third opinion.
pub trait Referee: Send + Sync {
    /// Runs `blocks` over `input` (positions from 0) with a fresh cache, in chunks of at most
    /// `chunk` tokens.
    fn run(
        &self,
        blocks: BlockRange,
        input: &HiddenStates,
        chunk: usize,
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

/// The largest row distance between `a` and the last `a.n_tokens` rows of `b` (infinite when
/// the shapes do not fit).
pub fn tail_distance(a: &HiddenStates, b: &HiddenStates) -> f32 {
    if a.dim != b.dim || a.n_tokens > b.n_tokens || a.dim == 0 {
        return f32::INFINITY;
    }
    let skip = (b.n_tokens - a.n_tokens) * b.dim;
    a.data
        .chunks(a.dim)
        .zip(b.data[skip..].chunks(b.dim))
        .map(|(x, y)| row_distance(x, y))
        // A NaN distance is kept (f32::max would drop it): it never agrees.
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// The first hop whose step output (`main[k]`, the checked step's rows) disagrees with the check
/// run's (`check[k]`, the whole prefix, compared on its last rows), with the distance.
pub fn first_disagreement(
    main: &[HiddenStates],
    check: &[HiddenStates],
    tolerance: f32,
) -> Option<(usize, f32)> {
    if main.len() != check.len() {
        return Some((0, f32::INFINITY));
    }
    main.iter()
        .zip(check)
        .map(|(m, c)| tail_distance(m, c))
        .enumerate()
        .find(|&(_, d)| !(d <= tolerance))
}

/// The prefix in chunks for a check run: the prompt chunks as they were sent (so that a check
/// of the prompt is bit for bit), then the decode steps merged into chunks of at most `chunk`.
pub fn check_chunks(history: &[HiddenStates], chunk: usize) -> Vec<HiddenStates> {
    let chunk = chunk.max(1);
    let mut out: Vec<HiddenStates> = Vec::new();
    let mut pending: Vec<f32> = Vec::new();
    let mut pending_n = 0;
    let dim = history.first().map_or(0, |h| h.dim);
    let flush = |out: &mut Vec<HiddenStates>, data: &mut Vec<f32>, n: &mut usize| {
        if *n > 0 {
            out.push(HiddenStates {
                n_tokens: *n,
                dim,
                data: std::mem::take(data),
            });
            *n = 0;
        }
    };
    for h in history {
        if h.n_tokens > 1 {
            flush(&mut out, &mut pending, &mut pending_n);
            out.push(h.clone());
            continue;
        }
        pending.extend_from_slice(&h.data);
        pending_n += h.n_tokens;
        if pending_n >= chunk {
            flush(&mut out, &mut pending, &mut pending_n);
        }
    }
    flush(&mut out, &mut pending, &mut pending_n);
    out
}

/// The last `n` rows of `h`.
pub fn tail(h: &HiddenStates, n: usize) -> HiddenStates {
    let n = n.min(h.n_tokens);
    HiddenStates {
        n_tokens: n,
        dim: h.dim,
        data: h.data[(h.n_tokens - n) * h.dim..].to_vec(),
    }
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
    fn distances_are_relative_per_row_and_compare_the_last_rows() {
        assert_eq!(row_distance(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((row_distance(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-6);
        assert_eq!(row_distance(&[1.0], &[1.0, 2.0]), f32::INFINITY);
        let step = hs(&[&[1.0, 1.0]]);
        let prefix = hs(&[&[9.0, 9.0], &[1.0, 1.0]]);
        assert_eq!(tail_distance(&step, &prefix), 0.0);
        let wrong = hs(&[&[9.0, 9.0], &[1.5, 1.0]]);
        assert!(tail_distance(&step, &wrong) > 0.1);
        assert_eq!(tail_distance(&prefix, &step), f32::INFINITY);
    }

    #[test]
    fn the_first_disagreeing_hop_is_named() {
        let a = hs(&[&[1.0, 2.0]]);
        let b = hs(&[&[0.0, 0.0], &[1.0, 2.0]]);
        let bad = hs(&[&[0.0, 0.0], &[1.5, 2.0]]);
        let t = 1e-3;
        assert_eq!(
            first_disagreement(&[a.clone(), a.clone()], &[b.clone(), b.clone()], t),
            None
        );
        let (k, d) = first_disagreement(
            &[a.clone(), a.clone(), a.clone()],
            &[b.clone(), bad.clone(), bad],
            t,
        )
        .unwrap();
        assert_eq!(k, 1);
        assert!(d > 0.1);
        // NaN never agrees.
        let nan = hs(&[&[f32::NAN, 2.0]]);
        assert_eq!(first_disagreement(&[nan], &[b], t).map(|x| x.0), Some(0));
    }

    #[test]
    fn prompt_chunks_stay_and_decode_steps_merge() {
        let p = hs(&[&[1.0], &[2.0], &[3.0]]);
        let t = |v: f32| hs(&[&[v]]);
        let history = vec![p.clone(), t(4.0), t(5.0), t(6.0), t(7.0), t(8.0)];
        let chunks = check_chunks(&history, 2);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.n_tokens).collect();
        assert_eq!(sizes, vec![3, 2, 2, 1]);
        assert_eq!(chunks[0], p);
        assert_eq!(
            concat(&chunks).data,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        assert!(check_chunks(&[], 4).is_empty());
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
