//! Announcement exchange on [`crate::VIEW_PROTOCOL`] streams: a client that just joined asks a
//! connected node for the signed announcements its gossip holds for one model, and plans a route
//! from them at once, instead of walking the DHT block by block (a walk is one provider lookup
//! and a few record lookups per range, each an iterative query across the swarm). Every record
//! is the peer's own signed announcement, checked by the asker as gossip is: a node can leave
//! peers out or pass on old ones that are still live, not forge them, which is what relaying
//! gossip allows anyway; the asker still walks the DHT when what it was given does not cover
//! the model.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::ModelDigest;
use crate::codec::{CodecError, Validate, check_len};

/// Most announcements one answer carries (a node's gossip table holds at most this many per
/// source it heard them from).
pub const MAX_VIEW_RECORDS: usize = 1024;
/// Largest encoded announcement in an answer (as a DHT record).
pub const MAX_VIEW_RECORD_BYTES: usize = 8 * 1024;

/// Asks for the live announcements of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRequest {
    pub model_id: ModelDigest,
}

/// The announcements a node's gossip holds for the model asked about: each an encoded
/// [`crate::SignedAnnouncement`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewResponse {
    pub records: Vec<ByteBuf>,
}

impl Validate for ViewRequest {
    fn validate(&self) -> Result<(), CodecError> {
        Ok(())
    }
}

impl Validate for ViewResponse {
    fn validate(&self) -> Result<(), CodecError> {
        check_len("records", self.records.len(), MAX_VIEW_RECORDS)?;
        for r in &self.records {
            check_len("records[]", r.len(), MAX_VIEW_RECORD_BYTES)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn views_round_trip_and_oversized_ones_are_refused() {
        let req = ViewRequest { model_id: [4; 32] };
        assert_eq!(decode::<ViewRequest>(&encode(&req).unwrap()).unwrap(), req);
        let resp = ViewResponse {
            records: vec![ByteBuf::from(vec![1, 2, 3]), ByteBuf::from(vec![9; 100])],
        };
        assert_eq!(
            decode::<ViewResponse>(&encode(&resp).unwrap()).unwrap(),
            resp
        );
        let too_many = ViewResponse {
            records: vec![ByteBuf::from(vec![1]); MAX_VIEW_RECORDS + 1],
        };
        assert!(decode::<ViewResponse>(&encode(&too_many).unwrap()).is_err());
        let too_big = ViewResponse {
            records: vec![ByteBuf::from(vec![0; MAX_VIEW_RECORD_BYTES + 1])],
        };
        assert!(decode::<ViewResponse>(&encode(&too_big).unwrap()).is_err());
    }
}
