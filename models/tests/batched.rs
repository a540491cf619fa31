//! Continuous batching must not change any session's result: the steps of 1 to 16 sessions (at
//! different positions, with prompt chunks among them) run in one pass give each session bit for
//! bit the hidden states and cache it gets alone, on a random model and on the real SmolLM2; and
//! a truncated cache continues as one that never held the dropped positions; a prompt gives the
//! same bits whole, in chunks or token by token. The same holds for the client's LM head over
//! many sessions' final states at once.

#[path = "fixtures/real_model.rs"]
mod real_model;

use sunswarm_models::{
    BackendKind, BatchStep, HiddenStates, KvCache, LoadedBlocks, Model, ModelSource, device,
};

/// A prompt of `len` tokens for session `s` (different per session).
fn prompt(s: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((s * 131 + i * 17 + 3) % vocab) as u32)
        .collect()
}

/// Prefills `sessions` prompts alone, then runs `rounds` of decode steps twice: each session
/// alone, and all together in `forward_batch` (with a fresh session's prompt chunk in the same
/// pass); every output must be identical.
fn batched_equals_alone(model: &Model, blocks: &LoadedBlocks, sessions: usize, rounds: usize) {
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let vocab = model.config().vocab_size;
    let mut alone: Vec<KvCache> = Vec::new();
    let mut together: Vec<KvCache> = Vec::new();
    for s in 0..sessions {
        let x = head.embed(&prompt(s, 2 + s * 3 % 11, vocab)).unwrap();
        let (mut a, mut b) = (blocks.new_cache(), blocks.new_cache());
        let ya = blocks.forward(&mut a, &x).unwrap();
        let yb = blocks.forward(&mut b, &x).unwrap();
        assert_eq!(ya.data, yb.data);
        alone.push(a);
        together.push(b);
    }
    for round in 0..rounds {
        let inputs: Vec<HiddenStates> = (0..sessions)
            .map(|s| {
                head.embed(&[((s * 7 + round * 13 + 1) % vocab) as u32])
                    .unwrap()
            })
            .collect();
        let want: Vec<Vec<f32>> = alone
            .iter_mut()
            .zip(&inputs)
            .map(|(c, x)| blocks.forward(c, x).unwrap().data)
            .collect();
        // A newcomer's prompt chunk shares the pass.
        let chunk = head.embed(&prompt(99 + round, 5, vocab)).unwrap();
        let mut newcomer = blocks.new_cache();
        let want_chunk = blocks
            .forward(&mut blocks.new_cache(), &chunk)
            .unwrap()
            .data;
        let mut steps: Vec<BatchStep<'_>> = together
            .iter_mut()
            .zip(&inputs)
            .map(|(cache, input)| BatchStep {
                cache,
                input,
                stepwise: false,
            })
            .collect();
        steps.insert(
            sessions / 2,
            BatchStep {
                cache: &mut newcomer,
                input: &chunk,
                stepwise: false,
            },
        );
        let got = blocks.forward_batch(&mut steps);
        let mut got: Vec<Vec<f32>> = got.into_iter().map(|r| r.unwrap().data).collect();
        let got_chunk = got.remove(sessions / 2);
        assert_eq!(got_chunk, want_chunk, "prompt chunk, round {round}");
        for (s, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "session {s} of {sessions}, round {round}: batched output differs from alone \
                 (max diff {})",
                g.iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            );
        }
        for (a, b) in alone.iter().zip(&together) {
            assert_eq!(a.len(), b.len());
        }
        // The LM head of every session at once gives each the logits it gets alone.
        let dim = model.config().hidden_size;
        let finals: Vec<HiddenStates> = want
            .iter()
            .map(|data| HiddenStates {
                n_tokens: 1,
                dim,
                data: data.clone(),
            })
            .collect();
        let refs: Vec<&HiddenStates> = finals.iter().collect();
        let many = head.logits_last_many(&refs).unwrap();
        for (s, (f, m)) in finals.iter().zip(&many).enumerate() {
            assert!(
                head.logits_last(f).unwrap() == *m,
                "session {s} of {sessions}, round {round}: batched logits differ from alone"
            );
        }
    }
}

#[test]
fn batched_steps_equal_alone_on_a_random_model() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=5").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(1..5, &dev).unwrap();
    for sessions in [1, 2, 3, 8, 16] {
        batched_equals_alone(&model, &blocks, sessions, 3);
    }
}

#[test]
fn batched_steps_equal_alone_on_smollm2() {
    let model = Model::open(&ModelSource::GgufFile(real_model::smollm2_gguf())).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..30, &dev).unwrap();
    batched_equals_alone(&model, &blocks, 16, 3);
    batched_equals_alone(&model, &blocks, 2, 2);
}

#[test]
fn a_bad_step_fails_alone_and_the_others_run() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=2").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..2, &dev).unwrap();
    let head = model.load_head(&dev).unwrap();
    let good = head.embed(&[5]).unwrap();
    let also_good = head.embed(&[6]).unwrap();
    let bad = HiddenStates {
        n_tokens: 1,
        dim: good.dim,
        data: vec![f32::NAN; good.dim],
    };
    let (mut c1, mut c2, mut c3) = (blocks.new_cache(), blocks.new_cache(), blocks.new_cache());
    let want = blocks.forward(&mut blocks.new_cache(), &good).unwrap().data;
    let mut steps = vec![
        BatchStep {
            cache: &mut c1,
            input: &good,
            stepwise: false,
        },
        BatchStep {
            cache: &mut c2,
            input: &bad,
            stepwise: false,
        },
        BatchStep {
            cache: &mut c3,
            input: &also_good,
            stepwise: false,
        },
    ];
    let out = blocks.forward_batch(&mut steps);
    assert_eq!(out[0].as_ref().unwrap().data, want);
    assert!(
        out[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    assert!(out[2].is_ok());
    assert_eq!((c1.len(), c2.len(), c3.len()), (1, 0, 1));
}

/// A replay after failover sends the decode steps a session took as one stepwise step: its rows
/// must come out, and leave the cache, bit for bit as the one-token steps did, also beside
/// another session's decode step in the same pass.
fn stepwise_equals_one_at_a_time(model: &Model, blocks: &LoadedBlocks, steps: usize) {
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = prompt(7, steps, vocab);
    let x = head.embed(&prompt(3, 9, vocab)).unwrap();
    let (mut alone, mut replayed) = (blocks.new_cache(), blocks.new_cache());
    blocks.forward(&mut alone, &x).unwrap();
    blocks.forward(&mut replayed, &x).unwrap();
    let mut want = Vec::new();
    for &id in &ids {
        want.extend(
            blocks
                .forward(&mut alone, &head.embed(&[id]).unwrap())
                .unwrap()
                .data,
        );
    }
    let rows = head.embed(&ids).unwrap();
    let other_input = head.embed(&[11]).unwrap();
    let mut other = blocks.new_cache();
    blocks.forward(&mut other, &x).unwrap();
    let want_other = {
        let mut c = blocks.new_cache();
        blocks.forward(&mut c, &x).unwrap();
        blocks.forward(&mut c, &other_input).unwrap().data
    };
    let mut batch = vec![
        BatchStep {
            cache: &mut other,
            input: &other_input,
            stepwise: false,
        },
        BatchStep {
            cache: &mut replayed,
            input: &rows,
            stepwise: true,
        },
    ];
    let mut got = blocks.forward_batch(&mut batch).into_iter();
    assert_eq!(got.next().unwrap().unwrap().data, want_other);
    let got = got.next().unwrap().unwrap();
    assert_eq!(got.n_tokens, steps);
    assert!(
        got.data == want,
        "stepwise rows differ from one-token steps (max diff {})",
        got.data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    );
    // The caches agree too: the next step gives the same output on both.
    assert_eq!(alone.len(), replayed.len());
    let next = head.embed(&[42]).unwrap();
    assert_eq!(
        blocks.forward(&mut alone, &next).unwrap().data,
        blocks.forward(&mut replayed, &next).unwrap().data
    );
}

#[test]
fn stepwise_rows_equal_one_token_steps_on_a_random_model() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=9").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..4, &dev).unwrap();
    for steps in [1, 2, 7, 20] {
        stepwise_equals_one_at_a_time(&model, &blocks, steps);
    }
}

#[test]
fn stepwise_rows_equal_one_token_steps_on_smollm2() {
    let model = Model::open(&ModelSource::GgufFile(real_model::smollm2_gguf())).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(10..20, &dev).unwrap();
    stepwise_equals_one_at_a_time(&model, &blocks, 12);
}

/// On the CPU a prompt gives the same bits whole, in chunks of any size, and token by token: its
/// outputs and its cache (the next step's output).
fn a_prompt_gives_the_same_bits_however_it_is_cut(model: &Model, blocks: &LoadedBlocks) {
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let ids = prompt(5, 23, model.config().vocab_size);
    let next = head.embed(&[42]).unwrap();
    let run = |chunk: usize| {
        let mut cache = blocks.new_cache();
        let mut out = Vec::new();
        for part in ids.chunks(chunk) {
            out.extend(
                blocks
                    .forward(&mut cache, &head.embed(part).unwrap())
                    .unwrap()
                    .data,
            );
        }
        (out, blocks.forward(&mut cache, &next).unwrap().data)
    };
    let whole = run(ids.len());
    for chunk in [1, 2, 5, 16] {
        let (out, after) = run(chunk);
        assert!(out == whole.0, "chunks of {chunk}: outputs differ");
        assert!(after == whole.1, "chunks of {chunk}: the caches differ");
    }
}

#[test]
fn a_prompt_gives_the_same_bits_however_it_is_cut_on_a_random_model() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=4").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..4, &dev).unwrap();
    a_prompt_gives_the_same_bits_however_it_is_cut(&model, &blocks);
}

#[test]
fn a_prompt_gives_the_same_bits_however_it_is_cut_on_smollm2() {
    let model = Model::open(&ModelSource::GgufFile(real_model::smollm2_gguf())).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..10, &dev).unwrap();
    a_prompt_gives_the_same_bits_however_it_is_cut(&model, &blocks);
}

/// With 4-bit rows multiplying 8-bit activations (opt-in), a session's bits still do not depend
/// on its company, in a pass or in a stepwise replay. On a CPU without the kernels the switch
/// must refuse, and the f32 tests above cover the rest.
#[test]
fn batched_and_stepwise_rows_equal_alone_with_int8_activations() {
    if !sunswarm_models::set_int8_activations(true) {
        assert!(!sunswarm_models::int8_supported());
        assert!(!sunswarm_models::int8_activations());
        return;
    }
    assert!(sunswarm_models::int8_activations());
    let model = Model::open(&ModelSource::GgufFile(real_model::smollm2_gguf())).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let blocks = model.load_blocks(0..30, &dev).unwrap();
    batched_equals_alone(&model, &blocks, 16, 2);
    let some = model.load_blocks(10..20, &dev).unwrap();
    stepwise_equals_one_at_a_time(&model, &some, 12);
}

/// A hop whose replayed suffix changed drops it from its cache and computes the new one: the
/// truncated cache continues exactly as a cache that never held the dropped positions.
#[test]
fn a_truncated_cache_continues_as_one_that_never_held_the_rest() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=5").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let blocks = model.load_blocks(0..4, &dev).unwrap();
    let vocab = model.config().vocab_size;
    let x = head.embed(&prompt(1, 6, vocab)).unwrap();
    let step = |id: u32| head.embed(&[id]).unwrap();
    let (mut kept, mut fresh) = (blocks.new_cache(), blocks.new_cache());
    blocks.forward(&mut kept, &x).unwrap();
    blocks.forward(&mut fresh, &x).unwrap();
    for id in [5, 6] {
        blocks.forward(&mut kept, &step(id)).unwrap();
        blocks.forward(&mut fresh, &step(id)).unwrap();
    }
    // Steps the fresh cache never sees.
    for id in [70, 71, 72] {
        blocks.forward(&mut kept, &step(id)).unwrap();
    }
    kept.truncate(8);
    assert_eq!(kept.len(), 8);
    for id in [9, 10] {
        assert_eq!(
            blocks.forward(&mut kept, &step(id)).unwrap().data,
            blocks.forward(&mut fresh, &step(id)).unwrap().data
        );
    }
    // Past the end: nothing changes; to zero: an empty cache.
    kept.truncate(99);
    assert_eq!(kept.len(), 10);
    kept.truncate(0);
    let mut empty = blocks.new_cache();
    assert_eq!(
        blocks.forward(&mut kept, &x).unwrap().data,
        blocks.forward(&mut empty, &x).unwrap().data
    );
}

/// The head a last hop loads (without an untied model's embedding table) gives the client's
/// head's logits bit for bit, alone, for many rows at once, and row by row; with tied
/// embeddings (as here) it still embeds as the client does.
#[test]
fn the_output_head_gives_the_clients_logits_and_does_not_embed() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=6").unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let client = model.load_head(&dev).unwrap();
    let node = model.load_output_head(&dev).unwrap();
    let d = model.config().hidden_size;
    let rows: Vec<HiddenStates> = (0..5)
        .map(|s| {
            let data = (0..2 * d)
                .map(|i| ((s * 31 + i * 7) % 13) as f32 - 6.0)
                .collect();
            HiddenStates::new(2, d, data).unwrap()
        })
        .collect();
    let refs: Vec<&HiddenStates> = rows.iter().collect();
    let many = node.logits_last_many(&refs).unwrap();
    for (r, got) in rows.iter().zip(&many) {
        assert_eq!(got, &client.logits_last(r).unwrap());
    }
    // Handed row by row from the buffer the head keeps: the same bits, whatever the number of
    // rows of the call before (the buffer shrinks and grows between these calls).
    for n in [5, 2, 1, 5] {
        let mut seen = vec![false; n];
        node.logits_last_each(&refs[..n], |i, logits| {
            assert_eq!(logits, &many[i][..], "row {i} of {n}");
            seen[i] = true;
        })
        .unwrap();
        assert!(seen.iter().all(|&s| s), "every row of {n} handed over");
    }
    assert_eq!(
        node.embed(&[1, 2]).unwrap().data,
        client.embed(&[1, 2]).unwrap().data
    );
}
