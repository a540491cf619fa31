//! A session through the swarm, as a [`Pipeline`]: the client opens one stream to the first hop
//! with the whole route in the open message, then attaches a second stream to the last hop; each
//! forward sends hidden states down the first and reads the last hop's output from the second,
//! while errors come back up the first. The session keeps every input it sent (the prefix), so a
//! later failover can replay it to a replacement peer, and every forward's per-hop timings.

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use sunswarm_models::HiddenStates;
use sunswarm_net::Network;
use sunswarm_net::stream::{OpenError, send_first, send_open};
use sunswarm_protocol::io::{FrameReader, write_message};
use sunswarm_protocol::{
    DType, ErrorKind, Forward, Hop, HopTiming, ModelDigest, OpenSession, Request, Response,
    SessionId, TensorFrame, TokenDraw, WireError, route_digest,
};

use super::receipts::{self, Expected};

use crate::generate::{Pipeline, PipelineError, Stepped};

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
    /// The receipts of a forward (or a spot check) show that a hop broke the protocol.
    #[error("hop {hop} is dishonest: {reason}")]
    Dishonest { hop: usize, reason: String },
}

/// How long a forward may take to come out of the last hop. Each hop reports a next hop that
/// fails or goes away at once; this bounds a route that hangs without failing.
pub const OUTPUT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client waits for the route to explain a broken return stream: when a middle hop
/// dies, the last hop's stream ends at about the moment the hop before the dead one reports it,
/// and the report names the right hop.
const EXPLAIN_GRACE: Duration = Duration::from_secs(2);

/// Which hop of `route` an error points at: the hop that refused, the hop after one that lost
/// its next hop, or the peer whose stream failed (the first or the last hop).
pub fn failed_hop(route: &[Hop], e: &SessionError) -> usize {
    let last = route.len().saturating_sub(1);
    match e {
        SessionError::Refused(w) if w.kind == ErrorKind::NextHop => (w.hop as usize + 1).min(last),
        SessionError::Refused(w) => (w.hop as usize).min(last),
        SessionError::Unreachable { peer, .. } | SessionError::Stream { peer, .. } => {
            let id = peer.to_bytes();
            route.iter().position(|h| h.peer_id == id).unwrap_or(0)
        }
        SessionError::Protocol(_) => 0,
        SessionError::Dishonest { hop, .. } => (*hop).min(last),
    }
}

/// Whether `hop`'s peer answers a stream from this client now (an attach to a session that does
/// not exist, which a live node refuses at once): what the client itself sees of a peer that
/// another peer says has failed.
pub async fn answers(net: &Network, hop: &Hop) -> bool {
    let Ok(peer) = PeerId::from_bytes(&hop.peer_id) else {
        return false;
    };
    let addrs: Vec<Multiaddr> = hop.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if net.add_addresses(peer, addrs).await.is_err() {
        return false;
    }
    let probe = Request::Attach {
        session: SessionId(rand::random()),
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, send_first(net, peer, &probe)).await,
        Ok(Ok(_))
    )
}

/// How long a live peer may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// Round trip minus every hop's compute, shared out over the route's hops: what the swarm adds
    /// per hop to one forward (encode, checksum, stream, decode; hops + 1 one-way links in all).
    pub fn overhead_per_hop_us(&self) -> f64 {
        let compute: u64 = self.hops.iter().map(|h| u64::from(h.compute_us)).sum();
        self.rtt_us.saturating_sub(compute) as f64 / self.hops.len().max(1) as f64
    }
}

/// What a session asks of every hop when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenParams {
    /// Element type of the hidden states between hops.
    pub dtype: DType,
    /// Most tokens the session will hold.
    pub max_tokens: u32,
    /// The route's time limit for one token, microseconds; 0 for none (see
    /// [`OpenSession::token_deadline_us`]).
    pub token_deadline_us: u32,
}

/// An open session on a route.
pub struct SwarmSession {
    route: Vec<Hop>,
    first: PeerId,
    last: PeerId,
    session: SessionId,
    dtype: DType,
    /// To the first hop: forwards go down it, errors come back up it.
    stream: libp2p::Stream,
    reader: FrameReader,
    /// From the last hop: the outputs.
    outputs: libp2p::Stream,
    outputs_reader: FrameReader,
    step: u32,
    position: u32,
    /// Every input sent so far, in order: the prefix a replacement peer would need.
    pub history: Vec<HiddenStates>,
    pub timings: Vec<ForwardTiming>,
    /// Whether every forward asks each hop for a copy of its output (spot checks need them).
    tapping: bool,
    /// With tapping on: every forward's outputs, one per hop (the last hop's included).
    pub tapped: Vec<Vec<HiddenStates>>,
    /// The route's peers and digest, against which every receipt is checked.
    peers: Vec<Vec<u8>>,
    route_digest: [u8; 32],
}

impl SwarmSession {
    /// Opens a session on `route` (hop 0 first), with no per-token deadline.
    pub async fn open(
        net: &Network,
        model_id: ModelDigest,
        route: Vec<Hop>,
        dtype: DType,
        max_tokens: u32,
    ) -> Result<Self, SessionError> {
        let params = OpenParams {
            dtype,
            max_tokens,
            token_deadline_us: 0,
        };
        Self::open_with(net, model_id, route, params).await
    }

    /// Opens a session on `route` (hop 0 first).
    pub async fn open_with(
        net: &Network,
        model_id: ModelDigest,
        route: Vec<Hop>,
        params: OpenParams,
    ) -> Result<Self, SessionError> {
        Self::open_as(
            net,
            model_id,
            route,
            params,
            SessionId(rand::random()),
            false,
        )
        .await
    }

    /// Opens session `session` again on `route`, a repair of the route it ran on: every hop
    /// that still keeps the session takes it up with its cache and outputs (see
    /// [`OpenSession::resume`]), the others open it fresh. The new session starts at position 0
    /// all the same: [`replay_then`](Self::replay_then) sends the whole history, which the hops
    /// that kept it answer without computing.
    pub async fn resume(
        net: &Network,
        model_id: ModelDigest,
        route: Vec<Hop>,
        params: OpenParams,
        session: SessionId,
    ) -> Result<Self, SessionError> {
        Self::open_as(net, model_id, route, params, session, true).await
    }

    async fn open_as(
        net: &Network,
        model_id: ModelDigest,
        route: Vec<Hop>,
        params: OpenParams,
        session: SessionId,
        resume: bool,
    ) -> Result<Self, SessionError> {
        let OpenParams {
            dtype,
            max_tokens,
            token_deadline_us,
        } = params;
        let first = hop_peer(&route, 0)?;
        let last = hop_peer(&route, route.len().saturating_sub(1))?;
        for (i, peer) in [(0, first), (route.len() - 1, last)] {
            let addrs: Vec<Multiaddr> = route[i]
                .addrs
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            net.add_addresses(peer, addrs)
                .await
                .map_err(|e| SessionError::Unreachable {
                    peer,
                    reason: e.to_string(),
                })?;
        }
        let open = OpenSession {
            session,
            model_id,
            route: route.clone(),
            hop: 0,
            dtype,
            max_tokens,
            client: net.local_peer_id().to_bytes(),
            token_deadline_us,
            resume,
        };
        let (stream, answer) = send_open(net, first, &open)
            .await
            .map_err(|e| open_failed(first, e))?;
        expect_opened(answer, session)?;
        // The session is open on every hop; the last one now waits for this stream.
        let (outputs, answer) = send_first(net, last, &Request::Attach { session })
            .await
            .map_err(|e| open_failed(last, e))?;
        expect_opened(answer, session)?;
        Ok(SwarmSession {
            tapping: false,
            tapped: Vec::new(),
            peers: route.iter().map(|h| h.peer_id.clone()).collect(),
            route_digest: route_digest(&route),
            route,
            first,
            last,
            session,
            dtype,
            stream,
            reader: FrameReader::new(),
            outputs,
            outputs_reader: FrameReader::new(),
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

    /// The step number the next forward will carry.
    pub fn next_step(&self) -> u32 {
        self.step
    }

    /// Forgets the last forward (its output was rejected): the session itself is abandoned, and
    /// a replacement replays the history without it.
    pub fn forget_last(&mut self) {
        self.history.pop();
        self.timings.pop();
        if self.tapping {
            self.tapped.pop();
        }
    }

    /// From the next forward on, every hop copies its output to the client (see
    /// [`tapped`](Self::tapped)), checked against its receipt.
    pub fn set_tapping(&mut self, on: bool) {
        self.tapping = on;
    }

    /// Every hop's outputs over all positions tapped so far, one tensor per hop.
    pub fn outputs_per_hop(&self) -> Vec<HiddenStates> {
        (0..self.route.len())
            .map(|k| {
                let parts: Vec<HiddenStates> = self
                    .tapped
                    .iter()
                    .filter_map(|o| o.get(k).cloned())
                    .collect();
                super::spot::concat(&parts)
            })
            .collect()
    }

    /// Sends the inputs of an earlier session so that every hop's KV cache holds exactly what
    /// the lost session's did, then `next` (the input whose forward failed), and returns the
    /// step number and output of `next`. Prompt chunks go as they were sent (the same chunking
    /// gives bit-identical state; one merged prefill would not), and each run of one-token
    /// steps, `next` included, as one stepwise forward of up to
    /// [`PREFILL_CHUNK`](crate::generate::PREFILL_CHUNK) rows, which every hop computes row by
    /// row as those steps were: one message and one pass per hop instead of one per token, and
    /// no extra trip through the route for `next`.
    /// `draw`, if any, goes with the last forward (the one that carries `next`).
    pub async fn replay_then(
        &mut self,
        history: &[HiddenStates],
        next: &HiddenStates,
        draw: Option<TokenDraw>,
    ) -> Result<(u32, Stepped), SessionError> {
        let mut all = Vec::with_capacity(history.len() + 1);
        all.extend_from_slice(history);
        all.push(next.clone());
        let forwards = replay_forwards(&all, crate::generate::PREFILL_CHUNK);
        let count = forwards.len();
        let mut last = None;
        for (i, forward) in forwards.into_iter().enumerate() {
            let sent = &all[forward];
            let step = self.step;
            let draw = draw.filter(|_| i + 1 == count);
            last = Some((
                step,
                self.send(&joined(sent), Sent::Replay(sent), draw).await?,
            ));
        }
        let (step, out) = last.ok_or_else(|| SessionError::Protocol("nothing to send".into()))?;
        // `next` is the last entry, so its rows are the output's last.
        let hidden = out.hidden;
        let rows = next.n_tokens.min(hidden.n_tokens);
        let data = hidden.data[(hidden.n_tokens - rows) * hidden.dim..].to_vec();
        let hidden =
            HiddenStates::new(rows, hidden.dim, data).map_err(|e| SessionError::Dishonest {
                hop: self.route.len() - 1,
                reason: e.to_string(),
            })?;
        Ok((
            step,
            Stepped {
                hidden,
                token: out.token,
            },
        ))
    }

    /// Sends earlier steps again as they were taken (one group of
    /// [`replay_forwards`]): a prompt chunk as it was, several one-token steps as one stepwise
    /// forward that every hop computes row by row as those steps were, so the outputs are the
    /// first run's bit for bit (a spot check's run compares them with it).
    pub async fn forward_steps(
        &mut self,
        steps: &[HiddenStates],
    ) -> Result<HiddenStates, SessionError> {
        Ok(self
            .send(&joined(steps), Sent::Steps(steps), None)
            .await?
            .hidden)
    }

    /// Sends hidden states through the route and returns the last hop's output.
    pub async fn forward_hidden(
        &mut self,
        input: &HiddenStates,
    ) -> Result<HiddenStates, SessionError> {
        Ok(self.send(input, Sent::New, None).await?.hidden)
    }

    /// [`forward_hidden`](Self::forward_hidden), asking the last hop to pick the next token with
    /// `draw` (see [`Forward::draw`]).
    pub async fn forward_with_draw(
        &mut self,
        input: &HiddenStates,
        draw: Option<TokenDraw>,
    ) -> Result<Stepped, SessionError> {
        self.send(input, Sent::New, draw).await
    }

    async fn send(
        &mut self,
        input: &HiddenStates,
        sent_as: Sent<'_>,
        draw: Option<TokenDraw>,
    ) -> Result<Stepped, SessionError> {
        let (replay, stepwise) = match sent_as {
            Sent::New => (false, false),
            Sent::Replay(steps) => (true, steps.len() > 1),
            Sent::Steps(steps) => (false, steps.len() > 1),
        };
        let tap = self.tapping;
        let t0 = Instant::now();
        let dim = input.dim;
        let frame = TensorFrame::from_f32(
            &[input.n_tokens as u32, dim as u32],
            &input.data,
            self.dtype,
        )
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let sent = frame.checksum;
        let f = Forward {
            session: self.session,
            step: self.step,
            position: self.position,
            hidden: frame,
            stepwise,
            receipts: Vec::new(),
            tap,
            taps: Vec::new(),
            draw,
        };
        write_message(&mut self.stream, &Request::Forward(f))
            .await
            .map_err(|e| SessionError::Stream {
                peer: self.first,
                reason: e.to_string(),
            })?;
        let (hidden, receipts, taps, token) = match self.next_output().await? {
            Response::Hidden {
                session,
                step,
                hidden,
                receipts,
                taps,
                token,
            } if session == self.session && step == self.step => (hidden, receipts, taps, token),
            Response::Error(e) => return Err(SessionError::Refused(e)),
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected answer to forward {}: {other:?}",
                    self.step
                )));
            }
        };
        let want = Expected {
            peers: &self.peers,
            route: self.route_digest,
            session: self.session,
            step: self.step,
            sent,
            received: hidden.checksum,
            tapped: tap,
            token,
        };
        let hops = receipts::check(&want, &receipts, &taps, |p, m, s| {
            sunswarm_net::announce::verify_by(p, m, s)
        })
        .map_err(|b| SessionError::Dishonest {
            hop: b.hop,
            reason: b.reason,
        })?;
        let (n, data) = hidden.to_hidden(dim).map_err(|e| SessionError::Dishonest {
            hop: self.route.len() - 1,
            reason: e.to_string(),
        })?;
        if n != input.n_tokens {
            return Err(SessionError::Dishonest {
                hop: self.route.len() - 1,
                reason: format!("sent {} tokens, got {n} back", input.n_tokens),
            });
        }
        let mut tapped = Vec::with_capacity(taps.len());
        for (k, t) in taps.iter().enumerate() {
            let (tn, tdata) = t.to_hidden(dim).map_err(|e| SessionError::Dishonest {
                hop: k,
                reason: format!("tap: {e}"),
            })?;
            let h = HiddenStates::new(tn, dim, tdata).map_err(|e| SessionError::Dishonest {
                hop: k,
                reason: format!("tap: {e}"),
            })?;
            if tn != n {
                return Err(SessionError::Dishonest {
                    hop: k,
                    reason: format!("tap of {tn} tokens for a forward of {n}"),
                });
            }
            tapped.push(h);
        }
        self.timings.push(ForwardTiming {
            n_tokens: n,
            rtt_us: t0.elapsed().as_micros() as u64,
            hops,
            replay,
        });
        self.step += 1;
        self.position += n as u32;
        match sent_as {
            // The steps as they were taken, so a later replay or check sees them so.
            Sent::Replay(steps) | Sent::Steps(steps) => self.history.extend_from_slice(steps),
            Sent::New => self.history.push(input.clone()),
        }
        let out = HiddenStates::new(n, dim, data).map_err(|e| SessionError::Dishonest {
            hop: self.route.len() - 1,
            reason: e.to_string(),
        })?;
        if tap {
            tapped.push(out.clone());
            self.tapped.push(tapped);
        }
        if token.is_some() && draw.is_none() {
            return Err(SessionError::Dishonest {
                hop: self.route.len() - 1,
                reason: "answered a token nobody asked for".into(),
            });
        }
        Ok(Stepped { hidden: out, token })
    }

    /// The last hop's next message, or the error the route sends up the first hop's stream,
    /// whichever comes first.
    async fn next_output(&mut self) -> Result<Response, SessionError> {
        let out = tokio::select! {
            // Both reads are cancel-safe: the one that loses keeps its partial frame.
            up = self.reader.next::<_, Response>(&mut self.stream) => {
                return match up {
                    Ok(Response::Error(e)) => Err(SessionError::Refused(e)),
                    Ok(other) => Err(SessionError::Protocol(format!(
                        "unexpected message from the first hop: {other:?}"
                    ))),
                    Err(e) => Err(SessionError::Stream {
                        peer: self.first,
                        reason: e.to_string(),
                    }),
                };
            }
            out = tokio::time::timeout(
                OUTPUT_TIMEOUT,
                self.outputs_reader.next::<_, Response>(&mut self.outputs),
            ) => out,
        };
        let lost = match out {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no output within {OUTPUT_TIMEOUT:?}"),
        };
        // The last hop's stream broke: the route usually says why (a hop before it died).
        match tokio::time::timeout(
            EXPLAIN_GRACE,
            self.reader.next::<_, Response>(&mut self.stream),
        )
        .await
        {
            Ok(Ok(Response::Error(e))) => Err(SessionError::Refused(e)),
            _ => Err(SessionError::Stream {
                peer: self.last,
                reason: lost,
            }),
        }
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
            let _ = self.reader.next::<_, Response>(&mut self.stream).await;
        }
    }
}

/// The peer of hop `i`.
fn hop_peer(route: &[Hop], i: usize) -> Result<PeerId, SessionError> {
    let hop = route
        .get(i)
        .ok_or_else(|| SessionError::Protocol("empty route".into()))?;
    PeerId::from_bytes(&hop.peer_id)
        .map_err(|e| SessionError::Protocol(format!("bad peer id in route: {e}")))
}

fn open_failed(peer: PeerId, e: OpenError) -> SessionError {
    match e {
        OpenError::Unreachable(reason) => SessionError::Unreachable { peer, reason },
        other => SessionError::Stream {
            peer,
            reason: other.to_string(),
        },
    }
}

fn expect_opened(answer: Response, session: SessionId) -> Result<(), SessionError> {
    match answer {
        Response::Opened { session: s } if s == session => Ok(()),
        Response::Error(e) => Err(SessionError::Refused(e)),
        other => Err(SessionError::Protocol(format!(
            "unexpected answer to open: {other:?}"
        ))),
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
/// The forwards of a replay, as ranges of `history`: every entry of several tokens (a prompt
/// chunk) alone, and each run of one-token steps in forwards of at most `max_rows`.
pub(crate) fn replay_forwards(
    history: &[HiddenStates],
    max_rows: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < history.len() {
        let steps = history[start..]
            .iter()
            .take(max_rows.max(1))
            .take_while(|h| h.n_tokens == 1)
            .count()
            .max(1);
        out.push(start..start + steps);
        start += steps;
    }
    out
}

/// Steps sent as one forward: their rows, in order.
fn joined(steps: &[HiddenStates]) -> HiddenStates {
    match steps {
        [one] => one.clone(),
        _ => super::spot::concat(steps),
    }
}

/// What a forward carries: a new input, history entries replayed into a new route (several
/// one-token steps merged into one stepwise forward), or the same for a spot check's run.
#[derive(Clone, Copy)]
enum Sent<'a> {
    New,
    Replay(&'a [HiddenStates]),
    Steps(&'a [HiddenStates]),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize) -> HiddenStates {
        HiddenStates {
            n_tokens: n,
            dim: 2,
            data: vec![0.5; n * 2],
        }
    }

    #[test]
    fn a_replay_sends_prompt_chunks_alone_and_merges_runs_of_steps() {
        let history: Vec<HiddenStates> = [5, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1]
            .iter()
            .map(|&n| tokens(n))
            .collect();
        assert_eq!(
            replay_forwards(&history, 4),
            vec![0..1, 1..4, 4..5, 5..9, 9..12]
        );
        assert_eq!(
            replay_forwards(&history, 128),
            vec![0..1, 1..4, 4..5, 5..12]
        );
        // A prompt of one token is a step like any other.
        let short: Vec<HiddenStates> = [1, 1, 1].iter().map(|&n| tokens(n)).collect();
        assert_eq!(replay_forwards(&short, 128), vec![0..3]);
        assert_eq!(replay_forwards(&short, 0), vec![0..1, 1..2, 2..3]);
        assert!(replay_forwards(&[], 128).is_empty());
    }
}
