//! The real SmolLM2-135M-Instruct Q4_1 GGUF: header facts, every tensor's dequantization
//! against the Python `gguf` package (fixtures/smollm2_q4_1_digests.json), and truncated copies.

#[path = "fixtures/real_model.rs"]
mod real_model;

use std::collections::HashMap;

use sunswarm_models::gguf::{GgmlType, GgufError, GgufFile};

/// sum of bits(x[i]) * (2i + 1), wrapping: the fingerprint the fixture generator computes.
fn fingerprint(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |acc, (i, v)| {
        acc.wrapping_add(u64::from(v.to_bits()).wrapping_mul(2 * i as u64 + 1))
    })
}

#[test]
fn header_matches_the_model_facts() {
    let g = GgufFile::open(&real_model::smollm2_gguf()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count"), Some(30));
    assert_eq!(g.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(g.get_u64("llama.feed_forward_length"), Some(1536));
    assert_eq!(g.get_u64("llama.attention.head_count"), Some(9));
    assert_eq!(g.get_u64("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.get_f64("llama.rope.freq_base"), Some(100000.0));
    let eps = g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap();
    assert!((eps - 1e-5).abs() < 1e-12, "{eps}");
    assert_eq!(
        g.get_array("tokenizer.ggml.tokens").map(<[_]>::len),
        Some(49152)
    );
    assert_eq!(g.metadata_keys().count(), 33);

    let mut by_type: HashMap<GgmlType, usize> = HashMap::new();
    for t in g.tensors() {
        *by_type.entry(t.ggml_type).or_default() += 1;
    }
    assert_eq!(by_type[&GgmlType::Q4_1], 210);
    assert_eq!(by_type[&GgmlType::F32], 61);
    assert_eq!(by_type[&GgmlType::Q8_0], 1);
    assert!(g.tensor("output.weight").is_none(), "tied embeddings");
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dims.as_slice(), q.shape()),
        (&[576u64, 576][..], vec![576, 576])
    );
    let k = g.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape(), vec![192, 576]);
    assert_eq!(k.n_bytes().unwrap(), 192 * 576 / 32 * 20);
}

#[test]
fn every_tensor_dequantizes_exactly_like_python_gguf() {
    let g = GgufFile::open(&real_model::smollm2_gguf()).unwrap();
    let digests: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2_q4_1_digests.json")).unwrap();
    let digests = digests.as_array().unwrap();
    assert_eq!(digests.len(), g.tensors().count());
    for d in digests {
        let name = d["name"].as_str().unwrap();
        let (values, shape) = g.dequantize(name).unwrap();
        let expected_shape: Vec<usize> = d["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, expected_shape, "{name}");
        assert_eq!(
            g.tensor(name).unwrap().ggml_type.to_string(),
            d["type"].as_str().unwrap()
        );
        for s in d["samples"].as_array().unwrap() {
            let (i, v) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
            // JSON holds the exact f32 value; serde_json's f64 parse may be off in the last bit
            assert_eq!(values[i], v as f32, "{name}[{i}]");
        }
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let expected_sum = d["sum"].as_f64().unwrap();
        assert!(
            (sum - expected_sum).abs() <= 1e-9 * expected_sum.abs().max(1.0),
            "{name}: sum {sum} vs {expected_sum}"
        );
        let expected_fp: u64 = d["fingerprint"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            fingerprint(&values),
            expected_fp,
            "{name}: bits differ from python gguf"
        );
    }
}

#[test]
fn truncated_copies_fail_with_a_named_error() {
    let path = real_model::smollm2_gguf();
    let bytes = std::fs::read(&path).unwrap();
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_offset = g.data_offset() as usize;
    let cuts = [
        0,
        3,
        10,
        100,
        // inside the vocabulary array
        500_000,
        data_offset - 1,
        data_offset,
        data_offset + 1000,
        bytes.len() / 2,
        bytes.len() - 1,
    ];
    for cut in cuts {
        let err = GgufFile::from_bytes(bytes[..cut].to_vec()).unwrap_err();
        let text = err.to_string();
        match err {
            GgufError::Truncated { offset, .. } => {
                assert!(offset <= cut as u64, "cut {cut}: {text}")
            }
            GgufError::TensorOutOfBounds { ref name, .. } => {
                assert!(g.tensor(name).is_some(), "cut {cut}: {text}")
            }
            other => panic!("cut {cut}: unexpected error {other}"),
        }
    }
    // and through the file/mmap path, naming the last tensor, which no longer fits
    let dir = tempfile::tempdir().unwrap();
    let cut_path = dir.path().join("cut.gguf");
    std::fs::write(&cut_path, &bytes[..bytes.len() - 1]).unwrap();
    let err = GgufFile::open(&cut_path).unwrap_err();
    let last = g.tensors().max_by_key(|t| t.offset).unwrap();
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { name, .. } if *name == last.name),
        "{err}"
    );
    assert!(err.to_string().contains(&last.name), "{err}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = GgufFile::open(std::path::Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}
