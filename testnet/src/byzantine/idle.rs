//! `idle-connections[:count=N]`: N connections to every other node, from N bare hosts of this
//! process (a node takes at most a few connections per peer), each with an activation stream
//! opened and never written to. A bare host has TCP, noise, yamux and raw streams and nothing
//! else, so a thousand fit in one process. Victims close a silent stream at their first-frame
//! deadline and drop the ones past their pending-stream caps; the streams are opened again
//! every few seconds, so the pressure stays for as long as the hostile node runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use sunswarm_protocol::Announcement;
use tokio::sync::Semaphore;

use super::addrs_of;

/// How often every host opens its silent streams again.
const REOPEN_EVERY: Duration = Duration::from_secs(3);

/// Stream opens in flight at once.
const OPENING: usize = 64;

/// Hosts that start (and dial) together.
const WAVE: usize = 50;

/// A host that dials and opens streams, and nothing more.
fn bare_host(targets: &[(PeerId, Vec<Multiaddr>)]) -> Result<libp2p_stream::Control> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("bare host transport")?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .context("bare host behaviour")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    // A bare swarm keeps no address book: it dials each victim itself, once.
    for (peer, addrs) in targets {
        let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(*peer)
            .addresses(addrs.clone())
            .build();
        swarm.dial(dial).context("dialing a victim")?;
    }
    let control = swarm.behaviour().new_control();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(control)
}

/// Opens one silent stream from every host to every target (at most [`OPENING`] at once), and
/// returns those that opened.
async fn open_all(
    hosts: &[libp2p_stream::Control],
    targets: &[(PeerId, Vec<Multiaddr>)],
    gate: &Arc<Semaphore>,
) -> Vec<libp2p::Stream> {
    let mut opens = Vec::with_capacity(hosts.len() * targets.len());
    for host in hosts {
        for (peer, _) in targets {
            let (mut control, peer, gate) = (host.clone(), *peer, gate.clone());
            opens.push(tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.ok()?;
                tokio::time::timeout(
                    Duration::from_secs(5),
                    control.open_stream(peer, sunswarm_net::stream::protocol()),
                )
                .await
                .ok()?
                .ok()
            }));
        }
    }
    let mut streams = Vec::with_capacity(opens.len());
    for o in opens {
        if let Ok(Some(s)) = o.await {
            streams.push(s);
        }
    }
    streams
}

/// Opens `count` connections (and a silent stream on each) to every node in `victims`, and keeps
/// them; prints `IDLE hosts=H streams=S` after the first round. Hosts start in waves: a node
/// refuses handshakes past its cap on pending connections, so a thousand at once would mostly
/// be refused (that cap is a defence too, but this mode is about holding connections).
pub async fn hold(victims: Vec<Announcement>, count: usize) -> Result<()> {
    let mut targets = Vec::new();
    for v in &victims {
        targets.push((PeerId::from_bytes(&v.peer_id)?, addrs_of(v)));
    }
    let gate = Arc::new(Semaphore::new(OPENING));
    let mut hosts: Vec<libp2p_stream::Control> = Vec::with_capacity(count);
    let mut streams = Vec::new();
    while hosts.len() < count {
        let wave: Vec<libp2p_stream::Control> = (0..WAVE.min(count - hosts.len()))
            .map(|_| bare_host(&targets))
            .collect::<Result<_>>()?;
        let t = std::time::Instant::now();
        streams.extend(open_all(&wave, &targets, &gate).await);
        hosts.extend(wave);
        tracing::info!(
            hosts = hosts.len(),
            streams = streams.len(),
            ms = t.elapsed().as_millis() as u64,
            "idle wave"
        );
    }
    println!("IDLE hosts={count} streams={}", streams.len());
    loop {
        tokio::time::sleep(REOPEN_EVERY).await;
        // The old streams go (victims closed most at their first-frame deadline); the same
        // connections carry the new ones.
        drop(streams);
        streams = open_all(&hosts, &targets, &gate).await;
    }
}
