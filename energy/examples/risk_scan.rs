//! Prints R(p; e_L) over a grid of arrival rates for one fixed-mode device, to inspect the shape
//! of the risk curve (e.g. where it is not monotone). `cargo run -p sunswarm-energy --example risk_scan`.
use sunswarm_energy::{Analysis, DeviceParams, Harvest, ModeTable, modes::paper};

fn main() -> Result<(), sunswarm_energy::EnergyError> {
    let dev = DeviceParams {
        capacity: 94,
        e_low: 26,
        e_high: 50,
        harvest: Harvest::uniform(3, 4)?,
        modes: ModeTable::fixed(paper::w30())?,
    };
    for k in 1..=20 {
        let p = k as f64 * 0.05;
        let a = Analysis::new(&dev, p)?;
        println!(
            "p {p:.2} risk {:.5} ps {:.5} thr {:.5} mean {:.3}",
            a.risk(dev.e_low),
            a.ps_frac,
            a.throughput,
            a.mean_battery
        );
    }
    Ok(())
}
