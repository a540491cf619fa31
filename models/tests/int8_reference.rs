//! SmolLM2-135M with 4-bit rows multiplying 8-bit activations (opt-in) against the independent
//! reference (../shared/reference/smollm2-greedy.json), by the rules its README gives for a path
//! with quantized activations: greedy tokens agree up to the first step whose reference margin is
//! under 0.5 (rounding may flip a near-tie, after which the texts part), and the first position's
//! log-probabilities of the reference's top five are within 0.5 (llama.cpp: 0.2 to 1.2).

use std::path::PathBuf;

use sunswarm_models::{BackendKind, Model, ModelSource, device};

#[test]
fn int8_activations_follow_the_reference_up_to_its_near_ties() {
    if !sunswarm_models::set_int8_activations(true) {
        assert!(!sunswarm_models::int8_supported());
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/smollm2-greedy.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).expect("reference JSON");
    let model = Model::open(&ModelSource::parse("smollm2-135m").unwrap()).expect("open smollm2");
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let blocks = model.load_blocks(0..30, &dev).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (mut agreed, mut worst_logprob) = (0usize, 0f64);
    for p in reference["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let steps = p["steps"].as_array().unwrap();
        let want = ids(&p["greedy_ids"]);
        // Tokens must agree through the first near-tie step (inclusive of the steps before it).
        let must = steps
            .iter()
            .position(|s| s["margin_to_2nd"].as_f64().unwrap() < 0.5)
            .unwrap_or(steps.len());
        let mut cache = blocks.new_cache();
        let mut x = head.embed(&ids(&p["prompt_ids"])).unwrap();
        // The first position is checked on every prompt, its token only before a near-tie.
        for (step, &want_id) in want.iter().enumerate().take(must.max(1)) {
            let logits = head
                .logits_last(&blocks.forward(&mut cache, &x).unwrap())
                .unwrap();
            if step == 0 {
                let lse = logits
                    .iter()
                    .map(|&v| f64::from(v))
                    .fold(f64::NEG_INFINITY, f64::max);
                let lse = lse
                    + logits
                        .iter()
                        .map(|&v| (f64::from(v) - lse).exp())
                        .sum::<f64>()
                        .ln();
                let ref_lse = steps[0]["logsumexp"].as_f64().unwrap();
                for top in p["first_pos_top5"].as_array().unwrap() {
                    let id = top["id"].as_u64().unwrap() as usize;
                    let ours = f64::from(logits[id]) - lse;
                    let theirs = top["logit"].as_f64().unwrap() - ref_lse;
                    worst_logprob = worst_logprob.max((ours - theirs).abs());
                }
            }
            let got = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b })
                as u32;
            if step < must {
                assert_eq!(got, want_id, "{name}: step {step} (before any near-tie)");
                agreed += 1;
            }
            x = head.embed(&[got]).unwrap();
        }
    }
    eprintln!("{agreed} tokens agreed; first-position log-probs within {worst_logprob:.4}");
    // The reference's README allows llama.cpp's 1.2; its server on this file measured 0.2 beside
    // us (2026-12-04), and this path 0.27. A bound near that catches a kernel that rounds worse
    // (taking the offset term from the exact sums gave 1.9 and still passed 1.2's tokens).
    assert!(
        worst_logprob <= 0.5,
        "first-position log-probs differ by {worst_logprob}"
    );
}
