//! Signed announcements and the DHT records that carry them.
//!
//! A peer signs its announcement with the key its peer id holds ([`sign`]); anyone checks it
//! with the public key taken from the peer id itself ([`verify`]): only keys short enough to be
//! inlined in the id (ed25519, which every Sunswarm host uses, and secp256k1) can announce, so
//! no key has to travel. [`check_record`] is what a DHT node applies before it stores a record
//! someone else sends: a signed announcement of the peer that sent it, under the key that
//! peer's announcement for that model belongs under, not from the future, and not older than
//! the copy already held.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::Record;
use libp2p::{PeerId, kad};
use sunswarm_protocol::limits::MAX_CLOCK_SKEW_MS;
use sunswarm_protocol::{Announcement, SignedAnnouncement, codec, dht};

/// Why an announcement or record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("its peer id does not hold its public key (only inlined keys can sign)")]
    NoInlineKey,
    #[error("the signature does not verify with the announced peer's key")]
    BadSignature,
    #[error("signing: {0}")]
    Signing(String),
    #[error("stored under another key than this peer's announcement of this model")]
    WrongKey,
    #[error("sent by {sender}, but it announces {announced}")]
    WrongSender { sender: PeerId, announced: String },
    #[error(
        "timestamp {timestamp_ms} is ahead of this clock ({now_ms}) by more than {MAX_CLOCK_SKEW_MS} ms"
    )]
    FromTheFuture { timestamp_ms: u64, now_ms: u64 },
    #[error("older ({got} ms) than the copy held ({held} ms)")]
    Stale { got: u64, held: u64 },
}

/// The public key a peer id holds, when it is inlined (identity multihash).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// Verifies that `signature` over `message` was made by `peer`'s key.
pub fn verify_by(peer: &PeerId, message: &[u8], signature: &[u8]) -> bool {
    public_key_of(peer).is_some_and(|k| k.verify(message, signature))
}

/// Signs `ann` with `key` (which must be the key of `ann.peer_id`).
pub fn sign(key: &Keypair, ann: Announcement) -> Result<SignedAnnouncement, AnnounceError> {
    let bytes = ann
        .signing_bytes()
        .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    let signature = key
        .sign(&bytes)
        .map_err(|e| AnnounceError::Signing(e.to_string()))?;
    Ok(SignedAnnouncement {
        announcement: ann,
        signature,
    })
}

/// Checks that `signed` is signed by the peer it describes; returns that peer.
pub fn verify(signed: &SignedAnnouncement) -> Result<PeerId, AnnounceError> {
    let ann = &signed.announcement;
    let peer =
        PeerId::from_bytes(&ann.peer_id).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    let key = public_key_of(&peer).ok_or(AnnounceError::NoInlineKey)?;
    let bytes = ann
        .signing_bytes()
        .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    if key.verify(&bytes, &signed.signature) {
        Ok(peer)
    } else {
        Err(AnnounceError::BadSignature)
    }
}

/// Decodes a wire announcement and checks its signature and timestamp at `now_ms`.
pub fn decode_verified(bytes: &[u8], now_ms: u64) -> Result<Announcement, AnnounceError> {
    let signed: SignedAnnouncement =
        codec::decode(bytes).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
    verify(&signed)?;
    check_not_future(&signed.announcement, now_ms)?;
    Ok(signed.announcement)
}

/// Refuses a timestamp more than [`MAX_CLOCK_SKEW_MS`] ahead of `now_ms`.
pub fn check_not_future(ann: &Announcement, now_ms: u64) -> Result<(), AnnounceError> {
    if ann.timestamp_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(AnnounceError::FromTheFuture {
            timestamp_ms: ann.timestamp_ms,
            now_ms,
        });
    }
    Ok(())
}

/// Decodes a DHT record's value as a verified announcement (any sender): what a reader of the
/// DHT keeps. `key` is the record key it was found under.
pub fn decode_record(key: &[u8], value: &[u8], now_ms: u64) -> Result<Announcement, AnnounceError> {
    let ann = decode_verified(value, now_ms)?;
    if key != dht::peer_record_key(&ann.model_id, &ann.peer_id) {
        return Err(AnnounceError::WrongKey);
    }
    Ok(ann)
}

/// Whether a DHT node stores `record`, sent by `sender`, at `now_ms`, given the copy it holds.
/// A withdrawal (an announcement that expired at once, which a leaving node stores over its
/// last one) is a valid record like any other.
pub fn check_record(
    record: &Record,
    sender: &PeerId,
    held: Option<&Record>,
    now_ms: u64,
) -> Result<Announcement, AnnounceError> {
    let ann = decode_record(record.key.as_ref(), &record.value, now_ms)?;
    if ann.peer_id != sender.to_bytes() {
        return Err(AnnounceError::WrongSender {
            sender: *sender,
            announced: PeerId::from_bytes(&ann.peer_id)
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "?".into()),
        });
    }
    if let Some(old) = held
        .and_then(|r| codec::decode::<SignedAnnouncement>(&r.value).ok())
        .filter(|old| old.announcement.timestamp_ms > ann.timestamp_ms)
    {
        return Err(AnnounceError::Stale {
            got: ann.timestamp_ms,
            held: old.announcement.timestamp_ms,
        });
    }
    Ok(ann)
}

/// The record key an announcement belongs under.
pub fn record_key(ann: &Announcement) -> kad::RecordKey {
    kad::RecordKey::new(&dht::peer_record_key(&ann.model_id, &ann.peer_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::{BlockRange, EnergyState};

    pub(crate) fn signed(key: &Keypair, ts: u64) -> SignedAnnouncement {
        let a = Announcement {
            peer_id: key.public().to_peer_id().to_bytes(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            model_id: [4; 32],
            n_layers: 8,
            blocks: BlockRange { start: 0, end: 8 },
            backend: "cpu".into(),
            throughput: 1.0,
            max_sessions: 2,
            active_sessions: 0,
            energy: EnergyState::mains(),
            timestamp_ms: ts,
            expires_ms: ts + 30_000,
        };
        sign(key, a).unwrap()
    }

    fn record(a: &SignedAnnouncement) -> Record {
        Record::new(record_key(&a.announcement), codec::encode(a).unwrap())
    }

    #[test]
    fn a_signed_announcement_verifies_and_any_change_breaks_it() {
        let k = Keypair::generate_ed25519();
        let a = signed(&k, 1000);
        assert_eq!(verify(&a).unwrap(), k.public().to_peer_id());
        let mut b = a.clone();
        b.announcement.energy.max_job_rate = 0.5;
        assert_eq!(verify(&b), Err(AnnounceError::BadSignature));
        // Signed by another key, in this peer's name.
        let c = sign(&Keypair::generate_ed25519(), a.announcement.clone()).unwrap();
        assert_eq!(verify(&c), Err(AnnounceError::BadSignature));
        // A peer id whose key is hashed, not inlined, cannot announce.
        let mut d = a.clone();
        d.announcement.peer_id = PeerId::random().to_bytes();
        assert!(verify(&d).is_err());
    }

    #[test]
    fn records_are_filtered_on_store() {
        let k = Keypair::generate_ed25519();
        let me = k.public().to_peer_id();
        let now = 1_000_000;
        let a = signed(&k, now);
        assert!(check_record(&record(&a), &me, None, now).is_ok());
        // Stored by someone else in this peer's name (the forged-announcement attack).
        assert!(matches!(
            check_record(&record(&a), &PeerId::random(), None, now),
            Err(AnnounceError::WrongSender { .. })
        ));
        // Under another key.
        let mut r = record(&a);
        r.key = kad::RecordKey::new(&dht::peer_record_key(&[5; 32], &a.announcement.peer_id));
        assert_eq!(
            check_record(&r, &me, None, now),
            Err(AnnounceError::WrongKey)
        );
        // From the future.
        let f = signed(&k, now + MAX_CLOCK_SKEW_MS + 1);
        assert!(matches!(
            check_record(&record(&f), &me, None, now),
            Err(AnnounceError::FromTheFuture { .. })
        ));
        assert!(
            check_record(
                &record(&signed(&k, now + MAX_CLOCK_SKEW_MS)),
                &me,
                None,
                now
            )
            .is_ok()
        );
        // Older than the copy held.
        let newer = record(&signed(&k, now + 5));
        assert!(matches!(
            check_record(&record(&a), &me, Some(&newer), now),
            Err(AnnounceError::Stale { .. })
        ));
        // Not an announcement at all.
        let junk = Record::new(record_key(&a.announcement), b"junk".to_vec());
        assert!(matches!(
            check_record(&junk, &me, None, now),
            Err(AnnounceError::Malformed(_))
        ));
    }
}
