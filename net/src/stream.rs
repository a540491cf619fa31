//! Activation streams: the protocol they speak and how a peer opens one and says its first
//! message. Nodes open the next hop of a route with it and clients the first hop, so both sides
//! retry the same way when a busy peer drops a stream unread.

use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};
use sunswarm_protocol::io::{FrameError, read_message, write_message};
use sunswarm_protocol::{ACTIVATIONS_PROTOCOL, OpenSession, Request, Response};
use tracing::debug;

use crate::Network;

pub use libp2p_stream::IncomingStreams;

/// A raw libp2p stream carrying length-prefixed protocol messages.
pub type Stream = libp2p::Stream;

/// The activation protocol, versioned by the protocol crate.
pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(ACTIVATIONS_PROTOCOL)
}

/// Why [`send_open`] got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open a stream: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Attempts at an open whose stream the peer dropped unread.
const OPEN_ATTEMPTS: u32 = 4;

/// Opens an activation stream to `peer`, sends `open` and reads the answer (see [`send_first`]).
pub async fn send_open(
    net: &Network,
    peer: PeerId,
    open: &OpenSession,
) -> Result<(Stream, Response), OpenError> {
    send_first(net, peer, &Request::Open(open.clone())).await
}

/// Opens an activation stream to `peer`, sends the stream's first message (an open or an
/// attach) and reads the answer. Two failures leave nothing opened on the peer and are retried
/// ([`worth_retrying`]):
/// - libp2p-stream hands a node one inbound stream at a time and drops one that arrives while
///   the previous is still being accepted (a burst of opens on a busy machine); the opener sees
///   the stream end before any answer;
/// - the stream was opened on a connection that closed before the message went out. In the
///   first seconds of a swarm two peers may hold two connections (both dialled, or a NAT probe's
///   dial-back) and close one. Bursts of 8 and then 16 streams through 3 new nodes lost 4-8
///   opens this way, and each of those clients chose another route 300-800 ms later.
pub async fn send_first(
    net: &Network,
    peer: PeerId,
    request: &Request,
) -> Result<(Stream, Response), OpenError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut s = net
            .control()
            .open_stream(peer, protocol())
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        let mut buf = Vec::new();
        let answer = match write_message(&mut s, request).await {
            Ok(()) => read_message::<_, Response>(&mut s, &mut buf).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => return Ok((s, r)),
            Err(e) if attempt < OPEN_ATTEMPTS && worth_retrying(&e) => {
                debug!(%peer, attempt, error = %e, "first message not delivered; retrying");
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a first message that failed so left nothing on the peer: its stream ended unread, or
/// the write failed because the stream's connection had closed (yamux says `WriteZero`).
fn worth_retrying(e: &FrameError) -> bool {
    match e {
        FrameError::Closed => true,
        FrameError::Io(io) => io.kind() == std::io::ErrorKind::WriteZero,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn only_undelivered_first_messages_are_retried() {
        let closed_connection =
            io::Error::new(io::ErrorKind::WriteZero, "1/2: connection is closed");
        assert!(worth_retrying(&FrameError::Closed));
        assert!(worth_retrying(&FrameError::Io(closed_connection)));
        // A reset after the message may have gone out, a frame too large, a bad answer: the
        // peer may have acted on it, or will refuse it again.
        assert!(!worth_retrying(&FrameError::Io(
            io::ErrorKind::ConnectionReset.into()
        )));
        assert!(!worth_retrying(&FrameError::Io(
            io::ErrorKind::TimedOut.into()
        )));
        assert!(!worth_retrying(&FrameError::TooLarge { len: 10, max: 1 }));
    }
}
