//! The planner's view of a swarm with names and energy, and [`plan`]: which peer should host
//! which range. It validates, applies energy (peers in power saving or with a max job rate of 0
//! are excluded; an optional stage-time floor `slot_ms / lambda_p`), keeps at most
//! [`EXACT_PEER_LIMIT`] peers, runs the exact [`segment::solve`] and reports the plan with peer
//! ids.

use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result, positive, time_ms, unit_rate};
use crate::segment::{self, Instance, Objective, PeerCost};
use crate::{EXACT_PEER_LIMIT, MAX_BLOCKS, MAX_PEERS};

/// A volunteer peer, as announced and measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// Unique, non-empty.
    pub id: String,
    /// The most blocks its free memory holds.
    pub max_blocks: u32,
    /// Decode time of one block for one token, ms (measured by the node at startup).
    pub ms_per_block: f64,
    /// Hop client -> peer: hidden state bytes / bandwidth + one-way latency, ms.
    pub up_ms: f64,
    /// Hop peer -> client, ms.
    pub down_ms: f64,
    /// The largest job rate its battery sustains (jobs per slot, `paper-model.md` eq. 5), in
    /// `[0, 1]`; 1 on mains.
    pub max_job_rate: f64,
    /// In power saving: it takes no jobs, so no plan uses it.
    pub power_saving: bool,
}

/// A measured peer -> peer hop, from `from` to `to`.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub from: String,
    pub to: String,
    pub ms: f64,
}

/// What a pair of peers with no measured link in either direction costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MissingLink {
    /// `down[a] + up[b]`: as if the activation went through the client. By the triangle
    /// inequality a direct path is no slower, so this never makes an unmeasured hop look cheap.
    ViaClient,
    /// A fixed time, ms.
    Fixed(f64),
}

/// A validated swarm: the model's block count, the peers and a full hop matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    blocks: u32,
    peers: Vec<Peer>,
    links_ms: Vec<Vec<f64>>,
}

impl Swarm {
    /// Validates the peers and builds the hop matrix: each listed link sets its direction; a
    /// pair measured in one direction only is taken as symmetric (links are usually measured
    /// by one side's ping); a pair measured in neither uses `missing`.
    pub fn new(
        blocks: u32,
        peers: Vec<Peer>,
        links: &[Link],
        missing: MissingLink,
    ) -> Result<Self> {
        if blocks == 0 {
            return Err(PlanError::ZeroBlocks);
        }
        if blocks > MAX_BLOCKS {
            return Err(PlanError::TooManyBlocks {
                blocks: u64::from(blocks),
                limit: MAX_BLOCKS,
            });
        }
        if peers.is_empty() {
            return Err(PlanError::NoPeers);
        }
        if peers.len() > MAX_PEERS {
            return Err(PlanError::TooManyPeers {
                what: "planner input",
                count: peers.len(),
                limit: MAX_PEERS,
            });
        }
        let mut index = std::collections::HashMap::new();
        for (i, p) in peers.iter().enumerate() {
            if p.id.is_empty() {
                return Err(PlanError::EmptyPeerId { index: i });
            }
            if index.insert(p.id.as_str(), i).is_some() {
                return Err(PlanError::DuplicatePeer { id: p.id.clone() });
            }
            positive(|| format!("peer {:?}: ms_per_block", p.id), p.ms_per_block)?;
            time_ms(|| format!("peer {:?}: ms_per_block", p.id), p.ms_per_block)?;
            time_ms(|| format!("peer {:?}: up_ms", p.id), p.up_ms)?;
            time_ms(|| format!("peer {:?}: down_ms", p.id), p.down_ms)?;
            unit_rate(|| format!("peer {:?}: max_job_rate", p.id), p.max_job_rate)?;
        }
        if let MissingLink::Fixed(ms) = missing {
            time_ms(|| "default link time".into(), ms)?;
        }
        let n = peers.len();
        let mut given: Vec<Vec<Option<f64>>> = vec![vec![None; n]; n];
        for l in links {
            let find = |id: &str| {
                index
                    .get(id)
                    .copied()
                    .ok_or_else(|| PlanError::UnknownPeer {
                        id: id.to_string(),
                        context: format!("link {:?} -> {:?}", l.from, l.to),
                    })
            };
            let (a, b) = (find(&l.from)?, find(&l.to)?);
            if a == b {
                return Err(PlanError::SelfLink { id: l.from.clone() });
            }
            time_ms(|| format!("link {:?} -> {:?}", l.from, l.to), l.ms)?;
            if given[a][b].replace(l.ms).is_some() {
                return Err(PlanError::DuplicateLink {
                    from: l.from.clone(),
                    to: l.to.clone(),
                });
            }
        }
        let mut links_ms = vec![vec![0.0; n]; n];
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                links_ms[a][b] = match (given[a][b], given[b][a], missing) {
                    (Some(v), _, _) | (None, Some(v), _) => v,
                    (None, None, MissingLink::Fixed(v)) => v,
                    (None, None, MissingLink::ViaClient) => peers[a].down_ms + peers[b].up_ms,
                };
            }
        }
        Ok(Swarm {
            blocks,
            peers,
            links_ms,
        })
    }

    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// `links_ms()[a][b]`: the hop time from peer `a` to peer `b` after defaults, ms.
    pub fn links_ms(&self) -> &[Vec<f64>] {
        &self.links_ms
    }
}

/// How to plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanOptions {
    pub objective: Objective,
    /// Count the last peer's hop back to the client in the bottleneck (the seed's Sunswarm
    /// choice; the unofficial EdgeShard code leaves it out). Latency always counts it.
    pub include_return: bool,
    /// The energy floor: with `Some(slot_ms)`, a stage on peer `p` takes at least
    /// `slot_ms / max_job_rate[p]` ms. `max_job_rate` is in jobs per slot (`paper-model.md`),
    /// so `slot_ms` says how many ms of the planner's per-token time scale one slot stands for:
    /// a peer that may take at most `lambda` jobs per slot cannot run a stage more often than
    /// once every `slot_ms / lambda` ms. `None` (the default) leaves stage times as measured.
    pub energy_floor_slot_ms: Option<f64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            objective: Objective::Throughput,
            include_return: true,
            energy_floor_slot_ms: None,
        }
    }
}

/// One stage of a plan: `peer` hosts blocks `start..end` (half-open).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub peer: String,
    pub start: u32,
    pub end: u32,
    /// The hop into this stage (from the client for the first), ms.
    pub hop_in_ms: f64,
    /// This stage's time for one token, ms (the energy floor included).
    pub stage_ms: f64,
}

/// A peer that no plan may use, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub peer: String,
    pub reason: String,
}

/// A plan with its totals; serialisable as the `--json` output of `swarm-testnet plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub objective: Objective,
    pub include_return: bool,
    pub blocks: u32,
    /// The route in order: client, then each stage, then back to the client.
    pub stages: Vec<StageReport>,
    /// The last peer's hop back to the client, ms.
    pub return_ms: f64,
    /// Time of one token through the route, ms.
    pub latency_ms: f64,
    /// The slowest stage or hop (the return only with `include_return`), ms.
    pub bottleneck_ms: f64,
    /// Steady-state tokens per second with enough sessions in flight: `1000 / bottleneck_ms`.
    pub tokens_per_s: f64,
    /// Tokens per second of a single session: `1000 / latency_ms`.
    pub tokens_per_s_one_session: f64,
    /// Sessions in flight that reach `tokens_per_s`: `ceil(latency / bottleneck)`.
    pub sessions_to_saturate: u32,
    /// True when every usable peer was in the exact DP; false when more than
    /// [`EXACT_PEER_LIMIT`] were usable and some were dropped before it (see `dropped`).
    pub exact: bool,
    /// Peers no plan may use (power saving, a max job rate of 0, no room for one block).
    pub excluded: Vec<Excluded>,
    /// Usable peers left out to fit the exact DP's limit.
    pub dropped: Vec<String>,
}

impl PlanReport {
    /// Seed 003 section 7: `M` sessions in flight give `M * 1000 / max(T_cycle, M * T_max)`
    /// tokens per second, with `T_cycle` = latency and `T_max` = bottleneck.
    pub fn tokens_per_s_with_sessions(&self, sessions: u32) -> f64 {
        let m = f64::from(sessions);
        m * 1000.0 / self.latency_ms.max(m * self.bottleneck_ms)
    }
}

/// Plans the swarm: excluded peers out, at most [`EXACT_PEER_LIMIT`] kept, the exact segment DP
/// on them, the answer with peer ids.
pub fn plan(swarm: &Swarm, opts: &PlanOptions) -> Result<PlanReport> {
    if let Some(slot) = opts.energy_floor_slot_ms {
        positive(|| "energy_floor_slot_ms".into(), slot)?;
        time_ms(|| "energy_floor_slot_ms".into(), slot)?;
    }
    let b = swarm.blocks;
    let mut excluded = Vec::new();
    let mut usable: Vec<usize> = Vec::new();
    for (i, p) in swarm.peers.iter().enumerate() {
        let reason = if p.power_saving {
            Some("power saving: takes no jobs")
        } else if p.max_job_rate == 0.0 {
            Some("max job rate 0: takes no jobs")
        } else if p.max_blocks == 0 {
            Some("no room for one block")
        } else {
            None
        };
        match reason {
            Some(r) => excluded.push(Excluded {
                peer: p.id.clone(),
                reason: r.into(),
            }),
            None => usable.push(i),
        }
    }
    if usable.is_empty() {
        return Err(PlanError::Infeasible {
            blocks: b,
            reason: "every peer is excluded (power saving, no job rate or no memory)".into(),
        });
    }
    let cost = |i: usize| {
        let p = &swarm.peers[i];
        PeerCost {
            ms_per_block: p.ms_per_block,
            max_blocks: p.max_blocks.min(b),
            up_ms: p.up_ms,
            down_ms: p.down_ms,
            floor_ms: opts
                .energy_floor_slot_ms
                .map_or(0.0, |slot| slot / p.max_job_rate),
        }
    };
    let costs: Vec<PeerCost> = usable.iter().map(|&i| cost(i)).collect();
    for (c, &i) in costs.iter().zip(&usable) {
        // A tiny max job rate makes the floor huge: say whose, rather than "peer #3: floor_ms".
        time_ms(
            || {
                format!(
                    "energy floor of peer {:?} (slot / max_job_rate)",
                    swarm.peers[i].id
                )
            },
            c.floor_ms,
        )?;
    }
    let (kept, dropped) = if usable.len() > EXACT_PEER_LIMIT {
        let keep = select_exact_set(swarm, &usable, &costs);
        let dropped: Vec<String> = usable
            .iter()
            .enumerate()
            .filter(|(pos, _)| !keep.contains(pos))
            .map(|(_, &i)| swarm.peers[i].id.clone())
            .collect();
        let kept: Vec<usize> = keep.iter().map(|&pos| usable[pos]).collect();
        (kept, dropped)
    } else {
        (usable.clone(), Vec::new())
    };
    let inst = Instance {
        blocks: b,
        peers: kept.iter().map(|&i| cost(i)).collect(),
        links_ms: kept
            .iter()
            .map(|&a| kept.iter().map(|&c| swarm.links_ms[a][c]).collect())
            .collect(),
    };
    let sol = segment::solve(&inst, opts.objective, opts.include_return)?;
    let eval = inst.evaluate(&sol.stages, opts.include_return)?;
    let stages = sol
        .stages
        .iter()
        .zip(eval.hop_in_ms.iter().zip(&eval.stage_ms))
        .map(|(s, (&hop, &st))| StageReport {
            peer: swarm.peers[kept[s.peer]].id.clone(),
            start: s.start,
            end: s.end,
            hop_in_ms: hop,
            stage_ms: st,
        })
        .collect();
    let ratio = eval.latency_ms / eval.bottleneck_ms;
    Ok(PlanReport {
        objective: opts.objective,
        include_return: opts.include_return,
        blocks: b,
        stages,
        return_ms: eval.return_ms,
        latency_ms: eval.latency_ms,
        bottleneck_ms: eval.bottleneck_ms,
        tokens_per_s: 1000.0 / eval.bottleneck_ms,
        tokens_per_s_one_session: 1000.0 / eval.latency_ms,
        // Rounded first so that 26.0 / 5.0 computed as 5.2000000001 still gives 6, not 7.
        sessions_to_saturate: ((ratio - 1e-9).ceil().max(1.0)).min(f64::from(u32::MAX)) as u32,
        exact: dropped.is_empty(),
        excluded,
        dropped,
    })
}

/// Picks [`EXACT_PEER_LIMIT`] of the usable peers for the exact DP (positions into `usable`).
///
/// Section 7: "drop dominated peers (slower, less memory and worse links than another peer),
/// then run the DP on the best 16". A peer is dominated when another is at least as good in
/// every input (time per block, floor, memory, up, down, every link in and out) and better in
/// one, or identical with a lower index. Peers are ranked non-dominated first, then by time per
/// block, memory (more first), `up + down`, and input order; the first 16 are kept. If those
/// cannot hold the model, the 16 with the most memory are kept instead. This is a heuristic:
/// the plan is exact over the kept peers only, and the report says so (`exact: false`).
fn select_exact_set(swarm: &Swarm, usable: &[usize], costs: &[PeerCost]) -> Vec<usize> {
    let n = usable.len();
    let link = |a: usize, c: usize| swarm.links_ms[usable[a]][usable[c]];
    let dominates = |q: usize, p: usize| -> bool {
        let (cq, cp) = (&costs[q], &costs[p]);
        let no_worse = cq.ms_per_block <= cp.ms_per_block
            && cq.floor_ms <= cp.floor_ms
            && cq.max_blocks >= cp.max_blocks
            && cq.up_ms <= cp.up_ms
            && cq.down_ms <= cp.down_ms
            && (0..n)
                .filter(|&r| r != p && r != q)
                .all(|r| link(q, r) <= link(p, r) && link(r, q) <= link(r, p));
        if !no_worse {
            return false;
        }
        let better = cq.ms_per_block < cp.ms_per_block
            || cq.floor_ms < cp.floor_ms
            || cq.max_blocks > cp.max_blocks
            || cq.up_ms < cp.up_ms
            || cq.down_ms < cp.down_ms
            || (0..n)
                .filter(|&r| r != p && r != q)
                .any(|r| link(q, r) < link(p, r) || link(r, q) < link(r, p));
        better || q < p
    };
    let dominated: Vec<bool> = (0..n)
        .map(|p| (0..n).any(|q| q != p && dominates(q, p)))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &c| {
        let (ca, cc) = (&costs[a], &costs[c]);
        dominated[a]
            .cmp(&dominated[c])
            .then(ca.ms_per_block.total_cmp(&cc.ms_per_block))
            .then(cc.max_blocks.cmp(&ca.max_blocks))
            .then((ca.up_ms + ca.down_ms).total_cmp(&(cc.up_ms + cc.down_ms)))
            .then(a.cmp(&c))
    });
    order.truncate(EXACT_PEER_LIMIT);
    let room: u64 = order.iter().map(|&p| u64::from(costs[p].max_blocks)).sum();
    if room < u64::from(swarm.blocks) {
        let mut by_memory: Vec<usize> = (0..n).collect();
        by_memory.sort_by(|&a, &c| {
            costs[c]
                .max_blocks
                .cmp(&costs[a].max_blocks)
                .then(a.cmp(&c))
        });
        by_memory.truncate(EXACT_PEER_LIMIT);
        order = by_memory;
    }
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn e2_peers() -> Vec<Peer> {
        let t = [2.0, 1.0, 4.0, 0.5];
        let cap = [4, 6, 3, 8];
        let up = [5.0, 20.0, 3.0, 40.0];
        let down = [4.0, 18.0, 3.0, 35.0];
        (0..4)
            .map(|i| Peer {
                id: format!("p{i}"),
                max_blocks: cap[i],
                ms_per_block: t[i],
                up_ms: up[i],
                down_ms: down[i],
                max_job_rate: 1.0,
                power_saving: false,
            })
            .collect()
    }

    pub(crate) fn e2_links() -> Vec<Link> {
        [
            ("p0", "p1", 2.0),
            ("p0", "p2", 3.0),
            ("p0", "p3", 30.0),
            ("p1", "p2", 4.0),
            ("p1", "p3", 30.0),
            ("p2", "p3", 35.0),
        ]
        .into_iter()
        .map(|(a, b, ms)| Link {
            from: a.into(),
            to: b.into(),
            ms,
        })
        .collect()
    }

    fn e2_swarm() -> Swarm {
        Swarm::new(8, e2_peers(), &e2_links(), MissingLink::ViaClient).unwrap()
    }

    #[test]
    fn e2_report_has_the_seed_numbers() {
        let r = plan(&e2_swarm(), &PlanOptions::default()).unwrap();
        assert!((r.bottleneck_ms - 5.0).abs() < 1e-9);
        assert!((r.latency_ms - 26.0).abs() < 1e-9);
        assert!((r.tokens_per_s - 200.0).abs() < 1e-9);
        let ids: Vec<(&str, u32, u32)> = r
            .stages
            .iter()
            .map(|s| (s.peer.as_str(), s.start, s.end))
            .collect();
        assert_eq!(ids, vec![("p2", 0, 1), ("p1", 1, 6), ("p0", 6, 8)]);
        // Seed: M=1 38.5 tok/s, M=5 192.3, M>=6 200.
        assert!((r.tokens_per_s_with_sessions(1) - 38.46).abs() < 0.01);
        assert!((r.tokens_per_s_with_sessions(5) - 192.31).abs() < 0.01);
        assert!((r.tokens_per_s_with_sessions(6) - 200.0).abs() < 1e-9);
        assert_eq!(r.sessions_to_saturate, 6);
        assert!(r.exact && r.excluded.is_empty() && r.dropped.is_empty());
        let lat = plan(
            &e2_swarm(),
            &PlanOptions {
                objective: Objective::Latency,
                ..PlanOptions::default()
            },
        )
        .unwrap();
        assert!((lat.latency_ms - 25.0).abs() < 1e-9);
    }

    #[test]
    fn power_saving_and_zero_rate_peers_are_excluded() {
        let mut peers = e2_peers();
        peers[1].power_saving = true;
        peers[3].max_job_rate = 0.0;
        let swarm = Swarm::new(8, peers, &e2_links(), MissingLink::ViaClient).unwrap();
        let r = plan(&swarm, &PlanOptions::default());
        // p0 (4) + p2 (3) hold only 7 of 8 blocks.
        assert!(matches!(r, Err(PlanError::Infeasible { .. })), "{r:?}");
        let mut peers = e2_peers();
        peers[1].power_saving = true;
        let swarm = Swarm::new(8, peers, &e2_links(), MissingLink::ViaClient).unwrap();
        let r = plan(&swarm, &PlanOptions::default()).unwrap();
        assert!(r.stages.iter().all(|s| s.peer != "p1"));
        assert_eq!(r.excluded.len(), 1);
        assert_eq!(r.excluded[0].peer, "p1");
    }

    #[test]
    fn energy_floor_is_slot_over_rate() {
        // p1 at lambda = 0.25 with a 2 ms slot: every stage on p1 takes at least 8 ms, so the
        // best bottleneck can no longer route 5 blocks through p1 at 5 ms.
        let mut peers = e2_peers();
        peers[1].max_job_rate = 0.25;
        let swarm = Swarm::new(8, peers, &e2_links(), MissingLink::ViaClient).unwrap();
        let opts = PlanOptions {
            energy_floor_slot_ms: Some(2.0),
            ..PlanOptions::default()
        };
        let r = plan(&swarm, &opts).unwrap();
        for s in &r.stages {
            let rate = if s.peer == "p1" { 0.25 } else { 1.0 };
            assert!(s.stage_ms >= 2.0 / rate - 1e-12, "{s:?}");
        }
        assert!(r.bottleneck_ms > 5.0);
        let without = plan(&swarm, &PlanOptions::default()).unwrap();
        assert!((without.bottleneck_ms - 5.0).abs() < 1e-9);
    }

    #[test]
    fn links_default_and_mirror() {
        let links = vec![Link {
            from: "p0".into(),
            to: "p1".into(),
            ms: 2.5,
        }];
        let s = Swarm::new(8, e2_peers(), &links, MissingLink::ViaClient).unwrap();
        assert_eq!(s.links_ms()[0][1], 2.5);
        assert_eq!(s.links_ms()[1][0], 2.5); // mirrored
        assert_eq!(s.links_ms()[2][3], 3.0 + 40.0); // down p2 + up p3
        let s = Swarm::new(8, e2_peers(), &links, MissingLink::Fixed(7.0)).unwrap();
        assert_eq!(s.links_ms()[3][2], 7.0);
    }

    #[test]
    fn bad_swarms_are_named() {
        let mut peers = e2_peers();
        peers[2].id = "p1".into();
        assert_eq!(
            Swarm::new(8, peers, &[], MissingLink::ViaClient),
            Err(PlanError::DuplicatePeer { id: "p1".into() })
        );
        let links = vec![Link {
            from: "p0".into(),
            to: "ghost".into(),
            ms: 1.0,
        }];
        let err = Swarm::new(8, e2_peers(), &links, MissingLink::ViaClient).unwrap_err();
        assert!(
            matches!(&err, PlanError::UnknownPeer { id, .. } if id == "ghost"),
            "{err}"
        );
        let links = vec![Link {
            from: "p0".into(),
            to: "p0".into(),
            ms: 1.0,
        }];
        assert!(matches!(
            Swarm::new(8, e2_peers(), &links, MissingLink::ViaClient),
            Err(PlanError::SelfLink { .. })
        ));
        let mut peers = e2_peers();
        peers[0].ms_per_block = f64::NAN;
        let err = Swarm::new(8, peers, &[], MissingLink::ViaClient).unwrap_err();
        assert!(err.to_string().contains("\"p0\": ms_per_block"), "{err}");
        let mut peers = e2_peers();
        peers[0].max_job_rate = 1.5;
        assert!(Swarm::new(8, peers, &[], MissingLink::ViaClient).is_err());
        assert_eq!(
            Swarm::new(0, e2_peers(), &[], MissingLink::ViaClient),
            Err(PlanError::ZeroBlocks)
        );
        assert_eq!(
            Swarm::new(8, vec![], &[], MissingLink::ViaClient),
            Err(PlanError::NoPeers)
        );
        let mut twice = e2_links();
        twice.push(twice[0].clone());
        assert!(matches!(
            Swarm::new(8, e2_peers(), &twice, MissingLink::ViaClient),
            Err(PlanError::DuplicateLink { .. })
        ));
        assert!(
            plan(
                &e2_swarm(),
                &PlanOptions {
                    energy_floor_slot_ms: Some(f64::NAN),
                    ..PlanOptions::default()
                }
            )
            .is_err()
        );
    }

    fn many(n: usize) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                id: format!("q{i}"),
                max_blocks: 2 + (i as u32 % 4),
                ms_per_block: 1.0 + (i % 7) as f64 * 0.5,
                up_ms: 1.0 + (i % 3) as f64,
                down_ms: 1.0 + (i % 2) as f64,
                max_job_rate: 1.0,
                power_saving: false,
            })
            .collect()
    }

    #[test]
    fn above_sixteen_peers_the_dominated_are_dropped_first() {
        // 16 good peers and 4 copies that are strictly worse than peer q0 in everything: the
        // copies must be the ones dropped, and the plan says it is not exact.
        let mut peers = many(16);
        for i in 0..4 {
            let mut p = peers[0].clone();
            p.id = format!("slow{i}");
            p.ms_per_block += 10.0;
            p.up_ms += 1.0;
            p.down_ms += 1.0;
            peers.push(p);
        }
        let swarm = Swarm::new(20, peers, &[], MissingLink::Fixed(1.0)).unwrap();
        let r = plan(&swarm, &PlanOptions::default()).unwrap();
        assert!(!r.exact);
        let mut dropped = r.dropped.clone();
        dropped.sort();
        assert_eq!(dropped, vec!["slow0", "slow1", "slow2", "slow3"]);
        assert_eq!(r.stages.last().unwrap().end, 20);
    }

    #[test]
    fn above_sixteen_peers_memory_wins_when_the_fast_ones_cannot_hold_the_model() {
        // 17 fast peers with 1 block each (none dominates another: up and down trade off) and
        // one slow peer with the whole model. Ranked by speed the first 16 fast ones hold only
        // 16 < 20 blocks, so the selection must fall back to memory and keep the big one.
        let mut peers: Vec<Peer> = (0..17)
            .map(|i| Peer {
                id: format!("f{i}"),
                max_blocks: 1,
                ms_per_block: 1.0,
                up_ms: 1.0 + i as f64 * 0.01,
                down_ms: 2.0 - i as f64 * 0.01,
                max_job_rate: 1.0,
                power_saving: false,
            })
            .collect();
        peers.push(Peer {
            id: "big".into(),
            max_blocks: 20,
            ms_per_block: 5.0,
            up_ms: 1.0,
            down_ms: 1.0,
            max_job_rate: 1.0,
            power_saving: false,
        });
        let swarm = Swarm::new(20, peers, &[], MissingLink::Fixed(1.0)).unwrap();
        let r = plan(&swarm, &PlanOptions::default()).unwrap();
        assert!(r.stages.iter().any(|s| s.peer == "big"));
        assert!(!r.exact);
    }
}
