//! The `flashstockd` binary started as an operator starts it, for the tests of this crate.
#![allow(dead_code)] // each test binary uses some of these

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `flashstockd` and where it can be reached.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub tokens: PathBuf,
    pub metrics: SocketAddr,
    /// The HTTP API's address, when started with `--http-listen`.
    pub http: Option<SocketAddr>,
}

/// A test that fails must not leave its server running (it would hold its ports and CPU
/// for every test after it).
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
    start_on(data_dir, "127.0.0.1:0", extra)
}

pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashstockd"))
        .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0", "--shards", "2"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flashstockd");
    // Logs go to stderr (at info here, on purpose): stdout carries only this one line.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "flashstockd listening on ADDR cert PATH tokens PATH metrics ADDR http ADDR"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["flashstockd", "listening", "on"], "{line}");
    Daemon {
        child,
        addr: words[3].parse().unwrap(),
        cert: PathBuf::from(words[5]),
        tokens: PathBuf::from(words[7]),
        metrics: words[9].parse().unwrap(),
        http: words[11].parse().ok(),
    }
}

pub fn token(tokens: &Path, role: &str) -> String {
    let text = std::fs::read_to_string(tokens).unwrap();
    let line = text.lines().find(|l| l.starts_with(role)).unwrap();
    line.split('"').nth(1).unwrap().to_owned()
}

/// Sends the signal named `name` (`TERM`, `KILL`, `STOP`, ...) to the daemon.
pub fn signal(daemon: &Daemon, name: &str) {
    let pid = daemon.child.id().to_string();
    let sent = Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

pub fn terminate(mut daemon: Daemon) {
    signal(&daemon, "TERM");
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "SIGTERM must end in a clean exit, got {status}");
}

pub fn scrape(daemon: &Daemon, path: &str) -> flashstock_observe::Fetched {
    flashstock_observe::fetch(daemon.metrics, path, std::time::Duration::from_secs(5)).unwrap()
}

/// The value of the series `series` (name and labels exactly as exported), if exported.
pub fn series_value(scrape: &str, series: &str) -> Option<f64> {
    let line = scrape.lines().find(|line| line.split_whitespace().next() == Some(series))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
