//! Resident memory after loading a block range (benchmark helper, Linux only):
//! `cargo run --release -p sunswarm-models --example load_rss -- smollm2-135m 0 10`
//! prints the RSS before and after loading blocks 0..10, and what the weights should take.

use sunswarm_models::{BackendKind, Model, ModelSource, device};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 3,
        "usage: load_rss MODEL START END (half-open block range)"
    );
    let (start, end): (usize, usize) = (args[1].parse()?, args[2].parse()?);
    let model = Model::open(&ModelSource::parse(&args[0])?)?;
    let dev = device(BackendKind::Cpu)?;
    let before = rss_mib();
    let blocks = model.load_blocks(start..end, &dev)?;
    let after = rss_mib();
    let expected =
        (end - start) as f64 * model.config().block_params() as f64 * 4.0 / (1 << 20) as f64;
    println!(
        "blocks {start}..{end} of {}: rss before {before:.1} MiB, after {after:.1} MiB, delta {:.1} MiB (f32 weights: {expected:.1} MiB)",
        model.config().n_layers,
        after - before
    );
    // The node keeps only the blocks: the model (and its map of the file, whose pages the load
    // touched) goes.
    let n_layers = model.config().n_layers;
    drop(model);
    println!(
        "after dropping the model: rss {:.1} MiB, delta {:.1} MiB; the blocks hold {:.1} MiB ({n_layers} blocks in all)",
        rss_mib(),
        rss_mib() - before,
        blocks.weight_bytes() as f64 / (1 << 20) as f64
    );
    drop(blocks);
    Ok(())
}
