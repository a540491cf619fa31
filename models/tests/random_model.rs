//! Behaviour that does not need real weights, on deterministic random models: block ranges
//! against the whole model, KV-cache reuse against recomputation, determinism, and input checks.

use sunswarm_models::{BackendKind, HiddenStates, Model, ModelError, ModelSource, device};

fn tiny(seed: u64) -> Model {
    Model::open(&ModelSource::parse(&format!("random:tiny:seed={seed}")).unwrap()).unwrap()
}

#[test]
fn block_ranges_chain_to_the_whole_model_at_prefill_and_decode() {
    let model = tiny(3);
    let dev = device(BackendKind::Cpu).unwrap();
    let n = model.config().n_layers;
    let head = model.load_head(&dev).unwrap();
    let whole = model.load_blocks(0..n, &dev).unwrap();
    let parts: Vec<_> = [0..2, 2..3, 3..n]
        .into_iter()
        .map(|r| model.load_blocks(r, &dev).unwrap())
        .collect();
    let mut wc = whole.new_cache();
    let mut pcs: Vec<_> = parts.iter().map(|p| p.new_cache()).collect();
    let steps: Vec<Vec<u32>> = vec![vec![5, 17, 99, 4, 250], vec![7], vec![8], vec![100, 101]];
    for ids in steps {
        let x = head.embed(&ids).unwrap();
        let a = whole.forward(&mut wc, &x).unwrap();
        let mut b = x;
        for (p, c) in parts.iter().zip(pcs.iter_mut()) {
            b = p.forward(c, &b).unwrap();
        }
        let la = head.logits_last(&a).unwrap();
        let lb = head.logits_last(&b).unwrap();
        let scale = la.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "max diff {worst}, scale {scale}");
    }
    assert_eq!(wc.len(), 9);
}

#[test]
fn cached_decoding_equals_recomputing_the_whole_sequence() {
    let model = tiny(1);
    let dev = device(BackendKind::Cpu).unwrap();
    let n = model.config().n_layers;
    let head = model.load_head(&dev).unwrap();
    let blocks = model.load_blocks(0..n, &dev).unwrap();
    let seq = [3u32, 60, 61, 62, 200, 9];
    // Token by token with the cache...
    let mut cache = blocks.new_cache();
    let mut last = None;
    for &id in &seq {
        last = Some(
            blocks
                .forward(&mut cache, &head.embed(&[id]).unwrap())
                .unwrap(),
        );
    }
    // ...versus the whole sequence at once with a fresh cache.
    let mut fresh = blocks.new_cache();
    let all = blocks
        .forward(&mut fresh, &head.embed(&seq).unwrap())
        .unwrap();
    let a = head.logits_last(&last.unwrap()).unwrap();
    let b = head.logits_last(&all).unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "{worst}");
    // Clearing the cache and replaying reproduces the same states exactly.
    cache.clear();
    let replay = blocks
        .forward(&mut cache, &head.embed(&seq).unwrap())
        .unwrap();
    assert_eq!(replay, all);
}

#[test]
fn random_models_are_deterministic_per_seed() {
    let dev = device(BackendKind::Cpu).unwrap();
    let run = |seed| {
        let m = tiny(seed);
        let head = m.load_head(&dev).unwrap();
        let b = m.load_blocks(0..m.config().n_layers, &dev).unwrap();
        let mut c = b.new_cache();
        (
            m.model_id(),
            head.logits_last(&b.forward(&mut c, &head.embed(&[1, 2, 3]).unwrap()).unwrap())
                .unwrap(),
        )
    };
    let (id1, l1) = run(5);
    let (id2, l2) = run(5);
    let (id3, l3) = run(6);
    assert_eq!(id1, id2);
    assert_eq!(l1, l2);
    assert_ne!(id1, id3);
    assert_ne!(l1, l3);
}

#[test]
fn bad_inputs_are_named_errors() {
    let model = tiny(0);
    let dev = device(BackendKind::Cpu).unwrap();
    let n = model.config().n_layers;
    let err = model.load_blocks(0..n + 1, &dev).err().unwrap();
    assert!(
        matches!(err, ModelError::BlocksOutsideModel { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("6 blocks"), "{err}");
    assert!(model.load_blocks(3..3, &dev).is_err());
    let head = model.load_head(&dev).unwrap();
    assert!(
        head.embed(&[])
            .unwrap_err()
            .to_string()
            .contains("no tokens")
    );
    assert!(
        head.embed(&[100_000])
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
    let blocks = model.load_blocks(0..2, &dev).unwrap();
    let mut cache = blocks.new_cache();
    let d = model.config().hidden_size;
    let wrong_dim = HiddenStates {
        n_tokens: 1,
        dim: d + 1,
        data: vec![0.0; d + 1],
    };
    assert!(
        blocks
            .forward(&mut cache, &wrong_dim)
            .unwrap_err()
            .to_string()
            .contains("dim")
    );
    let nan = HiddenStates {
        n_tokens: 1,
        dim: d,
        data: vec![f32::NAN; d],
    };
    assert!(
        blocks
            .forward(&mut cache, &nan)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    let short = HiddenStates {
        n_tokens: 2,
        dim: d,
        data: vec![0.0; d],
    };
    assert!(blocks.forward(&mut cache, &short).is_err());
    assert_eq!(
        cache.len(),
        0,
        "a rejected input must not advance the cache"
    );
    assert!(matches!(
        ModelSource::parse("no-such-model"),
        Err(ModelError::UnknownModel(_))
    ));
}
