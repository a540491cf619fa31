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
/// attach) and reads the answer. libp2p-stream hands a node one inbound stream at a time and
/// drops one that arrives while the previous is still being accepted (a burst of opens on a busy
/// machine); the opener sees the stream end before any answer, and nothing was opened on the
/// peer, so that case is retried.
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
            Err(FrameError::Closed) if attempt < OPEN_ATTEMPTS => {
                debug!(%peer, attempt, "first message's stream dropped unread; retrying");
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
