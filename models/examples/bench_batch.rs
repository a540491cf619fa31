//! Decode steps of M sessions: one after another (`forward`) against one batched pass
//! (`forward_batch`), through every block of a model, side by side in one process; then the LM
//! head of all M at once, as a serving client runs it (`logits_last_many`, every row's logits
//! returned) and as the last hop runs it (`logits_last_each`, a token picked from each row).
//!
//! `cargo run --release -p sunswarm-models --example bench_batch -- [MODEL] [ROUNDS] [ONLY_M]`
//! (MODEL defaults to smollm2-135m; ONLY_M runs that many sessions, batched only).

use std::time::Instant;

use sunswarm_models::sampling::argmax;
use sunswarm_models::{BackendKind, BatchStep, HiddenStates, Model, ModelSource, device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "smollm2-135m".into());
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);
    // Optional: only this many sessions, batched only (for profiling one configuration).
    let only: Option<usize> = args.next().map(|r| r.parse()).transpose()?;
    let model = Model::open(&ModelSource::parse(&name)?)?;
    let dev = device(BackendKind::Cpu)?;
    let head = model.load_head(&dev)?;
    let n = model.config().n_layers;
    let blocks = model.load_blocks(0..n, &dev)?;
    println!("model {name}, {n} blocks, {rounds} rounds per size; per-token time of a decode step");
    let sizes: Vec<usize> = match only {
        Some(m) => vec![m],
        None => vec![1, 2, 4, 8, 16],
    };
    for m in sizes {
        let mut caches: Vec<_> = (0..m).map(|_| blocks.new_cache()).collect();
        for (s, c) in caches.iter_mut().enumerate() {
            blocks.forward(c, &head.embed(&[(10 + s) as u32, 20, 30])?)?;
        }
        let inputs: Vec<HiddenStates> = (0..m)
            .map(|s| head.embed(&[(100 + s) as u32]))
            .collect::<Result<_, _>>()?;
        let (mut one, mut batched, mut heads, mut picks) = (0f64, 0f64, 0f64, 0f64);
        for round in 0..rounds {
            if only.is_none() {
                let t = Instant::now();
                for (c, x) in caches.iter_mut().zip(&inputs) {
                    blocks.forward(c, x)?;
                }
                one += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            let mut steps: Vec<BatchStep<'_>> = caches
                .iter_mut()
                .zip(&inputs)
                .map(|(cache, input)| BatchStep {
                    cache,
                    input,
                    stepwise: false,
                })
                .collect();
            for r in blocks.forward_batch(&mut steps) {
                r?;
            }
            batched += t.elapsed().as_secs_f64();
            // The LM head of every session at once, as a serving client runs it (every row's
            // logits returned) and as the last hop runs it (a token picked from each row).
            // Each goes first in every other round (the first finds less of the matrix cached).
            let finals: Vec<&HiddenStates> = inputs.iter().collect();
            for which in [round % 2, 1 - round % 2] {
                let t = Instant::now();
                if which == 0 {
                    head.logits_last_many(&finals)?;
                    heads += t.elapsed().as_secs_f64();
                } else {
                    let mut picked = 0u64;
                    head.logits_last_each(&finals, |_, l| picked += u64::from(argmax(l)))?;
                    std::hint::black_box(picked);
                    picks += t.elapsed().as_secs_f64();
                }
            }
        }
        let per = |total: f64| total / (rounds * m) as f64 * 1e6;
        println!(
            "M={m:2}: one after another {:8.0} us/token ({:6.1} tok/s), batched {:8.0} us/token ({:6.1} tok/s), {:.2}x; LM head {:6.0} us/token, picking {:6.0}",
            per(one),
            1e6 / per(one),
            per(batched),
            1e6 / per(batched),
            one / batched,
            per(heads),
            per(picks)
        );
    }
    Ok(())
}
