//! GGUF metadata values and their on-disk type tags.

/// One metadata value. Arrays hold values of a single element type (checked when reading and
/// writing), possibly arrays again.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

/// On-disk type tags of metadata values (gguf.h `gguf_type`).
pub(crate) mod tag {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The fewest bytes one value with this tag can take on disk, used to reject element counts that
/// could not fit in the file before allocating for them. `None` for an unknown tag.
pub(crate) fn min_encoded_size(type_tag: u32) -> Option<u64> {
    Some(match type_tag {
        tag::U8 | tag::I8 | tag::BOOL => 1,
        tag::U16 | tag::I16 => 2,
        tag::U32 | tag::I32 | tag::F32 => 4,
        tag::U64 | tag::I64 | tag::F64 => 8,
        // a string is at least its u64 length
        tag::STRING => 8,
        // an array is at least its element tag and u64 count
        tag::ARRAY => 12,
        _ => return None,
    })
}

impl GgufValue {
    /// The on-disk type tag of this value.
    pub fn type_tag(&self) -> u32 {
        match self {
            GgufValue::U8(_) => tag::U8,
            GgufValue::I8(_) => tag::I8,
            GgufValue::U16(_) => tag::U16,
            GgufValue::I16(_) => tag::I16,
            GgufValue::U32(_) => tag::U32,
            GgufValue::I32(_) => tag::I32,
            GgufValue::U64(_) => tag::U64,
            GgufValue::I64(_) => tag::I64,
            GgufValue::F32(_) => tag::F32,
            GgufValue::F64(_) => tag::F64,
            GgufValue::Bool(_) => tag::BOOL,
            GgufValue::String(_) => tag::STRING,
            GgufValue::Array(_) => tag::ARRAY,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_tag())
    }

    /// The value as an unsigned integer: any integer type, if it is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer: any integer type that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float: f32, f64 or any integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            // integers above 2^53 lose precision here; metadata floats never need them
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

pub(crate) fn type_name(type_tag: u32) -> &'static str {
    match type_tag {
        tag::U8 => "u8",
        tag::I8 => "i8",
        tag::U16 => "u16",
        tag::I16 => "i16",
        tag::U32 => "u32",
        tag::I32 => "i32",
        tag::F32 => "f32",
        tag::BOOL => "bool",
        tag::STRING => "string",
        tag::ARRAY => "array",
        tag::U64 => "u64",
        tag::I64 => "i64",
        tag::F64 => "f64",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_accessors_convert_and_refuse_negatives() {
        assert_eq!(GgufValue::U8(7).as_u64(), Some(7));
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::I32(-1).as_i64(), Some(-1));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::U64(u64::MAX).as_u64(), Some(u64::MAX));
        assert_eq!(GgufValue::F32(1.5).as_u64(), None);
        assert_eq!(GgufValue::Bool(true).as_u64(), None);
    }

    #[test]
    fn float_accessor_takes_floats_and_integers() {
        assert_eq!(GgufValue::F32(1e-5).as_f64(), Some(f64::from(1e-5f32)));
        assert_eq!(GgufValue::I16(-3).as_f64(), Some(-3.0));
        assert_eq!(GgufValue::U64(u64::MAX).as_f64(), Some(u64::MAX as f64));
        assert_eq!(GgufValue::String("1".into()).as_f64(), None);
    }

    #[test]
    fn tags_match_type_names() {
        assert_eq!(GgufValue::Array(vec![]).type_name(), "array");
        assert_eq!(GgufValue::String(String::new()).type_tag(), tag::STRING);
        assert_eq!(min_encoded_size(13), None);
        assert_eq!(type_name(13), "unknown");
    }
}
