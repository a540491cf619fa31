//! Session messages on activation streams ([`crate::ACTIVATIONS_PROTOCOL`]).
//!
//! The client opens a stream to the first hop and sends [`Request::Open`] with the whole route
//! (source routing) and its own peer id; each hop checks that the route names it with its own
//! block range, opens a stream to the next hop and passes the open on; the last hop answers
//! [`Response::Opened`], which travels back. The client then opens a second stream, to the last
//! hop, and sends [`Request::Attach`]: the last hop sends its outputs there. Every
//! [`Request::Forward`] runs through the hops in order, each adding its signed [`Receipt`]
//! (and, when asked, a copy of its output for the client's spot checks), and the last
//! hop's output goes straight to the client as [`Response::Hidden`]: a token crosses each link
//! once, instead of going down the route and back up it. Refusals and failures still travel back
//! up the route (a hop relays its next hop's error), so the client hears why a session ended
//! from the first hop's stream.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ModelDigest;
use crate::blocks::BlockRange;
use crate::codec::{CodecError, Validate, check_len, check_text};
use crate::limits::{
    MAX_ADDR_LEN, MAX_ADDRS, MAX_PEER_ID_LEN, MAX_ROUTE_HOPS, MAX_SESSION_TOKENS,
    MAX_SIGNATURE_LEN, MAX_TEXT_LEN,
};
use crate::tensor::{DType, TensorFrame};

/// A random session id chosen by the client; it names the session's KV caches on every hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex(&self.0))
    }
}

/// One hop of a route: a peer and the blocks it must run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    pub addrs: Vec<String>,
    pub blocks: BlockRange,
}

/// Opens a session on hop `hop` of `route`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    pub session: SessionId,
    pub model_id: ModelDigest,
    pub route: Vec<Hop>,
    /// Index into `route` of the peer receiving this message.
    pub hop: u16,
    /// Element type of hidden states between hops.
    pub dtype: DType,
    /// Most tokens the session will hold; the node refuses more than it can cache.
    pub max_tokens: u32,
    /// Peer id of the client: only this peer may attach to the last hop for the outputs.
    #[serde(with = "serde_bytes")]
    pub client: Vec<u8>,
    /// The client's limit on one token's time through the whole route, in microseconds; 0 for
    /// none. Each hop holds a share in proportion to its blocks: a hop that cannot meet its share
    /// beside the sessions it serves refuses the open with [`ErrorKind::Deadline`], and it
    /// schedules the session's steps to meet it (DFTSP).
    pub token_deadline_us: u32,
    /// The client is rebuilding this session on a repaired route after a hop failed: a hop that
    /// still keeps the session from the broken route (same id, same client) takes it up, with
    /// its cache and the outputs it kept, instead of starting empty; the replay that follows
    /// then costs it nothing. A hop that keeps nothing opens the session fresh.
    pub resume: bool,
}

/// Hidden states for the next positions of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub session: SessionId,
    /// Sequence number of this forward within the session, echoed in the answer.
    pub step: u32,
    /// Position of the first token in `hidden`, at most the tokens the hop's cache holds: a gap
    /// (a lost message) is refused. Rows at positions the hop already holds (a replay after a
    /// failover) are answered from the outputs it kept, as long as their inputs are the ones it
    /// computed them from; from the first row whose input differs, the hop drops what it holds
    /// and computes again.
    pub position: u32,
    /// `[tokens, hidden_size]`.
    pub hidden: TensorFrame,
    /// The tokens are consecutive decode steps sent at once (a replay after failover): every hop
    /// computes each row exactly as a one-token forward would, so the cache it builds is bit
    /// for bit the one the original steps built. Without it, several tokens are a prompt chunk,
    /// whose products run in another order and round differently.
    pub stepwise: bool,
    /// The receipts of the hops this forward has passed, in route order.
    pub receipts: Vec<Receipt>,
    /// Asks every hop but the last to copy its output into `taps` (a spot check of this step).
    pub tap: bool,
    /// The outputs of the hops passed so far, when `tap` is set; each one's checksum is the
    /// `output` of that hop's receipt.
    pub taps: Vec<TensorFrame>,
    /// Asks the last hop to apply the final norm and the LM head to the last row of its output
    /// and to pick the next token with this draw, answering it beside the hidden states
    /// ([`Response::Hidden::token`]). A last hop that holds no head answers none, and the client
    /// picks the token itself.
    pub draw: Option<TokenDraw>,
}

/// How the last hop picks a token (see [`Forward::draw`]): the same draw picks the same token
/// from the same logits on any peer, so a route repaired mid-generation continues the same text.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenDraw {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus truncation, in (0, 1].
    pub top_p: f32,
    /// The client's generator state for this token.
    pub state: u64,
}

/// What one hop vouches for on one forward: which route it was opened with, the checksum of the
/// frame it received and of the frame it passed on, and its timing, signed with its peer key.
/// The client checks the chain (each hop's input is the previous hop's output, the first input
/// is what the client sent, the last output is what it received) and that each receipt is signed
/// by the peer it chose for that hop: a hop that passes the session to another peer, or answers
/// for a hop it skipped, or forges timings, is caught by the first receipt, and blame rests on
/// signatures rather than on anyone's word.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub timing: HopTiming,
    /// The peer id of the signer.
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
    /// [`route_digest`] of the route this hop was opened with.
    pub route: [u8; 32],
    /// Checksum ([`TensorFrame::checksum`]) of the hidden states this hop received.
    pub input: [u8; 32],
    /// Checksum of the hidden states this hop passed on.
    pub output: [u8; 32],
    /// The token this hop picked ([`Forward::draw`]): the last hop's, when it was asked to pick.
    pub token: Option<u32>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Receipt {
    /// The bytes a receipt's signature covers: everything in it, bound to the session and step.
    pub fn signing_bytes(&self, session: &SessionId, step: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(200);
        b.extend_from_slice(b"sunswarm/receipt/3");
        b.extend_from_slice(&session.0);
        b.extend_from_slice(&step.to_le_bytes());
        b.extend_from_slice(&self.timing.hop.to_le_bytes());
        b.extend_from_slice(&self.timing.compute_us.to_le_bytes());
        b.extend_from_slice(&self.timing.total_us.to_le_bytes());
        b.extend_from_slice(&self.timing.kept_rows.to_le_bytes());
        b.extend_from_slice(&(self.signer.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.signer);
        b.extend_from_slice(&self.route);
        b.extend_from_slice(&self.input);
        b.extend_from_slice(&self.output);
        match self.token {
            Some(t) => {
                b.push(1);
                b.extend_from_slice(&t.to_le_bytes());
            }
            None => b.push(0),
        }
        b
    }
}

/// blake3 of a route's hops (peer, addresses, blocks), as receipts name it.
pub fn route_digest(route: &[Hop]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"sunswarm/route/1");
    h.update(&(route.len() as u32).to_le_bytes());
    for hop in route {
        h.update(&(hop.peer_id.len() as u32).to_le_bytes());
        h.update(&hop.peer_id);
        h.update(&(hop.addrs.len() as u32).to_le_bytes());
        for a in &hop.addrs {
            h.update(&(a.len() as u32).to_le_bytes());
            h.update(a.as_bytes());
        }
        h.update(&hop.blocks.start.to_le_bytes());
        h.update(&hop.blocks.end.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// Time one hop spent on one forward, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopTiming {
    pub hop: u16,
    /// Running the hop's blocks.
    pub compute_us: u32,
    /// From receiving the forward to passing its output on (to the next hop, or from the last
    /// hop to the client), pacing included.
    pub total_us: u32,
    /// Rows of the forward the hop answered from outputs it kept (a replay it had already
    /// computed), instead of running its blocks.
    pub kept_rows: u32,
}

/// Messages sent towards the end of the route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Open(OpenSession),
    /// Sent by the client on its own stream to the last hop of an opened session: the last hop
    /// answers [`Response::Opened`] and sends every output on this stream.
    Attach {
        session: SessionId,
    },
    Forward(Forward),
    Close {
        session: SessionId,
    },
}

/// Why a hop refused or failed; every refusal names its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The message broke a rule of the protocol (shape, length, order).
    BadRequest,
    VersionMismatch,
    /// The route names a model id this node does not serve.
    WrongModel,
    /// The route gives this node blocks other than the ones it serves.
    WrongBlocks,
    UnknownSession,
    /// The node is at its session limit.
    Busy,
    /// The node's battery is low; it takes no new sessions until it recovers.
    PowerSaving,
    /// The next hop could not be reached or failed.
    NextHop,
    /// Running the blocks failed.
    Compute,
    Internal,
    /// The session sent nothing for longer than the node's idle limit.
    Timeout,
    /// The node cannot meet the session's per-token deadline.
    Deadline,
}

/// An error answer. `hop` is the index of the hop that produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub hop: u16,
    pub message: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hop {} refused ({:?}): {}",
            self.hop, self.kind, self.message
        )
    }
}

/// Messages sent back towards the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Opened {
        session: SessionId,
    },
    Hidden {
        session: SessionId,
        step: u32,
        hidden: TensorFrame,
        /// One receipt per hop of the route, in order.
        receipts: Vec<Receipt>,
        /// The outputs of every hop but the last, when the forward asked for them.
        taps: Vec<TensorFrame>,
        /// The token the last hop picked from the last row, when the forward asked for a draw
        /// and the hop holds the LM head.
        token: Option<u32>,
    },
    Error(WireError),
    Closed {
        session: SessionId,
    },
}

fn validate_hop(h: &Hop) -> Result<(), CodecError> {
    if h.peer_id.is_empty() {
        return Err(CodecError::Field {
            field: "route[].peer_id",
            reason: "empty".into(),
        });
    }
    check_len("route[].peer_id", h.peer_id.len(), MAX_PEER_ID_LEN)?;
    check_len("route[].addrs", h.addrs.len(), MAX_ADDRS)?;
    for a in &h.addrs {
        check_len("route[].addrs[]", a.len(), MAX_ADDR_LEN)?;
    }
    h.blocks.validate()?;
    Ok(())
}

impl Validate for OpenSession {
    fn validate(&self) -> Result<(), CodecError> {
        if self.route.is_empty() {
            return Err(CodecError::Field {
                field: "route",
                reason: "empty".into(),
            });
        }
        check_len("route", self.route.len(), MAX_ROUTE_HOPS)?;
        if self.hop as usize >= self.route.len() {
            return Err(CodecError::Field {
                field: "hop",
                reason: format!(
                    "index {} outside a route of {} hops",
                    self.hop,
                    self.route.len()
                ),
            });
        }
        for h in &self.route {
            validate_hop(h)?;
        }
        for (i, w) in self.route.windows(2).enumerate() {
            if w[0].blocks.end != w[1].blocks.start {
                return Err(CodecError::Field {
                    field: "route",
                    reason: format!(
                        "hop {i} ends at block {} but hop {} starts at {}",
                        w[0].blocks.end,
                        i + 1,
                        w[1].blocks.start
                    ),
                });
            }
        }
        if self.client.is_empty() {
            return Err(CodecError::Field {
                field: "client",
                reason: "empty".into(),
            });
        }
        check_len("client", self.client.len(), MAX_PEER_ID_LEN)?;
        if self.max_tokens == 0 || self.max_tokens > MAX_SESSION_TOKENS {
            return Err(CodecError::Field {
                field: "max_tokens",
                reason: format!("{} is outside 1..={MAX_SESSION_TOKENS}", self.max_tokens),
            });
        }
        Ok(())
    }
}

impl Validate for TokenDraw {
    fn validate(&self) -> Result<(), CodecError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(CodecError::Field {
                field: "draw.temperature",
                reason: format!("{} is not >= 0", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(CodecError::Field {
                field: "draw.top_p",
                reason: format!("{} is not in (0, 1]", self.top_p),
            });
        }
        Ok(())
    }
}

fn validate_receipts(receipts: &[Receipt]) -> Result<(), CodecError> {
    check_len("receipts", receipts.len(), MAX_ROUTE_HOPS)?;
    for r in receipts {
        check_len("receipts[].signer", r.signer.len(), MAX_PEER_ID_LEN)?;
        check_len("receipts[].signature", r.signature.len(), MAX_SIGNATURE_LEN)?;
    }
    Ok(())
}

fn validate_taps(taps: &[TensorFrame]) -> Result<(), CodecError> {
    check_len("taps", taps.len(), MAX_ROUTE_HOPS)?;
    for t in taps {
        t.validate()?;
    }
    Ok(())
}

impl Validate for Request {
    fn validate(&self) -> Result<(), CodecError> {
        match self {
            Request::Open(o) => o.validate(),
            Request::Forward(f) => {
                f.hidden.validate()?;
                if f.hidden.shape.len() != 2 || f.hidden.shape[0] == 0 {
                    return Err(CodecError::Field {
                        field: "hidden",
                        reason: format!(
                            "shape {:?} is not [tokens > 0, hidden_size]",
                            f.hidden.shape
                        ),
                    });
                }
                validate_receipts(&f.receipts)?;
                validate_taps(&f.taps)?;
                match &f.draw {
                    Some(d) => d.validate(),
                    None => Ok(()),
                }
            }
            Request::Attach { .. } | Request::Close { .. } => Ok(()),
        }
    }
}

impl Validate for Response {
    fn validate(&self) -> Result<(), CodecError> {
        match self {
            Response::Hidden {
                hidden,
                receipts,
                taps,
                ..
            } => {
                hidden.validate()?;
                validate_receipts(receipts)?;
                validate_taps(taps)
            }
            Response::Error(e) => check_text("message", &e.message, MAX_TEXT_LEN),
            Response::Opened { .. } | Response::Closed { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    pub(crate) fn route(n: u32) -> Vec<Hop> {
        (0..n)
            .map(|i| Hop {
                peer_id: vec![i as u8 + 1; 38],
                addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)],
                blocks: BlockRange {
                    start: i * 10,
                    end: i * 10 + 10,
                },
            })
            .collect()
    }

    pub(crate) fn open() -> OpenSession {
        OpenSession {
            session: SessionId([7; 16]),
            model_id: [3; 32],
            route: route(3),
            hop: 1,
            dtype: DType::F32,
            max_tokens: 2048,
            client: vec![9; 38],
            token_deadline_us: 0,
            resume: true,
        }
    }

    pub(crate) fn forward() -> Forward {
        Forward {
            session: SessionId([7; 16]),
            step: 4,
            position: 12,
            hidden: TensorFrame::from_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DType::F32)
                .unwrap(),
            receipts: vec![receipt(0)],
            stepwise: false,
            tap: true,
            taps: vec![TensorFrame::from_f32(&[1, 3], &[1.0, 2.0, 3.0], DType::F32).unwrap()],
            draw: Some(TokenDraw {
                temperature: 0.7,
                top_p: 0.9,
                state: u64::MAX - 3,
            }),
        }
    }

    pub(crate) fn receipt(hop: u16) -> Receipt {
        Receipt {
            timing: HopTiming {
                hop,
                compute_us: 10,
                total_us: 12,
                kept_rows: 1,
            },
            signer: vec![1; 38],
            route: route_digest(&route(3)),
            input: [4; 32],
            output: [5; 32],
            token: None,
            signature: vec![6; 64],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let reqs = vec![
            Request::Open(open()),
            Request::Forward(forward()),
            Request::Attach {
                session: SessionId([2; 16]),
            },
            Request::Close {
                session: SessionId([1; 16]),
            },
        ];
        for r in reqs {
            assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
        let resps = vec![
            Response::Opened {
                session: SessionId([1; 16]),
            },
            Response::Hidden {
                session: SessionId([1; 16]),
                step: 9,
                hidden: forward().hidden,
                receipts: vec![receipt(0), receipt(1)],
                taps: Vec::new(),
                token: Some(49151),
            },
            Response::Error(WireError {
                kind: ErrorKind::PowerSaving,
                hop: 2,
                message: "battery at 12 %".into(),
            }),
            Response::Closed {
                session: SessionId([1; 16]),
            },
        ];
        for r in resps {
            assert_eq!(decode::<Response>(&encode(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn invalid_opens_are_refused_by_name() {
        type Case = (&'static str, Box<dyn Fn(&mut OpenSession)>);
        let cases: Vec<Case> = vec![
            ("route", Box::new(|o| o.route.clear())),
            (
                "route",
                Box::new(|o| o.route = route(MAX_ROUTE_HOPS as u32 + 1)),
            ),
            ("hop", Box::new(|o| o.hop = 3)),
            ("route[].peer_id", Box::new(|o| o.route[0].peer_id.clear())),
            (
                "route[].peer_id",
                Box::new(|o| o.route[0].peer_id = vec![0; MAX_PEER_ID_LEN + 1]),
            ),
            (
                "route[].addrs",
                Box::new(|o| o.route[1].addrs = vec![String::new(); MAX_ADDRS + 1]),
            ),
            (
                "route[].addrs[]",
                Box::new(|o| o.route[1].addrs = vec!["a".repeat(MAX_ADDR_LEN + 1)]),
            ),
            (
                "empty",
                Box::new(|o| o.route[2].blocks = BlockRange { start: 20, end: 20 }),
            ),
            (
                "hop 0 ends at block 10 but hop 1 starts at 11",
                Box::new(|o| o.route[1].blocks.start = 11),
            ),
            ("max_tokens", Box::new(|o| o.max_tokens = 0)),
            ("client", Box::new(|o| o.client.clear())),
            (
                "client",
                Box::new(|o| o.client = vec![1; MAX_PEER_ID_LEN + 1]),
            ),
            (
                "max_tokens",
                Box::new(|o| o.max_tokens = MAX_SESSION_TOKENS + 1),
            ),
        ];
        for (needle, mutate) in cases {
            let mut o = open();
            mutate(&mut o);
            let err = decode::<Request>(&encode(&Request::Open(o)).unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn invalid_forwards_are_refused() {
        let mut f = forward();
        f.hidden.data[0] ^= 0xff;
        assert!(
            decode::<Request>(&encode(&Request::Forward(f)).unwrap())
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        let mut f = forward();
        f.hidden = TensorFrame::from_f32(&[6], &[0.0; 6], DType::F32).unwrap();
        assert!(
            decode::<Request>(&encode(&Request::Forward(f)).unwrap())
                .unwrap_err()
                .to_string()
                .contains("hidden")
        );
        let mut f = forward();
        f.hidden = TensorFrame::from_f32(&[0, 6], &[], DType::F32).unwrap();
        assert!(decode::<Request>(&encode(&Request::Forward(f)).unwrap()).is_err());
        let mut f = forward();
        f.receipts = vec![receipt(0); MAX_ROUTE_HOPS + 1];
        assert!(
            decode::<Request>(&encode(&Request::Forward(f)).unwrap())
                .unwrap_err()
                .to_string()
                .contains("receipts")
        );
        let mut f = forward();
        f.receipts[0].signature = vec![0; MAX_SIGNATURE_LEN + 1];
        assert!(
            decode::<Request>(&encode(&Request::Forward(f)).unwrap())
                .unwrap_err()
                .to_string()
                .contains("receipts[].signature")
        );
        let mut f = forward();
        f.taps[0].data[0] ^= 1;
        assert!(
            decode::<Request>(&encode(&Request::Forward(f)).unwrap())
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        for (temperature, top_p, field) in [
            (-0.5, 1.0, "draw.temperature"),
            (f32::NAN, 1.0, "draw.temperature"),
            (f32::INFINITY, 1.0, "draw.temperature"),
            (1.0, 0.0, "draw.top_p"),
            (1.0, 1.01, "draw.top_p"),
            (1.0, f32::NAN, "draw.top_p"),
        ] {
            let mut f = forward();
            f.draw = Some(TokenDraw {
                temperature,
                top_p,
                state: 1,
            });
            let e = decode::<Request>(&encode(&Request::Forward(f)).unwrap()).unwrap_err();
            assert!(e.to_string().contains(field), "{temperature} {top_p}: {e}");
        }
    }

    #[test]
    fn receipts_sign_every_field_and_routes_digest_every_hop() {
        let r = receipt(1);
        let base = r.signing_bytes(&SessionId([7; 16]), 3);
        assert_ne!(base, r.signing_bytes(&SessionId([8; 16]), 3));
        assert_ne!(base, r.signing_bytes(&SessionId([7; 16]), 4));
        type Change = Box<dyn Fn(&mut Receipt)>;
        let changes: Vec<Change> = vec![
            Box::new(|r| r.timing.hop = 2),
            Box::new(|r| r.timing.compute_us += 1),
            Box::new(|r| r.timing.total_us += 1),
            Box::new(|r| r.signer[0] ^= 1),
            Box::new(|r| r.route[0] ^= 1),
            Box::new(|r| r.input[0] ^= 1),
            Box::new(|r| r.output[0] ^= 1),
        ];
        for change in changes {
            let mut c = r.clone();
            change(&mut c);
            assert_ne!(base, c.signing_bytes(&SessionId([7; 16]), 3), "{c:?}");
        }
        let a = route(3);
        let mut b = a.clone();
        b[2].addrs[0].push('1');
        assert_ne!(route_digest(&a), route_digest(&b));
        let mut b = a.clone();
        b[1].peer_id[0] ^= 1;
        assert_ne!(route_digest(&a), route_digest(&b));
        assert_ne!(route_digest(&a), route_digest(&a[..2]));
    }

    #[test]
    fn long_error_text_is_refused() {
        let r = Response::Error(WireError {
            kind: ErrorKind::Internal,
            hop: 0,
            message: "x".repeat(MAX_TEXT_LEN + 1),
        });
        assert!(decode::<Response>(&encode(&r).unwrap()).is_err());
    }

    #[test]
    fn session_id_displays_as_hex() {
        assert_eq!(SessionId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}
