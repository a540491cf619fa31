//! Fuzzes the GGUF reader (`models/src/gguf.rs`, included as it is, with the dequantizers it
//! calls): `GgufFile::from_bytes` on the input, then every accessor a model load uses.
//!
//! Asserts: nothing panics; on Ok, every tensor's byte range lies inside the file, and a tensor
//! that dequantizes gives as many values as its shape has elements.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../models/src/ggml.rs"]
mod ggml;
#[path = "../../models/src/gguf.rs"]
mod gguf;
#[path = "../../models/src/quant.rs"]
mod quant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let Ok(g) = gguf::GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = (g.version(), g.alignment(), g.data_offset());
    let keys: Vec<String> = g.metadata_keys().map(str::to_string).collect();
    for k in &keys {
        let _ = (g.get_u64(k), g.get_f64(k), g.get_str(k), g.get_bool(k));
        if let Some(a) = g.get_array(k) {
            for v in a.iter().take(64) {
                let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_str(), v.type_name());
            }
        }
    }
    let infos: Vec<gguf::GgufTensorInfo> = g.tensors().cloned().collect();
    for info in infos.iter().take(16) {
        if let Ok(bytes) = g.tensor_bytes(info) {
            assert!(bytes.len() as u64 <= len);
            // Dequantizing allocates 4 bytes per element: only small tensors.
            if info.n_elements() <= 1 << 20
                && let Ok(values) = g.dequantize_info(info)
            {
                assert_eq!(values.len() as u64, info.n_elements());
            }
        }
    }
});
