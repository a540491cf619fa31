//! The GGUF loading path end to end on a small file written here: a random model exported to
//! GGUF (with Q/K rows permuted the way converters store them) must give exactly the logits of
//! the same model loaded directly; damaged files give errors that name the problem.

use std::path::Path;

use sunswarm_models::gguf::{GgmlType, GgufTensorData, GgufValue, write_gguf};
use sunswarm_models::model::byte_level_tokenizer_metadata;
use sunswarm_models::{BackendKind, Model, ModelError, ModelSource, device};

/// The converter's permutation from Hugging Face rows to GGUF rows.
fn permute(rows: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let hd = rows.len() / cols / n_heads;
    let mut out = vec![0.0; rows.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * (hd / 2) + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes `random:tiny:seed=S` as GGUF, leaving out `skip` and storing `odd_type` with Q8_0.
fn export(path: &Path, skip: Option<&str>, q8: Option<&str>) -> Model {
    let src = Model::open(&ModelSource::parse("random:tiny:seed=11").unwrap()).unwrap();
    let c = src.config().clone();
    let mut meta = byte_level_tokenizer_metadata(c.vocab_size);
    let u = |v: usize| GgufValue::U32(v as u32);
    meta.extend([
        ("llama.block_count".to_string(), u(c.n_layers)),
        ("llama.embedding_length".to_string(), u(c.hidden_size)),
        (
            "llama.feed_forward_length".to_string(),
            u(c.intermediate_size),
        ),
        ("llama.attention.head_count".to_string(), u(c.n_heads)),
        ("llama.attention.head_count_kv".to_string(), u(c.n_kv_heads)),
        ("llama.context_length".to_string(), u(c.max_seq_len)),
        (
            "llama.rope.freq_base".to_string(),
            GgufValue::F32(c.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".to_string(),
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
    ]);
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    for i in 0..c.n_layers {
        for part in [
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
            names.push(format!("blk.{i}.{part}.weight"));
        }
    }
    let mut tensors = Vec::new();
    for name in names {
        if Some(name.as_str()) == skip {
            continue;
        }
        let (mut data, shape) = src.load_tensor_f32(&name).unwrap();
        if name.ends_with("attn_q.weight") {
            data = permute(&data, c.n_heads, shape[1]);
        } else if name.ends_with("attn_k.weight") {
            data = permute(&data, c.n_kv_heads, shape[1]);
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let ty = if Some(name.as_str()) == q8 {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        };
        tensors.push(GgufTensorData::encode(name, dims, ty, &data).unwrap());
    }
    write_gguf(path, &meta, &tensors).unwrap();
    src
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sunswarm-gguf-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn exported_gguf_matches_the_source_model_exactly() {
    let path = temp("tiny.gguf");
    let src = export(&path, None, None);
    let gguf = Model::open(&ModelSource::parse(path.to_str().unwrap()).unwrap()).unwrap();
    assert_eq!(gguf.config().n_layers, src.config().n_layers);
    assert!(gguf.config().tie_word_embeddings);
    let dev = device(BackendKind::Cpu).unwrap();
    let run = |m: &Model| {
        let head = m.load_head(&dev).unwrap();
        let b = m.load_blocks(0..m.config().n_layers, &dev).unwrap();
        let mut c = b.new_cache();
        head.logits_last(
            &b.forward(&mut c, &head.embed(&[4, 8, 15, 16, 23, 42]).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(run(&src), run(&gguf));
    // The tokenizer comes from the file's metadata.
    let tok = gguf.tokenizer().unwrap();
    let ids = tok.encode("<|im_start|>hi").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>hi");
}

#[test]
fn quantized_tensors_load_close_to_their_f32_values() {
    let path = temp("tiny-q8.gguf");
    let src = export(&path, None, Some("blk.0.ffn_up.weight"));
    let gguf = Model::open(&ModelSource::parse(path.to_str().unwrap()).unwrap()).unwrap();
    let (a, _) = src.load_tensor_f32("blk.0.ffn_up.weight").unwrap();
    let (b, _) = gguf.load_tensor_f32("blk.0.ffn_up.weight").unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        worst > 0.0 && worst <= scale / 127.0,
        "worst {worst} scale {scale}"
    );
}

#[test]
fn a_missing_tensor_is_named_when_its_block_loads() {
    let path = temp("tiny-missing.gguf");
    export(&path, Some("blk.4.ffn_down.weight"), None);
    let m = Model::open(&ModelSource::parse(path.to_str().unwrap()).unwrap()).unwrap();
    let dev = device(BackendKind::Cpu).unwrap();
    // Blocks that do not need it load fine: a node never reads outside its range.
    m.load_blocks(0..4, &dev).unwrap();
    let err = m.load_blocks(4..6, &dev).err().unwrap();
    assert!(
        matches!(&err, ModelError::MissingTensor(n) if n == "blk.4.ffn_down.weight"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_files_are_rejected_with_a_reason() {
    let path = temp("tiny-full.gguf");
    export(&path, None, None);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 3, 10, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = temp(&format!("cut-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = Model::open(&ModelSource::parse(p.to_str().unwrap()).unwrap())
            .err()
            .expect("truncated file must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("GGUF") || msg.contains("outside"),
            "cut {cut}: {msg}"
        );
    }
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let p = temp("badmagic.gguf");
    std::fs::write(&p, &bad).unwrap();
    let msg = Model::open(&ModelSource::parse(p.to_str().unwrap()).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");
}
