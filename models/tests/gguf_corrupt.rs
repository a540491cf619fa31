//! Damaged GGUF images: random bytes, random mutations and truncations of a valid file, and
//! hand-made corruptions. Parsing (and dequantizing whatever parses) must return errors, never
//! panic or allocate without bound.

use proptest::prelude::*;
use sunswarm_models::gguf::{GgmlType, GgufError, GgufFile, GgufTensorData, GgufValue, gguf_bytes};

fn valid_image() -> Vec<u8> {
    let metadata = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("n".to_string(), GgufValue::U32(7)),
        (
            "nested".to_string(),
            GgufValue::Array(vec![GgufValue::Array(vec![
                GgufValue::I8(-1),
                GgufValue::I8(2),
            ])]),
        ),
        ("flag".to_string(), GgufValue::Bool(true)),
    ];
    let values: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
    let tensors = vec![
        GgufTensorData::encode("a", vec![32, 2], GgmlType::Q8_0, &values).unwrap(),
        GgufTensorData::encode("b", vec![32, 2], GgmlType::Q4_1, &values).unwrap(),
        GgufTensorData::encode("c", vec![64], GgmlType::F16, &values).unwrap(),
        GgufTensorData::f32("d", vec![4], &values[..4]).unwrap(),
    ];
    gguf_bytes(&metadata, &tensors).unwrap()
}

/// Parses and, if that works, dequantizes every tensor; errors are fine, panics are not.
fn exercise(bytes: Vec<u8>) {
    if let Ok(g) = GgufFile::from_bytes(bytes) {
        let names: Vec<String> = g.tensors().map(|t| t.name.clone()).collect();
        for name in names {
            let _ = g.dequantize(&name);
        }
        for key in g.metadata_keys() {
            let _ = (g.get_u64(key), g.get_f64(key), g.get_str(key));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(tail);
        exercise(bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_image();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(bytes);
    }
}

#[test]
fn the_valid_image_reads_back() {
    let g = GgufFile::from_bytes(valid_image()).unwrap();
    assert_eq!(g.tensors().count(), 4);
    assert_eq!(
        g.metadata("nested"),
        Some(&GgufValue::Array(vec![GgufValue::Array(vec![
            GgufValue::I8(-1),
            GgufValue::I8(2)
        ])]))
    );
    assert_eq!(g.get_bool("flag"), Some(true));
    let (c, shape) = g.dequantize("c").unwrap();
    assert_eq!(shape, vec![64]);
    assert_eq!(c[8], -3.0);
}

#[test]
fn every_truncation_of_the_valid_image_is_an_error() {
    let bytes = valid_image();
    for cut in 0..bytes.len() - 1 {
        // padding after the last tensor's data is not needed to read it
        let last_data_end = bytes.len() - 32 + 16;
        if cut >= last_data_end {
            continue;
        }
        assert!(
            GgufFile::from_bytes(bytes[..cut].to_vec()).is_err(),
            "cut at {cut} parsed"
        );
    }
}

/// Offset of the first tensor info: after the header and the metadata.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn unknown_tensor_type_is_refused_by_name_only_when_used() {
    let mut bytes = valid_image();
    // tensor info of "b": name "b", n_dims, dims, then the type id
    let at = find(&bytes, b"\x01\0\0\0\0\0\0\0b\x02\0\0\0") + 9 + 4 + 16;
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 3);
    bytes[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    let g = GgufFile::from_bytes(bytes).unwrap();
    assert!(g.dequantize("a").is_ok());
    let err = g.dequantize("b").unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedTensorType { ref name, ty: GgmlType::Other(77) } if name == "b"),
        "{err}"
    );
    assert!(err.to_string().contains("\"b\""), "{err}");
}

#[test]
fn known_but_unsupported_type_names_tensor_and_type() {
    let t = GgufTensorData::raw("w", vec![256], GgmlType::IQ2_XXS, vec![0; 66]).unwrap();
    let g = GgufFile::from_bytes(gguf_bytes(&[], &[t]).unwrap()).unwrap();
    let err = g.dequantize("w").unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor \"w\" has type IQ2_XXS, which is not supported here"
    );
}

#[test]
fn corrupt_fields_are_named() {
    // a string length far beyond the file
    let mut bytes = valid_image();
    let at = find(&bytes, b"general.architecture") + 20 + 4;
    bytes[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("general.architecture"), "{err}");

    // a bool that is neither 0 nor 1
    let mut bytes = valid_image();
    let at = find(&bytes, b"flag") + 4 + 4;
    bytes[at] = 9;
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(
        err.to_string().contains("flag") && err.to_string().contains("bool"),
        "{err}"
    );

    // an unknown value type
    let mut bytes = valid_image();
    let at = find(&bytes, b"flag") + 4;
    bytes[at..at + 4].copy_from_slice(&42u32.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(err.to_string().contains("unknown value type 42"), "{err}");

    // a tensor with five dims
    let mut bytes = valid_image();
    let at = find(&bytes, b"\x01\0\0\0\0\0\0\0a") + 9;
    bytes[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(err.to_string().contains("5 dimensions"), "{err}");
}

#[test]
fn duplicates_and_bad_alignment_are_refused() {
    let t = || GgufTensorData::f32("x", vec![1], &[1.0]).unwrap();
    let err = GgufFile::from_bytes(gguf_bytes(&[], &[t(), t()]).unwrap()).unwrap_err();
    assert!(
        matches!(err, GgufError::DuplicateTensor { ref name } if name == "x"),
        "{err}"
    );

    let kv = || ("k".to_string(), GgufValue::U8(1));
    let err = GgufFile::from_bytes(gguf_bytes(&[kv(), kv()], &[]).unwrap()).unwrap_err();
    assert!(
        matches!(err, GgufError::DuplicateKey { ref key } if key == "k"),
        "{err}"
    );

    let align = |v| vec![("general.alignment".to_string(), GgufValue::U32(v))];
    assert!(gguf_bytes(&align(24), &[]).is_err());
    let ok = gguf_bytes(&align(64), &[t()]).unwrap();
    let g = GgufFile::from_bytes(ok).unwrap();
    assert_eq!((g.alignment(), g.data_offset() % 64), (64, 0));
}

#[test]
fn writer_refuses_inconsistent_tensors() {
    assert!(GgufTensorData::raw("x", vec![32], GgmlType::Q8_0, vec![0; 33]).is_err());
    assert!(GgufTensorData::raw("x", vec![16, 2], GgmlType::Q8_0, vec![0; 34]).is_err());
    assert!(GgufTensorData::encode("x", vec![3], GgmlType::F32, &[1.0]).is_err());
    let mixed = GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]);
    assert!(gguf_bytes(&[("m".into(), mixed)], &[]).is_err());
}
