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

/// Bytes a [`FrameReader`] asks the stream for at once: the buffer grows with what arrives, in
/// steps of at most this, never by a length the peer merely claims.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames like [`read_message`], but keeps a partly read frame in itself, so a pending
/// [`FrameReader::next`] can be dropped (a `select!` over several streams) without losing bytes:
/// the next call carries on where it stopped.
#[derive(Debug)]
pub struct FrameReader {
    /// Largest frame this reader takes ([`MAX_MESSAGE_BYTES`] unless set lower).
    limit: usize,
    head: [u8; 4],
    head_have: usize,
    /// The body's length once the head is complete.
    body_len: Option<usize>,
    body: Vec<u8>,
    body_have: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            limit: MAX_MESSAGE_BYTES,
            head: [0; 4],
            head_have: 0,
            body_len: None,
            body: Vec::new(),
            body_have: 0,
        }
    }
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader that refuses frames longer than `limit` bytes (at most [`MAX_MESSAGE_BYTES`]):
    /// e.g. a stream's first message, which opens a session and is small, so a stranger cannot
    /// make a node hold a large buffer before anything is open.
    pub fn with_limit(limit: usize) -> Self {
        FrameReader {
            limit: limit.min(MAX_MESSAGE_BYTES),
            ..Self::default()
        }
    }

    /// Raises or lowers the limit for the frames after the current one.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE_BYTES);
    }

    /// Reads and decodes the next message. Cancel-safe: see the type's doc.
    pub async fn next<R: AsyncRead + Unpin, T: DeserializeOwned + Validate>(
        &mut self,
        r: &mut R,
    ) -> Result<T, FrameError> {
        while self.head_have < 4 {
            let n = r.read(&mut self.head[self.head_have..]).await?;
            if n == 0 {
                let at_boundary = self.head_have == 0;
                self.head_have = 0;
                return Err(if at_boundary {
                    FrameError::Closed
                } else {
                    FrameError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the stream ended inside a frame's length",
                    ))
                });
            }
            self.head_have += n;
        }
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let len = u32::from_le_bytes(self.head) as usize;
                if len > self.limit {
                    self.head_have = 0;
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.limit,
                    });
                }
                self.body_len = Some(len);
                self.body_have = 0;
                len
            }
        };
        while self.body_have < len {
            if self.body.len() <= self.body_have {
                self.body.resize(len.min(self.body_have + READ_CHUNK), 0);
            }
            let end = len.min(self.body.len());
            let n = r.read(&mut self.body[self.body_have..end]).await?;
            if n == 0 {
                let got = self.body_have;
                self.reset();
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("frame cut short: {got} of {len} bytes"),
                )));
            }
            self.body_have += n;
        }
        self.reset();
        Ok(decode(&self.body[..len])?)
    }

    fn reset(&mut self) {
        self.head_have = 0;
        self.body_len = None;
        self.body_have = 0;
    }
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

    /// Hands out its bytes a few at a time and is pending every other poll, like a network
    /// stream, so that reads are interrupted mid-frame.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_frame_reader_survives_being_dropped_mid_frame() {
        use futures::FutureExt;
        block_on(async {
            let msgs: Vec<Request> = vec![
                Request::Forward(crate::message::tests::forward()),
                Request::Close {
                    session: SessionId([4; 16]),
                },
                Request::Forward(crate::message::tests::forward()),
            ];
            let mut out = Cursor::new(Vec::new());
            for m in &msgs {
                write_message(&mut out, m).await.unwrap();
            }
            let mut stream = Trickle {
                bytes: out.into_inner(),
                at: 0,
                step: 3,
                ready: false,
            };
            let mut reader = FrameReader::new();
            let mut got = Vec::new();
            let mut cancelled = 0;
            while got.len() < msgs.len() {
                // Poll once; a pending read is dropped, as a select! whose other branch won would.
                match reader.next::<_, Request>(&mut stream).now_or_never() {
                    Some(r) => got.push(r.unwrap()),
                    None => cancelled += 1,
                }
            }
            assert_eq!(got, msgs);
            assert!(
                cancelled > 10,
                "the reads were interrupted {cancelled} times"
            );
            assert!(matches!(
                reader.next::<_, Request>(&mut stream).await,
                Err(FrameError::Closed)
            ));
        });
    }

    #[test]
    fn a_frame_reader_refuses_what_read_message_refuses() {
        block_on(async {
            let mut reader = FrameReader::new();
            let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
            assert!(matches!(
                reader.next::<_, Request>(&mut r).await,
                Err(FrameError::TooLarge { .. })
            ));
            let mut bytes = ((MAX_MESSAGE_BYTES - 1) as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1, 2, 3, 4]);
            let mut reader = FrameReader::new();
            match reader.next::<_, Request>(&mut Cursor::new(bytes)).await {
                Err(FrameError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
                }
                other => panic!("expected a cut-short frame, got {other:?}"),
            }
            assert!(reader.body.capacity() <= READ_CHUNK, "grew to what arrived");
            let mut reader = FrameReader::new();
            let mut r = Cursor::new(vec![1, 0]);
            assert!(matches!(
                reader.next::<_, Request>(&mut r).await,
                Err(FrameError::Io(_))
            ));
        });
    }

    #[test]
    fn a_reader_with_a_limit_refuses_longer_frames() {
        block_on(async {
            let mut out = Cursor::new(Vec::new());
            let f = Request::Forward(crate::message::tests::forward());
            write_message(&mut out, &f).await.unwrap();
            let bytes = out.into_inner();
            let mut small = FrameReader::with_limit(16);
            let err = small
                .next::<_, Request>(&mut Cursor::new(bytes.clone()))
                .await
                .unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { max: 16, .. }), "{err}");
            let mut raised = FrameReader::with_limit(16);
            raised.set_limit(1 << 20);
            assert_eq!(
                raised
                    .next::<_, Request>(&mut Cursor::new(bytes))
                    .await
                    .unwrap(),
                f
            );
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
