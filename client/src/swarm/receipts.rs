//! Checking a forward's receipts: pure logic, no I/O.
//!
//! Every hop signs a [`Receipt`] of each forward (its route, the checksums of what it received
//! and passed on, its timing). The client holds the route it chose, the checksum of what it sent
//! and of what came back, so it can check the whole chain on every step and name the hop to
//! blame from signatures alone:
//!
//! - a receipt signed by a peer other than the one chosen for its hop, or by the right peer but
//!   naming another route: the hop before it passed the session somewhere else (route rewriting);
//! - a receipt whose signature does not verify: it was altered on its way, and the last hop
//!   delivered it;
//! - an input that is not the previous hop's signed output: the previous hop sent something else
//!   than it vouched for; a first input that is not what the client sent: the first hop;
//! - a last output that is not what the client received, a missing or extra receipt: the last
//!   hop, which delivered them;
//! - a tap (a hop's output copied for a spot check) that is not what its hop's receipt vouches
//!   for: that hop;
//! - a token that is not the one the last hop signed, or a token signed by another hop: the last
//!   hop, which delivered it, or the hop that signed one.

use libp2p::PeerId;
use sunswarm_protocol::{HopTiming, Receipt, SessionId, TensorFrame};

/// What a check found wrong, and the hop it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub hop: usize,
    pub reason: String,
}

/// What the client knows about one forward it sent and the answer it received.
pub struct Expected<'a> {
    /// The peers of the route, in order.
    pub peers: &'a [Vec<u8>],
    /// [`sunswarm_protocol::route_digest`] of the route the session was opened with.
    pub route: [u8; 32],
    pub session: SessionId,
    pub step: u32,
    /// Checksum of the hidden states the client sent to the first hop.
    pub sent: [u8; 32],
    /// Checksum of the hidden states the last hop returned.
    pub received: [u8; 32],
    /// Whether the forward asked for taps.
    pub tapped: bool,
    /// The token that came back with the hidden states, if any.
    pub token: Option<u32>,
}

/// Checks the receipts (and taps) of one answer; returns the hops' timings when all hold.
pub fn check(
    want: &Expected<'_>,
    receipts: &[Receipt],
    taps: &[TensorFrame],
    verify: impl Fn(&PeerId, &[u8], &[u8]) -> bool,
) -> Result<Vec<HopTiming>, Breach> {
    let hops = want.peers.len();
    let last = hops.saturating_sub(1);
    let breach = |hop: usize, reason: String| Err(Breach { hop, reason });
    if receipts.len() != hops {
        return breach(
            last,
            format!("{} receipts for a route of {hops} hops", receipts.len()),
        );
    }
    for (k, r) in receipts.iter().enumerate() {
        let before = k.saturating_sub(1);
        if r.signer != want.peers[k] {
            return breach(
                before,
                format!("hop {k}'s receipt is signed by another peer than the one chosen"),
            );
        }
        let Ok(signer) = PeerId::from_bytes(&r.signer) else {
            return breach(k, format!("hop {k}'s signer is not a peer id"));
        };
        if !verify(
            &signer,
            &r.signing_bytes(&want.session, want.step),
            &r.signature,
        ) {
            return breach(
                last,
                format!("hop {k}'s receipt does not verify (altered on its way)"),
            );
        }
        if r.timing.hop as usize != k {
            return breach(
                k,
                format!("hop {k} signed a receipt for hop {}", r.timing.hop),
            );
        }
        if r.route != want.route {
            return breach(before, format!("hop {k} was given another route"));
        }
        let expected_input = if k == 0 {
            want.sent
        } else {
            receipts[k - 1].output
        };
        if r.input != expected_input {
            return breach(
                before,
                if k == 0 {
                    "the first hop's input is not what the client sent".to_string()
                } else {
                    format!("hop {k} received something else than hop {before} vouched for")
                },
            );
        }
    }
    if receipts[last].output != want.received {
        return breach(
            last,
            "the output is not what the last hop vouched for".into(),
        );
    }
    if let Some(k) = receipts[..last].iter().position(|r| r.token.is_some()) {
        return breach(
            k,
            format!("hop {k} signed a token, which only the last hop picks"),
        );
    }
    if receipts[last].token != want.token {
        return breach(
            last,
            format!(
                "the token {:?} is not the {:?} the last hop vouched for",
                want.token, receipts[last].token
            ),
        );
    }
    let want_taps = if want.tapped { last } else { 0 };
    if taps.len() != want_taps {
        return breach(last, format!("{} taps, {want_taps} asked for", taps.len()));
    }
    for (k, t) in taps.iter().enumerate() {
        if t.checksum != receipts[k].output {
            return breach(k, format!("hop {k}'s tap is not the output it vouched for"));
        }
    }
    Ok(receipts.iter().map(|r| r.timing).collect())
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use sunswarm_protocol::DType;

    use super::*;

    struct Forward {
        keys: Vec<Keypair>,
        peers: Vec<Vec<u8>>,
        receipts: Vec<Receipt>,
        taps: Vec<TensorFrame>,
        sent: [u8; 32],
        received: [u8; 32],
        token: Option<u32>,
    }

    const SESSION: SessionId = SessionId([7; 16]);
    const STEP: u32 = 3;
    const ROUTE: [u8; 32] = [9; 32];

    fn frame(v: f32) -> TensorFrame {
        TensorFrame::from_f32(&[1, 2], &[v, v], DType::F32).unwrap()
    }

    fn sign(key: &Keypair, mut r: Receipt) -> Receipt {
        r.signature = key.sign(&r.signing_bytes(&SESSION, STEP)).unwrap();
        r
    }

    /// An honest three-hop forward with taps: hop k turns frame(k) into frame(k + 1).
    fn honest() -> Forward {
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let peers: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| k.public().to_peer_id().to_bytes())
            .collect();
        let receipts = (0..3)
            .map(|k| {
                sign(
                    &keys[k],
                    Receipt {
                        timing: HopTiming {
                            hop: k as u16,
                            compute_us: 5,
                            total_us: 7,
                            kept_rows: 0,
                        },
                        signer: peers[k].clone(),
                        route: ROUTE,
                        input: frame(k as f32).checksum,
                        output: frame(k as f32 + 1.0).checksum,
                        token: (k == 2).then_some(77),
                        signature: Vec::new(),
                    },
                )
            })
            .collect();
        Forward {
            keys,
            peers,
            receipts,
            taps: vec![frame(1.0), frame(2.0)],
            sent: frame(0.0).checksum,
            received: frame(3.0).checksum,
            token: Some(77),
        }
    }

    fn expected(f: &Forward, tapped: bool) -> Expected<'_> {
        Expected {
            peers: &f.peers,
            route: ROUTE,
            session: SESSION,
            step: STEP,
            sent: f.sent,
            received: f.received,
            tapped,
            token: f.token,
        }
    }

    fn run(f: &Forward) -> Result<Vec<HopTiming>, Breach> {
        check(
            &expected(f, !f.taps.is_empty()),
            &f.receipts,
            &f.taps,
            sunswarm_net::announce::verify_by,
        )
    }

    fn blamed(f: &Forward) -> usize {
        run(f).unwrap_err().hop
    }

    #[test]
    fn an_honest_chain_passes_and_gives_the_timings() {
        let f = honest();
        let t = run(&f).unwrap();
        assert_eq!(t.iter().map(|t| t.hop).collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut f = honest();
        f.taps.clear();
        // Without taps asked for, none must come; asked for, they must.
        assert!(run(&f).is_ok());
        let breach = check(
            &expected(&f, true),
            &f.receipts,
            &f.taps,
            sunswarm_net::announce::verify_by,
        );
        assert_eq!(breach.unwrap_err().hop, 2);
    }

    #[test]
    fn a_substituted_hop_is_blamed_on_the_hop_that_passed_it_on() {
        // Hop 0 sent the session to a stranger instead of hop 1: the stranger signs validly.
        let mut f = honest();
        let stranger = Keypair::generate_ed25519();
        let mut r = f.receipts[1].clone();
        r.signer = stranger.public().to_peer_id().to_bytes();
        f.receipts[1] = sign(&stranger, r);
        assert_eq!(blamed(&f), 0);
        // The stranger passes on a rewritten route: hop 2 signs it honestly; hop 1 is blamed.
        let mut f = honest();
        let mut r = f.receipts[2].clone();
        r.route = [1; 32];
        f.receipts[2] = sign(&f.keys[2], r);
        assert_eq!(blamed(&f), 1);
    }

    #[test]
    fn forged_or_altered_receipts_are_caught() {
        // A timing changed after signing (a later hop forging an earlier one's time).
        let mut f = honest();
        f.receipts[0].timing.compute_us = 1;
        assert_eq!(blamed(&f), 2);
        // A receipt in hop 1's name signed with another key.
        let mut f = honest();
        let other = f.keys[0].clone();
        let r = f.receipts[1].clone();
        f.receipts[1] = sign(&other, r);
        assert_eq!(blamed(&f), 2);
        // A receipt missing.
        let mut f = honest();
        f.receipts.pop();
        assert_eq!(blamed(&f), 2);
        // A hop that signs for another position.
        let mut f = honest();
        let mut r = f.receipts[1].clone();
        r.timing.hop = 2;
        f.receipts[1] = sign(&f.keys[1], r);
        assert_eq!(blamed(&f), 1);
    }

    #[test]
    fn a_broken_data_chain_names_the_sender() {
        // Hop 1 vouches for one output and sends another: hop 2's receipt shows what it got.
        let mut f = honest();
        let mut r = f.receipts[2].clone();
        r.input = frame(42.0).checksum;
        f.receipts[2] = sign(&f.keys[2], r);
        assert_eq!(blamed(&f), 1);
        // The first hop claims another input than the client sent.
        let mut f = honest();
        f.sent = frame(5.0).checksum;
        assert_eq!(blamed(&f), 0);
        // The last hop returns other states than it vouched for.
        let mut f = honest();
        f.received = frame(5.0).checksum;
        assert_eq!(blamed(&f), 2);
    }

    #[test]
    fn the_token_must_be_the_one_the_last_hop_signed() {
        // Another token than the signed one: the last hop delivered it.
        let mut f = honest();
        f.token = Some(78);
        assert_eq!(blamed(&f), 2);
        let mut f = honest();
        f.token = None;
        assert_eq!(blamed(&f), 2);
        // A token changed in the receipt after signing.
        let mut f = honest();
        f.receipts[2].token = Some(78);
        f.token = Some(78);
        assert_eq!(blamed(&f), 2);
        // A middle hop that signs a token.
        let mut f = honest();
        let mut r = f.receipts[1].clone();
        r.token = Some(5);
        f.receipts[1] = sign(&f.keys[1], r);
        assert_eq!(blamed(&f), 1);
    }

    #[test]
    fn taps_must_be_what_their_hop_vouched_for() {
        let mut f = honest();
        f.taps[1] = frame(8.0);
        assert_eq!(blamed(&f), 1);
        let mut f = honest();
        f.taps.pop();
        assert_eq!(blamed(&f), 2);
    }
}
