//! The wgpu backend computes the same numbers as the CPU backend (within float tolerance) on a
//! random model. Skips, saying why, where no GPU adapter exists (CI installs lavapipe so it runs).
#![cfg(feature = "wgpu")]

use sunswarm_models::{BackendKind, Model, ModelSource, device};

fn logits_and_greedy(kind: BackendKind, model: &Model) -> Option<(Vec<f32>, Vec<u32>)> {
    let dev = match device(kind) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIP: {kind} backend unavailable: {e}");
            return None;
        }
    };
    let head = model.load_head(&dev).unwrap();
    let blocks = model.load_blocks(0..model.config().n_layers, &dev).unwrap();
    let mut cache = blocks.new_cache();
    let mut x = head.embed(&[5, 6, 7, 8, 9]).unwrap();
    let mut first = None;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let h = blocks.forward(&mut cache, &x).unwrap();
        let logits = head.logits_last(&h).unwrap();
        let id = logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b }) as u32;
        first.get_or_insert(logits);
        ids.push(id);
        x = head.embed(&[id]).unwrap();
    }
    Some((first.unwrap(), ids))
}

#[test]
fn wgpu_matches_cpu_on_a_random_model() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=2").unwrap()).unwrap();
    let Some((gpu_logits, gpu_ids)) = logits_and_greedy(BackendKind::Wgpu, &model) else {
        return;
    };
    let (cpu_logits, cpu_ids) = logits_and_greedy(BackendKind::Cpu, &model).unwrap();
    let scale = cpu_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = cpu_logits
        .iter()
        .zip(&gpu_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4 * scale.max(1.0), "max |cpu - wgpu| = {worst}");
    assert_eq!(cpu_ids, gpu_ids);
}

#[test]
fn a_cache_from_blocks_on_another_device_is_refused_by_name() {
    let model = Model::open(&ModelSource::parse("random:tiny:seed=3").unwrap()).unwrap();
    let gpu = match device(BackendKind::Wgpu) {
        Ok(d) => d,
        Err(e) => return eprintln!("SKIP: wgpu backend unavailable: {e}"),
    };
    let cpu = device(BackendKind::Cpu).unwrap();
    let n = model.config().n_layers;
    let (on_cpu, on_gpu) = (
        model.load_blocks(0..n, &cpu).unwrap(),
        model.load_blocks(0..n, &gpu).unwrap(),
    );
    let x = model.load_head(&cpu).unwrap().embed(&[5, 6, 7]).unwrap();
    // Each kind of cache, once it holds positions, is refused by the other device's blocks
    // (CPU caches live in host buffers, others in tensors), and still works where it belongs.
    for (holder, other) in [(&on_cpu, &on_gpu), (&on_gpu, &on_cpu)] {
        let mut cache = holder.new_cache();
        holder.forward(&mut cache, &x).unwrap();
        let err = other.forward(&mut cache, &x).unwrap_err().to_string();
        assert!(err.contains("another device"), "{err}");
        assert_eq!(cache.len(), 3);
        holder.forward(&mut cache, &x).unwrap();
        assert_eq!(cache.len(), 6);
    }
}
