//! How long one forward pass over a set of steps takes on this node.
//!
//! Two models behind one trait (seed §6): [`FlopCost`], the paper-like count of matmul and
//! attention FLOPs over a sustained rate, and [`LinearCost`], `c0 + c1 * sum(new tokens)
//! + c2 * sum(new tokens * context)` fitted to measured passes. The fitted one is the one to trust
//! on CPUs and small GPUs, where a decode pass is bound by reading the weights, not by FLOPs: the
//! FLOP model then says a batch of one costs almost nothing, while in truth it costs about `c0`.

use serde::{Deserialize, Serialize};

use crate::error::{BatchError, Result, non_negative, positive};
use crate::step::Step;

/// Time of one forward pass over a set of steps, in seconds.
///
/// DFTSP's pruning is exact only if the model is *monotone*: adding a step never makes the pass
/// faster. Both models here are. A non-finite answer makes the pass infeasible wherever a deadline
/// is checked.
pub trait CostModel {
    /// Seconds to run all of `steps` in one pass (0 for no steps).
    fn pass_seconds(&self, steps: &[&Step]) -> f64;
}

impl<T: CostModel + ?Sized> CostModel for &T {
    fn pass_seconds(&self, steps: &[&Step]) -> f64 {
        (**self).pass_seconds(steps)
    }
}

/// FLOP count of the hosted blocks at a sustained rate. Unlike the paper's static batching,
/// continuous batching pads nothing: each step costs its own tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlopCost {
    blocks: u32,
    hidden: u32,
    flops_per_s: f64,
}

impl FlopCost {
    /// `blocks` hosted blocks of width `hidden`, computing at `flops_per_s`.
    pub fn new(blocks: u32, hidden: u32, flops_per_s: f64) -> Result<Self> {
        positive("FlopCost flops_per_s", flops_per_s)?;
        Ok(Self {
            blocks,
            hidden,
            flops_per_s,
        })
    }

    /// FLOPs of one step: per block `24 t h^2` for the projections and MLP, and `4 h` per attended
    /// pair, where new token i (1-based) attends `context + i` tokens.
    pub fn step_flops(&self, step: &Step) -> f64 {
        let (t, c, h) = (
            f64::from(step.new_tokens),
            f64::from(step.context),
            f64::from(self.hidden),
        );
        f64::from(self.blocks) * (24.0 * t * h * h + 4.0 * h * (t * c + t * (t + 1.0) / 2.0))
    }
}

impl CostModel for FlopCost {
    fn pass_seconds(&self, steps: &[&Step]) -> f64 {
        steps.iter().map(|s| self.step_flops(s)).sum::<f64>() / self.flops_per_s
    }
}

/// `T = c0 + c1 * sum(new tokens) + c2 * sum(new tokens * context)` for a non-empty pass, 0 for an
/// empty one. The coefficients are kept non-negative so the model stays monotone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearCost {
    c0: f64,
    c1: f64,
    c2: f64,
}

/// Pivots below this, on the Gram matrix of unit-norm columns, mean two features move together in
/// the samples (an angle under ~1e-5 rad), so their coefficients cannot be told apart.
const SINGULAR_PIVOT: f64 = 1e-10;

impl LinearCost {
    /// Per pass, per new token, per (new token x cached token); each finite and >= 0.
    pub fn new(c0: f64, c1: f64, c2: f64) -> Result<Self> {
        non_negative("LinearCost c0", c0)?;
        non_negative("LinearCost c1", c1)?;
        non_negative("LinearCost c2", c2)?;
        Ok(Self { c0, c1, c2 })
    }

    /// `[c0, c1, c2]`.
    pub fn coefficients(&self) -> [f64; 3] {
        [self.c0, self.c1, self.c2]
    }

    /// The regressors of a pass: `[1, sum(new tokens), sum(new tokens * context)]`.
    pub fn features(steps: &[&Step]) -> [f64; 3] {
        let tokens: f64 = steps.iter().map(|s| f64::from(s.new_tokens)).sum();
        let pairs: f64 = steps
            .iter()
            .map(|s| f64::from(s.new_tokens) * f64::from(s.context))
            .sum();
        [1.0, tokens, pairs]
    }

    /// Least squares over measured passes, constrained to non-negative coefficients (a negative
    /// one would make some pass cheaper for an added step and break DFTSP's pruning). With three
    /// coefficients the constrained optimum is found exactly by solving every subset of them and
    /// keeping the best non-negative solution.
    ///
    /// Errors: fewer than 3 samples, a sample with no steps, a time that is not finite and >= 0,
    /// or samples that cannot separate the coefficients (e.g. every pass the same size, or no
    /// pass with cached context).
    pub fn fit<'a, I>(samples: I) -> Result<Self>
    where
        I: IntoIterator<Item = (&'a [Step], f64)>,
    {
        let mut rows: Vec<([f64; 3], f64)> = Vec::new();
        for (steps, seconds) in samples {
            if steps.is_empty() {
                return Err(BatchError::DegenerateFit {
                    reason: "a sample has no steps",
                });
            }
            non_negative("measured pass seconds", seconds)?;
            let refs: Vec<&Step> = steps.iter().collect();
            rows.push((Self::features(&refs), seconds));
        }
        if rows.len() < 3 {
            return Err(BatchError::TooFewSamples {
                needed: 3,
                got: rows.len(),
            });
        }

        // Normal equations on unit-norm columns: the token-context column is millions of times
        // the constant one, and unscaled pivots would say nothing about collinearity.
        let mut norm = [0.0f64; 3];
        for (x, _) in &rows {
            for j in 0..3 {
                norm[j] += x[j] * x[j];
            }
        }
        let norm = norm.map(f64::sqrt);
        if norm[1] == 0.0 || norm[2] == 0.0 || !norm.iter().all(|n| n.is_finite()) {
            return Err(BatchError::DegenerateFit {
                reason: "no sample has new tokens over cached context",
            });
        }
        let mut gram = [[0.0f64; 3]; 3];
        let mut rhs = [0.0f64; 3];
        for (x, y) in &rows {
            for j in 0..3 {
                rhs[j] += x[j] / norm[j] * y;
                for k in 0..3 {
                    gram[j][k] += x[j] / norm[j] * x[k] / norm[k];
                }
            }
        }
        let Some(full) = solve(&gram, &rhs, &[0, 1, 2]) else {
            return Err(BatchError::DegenerateFit {
                reason: "the samples do not separate per-pass, per-token and per-context cost",
            });
        };

        let residual = |c: &[f64; 3]| -> f64 {
            rows.iter()
                .map(|(x, y)| {
                    let e = y - (x[0] * c[0] + x[1] * c[1] + x[2] * c[2]);
                    e * e
                })
                .sum()
        };
        let unscale = |z: [f64; 3]| [z[0] / norm[0], z[1] / norm[1], z[2] / norm[2]];
        let mut best = [0.0f64; 3];
        let mut best_residual = residual(&best);
        let subsets: [&[usize]; 7] = [&[0, 1, 2], &[0, 1], &[0, 2], &[1, 2], &[0], &[1], &[2]];
        for (n, subset) in subsets.iter().enumerate() {
            let z = if n == 0 {
                Some(full)
            } else {
                solve(&gram, &rhs, subset)
            };
            let Some(c) = z.map(unscale) else { continue };
            if c.iter().all(|&v| v >= 0.0 && v.is_finite()) {
                let r = residual(&c);
                if r < best_residual {
                    best = c;
                    best_residual = r;
                }
            }
        }
        Self::new(best[0], best[1], best[2])
    }
}

/// Solves the normal equations restricted to `active` coefficients (the others held at 0) by
/// Gaussian elimination with partial pivoting; `None` if singular.
fn solve(gram: &[[f64; 3]; 3], rhs: &[f64; 3], active: &[usize]) -> Option<[f64; 3]> {
    let n = active.len();
    let mut a = [[0.0f64; 4]; 3];
    for (r, &i) in active.iter().enumerate() {
        for (c, &j) in active.iter().enumerate() {
            a[r][c] = gram[i][j];
        }
        a[r][3] = rhs[i];
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        let size = a[pivot][col].abs();
        if size.is_nan() || size <= SINGULAR_PIVOT {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col];
        for (row, r) in a.iter_mut().enumerate().take(n) {
            if row != col {
                let f = r[col] / pivot_row[col];
                for (x, p) in r.iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut z = [0.0f64; 3];
    for (r, &i) in active.iter().enumerate() {
        z[i] = a[r][3] / a[r][r];
    }
    Some(z)
}

impl CostModel for LinearCost {
    fn pass_seconds(&self, steps: &[&Step]) -> f64 {
        if steps.is_empty() {
            return 0.0;
        }
        let [one, tokens, pairs] = Self::features(steps);
        self.c0 * one + self.c1 * tokens + self.c2 * pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn flop_cost_matches_hand_count() {
        // 2 blocks, h = 4, 1e3 FLOP/s; a 3-token chunk after 5 cached tokens:
        // 2 * (24*3*16 + 4*4*(3*5 + 6)) = 2 * (1152 + 336) = 2976 FLOPs.
        let m = FlopCost::new(2, 4, 1e3).unwrap();
        let s = Step::prefill_chunk(1, 1, 3, 5);
        assert_eq!(m.step_flops(&s), 2976.0);
        let d = Step::decode(2, 2, 0);
        // 2 * (24*16 + 4*4*1) = 800.
        assert_eq!(m.pass_seconds(&[&s, &d]), (2976.0 + 800.0) / 1e3);
        assert_eq!(m.pass_seconds(&[]), 0.0);
        assert!(FlopCost::new(1, 1, 0.0).is_err());
    }

    #[test]
    fn flop_cost_agrees_with_the_paper_decode_formula() {
        // A paper request with S = 200, N = 100 as 100 decode steps: token i (1-based) has
        // S + i - 1 tokens cached and attends S + i, so the steps sum to the paper's F_dec.
        let m = FlopCost::new(32, 4096, 1.0).unwrap();
        let total: f64 = (0..100)
            .map(|i| m.step_flops(&Step::decode(1, i, 200 + i as u32)))
            .sum();
        let paper = crate::paper::Decoder::new(32, 4096)
            .flops(1, 200, 100)
            .decode as f64;
        assert!(close(total, paper, 1e-12), "{total} vs {paper}");
    }

    fn synthetic(c: [f64; 3]) -> Vec<(Vec<Step>, f64)> {
        let shapes: [&[(u32, u32)]; 6] = [
            &[(1, 10)],
            &[(1, 500), (1, 20)],
            &[(128, 0)],
            &[(128, 256), (1, 1000)],
            &[(1, 4000), (1, 4000), (1, 4000)],
            &[(64, 64)],
        ];
        shapes
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let steps: Vec<Step> = shape
                    .iter()
                    .enumerate()
                    .map(|(j, &(t, ctx))| Step::prefill_chunk(j as u64, i as u64, t, ctx))
                    .collect();
                let refs: Vec<&Step> = steps.iter().collect();
                let x = LinearCost::features(&refs);
                (steps, c[0] * x[0] + c[1] * x[1] + c[2] * x[2])
            })
            .collect()
    }

    #[test]
    fn fit_recovers_exact_coefficients() {
        let truth = [0.012, 3e-4, 2e-8];
        let data = synthetic(truth);
        let fit = LinearCost::fit(data.iter().map(|(s, t)| (s.as_slice(), *t))).unwrap();
        for (got, want) in fit.coefficients().iter().zip(truth) {
            assert!(close(*got, want, 1e-6), "{got} vs {want}");
        }
        let steps: Vec<&Step> = data[3].0.iter().collect();
        assert!(close(fit.pass_seconds(&steps), data[3].1, 1e-9));
    }

    #[test]
    fn fit_keeps_coefficients_non_negative() {
        // Unconstrained, these times want a negative per-pass cost.
        let mut data = synthetic([0.0, 1e-3, 1e-8]);
        for (_, t) in &mut data {
            *t = (*t - 0.004).max(0.0);
        }
        let fit = LinearCost::fit(data.iter().map(|(s, t)| (s.as_slice(), *t))).unwrap();
        let [c0, c1, c2] = fit.coefficients();
        assert_eq!(c0, 0.0);
        assert!(c1 > 0.0 && c2 >= 0.0);
        // It is the best fit with c0 = 0: no nearby non-negative point does better.
        let sse = |m: &LinearCost| -> f64 {
            data.iter()
                .map(|(s, t)| {
                    let r: Vec<&Step> = s.iter().collect();
                    (m.pass_seconds(&r) - t).powi(2)
                })
                .sum()
        };
        let base = sse(&fit);
        for (d1, d2) in [(1e-6, 0.0), (-1e-6, 0.0), (0.0, 1e-10), (0.0, -1e-10)] {
            if let Ok(m) = LinearCost::new(0.0, c1 + d1, c2 + d2) {
                assert!(sse(&m) >= base - 1e-15, "{d1} {d2}");
            }
        }
    }

    #[test]
    fn fit_rejects_degenerate_data() {
        let one = [Step::decode(1, 1, 10)];
        let two = [Step::decode(1, 1, 10), Step::decode(2, 2, 10)];
        assert_eq!(
            LinearCost::fit([(&one[..], 0.01), (&two[..], 0.02)]),
            Err(BatchError::TooFewSamples { needed: 3, got: 2 })
        );
        // Every pass the same shape: nothing separates the coefficients.
        assert!(matches!(
            LinearCost::fit([(&one[..], 0.01), (&one[..], 0.011), (&one[..], 0.012)]),
            Err(BatchError::DegenerateFit { .. })
        ));
        // Tokens and token-context in fixed proportion (same context everywhere): collinear with
        // each other, though not with the constant.
        let three = [
            Step::decode(1, 1, 10),
            Step::decode(2, 2, 10),
            Step::decode(3, 3, 10),
        ];
        assert!(matches!(
            LinearCost::fit([(&one[..], 0.01), (&two[..], 0.02), (&three[..], 0.03)]),
            Err(BatchError::DegenerateFit { .. })
        ));
        // No cached context anywhere.
        let fresh = [Step::prefill_chunk(1, 1, 8, 0)];
        let fresh2 = [Step::prefill_chunk(1, 1, 16, 0)];
        assert!(matches!(
            LinearCost::fit([(&fresh[..], 0.01), (&fresh2[..], 0.02), (&fresh[..], 0.01)]),
            Err(BatchError::DegenerateFit { .. })
        ));
        assert!(matches!(
            LinearCost::fit([(&[][..], 0.01), (&one[..], 0.02), (&two[..], 0.03)]),
            Err(BatchError::DegenerateFit { .. })
        ));
        assert!(matches!(
            LinearCost::fit([(&one[..], f64::NAN), (&two[..], 0.02), (&three[..], 0.03)]),
            Err(BatchError::Negative { .. })
        ));
    }

    #[test]
    fn linear_cost_validates_and_is_zero_when_idle() {
        assert!(LinearCost::new(-1.0, 0.0, 0.0).is_err());
        assert!(LinearCost::new(0.0, f64::INFINITY, 0.0).is_err());
        let m = LinearCost::new(0.01, 1e-4, 1e-8).unwrap();
        assert_eq!(m.pass_seconds(&[]), 0.0);
        let s = Step::prefill_chunk(1, 1, 100, 1000);
        assert!(close(m.pass_seconds(&[&s]), 0.01 + 0.01 + 1e-3, 1e-12));
    }
}
