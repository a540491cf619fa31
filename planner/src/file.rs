//! The peers file (JSON) that `swarm-testnet plan --peers FILE --json` reads, and
//! [`plan_from_json`], so that the command only reads the file and prints the report.
//!
//! ```json
//! {
//!   "model": { "blocks": 8, "bytes_per_block": 50000000, "hidden_bytes": 1152 },
//!   "objective": "throughput",
//!   "include_return": true,
//!   "energy_floor_slot_ms": null,
//!   "default_link_ms": null,
//!   "peers": [
//!     { "id": "p0", "memory_bytes": 200000000, "ms_per_block": 2.0,
//!       "up_ms": 5.0, "down_ms": 4.0, "links_ms": { "p1": 2.0 },
//!       "max_job_rate": 1.0, "power_saving": false },
//!     { "id": "p1", "max_blocks": 6, "ms_per_block": 1.0,
//!       "up_ms": { "mbps": 0.5, "latency_ms": 1.5 }, "down_ms": 18.0 }
//!   ]
//! }
//! ```
//!
//! * `model.blocks` is required; `bytes_per_block` (weights at the peer's quantization plus KV
//!   cache for the planned context) is needed only by peers that give `memory_bytes`;
//!   `hidden_bytes` (one hidden state on the wire) only by hops given as a link.
//! * A peer's memory is `max_blocks`, or `memory_bytes / bytes_per_block` rounded down; with
//!   both, the smaller.
//! * A hop (`up_ms`, `down_ms`, each entry of `links_ms`) is a time in ms, or
//!   `{ "mbps": B, "latency_ms": L }`, which costs `hidden_bytes * 8 / 1000 / B + L` ms.
//! * `links_ms` maps other peers' ids to the hop time from this peer to them. A pair given in
//!   one direction only is taken as symmetric; a pair given in neither costs `default_link_ms`,
//!   or without it `down[a] + up[b]` (through the client: never optimistic).
//! * `objective`: `"throughput"` (default) or `"latency"`; `include_return` (default true) counts
//!   the return hop in the bottleneck; `energy_floor_slot_ms` turns on the energy floor
//!   (`slot / max_job_rate`, see [`crate::PlanOptions`]).
//! * `max_job_rate` defaults to 1 (mains) and `power_saving` to false.
//!
//! Unknown fields are errors, so a misspelt `max_block` is not silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MAX_BLOCKS;
use crate::error::{PlanError, Result, non_negative, positive, time_ms};
use crate::segment::Objective;
use crate::swarm::{Link, MissingLink, Peer, PlanOptions, PlanReport, Swarm, plan};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    pub model: ModelSpec,
    pub peers: Vec<PeerEntry>,
    #[serde(default)]
    pub objective: Objective,
    #[serde(default = "yes")]
    pub include_return: bool,
    #[serde(default)]
    pub energy_floor_slot_ms: Option<f64>,
    #[serde(default)]
    pub default_link_ms: Option<f64>,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// The model's size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub blocks: u64,
    #[serde(default)]
    pub bytes_per_block: Option<u64>,
    #[serde(default)]
    pub hidden_bytes: Option<u64>,
}

/// One peer of the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub id: String,
    #[serde(default)]
    pub max_blocks: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    pub ms_per_block: f64,
    pub up_ms: Hop,
    pub down_ms: Hop,
    #[serde(default)]
    pub links_ms: BTreeMap<String, Hop>,
    #[serde(default = "one")]
    pub max_job_rate: f64,
    #[serde(default)]
    pub power_saving: bool,
}

/// A hop: a measured time, or a link to derive it from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hop {
    Ms(f64),
    Link(LinkSpec),
}

/// A link's bandwidth and one-way latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub mbps: f64,
    pub latency_ms: f64,
}

impl Hop {
    fn ms(&self, what: impl Fn() -> String, peer: &str, hidden_bytes: Option<u64>) -> Result<f64> {
        match self {
            Hop::Ms(v) => time_ms(what, *v),
            Hop::Link(l) => {
                let Some(bytes) = hidden_bytes else {
                    return Err(PlanError::Missing {
                        id: peer.to_string(),
                        what: "a hop given as a link needs the model's hidden_bytes",
                    });
                };
                let mbps = positive(|| format!("{}: mbps", what()), l.mbps)?;
                let lat = non_negative(|| format!("{}: latency_ms", what()), l.latency_ms)?;
                // bytes * 8 / 1000 = kbit; kbit / Mbps = ms.
                Ok(bytes as f64 * 8.0 / 1000.0 / mbps + lat)
            }
        }
    }
}

impl PeersFile {
    /// Validates the file and turns it into a [`Swarm`] and [`PlanOptions`].
    pub fn into_swarm(self) -> Result<(Swarm, PlanOptions)> {
        let blocks = match self.model.blocks {
            0 => return Err(PlanError::ZeroBlocks),
            b if b > u64::from(MAX_BLOCKS) => {
                return Err(PlanError::TooManyBlocks {
                    blocks: b,
                    limit: MAX_BLOCKS,
                });
            }
            b => b as u32,
        };
        if let Some(0) = self.model.bytes_per_block {
            return Err(PlanError::BadNumber {
                what: "model.bytes_per_block".into(),
                value: 0.0,
                expected: "at least 1",
            });
        }
        let hidden = self.model.hidden_bytes;
        let mut peers = Vec::with_capacity(self.peers.len());
        let mut links = Vec::new();
        for e in &self.peers {
            let id = e.id.as_str();
            let from_memory = match (e.memory_bytes, self.model.bytes_per_block) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(PlanError::Missing {
                        id: id.to_string(),
                        what: "memory_bytes needs the model's bytes_per_block",
                    });
                }
                (Some(m), Some(per)) => Some(m / per),
            };
            let cap = match (e.max_blocks, from_memory) {
                (None, None) => {
                    return Err(PlanError::Missing {
                        id: id.to_string(),
                        what: "max_blocks or memory_bytes",
                    });
                }
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.min(b),
            };
            peers.push(Peer {
                id: e.id.clone(),
                max_blocks: cap.min(u64::from(blocks)) as u32,
                ms_per_block: e.ms_per_block,
                up_ms: e.up_ms.ms(|| format!("peer {id:?}: up_ms"), id, hidden)?,
                down_ms: e
                    .down_ms
                    .ms(|| format!("peer {id:?}: down_ms"), id, hidden)?,
                max_job_rate: e.max_job_rate,
                power_saving: e.power_saving,
            });
            for (to, hop) in &e.links_ms {
                links.push(Link {
                    from: e.id.clone(),
                    to: to.clone(),
                    ms: hop.ms(|| format!("peer {id:?}: links_ms[{to:?}]"), id, hidden)?,
                });
            }
        }
        let missing = match self.default_link_ms {
            None => MissingLink::ViaClient,
            Some(v) => MissingLink::Fixed(v),
        };
        let swarm = Swarm::new(blocks, peers, &links, missing)?;
        let opts = PlanOptions {
            objective: self.objective,
            include_return: self.include_return,
            energy_floor_slot_ms: self.energy_floor_slot_ms,
        };
        Ok((swarm, opts))
    }
}

/// Parses a peers file and plans it.
pub fn plan_from_json(json: &str) -> Result<PlanReport> {
    let file: PeersFile = serde_json::from_str(json).map_err(|e| PlanError::Json(e.to_string()))?;
    let (swarm, opts) = file.into_swarm()?;
    plan(&swarm, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "model": { "blocks": 4 },
        "peers": [ { "id": "a", "max_blocks": 4, "ms_per_block": 1.0, "up_ms": 1.0, "down_ms": 2.0 } ]
    }"#;

    #[test]
    fn minimal_file_plans_one_stage() {
        let r = plan_from_json(MINIMAL).unwrap();
        assert_eq!(r.stages.len(), 1);
        assert_eq!((r.stages[0].start, r.stages[0].end), (0, 4));
        assert_eq!(r.latency_ms, 1.0 + 4.0 + 2.0);
        assert_eq!(r.bottleneck_ms, 4.0);
        assert_eq!(r.objective, Objective::Throughput);
    }

    #[test]
    fn link_hops_use_hidden_bytes() {
        // 1250 bytes = 10 kbit; over 10 Mbps = 1 ms, plus 0.5 ms latency.
        let json = r#"{
            "model": { "blocks": 2, "hidden_bytes": 1250 },
            "objective": "latency",
            "peers": [ { "id": "a", "max_blocks": 2, "ms_per_block": 1.0,
                         "up_ms": { "mbps": 10.0, "latency_ms": 0.5 }, "down_ms": 0.0 } ]
        }"#;
        let r = plan_from_json(json).unwrap();
        assert!((r.stages[0].hop_in_ms - 1.5).abs() < 1e-12, "{r:?}");
        assert_eq!(r.objective, Objective::Latency);
    }

    #[test]
    fn memory_bytes_become_blocks() {
        let json = r#"{
            "model": { "blocks": 10, "bytes_per_block": 100 },
            "peers": [
              { "id": "a", "memory_bytes": 450, "ms_per_block": 1.0, "up_ms": 0, "down_ms": 0 },
              { "id": "b", "memory_bytes": 10000, "max_blocks": 6, "ms_per_block": 9.0, "up_ms": 0, "down_ms": 0 }
            ],
            "default_link_ms": 0.0
        }"#;
        let file: PeersFile = serde_json::from_str(json).unwrap();
        let (swarm, _) = file.into_swarm().unwrap();
        assert_eq!(swarm.peers()[0].max_blocks, 4);
        assert_eq!(swarm.peers()[1].max_blocks, 6);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let cases = [
            (
                r#"{ "model": { "blocks": 0 }, "peers": [] }"#,
                "zero blocks",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "ms_per_block": 1, "up_ms": 0, "down_ms": 0 } ] }"#,
                "max_blocks or memory_bytes",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "memory_bytes": 5, "ms_per_block": 1, "up_ms": 0, "down_ms": 0 } ] }"#,
                "bytes_per_block",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "max_blocks": 2, "ms_per_block": 1, "up_ms": { "mbps": 1, "latency_ms": 0 }, "down_ms": 0 } ] }"#,
                "hidden_bytes",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "max_blocks": 2, "ms_per_block": 1, "up_ms": 0, "down_ms": 0, "links_ms": { "zz": 1 } } ] }"#,
                "unknown peer \"zz\"",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "max_blocks": 2, "ms_per_block": -1, "up_ms": 0, "down_ms": 0 } ] }"#,
                "ms_per_block",
            ),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "max_block": 2, "ms_per_block": 1, "up_ms": 0, "down_ms": 0 } ] }"#,
                "unknown field `max_block`",
            ),
            (
                r#"{ "model": { "blocks": 5000 }, "peers": [] }"#,
                "limit of 4096",
            ),
            (r#"{ "model": { "blocks": 2 }, "peers": [] }"#, "no peers"),
            ("not json", "peers file"),
            (
                r#"{ "model": { "blocks": 2 }, "peers": [ { "id": "a", "max_blocks": 2, "ms_per_block": 1, "up_ms": 0, "down_ms": 0, "max_job_rate": 2 } ] }"#,
                "max_job_rate",
            ),
        ];
        for (json, want) in cases {
            let err = plan_from_json(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}\n -> {err}\n wanted {want:?}");
        }
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = plan_from_json(MINIMAL).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let back: PlanReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(text.contains("\"bottleneck_ms\":4.0"), "{text}");
    }
}
