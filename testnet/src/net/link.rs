//! Wide-area links for local testnets: every TCP connection to a node passes through a proxy
//! that delays, throttles or cuts it, so a swarm on 127.0.0.1 sees what volunteers at home see
//! (20-150 ms apart, thin uplinks, connections that die).
//!
//! Each node gets one proxy in front of it and announces the proxy's address
//! (`swarm-node --announce-addr`), so whoever dials the node, a client opening a session, a node
//! forwarding to its next hop, a node bootstrapping, crosses exactly one emulated link, in both
//! directions. The kernel's netem would do this below TCP, but it is not available on the
//! machines the tests run on.
//!
//! Why not `noxious` (the Rust port of Toxiproxy), as the issue suggested: its latency toxic
//! sleeps the full latency for each chunk it reads, one chunk after another, so a message that
//! arrives in three reads takes three latencies and a busy link falls ever further behind: it
//! emulates a queue, not a link. Its last release (2021) also pins tokio-util 0.6 and rand 0.8.
//! [`DelayLine`] is the part that matters, pure and tested: a chunk comes out `latency +- jitter`
//! after it went in (plus its time on the wire at the link's bandwidth), in order, and chunks in
//! flight overlap as they do on a real link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What one emulated link does to the bytes crossing it, in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkProfile {
    /// One-way delay of every byte.
    pub latency: Duration,
    /// Each chunk's delay is drawn uniformly from `latency +- jitter` (never below zero; order
    /// is kept, as TCP keeps it).
    pub jitter: Duration,
    /// The link's rate in kilobits per second (`None`: unlimited).
    pub bandwidth_kbps: Option<u64>,
    /// The connection is cut (both directions, at once) once this many bytes have crossed it in
    /// one direction: a peer that drops off, a NAT that forgets.
    pub loss_after_bytes: Option<u64>,
}

impl LinkProfile {
    /// Whether the link changes nothing (no proxy needed).
    pub fn is_transparent(&self) -> bool {
        *self == LinkProfile::default()
    }

    /// How long `bytes` take to be put on the wire at the link's rate.
    pub fn transmission(&self, bytes: usize) -> Duration {
        match self.bandwidth_kbps {
            None | Some(0) => Duration::ZERO,
            // bits / (kbit/s) = milliseconds; in microseconds to keep small chunks' share.
            Some(kbps) => Duration::from_micros((bytes as u64 * 8 * 1000).div_ceil(kbps)),
        }
    }
}

/// When each chunk written into one direction of a link comes out at the far end. Times are
/// offsets from the link's start.
#[derive(Clone, Debug)]
pub struct DelayLine {
    profile: LinkProfile,
    /// When the previous chunk has been fully put on the wire.
    wire_free: Duration,
    /// When the previous chunk came out: nothing overtakes it.
    last_out: Duration,
}

impl DelayLine {
    pub fn new(profile: LinkProfile) -> Self {
        DelayLine {
            profile,
            wire_free: Duration::ZERO,
            last_out: Duration::ZERO,
        }
    }

    /// A chunk of `bytes` read at `at`: when it comes out. `jitter` is a draw in [-1, 1] that
    /// scales the profile's jitter.
    pub fn deliver_at(&mut self, at: Duration, bytes: usize, jitter: f64) -> Duration {
        let start = at.max(self.wire_free);
        self.wire_free = start + self.profile.transmission(bytes);
        let delay = self.profile.latency.as_secs_f64()
            + jitter.clamp(-1.0, 1.0) * self.profile.jitter.as_secs_f64();
        let out = (self.wire_free + Duration::from_secs_f64(delay.max(0.0))).max(self.last_out);
        self.last_out = out;
        out
    }
}

/// How many more bytes a direction may carry before the connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossBudget {
    left: Option<u64>,
}

impl LossBudget {
    pub fn new(loss_after_bytes: Option<u64>) -> Self {
        LossBudget {
            left: loss_after_bytes,
        }
    }

    /// Of a chunk of `bytes`, how many still pass, and whether the connection is cut after them.
    pub fn take(&mut self, bytes: usize) -> (usize, bool) {
        match &mut self.left {
            None => (bytes, false),
            Some(left) => {
                let pass = (bytes as u64).min(*left);
                *left -= pass;
                (pass as usize, *left == 0)
            }
        }
    }
}

impl LinkProfile {
    /// Refuses profiles that cannot be a link: a zero rate, a cut before the first byte, delays
    /// past any timeout.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.bandwidth_kbps != Some(0),
            "a link bandwidth of 0 kbit/s carries nothing"
        );
        anyhow::ensure!(
            self.loss_after_bytes != Some(0),
            "a link cut after 0 bytes never connects"
        );
        anyhow::ensure!(
            self.latency <= Duration::from_secs(10) && self.jitter <= Duration::from_secs(10),
            "link latency and jitter are limited to 10 s"
        );
        Ok(())
    }
}

/// The proxies of one testnet, run on a thread of their own (so they keep moving bytes whatever
/// the caller's runtime is doing, even while it blocks on a child process).
pub struct LinkEmulator {
    profile: LinkProfile,
    rt: Option<tokio::runtime::Runtime>,
    seed: AtomicU64,
}

/// One node's proxy: listens at [`LinkProxy::addr`], forwards to the node once
/// [`LinkProxy::connect_to`] has said where it listens.
pub struct LinkProxy {
    pub addr: SocketAddr,
    upstream: watch::Sender<Option<SocketAddr>>,
    bytes: Arc<AtomicU64>,
}

impl LinkProxy {
    /// Where the node behind this proxy listens: connections accepted before this wait for it.
    pub fn connect_to(&self, upstream: SocketAddr) {
        let _ = self.upstream.send(Some(upstream));
    }

    /// Bytes that crossed this proxy so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl LinkEmulator {
    pub fn new(profile: LinkProfile) -> Result<Self> {
        profile.check()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("link-emulator")
            .enable_all()
            .build()
            .context("starting the link emulator's runtime")?;
        Ok(LinkEmulator {
            profile,
            rt: Some(rt),
            seed: AtomicU64::new(0x5eed),
        })
    }

    pub fn profile(&self) -> LinkProfile {
        self.profile
    }

    /// A new proxy on 127.0.0.1 (a free port).
    pub fn proxy(&self) -> Result<LinkProxy> {
        let rt = self.rt.as_ref().context("link emulator stopped")?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding a link proxy on 127.0.0.1")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (upstream, rx) = watch::channel(None);
        let bytes = Arc::new(AtomicU64::new(0));
        let profile = self.profile;
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let counted = bytes.clone();
        rt.spawn(async move {
            match TcpListener::from_std(std_listener) {
                Ok(l) => accept_loop(l, rx, profile, seed, counted).await,
                Err(e) => tracing::warn!("link proxy {addr}: {e}"),
            }
        });
        Ok(LinkProxy {
            addr,
            upstream,
            bytes,
        })
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task would panic; nothing here needs a wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: watch::Receiver<Option<SocketAddr>>,
    profile: LinkProfile,
    seed: u64,
    bytes: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: back off rather than spin on the error.
                tracing::debug!("link proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        n += 1;
        let mut up = upstream.clone();
        let bytes = bytes.clone();
        let rng_seed = seed.wrapping_mul(1_000_003).wrapping_add(n);
        tokio::spawn(async move {
            let Ok(target) = up
                .wait_for(Option::is_some)
                .await
                .map(|a| a.expect("is_some"))
            else {
                return;
            };
            match TcpStream::connect(target).await {
                Ok(outbound) => relay(inbound, outbound, profile, rng_seed, bytes).await,
                Err(e) => tracing::debug!("link proxy to {target}: {e}"),
            }
        });
    }
}

/// One connection through the link: both directions until both end, or until one is cut.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    profile: LinkProfile,
    seed: u64,
    bytes: Arc<AtomicU64>,
) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let start = Instant::now();
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let to_node = direction(in_r, out_w, profile, start, seed, bytes.clone());
    let from_node = direction(out_r, in_w, profile, start, seed ^ 0x9e37, bytes);
    tokio::pin!(to_node, from_node);
    // A cut direction drops the whole connection (returning drops every half); an ended one
    // lets the other finish.
    tokio::select! {
        cut = &mut to_node => if !cut { from_node.await; },
        cut = &mut from_node => if !cut { to_node.await; },
    }
}

/// Reads in flight on one direction of a link (each up to 64 KiB).
const IN_FLIGHT_CHUNKS: usize = 4096;

/// Carries one direction; returns whether the connection was cut (rather than ended).
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    profile: LinkProfile,
    start: Instant,
    seed: u64,
    bytes: Arc<AtomicU64>,
) -> bool {
    // The chunks in flight on the link; when it is full the reader stops reading, and TCP
    // pushes back on the sender as a full link would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let read = async move {
        let mut line = DelayLine::new(profile);
        let mut budget = LossBudget::new(profile.loss_after_bytes);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let (pass, cut) = budget.take(n);
            let draw = if profile.jitter.is_zero() {
                0.0
            } else {
                rng.random_range(-1.0..=1.0)
            };
            let out = line.deliver_at(start.elapsed(), pass, draw);
            if tx.send((start + out, buf[..pass].to_vec())).await.is_err() {
                return false;
            }
            if cut {
                return true;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // Counted before the write: the far end may act on the bytes before it returns.
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let (cut, ()) = tokio::join!(read, write);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_transparent_link_delivers_at_once() {
        let mut l = DelayLine::new(LinkProfile::default());
        assert_eq!(l.deliver_at(ms(5), 1000, 0.0), ms(5));
        assert_eq!(l.deliver_at(ms(6), 1, 0.7), ms(6));
        assert!(LinkProfile::default().is_transparent());
    }

    #[test]
    fn chunks_in_flight_overlap_instead_of_queueing_behind_each_others_latency() {
        let p = LinkProfile {
            latency: ms(30),
            ..LinkProfile::default()
        };
        let mut l = DelayLine::new(p);
        // Three reads of one message, 1 ms apart: out 30 ms after each, not 30, 60, 90.
        assert_eq!(l.deliver_at(ms(0), 100, 0.0), ms(30));
        assert_eq!(l.deliver_at(ms(1), 100, 0.0), ms(31));
        assert_eq!(l.deliver_at(ms(2), 100, 0.0), ms(32));
        assert_eq!(l.deliver_at(ms(500), 100, 0.0), ms(530));
    }

    #[test]
    fn bandwidth_puts_chunks_on_the_wire_one_after_another() {
        let p = LinkProfile {
            latency: ms(10),
            bandwidth_kbps: Some(80), // 10 bytes per millisecond
            ..LinkProfile::default()
        };
        assert_eq!(p.transmission(1000), ms(100));
        let mut l = DelayLine::new(p);
        assert_eq!(l.deliver_at(ms(0), 1000, 0.0), ms(110));
        // Sent while the first is still going out: waits for the wire.
        assert_eq!(l.deliver_at(ms(50), 500, 0.0), ms(160));
        // After the wire is free again: only its own time.
        assert_eq!(l.deliver_at(ms(1000), 10, 0.0), ms(1011));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_never_reorders() {
        let p = LinkProfile {
            latency: ms(30),
            jitter: ms(10),
            ..LinkProfile::default()
        };
        let mut l = DelayLine::new(p);
        assert_eq!(l.deliver_at(ms(0), 1, 1.0), ms(40));
        // Drawn to come out at 21 ms, but the one before comes out at 40: it waits.
        assert_eq!(l.deliver_at(ms(1), 1, -1.0), ms(40));
        assert_eq!(l.deliver_at(ms(100), 1, -1.0), ms(120));
        assert_eq!(l.deliver_at(ms(200), 1, 5.0), ms(240)); // clamped draw
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut prev = Duration::ZERO;
        for i in 0..1000u64 {
            let at = ms(300 + 3 * i);
            let out = l.deliver_at(at, 1, rng.random_range(-1.0..=1.0));
            assert!(out >= prev && out >= at + ms(20) && out <= at + ms(40) + ms(20));
            prev = out;
        }
        let wide = LinkProfile {
            latency: ms(5),
            jitter: ms(10),
            ..LinkProfile::default()
        };
        assert_eq!(DelayLine::new(wide).deliver_at(ms(7), 1, -1.0), ms(7));
    }

    #[test]
    fn a_loss_budget_cuts_after_exactly_its_bytes() {
        let mut b = LossBudget::new(Some(100));
        assert_eq!(b.take(60), (60, false));
        assert_eq!(b.take(60), (40, true));
        let mut open = LossBudget::new(None);
        assert_eq!(open.take(1 << 20), (1 << 20, false));
    }

    #[test]
    fn absurd_profiles_are_refused() {
        assert!(LinkProfile::default().check().is_ok());
        for bad in [
            LinkProfile {
                bandwidth_kbps: Some(0),
                ..LinkProfile::default()
            },
            LinkProfile {
                loss_after_bytes: Some(0),
                ..LinkProfile::default()
            },
            LinkProfile {
                latency: ms(20_000),
                ..LinkProfile::default()
            },
            LinkProfile {
                jitter: ms(20_000),
                ..LinkProfile::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_proxy_carries_bytes_both_ways_with_its_latency_and_cuts_on_loss() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let echo_addr = echo.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = echo.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            let links = LinkEmulator::new(LinkProfile {
                latency: ms(40),
                loss_after_bytes: Some(10),
                ..LinkProfile::default()
            })
            .unwrap();
            let proxy = links.proxy().unwrap();
            // A connection made before the node is known waits for it.
            let mut c = TcpStream::connect(proxy.addr).await.unwrap();
            proxy.connect_to(echo_addr);
            let t = std::time::Instant::now();
            c.write_all(b"hello").await.unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            // Two crossings of a 40 ms link.
            assert!(t.elapsed() >= ms(80), "{:?}", t.elapsed());
            assert_eq!(proxy.bytes(), 10);
            // The link carries 10 bytes each way, then is cut: 5 more reach the echo, and the
            // connection is gone before its answer can come back.
            c.write_all(b"world!!").await.unwrap();
            let mut rest = Vec::new();
            let end = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest));
            assert!(end.await.is_ok(), "the cut connection stayed open");
            assert!(rest.is_empty(), "{rest:?}");
            drop(links);
        });
    }
}
