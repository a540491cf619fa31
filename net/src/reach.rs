//! How others can reach this host: AutoNAT says whether its addresses can be dialled from
//! outside; a host that cannot be (behind a NAT, a firewall, or with no listener at all) listens
//! through a relay it finds in the DHT (circuit relay v2, peers started with `--relay-server`
//! provide `sunswarm_protocol::dht::relay_key`) and announces the relayed address; DCUtR then tries to turn each
//! relayed connection into a direct one by hole punching.
//!
//! [`Reachability`] is the host's current view (kept by the event loop, read through
//! [`crate::Network::reachability`]); what to announce and whether to look for a relay are pure
//! functions of it. [`keep_reachable`] is the thin task that acts on them.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, info};

use sunswarm_protocol::dht::relay_key;

use crate::host::Network;

/// What AutoNAT has concluded about this host's own addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nat {
    /// No probe has answered yet.
    #[default]
    Unknown,
    /// A peer dialled one of this host's addresses back.
    Public,
    /// Peers tried and could not dial this host.
    Private,
}

/// This host's reachability, as the event loop sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reachability {
    pub nat: Nat,
    /// Addresses the host listens on directly (not through a relay).
    pub listen: Vec<Multiaddr>,
    /// `--announce-addr`: what the operator says others should dial.
    pub announce: Vec<Multiaddr>,
    /// The relay holding this host's reservation, and the circuit addresses it gives.
    pub relay: Option<PeerId>,
    pub relayed: Vec<Multiaddr>,
    /// Relayed connections that hole punching turned into direct ones, and attempts that failed.
    pub punched: u64,
    pub punch_failed: u64,
}

impl Reachability {
    /// What this host should announce: the operator's addresses when given; the relayed ones
    /// once peers have found the direct ones unreachable (or there are none) and a relay is
    /// held; the direct ones otherwise.
    pub fn advertised(&self) -> Vec<Multiaddr> {
        if !self.announce.is_empty() {
            return self.announce.clone();
        }
        let unreachable = self.nat == Nat::Private || self.listen.is_empty();
        if unreachable && !self.relayed.is_empty() {
            return self.relayed.clone();
        }
        self.listen.clone()
    }

    /// Drops listen addresses that are gone (and the relay, with its last circuit).
    pub fn forget(&mut self, gone: &[Multiaddr]) {
        self.listen.retain(|a| !gone.contains(a));
        self.relayed.retain(|a| !gone.contains(a));
        if self.relayed.is_empty() {
            self.relay = None;
        }
    }

    /// Whether the host should find a relay: peers cannot dial it, it holds no reservation, and
    /// the operator has not said where it is reachable.
    pub fn needs_relay(&self) -> bool {
        self.announce.is_empty() && self.nat == Nat::Private && self.relayed.is_empty()
    }

    /// One word for logs, the dashboard and `swarm-node`'s `REACH=` line: `public`, `relayed`
    /// (announcing a relay's address), `direct-after-punch` (relayed, and at least one relayed
    /// connection became direct), `private` (unreachable, no relay yet), `announced` (the
    /// operator's addresses) or `unknown`.
    pub fn label(&self) -> &'static str {
        if !self.announce.is_empty() {
            return "announced";
        }
        let uses_relay = self.advertised().iter().any(is_relayed);
        match (self.nat, uses_relay, self.punched > 0) {
            (_, true, true) => "direct-after-punch",
            (_, true, false) => "relayed",
            (Nat::Private, false, _) => "private",
            (Nat::Public, false, _) => "public",
            (Nat::Unknown, false, _) => "unknown",
        }
    }
}

/// How another peer is reached, as its announcement and this host's connections show it:
/// `relayed` (it announces only a relay's address), `direct-after-punch` (it does, but this host
/// holds a direct connection to it: hole punching, or the peer dialled out), or `public`.
pub fn peer_reach(announced: &[String], direct_connection: bool) -> &'static str {
    let relayed = !announced.is_empty()
        && announced
            .iter()
            .all(|a| a.parse::<Multiaddr>().is_ok_and(|a| is_relayed(&a)));
    match (relayed, direct_connection) {
        (true, true) => "direct-after-punch",
        (true, false) => "relayed",
        (false, _) => "public",
    }
}

/// Whether `addr` goes through a relay (`.../p2p-circuit/...`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay to try next among `providers`: not this host, not one already tried, lowest id
/// first (any order would do; a fixed one keeps runs repeatable).
pub fn pick_relay(
    providers: &HashSet<PeerId>,
    me: PeerId,
    tried: &HashSet<PeerId>,
) -> Option<PeerId> {
    let mut candidates: Vec<PeerId> = providers
        .iter()
        .copied()
        .filter(|p| *p != me && !tried.contains(p))
        .collect();
    candidates.sort_by_key(|p| p.to_bytes());
    candidates.first().copied()
}

/// How often the task looks at the host's reachability.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps the host reachable: whenever it needs a relay, asks the DHT for relays and listens
/// through the first that accepts (a relay that refused is tried again only once every other
/// has been). Runs until the host stops.
pub async fn keep_reachable(net: Network) {
    let me = net.local_peer_id();
    let mut tried = HashSet::new();
    let mut changes = net.reach_changes();
    loop {
        let needs_relay = changes.borrow_and_update().needs_relay();
        if needs_relay {
            let Ok(providers) = net.get_providers(relay_key()).await else {
                return; // the host has stopped
            };
            let relay = pick_relay(&providers, me, &tried).or_else(|| {
                tried.clear();
                pick_relay(&providers, me, &tried)
            });
            match relay {
                Some(relay) => {
                    tried.insert(relay);
                    info!(%relay, "unreachable from outside: listening through a relay");
                    if let Err(e) = net.listen_via_relay(relay).await {
                        debug!(%relay, "relay: {e}");
                    }
                }
                None => debug!("unreachable and no relay in the DHT yet"),
            }
        }
        // Looks again on a change, or after a while (a relay may have joined, a reservation
        // may have been refused); never more often than every CHECK_EVERY.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY * 5) => {}
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn circuit() -> Multiaddr {
        let relay = PeerId::random();
        addr("/ip4/10.0.0.1/tcp/4001")
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit)
    }

    #[test]
    fn a_public_host_announces_its_listen_addresses() {
        let r = Reachability {
            nat: Nat::Public,
            listen: vec![addr("/ip4/1.2.3.4/tcp/4001")],
            ..Reachability::default()
        };
        assert_eq!(r.advertised(), r.listen);
        assert!(!r.needs_relay());
        assert_eq!(r.label(), "public");
        // Unknown yet: the listen addresses are all there is to say.
        let unknown = Reachability {
            nat: Nat::Unknown,
            ..r.clone()
        };
        assert_eq!(unknown.advertised(), r.listen);
        assert!(!unknown.needs_relay());
        assert_eq!(unknown.label(), "unknown");
    }

    #[test]
    fn a_private_host_looks_for_a_relay_then_announces_only_the_relayed_address() {
        let mut r = Reachability {
            nat: Nat::Private,
            listen: vec![addr("/ip4/192.168.1.5/tcp/4001")],
            ..Reachability::default()
        };
        assert!(r.needs_relay());
        assert_eq!(r.label(), "private");
        // Until a relay is held, the direct address is all it has.
        assert_eq!(r.advertised(), r.listen);
        let c = circuit();
        r.relayed = vec![c.clone()];
        assert!(!r.needs_relay());
        assert_eq!(r.advertised(), vec![c.clone()]);
        assert_eq!(r.label(), "relayed");
        r.punched = 1;
        assert_eq!(r.label(), "direct-after-punch");
        // A host with no listener at all announces the relay too.
        let bare = Reachability {
            nat: Nat::Unknown,
            relayed: vec![c.clone()],
            ..Reachability::default()
        };
        assert_eq!(bare.advertised(), vec![c]);
    }

    #[test]
    fn the_operators_addresses_win() {
        let r = Reachability {
            nat: Nat::Private,
            listen: vec![addr("/ip4/192.168.1.5/tcp/4001")],
            announce: vec![addr("/ip4/5.6.7.8/tcp/4001")],
            ..Reachability::default()
        };
        assert_eq!(r.advertised(), r.announce);
        assert!(!r.needs_relay());
        assert_eq!(r.label(), "announced");
    }

    #[test]
    fn relays_are_picked_once_each_never_this_host() {
        let me = PeerId::random();
        let (a, b) = (PeerId::random(), PeerId::random());
        let providers: HashSet<PeerId> = [me, a, b].into();
        let mut tried = HashSet::new();
        let first = pick_relay(&providers, me, &tried).unwrap();
        assert_ne!(first, me);
        assert_eq!(
            pick_relay(&providers, me, &tried),
            Some(first),
            "repeatable"
        );
        tried.insert(first);
        let second = pick_relay(&providers, me, &tried).unwrap();
        assert!(second != first && second != me);
        tried.insert(second);
        assert_eq!(pick_relay(&providers, me, &tried), None);
        assert_eq!(pick_relay(&[me].into(), me, &HashSet::new()), None);
    }

    #[test]
    fn peers_are_labelled_by_their_addresses_and_this_hosts_connection() {
        let c = circuit().to_string();
        let d = "/ip4/1.2.3.4/tcp/1".to_string();
        assert_eq!(peer_reach(std::slice::from_ref(&c), false), "relayed");
        assert_eq!(
            peer_reach(std::slice::from_ref(&c), true),
            "direct-after-punch"
        );
        assert_eq!(peer_reach(std::slice::from_ref(&d), false), "public");
        assert_eq!(peer_reach(&[d, c], false), "public");
        assert_eq!(peer_reach(&[], false), "public");
    }

    #[test]
    fn relayed_addresses_are_recognised() {
        assert!(is_relayed(&circuit()));
        assert!(!is_relayed(&addr("/ip4/1.2.3.4/tcp/1")));
    }
}
