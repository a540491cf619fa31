//! Prints the DFTSP simulation (seed 002): `cargo run -p sunswarm-batching --example dftsp_sim --
//! [seed] [instances]`. Throughput is tokens per epoch; effort is feasibility-oracle calls.

use sunswarm_batching::sim::{Method, SimConfig, simulate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let defaults = SimConfig::default();
    let config = SimConfig {
        seed: args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(defaults.seed),
        instances: args
            .next()
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(defaults.instances),
        ..defaults
    };
    let report = simulate(&config)?;
    println!(
        "{} epochs, K {}..={}, seed {}",
        config.instances, config.min_requests, config.max_requests, config.seed
    );
    println!(
        "{:<28} {:>12} {:>14} {:>9}",
        "method", "tokens/epoch", "oracle calls", "optimal"
    );
    for m in &report.methods {
        let name = match m.method {
            Method::Dftsp => "DFTSP".to_string(),
            Method::BruteForce => "brute force".to_string(),
            Method::Greedy(kind) => format!("greedy {kind:?}"),
        };
        println!(
            "{:<28} {:>12.1} {:>14.1} {:>8.1}%",
            name,
            m.mean_tokens,
            m.mean_oracle_calls,
            100.0 * m.optimal_share
        );
    }
    println!(
        "\n{:>3} {:>6} {:>12} {:>12} {:>12}",
        "K", "epochs", "DFTSP calls", "DFTSP nodes", "brute calls"
    );
    for r in &report.by_size {
        println!(
            "{:>3} {:>6} {:>12.1} {:>12.1} {:>12}",
            r.requests,
            r.instances,
            r.dftsp_mean_oracle_calls,
            r.dftsp_mean_nodes,
            r.brute_force_oracle_calls
        );
    }
    println!(
        "\noracle calls saved vs brute force: {:.1}%; DFTSP suboptimal {}, capped {}, more calls than brute {}",
        100.0 * report.oracle_call_reduction,
        report.dftsp_suboptimal,
        report.dftsp_capped,
        report.dftsp_more_calls_than_brute
    );
    println!(
        "epochs where the whole set breaks memory {}, a deadline {}, an accuracy floor {}",
        report.memory_binding, report.deadline_binding, report.accuracy_binding
    );
    Ok(())
}
