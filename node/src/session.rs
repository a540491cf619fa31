//! Serving inference sessions. An inbound activation stream carries one session: the first
//! message opens it (with the whole route), then forwards run through this node's blocks and on to
//! the next hop over a stream this node opens, each hop adding its timing. The last hop sends its
//! output straight to the client, on a second stream the client attaches to it
//! ([`Request::Attach`]). Refusals travel back up the route: each hop watches its next hop's
//! stream and relays an error (or the loss of that hop) to its own upstream. One KV cache per
//! session, dropped when the session ends; when it ends because its route broke around this
//! node, the cache and the outputs computed so far are kept for a while, for the client to
//! resume the session on a repaired route without this hop computing its prefix again
//! ([`crate::resume`]). Every refusal is a typed [`WireError`] naming its reason.
//!
//! Anyone can open streams to a node, so what a stream can hold is bounded ([`SessionLimits`]):
//! a stream that has not opened a session yet is counted (per peer and in all) and must send its
//! first message, of at most `first_frame_bytes`, within `first_frame`; the next hop of a route
//! is dialled before the session takes a place, so a slow next hop holds a pending stream, not
//! a place; one client holds at most `max_sessions_per_peer` places; and a session's idle limit
//! is a budget for the whole session, not a timer per message: waiting for the next message
//! spends it, and each token the session sends earns back `idle_per_token`, up to the node's
//! `--session-idle-timeout`. A session that trickles a message every few minutes runs out; one
//! that generates, however slowly its route computes, does not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use sunswarm_protocol::codec::CodecError;
use sunswarm_protocol::io::{FrameError, FrameReader, write_message};
use sunswarm_protocol::limits::MAX_MESSAGE_BYTES;
use sunswarm_protocol::{
    Announcement, BlockRange, ErrorKind, Forward, Hop, HopTiming, ModelDigest, OpenSession,
    Receipt, Request, Response, SessionId, TensorFrame, WireError, route_digest,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::batch::{Executor, Lent, Serving, StepTerms};
use crate::compute::{BlockRunner, ComputeError, SessionCache};
use crate::energy::{EnergySource, JobTicket, Refusal};
use crate::resume::{Kept, ParkBoard, Running, plan_rows, row_digests};
use sunswarm_models::sampling::Draw;
use sunswarm_net::Network;
use sunswarm_net::stream::{Stream, send_open};

/// Everything a session needs from its node.
pub struct SessionCtx {
    pub local_peer: PeerId,
    pub model_id: ModelDigest,
    pub blocks: BlockRange,
    pub runner: Arc<dyn BlockRunner>,
    pub energy: Arc<dyn EnergySource>,
    /// One place per concurrent session (`--max-sessions`).
    pub slots: Arc<SessionSlots>,
    pub net: Network,
    /// Most tokens a session may hold on this node.
    pub max_tokens: u32,
    /// How long to wait for the next hop to open or answer.
    pub next_hop_timeout: Duration,
    /// A session's idle budget (see the module docs).
    pub idle_timeout: Duration,
    /// What streams and peers may hold.
    pub limits: SessionLimits,
    /// Streams that have not opened a session yet.
    pub streams: Arc<StreamGate>,
    /// KV-cache memory the node may promise to sessions, in KiB permits: an open reserves its
    /// `max_tokens` worth up front, so admitted sessions can never exceed it.
    pub kv_budget_kib: Arc<Semaphore>,
    /// Sessions whose last hop is this node, until their client attaches.
    pub attach: Arc<AttachBoard>,
    /// Runs the sessions' steps, many per pass.
    pub executor: Executor,
    /// How this node departs from honest behaviour (never, in `swarm-node`).
    pub hooks: Arc<dyn crate::hooks::Hooks>,
    /// Sessions running here, and those kept for a resume after their route broke.
    pub sessions: Arc<ParkBoard<KeptSession>>,
}

/// What a session holds on this node between forwards.
pub struct SessionState {
    cache: Box<dyn SessionCache>,
    /// Every output computed so far, for a replay after a failover.
    kept: Kept,
    job: JobTicket,
}

/// A session kept after its route broke (see [`crate::resume`]): its state and its places.
pub struct KeptSession {
    max_tokens: u32,
    token_deadline_us: u32,
    state: SessionState,
    holds: (SessionPlace, OwnedSemaphorePermit, Serving),
}

/// How long a resume waits for the session it takes up to stop running (it stops between
/// forwards).
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// Limits on what peers can hold on a node (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// A new stream must send its first message (an open or an attach) within this.
    pub first_frame: Duration,
    /// Largest first message (an open with the longest route is under 300 KiB).
    pub first_frame_bytes: usize,
    /// Streams that have not opened a session yet (reading their first message, or opening the
    /// next hop), in all and per peer; more are dropped unread.
    pub max_pending_streams: usize,
    pub max_pending_streams_per_peer: usize,
    /// Session places one client may hold.
    pub max_sessions_per_peer: u32,
    /// Idle budget each token a session sends earns back.
    pub idle_per_token: Duration,
    /// How long a session whose route broke is kept (its cache and places) for the client to
    /// resume it on a repaired route.
    pub resume_grace: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            first_frame: Duration::from_secs(10),
            first_frame_bytes: 1 << 20,
            max_pending_streams: 256,
            max_pending_streams_per_peer: 32,
            max_sessions_per_peer: 8,
            idle_per_token: Duration::from_secs(2),
            resume_grace: Duration::from_secs(20),
        }
    }
}

/// Counts the streams that have not opened a session yet, in all and per peer. When every
/// place is taken, a new stream evicts the oldest one that has not sent its first message yet
/// (an honest peer sends it at once, so the oldest silent stream is the likeliest to be idle):
/// a stranger holding the places with silent streams delays honest streams by no more than its
/// own rate of opening allows, instead of shutting them out.
#[derive(Debug, Default)]
pub struct StreamGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_peer: HashMap<PeerId, usize>,
    /// Streams still waiting for their first message, oldest first.
    silent: std::collections::VecDeque<Silent>,
    next_id: u64,
}

#[derive(Debug)]
struct Silent {
    id: u64,
    peer: PeerId,
    evict: Arc<tokio::sync::Notify>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl GateState {
    fn release(&mut self, peer: &PeerId) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }
}

impl StreamGate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending stream from `peer`, or `None` when `peer` is at its own limit, or when every
    /// place is held by streams past their first message.
    pub fn enter(self: &Arc<Self>, peer: PeerId, limits: &SessionLimits) -> Option<PendingStream> {
        use std::sync::atomic::Ordering;
        let mut g = self.state();
        if g.per_peer.get(&peer).copied().unwrap_or(0) >= limits.max_pending_streams_per_peer {
            return None;
        }
        if g.total >= limits.max_pending_streams {
            let oldest = g.silent.pop_front()?;
            oldest.released.store(true, Ordering::SeqCst);
            g.release(&oldest.peer);
            oldest.evict.notify_one();
        }
        *g.per_peer.entry(peer).or_insert(0) += 1;
        g.total += 1;
        let id = g.next_id;
        g.next_id += 1;
        let evict = Arc::new(tokio::sync::Notify::new());
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        g.silent.push_back(Silent {
            id,
            peer,
            evict: evict.clone(),
            released: released.clone(),
        });
        Some(PendingStream {
            gate: self.clone(),
            peer,
            id,
            evict,
            released,
        })
    }

    /// Streams pending now.
    pub fn pending(&self) -> usize {
        self.state().total
    }
}

/// A stream's pending place at the [`StreamGate`], freed when dropped.
#[derive(Debug)]
pub struct PendingStream {
    gate: Arc<StreamGate>,
    peer: PeerId,
    id: u64,
    evict: Arc<tokio::sync::Notify>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl PendingStream {
    /// Resolves when a newer stream took this one's place (it was still silent).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// The stream sent its first message: it keeps its place until it is dropped.
    pub fn spoke(&self) {
        self.gate.state().silent.retain(|s| s.id != self.id);
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        let mut g = self.gate.state();
        g.silent.retain(|s| s.id != self.id);
        if !self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            g.release(&self.peer);
        }
    }
}

/// The node's places for concurrent sessions. Taking or freeing one is signalled, so the node can
/// announce at once that it became full or has room again: a client that routes on a stale
/// "full" skips a node that could serve, and on a stale "room" gets refused.
#[derive(Debug)]
pub struct SessionSlots {
    places: Arc<Semaphore>,
    max: u32,
    /// Most places one client may hold.
    max_per_peer: u32,
    per_peer: Mutex<HashMap<Vec<u8>, u32>>,
    changed: tokio::sync::Notify,
}

impl SessionSlots {
    pub fn new(max: u32) -> Arc<Self> {
        Self::with_peer_cap(max, max)
    }

    /// `max` places, at most `max_per_peer` of them for one client.
    pub fn with_peer_cap(max: u32, max_per_peer: u32) -> Arc<Self> {
        Arc::new(SessionSlots {
            places: Arc::new(Semaphore::new(max as usize)),
            max,
            max_per_peer: max_per_peer.max(1),
            per_peer: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, u32>> {
        self.per_peer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client` may take a place now (without taking it).
    fn has_room_for(&self, client: &[u8]) -> Result<(), &'static str> {
        if self.places.available_permits() == 0 {
            return Err("this node is at its session limit");
        }
        if self.held().get(client).copied().unwrap_or(0) >= self.max_per_peer {
            return Err("this client holds as many sessions here as one peer may");
        }
        Ok(())
    }

    /// Sessions holding a place now.
    pub fn active(&self) -> u32 {
        self.max
            .saturating_sub(u32::try_from(self.places.available_permits()).unwrap_or(u32::MAX))
    }

    pub fn is_full(&self) -> bool {
        self.places.available_permits() == 0
    }

    /// Waits until a place is taken or freed (one that happened since the last wait counts).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// A place for a session of `client`, unless the node or that client is at its limit.
    fn try_take(self: &Arc<Self>, client: &[u8]) -> Result<SessionPlace, &'static str> {
        let mut held = self.held();
        let n = held.entry(client.to_vec()).or_insert(0);
        if *n >= self.max_per_peer {
            return Err("this client holds as many sessions here as one peer may");
        }
        let permit = self
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| "this node is at its session limit")?;
        *n += 1;
        drop(held);
        self.changed.notify_one();
        Ok(SessionPlace {
            permit: Some(permit),
            slots: self.clone(),
            client: client.to_vec(),
        })
    }
}

/// A session's place; freed (and signalled) when dropped.
#[derive(Debug)]
pub struct SessionPlace {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<SessionSlots>,
    client: Vec<u8>,
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        {
            let mut held = self.slots.held();
            if let Some(n) = held.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.client);
                }
            }
        }
        // Freed before the signal, so whoever wakes sees the place free.
        drop(self.permit.take());
        self.slots.changed.notify_one();
    }
}

/// Sessions whose last hop is this node, waiting for their client's return stream.
#[derive(Debug, Default)]
pub struct AttachBoard {
    waiting: Mutex<HashMap<SessionId, Waiting>>,
}

#[derive(Debug)]
struct Waiting {
    client: Vec<u8>,
    hop: u16,
    stream: oneshot::Sender<Stream>,
}

impl AttachBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Waiting>> {
        // Every method changes the map in one step, so a panic elsewhere cannot leave it torn.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an opened session; its client may attach until the returned slot is dropped.
    fn register(self: &Arc<Self>, open: &OpenSession) -> Result<AttachSlot, WireError> {
        let mut map = self.lock();
        if map.contains_key(&open.session) {
            return Err(refusal(
                ErrorKind::BadRequest,
                open.hop,
                format!("session {} is already open on this node", open.session),
            ));
        }
        let (tx, rx) = oneshot::channel();
        map.insert(
            open.session,
            Waiting {
                client: open.client.clone(),
                hop: open.hop,
                stream: tx,
            },
        );
        Ok(AttachSlot {
            board: self.clone(),
            session: open.session,
            stream: rx,
        })
    }

    /// Takes the waiting session `session` for `from`, which must be the client that opened it.
    fn take(
        &self,
        session: SessionId,
        from: &PeerId,
    ) -> Result<oneshot::Sender<Stream>, WireError> {
        match self.lock().entry(session) {
            std::collections::hash_map::Entry::Vacant(_) => Err(refusal(
                ErrorKind::UnknownSession,
                0,
                format!("no session {session} waits for its client here"),
            )),
            std::collections::hash_map::Entry::Occupied(w) if w.get().client != from.to_bytes() => {
                Err(refusal(
                    ErrorKind::BadRequest,
                    w.get().hop,
                    format!("session {session} was opened for another client"),
                ))
            }
            std::collections::hash_map::Entry::Occupied(w) => Ok(w.remove().stream),
        }
    }
}

/// A session's place on the [`AttachBoard`]; dropping it withdraws the place.
struct AttachSlot {
    board: Arc<AttachBoard>,
    session: SessionId,
    stream: oneshot::Receiver<Stream>,
}

impl Drop for AttachSlot {
    fn drop(&mut self) {
        self.board.lock().remove(&self.session);
    }
}

/// Accepts activation streams until the node stops accepting, serving each on its own task.
pub async fn accept_loop(
    ctx: Arc<SessionCtx>,
    mut incoming: sunswarm_net::stream::IncomingStreams,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some(pending) = ctx.streams.enter(peer, &ctx.limits) else {
            debug!(%peer, "too many streams waiting to open a session: dropping one unread");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move { serve(ctx, peer, stream, pending).await });
    }
}

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
/// Cancel-safe (the reader keeps a partly read frame).
async fn next_request(
    up: &mut Stream,
    reader: &mut FrameReader,
    idle: Duration,
    hop: u16,
) -> Result<Request, Option<WireError>> {
    match tokio::time::timeout(idle, reader.next::<_, Request>(up)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(frame_refusal(&e, hop)),
        Err(_) => Err(Some(refusal(
            ErrorKind::Timeout,
            hop,
            format!(
                "no message within {idle:?} (what was left of the idle budget): the session is closed"
            ),
        ))),
    }
}

/// Hands the client's return stream to the session it names.
async fn attach(ctx: &SessionCtx, from: PeerId, session: SessionId, mut stream: Stream) {
    match ctx.attach.take(session, &from) {
        Ok(tx) => {
            if write_message(&mut stream, &Response::Opened { session })
                .await
                .is_ok()
            {
                // Fails only if the session ended meanwhile; dropping the stream tells the client.
                let _ = tx.send(stream);
            }
        }
        Err(refused) => {
            debug!(%from, %refused, "attach refused");
            let _ = write_message(&mut stream, &Response::Error(refused)).await;
        }
    }
}

/// Serves one session stream from `from`; `pending` is its place among the streams that have
/// not opened a session yet, given up once the session runs.
pub async fn serve(ctx: Arc<SessionCtx>, from: PeerId, mut up: Stream, pending: PendingStream) {
    // The first message is small and due soon: a stranger cannot hold a large buffer, or the
    // stream itself, for long before anything is open.
    let mut reader = FrameReader::with_limit(ctx.limits.first_frame_bytes);
    let first = tokio::select! {
        r = next_request(&mut up, &mut reader, ctx.limits.first_frame, 0) => r,
        () = pending.evicted() => {
            debug!(%from, "silent stream evicted by a newer one");
            return;
        }
    };
    pending.spoke();
    let open = match first {
        Ok(Request::Open(o)) => o,
        Ok(Request::Attach { session }) => {
            drop(pending);
            return attach(&ctx, from, session, up).await;
        }
        Ok(_) => {
            let _ = write_message(
                &mut up,
                &Response::Error(refusal(
                    ErrorKind::BadRequest,
                    0,
                    "the first message must open a session or attach to one",
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
    reader.set_limit(MAX_MESSAGE_BYTES);
    let span = info_span!("session", id = %open.session, hop = open.hop);
    async move {
        let hop = open.hop;
        if let Err(refused) = check_route(&ctx, &open, &from) {
            debug!(%refused, "refused");
            let _ = write_message(&mut up, &Response::Error(refused)).await;
            return;
        }
        let registered = if open.resume {
            ctx.sessions
                .resume(open.session, &open.client, RESUME_WAIT)
                .await
        } else {
            ctx.sessions
                .open(open.session, &open.client)
                .map(|running| (running, None))
        };
        let (running, resumed) = match registered {
            Ok(r) => r,
            Err(e) => {
                let refused = refusal(ErrorKind::BadRequest, hop, e.to_string());
                debug!(%refused, "refused");
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return;
            }
        };
        // What is kept is taken up only by an open like the first (its cache was sized and its
        // deadline admitted for that one); otherwise it is dropped and the session opens fresh.
        let resumed = resumed.filter(|k| {
            k.max_tokens == open.max_tokens && k.token_deadline_us == open.token_deadline_us
        });
        if resumed.is_none()
            && let Err(refused) = check_room(&ctx, &open)
        {
            debug!(%refused, "refused");
            let _ = write_message(&mut up, &Response::Error(refused)).await;
            return;
        }
        // The next hop is opened before this session takes a place: a next hop that is slow to
        // answer holds only this pending stream.
        let next = if (hop as usize) + 1 < open.route.len() {
            open_next(&ctx, &open).await.map(Onward::Hop)
        } else {
            // Registered before the open is confirmed, so the client's attach always finds it.
            ctx.attach.register(&open).map(Onward::Client)
        };
        let next = match next {
            Ok(n) => n,
            Err(refused) => {
                // What was resumed stays kept: the client may repair the route again.
                if let Some(k) = resumed {
                    running.keep(k, ctx.limits.resume_grace);
                }
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return;
            }
        };
        let was_resumed = resumed.is_some();
        let (mut state, holds) = match resumed {
            Some(k) => (k.state, k.holds),
            None => match admit(&ctx, &open) {
                Ok((permit, kv, job, serving)) => (
                    SessionState {
                        cache: ctx.runner.new_session(),
                        kept: Kept::default(),
                        job,
                    },
                    (permit, kv, serving),
                ),
                Err(refused) => {
                    // Dropping `next` closes the session on the hops after this one.
                    debug!(%refused, "refused");
                    let _ = write_message(&mut up, &Response::Error(refused)).await;
                    return;
                }
            },
        };
        drop(pending);
        let keep = |running: Running<KeptSession>, state: SessionState, holds| {
            // Kept only whole: a forward that failed inside the executor left no cache.
            if state.kept.len() == state.cache.len() && !state.kept.is_empty() {
                debug!(positions = state.cache.len(), "kept for a resume");
                running.keep(
                    KeptSession {
                        max_tokens: open.max_tokens,
                        token_deadline_us: open.token_deadline_us,
                        state,
                        holds,
                    },
                    ctx.limits.resume_grace,
                );
            }
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
            keep(running, state, holds);
            return;
        }
        debug!(%from, resumed = was_resumed, positions = state.cache.len(), "opened");
        let terms = holds.2.terms();
        let ending =
            run_session(&ctx, &open, (up, reader), next, &mut state, &running, terms).await;
        match ending {
            Ending::Broken => keep(running, state, holds),
            Ending::Closed | Ending::Failed => drop((running, state, holds)),
        }
        debug!(?ending, "ended");
    }
    .instrument(span)
    .await
}

/// Checks an open against this node before anything is taken: model, blocks, identity, the
/// upstream's identity and limits.
fn check_route(ctx: &SessionCtx, open: &OpenSession, from: &PeerId) -> Result<(), WireError> {
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
    // The stream must come from the peer the route puts before this hop (the client itself for
    // hop 0): a hop cannot hand the session to someone the route does not name.
    let upstream: &[u8] = match hop.checked_sub(1) {
        None => &open.client,
        Some(prev) => &open.route[prev as usize].peer_id,
    };
    if upstream != from.to_bytes().as_slice() {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!("the route puts another peer than {from} before hop {hop}"),
        ));
    }
    Ok(())
}

/// Bytes of state one position of a session takes here: its keys and values, and the output
/// kept for a replay.
fn state_bytes_per_token(ctx: &SessionCtx) -> u64 {
    ctx.runner.kv_bytes_per_token() as u64 + Kept::bytes_per_row(ctx.runner.hidden_size()) as u64
}

/// Checks that a new session fits beside the others: energy, memory and room for the client.
fn check_room(ctx: &SessionCtx, open: &OpenSession) -> Result<(), WireError> {
    let hop = open.hop;
    if let Err(reason) = ctx.energy.admit() {
        return Err(refusal(ErrorKind::PowerSaving, hop, reason));
    }
    let kib = (open.max_tokens as u64 * state_bytes_per_token(ctx)).div_ceil(1024);
    if kib > ctx.kv_budget_kib.available_permits() as u64 {
        return Err(refusal(
            ErrorKind::Busy,
            hop,
            format!(
                "a KV cache of {} tokens needs {kib} KiB; {} KiB of this node's budget are free",
                open.max_tokens,
                ctx.kv_budget_kib.available_permits()
            ),
        ));
    }
    ctx.slots
        .has_room_for(&open.client)
        .map_err(|why| refusal(ErrorKind::Busy, hop, why))
}

/// Takes what an open session holds: its place, its KV-cache memory, its deadline's share of
/// the executor, and its job in the energy model.
fn admit(
    ctx: &SessionCtx,
    open: &OpenSession,
) -> Result<(SessionPlace, OwnedSemaphorePermit, JobTicket, Serving), WireError> {
    let hop = open.hop;
    let permit = ctx
        .slots
        .try_take(&open.client)
        .map_err(|why| refusal(ErrorKind::Busy, hop, why))?;
    let kib = (open.max_tokens as u64 * state_bytes_per_token(ctx)).div_ceil(1024);
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
    let serving = ctx
        .executor
        .admit(open.max_tokens, deadline_share(ctx, open))
        .map_err(|e| refusal(ErrorKind::Deadline, hop, e.to_string()))?;
    // Last, so that a job the energy model takes is never one the node then turns away.
    let job = ctx.energy.begin_job(open.max_tokens).map_err(|r| match r {
        Refusal::PowerSaving(m) => refusal(ErrorKind::PowerSaving, hop, m),
        Refusal::Busy(m) => refusal(ErrorKind::Busy, hop, m),
    })?;
    Ok((permit, kv, job, serving))
}

/// This hop's share of the session's per-token deadline, in proportion to its blocks (the route
/// ends at the model's last block), or `None` when the session states none.
fn deadline_share(ctx: &SessionCtx, open: &OpenSession) -> Option<f64> {
    let total = open.route.last()?.blocks.end;
    let mine = ctx.blocks.end.checked_sub(ctx.blocks.start)?;
    (open.token_deadline_us > 0 && total > 0)
        .then(|| f64::from(open.token_deadline_us) * 1e-6 * f64::from(mine) / f64::from(total))
}

/// Opens the session on the next hop of the route and waits for its answer.
async fn open_next(ctx: &SessionCtx, open: &OpenSession) -> Result<Stream, WireError> {
    let hop = open.hop;
    let mut msg = open.clone();
    msg.hop = hop + 1;
    ctx.hooks.open_next(&mut msg);
    let Some(next) = msg.route.get(hop as usize + 1) else {
        return Err(refusal(ErrorKind::Internal, hop, "no next hop"));
    };
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
    let now = sunswarm_net::now_ms();
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
        // Only the peer's own signed announcement counts: a DHT node may return anything.
        found = records
            .iter()
            .filter_map(|r| sunswarm_net::announce::decode_record(&key, r, now).ok())
            .filter(|a| fits(a))
            .max_by_key(|a| a.timestamp_ms);
    }
    let addrs: Vec<Multiaddr> = found?.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    debug!(%peer, ?addrs, "next hop verified");
    (!addrs.is_empty()).then_some(addrs)
}

/// Runs a blocking computation without stalling the async runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Where a hop's outputs go.
enum Onward {
    /// The next hop of the route, on the stream this node opened to it.
    Hop(Stream),
    /// The client, once it attaches its return stream (this node is the last hop).
    Client(AttachSlot),
}

/// What [`run_session`] waits for next.
enum Event {
    Up(Result<Request, Option<WireError>>),
    Down(Result<Response, FrameError>),
    Attached(Stream),
    /// A resume of this session on a repaired route wants its state.
    Leave,
}

/// How a session ended, which decides whether its state is kept for a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client closed it.
    Closed,
    /// It ended for good: its client went away or ran out of idle budget, or this node refused
    /// or failed a forward (the client replaces this hop).
    Failed,
    /// Its route broke around this node (a neighbour failed or went away), or a resume took it:
    /// the state is kept for the client to resume.
    Broken,
}

/// A refusal for a next hop that failed, answered, or went away.
fn next_hop_lost(hop: u16, answer: Result<Response, FrameError>) -> WireError {
    let nh = |m: String| refusal(ErrorKind::NextHop, hop, m);
    match answer {
        // A later hop's refusal travels back unchanged: the client learns which hop and why.
        Ok(Response::Error(e)) => e,
        Ok(other) => nh(format!(
            "unexpected message from the next hop: {}",
            kind_of(&other)
        )),
        Err(FrameError::Closed) => nh("the next hop closed the session".into()),
        Err(e) => {
            warn!("next hop failed: {e}");
            nh(format!("the next hop failed: {e}"))
        }
    }
}

/// Closes the session on the hops after this one, which would otherwise keep it for a resume
/// (best effort, without waiting for their answer).
async fn close_onward(next: &mut Onward, session: SessionId) {
    if let Onward::Hop(d) = next {
        let _ = write_message(d, &Request::Close { session }).await;
    }
}

/// The forward loop of an open session: forwards from upstream are computed and passed on; the
/// next hop's stream is watched at the same time, so that its failure ends the session at once
/// and is reported upstream.
async fn run_session(
    ctx: &SessionCtx,
    open: &OpenSession,
    (mut up, mut up_reader): (Stream, FrameReader),
    mut next: Onward,
    state: &mut SessionState,
    running: &Running<KeptSession>,
    terms: StepTerms,
) -> Ending {
    let hop = open.hop;
    let dim = ctx.runner.hidden_size();
    let mut down_reader = FrameReader::new();
    let mut client: Option<Stream> = None;
    // What is left of the session's idle budget (module docs).
    let mut idle_left = ctx.idle_timeout;
    loop {
        let waiting_since = Instant::now();
        let (down, slot) = match &mut next {
            Onward::Hop(d) => (Some(d), None),
            // A received stream is never waited for again (the receiver is spent).
            Onward::Client(slot) => (None, Some(slot).filter(|_| client.is_none())),
        };
        let event = tokio::select! {
            r = next_request(&mut up, &mut up_reader, idle_left, hop) => Event::Up(r),
            Some(d) = async {
                match down {
                    Some(d) => Some(down_reader.next::<_, Response>(d).await),
                    None => None,
                }
            } => Event::Down(d),
            Some(Ok(s)) = async {
                match slot {
                    Some(slot) => Some((&mut slot.stream).await),
                    None => None,
                }
            } => Event::Attached(s),
            () = running.asked_to_leave() => Event::Leave,
        };
        idle_left = idle_left.saturating_sub(waiting_since.elapsed());
        let req = match event {
            Event::Attached(s) => {
                debug!("client attached");
                client = Some(s);
                continue;
            }
            Event::Leave => return Ending::Broken,
            Event::Down(answer) => {
                let refused = next_hop_lost(hop, answer);
                debug!(%refused, "next hop ended the session");
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return Ending::Broken;
            }
            Event::Up(Ok(r)) => r,
            Event::Up(Err(Some(refused))) => {
                debug!(%refused, "ending the session");
                if refused.kind == ErrorKind::Timeout {
                    close_onward(&mut next, open.session).await;
                }
                let _ = write_message(&mut up, &Response::Error(refused)).await;
                return Ending::Failed;
            }
            // Upstream closed or failed: the client left (hop 0), or the hop before this one did
            // and the client will repair the route.
            Event::Up(Err(None)) if hop == 0 => {
                close_onward(&mut next, open.session).await;
                return Ending::Failed;
            }
            Event::Up(Err(None)) => return Ending::Broken,
        };
        let refused = match req {
            Request::Forward(f) => {
                let tokens = f.hidden.shape.first().copied().unwrap_or(1);
                idle_left = (idle_left + ctx.limits.idle_per_token * tokens).min(ctx.idle_timeout);
                let next_peer = open
                    .route
                    .get(hop as usize + 1)
                    .and_then(|h| PeerId::from_bytes(&h.peer_id).ok());
                if let Some(e) = ctx.hooks.fail_step(open, f.step, next_peer) {
                    let _ = write_message(&mut up, &Response::Error(e)).await;
                    return Ending::Failed;
                }
                match forward(ctx, open, f, dim, state, terms).await {
                    Ok(out) => match pass_on(ctx, open, out, &mut next, &mut client).await {
                        Ok(()) => continue,
                        Err(refused) => {
                            let _ = write_message(&mut up, &Response::Error(refused.clone())).await;
                            return if refused.kind == ErrorKind::NextHop {
                                Ending::Broken
                            } else {
                                Ending::Failed
                            };
                        }
                    },
                    Err(refused) => refused,
                }
            }
            Request::Close { session } if session == open.session => {
                if let Onward::Hop(d) = &mut next {
                    let _ = write_message(d, &Request::Close { session }).await;
                    let _ = tokio::time::timeout(
                        ctx.next_hop_timeout,
                        down_reader.next::<_, Response>(d),
                    )
                    .await;
                }
                let _ = write_message(&mut up, &Response::Closed { session }).await;
                return Ending::Closed;
            }
            Request::Close { .. } => refusal(
                ErrorKind::UnknownSession,
                hop,
                "close names another session",
            ),
            Request::Open(_) | Request::Attach { .. } => refusal(
                ErrorKind::BadRequest,
                hop,
                "this stream's session is already open",
            ),
        };
        let _ = write_message(&mut up, &Response::Error(refused)).await;
        return Ending::Failed;
    }
}

/// A forward's result on this hop: the forward to pass on, and on the last hop the token it
/// picked when asked to.
struct Stepped {
    forward: Forward,
    token: Option<u32>,
}

/// One forward: check it, run the blocks over the rows this hop has not computed yet (see
/// [`plan_rows`]), on the last hop pick the next token when asked, wait for the power mode's
/// pace, and stamp this hop's timing onto it.
async fn forward(
    ctx: &SessionCtx,
    open: &OpenSession,
    f: Forward,
    dim: usize,
    state: &mut SessionState,
    terms: StepTerms,
) -> Result<Stepped, WireError> {
    let SessionState { cache, kept, job } = state;
    let t0 = Instant::now();
    let hop = open.hop;
    if f.session != open.session {
        return Err(refusal(
            ErrorKind::UnknownSession,
            hop,
            format!("session {} is not open on this stream", f.session),
        ));
    }
    if kept.len() != cache.len() {
        return Err(refusal(
            ErrorKind::Internal,
            hop,
            format!(
                "the session's cache holds {} positions but {} outputs were kept",
                cache.len(),
                kept.len()
            ),
        ));
    }
    if f.receipts.len() != hop as usize {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!(
                "forward carries {} receipts, hop {hop} expects one per earlier hop",
                f.receipts.len()
            ),
        ));
    }
    if f.taps.len() > hop as usize {
        return Err(refusal(
            ErrorKind::BadRequest,
            hop,
            format!(
                "forward carries {} taps, more than the {hop} earlier hops",
                f.taps.len()
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
    let inputs = row_digests(&data, dim);
    let plan = plan_rows(f.position as usize, &inputs, kept.inputs(), f.stepwise)
        .map_err(|m| refusal(ErrorKind::BadRequest, hop, m))?;
    if let Some(len) = plan.truncate_to {
        debug!(
            from = len,
            held = cache.len(),
            "replayed inputs differ from what was computed: computing again"
        );
        cache.truncate(len);
        kept.truncate(len, dim);
    }
    let mut out = kept.outputs(f.position as usize, plan.kept, dim).to_vec();
    let mut compute = Duration::ZERO;
    // Only the last hop's output is the model's last hidden state.
    let draw = f
        .draw
        .filter(|_| hop as usize + 1 == open.route.len())
        .map(|d| Draw {
            temperature: d.temperature,
            top_p: d.top_p,
            state: d.state,
        });
    let mut token = None;
    if plan.kept < n {
        // The cache goes to the executor with the step and comes back with the output.
        let lent = std::mem::replace(cache, Box::new(Lent));
        let rows = data[plan.kept * dim..].to_vec();
        let done = ctx
            .executor
            .step(
                lent,
                n - plan.kept,
                rows,
                f.stepwise,
                StepTerms { draw, ..terms },
            )
            .await
            .map_err(|e| refusal(ErrorKind::Internal, hop, e.to_string()))?;
        *cache = done.cache;
        token = done.token;
        let computed = done.output.map_err(|e| {
            let kind = match e {
                ComputeError::DeadlineMissed { .. } => ErrorKind::Deadline,
                _ => ErrorKind::Compute,
            };
            refusal(kind, hop, e.to_string())
        })?;
        kept.push(&inputs[plan.kept..], &computed);
        out.extend_from_slice(&computed);
        // The step waited for the whole pass; its energy is its share of the pass.
        compute = done.pass_compute;
        ctx.energy
            .on_job(compute / u32::try_from(done.pass_steps.max(1)).unwrap_or(u32::MAX));
    }
    if let (Some(draw), true) = (draw, plan.kept == n && n > 0) {
        // A replay answered from what was kept: its token still has to be picked.
        let last = &out[(n - 1) * dim..];
        token = blocking(|| ctx.runner.draw_tokens(&[last], &[draw]))
            .and_then(Result::ok)
            .and_then(|t| t.first().copied());
    }
    ctx.hooks.output(open, f.step, &mut out);
    ctx.hooks.token(open, f.step, &mut token);
    let hidden = TensorFrame::from_f32(&[n as u32, dim as u32], &out, open.dtype)
        .map_err(|e| refusal(ErrorKind::Internal, hop, e.to_string()))?;
    // An emulated power mode answers no sooner than its share of the time per job (scaled by
    // the clock); the deadline is absolute, so the hops of a route pace side by side rather than
    // one after another. Rows answered from what was kept cost nothing to pace.
    if plan.kept < n {
        job.pace(cache.len() as u32).await;
    }
    let mut receipt = Receipt {
        timing: HopTiming {
            hop,
            compute_us: micros(compute),
            total_us: micros(t0.elapsed()),
            kept_rows: plan.kept as u32,
        },
        signer: ctx.local_peer.to_bytes(),
        route: route_digest(&open.route),
        input: f.hidden.checksum,
        output: hidden.checksum,
        token,
        signature: Vec::new(),
    };
    receipt.signature = ctx
        .net
        .sign(&receipt.signing_bytes(&f.session, f.step))
        .map_err(|e| {
            refusal(
                ErrorKind::Internal,
                hop,
                format!("signing the receipt: {e}"),
            )
        })?;
    let mut receipts = f.receipts;
    receipts.push(receipt);
    let mut taps = f.taps;
    // The last hop's output goes to the client anyway.
    if f.tap && (hop as usize) + 1 < open.route.len() {
        taps.push(hidden.clone());
    }
    Ok(Stepped {
        forward: Forward {
            session: f.session,
            step: f.step,
            position: f.position,
            hidden,
            stepwise: f.stepwise,
            receipts,
            tap: f.tap,
            taps,
            draw: f.draw,
        },
        token,
    })
}

/// Sends a forward's output to the next hop, or, from the last hop, to the client's return
/// stream (waiting for the client to attach it if it has not yet).
async fn pass_on(
    ctx: &SessionCtx,
    open: &OpenSession,
    Stepped {
        forward: out,
        token,
    }: Stepped,
    next: &mut Onward,
    client: &mut Option<Stream>,
) -> Result<(), WireError> {
    let hop = open.hop;
    match next {
        Onward::Hop(d) => write_message(d, &Request::Forward(out)).await.map_err(|e| {
            refusal(
                ErrorKind::NextHop,
                hop,
                format!("sending to the next hop: {e}"),
            )
        }),
        Onward::Client(slot) => {
            let s = match client {
                Some(s) => s,
                None => {
                    let attached =
                        tokio::time::timeout(ctx.limits.first_frame, &mut slot.stream).await;
                    client.insert(attached.ok().and_then(Result::ok).ok_or_else(|| {
                        refusal(
                            ErrorKind::Timeout,
                            hop,
                            format!(
                                "the client did not attach for the outputs within {:?}",
                                ctx.limits.first_frame
                            ),
                        )
                    })?)
                }
            };
            let answer = Response::Hidden {
                session: out.session,
                step: out.step,
                hidden: out.hidden,
                receipts: out.receipts,
                taps: out.taps,
                token,
            };
            write_message(s, &answer).await.map_err(|e| {
                refusal(
                    ErrorKind::Internal,
                    hop,
                    format!("sending the output to the client: {e}"),
                )
            })
        }
    }
}

fn kind_of(r: &Response) -> &'static str {
    match r {
        Response::Opened { .. } => "an open confirmation",
        Response::Hidden { .. } => "hidden states of another step",
        Response::Error(_) => "error",
        Response::Closed { .. } => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> SessionLimits {
        SessionLimits {
            max_pending_streams: total,
            max_pending_streams_per_peer: per_peer,
            ..SessionLimits::default()
        }
    }

    #[tokio::test]
    async fn a_full_gate_evicts_the_oldest_silent_stream_and_never_one_that_spoke() {
        let gate = Arc::new(StreamGate::default());
        let l = limits(3, 2);
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let first = gate.enter(a, &l).unwrap();
        let second = gate.enter(b, &l).unwrap();
        let third = gate.enter(c, &l).unwrap();
        second.spoke();
        assert_eq!(gate.pending(), 3);
        // Full: the newcomer takes the place of the oldest silent one (the first).
        let fourth = gate.enter(d, &l).unwrap();
        assert_eq!(gate.pending(), 3);
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest silent stream is told to go");
        drop(first);
        assert_eq!(gate.pending(), 3, "an evicted stream is not counted twice");
        // Next in line is the third (the second spoke); then nothing silent is left but the
        // fourth and the fifth.
        let fifth = gate.enter(a, &l).unwrap();
        tokio::time::timeout(Duration::from_secs(1), third.evicted())
            .await
            .unwrap();
        fourth.spoke();
        fifth.spoke();
        assert!(
            gate.enter(b, &l).is_none(),
            "every place spoke: nothing to evict"
        );
        drop((second, third, fourth, fifth));
        assert_eq!(gate.pending(), 0);
        // The per-peer cap holds whatever is free.
        let _x = gate.enter(a, &l).unwrap();
        let _y = gate.enter(a, &l).unwrap();
        assert!(gate.enter(a, &l).is_none());
    }
}
