//! The announcement record: what a node tells the swarm about itself. It is stored in the DHT
//! (under [`crate::dht::peer_record_key`]) and gossiped every few seconds with fresh energy state;
//! clients route only on announcements that are valid, of their model id, and not expired.
//!
//! On the wire (DHT records, gossip) an announcement travels as a [`SignedAnnouncement`], signed
//! by the peer it describes over [`Announcement::signing_bytes`] (the signature is checked by
//! `sunswarm-net`, which has the key types): a record or message that speaks for another peer is
//! refused wherever it arrives.

use serde::{Deserialize, Serialize};

use crate::ModelDigest;
use crate::blocks::BlockRange;
use crate::codec::{CodecError, Validate, check_len, check_text};
use crate::limits::{
    MAX_ADDR_LEN, MAX_ADDRS, MAX_ANNOUNCE_TTL_MS, MAX_PEER_ID_LEN, MAX_SIGNATURE_LEN,
};

/// How a node is powered and which power mode is in force, as it announces them. (The energy
/// crate's `PowerMode` is one operating point of a mode table: slots and energy per job.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerSetting {
    /// No energy constraint (wall power).
    Mains,
    /// A fixed mode, e.g. 15, 30 or 60 W.
    Fixed { watts: u16 },
    /// Chosen by battery level; `watts` is the mode in force now.
    Dynamic { watts: u16 },
}

/// A node's energy state, as its routing weight needs it (see `paper-model.md`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnergyState {
    /// Battery level as a fraction of capacity, 0 to 1 (1 on mains).
    pub battery_level: f32,
    /// Mean harvested power the node expects, in watts.
    pub harvest_w: f32,
    pub power_mode: PowerSetting,
    /// Below the low threshold: the node refuses new sessions until it recovers.
    pub power_saving: bool,
    /// The largest job arrival rate (jobs per slot) the node can take without its battery
    /// running down, from its own semi-Markov model; 1 on mains.
    pub max_job_rate: f32,
    /// Index of the current power mode in the node's mode table (0 = lowest power).
    pub mode_index: u8,
    /// The battery puts a dynamic mode table in its critical (lowest) mode.
    pub critical: bool,
    /// Chance the node falls into power saving soon if it takes a job now (0 when unknown).
    pub saving_risk: f32,
    /// The node's energy model takes one more job now (R6 of `paper-model.md`: active, and the
    /// one place for a job waiting behind the one in service is free). A session outlives its
    /// job on a hop that finished before the route's slowest hop, so the session count is not
    /// the model's availability. Always true on mains and real batteries.
    pub takes_job: bool,
}

impl EnergyState {
    /// The state of a node on wall power: full, never saving, any rate.
    pub fn mains() -> Self {
        EnergyState {
            battery_level: 1.0,
            harvest_w: 0.0,
            power_mode: PowerSetting::Mains,
            power_saving: false,
            max_job_rate: 1.0,
            mode_index: 0,
            critical: false,
            saving_risk: 0.0,
            takes_job: true,
        }
    }

    fn validate(&self) -> Result<(), CodecError> {
        let field = |field: &'static str, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(CodecError::Field {
                    field,
                    reason: format!("{v} is not a finite non-negative number"),
                })
            }
        };
        field("energy.battery_level", self.battery_level)?;
        field("energy.harvest_w", self.harvest_w)?;
        field("energy.max_job_rate", self.max_job_rate)?;
        field("energy.saving_risk", self.saving_risk)?;
        if self.saving_risk > 1.0 {
            return Err(CodecError::Field {
                field: "energy.saving_risk",
                reason: format!("{} is above 1 (a probability)", self.saving_risk),
            });
        }
        if self.battery_level > 1.0 {
            return Err(CodecError::Field {
                field: "energy.battery_level",
                reason: format!("{} is above 1 (a fraction of capacity)", self.battery_level),
            });
        }
        Ok(())
    }
}

/// Ends [`Announcement::backend`] for a node whose 4-bit and Q8_0 weights multiply activations
/// rounded to 8 bits (`SUNSWARM_INT8=1`): its rows differ from an f32 node's by more than rounding
/// of the last bit, so a client routes a session through peers of one kind only, and a failover
/// replaces a hop by a peer that computes the same numbers. Carried in the backend text so that
/// peers of the previous build still decode the announcement.
pub const INT8_SUFFIX: &str = "+int8";

/// One node's announcement. Times are milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The node's libp2p peer id, as bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Multiaddrs the node listens on (text form).
    pub addrs: Vec<String>,
    pub model_id: ModelDigest,
    /// Number of blocks of the whole model, so a client can tell whether routes cover it.
    pub n_layers: u32,
    pub blocks: BlockRange,
    /// Compute backend (`cpu`, `wgpu`, `cuda`), with [`INT8_SUFFIX`] when its weights multiply
    /// 8-bit activations.
    pub backend: String,
    /// Estimated decode throughput through this node's blocks, tokens per second.
    pub throughput: f32,
    pub max_sessions: u32,
    pub active_sessions: u32,
    pub energy: EnergyState,
    pub timestamp_ms: u64,
    /// After this instant the announcement must not be routed to. A node leaving sets it to its
    /// timestamp, so clients drop it at once.
    pub expires_ms: u64,
}

/// An announcement with the signature of the peer it describes: what the DHT stores and gossip
/// carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    pub announcement: Announcement,
    /// The peer's signature over [`Announcement::signing_bytes`], with the key its peer id
    /// holds.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Validate for SignedAnnouncement {
    fn validate(&self) -> Result<(), CodecError> {
        check_len("signature", self.signature.len(), MAX_SIGNATURE_LEN)?;
        self.announcement.validate()
    }
}

/// Domain separation of announcement signatures: a signature over one can never pass for a
/// signature over anything else the peer signs (receipts, errors, gossip).
const SIGNING_DOMAIN: &[u8] = b"sunswarm/announce/1";

impl Announcement {
    /// Whether a client may still route to this node at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// Whether the node multiplies 8-bit activations (see [`INT8_SUFFIX`]).
    pub fn int8_activations(&self) -> bool {
        self.backend.ends_with(INT8_SUFFIX)
    }

    /// What the peer signs: a domain tag, then the encoded announcement.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = SIGNING_DOMAIN.to_vec();
        out.extend_from_slice(&crate::codec::encode(self)?);
        Ok(out)
    }
}

impl Validate for Announcement {
    fn validate(&self) -> Result<(), CodecError> {
        if self.peer_id.is_empty() {
            return Err(CodecError::Field {
                field: "peer_id",
                reason: "empty".into(),
            });
        }
        check_len("peer_id", self.peer_id.len(), MAX_PEER_ID_LEN)?;
        check_len("addrs", self.addrs.len(), MAX_ADDRS)?;
        for a in &self.addrs {
            check_len("addrs[]", a.len(), MAX_ADDR_LEN)?;
        }
        self.blocks.within(self.n_layers)?;
        check_text("backend", &self.backend, 16)?;
        if !(self.throughput.is_finite() && self.throughput >= 0.0) {
            return Err(CodecError::Field {
                field: "throughput",
                reason: format!("{} is not a finite non-negative number", self.throughput),
            });
        }
        self.energy.validate()?;
        if self.expires_ms < self.timestamp_ms
            || self.expires_ms - self.timestamp_ms > MAX_ANNOUNCE_TTL_MS
        {
            return Err(CodecError::Field {
                field: "expires_ms",
                reason: format!(
                    "lifetime {} ms must be between 0 and {MAX_ANNOUNCE_TTL_MS} ms",
                    self.expires_ms as i128 - self.timestamp_ms as i128
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    pub(crate) fn sample() -> Announcement {
        Announcement {
            peer_id: vec![0, 36, 8, 1, 18, 32, 7, 7, 7],
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            model_id: [9; 32],
            n_layers: 30,
            blocks: BlockRange { start: 10, end: 20 },
            backend: "cpu".into(),
            throughput: 120.5,
            max_sessions: 8,
            active_sessions: 1,
            energy: EnergyState {
                battery_level: 0.42,
                harvest_w: 12.5,
                power_mode: PowerSetting::Dynamic { watts: 30 },
                power_saving: false,
                max_job_rate: 0.31,
                mode_index: 1,
                critical: false,
                saving_risk: 0.05,
                takes_job: true,
            },
            timestamp_ms: 1_000_000,
            expires_ms: 1_030_000,
        }
    }

    #[test]
    fn round_trips() {
        let a = sample();
        let back: Announcement = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn the_signature_covers_every_field() {
        let a = sample();
        let mut b = a.clone();
        b.timestamp_ms += 1;
        assert_ne!(a.signing_bytes().unwrap(), b.signing_bytes().unwrap());
        assert!(a.signing_bytes().unwrap().starts_with(SIGNING_DOMAIN));
        let signed = SignedAnnouncement {
            announcement: a.clone(),
            signature: vec![5; 64],
        };
        let back: SignedAnnouncement = decode(&encode(&signed).unwrap()).unwrap();
        assert_eq!(back, signed);
        let long = SignedAnnouncement {
            announcement: a,
            signature: vec![5; MAX_SIGNATURE_LEN + 1],
        };
        let err = decode::<SignedAnnouncement>(&encode(&long).unwrap()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn liveness_follows_expiry() {
        let a = sample();
        assert!(a.is_live(1_000_000));
        assert!(a.is_live(1_029_999));
        assert!(!a.is_live(1_030_000));
    }

    #[test]
    fn every_invalid_field_is_refused_by_name() {
        type Case = (&'static str, Box<dyn Fn(&mut Announcement)>);
        let cases: Vec<Case> = vec![
            ("peer_id", Box::new(|a| a.peer_id.clear())),
            (
                "peer_id",
                Box::new(|a| a.peer_id = vec![1; MAX_PEER_ID_LEN + 1]),
            ),
            (
                "addrs",
                Box::new(|a| a.addrs = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_ADDRS + 1]),
            ),
            (
                "addrs[]",
                Box::new(|a| a.addrs = vec!["x".repeat(MAX_ADDR_LEN + 1)]),
            ),
            (
                "30 blocks",
                Box::new(|a| a.blocks = BlockRange { start: 25, end: 31 }),
            ),
            (
                "empty",
                Box::new(|a| a.blocks = BlockRange { start: 5, end: 5 }),
            ),
            ("backend", Box::new(|a| a.backend = "x".repeat(17))),
            ("throughput", Box::new(|a| a.throughput = f32::NAN)),
            ("battery_level", Box::new(|a| a.energy.battery_level = 1.5)),
            ("battery_level", Box::new(|a| a.energy.battery_level = -0.1)),
            (
                "harvest_w",
                Box::new(|a| a.energy.harvest_w = f32::INFINITY),
            ),
            (
                "max_job_rate",
                Box::new(|a| a.energy.max_job_rate = f32::NAN),
            ),
            ("saving_risk", Box::new(|a| a.energy.saving_risk = 1.5)),
            (
                "expires_ms",
                Box::new(|a| a.expires_ms = a.timestamp_ms - 1),
            ),
            (
                "expires_ms",
                Box::new(|a| a.expires_ms = a.timestamp_ms + MAX_ANNOUNCE_TTL_MS + 1),
            ),
        ];
        for (needle, mutate) in cases {
            let mut a = sample();
            mutate(&mut a);
            let err = decode::<Announcement>(&encode(&a).unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}
