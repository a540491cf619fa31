//! Writes GGUF v3 images: for tests, benchmarks and tools that need small or random models and
//! deliberately damaged files. Not a converter; it writes exactly the tensors it is given.

use std::path::Path;

use super::value::tag;
use super::{DEFAULT_ALIGNMENT, GgmlType, GgufError, GgufValue, MAX_DIMS};
use crate::quant;

/// One tensor to write: its ggml-order dims, its type and its already-encoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorData {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

impl GgufTensorData {
    /// A tensor from already-encoded bytes; fails when their length does not match dims and type.
    pub fn raw(
        name: impl Into<String>,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<Self, GgufError> {
        let t = GgufTensorData {
            name: name.into(),
            dims,
            ggml_type,
            data,
        };
        t.check()?;
        Ok(t)
    }

    /// A tensor encoded from f32 values (row-major, `dims[0]` fastest) into `ggml_type`; see
    /// [`quant::quantize`] for the types that can be encoded.
    pub fn encode(
        name: impl Into<String>,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        values: &[f32],
    ) -> Result<Self, GgufError> {
        let name = name.into();
        let n: u64 = dims.iter().product();
        if n != values.len() as u64 {
            return Err(GgufError::InvalidInput(format!(
                "tensor {name:?}: dims {dims:?} hold {n} elements but {} values were given",
                values.len()
            )));
        }
        let data = quant::quantize(ggml_type, values).map_err(|source| GgufError::Quant {
            name: name.clone(),
            source,
        })?;
        Self::raw(name, dims, ggml_type, data)
    }

    /// An F32 tensor.
    pub fn f32(name: impl Into<String>, dims: Vec<u64>, values: &[f32]) -> Result<Self, GgufError> {
        Self::encode(name, dims, GgmlType::F32, values)
    }

    fn check(&self) -> Result<(), GgufError> {
        let bad =
            |reason: String| GgufError::InvalidInput(format!("tensor {:?}: {reason}", self.name));
        if self.dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dims, at most {MAX_DIMS}", self.dims.len())));
        }
        let n = self
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dims {:?} overflow", self.dims)))?;
        let (block, _) = self
            .ggml_type
            .block_geometry()
            .ok_or_else(|| bad(format!("type {} has no known size", self.ggml_type)))?;
        if !self
            .dims
            .first()
            .copied()
            .unwrap_or(1)
            .is_multiple_of(block as u64)
        {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {block}",
                self.dims.first().copied().unwrap_or(1),
                self.ggml_type
            )));
        }
        let expected = self
            .ggml_type
            .bytes_for(n)
            .ok_or_else(|| bad("size overflows".into()))?;
        if expected != self.data.len() as u64 {
            return Err(bad(format!(
                "{} bytes given, {} {} elements take {expected}",
                self.data.len(),
                n,
                self.ggml_type
            )));
        }
        Ok(())
    }
}

/// Serializes a GGUF v3 image. `general.alignment` in `metadata` (an integer power of two) sets
/// the data alignment; otherwise it is 32.
pub fn gguf_bytes(
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorData],
) -> Result<Vec<u8>, GgufError> {
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or_else(|| {
                GgufError::InvalidInput(format!("general.alignment {v:?} is not a power of two"))
            })?,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&super::GGUF_MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend_from_slice(&value.type_tag().to_le_bytes());
        write_value(&mut out, value)
            .map_err(|e| GgufError::InvalidInput(format!("metadata {key:?}: {e}")))?;
    }
    let mut offset = 0u64;
    for t in tensors {
        t.check()?;
        write_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += (t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    pad_to(&mut out, alignment);
    for t in tensors {
        out.extend_from_slice(&t.data);
        pad_to(&mut out, alignment);
    }
    Ok(out)
}

/// Writes a GGUF v3 file (see [`gguf_bytes`]).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorData],
) -> Result<(), GgufError> {
    let bytes = gguf_bytes(metadata, tensors)?;
    std::fs::write(path, bytes).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = out.len() as u64;
    out.resize(len.div_ceil(alignment) as usize * alignment as usize, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &GgufValue) -> Result<(), String> {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(items) => {
            // an empty array's element type is irrelevant; u8 is what llama.cpp writes too
            let elem_tag = items.first().map_or(tag::U8, GgufValue::type_tag);
            if let Some(odd) = items.iter().find(|v| v.type_tag() != elem_tag) {
                return Err(format!(
                    "array mixes {} and {} elements",
                    items[0].type_name(),
                    odd.type_name()
                ));
            }
            out.extend_from_slice(&elem_tag.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // elements carry no tag of their own; nested arrays write their element tag and count
            for item in items {
                write_value(out, item)?;
            }
        }
    }
    Ok(())
}
