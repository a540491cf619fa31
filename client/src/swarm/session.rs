//! A session through the swarm, as a [`Pipeline`]: the client opens one stream to the first hop
//! with the whole route in the open message, and each forward sends hidden states there and reads
//! the last hop's output back. The session keeps every input it sent (the prefix), so a later
//! failover can replay it to a replacement peer, and every forward's per-hop timings.

use std::time::Instant;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use sunswarm_models::HiddenStates;
use sunswarm_node::net::Network;
use sunswarm_node::session::{OpenError, send_open};
use sunswarm_protocol::io::{read_message, write_message};
use sunswarm_protocol::{
    DType, ErrorKind, Forward, Hop, HopTiming, ModelDigest, OpenSession, Request, Response,
    SessionId, TensorFrame, WireError,
};

use crate::generate::{Pipeline, PipelineError};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("cannot reach {peer}: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("{0}")]
    Refused(WireError),
    #[error("stream to {peer}: {reason}")]
    Stream { peer: PeerId, reason: String },
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// Which hop of `route` an error points at: the hop that refused, the hop after one that lost
/// its next hop, or the first hop when the client's own stream failed.
pub fn failed_hop(route: &[Hop], e: &SessionError) -> usize {
    let last = route.len().saturating_sub(1);
    match e {
        SessionError::Refused(w) if w.kind == ErrorKind::NextHop => (w.hop as usize + 1).min(last),
        SessionError::Refused(w) => (w.hop as usize).min(last),
        _ => 0,
    }
}

/// Timing of one forward through the whole route.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardTiming {
    pub n_tokens: usize,
    /// Client-side round trip, microseconds.
    pub rtt_us: u64,
    #[serde(skip)]
    pub hops: Vec<HopTiming>,
    /// A forward replayed to rebuild state after a failover (not a new token).
    #[serde(skip)]
    pub replay: bool,
}

impl ForwardTiming {
    /// Round trip minus every hop's compute, shared out over the links of the route: the cost of
    /// carrying one forward one hop (encode, checksum, stream, decode, both ways).
    pub fn overhead_per_hop_us(&self) -> f64 {
        let compute: u64 = self.hops.iter().map(|h| u64::from(h.compute_us)).sum();
        self.rtt_us.saturating_sub(compute) as f64 / self.hops.len().max(1) as f64
    }
}

/// An open session on a route.
pub struct SwarmSession {
    route: Vec<Hop>,
    first: PeerId,
    session: SessionId,
    dtype: DType,
    stream: libp2p::Stream,
    buf: Vec<u8>,
    step: u32,
    position: u32,
    /// Every input sent so far, in order: the prefix a replacement peer would need.
    pub history: Vec<HiddenStates>,
    pub timings: Vec<ForwardTiming>,
}

impl SwarmSession {
    /// Opens a session on `route` (hop 0 first).
    pub async fn open(
        net: &Network,
        model_id: ModelDigest,
        route: Vec<Hop>,
        dtype: DType,
        max_tokens: u32,
    ) -> Result<Self, SessionError> {
        let first_hop = route
            .first()
            .ok_or_else(|| SessionError::Protocol("empty route".into()))?;
        let first = PeerId::from_bytes(&first_hop.peer_id)
            .map_err(|e| SessionError::Protocol(format!("bad peer id in route: {e}")))?;
        let addrs: Vec<Multiaddr> = first_hop
            .addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let unreachable = |reason: String| SessionError::Unreachable {
            peer: first,
            reason,
        };
        net.add_addresses(first, addrs)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let session = SessionId(rand::random());
        let open = OpenSession {
            session,
            model_id,
            route: route.clone(),
            hop: 0,
            dtype,
            max_tokens,
        };
        let (stream, answer) = send_open(net, first, &open).await.map_err(|e| match e {
            OpenError::Unreachable(reason) => unreachable(reason),
            other => SessionError::Stream {
                peer: first,
                reason: other.to_string(),
            },
        })?;
        match answer {
            Response::Opened { session: s } if s == session => {}
            Response::Error(e) => return Err(SessionError::Refused(e)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected answer to open: {other:?}"
                )));
            }
        }
        Ok(SwarmSession {
            route,
            first,
            session,
            dtype,
            stream,
            buf: Vec::new(),
            step: 0,
            position: 0,
            history: Vec::new(),
            timings: Vec::new(),
        })
    }

    pub fn route(&self) -> &[Hop] {
        &self.route
    }

    pub fn id(&self) -> SessionId {
        self.session
    }

    /// Sends the inputs of an earlier session, in the same chunks, so that every hop's KV cache
    /// holds exactly what the lost session's did (the same chunking gives bit-identical state;
    /// one merged prefill would not).
    pub async fn replay(&mut self, history: &[HiddenStates]) -> Result<(), SessionError> {
        for input in history {
            self.send(input, true).await?;
        }
        Ok(())
    }

    /// Sends hidden states through the route and returns the last hop's output.
    pub async fn forward_hidden(
        &mut self,
        input: &HiddenStates,
    ) -> Result<HiddenStates, SessionError> {
        self.send(input, false).await
    }

    async fn send(
        &mut self,
        input: &HiddenStates,
        replay: bool,
    ) -> Result<HiddenStates, SessionError> {
        let t0 = Instant::now();
        let dim = input.dim;
        let frame = TensorFrame::from_f32(
            &[input.n_tokens as u32, dim as u32],
            &input.data,
            self.dtype,
        )
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let f = Forward {
            session: self.session,
            step: self.step,
            position: self.position,
            hidden: frame,
        };
        let peer = self.first;
        let stream_err = |e: &dyn std::fmt::Display| SessionError::Stream {
            peer,
            reason: e.to_string(),
        };
        write_message(&mut self.stream, &Request::Forward(f))
            .await
            .map_err(|e| stream_err(&e))?;
        let answer = read_message::<_, Response>(&mut self.stream, &mut self.buf)
            .await
            .map_err(|e| stream_err(&e))?;
        let (hidden, hops) = match answer {
            Response::Hidden {
                session,
                step,
                hidden,
                timings,
            } if session == self.session && step == self.step => (hidden, timings),
            Response::Error(e) => return Err(SessionError::Refused(e)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected answer to forward {}: {other:?}",
                    self.step
                )));
            }
        };
        let (n, data) = hidden
            .to_hidden(dim)
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        if n != input.n_tokens {
            return Err(SessionError::Protocol(format!(
                "sent {} tokens, got {n} back",
                input.n_tokens
            )));
        }
        self.timings.push(ForwardTiming {
            n_tokens: n,
            rtt_us: t0.elapsed().as_micros() as u64,
            hops,
            replay,
        });
        self.step += 1;
        self.position += n as u32;
        self.history.push(input.clone());
        HiddenStates::new(n, dim, data).map_err(|e| SessionError::Protocol(e.to_string()))
    }

    /// Closes the session on every hop (best effort: a dropped stream closes it too).
    pub async fn close(mut self) {
        if write_message(
            &mut self.stream,
            &Request::Close {
                session: self.session,
            },
        )
        .await
        .is_ok()
        {
            let _ = read_message::<_, Response>(&mut self.stream, &mut self.buf).await;
        }
    }
}

impl Pipeline for SwarmSession {
    async fn forward(&mut self, input: HiddenStates) -> Result<HiddenStates, PipelineError> {
        self.forward_hidden(&input).await.map_err(|e| {
            let peer = match &e {
                SessionError::Refused(w) => self
                    .route
                    .get(w.hop as usize)
                    .and_then(|h| PeerId::from_bytes(&h.peer_id).ok())
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| format!("hop {}", w.hop)),
                _ => self.first.to_string(),
            };
            PipelineError::Peer {
                peer,
                reason: e.to_string(),
            }
        })
    }
}
