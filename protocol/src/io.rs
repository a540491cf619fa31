//! Length-prefixed frames over any `futures` byte stream (libp2p streams, TCP, pipes): a frame is
//! a u32 little-endian length, then that many bytes of one [`crate::codec`] message. The length
//! is checked against [`MAX_MESSAGE_BYTES`] before anything is allocated.

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CodecError, Validate, decode, encode};
use crate::limits::MAX_MESSAGE_BYTES;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("stream closed")]
    Closed,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {len} exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Writes one message as a frame and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let body = encode(msg)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame's bytes into `buf` (reused between calls). A clean end of stream before the
/// length is [`FrameError::Closed`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    // The buffer grows with the bytes that actually arrive: a peer that claims a large frame
    // and sends little costs what it sent, not the claimed length.
    buf.clear();
    let got = r.take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {got} of {len} bytes"),
        )));
    }
    Ok(())
}

/// Reads and decodes one message.
pub async fn read_message<R: AsyncRead + Unpin, T: DeserializeOwned + Validate>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, FrameError> {
    read_frame(r, buf).await?;
    Ok(decode(buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, SessionId};
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        block_on(async {
            let mut out = Cursor::new(Vec::new());
            let a = Request::Close {
                session: SessionId([1; 16]),
            };
            let b = Request::Forward(crate::message::tests::forward());
            write_message(&mut out, &a).await.unwrap();
            write_message(&mut out, &b).await.unwrap();
            let mut r = Cursor::new(out.into_inner());
            let mut buf = Vec::new();
            assert_eq!(
                read_message::<_, Request>(&mut r, &mut buf).await.unwrap(),
                a
            );
            assert_eq!(
                read_message::<_, Request>(&mut r, &mut buf).await.unwrap(),
                b
            );
            assert!(matches!(
                read_message::<_, Request>(&mut r, &mut buf).await,
                Err(FrameError::Closed)
            ));
        });
    }

    #[test]
    fn a_large_claim_with_a_short_body_allocates_only_what_arrived() {
        block_on(async {
            let mut bytes = ((MAX_MESSAGE_BYTES - 1) as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1, 2, 3, 4]);
            let mut r = Cursor::new(bytes);
            let mut buf = Vec::new();
            match read_frame(&mut r, &mut buf).await {
                Err(FrameError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
                }
                other => panic!("expected a cut-short frame, got {other:?}"),
            }
            assert!(buf.capacity() < 1 << 16, "capacity {}", buf.capacity());
        });
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        block_on(async {
            let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
            let mut buf = Vec::new();
            assert!(matches!(
                read_frame(&mut r, &mut buf).await,
                Err(FrameError::TooLarge { .. })
            ));
            assert!(buf.capacity() < 1024);
        });
    }

    #[test]
    fn truncated_body_is_an_io_error() {
        block_on(async {
            let mut bytes = 10u32.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1, 0, 2]);
            let mut r = Cursor::new(bytes);
            let mut buf = Vec::new();
            assert!(matches!(
                read_frame(&mut r, &mut buf).await,
                Err(FrameError::Io(_))
            ));
        });
    }
}
