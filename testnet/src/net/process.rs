//! Child processes that are always stopped: [`Managed`] sends SIGTERM on drop, waits a bounded
//! time for a clean exit, then SIGKILLs. Stdout lines are read on a thread into a channel so a
//! caller can wait for a line with a deadline; stderr goes to a log file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Finds a workspace binary: in `$SUNSWARM_BIN_DIR` when set (e.g. release binaries driven by
/// debug-built tests, for benchmarks), else next to the current executable (or one directory
/// up, for test executables in `target/<profile>/deps`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SUNSWARM_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        anyhow::ensure!(
            p.is_file(),
            "SUNSWARM_BIN_DIR names no {name} binary: {}",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "cannot find the {name} binary next to {}: build it first (cargo build -p sunswarm-node -p sunswarm-client)",
        exe.display()
    )
}

/// A child process that is stopped when dropped.
pub struct Managed {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    name: String,
}

impl Managed {
    /// Starts `cmd` with stdout piped and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let out = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Managed {
            child,
            lines,
            log: log.to_path_buf(),
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of the line.
    pub fn wait_line(&mut self, prefix: &str, deadline: Duration) -> Result<String> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    anyhow::bail!(
                        "{} printed no {prefix:?} line within {deadline:?} (exit status {status:?}); log {}:\n{}",
                        self.name,
                        self.log.display(),
                        tail(&self.log, 20)
                    );
                }
            }
        }
    }

    /// Sends a signal (SIGTERM for a clean leave, SIGKILL for a crash).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL; always reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited() {
            return;
        }
        self.signal(libc::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
