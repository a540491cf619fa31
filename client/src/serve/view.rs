//! What the dashboard shows: the swarm as this server sees it (every live peer of every served
//! model, with its blocks and energy state), and the recent requests with their routes.

use std::collections::VecDeque;

use libp2p::PeerId;
use serde::Serialize;
use sunswarm_protocol::{Announcement, PowerSetting};

use crate::engine::RouteEntry;

/// How many finished requests the dashboard lists.
pub const RECENT_REQUESTS: usize = 50;
/// The window of a peer's recent throughput.
pub const THROUGHPUT_WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Serialize)]
pub struct SwarmView {
    pub mode: &'static str,
    pub policy: &'static str,
    /// When the swarm was last looked up (ms since the epoch).
    pub updated_ms: u64,
    pub models: Vec<ModelView>,
    pub peers: Vec<PeerView>,
    pub requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    pub name: String,
    pub model_id: String,
    pub n_layers: u32,
    /// Every block is served by a live peer that takes work.
    pub covered: bool,
    /// Live peers serving each block.
    pub replicas: Vec<u32>,
    /// The blocks nobody serves, as half-open ranges.
    pub gaps: Vec<[u32; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub peer_id: String,
    pub model: String,
    pub blocks: [u32; 2],
    pub backend: String,
    pub battery_level: f32,
    pub harvest_w: f32,
    pub power_mode: String,
    pub power_saving: bool,
    pub takes_job: bool,
    pub max_job_rate: f32,
    pub max_sessions: u32,
    pub active_sessions: u32,
    pub free_places: u32,
    /// The node's own estimate of its decode speed through its blocks.
    pub throughput_announced: f32,
    /// Tokens this server generated through the peer per second, over the last minute.
    pub throughput_recent: f64,
    /// Age of the announcement, ms.
    pub age_ms: u64,
    /// How it is reached: `public`, `relayed` (through a relay's address) or
    /// `direct-after-punch` (relayed, but this server holds a direct connection to it).
    pub reach: &'static str,
}

/// One request, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub model: String,
    pub endpoint: &'static str,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// running, done, cancelled or error.
    pub status: &'static str,
    pub route: Vec<RouteEntry>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub ttft_ms: f64,
    pub tokens_per_s: f64,
    pub joules_per_token: Option<f64>,
    pub failovers: usize,
    pub error: Option<String>,
}

/// The announcement's power setting as a short label.
pub fn power_label(p: PowerSetting) -> String {
    match p {
        PowerSetting::Mains => "mains".into(),
        PowerSetting::Fixed { watts } => format!("{watts} W"),
        PowerSetting::Dynamic { watts } => format!("dynamic ({watts} W)"),
    }
}

/// Coverage of `n_layers` blocks by `anns` (live ones; peers in power saving do not count).
pub fn coverage(anns: &[Announcement], n_layers: u32) -> (Vec<u32>, Vec<[u32; 2]>) {
    let mut replicas = vec![0u32; n_layers as usize];
    for a in anns
        .iter()
        .filter(|a| !a.energy.power_saving && a.blocks.end <= n_layers)
    {
        for r in &mut replicas[a.blocks.start as usize..a.blocks.end as usize] {
            *r += 1;
        }
    }
    let mut gaps = Vec::new();
    let mut start = None;
    for (b, &n) in replicas.iter().enumerate() {
        match (n, start) {
            (0, None) => start = Some(b as u32),
            (n, Some(s)) if n > 0 => {
                gaps.push([s, b as u32]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        gaps.push([s, n_layers]);
    }
    (replicas, gaps)
}

/// A peer's announcement for the dashboard, with its recent throughput from `requests`.
pub fn peer_view(
    a: &Announcement,
    model: &str,
    requests: &VecDeque<RequestRecord>,
    now_ms: u64,
    direct_connection: bool,
) -> PeerView {
    let peer_id = PeerId::from_bytes(&a.peer_id)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| "?".into());
    let since = now_ms.saturating_sub(THROUGHPUT_WINDOW_MS);
    let tokens: usize = requests
        .iter()
        .filter(|r| r.finished_ms.is_some_and(|f| f >= since))
        .filter(|r| r.route.iter().any(|h| h.peer == peer_id))
        .map(|r| r.completion_tokens)
        .sum();
    PeerView {
        peer_id,
        model: model.to_string(),
        blocks: [a.blocks.start, a.blocks.end],
        backend: a.backend.clone(),
        battery_level: a.energy.battery_level,
        harvest_w: a.energy.harvest_w,
        power_mode: power_label(a.energy.power_mode),
        power_saving: a.energy.power_saving,
        takes_job: a.energy.takes_job,
        max_job_rate: a.energy.max_job_rate,
        max_sessions: a.max_sessions,
        active_sessions: a.active_sessions,
        free_places: a.max_sessions.saturating_sub(a.active_sessions),
        throughput_announced: a.throughput,
        throughput_recent: tokens as f64 / (THROUGHPUT_WINDOW_MS as f64 / 1e3),
        age_ms: now_ms.saturating_sub(a.timestamp_ms),
        reach: sunswarm_net::reach::peer_reach(&a.addrs, direct_connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sunswarm_protocol::{BlockRange, EnergyState};

    fn ann(start: u32, end: u32, saving: bool) -> Announcement {
        let mut energy = EnergyState::mains();
        energy.power_saving = saving;
        Announcement {
            peer_id: PeerId::random().to_bytes(),
            addrs: Vec::new(),
            model_id: [0; 32],
            n_layers: 6,
            blocks: BlockRange { start, end },
            backend: "cpu".into(),
            throughput: 10.0,
            max_sessions: 4,
            active_sessions: 1,
            energy,
            timestamp_ms: 1000,
            expires_ms: 2000,
        }
    }

    #[test]
    fn coverage_counts_replicas_and_names_gaps() {
        let anns = vec![
            ann(0, 2, false),
            ann(0, 2, false),
            ann(4, 6, false),
            ann(2, 4, true),
        ];
        let (replicas, gaps) = coverage(&anns, 6);
        assert_eq!(replicas, vec![2, 2, 0, 0, 1, 1]);
        assert_eq!(gaps, vec![[2, 4]]);
        let (_, gaps) = coverage(&[], 3);
        assert_eq!(gaps, vec![[0, 3]]);
        let (_, gaps) = coverage(&[ann(0, 6, false)], 6);
        assert!(gaps.is_empty());
    }

    #[test]
    fn a_peers_recent_throughput_counts_requests_through_it_in_the_window() {
        let a = ann(0, 6, false);
        let peer = PeerId::from_bytes(&a.peer_id).unwrap().to_string();
        let record = |finished: u64, tokens: usize, via: &str| RequestRecord {
            id: "x".into(),
            model: "m".into(),
            endpoint: "chat.completions",
            started_ms: 0,
            finished_ms: Some(finished),
            status: "done",
            route: vec![RouteEntry {
                peer: via.into(),
                blocks: [0, 6],
                reach: "public",
            }],
            prompt_tokens: 1,
            completion_tokens: tokens,
            ttft_ms: 0.0,
            tokens_per_s: 0.0,
            joules_per_token: None,
            failovers: 0,
            error: None,
        };
        let now = 100_000;
        let reqs: VecDeque<_> = [
            record(now - 1_000, 60, &peer),
            record(now - 2_000, 60, &peer),
            record(now - 70_000, 600, &peer),
            record(now - 1_000, 600, "other"),
        ]
        .into();
        let v = peer_view(&a, "m", &reqs, now, false);
        assert!((v.throughput_recent - 2.0).abs() < 1e-9);
        assert_eq!(v.free_places, 3);
        assert_eq!(v.power_mode, "mains");
        assert_eq!(v.reach, "public");
    }
}
