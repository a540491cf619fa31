//! Safetensors tensors as f32 values: the conversion the Hugging Face loader applies to every
//! tensor it reads. Its own file, with no crate-internal imports, so that the fuzz target for
//! the safetensors reader (`fuzz/fuzz_targets/safetensors.rs`) runs exactly this code.

use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// The values of `view` as f32 (F32, F16 and BF16 are taken), checked against its shape; the
/// error names the dtype or the mismatch.
pub(crate) fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other:?} is not taken (F32, F16 or BF16)")),
    };
    let elements = view
        .shape()
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", view.shape()))?;
    if data.len() != elements {
        return Err(format!(
            "{} bytes hold {} values, shape {:?} wants {elements}",
            bytes.len(),
            data.len(),
            view.shape()
        ));
    }
    Ok(data)
}
