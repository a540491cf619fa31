//! Starting a swarm of `swarm-node` processes: the first node is the bootstrap peer, the others
//! join through it; the testnet is up once a client sees every node's announcement and the live
//! ranges cover the model.

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sunswarm_client::swarm::SwarmClient;
use sunswarm_models::{Model, ModelSource};
use sunswarm_protocol::BlockRange;
use sunswarm_protocol::blocks::parse_split_list;

use super::link::{LinkEmulator, LinkProfile, LinkProxy};
use super::process::{Managed, find_binary};

/// How blocks are split over nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    /// `--nodes` contiguous ranges of (nearly) equal size.
    Even,
    /// One inclusive range per node (`0-9,10-19,10-19,20-29` gives replicas).
    List(Vec<BlockRange>),
    /// `--nodes` nodes with `swarm-node --blocks auto`, started one after another (each once the
    /// swarm shows the ones before it), each choosing its own range.
    Auto,
}

impl FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "even" {
            return Ok(Split::Even);
        }
        if s == "auto" {
            return Ok(Split::Auto);
        }
        Ok(Split::List(parse_split_list(s).with_context(|| {
            format!("--split {s:?}: expected `even`, `auto` or A-B,C-D,...")
        })?))
    }
}

/// `nodes` nearly equal contiguous ranges; with more nodes than blocks, one block per range and
/// the ranges taken in turn (node i serves block i mod n_layers), so a hundred nodes of a
/// six-block model make six ranges of about seventeen replicas each.
pub fn even_ranges(n_layers: u32, nodes: usize) -> Result<Vec<BlockRange>> {
    let parts = u32::try_from(nodes)?.min(n_layers);
    let split = BlockRange::split_even(n_layers, parts)?;
    Ok((0..nodes).map(|i| split[i % split.len()]).collect())
}

/// Splits a per-node flag's `I:VALUE` into the node index and the value.
fn node_and_value<'a>(flag: &str, expected: &str, s: &'a str) -> Result<(usize, &'a str)> {
    let (i, value) = s
        .split_once(':')
        .with_context(|| format!("{flag} {s:?}: expected {expected}"))?;
    let node = i
        .trim()
        .parse()
        .with_context(|| format!("{flag} {s:?}: {i:?} is not a node index"))?;
    Ok((node, value))
}

/// `--slowdown I:FACTOR`: node `I` computes `FACTOR` times slower than this machine can
/// (`swarm-node --slowdown FACTOR`), emulating a weaker device in a heterogeneous testnet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slowdown {
    pub node: usize,
    pub factor: f64,
}

impl FromStr for Slowdown {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (node, f) = node_and_value("--slowdown", "NODE:FACTOR, e.g. 3:4", s)?;
        let factor: f64 = f
            .trim()
            .parse()
            .with_context(|| format!("--slowdown {s:?}: {f:?} is not a number"))?;
        anyhow::ensure!(
            factor.is_finite() && factor >= 1.0,
            "--slowdown {s:?}: the factor must be a number of at least 1"
        );
        Ok(Slowdown { node, factor })
    }
}

/// `--byzantine I:MODE`: node `I` is started as `swarm-testnet byzantine-node --mode MODE`, a
/// node with a hostile behaviour built into the testnet binary (never into `swarm-node`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Byzantine {
    pub node: usize,
    pub mode: String,
}

impl FromStr for Byzantine {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (node, mode) = node_and_value("--byzantine", "NODE:MODE, e.g. 1:wrong-output", s)?;
        anyhow::ensure!(!mode.trim().is_empty(), "--byzantine {s:?}: no mode");
        Ok(Byzantine {
            node,
            mode: mode.trim().to_string(),
        })
    }
}

/// Adds `--slowdown FACTOR` to the flags of each named node of `count` (`per_node_args` grows to
/// `count` entries). A node named twice, or one past the end, is an error.
pub fn apply_slowdowns(
    per_node_args: &mut Vec<Vec<String>>,
    count: usize,
    slowdowns: &[Slowdown],
) -> Result<()> {
    if per_node_args.len() < count {
        per_node_args.resize(count, Vec::new());
    }
    let mut seen = std::collections::HashSet::new();
    for s in slowdowns {
        anyhow::ensure!(
            s.node < count,
            "--slowdown {}:{}: the testnet has nodes 0 to {}",
            s.node,
            s.factor,
            count.saturating_sub(1)
        );
        anyhow::ensure!(
            seen.insert(s.node),
            "--slowdown names node {} twice",
            s.node
        );
        per_node_args[s.node].extend(["--slowdown".to_string(), s.factor.to_string()]);
    }
    Ok(())
}

/// What to start.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    pub nodes: usize,
    pub model: String,
    pub split: Split,
    pub backend: String,
    /// Announcement lifetime passed to every node (seconds).
    pub announce_ttl: f64,
    /// Where node logs go; a fresh temporary folder when `None`.
    pub log_dir: Option<PathBuf>,
    /// Extra flags for every node.
    pub node_args: Vec<String>,
    /// Extra flags for node i only, after `node_args` (none where the list is shorter): e.g. a
    /// seed of its own.
    pub per_node_args: Vec<Vec<String>>,
    /// A private swarm's key file, given to every node (and used to watch the swarm start).
    pub swarm_key: Option<PathBuf>,
    /// Where each node listens: TCP by default, `/ip4/127.0.0.1/udp/0/quic-v1` for QUIC.
    pub listen: String,
    /// Nodes started with a hostile behaviour.
    pub byzantine: Vec<Byzantine>,
    /// Every connection to a node crosses an emulated wide-area link with this profile (a proxy
    /// in front of each node, which the node announces). `None`: plain loopback.
    pub link: Option<LinkProfile>,
    /// Nodes that accept no direct connection (`swarm-node --no-listen`, as behind a NAT): they
    /// find themselves unreachable (AutoNAT) and listen through node 0, which then runs as a
    /// relay (`--relay-server`). Node 0, the bootstrap peer, cannot be one of them.
    pub relayed: Vec<usize>,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        TestnetOptions {
            nodes: 3,
            model: "smollm2-135m".into(),
            split: Split::Even,
            backend: "cpu".into(),
            announce_ttl: 30.0,
            log_dir: None,
            node_args: Vec::new(),
            per_node_args: Vec::new(),
            swarm_key: None,
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            byzantine: Vec::new(),
            link: None,
            relayed: Vec::new(),
        }
    }
}

/// One started node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub index: usize,
    pub pid: u32,
    pub peer: String,
    pub blocks: BlockRange,
    /// First listen address, with `/p2p/<peer>`.
    pub listen: String,
}

/// A running local swarm; dropping it stops every node.
pub struct Testnet {
    pub nodes: Vec<NodeInfo>,
    procs: Vec<Option<Managed>>,
    pub bootstrap: String,
    pub model_id: [u8; 32],
    pub n_layers: u32,
    pub log_dir: PathBuf,
    opts: TestnetOptions,
    node_bin: PathBuf,
    /// `swarm-testnet` itself, for hostile nodes (found only when some are asked for).
    hostile_bin: Option<PathBuf>,
    /// The emulated links (with `TestnetOptions::link`) and node i's proxy at index i. Declared
    /// after `procs`, so nodes stop before their links do.
    links: Option<LinkEmulator>,
    proxies: Vec<Option<LinkProxy>>,
}

/// The TCP socket address of `/ip4/A/tcp/P[/...]`.
fn tcp_socket(addr: &str) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let addr: libp2p::Multiaddr = addr.parse().ok()?;
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => std::net::IpAddr::V4(ip),
        Protocol::Ip6(ip) => std::net::IpAddr::V6(ip),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some((ip, port).into()),
        _ => None,
    }
}

fn fresh_log_dir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sunswarm-testnet-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

impl Testnet {
    /// Starts the nodes and waits until the swarm covers the model (bounded).
    pub async fn start(opts: &TestnetOptions) -> Result<Testnet> {
        let node_bin = find_binary("swarm-node")?;
        let hostile_bin = if opts.byzantine.is_empty() {
            None
        } else {
            Some(find_binary("swarm-testnet")?)
        };
        let src = ModelSource::parse(&opts.model)?;
        let model = tokio::task::spawn_blocking(move || Model::open(&src)).await??;
        let n_layers = u32::try_from(model.config().n_layers)?;
        let model_id = model.model_id().0;
        let auto = opts.split == Split::Auto;
        // With auto nodes the ranges are theirs to choose: a placeholder until each says.
        let ranges = match &opts.split {
            Split::Even => even_ranges(n_layers, opts.nodes)?,
            Split::List(r) => r.clone(),
            Split::Auto => vec![BlockRange::new(0, n_layers)?; opts.nodes],
        };
        for r in &ranges {
            r.within(n_layers)?;
        }
        let log_dir = match &opts.log_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                d.clone()
            }
            None => fresh_log_dir()?,
        };
        let links = match opts.link {
            Some(profile) => {
                anyhow::ensure!(
                    opts.listen.contains("/tcp/"),
                    "emulated links need TCP nodes (listen {})",
                    opts.listen
                );
                Some(LinkEmulator::new(profile)?)
            }
            None => None,
        };
        let mut net = Testnet {
            nodes: Vec::new(),
            procs: Vec::new(),
            bootstrap: String::new(),
            model_id,
            n_layers,
            log_dir,
            opts: opts.clone(),
            node_bin,
            hostile_bin,
            links,
            proxies: Vec::new(),
        };
        let count = ranges.len();
        for &r in &opts.relayed {
            anyhow::ensure!(
                r > 0 && r < count,
                "--relayed {r}: node 0 is the bootstrap peer and relay; relayed nodes are 1 to {}",
                count.saturating_sub(1)
            );
        }
        let mut seen = std::collections::HashSet::new();
        for b in &opts.byzantine {
            anyhow::ensure!(
                b.node < count,
                "--byzantine {}:{}: the testnet has nodes 0 to {}",
                b.node,
                b.mode,
                count.saturating_sub(1)
            );
            anyhow::ensure!(
                seen.insert(b.node),
                "--byzantine names node {} twice",
                b.node
            );
        }
        // Loading a big model in a debug build takes a while: be generous, the wait is bounded.
        let load = Duration::from_secs(300);
        for (i, blocks) in ranges.iter().enumerate() {
            let boot = (i > 0).then(|| net.bootstrap.clone());
            let log = net.log_dir.join(format!("node-{i}.log"));
            let spec = if auto {
                "auto".to_string()
            } else {
                format!("{}:{}", blocks.start, blocks.end)
            };
            let mut cmd = net.node_command_for(i, &spec, boot.as_deref(), &net.args_of(i));
            net.put_behind_link(&mut cmd)?;
            let p = Managed::spawn(&format!("node {i}"), cmd, &log)?;
            net.nodes.push(NodeInfo {
                index: i,
                pid: p.pid(),
                peer: String::new(),
                blocks: *blocks,
                listen: String::new(),
            });
            net.procs.push(Some(p));
            if i == 0 {
                net.read_node(0, load)?; // the others need its address
            } else if auto {
                // The next auto node must see this one when it chooses.
                net.read_node(i, load)?;
                net.wait_for_peers(i + 1, Duration::from_secs(120)).await?;
            }
        }
        if !auto {
            for i in 1..ranges.len() {
                net.read_node(i, load)?;
            }
        }
        let client = SwarmClient::connect_private(
            vec![net.bootstrap.parse()?],
            opts.swarm_key.as_deref(),
            Duration::from_secs(30),
        )
        .await?;
        let covered = client
            .wait_for_coverage(
                &model_id,
                n_layers,
                ranges.len(),
                // A hundred processes starting on two cores take a while to all be found.
                Duration::from_secs(60) + Duration::from_millis(500) * ranges.len() as u32,
            )
            .await;
        client.stop().await;
        covered.context("waiting until every range is announced")?;
        Ok(net)
    }

    /// The testnet's extra flags for node `i`: `node_args`, then its `per_node_args`.
    fn args_of(&self, i: usize) -> Vec<String> {
        let own = self.opts.per_node_args.get(i).into_iter().flatten();
        self.opts.node_args.iter().chain(own).cloned().collect()
    }

    /// The command of node `i`: `swarm-node`, or the hostile node when `--byzantine` names it.
    fn node_command_for(
        &self,
        i: usize,
        blocks: &str,
        bootstrap: Option<&str>,
        node_args: &[String],
    ) -> Command {
        let hostile = self.opts.byzantine.iter().find(|b| b.node == i);
        match (hostile, &self.hostile_bin) {
            (Some(b), Some(bin)) => {
                let mut c = Command::new(bin);
                c.args(["byzantine-node", "--mode", &b.mode]);
                self.add_node_args(&mut c, blocks, bootstrap, node_args);
                c
            }
            _ => self.node_command_with(blocks, bootstrap, node_args),
        }
    }

    fn node_command_with(
        &self,
        blocks: &str,
        bootstrap: Option<&str>,
        node_args: &[String],
    ) -> Command {
        let mut c = Command::new(&self.node_bin);
        self.add_node_args(&mut c, blocks, bootstrap, node_args);
        c
    }

    fn add_node_args(
        &self,
        c: &mut Command,
        blocks: &str,
        bootstrap: Option<&str>,
        node_args: &[String],
    ) {
        let opts = &self.opts;
        // The index of the node this command starts.
        let i = self.nodes.len();
        c.args(["--model", &opts.model, "--blocks", blocks])
            .args(["--backend", &opts.backend])
            .args(["--announce-ttl", &opts.announce_ttl.to_string()])
            .args(node_args);
        if opts.relayed.contains(&i) {
            c.arg("--no-listen");
        } else {
            c.args(["--listen", &opts.listen]);
        }
        if i == 0 && !opts.relayed.is_empty() {
            c.arg("--relay-server");
        }
        if let Some(k) = &opts.swarm_key {
            c.arg("--swarm-key").arg(k);
        }
        if let Some(b) = bootstrap {
            c.args(["--bootstrap", b]);
        }
    }

    /// Starts one more node serving `blocks` (bootstrapping from node 0's address) and waits
    /// until it is ready; returns its index. Its announcement reaches clients shortly after.
    pub fn add_node(&mut self, blocks: BlockRange) -> Result<usize> {
        let args = self.args_of(self.nodes.len());
        self.add_node_with(blocks, &args)
    }

    /// [`add_node`](Self::add_node) with its own extra flags instead of the testnet's (e.g. a
    /// different emulated battery).
    pub fn add_node_with(&mut self, blocks: BlockRange, node_args: &[String]) -> Result<usize> {
        blocks.within(self.n_layers)?;
        let i = self.nodes.len();
        let log = self.log_dir.join(format!("node-{i}.log"));
        let spec = format!("{}:{}", blocks.start, blocks.end);
        let mut cmd = self.node_command_with(&spec, Some(&self.bootstrap), node_args);
        self.put_behind_link(&mut cmd)?;
        let p = Managed::spawn(&format!("node {i}"), cmd, &log)?;
        self.nodes.push(NodeInfo {
            index: i,
            pid: p.pid(),
            peer: String::new(),
            blocks,
            listen: String::new(),
        });
        self.procs.push(Some(p));
        self.read_node(i, Duration::from_secs(300))?;
        Ok(i)
    }

    /// With emulated links, gives the node about to start (the next index) a proxy and makes
    /// it announce the proxy's address, so every connection to it crosses the link.
    fn put_behind_link(&mut self, cmd: &mut Command) -> Result<()> {
        let relayed = self.opts.relayed.contains(&self.nodes.len());
        let proxy = match &self.links {
            // A relayed node takes no connection: its links are those it dials and the relay's.
            Some(_) if relayed => None,
            Some(links) => {
                let proxy = links.proxy()?;
                let a = proxy.addr;
                cmd.args([
                    "--announce-addr",
                    &format!("/ip4/{}/tcp/{}", a.ip(), a.port()),
                ]);
                Some(proxy)
            }
            None => None,
        };
        self.proxies.push(proxy);
        Ok(())
    }

    /// Bytes that crossed node `i`'s emulated link so far (both directions; `None` without
    /// emulated links).
    pub fn link_bytes(&self, i: usize) -> Option<u64> {
        self.proxies.get(i)?.as_ref().map(LinkProxy::bytes)
    }

    fn read_node(&mut self, i: usize, deadline: Duration) -> Result<()> {
        let p = self.procs[i].as_mut().context("node already stopped")?;
        let peer = p.wait_line("PEER_ID=", deadline)?;
        if let Some(Some(proxy)) = self.proxies.get(i) {
            let bound = p.wait_line("BOUND=", deadline)?;
            let at = tcp_socket(&bound)
                .with_context(|| format!("node {i} listens on {bound}, not on TCP"))?;
            proxy.connect_to(at);
        }
        let listen = p.wait_line("LISTEN=", deadline)?;
        let ready = p.wait_line("READY", deadline)?;
        if i == 0 {
            self.bootstrap = listen.clone();
        }
        self.nodes[i].peer = peer;
        self.nodes[i].listen = listen;
        // `READY blocks=A-B ...`: the range it took (an auto node's own choice).
        if let Some(b) = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("blocks="))
            .and_then(|b| parse_split_list(b).ok())
            .and_then(|l| l.first().copied())
        {
            self.nodes[i].blocks = b;
        }
        Ok(())
    }

    /// Waits for a stdout line of node `i` starting with `prefix` (a hostile node's report);
    /// returns the rest of the line.
    pub fn wait_node_line(&mut self, i: usize, prefix: &str, deadline: Duration) -> Result<String> {
        let p = self.procs[i].as_mut().context("node already stopped")?;
        p.wait_line(prefix, deadline)
    }

    /// The process id of node `i` (for its memory in tests).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.get(i)?.as_ref().map(Managed::pid)
    }

    /// A client of this testnet's swarm (private when it is).
    pub async fn client(&self) -> Result<SwarmClient> {
        Ok(SwarmClient::connect_private(
            vec![self.bootstrap.parse()?],
            self.opts.swarm_key.as_deref(),
            Duration::from_secs(30),
        )
        .await?)
    }

    /// Waits until a client sees `n` live announcements of the model (bounded).
    async fn wait_for_peers(&self, n: usize, deadline: Duration) -> Result<()> {
        let client = self.client().await?;
        let until = std::time::Instant::now() + deadline;
        let outcome = loop {
            match client.discover(&self.model_id, self.n_layers).await {
                Ok(anns) if anns.len() >= n => break Ok(()),
                Ok(anns) if std::time::Instant::now() >= until => {
                    break Err(anyhow::anyhow!(
                        "after {deadline:?} a client sees {} of {n} nodes",
                        anns.len()
                    ));
                }
                Err(e) if std::time::Instant::now() >= until => break Err(e.into()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        client.stop().await;
        outcome
    }

    /// Stops node `i`: SIGTERM (clean leave) or SIGKILL (crash), and reaps it.
    pub fn stop_node(&mut self, i: usize, kill: bool) {
        if let Some(mut p) = self.procs.get_mut(i).and_then(Option::take) {
            if kill {
                p.signal(libc::SIGKILL);
            }
            p.stop(Duration::from_secs(3));
        }
    }

    /// `node I pid=P peer=ID blocks=A-B` (inclusive) per node.
    pub fn node_lines(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "node {} pid={} peer={} blocks={}",
                    n.index, n.pid, n.peer, n.blocks
                )
            })
            .collect()
    }

    /// Stops every node (also done on drop).
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut().filter_map(Option::take) {
            drop(p);
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        // Signal all first so the nodes leave in parallel, then reap each.
        for p in self.procs.iter().flatten() {
            p.signal(libc::SIGTERM);
        }
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parses() {
        assert_eq!("even".parse::<Split>().unwrap(), Split::Even);
        let Split::List(l) = "0-9,10-19,10-19,20-29".parse::<Split>().unwrap() else {
            panic!()
        };
        assert_eq!(l.len(), 4);
        assert_eq!(l[3], BlockRange { start: 20, end: 30 });
        assert!(
            "0-9,x"
                .parse::<Split>()
                .unwrap_err()
                .to_string()
                .contains("--split")
        );
    }

    #[test]
    fn even_ranges_cycle_when_there_are_more_nodes_than_blocks() {
        let r = even_ranges(30, 3).unwrap();
        assert_eq!(r[1], BlockRange { start: 10, end: 20 });
        let r = even_ranges(6, 100).unwrap();
        assert_eq!(r.len(), 100);
        assert_eq!(r[0], BlockRange { start: 0, end: 1 });
        assert_eq!(r[7], BlockRange { start: 1, end: 2 });
        assert!(r.iter().all(|b| b.end - b.start == 1));
    }

    #[test]
    fn byzantine_nodes_parse() {
        let b: Byzantine = "1:wrong-output:from=3".parse().unwrap();
        assert_eq!(
            b,
            Byzantine {
                node: 1,
                mode: "wrong-output:from=3".into()
            }
        );
        for bad in ["1", "x:wrong-output", "2:"] {
            assert!(bad.parse::<Byzantine>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slowdowns_parse_and_reach_their_node() {
        let s: Slowdown = "3:4".parse().unwrap();
        assert_eq!(
            s,
            Slowdown {
                node: 3,
                factor: 4.0
            }
        );
        assert_eq!("0:1.5".parse::<Slowdown>().unwrap().factor, 1.5);
        for bad in ["3", "x:2", "1:0.5", "1:nan", "1:inf", ":2"] {
            assert!(bad.parse::<Slowdown>().is_err(), "{bad}");
        }
        let mut args = vec![vec!["--x".to_string()]];
        let sd = ["2:4".parse().unwrap(), "1:2".parse().unwrap()];
        apply_slowdowns(&mut args, 4, &sd).unwrap();
        assert_eq!(args.len(), 4);
        assert_eq!(args[0], vec!["--x"]);
        assert_eq!(args[1], vec!["--slowdown", "2"]);
        assert_eq!(args[2], vec!["--slowdown", "4"]);
        assert!(args[3].is_empty());
        assert!(apply_slowdowns(&mut args, 4, &["4:2".parse().unwrap()]).is_err());
        let twice = ["1:2".parse().unwrap(), "1:3".parse().unwrap()];
        assert!(apply_slowdowns(&mut Vec::new(), 4, &twice).is_err());
    }
}
