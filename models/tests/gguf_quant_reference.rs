//! Dequantization against the Python `gguf` package: random blocks of every type it can decode
//! (fixtures/quant_blocks.json, made by fixtures/make_quant_fixtures.py).

use sunswarm_models::gguf::GgmlType;
use sunswarm_models::quant::dequantize;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn type_named(name: &str) -> GgmlType {
    (0..64)
        .map(GgmlType::from_id)
        .find(|t| t.to_string() == name)
        .unwrap_or_else(|| panic!("no ggml type named {name}"))
}

#[test]
fn every_fixture_type_matches_python_bit_for_bit() {
    let text = include_str!("fixtures/quant_blocks.json");
    let fixtures: serde_json::Value = serde_json::from_str(text).unwrap();
    let fixtures = fixtures.as_object().unwrap();
    let mut checked = Vec::new();
    for (name, case) in fixtures {
        let ty = type_named(name);
        let bytes = hex(case["bytes"].as_str().unwrap());
        let expected: Vec<f32> = hex(case["f32_le"].as_str().unwrap())
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got = dequantize(ty, &bytes, expected.len()).unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            // the same f32 operations in the same order: identical bits
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{name} element {i}: got {g}, python {e}"
            );
        }
        checked.push(name.as_str());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "BF16", "F16", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0",
            "Q5_1", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
}
