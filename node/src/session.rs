//! Serving inference sessions. Each inbound activation stream carries one session: the first
//! message opens it (with the whole route), then forwards run through this node's blocks and, if
//! this node is not the last hop, on to the next hop over a stream this node opens; the answer
//! comes back the same way with every hop's timing added. One KV cache per session, dropped when
//! the stream ends. Every refusal is answered with a typed [`WireError`] naming its reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use sunswarm_protocol::codec::CodecError;
use sunswarm_protocol::io::{FrameError, read_message, write_message};
use sunswarm_protocol::{
    ACTIVATIONS_PROTOCOL, Announcement, BlockRange, ErrorKind, Forward, Hop, HopTiming,
    ModelDigest, OpenSession, Request, Response, TensorFrame, WireError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info_span, warn};

use crate::compute::{BlockRunner, SessionCache};
use crate::energy::{EnergySource, JobTicket, Refusal};
use crate::net::Network;

/// Everything a session needs from its node.
pub struct SessionCtx {
    pub local_peer: PeerId,
    pub model_id: ModelDigest,
    pub blocks: BlockRange,
    pub runner: Arc<dyn BlockRunner>,
    pub energy: Arc<dyn EnergySource>,
    /// One permit per concurrent session (`--max-sessions`).
    pub slots: Arc<Semaphore>,
    pub net: Network,
    /// Most tokens a session may hold on this node.
    pub max_tokens: u32,
    /// How long to wait for the next hop to open or answer.
    pub next_hop_timeout: Duration,
    /// How long a session may send nothing before the node closes it and frees its cache.
    pub idle_timeout: Duration,
    /// KV-cache memory the node may promise to sessions, in KiB permits: an open reserves its
    /// `max_tokens` worth up front, so admitted sessions can never exceed it.
    pub kv_budget_kib: Arc<Semaphore>,
}

pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(ACTIVATIONS_PROTOCOL)
}

/// Accepts activation streams until the node stops accepting, serving each on its own task.
pub async fn accept_loop(ctx: Arc<SessionCtx>, mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let ctx = ctx.clone();
        tokio::spawn(async move { serve(ctx, peer, stream).await });
    }
}

type Stream = libp2p::Stream;

fn refusal(kind: ErrorKind, hop: u16, message: impl Into<String>) -> WireError {
    let mut message = message.into();
    if message.len() > sunswarm_protocol::limits::MAX_TEXT_LEN {
        let mut cut = sunswarm_protocol::limits::MAX_TEXT_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    WireError { kind, hop, message }
}

fn codec_refusal(e: &CodecError, hop: u16) -> WireError {
    let kind = match e {
        CodecError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
        _ => ErrorKind::BadRequest,
    };
    refusal(kind, hop, e.to_string())
}

/// The answer to a frame that could not be read, if the peer can still hear one: a bad message,
/// an oversized length or a frame cut short are answered; a closed or broken stream is not.
fn frame_refusal(e: &FrameError, hop: u16) -> Option<WireError> {
    match e {
        FrameError::Codec(c) => Some(codec_refusal(c, hop)),
        FrameError::TooLarge { .. } => Some(refusal(ErrorKind::BadRequest, hop, e.to_string())),
        FrameError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => Some(refusal(
            ErrorKind::BadRequest,
            hop,
            "truncated frame: the stream ended inside it",
        )),
        _ => None,
    }
}

/// Reads the next request, giving up after `idle` with a [`ErrorKind::Timeout`] refusal.
async fn next_request(
    up: &mut Stream,
    buf: &mut Vec<u8>,
    idle: Duration,
    hop: u16,
) -> Result<Request, Option<WireError>> {
    match tokio::time::timeout(idle, read_message::<_, Request>(up, buf)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(frame_refusal(&e, hop)),
        Err(_) => Err(Some(refusal(
            ErrorKind::Timeout,
            hop,
            format!("no message for {idle:?}: the session is closed"),
        ))),
    }
}

/// Serves one session stream from `from`.
pub async fn serve(ctx: Arc<SessionCtx>, from: PeerId, mut up: Stream) {
    let mut buf = Vec::new();
    let open = match next_request(&mut up, &mut buf, ctx.idle_timeout, 0).await {
        Ok(Request::Open(o)) => o,
        Ok(_) => {
            let _ = write_message(
                &mut up,
                &Response::Error(refusal(
                    ErrorKind::BadRequest,
                    0,
                    "the first message must open a session",
                )),
            )
            .await;
            return;
        }
        Err(Some(refused)) => {
            debug!(%from, %refused, "refused before opening");
            let _ = write_message(&mut up, &Response::Error(refused)).await;
            return;
        }
        Err(None) => {
            debug!(%from, "session stream ended before opening");
            return;
        }
    };
    let span = info_span!("session", id = %open.session, hop = open.hop);
    async move {
        let hop = open.hop;
        let (permit, kv, job) = match admit(&ctx, &open) {
            Ok(p) => p,
            Err(refused) => {
                debug!(%refused, "refused");
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return;
            }
        };
        let down = if (hop as usize) + 1 < open.route.len() {
            match open_next(&ctx, &open).await {
                Ok(d) => Some(d),
                Err(refused) => {
                    let _ = write_message(&mut up, &Response::Error(refused)).await;
                    return;
                }
            }
        } else {
            None
        };
        if write_message(
            &mut up,
            &Response::Opened {
                session: open.session,
            },
        )
        .await
        .is_err()
        {
            return;
        }
        debug!(%from, "opened");
        let cache = ctx.runner.new_session();
        run_session(&ctx, &open, up, down, cache, buf, job).await;
        drop((permit, kv));
        debug!("closed");
    }
    .instrument(span)
    .await
}

/// Checks an open against this node: model, blocks, identity, limits, energy, capacity.
fn admit(
    ctx: &SessionCtx,
    open: &OpenSession,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit, JobTicket), WireError> {
    let hop = open.hop;
    let me = &open.route[hop as usize];
    if open.model_id != ctx.model_id {
        return Err(refusal(
            ErrorKind::WrongModel,
            hop,
            format!(
                "this node serves model {}, not {}",
                sunswarm_protocol::hex(&ctx.model_id),
                sunswarm_protocol::hex(&open.model_id)
            ),
        ));
    }
    if me.peer_id != ctx.local_peer.to_bytes() {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            "the route names another peer at this hop",
        ));
    }
    if me.blocks != ctx.blocks {
        return Err(refusal(
            ErrorKind::WrongBlocks,
            hop,
            format!(
                "this node serves blocks {}, the route asks for {}",
                ctx.blocks, me.blocks
            ),
        ));
    }
    if open.max_tokens > ctx.max_tokens {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!(
                "session asks for {} tokens, this node holds at most {}",
                open.max_tokens, ctx.max_tokens
            ),
        ));
    }
    if let Err(reason) = ctx.energy.admit() {
        return Err(refusal(ErrorKind::PowerSaving, hop, reason));
    }
    let permit = ctx
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| refusal(ErrorKind::Busy, hop, "this node is at its session limit"))?;
    let kib = (open.max_tokens as u64 * ctx.runner.kv_bytes_per_token() as u64).div_ceil(1024);
    let kv = u32::try_from(kib)
        .ok()
        .and_then(|k| ctx.kv_budget_kib.clone().try_acquire_many_owned(k).ok())
        .ok_or_else(|| {
            refusal(
                ErrorKind::Busy,
                hop,
                format!(
                    "a KV cache of {} tokens needs {kib} KiB; {} KiB of this node's budget are free",
                    open.max_tokens,
                    ctx.kv_budget_kib.available_permits()
                ),
            )
        })?;
    // Last, so that a job the energy model takes is never one the node then turns away.
    let job = ctx.energy.begin_job(open.max_tokens).map_err(|r| match r {
        Refusal::PowerSaving(m) => refusal(ErrorKind::PowerSaving, hop, m),
        Refusal::Busy(m) => refusal(ErrorKind::Busy, hop, m),
    })?;
    Ok((permit, kv, job))
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

/// Opens an activation stream to `peer`, sends `open` and reads the answer. libp2p-stream
/// hands a node one inbound stream at a time and drops one that arrives while the previous is
/// still being accepted (a burst of opens on a busy machine); the opener sees the stream end
/// before any answer, and nothing was opened on the peer, so that case is retried.
pub async fn send_open(
    net: &Network,
    peer: PeerId,
    open: &OpenSession,
) -> Result<(Stream, Response), OpenError> {
    let request = Request::Open(open.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut s = net
            .control()
            .open_stream(peer, protocol())
            .await
            .map_err(|e| OpenError::Unreachable(e.to_string()))?;
        let mut buf = Vec::new();
        let answer = match write_message(&mut s, &request).await {
            Ok(()) => read_message::<_, Response>(&mut s, &mut buf).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => return Ok((s, r)),
            Err(FrameError::Closed) if attempt < OPEN_ATTEMPTS => {
                debug!(%peer, attempt, "open stream dropped unread; retrying");
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens the session on the next hop of the route and waits for its answer.
async fn open_next(ctx: &SessionCtx, open: &OpenSession) -> Result<Stream, WireError> {
    let hop = open.hop;
    let next = &open.route[hop as usize + 1];
    let fail = |m: String| refusal(ErrorKind::NextHop, hop, m);
    let peer = PeerId::from_bytes(&next.peer_id)
        .map_err(|e| fail(format!("next hop's peer id is invalid: {e}")))?;
    // Only a live, announced peer of this model serving exactly those blocks, at the addresses
    // it announced itself: a route cannot make this node dial anything outside the swarm.
    let addrs = announced_addrs(ctx, &peer, next).await.ok_or_else(|| {
        fail(format!(
            "next hop {peer} is not a live announced peer of this model serving blocks {}",
            next.blocks
        ))
    })?;
    ctx.net
        .add_addresses(peer, addrs)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let fut = async {
        let mut msg = open.clone();
        msg.hop = hop + 1;
        let (down, answer) = send_open(&ctx.net, peer, &msg)
            .await
            .map_err(|e| fail(format!("next hop {peer}: {e}")))?;
        match answer {
            Response::Opened { session } if session == open.session => Ok(down),
            // A later hop's refusal travels back unchanged: the client learns which hop and why.
            Response::Error(e) => Err(e),
            other => Err(fail(format!(
                "next hop {peer} answered the open with {}",
                kind_of(&other)
            ))),
        }
    };
    match tokio::time::timeout(ctx.next_hop_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "next hop {peer} did not open within {:?}",
            ctx.next_hop_timeout
        ))),
    }
}

/// The addresses `peer` announced for serving `next.blocks` of this node's model, if it has a
/// live announcement (gossip first, then its DHT record).
async fn announced_addrs(ctx: &SessionCtx, peer: &PeerId, next: &Hop) -> Option<Vec<Multiaddr>> {
    let now = crate::node::now_ms();
    let fits = |a: &Announcement| {
        a.peer_id == next.peer_id
            && a.model_id == ctx.model_id
            && a.blocks == next.blocks
            && a.expires_ms > now
    };
    let mut found = ctx
        .net
        .gossip_view()
        .await
        .ok()
        .and_then(|g| g.into_iter().find(|a| fits(a)));
    if found.is_none() {
        let key = sunswarm_protocol::dht::peer_record_key(&ctx.model_id, &next.peer_id);
        let records = ctx.net.get_records(key).await.ok()?;
        found = records
            .iter()
            .filter_map(|r| sunswarm_protocol::codec::decode::<Announcement>(r).ok())
            .filter(|a| fits(a))
            .max_by_key(|a| a.timestamp_ms);
    }
    let addrs: Vec<Multiaddr> = found?.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    debug!(%peer, ?addrs, "next hop verified");
    (!addrs.is_empty()).then_some(addrs)
}

/// Runs a blocking computation without stalling the async runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The forward loop of an open session.
async fn run_session(
    ctx: &SessionCtx,
    open: &OpenSession,
    mut up: Stream,
    mut down: Option<Stream>,
    mut cache: Box<dyn SessionCache>,
    mut buf: Vec<u8>,
    mut job: JobTicket,
) {
    let hop = open.hop;
    let dim = ctx.runner.hidden_size();
    let mut down_buf = Vec::new();
    loop {
        let req = match next_request(&mut up, &mut buf, ctx.idle_timeout, hop).await {
            Ok(r) => r,
            Err(Some(refused)) => {
                debug!(%refused, "ending the session");
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return;
            }
            Err(None) => return, // upstream closed or failed: the session ends with it
        };
        let reply = match req {
            Request::Forward(f) => {
                match forward(
                    ctx,
                    open,
                    &f,
                    dim,
                    cache.as_mut(),
                    down.as_mut(),
                    &mut down_buf,
                )
                .await
                {
                    Ok(r) => {
                        // An emulated power mode answers no sooner than its share of the time
                        // per job (scaled by the clock); the deadline is absolute, so the hops
                        // of a route pace side by side rather than one after another.
                        job.pace(cache.len() as u32).await;
                        r
                    }
                    Err(refused) => {
                        let _ = write_message(&mut up, &Response::Error(refused)).await;
                        return;
                    }
                }
            }
            Request::Close { session } if session == open.session => {
                if let Some(d) = down.as_mut() {
                    let _ = write_message(d, &Request::Close { session }).await;
                    let _ = tokio::time::timeout(
                        ctx.next_hop_timeout,
                        read_message::<_, Response>(d, &mut down_buf),
                    )
                    .await;
                }
                let _ = write_message(&mut up, &Response::Closed { session }).await;
                return;
            }
            Request::Close { .. } => Response::Error(refusal(
                ErrorKind::UnknownSession,
                hop,
                "close names another session",
            )),
            Request::Open(_) => Response::Error(refusal(
                ErrorKind::BadRequest,
                hop,
                "this stream's session is already open",
            )),
        };
        let failed = matches!(reply, Response::Error(_));
        if write_message(&mut up, &reply).await.is_err() || failed {
            return;
        }
    }
}

/// One forward: check, compute, pass on, collect the answer.
async fn forward(
    ctx: &SessionCtx,
    open: &OpenSession,
    f: &Forward,
    dim: usize,
    cache: &mut dyn SessionCache,
    down: Option<&mut Stream>,
    down_buf: &mut Vec<u8>,
) -> Result<Response, WireError> {
    let t0 = Instant::now();
    let hop = open.hop;
    if f.session != open.session {
        return Err(refusal(
            ErrorKind::UnknownSession,
            hop,
            format!("session {} is not open on this stream", f.session),
        ));
    }
    if f.position as usize != cache.len() {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!(
                "forward starts at position {} but the cache holds {}",
                f.position,
                cache.len()
            ),
        ));
    }
    let (n, data) = f
        .hidden
        .to_hidden(dim)
        .map_err(|e| refusal(ErrorKind::BadRequest, hop, e.to_string()))?;
    if f.position as u64 + n as u64 > open.max_tokens as u64 {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!(
                "{} tokens past position {} exceed the session's {}",
                n, f.position, open.max_tokens
            ),
        ));
    }
    let tc = Instant::now();
    let out = blocking(|| cache.forward(n, data))
        .map_err(|e| refusal(ErrorKind::Compute, hop, e.to_string()))?;
    let compute = tc.elapsed();
    ctx.energy.on_job(compute);
    let frame = TensorFrame::from_f32(&[n as u32, dim as u32], &out, open.dtype)
        .map_err(|e| refusal(ErrorKind::Internal, hop, e.to_string()))?;
    let (hidden, mut timings) = match down {
        None => (frame, Vec::with_capacity(1)),
        Some(d) => {
            let next = Forward {
                session: f.session,
                step: f.step,
                position: f.position,
                hidden: frame,
            };
            let nh = |m: String| refusal(ErrorKind::NextHop, hop, m);
            write_message(d, &Request::Forward(next))
                .await
                .map_err(|e| nh(format!("sending to the next hop: {e}")))?;
            let answer = tokio::time::timeout(
                ctx.next_hop_timeout,
                read_message::<_, Response>(d, down_buf),
            )
            .await
            .map_err(|_| {
                nh(format!(
                    "the next hop did not answer within {:?}",
                    ctx.next_hop_timeout
                ))
            })?;
            match answer {
                Ok(Response::Hidden {
                    session,
                    step,
                    hidden,
                    timings,
                }) if session == f.session && step == f.step => (hidden, timings),
                Ok(Response::Error(e)) => return Err(e),
                Ok(other) => {
                    return Err(nh(format!(
                        "unexpected answer from the next hop: {}",
                        kind_of(&other)
                    )));
                }
                Err(e) => {
                    warn!("next hop failed: {e}");
                    return Err(nh(format!("the next hop failed: {e}")));
                }
            }
        }
    };
    timings.insert(
        0,
        HopTiming {
            hop,
            compute_us: micros(compute),
            total_us: micros(t0.elapsed()),
        },
    );
    Ok(Response::Hidden {
        session: f.session,
        step: f.step,
        hidden,
        timings,
    })
}

fn kind_of(r: &Response) -> &'static str {
    match r {
        Response::Opened { .. } => "an open confirmation",
        Response::Hidden { .. } => "hidden states of another step",
        Response::Error(_) => "error",
        Response::Closed { .. } => "closed",
    }
}
