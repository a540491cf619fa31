//! Fuzzes the safetensors reader: `SafeTensors::deserialize` (the `safetensors` crate, as the
//! Hugging Face loader calls it) and then our conversion of every tensor to f32
//! (`models/src/safetensors_f32.rs`, included as it is).
//!
//! Asserts: nothing panics; a tensor converted on Ok has exactly as many values as its shape.
#![no_main]

#[path = "../../models/src/safetensors_f32.rs"]
mod safetensors_f32;

use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = SafeTensors::deserialize(data) else {
        return;
    };
    for (_, view) in st.tensors().into_iter().take(64) {
        if let Ok(values) = safetensors_f32::to_f32(&view) {
            let n: usize = view.shape().iter().product();
            assert_eq!(values.len(), n);
        }
    }
});
