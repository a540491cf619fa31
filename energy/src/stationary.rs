//! Stationary distribution of the embedded chain, exploiting its band structure.
//!
//! Two steps. (1) Find the closed communicating class with Tarjan's algorithm: transient states
//! (e.g. active below e_L) get probability 0, and several closed classes (a device that never
//! harvests) mean the law is not unique, which is reported instead of guessed. (2) On the closed
//! class, ordered battery-major so that a transition moves only a few dozen positions, run the
//! GTH state-reduction algorithm (Grassmann-Taksar-Heyman) on a banded matrix. GTH is Gaussian
//! elimination without subtractions, so it stays accurate for tiny probabilities, and
//! elimination without pivoting keeps fill-in inside the band: cost O(n * lower * upper) instead of
//! O(n^3), which is what makes 1000 battery levels cheap.

use crate::chain::Chain;
use crate::error::{EnergyError, Result};

const UNSET: usize = usize::MAX;

/// Strongly connected components of the chain's transition graph; returns (component of each
/// state, number of components). Iterative, so deep chains cannot overflow the stack.
fn components(n: usize, row_ptr: &[usize], cols: &[u32]) -> (Vec<usize>, usize) {
    let mut index = vec![UNSET; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNSET; n];
    let mut stack = Vec::new();
    let mut calls: Vec<(usize, usize)> = Vec::new();
    let (mut counter, mut ncomp) = (0usize, 0usize);
    for root in 0..n {
        if index[root] != UNSET {
            continue;
        }
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, row_ptr[root]));
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if top.1 < row_ptr[v + 1] {
                let w = cols[top.1] as usize;
                top.1 += 1;
                if index[w] == UNSET {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, row_ptr[w]));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                calls.pop();
                if let Some(parent) = calls.last() {
                    low[parent.0] = low[parent.0].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = ncomp;
                        if w == v {
                            break;
                        }
                    }
                    ncomp += 1;
                }
            }
        }
    }
    (comp, ncomp)
}

/// The states of the unique closed class, or an error if there is not exactly one.
fn closed_class(chain: &Chain) -> Result<Vec<usize>> {
    let (row_ptr, cols, _) = chain.csr();
    let n = chain.len();
    let (comp, ncomp) = components(n, row_ptr, cols);
    let mut leaks = vec![false; ncomp];
    for i in 0..n {
        for &j in &cols[row_ptr[i]..row_ptr[i + 1]] {
            if comp[j as usize] != comp[i] {
                leaks[comp[i]] = true;
            }
        }
    }
    let closed: Vec<usize> = (0..ncomp).filter(|&c| !leaks[c]).collect();
    if closed.len() != 1 {
        return Err(EnergyError::NotErgodic {
            classes: closed.len(),
        });
    }
    Ok((0..n).filter(|&i| comp[i] == closed[0]).collect())
}

/// Solves `pi P = pi`, `sum pi = 1`; the result is indexed like the chain's states.
pub fn stationary(chain: &Chain) -> Result<Vec<f64>> {
    let mut class = closed_class(chain)?;
    // Battery-major order keeps every transition within a narrow band.
    let key = |i: usize| {
        let s = chain.state(i);
        (s.e as usize) * 4 + 2 * s.q as usize + s.s as usize
    };
    class.sort_unstable_by_key(|&i| key(i));
    let m = class.len();
    let mut local = vec![UNSET; chain.len()];
    for (k, &i) in class.iter().enumerate() {
        local[i] = k;
    }
    let (row_ptr, cols, vals) = chain.csr();
    let (mut lb, mut ub) = (0usize, 0usize);
    for (k, &i) in class.iter().enumerate() {
        for &j in &cols[row_ptr[i]..row_ptr[i + 1]] {
            let l = local[j as usize];
            if l < k {
                lb = lb.max(k - l);
            } else {
                ub = ub.max(l - k);
            }
        }
    }
    let w = lb + ub + 1;
    // a[r * w + (c + lb - r)] holds entry (r, c) for r - lb <= c <= r + ub.
    let mut a = vec![0.0f64; m * w];
    for (k, &i) in class.iter().enumerate() {
        for r in row_ptr[i]..row_ptr[i + 1] {
            let l = local[cols[r] as usize];
            a[k * w + (l + lb - k)] = vals[r];
        }
    }
    gth_banded(&mut a, m, lb, ub);
    let mut x = vec![0.0f64; m];
    x[0] = 1.0;
    for k in 1..m {
        let lo = k.saturating_sub(ub);
        x[k] = (lo..k).map(|i| x[i] * a[i * w + (k + lb - i)]).sum();
    }
    let total: f64 = x.iter().sum();
    let mut pi = vec![0.0; chain.len()];
    for (k, &i) in class.iter().enumerate() {
        pi[i] = x[k] / total;
    }
    Ok(pi)
}

/// In-place GTH reduction on a banded row-stochastic matrix, eliminating from the last state
/// down. After it, `a[i][k]` (i < k) holds the scaled weights of the back-substitution.
fn gth_banded(a: &mut [f64], m: usize, lb: usize, ub: usize) {
    let w = lb + ub + 1;
    for k in (1..m).rev() {
        let jlo = k.saturating_sub(lb);
        let row_k = k * w;
        // Mass that leaves k towards states not yet eliminated: the stable GTH pivot.
        let s: f64 = a[row_k + (jlo + lb - k)..row_k + lb].iter().sum();
        // An irreducible class always keeps s > 0; guard against underflow all the same.
        let s = if s > 0.0 { s } else { f64::MIN_POSITIVE };
        let ilo = k.saturating_sub(ub);
        for i in ilo..k {
            let row_i = i * w;
            let aik = a[row_i + (k + lb - i)] / s;
            a[row_i + (k + lb - i)] = aik;
            if aik == 0.0 {
                continue;
            }
            // Row i gains aik * row k over columns jlo..k; both are contiguous in band storage.
            let (head, tail) = a.split_at_mut(row_k);
            let src = &tail[(jlo + lb - k)..lb];
            let dst = &mut head[row_i + (jlo + lb - i)..row_i + (k + lb - i)];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += aik * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceParams;
    use crate::harvest::Harvest;

    #[allow(clippy::needless_range_loop)] // textbook elimination reads clearer with indices
    /// Dense reference, the spec's recipe: A = P^T - I with its last row replaced by ones,
    /// right-hand side the last unit vector, Gaussian elimination with partial pivoting.
    fn dense_solve(c: &Chain) -> Vec<f64> {
        let n = c.len();
        let mut a = vec![vec![0.0f64; n + 1]; n];
        for i in 0..n {
            a[i][i] -= 1.0;
            for (j, pij) in c.row(i) {
                a[j][i] += pij;
            }
        }
        a[n - 1] = vec![1.0; n + 1];
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
                .unwrap();
            a.swap(col, piv);
            for r in 0..n {
                if r != col {
                    let f = a[r][col] / a[col][col];
                    if f != 0.0 {
                        for k in col..=n {
                            a[r][k] -= f * a[col][k];
                        }
                    }
                }
            }
        }
        (0..n).map(|i| (a[i][n] / a[i][i]).max(0.0)).collect()
    }

    #[test]
    fn matches_dense_solve_and_zeroes_transients() {
        for p in [0.05, 0.5, 1.0] {
            let c = Chain::build(
                &DeviceParams::paper_dynamic(Harvest::uniform(2, 8).unwrap()),
                p,
            )
            .unwrap();
            let pi = stationary(&c).unwrap();
            let reference = dense_solve(&c);
            let err: f64 = pi.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum();
            assert!(err < 1e-9, "p = {p}: L1 error {err}");
            // Active below e_L is unreachable.
            for e in 0..20 {
                assert_eq!(pi[c.index(0, e, 1)], 0.0);
                assert_eq!(pi[c.index(1, e, 1)], 0.0);
            }
        }
    }

    #[test]
    fn no_harvest_is_not_ergodic() {
        let c = Chain::build(
            &DeviceParams::paper_dynamic(Harvest::uniform(0, 0).unwrap()),
            0.5,
        )
        .unwrap();
        assert!(matches!(stationary(&c), Err(EnergyError::NotErgodic { classes }) if classes > 1));
    }

    #[test]
    fn thousand_levels_solve() {
        let mut d = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
        d.capacity = 1000;
        d.e_low = 200;
        d.e_high = 400;
        d.modes = crate::modes::paper::dynamic(1000);
        let c = Chain::build(&d, 0.4).unwrap();
        let pi = stationary(&c).unwrap();
        let y = c.left_mul(&pi);
        let err: f64 = pi.iter().zip(&y).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 1e-10, "{err}");
        assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
