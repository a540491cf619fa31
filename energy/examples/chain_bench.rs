//! Benchmark (not a test): time to build one device's chain, solve it, and find its eq. 5 maximum
//! rate, for 100 and 1000 battery levels. Run in release:
//! `cargo run --release -p sunswarm-energy --example chain_bench`.

use std::time::Instant;

use sunswarm_energy::modes::paper;
use sunswarm_energy::{
    Analysis, Chain, DeviceParams, Harvest, ModeTable, PowerMode, Result, max_input_rate,
};

/// Median wall time in milliseconds of `f` over `reps` calls (after one warm-up).
fn median_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            std::hint::black_box(f());
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The paper's device with every energy multiplied by `k` (k = 10: 0.1 kJ units, 1000 levels).
fn scaled(k: i64, modes: &str) -> Result<DeviceParams> {
    let m = |p: PowerMode| PowerMode {
        energy: p.energy * k,
        ..p
    };
    let table = match modes {
        "60W" => ModeTable::fixed(m(paper::w60()))?,
        _ => paper::dynamic_with([m(paper::w15()), m(paper::w30()), m(paper::w60())], 100 * k),
    };
    Ok(DeviceParams {
        capacity: 100 * k,
        e_low: 20 * k,
        e_high: 40 * k,
        harvest: Harvest::uniform(6 * k, 14 * k)?,
        modes: table,
    })
}

/// The paper's device with a 10x larger battery in the same 1 kJ unit (1000 levels).
fn big_battery(modes: &str) -> Result<DeviceParams> {
    let table = match modes {
        "60W" => ModeTable::fixed(paper::w60())?,
        _ => paper::dynamic(1000),
    };
    Ok(DeviceParams {
        capacity: 1000,
        e_low: 200,
        e_high: 400,
        harvest: Harvest::uniform(6, 14)?,
        modes: table,
    })
}

fn main() -> Result<()> {
    println!(
        "| device | levels | states | non-zeros | build ms | build+solve ms | max rate ms (solves) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases: Vec<(String, DeviceParams, usize)> = vec![
        ("paper dynamic, 1 kJ".into(), scaled(1, "dynamic")?, 200),
        ("paper 60 W, 1 kJ".into(), scaled(1, "60W")?, 200),
        (
            "dynamic, B = 1000 kJ, 1 kJ".into(),
            big_battery("dynamic")?,
            20,
        ),
        ("60 W, B = 1000 kJ, 1 kJ".into(), big_battery("60W")?, 20),
        (
            "paper dynamic, 0.1 kJ units".into(),
            scaled(10, "dynamic")?,
            3,
        ),
        ("paper 60 W, 0.1 kJ units".into(), scaled(10, "60W")?, 3),
    ];
    for (name, dev, reps) in cases {
        let chain = Chain::build(&dev, 0.4)?;
        let build = median_ms(reps, || Chain::build(&dev, 0.4));
        let solve = median_ms(reps, || Analysis::new(&dev, 0.4).map(|a| a.mean_battery));
        let m = max_input_rate(&dev, 0.02, dev.e_low)?;
        let rate = median_ms(reps, || {
            max_input_rate(&dev, 0.02, dev.e_low).map(|m| m.lam_max)
        });
        println!(
            "| {name} | {} | {} | {} | {build:.3} | {solve:.3} | {rate:.3} ({}, lam_max {:.4}) |",
            dev.capacity + 1,
            chain.len(),
            chain.nnz(),
            m.solves,
            m.lam_max
        );
    }
    Ok(())
}
