//! Fuzzes tensor frames, the hidden states every hop decodes: a `TensorFrame` read with
//! `postcard::from_bytes` (it has no `codec::Validate`; `Request`/`Response` validate it through
//! `TensorFrame::validate`), then `to_f32()` and `to_hidden(dim)`.
//!
//! Input: bytes 0-1 are `dim` (u16 little-endian); byte 2 bit 0 set means "re-seal": the checksum
//! is recomputed before decoding, so the fuzzer reaches the length, shape and NaN checks that a
//! wrong checksum would otherwise hide; the rest is the postcard frame.
//!
//! Asserts: nothing panics; `to_f32` on Ok gives as many finite values as the shape has elements;
//! `to_hidden(dim)` on Ok gives `(tokens, values)` with `values.len() == tokens * dim`; and a
//! frame whose own checksum validates has the checksum this file recomputes (so re-sealing keeps
//! up with `protocol/src/tensor.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sunswarm_protocol::TensorFrame;

/// `protocol/src/tensor.rs`'s checksum, which is private there.
fn checksum(f: &TensorFrame) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"sunswarm/tensor/1");
    h.update(&(f.shape.len() as u32).to_le_bytes());
    for d in &f.shape {
        h.update(&d.to_le_bytes());
    }
    h.update(&[f.dtype as u8]);
    h.update(&f.data);
    *h.finalize().as_bytes()
}

fuzz_target!(|data: &[u8]| {
    let [d0, d1, mode, body @ ..] = data else {
        return;
    };
    let dim = u16::from_le_bytes([*d0, *d1]) as usize;
    let Ok(mut frame) = postcard::from_bytes::<TensorFrame>(body) else {
        return;
    };
    if frame.validate().is_ok() {
        assert_eq!(checksum(&frame), frame.checksum, "checksum layout changed");
    }
    if mode & 1 == 1 {
        frame.checksum = checksum(&frame);
    }
    if let Ok(values) = frame.to_f32() {
        let n: usize = frame.shape.iter().map(|&d| d as usize).product();
        assert_eq!(values.len(), n);
        assert!(values.iter().all(|v| v.is_finite()));
    }
    if let Ok((tokens, values)) = frame.to_hidden(dim) {
        assert!(tokens > 0);
        assert_eq!(values.len(), tokens * dim);
    }
});
