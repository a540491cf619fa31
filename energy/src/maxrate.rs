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

/// How lambda* is searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossingRule {
    /// Spec sec. 5: if R(1) < delta the threshold is "never reached"; otherwise Brent on [1e-4, 1].
    /// Exact when the risk is monotone in p.
    #[default]
    Endpoint,
    /// Our variant: scan `grid` equally spaced rates for the first one with R >= delta and run Brent
    /// on that cell. The risk can peak and fall again past energy saturation, where the endpoint
    /// rule would call a threshold that is crossed in between "never reached".
    FirstCrossing { grid: u32 },
}

/// eq. 5 with risk measured below `e_th` (the paper uses e_L) and tolerance `delta`.
pub fn max_input_rate(dev: &DeviceParams, delta: f64, e_th: i64) -> Result<MaxRate> {
    max_input_rate_with(dev, delta, e_th, CrossingRule::Endpoint)
}

/// eq. 5 with an explicit search rule.
pub fn max_input_rate_with(
    dev: &DeviceParams,
    delta: f64,
    e_th: i64,
    rule: CrossingRule,
) -> Result<MaxRate> {
    dev.validate()?;
    probability("risk threshold delta", delta)?;
    if let CrossingRule::FirstCrossing { grid } = rule {
        return first_crossing(dev, delta, e_th, grid.max(1));
    }
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
            let (root, evals) = brent(
                |p| Ok(Analysis::new(dev, p)?.risk(e_th) - delta),
                P_MIN,
                1.0,
                P_TOL,
                200,
            )?;
            solves += evals;
            let nbar = Analysis::new(dev, root)?.nbar;
            solves += 1;
            (root, true, nbar)
        }
    };
    Ok(MaxRate {
        lam_star,
        reached,
        nbar,
        lam_max: lam_star.min(1.0 / nbar),
        solves,
    })
}

fn first_crossing(dev: &DeviceParams, delta: f64, e_th: i64, grid: u32) -> Result<MaxRate> {
    let mut solves = 0;
    let mut risk = |p: f64| -> Result<f64> {
        solves += 1;
        Ok(Analysis::new(dev, p)?.risk(e_th) - delta)
    };
    let mut lo = P_MIN;
    if risk(lo)? >= 0.0 {
        let nbar = Analysis::new(dev, P_MIN)?.nbar;
        return Ok(MaxRate {
            lam_star: P_MIN,
            reached: true,
            nbar,
            lam_max: P_MIN.min(1.0 / nbar),
            solves: solves + 1,
        });
    }
    for k in 1..=grid {
        let hi = k as f64 / grid as f64;
        if risk(hi)? >= 0.0 {
            let (root, evals) = brent(
                |p| Ok(Analysis::new(dev, p)?.risk(e_th) - delta),
                lo,
                hi,
                P_TOL,
                200,
            )?;
            let nbar = Analysis::new(dev, root)?.nbar;
            return Ok(MaxRate {
                lam_star: root,
                reached: true,
                nbar,
                lam_max: root.min(1.0 / nbar),
                solves: solves + evals + 1,
            });
        }
        lo = hi;
    }
    let nbar = Analysis::new(dev, 1.0)?.nbar;
    Ok(MaxRate {
        lam_star: 1.0,
        reached: false,
        nbar,
        lam_max: 1.0f64.min(1.0 / nbar),
        solves: solves + 1,
    })
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
        assert!(
            r60.reached && r60.lam_max < 1.0 && (r60.lam_max - 0.40).abs() < 0.03,
            "{r60:?}"
        );
        let rd = max_input_rate(&dev(None), 0.02, 20).unwrap();
        assert!(rd.lam_max > r60.lam_max, "{rd:?} vs {r60:?}");
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use crate::harvest::Harvest;
    use crate::modes::{ModeTable, paper};

    #[test]
    fn first_crossing_finds_a_peak_the_endpoint_rule_misses() {
        // Risk peaks near 0.14 at p = 0.6 and falls to 0.136 at p = 1 (see the property tests).
        let dev = DeviceParams {
            capacity: 94,
            e_low: 26,
            e_high: 50,
            harvest: Harvest::uniform(3, 4).unwrap(),
            modes: ModeTable::fixed(paper::w30()).unwrap(),
        };
        let delta = 0.14;
        let spec = max_input_rate(&dev, delta, dev.e_low).unwrap();
        assert!(!spec.reached && spec.lam_star == 1.0);
        let ours = max_input_rate_with(
            &dev,
            delta,
            dev.e_low,
            CrossingRule::FirstCrossing { grid: 20 },
        )
        .unwrap();
        assert!(
            ours.reached && ours.lam_star > 0.4 && ours.lam_star < 0.6,
            "{ours:?}"
        );
        let r = Analysis::new(&dev, ours.lam_star).unwrap().risk(dev.e_low);
        assert!((r - delta).abs() < 1e-4, "R(lam*) = {r}");
    }

    #[test]
    fn rules_agree_when_risk_is_monotone() {
        let dev = DeviceParams::paper(
            Harvest::uniform(6, 14).unwrap(),
            ModeTable::fixed(paper::w60()).unwrap(),
        );
        let a = max_input_rate(&dev, 0.02, 20).unwrap();
        let b =
            max_input_rate_with(&dev, 0.02, 20, CrossingRule::FirstCrossing { grid: 20 }).unwrap();
        assert!((a.lam_star - b.lam_star).abs() < 1e-5 && a.reached == b.reached);
    }
}
