//! Brent's root finder: bisection's guarantee with inverse quadratic interpolation's speed.

use crate::error::{EnergyError, Result};

/// A root of `f` in `[a, b]` to within `tol`, given `f(a)` and `f(b)` of opposite signs (or zero).
/// Returns the root and the number of evaluations of `f`.
pub fn brent<F: FnMut(f64) -> Result<f64>>(
    mut f: F,
    a: f64,
    b: f64,
    tol: f64,
    max_iter: usize,
) -> Result<(f64, usize)> {
    let (mut a, mut b) = (a, b);
    let mut fa = f(a)?;
    let mut fb = f(b)?;
    let mut evals = 2;
    if fa == 0.0 {
        return Ok((a, evals));
    }
    if fb == 0.0 {
        return Ok((b, evals));
    }
    if fa.signum() == fb.signum() {
        return Err(EnergyError::NotBracketed { a, b, fa, fb });
    }
    // c is the previous iterate holding the opposite sign to b; d, e are the last two steps.
    let (mut c, mut fc) = (a, fa);
    let mut d = b - a;
    let mut e = d;
    for _ in 0..max_iter {
        if fb.signum() == fc.signum() {
            c = a;
            fc = fa;
            d = b - a;
            e = d;
        }
        if fc.abs() < fb.abs() {
            // Keep b the best estimate.
            a = b;
            b = c;
            c = a;
            fa = fb;
            fb = fc;
            fc = fa;
        }
        let tol1 = 2.0 * f64::EPSILON * b.abs() + 0.5 * tol;
        let m = 0.5 * (c - b);
        if m.abs() <= tol1 || fb == 0.0 {
            return Ok((b, evals));
        }
        if e.abs() >= tol1 && fa.abs() > fb.abs() {
            // Try interpolation: secant with two points, inverse quadratic with three.
            let s = fb / fa;
            let (mut p, mut q);
            if a == c {
                p = 2.0 * m * s;
                q = 1.0 - s;
            } else {
                let qa = fa / fc;
                let r = fb / fc;
                p = s * (2.0 * m * qa * (qa - r) - (b - a) * (r - 1.0));
                q = (qa - 1.0) * (r - 1.0) * (s - 1.0);
            }
            if p > 0.0 {
                q = -q;
            } else {
                p = -p;
            }
            // Accept only a step that stays well inside the bracket and shrinks fast enough.
            if 2.0 * p < (3.0 * m * q - (tol1 * q).abs()).min((e * q).abs()) {
                e = d;
                d = p / q;
            } else {
                d = m;
                e = d;
            }
        } else {
            d = m;
            e = d;
        }
        a = b;
        fa = fb;
        b += if d.abs() > tol1 { d } else { tol1.copysign(m) };
        fb = f(b)?;
        evals += 1;
    }
    Ok((b, evals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_simple_roots() {
        let (x, _) = brent(|x| Ok(x * x - 2.0), 0.0, 2.0, 1e-12, 100).unwrap();
        assert!((x - 2f64.sqrt()).abs() < 1e-11);
        let (x, n) = brent(|x| Ok(x.cos() - x), 0.0, 1.0, 1e-10, 100).unwrap();
        assert!((x - 0.739_085_133_215_160_6).abs() < 1e-9);
        assert!(n < 15, "{n} evaluations");
        // A step function: bisection fallback still brackets the jump.
        let (x, _) = brent(
            |x| Ok(if x < 0.3 { -1.0 } else { 1.0 }),
            0.0,
            1.0,
            1e-8,
            200,
        )
        .unwrap();
        assert!((x - 0.3).abs() < 1e-7);
    }

    #[test]
    fn rejects_unbracketed() {
        assert!(matches!(
            brent(|x| Ok(x * x + 1.0), -1.0, 1.0, 1e-6, 50),
            Err(EnergyError::NotBracketed { .. })
        ));
    }
}
