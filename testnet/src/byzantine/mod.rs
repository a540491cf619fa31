//! `swarm-testnet byzantine-node --mode MODE <swarm-node flags>`: a node that serves like
//! `swarm-node` (the same library, [`sunswarm_node::cli`]) but misbehaves the way a stranger in
//! an open swarm could, through [`sunswarm_node::hooks::Hooks`]. The hostile behaviours live
//! only in this binary, never in `swarm-node`. `swarm-testnet up --byzantine I:MODE` starts
//! node I this way. Each mode prints one machine-readable line on stdout once its attack has
//! been made (`FLOODED`, `FORGED`, `HOLDING`, `REWROTE`, `PERTURBED`, `MISPICKED`, `BLAMED`, `IDLE`; and
//! `READY` when `rewrite-route` knows the other replicas), so that tests can wait for it.
//!
//! Modes (`MODE[:key=value,...]`):
//! - `wrong-output[:from=S,steps=N]`: every output from step S on (default 0), for N steps
//!   (default all), is perturbed (negated, scaled and shifted: enough to steer the text), with
//!   a receipt that vouches for it.
//! - `wrong-token[:from=S]`: as the last hop, every token it picks for the client from step S on
//!   (default 0) is another one than its LM head gives, beside honest hidden states.
//! - `rewrite-route`: the route it passes on names another replica at the next hop.
//! - `flood-gossip[:keys=N]`: N valid announcements of made-up peers (default 100,000), each
//!   signed by its own key, written onto a gossip stream to every other node.
//! - `forge-announcements`: DHT records and gossip in every other node's name, pointing at
//!   itself, from the future, signed with its own key.
//! - `inflate-rate`: announces the best possible state: a huge max job rate, full battery,
//!   no risk, huge throughput.
//! - `hold-sessions`: opens as many sessions as other nodes let it and holds them idle.
//! - `idle-connections[:count=N]`: N connections (default 1,000) to every other node, from N
//!   hosts of its own, each holding an activation stream it never writes to (`idle.rs`).
//! - `blame-next[:after=S]`: at step S (default 2) it stops and sends up the route an error
//!   that says its next hop failed (a middle hop trying to get an honest peer backed off).

mod flood;
mod idle;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libp2p::{Multiaddr, PeerId};
use sunswarm_net::Network;
use sunswarm_node::cli::NodeArgs;
use sunswarm_node::hooks::Hooks;
use sunswarm_protocol::io::{FrameReader, write_message};
use sunswarm_protocol::{
    Announcement, BlockRange, DType, ErrorKind, Hop, ModelDigest, OpenSession, Request, Response,
    SessionId, SignedAnnouncement, WireError, codec, dht,
};

/// A hostile behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    WrongOutput { from_step: u32, steps: u32 },
    WrongToken { from_step: u32 },
    RewriteRoute,
    FloodGossip { keys: usize },
    ForgeAnnouncements,
    InflateRate,
    HoldSessions,
    BlameNext { after: u32 },
    IdleConnections { count: usize },
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let mut kv = std::collections::HashMap::new();
        for p in params.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("mode {s:?}: {p:?} is not key=value"))?;
            kv.insert(k.trim(), v.trim());
        }
        let num = |key: &str, default: u64| -> Result<u64> {
            kv.get(key).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("mode {s:?}: {key}={v} is not a number"))
            })
        };
        let mode = match name {
            "wrong-output" => Mode::WrongOutput {
                from_step: u32::try_from(num("from", 0)?)?,
                steps: u32::try_from(num("steps", u64::from(u32::MAX))?)?,
            },
            "wrong-token" => Mode::WrongToken {
                from_step: u32::try_from(num("from", 0)?)?,
            },
            "rewrite-route" => Mode::RewriteRoute,
            "flood-gossip" => Mode::FloodGossip {
                keys: usize::try_from(num("keys", 100_000)?)?,
            },
            "forge-announcements" => Mode::ForgeAnnouncements,
            "inflate-rate" => Mode::InflateRate,
            "hold-sessions" => Mode::HoldSessions,
            "blame-next" => Mode::BlameNext {
                after: u32::try_from(num("after", 2)?)?,
            },
            "idle-connections" => Mode::IdleConnections {
                count: usize::try_from(num("count", 1000)?)?,
            },
            other => anyhow::bail!(
                "unknown hostile mode {other:?}: expected wrong-output, wrong-token, rewrite-route, \
                 flood-gossip, forge-announcements, inflate-rate, hold-sessions, blame-next or \
                 idle-connections"
            ),
        };
        let known: &[&str] = match mode {
            Mode::WrongOutput { .. } => &["from", "steps"],
            Mode::WrongToken { .. } => &["from"],
            Mode::FloodGossip { .. } => &["keys"],
            Mode::BlameNext { .. } => &["after"],
            Mode::IdleConnections { .. } => &["count"],
            _ => &[],
        };
        if let Some(k) = kv.keys().find(|k| !known.contains(k)) {
            anyhow::bail!("mode {s:?} takes no parameter {k:?}");
        }
        Ok(mode)
    }
}

/// `swarm-testnet byzantine-node`.
#[derive(Debug, clap::Args)]
pub struct ByzantineArgs {
    /// The hostile behaviour (see the module docs), e.g. `wrong-output` or
    /// `flood-gossip:keys=100000`.
    #[arg(long)]
    pub mode: Mode,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Runs a hostile node until a signal stops it.
pub fn run(args: ByzantineArgs) -> Result<()> {
    sunswarm_node::cli::init_logs();
    tracing::warn!(mode = ?args.mode, "starting a HOSTILE node (testnet only)");
    sunswarm_node::cli::run_blocking(args.node, Arc::new(Hostile::new(args.mode)))
}

/// The hooks of a hostile node.
struct Hostile {
    mode: Mode,
    /// The live announcements of the swarm, refreshed from gossip.
    known: Arc<Mutex<Vec<Announcement>>>,
    /// Whether the one-line report of the attack was printed.
    reported: Mutex<bool>,
}

impl Hostile {
    fn new(mode: Mode) -> Self {
        Hostile {
            mode,
            known: Arc::default(),
            reported: Mutex::new(false),
        }
    }

    fn report_once(&self, line: &str) {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if !*r {
            *r = true;
            println!("{line}");
        }
    }
}

impl Hooks for Hostile {
    fn started(&self, net: &Network, blocks: BlockRange, model: &ModelDigest) {
        let (net, model, known) = (net.clone(), *model, self.known.clone());
        tokio::spawn(watch(net.clone(), known.clone()));
        match self.mode {
            Mode::FloodGossip { keys } => {
                tokio::spawn(async move {
                    if let Err(e) = flood_all(&net, &known, &model, blocks, keys).await {
                        tracing::warn!("flood: {e:#}");
                    }
                });
            }
            Mode::ForgeAnnouncements => {
                tokio::spawn(forge(net, known, model));
            }
            Mode::HoldSessions => {
                tokio::spawn(hold(net, known, model));
            }
            Mode::RewriteRoute => {
                // It can rewrite only once gossip has shown it the other replicas.
                tokio::spawn(async move {
                    let peers = settled(&known).await.len();
                    println!("READY peers={peers}");
                });
            }
            Mode::IdleConnections { count } => {
                tokio::spawn(async move {
                    let victims = settled(&known).await;
                    if let Err(e) = idle::hold(victims, count).await {
                        tracing::warn!("idle connections: {e:#}");
                    }
                });
            }
            _ => {}
        }
    }

    fn announce(&self, ann: &mut Announcement) {
        if self.mode == Mode::InflateRate {
            ann.energy.max_job_rate = 1e6;
            ann.energy.battery_level = 1.0;
            ann.energy.harvest_w = 1e6;
            ann.energy.saving_risk = 0.0;
            ann.energy.power_saving = false;
            ann.energy.takes_job = true;
            ann.active_sessions = 0;
            ann.throughput = 1e6;
        }
    }

    fn open_next(&self, open: &mut OpenSession) {
        if self.mode != Mode::RewriteRoute {
            return;
        }
        let next = open.hop as usize;
        let Some(hop) = open.route.get(next).cloned() else {
            return;
        };
        let now = sunswarm_net::now_ms();
        let other = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| {
                a.model_id == open.model_id
                    && a.blocks == hop.blocks
                    && a.peer_id != hop.peer_id
                    && a.is_live(now)
            })
            .cloned();
        if let Some(a) = other {
            open.route[next] = Hop {
                peer_id: a.peer_id,
                addrs: a.addrs,
                blocks: a.blocks,
            };
            self.report_once("REWROTE");
        }
    }

    fn output(&self, _open: &OpenSession, step: u32, rows: &mut [f32]) {
        if let Mode::WrongOutput { from_step, steps } = self.mode
            && step >= from_step
            && step - from_step < steps
        {
            for v in rows.iter_mut() {
                *v = 0.25 - *v * 1.5;
            }
            self.report_once("PERTURBED");
        }
    }

    fn token(&self, _open: &OpenSession, step: u32, token: &mut Option<u32>) {
        if let (Mode::WrongToken { from_step }, Some(t)) = (&self.mode, token.as_mut())
            && step >= *from_step
        {
            // A neighbour in the vocabulary: inside it, and another token.
            *t ^= 1;
            self.report_once("MISPICKED");
        }
    }

    fn fail_step(&self, open: &OpenSession, step: u32, next: Option<PeerId>) -> Option<WireError> {
        match self.mode {
            Mode::BlameNext { after } if step >= after && next.is_some() => {
                self.report_once("BLAMED");
                Some(WireError {
                    kind: ErrorKind::NextHop,
                    hop: open.hop,
                    message: "the next hop closed the session".into(),
                })
            }
            _ => None,
        }
    }
}

/// Keeps `known` at the swarm's live gossiped announcements.
async fn watch(net: Network, known: Arc<Mutex<Vec<Announcement>>>) {
    loop {
        if let Ok(view) = net.gossip_view().await {
            let now = sunswarm_net::now_ms();
            let me = net.local_peer_id().to_bytes();
            *known.lock().unwrap_or_else(|p| p.into_inner()) = view
                .into_iter()
                .filter(|a| a.is_live(now) && a.peer_id != me)
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The other nodes, once gossip shows at least one (bounded wait).
async fn others(known: &Mutex<Vec<Announcement>>) -> Vec<Announcement> {
    for _ in 0..120 {
        let k = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !k.is_empty() {
            return k;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Vec::new()
}

/// The other nodes once gossip has shown them all: at least one, and no new one for five
/// seconds (two and a half gossip intervals), at most half a minute. An attack that began on the
/// first peer seen would report on part of the swarm.
async fn settled(known: &Mutex<Vec<Announcement>>) -> Vec<Announcement> {
    let start = Instant::now();
    let mut seen = others(known).await.len();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(5) && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = known.lock().unwrap_or_else(|p| p.into_inner()).len();
        if now > seen {
            seen = now;
            since = Instant::now();
        }
    }
    others(known).await
}

fn addrs_of(a: &Announcement) -> Vec<Multiaddr> {
    a.addrs.iter().filter_map(|s| s.parse().ok()).collect()
}

async fn flood_all(
    net: &Network,
    known: &Mutex<Vec<Announcement>>,
    model: &ModelDigest,
    blocks: BlockRange,
    keys: usize,
) -> Result<()> {
    let victims = settled(known).await;
    let n_layers = victims.first().map_or(blocks.end, |a| a.n_layers);
    let frames = tokio::task::spawn_blocking({
        let model = *model;
        move || flood::frames(&model, n_layers, blocks, keys, sunswarm_net::now_ms())
    })
    .await??;
    // From a second host of this process, one that never publishes: a victim keeps one inbound
    // gossip stream per connection, and the serving host's own gossipsub, publishing its
    // announcements, would replace the flood's stream with its own.
    let (flooder, ev) = sunswarm_net::new(sunswarm_net::NetConfig {
        listen: Vec::new(),
        dht_server: false,
        ..sunswarm_net::NetConfig::default()
    })?;
    tokio::spawn(ev.run());
    let _ = net;
    // Connect first and let the flooder's own gossipsub open its stream: a victim keeps the
    // newest inbound gossip stream of a connection, so a flood stream opened before that one
    // would be dropped a few milliseconds in.
    let mut peers = Vec::new();
    for v in &victims {
        let peer = PeerId::from_bytes(&v.peer_id)?;
        flooder.add_addresses(peer, addrs_of(v)).await?;
        peers.push(peer);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut held = Vec::new();
    for peer in peers {
        match flood::send(&flooder, peer, &frames).await {
            Ok(s) => held.push(s),
            Err(e) => tracing::warn!("flooding {peer}: {e:#}"),
        }
    }
    println!("FLOODED keys={keys} victims={}", held.len());
    // The streams stay open so that the victims read everything.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(held);
    Ok(())
}

/// Every few seconds, a record and a gossip message in each other node's name.
async fn forge(net: Network, known: Arc<Mutex<Vec<Announcement>>>, model: ModelDigest) {
    // Reported each time more peers are forged, so that a test can wait for all of them
    // (the first round may come before this node has seen every peer).
    let mut reported = 0;
    settled(&known).await;
    loop {
        let victims = others(&known).await;
        let mine: Vec<String> = net
            .listen_addrs()
            .await
            .unwrap_or_default()
            .iter()
            .map(|a| {
                a.clone()
                    .with_p2p(net.local_peer_id())
                    .unwrap_or_else(|a| a)
                    .to_string()
            })
            .collect();
        let mut forged = 0;
        for v in victims.iter().filter(|v| v.model_id == model) {
            let now = sunswarm_net::now_ms();
            let mut fake = v.clone();
            fake.addrs = mine.clone();
            fake.timestamp_ms = now + 3_000_000;
            fake.expires_ms = fake.timestamp_ms + 600_000;
            // Signed with this node's key: the only key it has.
            let Ok(mut signed) = net.sign_announcement(fake.clone()) else {
                continue;
            };
            signed.announcement = fake;
            let Ok(bytes) = codec::encode(&signed) else {
                continue;
            };
            let key = dht::peer_record_key(&model, &v.peer_id);
            let _ = net
                .put_record(key, bytes.clone(), Duration::from_secs(600))
                .await;
            let _ = net.publish(dht::energy_topic(&model), bytes).await;
            // And a genuine-looking copy: the victim's own announcement re-signed, which only
            // a wrong signature check would take.
            let replay = SignedAnnouncement {
                announcement: v.clone(),
                signature: vec![0; 64],
            };
            if let Ok(b) = codec::encode(&replay) {
                let _ = net.put_record(key, b, Duration::from_secs(600)).await;
            }
            forged += 1;
        }
        if forged > reported {
            reported = forged;
            println!("FORGED peers={forged}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Opens sessions on every other node until each refuses, and holds them.
async fn hold(net: Network, known: Arc<Mutex<Vec<Announcement>>>, model: ModelDigest) {
    let mut held: Vec<(PeerId, libp2p::Stream)> = Vec::new();
    let mut reported = false;
    settled(&known).await;
    loop {
        let victims = others(&known).await;
        // Streams whose session the victim ended are dropped (and their places taken again).
        let mut alive = Vec::new();
        for (p, mut s) in held.drain(..) {
            let mut r = FrameReader::new();
            if tokio::time::timeout(Duration::from_millis(5), r.next::<_, Response>(&mut s))
                .await
                .is_err()
            {
                alive.push((p, s));
            }
        }
        held = alive;
        for v in victims.iter().filter(|v| v.model_id == model) {
            let Ok(peer) = PeerId::from_bytes(&v.peer_id) else {
                continue;
            };
            let _ = net.add_addresses(peer, addrs_of(v)).await;
            // Up to 64 each: stops at the first refusal.
            for _ in 0..64 {
                let open = OpenSession {
                    session: SessionId(rand::random()),
                    model_id: model,
                    route: vec![Hop {
                        peer_id: v.peer_id.clone(),
                        addrs: v.addrs.clone(),
                        blocks: v.blocks,
                    }],
                    hop: 0,
                    dtype: DType::F32,
                    max_tokens: 16,
                    client: net.local_peer_id().to_bytes(),
                    token_deadline_us: 0,
                    resume: false,
                };
                match open_held(&net, peer, &open).await {
                    Some(s) => held.push((peer, s)),
                    None => break,
                }
            }
        }
        if !reported && !held.is_empty() {
            reported = true;
            let mut per: std::collections::BTreeMap<String, usize> = Default::default();
            for (p, _) in &held {
                *per.entry(p.to_string()).or_default() += 1;
            }
            let counts: Vec<String> = per.values().map(usize::to_string).collect();
            println!("HOLDING {}", counts.join(" "));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An opened session's stream, or `None` when the node refused it.
async fn open_held(net: &Network, peer: PeerId, open: &OpenSession) -> Option<libp2p::Stream> {
    let mut s = net
        .control()
        .open_stream(peer, sunswarm_net::stream::protocol())
        .await
        .ok()?;
    write_message(&mut s, &Request::Open(open.clone()))
        .await
        .ok()?;
    let mut r = FrameReader::new();
    match tokio::time::timeout(Duration::from_secs(5), r.next::<_, Response>(&mut s)).await {
        Ok(Ok(Response::Opened { .. })) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(
            "wrong-output".parse::<Mode>().unwrap(),
            Mode::WrongOutput {
                from_step: 0,
                steps: u32::MAX
            }
        );
        assert_eq!(
            "wrong-output:from=5,steps=1".parse::<Mode>().unwrap(),
            Mode::WrongOutput {
                from_step: 5,
                steps: 1
            }
        );
        assert_eq!(
            "wrong-token:from=3".parse::<Mode>().unwrap(),
            Mode::WrongToken { from_step: 3 }
        );
        assert!("wrong-token:steps=1".parse::<Mode>().is_err());
        assert_eq!(
            "flood-gossip:keys=10".parse::<Mode>().unwrap(),
            Mode::FloodGossip { keys: 10 }
        );
        assert_eq!(
            "flood-gossip".parse::<Mode>().unwrap(),
            Mode::FloodGossip { keys: 100_000 }
        );
        for m in [
            "rewrite-route",
            "forge-announcements",
            "inflate-rate",
            "hold-sessions",
            "blame-next:after=1",
            "idle-connections:count=10",
        ] {
            assert!(m.parse::<Mode>().is_ok(), "{m}");
        }
        for bad in [
            "nice",
            "wrong-output:from=x",
            "inflate-rate:x=1",
            "flood-gossip:keys",
        ] {
            assert!(bad.parse::<Mode>().is_err(), "{bad}");
        }
    }
}
