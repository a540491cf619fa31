//! A GGUF v2/v3 reader over a memory map, and a small writer for tests and tools.
//!
//! The header (metadata and tensor infos) is parsed once into owned structures; tensor data stays
//! in the map and is borrowed, so opening a model reads only the header and a node that serves a
//! few blocks only touches those blocks' pages. Every read is bounds-checked and every count is
//! capped against the bytes left in the file, so a truncated or corrupt file yields a
//! [`GgufError`] that names the field and offset, never a panic or a huge allocation.

// Explicit paths so that the fuzz targets can include this file as it is (`fuzz/`).
#[path = "gguf/value.rs"]
mod value;
#[path = "gguf/writer.rs"]
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use crate::ggml::{GgmlType, QK_K};
pub use value::GgufValue;
pub use writer::{GgufTensorData, gguf_bytes, write_gguf};

use crate::quant::{self, QuantError};
use value::{min_encoded_size, tag};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays nest at most this deep; deeper nesting is treated as corruption (it would
/// otherwise let a small file exhaust the stack).
const MAX_ARRAY_NESTING: usize = 8;
/// A count whose items would need more header bytes than this is reported as corruption rather
/// than truncation (real headers, vocabularies included, stay far below it).
const MAX_PLAUSIBLE_HEADER_BYTES: u64 = 1 << 36;

/// Metadata in memory may take at most this many bytes per byte of the file, plus
/// [`METADATA_MEMORY_SLACK`]. A value in memory is 32 bytes however small on disk, so an array of
/// a million one-byte values would take 32 MiB from 1 MiB of file; a real model's tokenizer
/// arrays take about 8x their bytes, and are a small part of the file.
pub const METADATA_MEMORY_PER_FILE_BYTE: u64 = 4;
pub const METADATA_MEMORY_SLACK: u64 = 1 << 20;

/// Why a GGUF file could not be read, or a tensor could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: it starts with {magic:02x?}, expected the magic \"GGUF\"")]
    NotGguf { magic: Vec<u8> },
    #[error("unsupported GGUF version {version}: this reader supports versions 2 and 3{hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error(
        "GGUF file truncated: {what} at offset {offset} needs {needed} bytes, but only {available} remain"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("GGUF file corrupt: {what} at offset {offset}: {reason}")]
    Corrupt {
        what: String,
        offset: u64,
        reason: String,
    },
    #[error("GGUF file has the metadata key {key:?} twice")]
    DuplicateKey { key: String },
    #[error("GGUF file has the tensor {name:?} twice")]
    DuplicateTensor { name: String },
    #[error(
        "tensor {name:?}: its data [{start}, {end}) lies outside the data section, which holds {len} bytes (file truncated?)"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensor {name:?} has type {ty}, which is not supported here")]
    UnsupportedTensorType { name: String, ty: GgmlType },
    #[error("tensor {0:?} not found in the GGUF file")]
    MissingTensor(String),
    #[error("tensor {name:?}: {source}")]
    Quant {
        name: String,
        #[source]
        source: QuantError,
    },
    #[error("cannot write GGUF: {0}")]
    InvalidInput(String),
}

/// Where one tensor's data lies and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ne0) is the fastest-varying, i.e. the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset of the data relative to the start of the file's data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major (numpy) shape: the ggml dims reversed, so ggml `[ne0=cols, ne1=rows]` is
    /// `[rows, cols]`.
    pub fn shape(&self) -> Vec<usize> {
        // dims were checked to fit in usize when the file was parsed
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (saturating at `u64::MAX` for infos not produced by the parser, which
    /// rejects overflowing shapes).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Bytes of data this tensor takes in the file.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        let (block, _) =
            self.ggml_type
                .block_geometry()
                .ok_or_else(|| GgufError::UnsupportedTensorType {
                    name: self.name.clone(),
                    ty: self.ggml_type,
                })?;
        self.ggml_type
            .bytes_for(self.n_elements())
            .ok_or_else(|| GgufError::Corrupt {
                what: format!("tensor {:?}", self.name),
                offset: self.offset,
                reason: format!(
                    "{} elements are not a whole number of {}-element {} blocks",
                    self.n_elements(),
                    block,
                    self.ggml_type
                ),
            })
    }
}

/// The file's bytes: a read-only map of a file, or a buffer (tests, fuzzing, generated models).
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed header plus the mapped bytes its tensors borrow from.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("len", &self.storage.len())
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses a GGUF file. Only the header is read now; tensor pages load on first use.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            // mapping an empty file fails on some platforms; the parser reports it as truncated
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. Like every mmap-based
            // model loader we rely on the file not being truncated or rewritten while open;
            // that is documented for users (do not overwrite a model that a node is serving).
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        let gguf = Self::parse(storage)?;
        tracing::debug!(
            path = %path.display(),
            version = gguf.version,
            tensors = gguf.tensors.len(),
            metadata_keys = gguf.metadata.len(),
            "opened GGUF file"
        );
        Ok(gguf)
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let header = parse_header(&storage)?;
        Ok(GgufFile {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset where the data section starts; tensor offsets are relative to it.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Metadata keys in file order.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.iter().map(|(k, _)| k.as_str())
    }

    /// An integer value of any integer type, if present and not negative.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key)?.as_u64()
    }

    /// A float value: f32, f64 or any integer type.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata(key)?.as_f64()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata(key)?.as_str()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.as_bool()
    }

    /// An array value's elements.
    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.metadata(key)?.as_array()
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &GgufTensorInfo> {
        self.tensors.iter()
    }

    /// The raw (possibly quantized) bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        let n_bytes = info.n_bytes()?;
        let data_len = (self.storage.len() as u64).saturating_sub(self.data_offset);
        let out_of_bounds = || GgufError::TensorOutOfBounds {
            name: info.name.clone(),
            start: info.offset,
            end: info.offset.saturating_add(n_bytes),
            len: data_len,
        };
        // Checked against the file itself too: a header that ends before its own data section
        // (a large alignment, a cut file) leaves `data_offset` past the end.
        let start = self.data_offset.saturating_add(info.offset);
        let stop = start.checked_add(n_bytes).ok_or_else(out_of_bounds)?;
        if stop > self.storage.len() as u64 {
            return Err(out_of_bounds());
        }
        Ok(&self.storage[start as usize..stop as usize])
    }

    /// Dequantizes one tensor to f32, row-major with shape `info.shape()` (numpy order, i.e. ggml
    /// dims reversed: a ggml `[ne0=cols, ne1=rows]` tensor becomes shape `[rows, cols]`).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let values = self.dequantize_info(info)?;
        Ok((values, info.shape()))
    }

    /// Dequantizes the tensor that `info` (one of this file's infos) describes.
    pub fn dequantize_info(&self, info: &GgufTensorInfo) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(info)?;
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::Corrupt {
            what: format!("tensor {:?}", info.name),
            offset: info.offset,
            reason: "too many elements for this platform".into(),
        })?;
        quant::dequantize(info.ggml_type, bytes, n).map_err(|source| match source {
            QuantError::UnsupportedType(ty) => GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                ty,
            },
            source => GgufError::Quant {
                name: info.name.clone(),
                source,
            },
        })
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
}

fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut r = Reader {
        buf,
        pos: 0,
        spent: 0,
    };
    if buf.len() < 4 || buf[..4] != GGUF_MAGIC {
        if buf.len() < 4 && GGUF_MAGIC.starts_with(buf) {
            return Err(r.truncated("magic", 4));
        }
        return Err(GgufError::NotGguf {
            magic: buf[..buf.len().min(4)].to_vec(),
        });
    }
    r.pos = 4;
    let version = r.u32("version")?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (this file looks big-endian; only little-endian files are supported)"
        } else if version == 1 {
            " (version 1 files predate 64-bit counts; convert them with llama.cpp)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata key-value count")?;
    // each key-value takes at least 8 (key length) + 4 (type) + 1 bytes
    r.check_count(n_kv, 13, "metadata key-value count")?;
    // each tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes
    r.check_count(n_tensors, 24, "tensor count")?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = r.string(&format!("key of metadata entry {i}"))?;
        let what = format!("value of metadata key {key:?}");
        let type_tag = r.u32(&what)?;
        let value = r.value(type_tag, &what, 0)?;
        if keys.insert(key.clone(), ()).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::Corrupt {
                    what: "metadata key \"general.alignment\"".into(),
                    offset: 0,
                    reason: format!("{v:?} is not a positive power of two"),
                });
            }
        },
    };

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let info_offset = r.pos as u64;
        let name = r.string(&format!("name of tensor info {i}"))?;
        let what = format!("tensor info of {name:?}");
        let n_dims = r.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            return Err(r.corrupt_at(
                &what,
                info_offset,
                format!("{n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&what)?);
        }
        let ggml_type = GgmlType::from_id(r.u32(&what)?);
        let offset = r.u64(&what)?;
        let info = GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        };
        validate_tensor_info(&info, alignment)
            .map_err(|reason| r.corrupt_at(&what, info_offset, reason))?;
        if names.insert(info.name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensors.push(info);
    }

    let data_offset = align_up(r.pos as u64, alignment);
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    for info in &tensors {
        // tensors of unknown types cannot be located; they fail when used, not here
        if let Ok(n_bytes) = info.n_bytes() {
            let end = info.offset.saturating_add(n_bytes);
            if end > data_len {
                return Err(GgufError::TensorOutOfBounds {
                    name: info.name.clone(),
                    start: info.offset,
                    end,
                    len: data_len,
                });
            }
        }
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn validate_tensor_info(info: &GgufTensorInfo, alignment: u64) -> Result<(), String> {
    let mut n: u64 = 1;
    for &d in &info.dims {
        // ggml stores dims as int64 and sizes in size_t
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
            .ok_or_else(|| format!("shape {:?} overflows", info.dims))?;
    }
    if let Some(block) = info.ggml_type.block_size() {
        let ne0 = info.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(block as u64) {
            return Err(format!(
                "row length {ne0} is not a multiple of the {} block size {block}",
                info.ggml_type
            ));
        }
    }
    if !info.offset.is_multiple_of(alignment) {
        return Err(format!(
            "data offset {} is not a multiple of the alignment {alignment}",
            info.offset
        ));
    }
    Ok(())
}

fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment).saturating_mul(alignment)
}

/// A bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes of memory the metadata read so far takes, against the file's budget.
    spent: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            what: what.to_string(),
            offset: self.pos as u64,
            needed,
            available: self.remaining(),
        }
    }

    fn corrupt_at(&self, what: &str, offset: u64, reason: String) -> GgufError {
        GgufError::Corrupt {
            what: what.to_string(),
            offset,
            reason,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        let bytes = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_size` bytes each could fit in what is left:
    /// as truncation when the count is plausible for some file, else as corruption.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(bytes) if bytes <= self.remaining() => Ok(()),
            Some(bytes) if bytes <= MAX_PLAUSIBLE_HEADER_BYTES => Err(self.truncated(what, bytes)),
            _ => Err(GgufError::Corrupt {
                what: what.to_string(),
                offset: self.pos as u64,
                reason: format!(
                    "{count} items cannot fit in the {} bytes left in the file",
                    self.remaining()
                ),
            }),
        }
    }

    /// Counts `bytes` of memory against the file's budget (see
    /// [`METADATA_MEMORY_PER_FILE_BYTE`]).
    fn spend(&mut self, bytes: u64, what: &str) -> Result<(), GgufError> {
        let budget = (self.buf.len() as u64)
            .saturating_mul(METADATA_MEMORY_PER_FILE_BYTE)
            .saturating_add(METADATA_MEMORY_SLACK);
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > budget {
            return Err(GgufError::Corrupt {
                what: what.to_string(),
                offset: self.pos as u64,
                reason: format!(
                    "its metadata would take {} bytes of memory, more than {budget} for a file \
                     of {} bytes",
                    self.spent,
                    self.buf.len()
                ),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let start = self.pos as u64;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        self.spend(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| GgufError::Corrupt {
            what: what.to_string(),
            offset: start,
            reason: format!("string is not valid UTF-8 ({e})"),
        })
    }

    fn value(&mut self, type_tag: u32, what: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let start = self.pos as u64;
        Ok(match type_tag {
            tag::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            tag::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            tag::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            tag::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            tag::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            tag::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            tag::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            tag::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            tag::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            tag::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            tag::BOOL => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(self.corrupt_at(
                        what,
                        start,
                        format!("bool byte is {b}, not 0 or 1"),
                    ));
                }
            },
            tag::STRING => GgufValue::String(self.string(what)?),
            tag::ARRAY => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.corrupt_at(
                        what,
                        start,
                        format!("arrays nested more than {MAX_ARRAY_NESTING} deep"),
                    ));
                }
                let elem_tag = self.u32(what)?;
                let min_size = min_encoded_size(elem_tag).ok_or_else(|| {
                    self.corrupt_at(
                        what,
                        start,
                        format!("unknown array element type {elem_tag}"),
                    )
                })?;
                let count = self.u64(what)?;
                self.check_count(count, min_size, what)?;
                self.spend(count.saturating_mul(size_of::<GgufValue>() as u64), what)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_tag, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => {
                return Err(self.corrupt_at(
                    what,
                    start.saturating_sub(4),
                    format!("unknown value type {other}"),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_file() -> Vec<u8> {
        let metadata = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            ("llama.block_count".to_string(), GgufValue::U32(2)),
            ("x.eps".to_string(), GgufValue::F32(1e-5)),
            (
                "x.list".to_string(),
                GgufValue::Array(vec![
                    GgufValue::String("a".into()),
                    GgufValue::String("bc".into()),
                ]),
            ),
        ];
        let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let tensors = vec![
            GgufTensorData::f32("w", vec![3, 2], &w).unwrap(),
            GgufTensorData::f32("v", vec![4], &[1.0, 2.0, 3.0, 4.0]).unwrap(),
        ];
        gguf_bytes(&metadata, &tensors).unwrap()
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let g = GgufFile::from_bytes(tiny_file()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(2));
        assert_eq!(g.get_f64("x.eps"), Some(f64::from(1e-5f32)));
        assert_eq!(g.get_u64("x.eps"), None);
        assert_eq!(g.get_array("x.list").map(|a| a.len()), Some(2));
        assert_eq!(
            g.metadata_keys().collect::<Vec<_>>(),
            [
                "general.architecture",
                "llama.block_count",
                "x.eps",
                "x.list"
            ]
        );
        let w = g.tensor("w").unwrap();
        assert_eq!(w.shape(), vec![2, 3]);
        assert_eq!(w.n_elements(), 6);
        assert_eq!(g.data_offset() % DEFAULT_ALIGNMENT, 0);
        let (values, shape) = g.dequantize("w").unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(g.dequantize("v").unwrap().0, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            g.tensors().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["w", "v"]
        );
    }

    #[test]
    fn empty_tensor_past_the_end_of_the_file_is_an_error() {
        let tensors = vec![GgufTensorData::f32("z", vec![0], &[]).unwrap()];
        let mut bytes = gguf_bytes(&[], &tensors).unwrap();
        let g = GgufFile::from_bytes(bytes.clone()).unwrap();
        let header_end = g.data_offset() as usize;
        // Cut the file inside the padding before the (empty) data section.
        bytes.truncate(header_end.saturating_sub(1).max(1));
        let g = GgufFile::from_bytes(bytes).expect("the header itself is whole");
        let z = g.tensor("z").unwrap().clone();
        assert!(g.data_offset() as usize > g.storage.len());
        assert!(matches!(
            g.tensor_bytes(&z),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
    }

    #[test]
    fn missing_tensor_is_named() {
        let g = GgufFile::from_bytes(tiny_file()).unwrap();
        let err = g.dequantize("nope").unwrap_err();
        assert!(
            matches!(err, GgufError::MissingTensor(ref n) if n == "nope"),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = tiny_file();
        // the last tensor ("v", 16 bytes) is followed by 16 bytes of padding nobody needs
        for cut in 0..bytes.len() - 16 {
            let err = GgufFile::from_bytes(bytes[..cut].to_vec()).unwrap_err();
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. }
                        | GgufError::TensorOutOfBounds { .. }
                        | GgufError::Corrupt { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn wrong_magic_and_versions() {
        let mut bytes = tiny_file();
        bytes[0] = b'X';
        assert!(matches!(
            GgufFile::from_bytes(bytes).unwrap_err(),
            GgufError::NotGguf { .. }
        ));

        let mut bytes = tiny_file();
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        let err = GgufFile::from_bytes(bytes).unwrap_err();
        assert!(err.to_string().contains("big-endian"), "{err}");

        let mut bytes = tiny_file();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(GgufFile::from_bytes(bytes).unwrap().version(), 2);

        let mut bytes = tiny_file();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(bytes).unwrap_err(),
            GgufError::UnsupportedVersion { version: 1, .. }
        ));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = tiny_file();
        // tensor count
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = GgufFile::from_bytes(bytes).unwrap_err();
        assert!(err.to_string().contains("tensor count"), "{err}");
    }

    #[test]
    fn metadata_memory_is_bounded_by_the_file_size() {
        let file = |n: usize, value: fn(usize) -> GgufValue| {
            let metadata = vec![(
                "x.list".to_string(),
                GgufValue::Array((0..n).map(value).collect()),
            )];
            gguf_bytes(&metadata, &[]).unwrap()
        };
        // Two million one-byte values: 2 MB of file, 64 MB in memory as values.
        let bytes = file(2_000_000, |i| GgufValue::U8(i as u8));
        let len = bytes.len();
        let err = GgufFile::from_bytes(bytes).unwrap_err();
        assert!(err.to_string().contains("bytes of memory"), "{err}");
        assert!(err.to_string().contains(&len.to_string()), "{err}");
        // A tokenizer's scores (f32, 8x in memory) in a file that holds weights as well.
        let metadata = vec![(
            "tokenizer.ggml.scores".to_string(),
            GgufValue::Array((0..50_000).map(|i| GgufValue::F32(i as f32)).collect()),
        )];
        let w = vec![0.5f32; 400_000];
        let tensors = vec![GgufTensorData::f32("w", vec![400_000], &w).unwrap()];
        let g = GgufFile::from_bytes(gguf_bytes(&metadata, &tensors).unwrap()).unwrap();
        assert_eq!(
            g.get_array("tokenizer.ggml.scores").map(<[_]>::len),
            Some(50_000)
        );
    }
}
