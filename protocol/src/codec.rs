//! Versioned postcard encoding with hard limits.
//!
//! Every message starts with [`crate::PROTOCOL_VERSION`] as two little-endian bytes, then the
//! postcard body. [`decode`] refuses, in this order: messages past
//! [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES), other versions, malformed or trailing
//! bytes, and values that break a field rule ([`Validate`]). postcard never reserves more than the
//! input holds for byte strings, and serde caps speculative `Vec` capacity, so a lying length
//! prefix costs at most the frame itself.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PROTOCOL_VERSION;
use crate::blocks::BlocksError;
use crate::limits::MAX_MESSAGE_BYTES;
use crate::tensor::TensorError;

/// Why a message could not be encoded or was refused on decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message too short to hold a protocol version ({len} bytes)")]
    Truncated { len: usize },
    #[error("protocol version {got} is not supported (this peer speaks {expected})")]
    VersionMismatch { got: u16, expected: u16 },
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("malformed message: {0} trailing bytes after the body")]
    Trailing(usize),
    #[error("invalid field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("invalid tensor: {0}")]
    Tensor(#[from] TensorError),
    #[error("invalid block range: {0}")]
    Blocks(#[from] BlocksError),
}

/// Field rules a decoded value must satisfy before anyone uses it.
pub trait Validate {
    fn validate(&self) -> Result<(), CodecError>;
}

pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), CodecError> {
    if len > max {
        return Err(CodecError::Field {
            field,
            reason: format!("{len} entries/bytes exceed the limit of {max}"),
        });
    }
    Ok(())
}

pub(crate) fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), CodecError> {
    check_len(field, s.len(), max)
}

/// Encodes a message: version, then postcard body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = PROTOCOL_VERSION.to_le_bytes().to_vec();
    out = postcard::to_extend(msg, out)?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: out.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(out)
}

/// Reads only the version of an encoded message (to answer a peer of another version in kind).
pub fn version_of(bytes: &[u8]) -> Result<u16, CodecError> {
    match bytes {
        [a, b, ..] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CodecError::Truncated { len: bytes.len() }),
    }
}

/// Decodes and validates a message.
pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let got = version_of(bytes)?;
    if got != PROTOCOL_VERSION {
        return Err(CodecError::VersionMismatch {
            got,
            expected: PROTOCOL_VERSION,
        });
    }
    let (value, rest): (T, &[u8]) = postcard::take_from_bytes(&bytes[2..])?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing(rest.len()));
    }
    value.validate()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::Announcement;
    use crate::message::{Request, Response};
    use proptest::prelude::*;

    #[test]
    fn version_is_checked_first() {
        let mut bytes = encode(&Request::Close {
            session: crate::SessionId([0; 16]),
        })
        .unwrap();
        let other = PROTOCOL_VERSION + 1;
        bytes[..2].copy_from_slice(&other.to_le_bytes());
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::VersionMismatch { got, expected })
                if got == other && expected == PROTOCOL_VERSION
        ));
        assert!(matches!(
            decode::<Request>(&[1]),
            Err(CodecError::Truncated { len: 1 })
        ));
        assert!(matches!(
            decode::<Request>(&[]),
            Err(CodecError::Truncated { len: 0 })
        ));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_refused() {
        let bytes = encode(&Request::Forward(crate::message::tests::forward())).unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Request>(&longer),
            Err(CodecError::Trailing(1))
        ));
        for cut in 2..bytes.len() {
            assert!(decode::<Request>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<Request>(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn lying_length_prefixes_do_not_allocate() {
        // A Forward whose tensor claims 2^60 bytes: postcard must refuse it from the input size.
        let mut bytes = PROTOCOL_VERSION.to_le_bytes().to_vec();
        bytes.push(1); // Request::Forward
        bytes.extend_from_slice(&[0; 16]); // session
        bytes.extend_from_slice(&[0, 0]); // step, position
        bytes.push(2); // shape len
        bytes.extend_from_slice(&[1, 1]);
        bytes.push(0); // dtype
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]); // data len varint 2^60
        assert!(decode::<Request>(&bytes).is_err());
        // A route claiming 2^32 hops.
        let mut bytes = PROTOCOL_VERSION.to_le_bytes().to_vec();
        bytes.push(0); // Request::Open
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&[0; 32]);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode::<Request>(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = decode::<Announcement>(&bytes);
            let _ = decode::<crate::SignedAnnouncement>(&bytes);
        }

        #[test]
        fn random_bytes_after_a_valid_version_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut v = PROTOCOL_VERSION.to_le_bytes().to_vec();
            v.extend_from_slice(&bytes);
            let _ = decode::<Request>(&v);
            let _ = decode::<Response>(&v);
            let _ = decode::<Announcement>(&v);
            let _ = decode::<crate::SignedAnnouncement>(&v);
        }

        #[test]
        fn mutated_valid_messages_never_panic(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut v = encode(&Request::Open(crate::message::tests::open())).unwrap();
            let i = idx.index(v.len());
            v[i] = byte;
            let _ = decode::<Request>(&v);
            let mut a = encode(&crate::announce::tests::sample()).unwrap();
            let i = idx.index(a.len());
            a[i] = byte;
            let _ = decode::<Announcement>(&a);
        }

        #[test]
        fn announcements_round_trip(
            start in 0u32..100, len in 1u32..100, extra in 0u32..100,
            battery in 0.0f32..=1.0, harvest in 0.0f32..1e4, rate in 0.0f32..=1.0,
            saving in any::<bool>(), watts in any::<u16>(), ts in 0u64..1u64 << 50, ttl in 0u64..3_600_000,
            addrs in proptest::collection::vec("[a-z0-9/.]{1,40}", 0..5),
        ) {
            let mut a = crate::announce::tests::sample();
            a.blocks = crate::BlockRange { start, end: start + len };
            a.n_layers = start + len + extra;
            a.energy = crate::EnergyState { battery_level: battery, harvest_w: harvest, power_mode: crate::PowerSetting::Fixed { watts }, power_saving: saving, max_job_rate: rate, mode_index: 2, critical: saving, saving_risk: rate, takes_job: !saving };
            a.timestamp_ms = ts;
            a.expires_ms = ts + ttl;
            a.addrs = addrs;
            let back: Announcement = decode(&encode(&a).unwrap()).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn forwards_round_trip(session in any::<[u8; 16]>(), step in any::<u32>(), position in any::<u32>(),
                               rows in 1u32..4, vals in proptest::collection::vec(-1e3f32..1e3, 1..16), f16 in any::<bool>(),
                               times in proptest::collection::vec(any::<(u16, u32, u32)>(), 0..4),
                               draw in proptest::option::of((0f32..4.0, 0.01f32..=1.0, any::<u64>()))) {
            let cols = vals.len() as u32;
            let data: Vec<f32> = (0..rows).flat_map(|_| vals.iter().copied()).collect();
            let dtype = if f16 { crate::DType::F16 } else { crate::DType::F32 };
            let hidden = crate::TensorFrame::from_f32(&[rows, cols], &data, dtype).unwrap();
            let receipts = times.into_iter().map(|(hop, compute_us, total_us)| crate::Receipt {
                timing: crate::HopTiming { hop, compute_us, total_us, kept_rows: compute_us / 7 },
                signer: vec![hop as u8; 38],
                route: [compute_us as u8; 32],
                input: [1; 32],
                output: [total_us as u8; 32],
                token: (hop % 2 == 0).then_some(compute_us),
                signature: vec![2; 64],
            }).collect();
            let taps = if f16 { vec![hidden.clone()] } else { Vec::new() };
            let r = Request::Forward(crate::Forward { session: crate::SessionId(session), step, position, hidden, stepwise: !f16, receipts, tap: f16, taps,
                draw: draw.map(|(temperature, top_p, state)| crate::TokenDraw { temperature, top_p, state }) });
            prop_assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
    }
}
