//! The Hugging Face folder path: a random model written as config.json + safetensors (f32, or
//! bf16 split over two shards with an index) loads with the same logits as the source.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use sunswarm_models::{BackendKind, Model, ModelSource, device};

fn hf_name(gguf: &str) -> String {
    let fixed = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ];
    if let Some((_, hf)) = fixed.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (i, part) = rest.split_once('.').unwrap();
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("{other}"),
    };
    format!("model.layers.{i}.{part}")
}

fn export(src: &Model, dir: &Path, bf16: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let c = src.config();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_seq_len, "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    for i in 0..c.n_layers {
        for p in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            names.push(format!("blk.{i}.{p}.weight"));
        }
    }
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let (data, shape) = src.load_tensor_f32(n).unwrap();
            let bytes = if bf16 {
                data.iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect()
            } else {
                data.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            (hf_name(n), shape, bytes)
        })
        .collect();
    let dtype = if bf16 { Dtype::BF16 } else { Dtype::F32 };
    let write = |file: &str, part: &[(String, Vec<usize>, Vec<u8>)]| {
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(
            dir.join(file),
            safetensors::tensor::serialize(views, None).unwrap(),
        )
        .unwrap();
    };
    if bf16 {
        let (a, b) = tensors.split_at(tensors.len() / 2);
        write("model-00001-of-00002.safetensors", a);
        write("model-00002-of-00002.safetensors", b);
        let mut map = HashMap::new();
        for (n, _, _) in a {
            map.insert(n.clone(), "model-00001-of-00002.safetensors");
        }
        for (n, _, _) in b {
            map.insert(n.clone(), "model-00002-of-00002.safetensors");
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": map });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    } else {
        write("model.safetensors", &tensors);
    }
}

fn logits(m: &Model) -> Vec<f32> {
    let dev = device(BackendKind::Cpu).unwrap();
    let head = m.load_head(&dev).unwrap();
    let b = m.load_blocks(0..m.config().n_layers, &dev).unwrap();
    let mut c = b.new_cache();
    head.logits_last(
        &b.forward(&mut c, &head.embed(&[9, 8, 7, 6]).unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn safetensors_folders_load_like_the_source() {
    let src = Model::open(&ModelSource::parse("random:tiny:seed=4").unwrap()).unwrap();
    let base = std::env::temp_dir().join(format!("sunswarm-hf-{}", std::process::id()));
    let f32_dir = base.join("f32");
    export(&src, &f32_dir, false);
    let m = Model::open(&ModelSource::parse(f32_dir.to_str().unwrap()).unwrap()).unwrap();
    assert_eq!(logits(&src), logits(&m));

    let bf_dir = base.join("bf16");
    export(&src, &bf_dir, true);
    let m = Model::open(&ModelSource::parse(bf_dir.to_str().unwrap()).unwrap()).unwrap();
    let (a, b) = (logits(&src), logits(&m));
    let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst > 0.0 && worst < 0.05 * scale,
        "bf16 rounding moved logits by {worst} (scale {scale})"
    );
    // Different weights, different identity.
    assert_ne!(m.model_id(), src.model_id());

    std::fs::remove_file(bf_dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Model::open(&ModelSource::parse(bf_dir.to_str().unwrap()).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
