//! The node's executor on the real SmolLM2 blocks: steps of concurrent sessions give each session
//! exactly what it gets alone, and a whole prompt sent as one step runs in chunks, so another
//! session's decode step waits for about one chunk, not for the whole prompt.

use std::sync::Arc;
use std::time::Instant;

use sunswarm_models::{BackendKind, Head, Model, ModelSource, device};
use sunswarm_node::batch::{BatchConfig, Executor, StepTerms};
use sunswarm_node::compute::{BlockRunner, ModelRunner};

fn smollm2() -> (Arc<dyn BlockRunner>, Head) {
    let alias = sunswarm_models::source::ALIASES[0];
    let path = sunswarm_models::fetch::Fetcher::from_env().alias_path(&alias);
    assert!(
        path.is_file(),
        "the real model is not cached at {}: run `cargo run -p sunswarm-client -- fetch` first",
        path.display()
    );
    let model = Model::open(&ModelSource::GgufFile(path)).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    let head = model.load_head(&dev).unwrap();
    let blocks = model.load_blocks(0..30, &dev).unwrap();
    (Arc::new(ModelRunner::new(blocks)), head)
}

fn embed(head: &Head, ids: &[u32]) -> Vec<f32> {
    head.embed(ids).unwrap().data
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_sessions_get_what_they_get_alone() {
    let (runner, head) = smollm2();
    let (exec, _task) = Executor::start(runner.clone(), BatchConfig::default());
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|s| {
            (0..(3 + 5 * s))
                .map(|i| (100 + 37 * s + 11 * i) as u32)
                .collect()
        })
        .collect();
    // Alone: each session's prompt and three decode steps, one session at a time.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut cache = runner.new_session();
        let mut outs = vec![cache.forward(p.len(), embed(&head, p)).unwrap()];
        for t in 0..3u32 {
            outs.push(cache.forward(1, embed(&head, &[500 + t])).unwrap());
        }
        alone.push(outs);
    }
    // Together: every session's steps handed to the executor at once, round by round.
    let mut caches: Vec<_> = prompts.iter().map(|_| runner.new_session()).collect();
    let mut together: Vec<Vec<Vec<f32>>> = prompts.iter().map(|_| Vec::new()).collect();
    for round in 0..4u32 {
        let steps = caches.drain(..).zip(&prompts).map(|(cache, p)| {
            let exec = exec.clone();
            let (n, data) = if round == 0 {
                (p.len(), embed(&head, p))
            } else {
                (1, embed(&head, &[500 + round - 1]))
            };
            async move {
                exec.step(cache, n, data, false, StepTerms::default())
                    .await
                    .unwrap()
            }
        });
        for (s, done) in futures::future::join_all(steps)
            .await
            .into_iter()
            .enumerate()
        {
            together[s].push(done.output.unwrap());
            caches.push(done.cache);
        }
    }
    for (s, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(a == t, "session {s}: batched outputs differ from alone");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_long_prompt_takes_turns_with_other_sessions_decode_steps() {
    let (runner, head) = smollm2();
    let long: Vec<u32> = (0..768).map(|i| (200 + i * 7 % 3000) as u32).collect();
    let chunk = 64;
    // The whole prompt alone, as one forward, for the comparison.
    let t = Instant::now();
    runner
        .new_session()
        .forward(long.len(), embed(&head, &long))
        .unwrap();
    let whole_prompt = t.elapsed();

    let (exec, _task) = Executor::start(
        runner.clone(),
        BatchConfig {
            max_chunk: chunk,
            ..BatchConfig::default()
        },
    );
    let mut other = runner.new_session();
    other.forward(4, embed(&head, &[1, 2, 3, 4])).unwrap();
    let prompt = {
        let exec = exec.clone();
        let data = embed(&head, &long);
        let cache = runner.new_session();
        tokio::spawn(async move {
            exec.step(cache, 768, data, false, StepTerms::default())
                .await
                .unwrap()
        })
    };
    // Decode steps of the other session while the prompt runs.
    let mut waits = Vec::new();
    let mut prompt_done = None;
    let mut prompt = Some(prompt);
    let mut t = 0u32;
    while prompt_done.is_none() {
        let start = Instant::now();
        let done = exec
            .step(
                other,
                1,
                embed(&head, &[600 + t]),
                false,
                StepTerms::default(),
            )
            .await
            .unwrap();
        waits.push(start.elapsed());
        other = done.cache;
        done.output.unwrap();
        t += 1;
        if prompt.as_ref().is_some_and(|p| p.is_finished()) {
            prompt_done = Some(prompt.take().unwrap().await.unwrap());
        }
        assert!(t < 10_000, "the prompt never finished");
    }
    let prompt_done = prompt_done.unwrap();
    assert_eq!(
        prompt_done.output.unwrap().len(),
        768 * 576,
        "the chunked prompt returns every row"
    );
    let worst = waits.iter().max().copied().unwrap_or_default();
    eprintln!(
        "whole prompt alone {whole_prompt:?}; {} decode steps during it, worst wait {worst:?}",
        waits.len()
    );
    // Twelve chunks: a decode step that waited for the whole prompt would wait about
    // `whole_prompt`; one that waits for one chunk and its own pass far less.
    assert!(
        waits.len() >= 4,
        "the other session made only {} steps while the prompt ran",
        waits.len()
    );
    assert!(
        worst < whole_prompt / 3,
        "a decode step waited {worst:?}, the whole prompt takes {whole_prompt:?}"
    );
}

/// Sessions with a per-token deadline, against a cost model of 10 ms per pass plus 2 ms per token
/// (a fast test runner underneath): the executor takes what it can serve in time and refuses
/// the rest with the reason, and answers a step whose deadline no pass can meet at once.
#[tokio::test(flavor = "current_thread")]
async fn sessions_with_deadlines_are_taken_only_when_they_can_be_served() {
    use sunswarm_batching::LinearCost;
    use sunswarm_node::compute::{ComputeError, ShiftRunner};
    let runner: Arc<dyn BlockRunner> = Arc::new(ShiftRunner { dim: 4, shift: 1.0 });
    let cost = LinearCost::new(0.010, 0.002, 0.0).unwrap();
    let (exec, _task) = Executor::start_with_cost(runner.clone(), BatchConfig::default(), cost);
    // Alone a token takes 12 ms here.
    let err = exec
        .admit(64, Some(0.011))
        .err()
        .expect("an 11 ms deadline is refused");
    assert!(err.to_string().contains("even alone"), "{err}");
    // With a 20 ms deadline: 1 session 12 ms, 2 -> 14, ... 5 -> 20 ms; the sixth would take 22.
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(
            exec.admit(64, Some(0.020))
                .unwrap_or_else(|e| panic!("session {i}: {e}")),
        );
    }
    let err = exec
        .admit(64, Some(0.020))
        .err()
        .expect("a sixth session is refused");
    assert!(err.to_string().contains("beside the sessions"), "{err}");
    // Sessions without a deadline are always taken, but they slow the others down: a looser
    // newcomer is now refused because it would break a held session's deadline.
    let free = exec.admit(64, None).unwrap();
    let err = exec
        .admit(64, Some(1.0))
        .err()
        .expect("it would break a held session");
    assert!(err.to_string().contains("miss its deadline"), "{err}");
    drop(free);
    held.pop();
    assert!(
        exec.admit(64, Some(0.020)).is_ok(),
        "room again after one left"
    );

    let with_deadline = |s: f64| StepTerms {
        deadline_s: Some(s),
        ..StepTerms::default()
    };
    // A decode step whose deadline even a pass of its own cannot meet is answered at once.
    let done = exec
        .step(
            runner.new_session(),
            1,
            vec![0.0; 4],
            false,
            with_deadline(0.005),
        )
        .await
        .unwrap();
    assert!(
        matches!(done.output, Err(ComputeError::DeadlineMissed { .. })),
        "{:?}",
        done.output
    );
    // One it can meet runs.
    let done = exec
        .step(
            runner.new_session(),
            1,
            vec![0.0; 4],
            false,
            with_deadline(0.050),
        )
        .await
        .unwrap();
    assert_eq!(done.output.unwrap(), vec![1.0; 4]);
}
