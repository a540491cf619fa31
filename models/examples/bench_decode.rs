//! Prefill and decode speed of one process on one backend (benchmark, not a test):
//! `cargo run --release -p sunswarm-models --example bench_decode -- smollm2-135m [cpu] [reps]
//! [depth]`
//! Prefill: 128 prompt tokens in one pass. Decode: 128 greedy tokens, one at a time, each through
//! every block and the LM head (whose share is reported on its own). Prints the median over `reps` runs as one JSON line.
//! With `depth`, both run after that many tokens already in the cache (untimed), as
//! `llama-bench -d` does.

use std::time::Instant;

use sunswarm_models::{BackendKind, Model, ModelSource, device};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 128;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_name = args.first().map(String::as_str).unwrap_or("smollm2-135m");
    let backend: BackendKind = args.get(1).map(String::as_str).unwrap_or("cpu").parse()?;
    let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let depth: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let model = Model::open(&ModelSource::parse(model_name)?)?;
    let dev = device(backend)?;
    let head = model.load_head(&dev)?;
    let blocks = model.load_blocks(0..model.config().n_layers, &dev)?;
    let vocab = model.config().vocab_size as u32;
    // A fixed, text-free prompt: ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..PROMPT_TOKENS as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut head_us = Vec::new();
    for _ in 0..reps {
        let mut cache = blocks.new_cache();
        let context: Vec<u32> = (0..depth as u32)
            .map(|i| (i * 104_729 + 7) % vocab)
            .collect();
        for chunk in context.chunks(256) {
            blocks.forward(&mut cache, &head.embed(chunk)?)?;
        }
        let t0 = Instant::now();
        let h = blocks.forward(&mut cache, &head.embed(&prompt)?)?;
        let mut logits = head.logits_last(&h)?;
        prefill.push(PROMPT_TOKENS as f64 / t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let mut in_head = std::time::Duration::ZERO;
        for _ in 0..DECODE_TOKENS {
            let id = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b })
                as u32;
            let h = blocks.forward(&mut cache, &head.embed(&[id])?)?;
            let t = Instant::now();
            logits = head.logits_last(&h)?;
            in_head += t.elapsed();
        }
        decode.push(DECODE_TOKENS as f64 / t1.elapsed().as_secs_f64());
        head_us.push(in_head.as_secs_f64() * 1e6 / DECODE_TOKENS as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({
            "engine": "sunswarm", "model": model_name, "backend": backend.to_string(),
            "threads": rayon::current_num_threads(), "reps": reps, "depth": depth,
            "prefill_tok_s": (median(&mut prefill) * 10.0).round() / 10.0,
            "decode_tok_s": (median(&mut decode) * 10.0).round() / 10.0,
            "decode_head_us_per_token": median(&mut head_us).round(),
        })
    );
    Ok(())
}
