//! Failover: a session that outlives the peers on its route. When a forward fails (a peer died,
//! timed out, or refused), the hop to blame is put on a backoff list, a replacement for its
//! blocks is chosen with the policy (the surviving hops are kept), the session is opened again
//! on the repaired route under the same id (`SwarmSession::resume`), and the client replays
//! every input it sent so far with the failed forward at its end (`SwarmSession::replay_then`):
//! prompt chunks as they were sent, the decode steps as one stepwise forward that every hop
//! computes row by row as the steps were. Both rebuild bit-identical KV caches, so the
//! generated text is the same as an uninterrupted run's.
//!
//! The surviving hops kept the session when its route broke (`sunswarm_node::resume`): they
//! answer the replayed rows from the outputs they kept, so only the replacement computes the
//! prefix, from inputs that its predecessor sends as it would any forward. The client replays
//! rather than the predecessor resending what it forwarded because the client holds the
//! prefix anyway and a replay needs nothing new of the hops; a hop that kept nothing (or whose
//! inputs changed, after a dishonest hop was replaced) simply computes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;
use sunswarm_models::HiddenStates;
use sunswarm_protocol::{ErrorKind, Hop, ModelDigest};

use super::learned::OBSERVE_AFTER_STEPS;
use super::route::Routing;
use super::session::{ForwardTiming, OpenParams, SessionError, SwarmSession, failed_hop};
use super::spot::{self, SharedReferee, SpotChecks, SpotReport, Verdict};
use super::{SwarmClient, SwarmError};
use crate::generate::{Pipeline, PipelineError, Stepped};
use crate::head::SharedHead;
use sunswarm_models::sampling::Draw;
use sunswarm_protocol::TokenDraw;

/// Most route repairs within one generation before it gives up.
pub const MAX_FAILOVERS: usize = 8;

/// How often opening a session is tried again after a peer dropped its stream, before the peer
/// is backed off.
pub const OPEN_STREAM_RETRIES: u32 = 6;

/// The pause before retry `n` (1-based): growing, with jitter so a burst spreads out.
fn open_retry_delay(n: u32) -> Duration {
    let jitter = rand::random::<u64>() % 50;
    Duration::from_millis(50 * u64::from(n) + jitter)
}
/// The pause before trying, for the `n`th time (1-based), a route that takes a peer back
/// although it failed: no other peer serves its blocks now. Under churn that is a range whose
/// replicas just left while their replacements have not announced yet; trying the failed peer
/// again at once spent a generation's every repair within a quarter of a second.
fn reuse_delay(n: usize) -> Duration {
    Duration::from_millis((250 * n as u64).min(2_000))
}

/// Whether `route` takes back a peer of `avoid`.
fn reuses(route: &[Hop], avoid: &[Vec<u8>]) -> bool {
    route.iter().any(|h| avoid.contains(&h.peer_id))
}

/// How long a failed peer is avoided.
pub const BACKOFF: Duration = Duration::from_secs(60);

/// Peers that failed recently, each avoided until its backoff ends.
#[derive(Debug, Default)]
pub struct Backoff {
    until: HashMap<Vec<u8>, Instant>,
}

impl Backoff {
    pub fn fail(&mut self, peer: &[u8], now: Instant) {
        self.until.insert(peer.to_vec(), now + BACKOFF);
    }

    /// The peers still avoided at `now`.
    pub fn avoided(&self, now: Instant) -> Vec<Vec<u8>> {
        self.until
            .iter()
            .filter(|&(_, t)| *t > now)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// One repaired failure, for the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverEvent {
    /// Hop of the route that failed, and its peer.
    pub hop: usize,
    pub peer: String,
    pub reason: String,
    /// Tokens replayed into the new route.
    pub replayed_tokens: usize,
    /// Per hop of the new route, the replayed rows it answered from what it kept of the broken
    /// route instead of computing them (the replacement: none).
    pub kept_rows: Vec<u64>,
    /// From the failed forward's error to the retried forward's answer.
    pub recovery_ms: f64,
    /// Parts of the recovery: choosing the new route, opening it, replaying the prefix (with
    /// the failed forward, which rides on the replay's last forward).
    pub choose_ms: f64,
    pub open_ms: f64,
    pub replay_ms: f64,
}

/// Where a repair spent its time, in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
struct RepairTimes {
    choose_ms: f64,
    open_ms: f64,
    replay_ms: f64,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A hop's peer id as text (`?` if the bytes are not a peer id).
pub(crate) fn peer_name(h: Option<&Hop>) -> String {
    h.and_then(|h| PeerId::from_bytes(&h.peer_id).ok())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into())
}

/// Whether an error is the hop turning the session away (power saving, busy, a per-token
/// deadline it cannot keep now, or a range it no longer serves) rather than failing it: a router bars a refusing peer until it announces
/// again, and counts a failure as a deadline miss.
pub fn is_refusal(e: &SessionError) -> bool {
    matches!(
        e,
        SessionError::Refused(w) if matches!(
            w.kind,
            ErrorKind::PowerSaving
                | ErrorKind::Busy
                | ErrorKind::Deadline
                | ErrorKind::WrongBlocks
                | ErrorKind::WrongModel
        )
    )
}

/// Tells `routing` which hop of `route` an error points at, and whether it refused or failed.
pub fn report_error(routing: &dyn Routing, model: &ModelDigest, route: &[Hop], e: &SessionError) {
    report_hop(routing, model, route.get(failed_hop(route, e)), e);
}

/// The hop to blame for `e`, from what this client sees: a hop that says its next hop failed is
/// taken at its word only if the next hop does not answer the client; when it does answer, the
/// hop that said so is the one replaced (it lied, or its own link is what failed).
async fn culprit(client: &SwarmClient, route: &[Hop], e: &SessionError) -> usize {
    let named = failed_hop(route, e);
    if let SessionError::Refused(w) = e
        && w.kind == ErrorKind::NextHop
        && named == w.hop as usize + 1
        && let Some(next) = route.get(named)
        && super::session::answers(client.network(), next).await
    {
        tracing::warn!(
            "hop {} says hop {named} failed, but {} answers: blaming hop {}",
            w.hop,
            peer_name(Some(next)),
            w.hop
        );
        return w.hop as usize;
    }
    named
}

/// Tells `routing` that `hop` refused or failed (per `e`).
fn report_hop(routing: &dyn Routing, model: &ModelDigest, hop: Option<&Hop>, e: &SessionError) {
    let Some(hop) = hop else {
        return;
    };
    if is_refusal(e) {
        routing.refused(model, hop);
    } else {
        routing.failed(model, hop);
    }
}

/// A swarm session with failover, as a [`Pipeline`].
pub struct ResilientSession<'a> {
    client: &'a SwarmClient,
    model_id: ModelDigest,
    n_layers: u32,
    routing: &'a dyn Routing,
    params: OpenParams,
    session: SwarmSession,
    backoff: Backoff,
    /// Failures repaired so far.
    pub failovers: Vec<FailoverEvent>,
    /// Timings of the sessions that were replaced.
    past_timings: Vec<ForwardTiming>,
    /// Whether this route's decode steps were reported to the router.
    reported: bool,
    spot: SpotChecks,
    referee: Option<SharedReferee>,
    /// What the spot checks found.
    pub spot_report: SpotReport,
    /// The check run, kept open between checks so each sends only what came since the last.
    checker: Option<Checker>,
    /// Time spent choosing the opening route (discovery and the routing policy), all attempts.
    pub route_ms: f64,
    /// When set, the last hop picks each token ([`Forward::draw`](sunswarm_protocol::Forward));
    /// this head checks the tokens on the spot-checked steps.
    picker_check: Option<SharedHead>,
    /// Whether a spot check walked the DHT again for replicas the view lacked.
    rewalked: bool,
}

/// A session through other replicas that re-runs the main session's inputs for spot checks.
struct Checker {
    route: Vec<Hop>,
    session: SwarmSession,
    /// History entries of the main session sent so far.
    sent: usize,
}

impl Checker {
    /// Whether it still checks `route`: same ranges, and nobody on it banned since.
    fn fits(&self, route: &[Hop], client: &SwarmClient, history: usize) -> bool {
        self.sent <= history
            && self.route.len() == route.len()
            && self
                .route
                .iter()
                .zip(route)
                .all(|(c, m)| c.blocks == m.blocks)
            && self.route.iter().all(|h| !client.is_banned(&h.peer_id))
    }
}

impl<'a> ResilientSession<'a> {
    /// Chooses a route and opens a session on it; a peer that refuses or cannot be reached is
    /// backed off and the route chosen again, up to [`MAX_FAILOVERS`] times.
    pub async fn open(
        client: &'a SwarmClient,
        model_id: ModelDigest,
        n_layers: u32,
        routing: &'a dyn Routing,
        params: OpenParams,
    ) -> Result<Self, SwarmError> {
        let mut backoff = Backoff::default();
        let mut attempts = 0;
        let mut stream_retries = 0;
        let mut route_ms = 0.0;
        let session = loop {
            let avoid = backoff.avoided(Instant::now());
            let t = Instant::now();
            let route = client
                .choose_route_with(&model_id, n_layers, routing, &avoid)
                .await?;
            route_ms += ms_since(t);
            if reuses(&route, &avoid) {
                tokio::time::sleep(reuse_delay(attempts)).await;
            }
            match SwarmSession::open_with(client.network(), model_id, route.clone(), params).await {
                Ok(s) => break s,
                // A live peer drops a new stream that arrives while its acceptor has not taken
                // the one before (libp2p-stream hands streams over one at a time): in a burst of
                // clients opening at once, half were dropped and the peer backed off for 60 s.
                // Such a drop is retried at once, a few times, before it counts as a failure.
                Err(e @ SessionError::Stream { .. }) if stream_retries < OPEN_STREAM_RETRIES => {
                    stream_retries += 1;
                    tracing::debug!("opening the session: {e}; trying again");
                    tokio::time::sleep(open_retry_delay(stream_retries)).await;
                }
                Err(e) if attempts < MAX_FAILOVERS => {
                    attempts += 1;
                    report_error(routing, &model_id, &route, &e);
                    let culprit = failed_hop(&route, &e);
                    tracing::warn!(
                        "opening the session failed at {} ({e}); choosing another route",
                        peer_name(route.get(culprit))
                    );
                    if let Some(h) = route.get(culprit) {
                        backoff.fail(&h.peer_id, Instant::now());
                    }
                }
                Err(e) => return Err(SwarmError::Open(e)),
            }
        };
        Ok(ResilientSession {
            client,
            model_id,
            n_layers,
            routing,
            params,
            session,
            backoff,
            failovers: Vec::new(),
            past_timings: Vec::new(),
            reported: false,
            spot: SpotChecks::off(),
            referee: None,
            spot_report: SpotReport::default(),
            picker_check: None,
            rewalked: false,
            checker: None,
            route_ms,
        })
    }

    /// Spot-checks this session's steps (see [`spot`]); `referee` gives the third opinion.
    pub fn with_spot_checks(mut self, spot: SpotChecks, referee: Option<SharedReferee>) -> Self {
        self.spot = spot;
        self.referee = referee;
        self.session.set_tapping(spot.fraction > 0.0);
        self
    }

    /// Lets the last hop pick the tokens (one LM head product for all the sessions of its pass
    /// instead of one per client and token); `head` checks them on the spot-checked steps: the
    /// hidden states come back with every token, so the last hop cannot tell which are checked.
    pub fn with_tokens_from_last_hop(mut self, head: SharedHead) -> Self {
        self.picker_check = Some(head);
        self
    }

    /// Bans the peer at `hop` of `route` for this client, when `e` proves it broke the protocol.
    fn ban_if_dishonest(&mut self, route: &[Hop], e: &SessionError) {
        if let SessionError::Dishonest { hop, reason } = e
            && let Some(h) = route.get(*hop)
        {
            self.ban(h, reason);
        }
    }

    fn ban(&mut self, h: &Hop, reason: &str) {
        if self.client.ban(&h.peer_id) {
            let name = peer_name(Some(h));
            tracing::warn!("banned {name}: {reason}");
            self.spot_report.banned.push(name);
        }
        self.backoff.fail(&h.peer_id, Instant::now());
    }

    /// Runs `input` through the route, and spot-checks the session when this step is drawn.
    async fn attempt(
        &mut self,
        input: &HiddenStates,
        draw: Option<Draw>,
    ) -> Result<Stepped, SessionError> {
        let step = self.session.next_step();
        let out = self
            .session
            .forward_with_draw(input, draw.map(wire_draw))
            .await?;
        self.checked(step, out, draw).await
    }

    /// A forward's output, once the spot check that may fall on its step has passed (and the
    /// token the last hop picked, when it is checked).
    async fn checked(
        &mut self,
        step: u32,
        out: Stepped,
        draw: Option<Draw>,
    ) -> Result<Stepped, SessionError> {
        let selected = self.spot.selects(step, rand::random::<f64>());
        let mut verdict = if selected {
            self.spot_check(step).await
        } else {
            Ok(())
        };
        if verdict.is_ok()
            && let (Some(token), Some(draw)) = (out.token, draw)
        {
            verdict = self.check_token(token, draw, &out.hidden, selected).await;
        }
        if let Err(e) = verdict {
            self.session.forget_last();
            return Err(e);
        }
        Ok(out)
    }

    /// A token the last hop picked: always inside the vocabulary; on a spot-checked step, the
    /// one this client's own head picks from the hidden states that came with it (or a near tie).
    async fn check_token(
        &mut self,
        token: u32,
        draw: Draw,
        hidden: &HiddenStates,
        recompute: bool,
    ) -> Result<(), SessionError> {
        let Some(head) = self.picker_check.clone() else {
            return Ok(());
        };
        let last = self.route().len().saturating_sub(1);
        let vocab = head.head().config().vocab_size;
        if token as usize >= vocab {
            return Err(SessionError::Dishonest {
                hop: last,
                reason: format!("picked token {token}, outside the vocabulary of {vocab}"),
            });
        }
        if !recompute {
            return Ok(());
        }
        self.spot_report.tokens_checked += 1;
        let logits = head
            .logits_last(hidden.clone())
            .await
            .map_err(|e| SessionError::Protocol(format!("checking a token: {e}")))?;
        if draw.agrees(&logits, token, self.spot.tolerance) {
            return Ok(());
        }
        self.spot_report.mismatches += 1;
        Err(SessionError::Dishonest {
            hop: last,
            reason: format!(
                "picked token {token} where the LM head on its own output picks {}",
                draw.pick(&logits)
            ),
        })
    }

    /// Checks everything the session's hops have output so far (up to step `step`) against a
    /// run of the same prefix through other replicas; a main-route hop found wrong is the error.
    async fn spot_check(&mut self, step: u32) -> Result<(), SessionError> {
        self.spot_report.checked += 1;
        self.spot_report.steps.push(step);
        let route = self.route().to_vec();
        let history = self.session.history.len();
        let mut checker = match self.checker.take() {
            Some(c) if c.fits(&route, self.client, history) => c,
            stale => {
                if let Some(c) = stale {
                    c.session.close().await;
                }
                let mut check_route =
                    self.client
                        .check_route(&self.model_id, self.n_layers, &route);
                if same_peers(&check_route, &route) > 0 && !self.rewalked {
                    // Discovery is eventually consistent: a view taken just after a start can
                    // lack a replica that the next walk finds. Once per session, look again
                    // before a hop is checked against itself.
                    self.rewalked = true;
                    if self
                        .client
                        .discover(&self.model_id, self.n_layers)
                        .await
                        .is_ok()
                    {
                        check_route =
                            self.client
                                .check_route(&self.model_id, self.n_layers, &route);
                    }
                }
                let alone = same_peers(&check_route, &route);
                if alone > 0 {
                    // Routine where a range has one replica (a small swarm): the report counts it.
                    tracing::debug!(
                        step,
                        alone,
                        "spot check: hops with no other replica known are checked against themselves"
                    );
                }
                self.spot_report.self_checked_hops += alone;
                match SwarmSession::open_with(
                    self.client.check_network(),
                    self.model_id,
                    check_route.clone(),
                    self.params,
                )
                .await
                {
                    Ok(mut session) => {
                        session.set_tapping(true);
                        Checker {
                            route: check_route,
                            session,
                            sent: 0,
                        }
                    }
                    Err(e) => {
                        tracing::warn!("spot check of step {step} could not open: {e}");
                        return Ok(());
                    }
                }
            }
        };
        // The steps as the main run took them, so each hop computes every row as it did there.
        let pending = self.session.history[checker.sent..].to_vec();
        for group in super::session::replay_forwards(&pending, crate::generate::PREFILL_CHUNK) {
            if let Err(e) = checker.session.forward_steps(&pending[group]).await {
                tracing::warn!("spot check of step {step} could not run: {e}");
                self.ban_if_dishonest(&checker.route, &e);
                checker.session.close().await;
                return Ok(());
            }
        }
        checker.sent = history;
        // Gathered only once the check run has its outputs (opening it may fail).
        let main = self.session.outputs_per_hop();
        let check = checker.session.outputs_per_hop();
        if main.len() != check.len()
            || main
                .iter()
                .zip(&check)
                .any(|(m, c)| m.n_tokens != c.n_tokens)
        {
            tracing::warn!("spot check of step {step}: the runs cover different positions");
            checker.session.close().await;
            return Ok(());
        }
        let check_route = checker.route.clone();
        self.checker = Some(checker);
        let tolerance = self.spot.tolerance;
        let Some(found) = spot::earliest_disagreement(&main, &check, tolerance) else {
            tracing::debug!(step, "spot check passed");
            return Ok(());
        };
        let (k, position) = (found.hop, found.position);
        self.spot_report.mismatches += 1;
        tracing::warn!(
            "spot check of step {step}: at position {position}, hop {k} ({}) and its check ({}) \
             differ by {:.3e}",
            peer_name(route.get(k)),
            peer_name(check_route.get(k)),
            found.distance
        );
        let Some(referee) = self.referee.clone() else {
            tracing::warn!("no referee to decide the mismatch; nobody is banned");
            return Ok(());
        };
        // Up to `position`, hop k's inputs were the same on both runs: the client runs blocks k
        // on the check's inputs and compares both sides there.
        // Whatever it decides, the check run goes: one of its peers may be banned, and the main
        // session may be repaired.
        if let Some(c) = self.checker.take() {
            c.session.close().await;
        }
        let input = if k == 0 {
            spot::concat(&self.session.history)
        } else {
            check[k - 1].clone()
        };
        let blocks = route[k].blocks;
        let history = &self.session.history;
        let forwards: Vec<spot::Forward> =
            super::session::replay_forwards(history, crate::generate::PREFILL_CHUNK)
                .into_iter()
                .map(|g| spot::Forward {
                    rows: history[g.clone()].iter().map(|h| h.n_tokens).sum(),
                    stepwise: g.len() > 1,
                })
                .collect();
        let reference = tokio::task::spawn_blocking(move || referee.run(blocks, &input, &forwards))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let reference = match reference {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("the client could not run blocks {blocks} itself: {e}");
                return Ok(());
            }
        };
        let rows = position + 1;
        let main_d = spot::head_distance(&main[k], &reference, rows);
        let check_d = spot::head_distance(&check[k], &reference, rows);
        let why = |d: f32| {
            format!(
                "spot check of step {step}: its output of blocks {blocks} at position {position} \
                 differs from the client's own run by {d:.3e}"
            )
        };
        match spot::verdict(main_d, check_d, tolerance) {
            Verdict::Main => {
                self.ban(&route[k], &why(main_d));
                Err(SessionError::Dishonest {
                    hop: k,
                    reason: why(main_d),
                })
            }
            Verdict::Check => {
                self.ban(&check_route[k], &why(check_d));
                Ok(())
            }
            Verdict::Both => {
                self.ban(&check_route[k], &why(check_d));
                self.ban(&route[k], &why(main_d));
                Err(SessionError::Dishonest {
                    hop: k,
                    reason: why(main_d),
                })
            }
            Verdict::Neither => Ok(()),
        }
    }
}

impl<'a> ResilientSession<'a> {
    /// The route in use now.
    pub fn route(&self) -> &[Hop] {
        self.session.route()
    }

    /// Every forward's timing, of the replaced sessions too, in order.
    pub fn timings(&self) -> Vec<ForwardTiming> {
        let mut all = self.past_timings.clone();
        all.extend(self.session.timings.iter().cloned());
        all
    }

    /// Sends `input` through the route, repairing the route as often as needed.
    pub async fn forward_hidden(
        &mut self,
        input: &HiddenStates,
    ) -> Result<HiddenStates, SwarmError> {
        Ok(self.forward_with_draw(input, None).await?.hidden)
    }

    /// [`forward_hidden`](Self::forward_hidden), with the last hop picking the next token with
    /// `draw` when this session lets it ([`Self::with_tokens_from_last_hop`]).
    pub async fn forward_with_draw(
        &mut self,
        input: &HiddenStates,
        draw: Option<Draw>,
    ) -> Result<Stepped, SwarmError> {
        let draw = if self.picker_check.is_some() {
            draw
        } else {
            None
        };
        let mut failed_at: Option<(Instant, usize, String, String)> = None;
        let mut replayed = 0;
        let mut times = RepairTimes::default();
        let mut retries = 0;
        // The output of `input` that a repair's replay brought along.
        let mut repaired: Option<(u32, Stepped)> = None;
        loop {
            let result = match repaired.take() {
                Some((step, out)) => self.checked(step, out, draw).await,
                None => self.attempt(input, draw).await,
            };
            let err = match result {
                Ok(out) => {
                    self.report_steps(false);
                    if let Some((t0, hop, peer, reason)) = failed_at {
                        let ev = FailoverEvent {
                            hop,
                            peer,
                            reason,
                            replayed_tokens: replayed,
                            kept_rows: self.replay_kept_rows(),
                            recovery_ms: ms_since(t0),
                            choose_ms: times.choose_ms,
                            open_ms: times.open_ms,
                            replay_ms: times.replay_ms,
                        };
                        tracing::warn!(
                            "recovered in {:.0} ms (replayed {} tokens; kept by each hop: {:?})",
                            ev.recovery_ms,
                            ev.replayed_tokens,
                            ev.kept_rows
                        );
                        self.failovers.push(ev);
                    }
                    return Ok(out);
                }
                Err(e) => e,
            };
            // Repairs that succeeded before, and repaired routes that failed again on this very
            // forward, both count: a generation never loops on a swarm that keeps failing.
            retries += 1;
            if self.failovers.len() + retries > MAX_FAILOVERS {
                return Err(SwarmError::TooManyFailovers {
                    attempts: MAX_FAILOVERS,
                    last: err,
                });
            }
            let route = self.route().to_vec();
            let hop = culprit(self.client, &route, &err).await;
            let peer = peer_name(route.get(hop));
            self.ban_if_dishonest(&route, &err);
            report_hop(self.routing, &self.model_id, route.get(hop), &err);
            tracing::warn!("hop {hop} ({peer}) failed: {err}; repairing the route");
            if failed_at.is_none() {
                failed_at = Some((Instant::now(), hop, peer, err.to_string()));
            }
            let (tokens, out) = self.repair(hop, &mut times, input, draw).await?;
            replayed = tokens;
            repaired = Some(out);
        }
    }

    /// Per hop of the route, the rows of its replay forwards it answered from what it kept.
    fn replay_kept_rows(&self) -> Vec<u64> {
        let mut rows = vec![0u64; self.route().len()];
        for t in self.session.timings.iter().filter(|t| t.replay) {
            for h in &t.hops {
                if let Some(r) = rows.get_mut(h.hop as usize) {
                    *r += u64::from(h.kept_rows);
                }
            }
        }
        rows
    }

    /// Tells the router what this route's decode steps took, once per route: after
    /// [`OBSERVE_AFTER_STEPS`] of them, or at the close (`closing`) of a shorter session.
    fn report_steps(&mut self, closing: bool) {
        if self.reported {
            return;
        }
        let steps: Vec<ForwardTiming> = self
            .session
            .timings
            .iter()
            .filter(|t| t.n_tokens == 1 && !t.replay)
            .take(OBSERVE_AFTER_STEPS)
            .cloned()
            .collect();
        if steps.len() >= OBSERVE_AFTER_STEPS || (closing && !steps.is_empty()) {
            self.routing
                .observe(&self.model_id, self.session.route(), &steps);
            self.reported = true;
        }
    }

    /// Replaces hop `failed`, rebuilds the new route's state and runs `input` (the forward that
    /// failed) on it; returns the tokens replayed and the step and output of `input`.
    async fn repair(
        &mut self,
        failed: usize,
        times: &mut RepairTimes,
        input: &HiddenStates,
        draw: Option<Draw>,
    ) -> Result<(usize, (u32, Stepped)), SwarmError> {
        let mut failed = failed;
        let mut broken = self.session.route().to_vec();
        let mut last_error = None;
        for attempt in 1..=MAX_FAILOVERS {
            if let Some(h) = broken.get(failed) {
                self.backoff.fail(&h.peer_id, Instant::now());
            }
            let avoid = self.backoff.avoided(Instant::now());
            let t = Instant::now();
            let choose = || {
                self.client.choose_replacement(
                    &self.model_id,
                    self.n_layers,
                    self.routing,
                    &broken,
                    failed,
                    &avoid,
                )
            };
            let mut route = choose()
                .await
                .map_err(|e| SwarmError::NoReplacement(Box::new(e)))?;
            times.choose_ms += ms_since(t);
            if reuses(&route, &avoid) {
                tokio::time::sleep(reuse_delay(attempt)).await;
                // Discovery is eventually consistent: a fresh client's walk (in CI, under load)
                // missed the second replica of a range, and the hop just blamed was taken back
                // and blamed again. After the pause, a walk that finds a route clear of the
                // avoided peers wins.
                let t = Instant::now();
                if let Ok(again) = choose().await
                    && !reuses(&again, &avoid)
                {
                    route = again;
                }
                times.choose_ms += ms_since(t);
            }
            let t = Instant::now();
            // The same session id: the hops that survive keep the session and take it up.
            let opened = SwarmSession::resume(
                self.client.network(),
                self.model_id,
                route.clone(),
                self.params,
                self.session.id(),
            )
            .await;
            times.open_ms += ms_since(t);
            let t = Instant::now();
            let outcome = match opened {
                Ok(mut next) => {
                    next.set_tapping(self.spot.fraction > 0.0);
                    next.replay_then(&self.session.history, input, draw.map(wire_draw))
                        .await
                        .map(|out| (next, out))
                }
                Err(e) => Err(e),
            };
            times.replay_ms += ms_since(t);
            match outcome {
                Ok((next, out)) => {
                    let tokens = self.session.history.iter().map(|h| h.n_tokens).sum();
                    let old = std::mem::replace(&mut self.session, next);
                    self.past_timings.extend(old.timings);
                    self.reported = false;
                    tracing::warn!("new route: {}", describe_route(self.route()));
                    return Ok((tokens, out));
                }
                Err(e) => {
                    failed = culprit(self.client, &route, &e).await;
                    report_hop(self.routing, &self.model_id, route.get(failed), &e);
                    self.ban_if_dishonest(&route, &e);
                    tracing::warn!("the repaired route failed at hop {failed}: {e}");
                    broken = route;
                    last_error = Some(e);
                }
            }
        }
        Err(SwarmError::TooManyFailovers {
            attempts: MAX_FAILOVERS,
            last: last_error
                .unwrap_or_else(|| SessionError::Protocol("no repair was attempted".into())),
        })
    }

    /// Closes the session on every hop.
    pub async fn close(mut self) {
        if let Some(c) = self.checker.take() {
            c.session.close().await;
        }
        self.report_steps(true);
        self.session.close().await;
    }
}

/// `0..10 @ peer -> 10..20 @ peer -> ...`
pub fn describe_route(route: &[Hop]) -> String {
    route
        .iter()
        .map(|h| {
            format!(
                "{}..{} @ {}",
                h.blocks.start,
                h.blocks.end,
                peer_name(Some(h))
            )
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

impl Pipeline for ResilientSession<'_> {
    async fn forward(&mut self, input: HiddenStates) -> Result<HiddenStates, PipelineError> {
        self.forward_hidden(&input)
            .await
            .map_err(|e| PipelineError::Network(format!("{e:#}")))
    }

    async fn forward_drawing(
        &mut self,
        input: HiddenStates,
        draw: Draw,
    ) -> Result<Stepped, PipelineError> {
        self.forward_with_draw(&input, Some(draw))
            .await
            .map_err(|e| PipelineError::Network(format!("{e:#}")))
    }
}

/// A draw as the wire carries it.
fn wire_draw(d: Draw) -> TokenDraw {
    TokenDraw {
        temperature: d.temperature,
        top_p: d.top_p,
        state: d.state,
    }
}

/// Hops of a check route run by the same peer as the route's (no other replica was known): a
/// check there only catches a peer that is not deterministic.
fn same_peers(check: &[Hop], route: &[Hop]) -> usize {
    check
        .iter()
        .zip(route)
        .filter(|(c, r)| c.peer_id == r.peer_id)
        .count()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rand::RngCore;
    use sunswarm_protocol::{Announcement, BlockRange, WireError};

    use super::*;

    #[test]
    fn a_route_that_takes_back_a_failed_peer_waits_longer_each_time() {
        let hop = |id: u8| Hop {
            peer_id: vec![id; 4],
            addrs: Vec::new(),
            blocks: BlockRange { start: 0, end: 1 },
        };
        let avoid = vec![vec![2u8; 4]];
        assert!(reuses(&[hop(1), hop(2)], &avoid));
        assert!(!reuses(&[hop(1), hop(3)], &avoid));
        let waits: Vec<Duration> = (1..=MAX_FAILOVERS).map(reuse_delay).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(reuse_delay(1), Duration::from_millis(250));
        assert_eq!(reuse_delay(MAX_FAILOVERS), Duration::from_secs(2));
        // All attempts together leave a replacement several seconds to announce itself.
        assert!(waits.iter().sum::<Duration>() >= Duration::from_secs(8));
    }

    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, u8)>>,
    }

    impl Routing for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn choose(
            &self,
            _: &[Announcement],
            _: u32,
            _: &[usize],
            _: &mut dyn RngCore,
        ) -> Option<usize> {
            None
        }
        fn refused(&self, _: &ModelDigest, hop: &Hop) {
            self.seen
                .lock()
                .unwrap()
                .push(("refused".into(), hop.peer_id[0]));
        }
        fn failed(&self, _: &ModelDigest, hop: &Hop) {
            self.seen
                .lock()
                .unwrap()
                .push(("failed".into(), hop.peer_id[0]));
        }
    }

    fn wire(kind: ErrorKind, hop: u16) -> SessionError {
        SessionError::Refused(WireError {
            kind,
            hop,
            message: String::new(),
        })
    }

    #[test]
    fn errors_reach_the_router_as_refusals_or_failures_of_the_right_hop() {
        let route: Vec<Hop> = (0..3u8)
            .map(|i| Hop {
                peer_id: vec![i; 4],
                addrs: vec![],
                blocks: BlockRange {
                    start: 10 * u32::from(i),
                    end: 10 * u32::from(i) + 10,
                },
            })
            .collect();
        let r = Recorder::default();
        let m = [0; 32];
        report_error(&r, &m, &route, &wire(ErrorKind::PowerSaving, 1));
        report_error(&r, &m, &route, &wire(ErrorKind::Busy, 2));
        report_error(&r, &m, &route, &wire(ErrorKind::WrongBlocks, 0));
        // Hop 0 says its next hop failed: hop 1 is to blame.
        report_error(&r, &m, &route, &wire(ErrorKind::NextHop, 0));
        report_error(&r, &m, &route, &wire(ErrorKind::Compute, 2));
        assert_eq!(
            *r.seen.lock().unwrap(),
            vec![
                ("refused".to_string(), 1),
                ("refused".to_string(), 2),
                ("refused".to_string(), 0),
                ("failed".to_string(), 1),
                ("failed".to_string(), 2),
            ]
        );
        assert!(is_refusal(&wire(ErrorKind::PowerSaving, 0)));
        assert!(is_refusal(&wire(ErrorKind::Deadline, 0)));
        assert!(!is_refusal(&wire(ErrorKind::Timeout, 0)));
        assert!(!is_refusal(&SessionError::Protocol("x".into())));
    }
}
