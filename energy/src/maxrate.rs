//! Maximum input rate of a device (spec sec. 5, eq. 5): the arrival rate at which the risk of a
//! battery below e_L reaches delta, capped by the processing time 1/Nbar.

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::brent::brent;
use crate::device::DeviceParams;
use crate::error::{Result, probability};

/// Lower end of the search for lambda* (spec: Brent's method on [1e-4, 1]).
pub const P_MIN: f64 = 1e-4;
/// Brent tolerance on p.
pub const P_TOL: f64 = 1e-6;

/// Result of eq. 5 for one device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaxRate {
    /// lambda*: the rate where R(p; e_th) = delta (1 if never reached, P_MIN if reached already there).
    pub lam_star: f64,
    /// Whether the risk threshold is reached at all in (0, 1].
    pub reached: bool,
    /// eq. 4 at lambda*.
    pub nbar: f64,
    /// eq. 5: min(lambda*, 1 / Nbar).
    pub lam_max: f64,
    /// Chain solves the search took (for benchmarks).
    pub solves: usize,
}

/// eq. 5 with risk measured below `e_th` (the paper uses e_L) and tolerance `delta`.
pub fn max_input_rate(dev: &DeviceParams, delta: f64, e_th: i64) -> Result<MaxRate> {
    dev.validate()?;
    probability("risk threshold delta", delta)?;
    let at_one = Analysis::new(dev, 1.0)?;
    let mut solves = 1;
    let (lam_star, reached, nbar) = if at_one.risk(e_th) < delta {
        (1.0, false, at_one.nbar)
    } else {
        let at_min = Analysis::new(dev, P_MIN)?;
        solves += 1;
        if at_min.risk(e_th) >= delta {
            // Too risky even at a trickle: the smallest rate searched is all it can take.
            (P_MIN, true, at_min.nbar)
        } else {
            let (root, evals) = brent(|p| Ok(Analysis::new(dev, p)?.risk(e_th) - delta), P_MIN, 1.0, P_TOL, 200)?;
            solves += evals;
            let nbar = Analysis::new(dev, root)?.nbar;
            solves += 1;
            (root, true, nbar)
        }
    };
    Ok(MaxRate { lam_star, reached, nbar, lam_max: lam_star.min(1.0 / nbar), solves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvest::Harvest;
    use crate::modes::{ModeTable, paper};

    fn dev(mode: Option<crate::modes::PowerMode>) -> DeviceParams {
        let h = Harvest::uniform(6, 14).unwrap();
        match mode {
            Some(m) => DeviceParams::paper(h, ModeTable::fixed(m).unwrap()),
            None => DeviceParams::paper_dynamic(h),
        }
    }

    #[test]
    fn paper_fig2b_maxima() {
        let r15 = max_input_rate(&dev(Some(paper::w15())), 0.02, 20).unwrap();
        assert!(!r15.reached);
        assert!((r15.lam_max - 1.0 / 3.0).abs() < 1e-9);
        let r30 = max_input_rate(&dev(Some(paper::w30())), 0.02, 20).unwrap();
        assert!((r30.lam_max - 0.5).abs() < 1e-9, "{r30:?}");
        let r60 = max_input_rate(&dev(Some(paper::w60())), 0.02, 20).unwrap();
        assert!(r60.reached && r60.lam_max < 1.0 && (r60.lam_max - 0.40).abs() < 0.03, "{r60:?}");
        let rd = max_input_rate(&dev(None), 0.02, 20).unwrap();
        assert!(rd.lam_max > r60.lam_max, "{rd:?} vs {r60:?}");
    }
}
