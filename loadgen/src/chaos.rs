//! The chaos rehearsal: a sale run while the server (and now and then the order writer) is
//! killed with SIGKILL and restarted, then audited like any other run, with the order
//! database's rows checked against the units sold.
//!
//! It starts `flashstockd` and `order-writer` as child processes on data directories of its
//! own, runs the load through the client library (which retries with the same request ids,
//! so an answer lost to a kill is either retried or counted as unknown), and every
//! `kill_every` kills the server, restarts it on the same data directory and address, and
//! measures how soon clients are served again:
//! - `restart_ms`: from the kill to the new server's listening line (recovery included);
//! - `first_answer_ms`: from that line to the first call answered to a client that was
//!   connected before the kill (the default client configuration);
//! - `resubscribed_ms`: from that line to the order writer's next subscription.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig, ClientTls, ServerFiles};
use flashstock_engine::SkuId;
use flashstock_protocol::Role;

use crate::run::RunConfig;
use crate::scenario::Scenario;
use crate::target::LoadError;
use crate::{execute, Finished, LoadOptions, TargetSpec};

/// How a chaos rehearsal runs.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `flashstockd` binary.
    pub server_bin: PathBuf,
    /// The `order-writer` binary.
    pub writer_bin: PathBuf,
    /// Where the server's and the writer's data directories and logs go.
    pub work_dir: PathBuf,
    /// Where the server listens (the same address after every restart).
    pub listen: SocketAddr,
    /// Kills of the server.
    pub cycles: u32,
    /// Time between kills.
    pub kill_every: Duration,
    /// Every this many cycles the order writer is killed with the server (0: never).
    pub kill_writer_every: u32,
    /// The load.
    pub scenario: Scenario,
    /// How the load is driven; its duration is set to outlast the kills.
    pub run: RunConfig,
    /// How long holds last.
    pub ttl_ms: u64,
    /// QUIC connections of the load.
    pub connections: usize,
}

/// What one kill cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// Whether the order writer was killed too.
    pub writer_killed: bool,
    /// Kill to the new server listening.
    pub restart_ms: u64,
    /// New server listening to a connected client's first answered call.
    pub first_answer_ms: Option<u64>,
    /// New server listening to the order writer's next subscription.
    pub resubscribed_ms: Option<u64>,
}

/// A finished rehearsal.
#[derive(Debug)]
pub struct ChaosReport {
    /// Each kill.
    pub cycles: Vec<Cycle>,
    /// The run and its audit (order rows included).
    pub finished: Finished,
}

/// Runs the rehearsal. The children are killed when it returns, whatever happened.
pub async fn chaos(options: ChaosOptions) -> Result<ChaosReport, LoadError> {
    let server_dir = options.work_dir.join("server");
    let writer_dir = options.work_dir.join("writer");
    std::fs::create_dir_all(&writer_dir).map_err(|err| file_error(&writer_dir, &err))?;
    // Starting a server waits for its listening line: off the async workers.
    let start_server = || tokio::task::block_in_place(|| Server::start(&options, &server_dir));
    let mut server = start_server()?;
    // Every writer process's subscriptions, in one timeline across restarts.
    let subscribed = Arc::new(Mutex::new(Vec::new()));
    let mut writer = Writer::start(&options, &server_dir, &writer_dir, &subscribed)?;
    let files = ServerFiles::new(&server_dir);
    let tls = files.tls(None)?;
    let admin_token = files.token(None, Role::Admin, None)?;
    let service_token = files.token(None, Role::Service, None)?;
    let probe = Probe::start(options.listen, &tls, &admin_token).await?;
    let orders_db = format!("sqlite:{}", writer_dir.join("orders.db").display());
    let mut run = options.run.clone();
    // The load outlasts the last restart by a few seconds, so every cycle is under load.
    run.duration = Some(options.kill_every * (options.cycles + 1) + Duration::from_secs(2));
    let load = tokio::spawn(execute(LoadOptions {
        target: TargetSpec::Flashstock {
            addr: options.listen,
            server_name: "localhost".into(),
            tls,
            admin_token,
            service_token,
            connections: options.connections,
            calls: crate::CallMode::Frames,
            http_addr: ([127, 0, 0, 1], 0).into(),
            cluster: None,
        },
        scenario: options.scenario.clone(),
        run,
        ttl_ms: options.ttl_ms,
        orders_db: vec![orders_db],
    }));
    let mut restarts = Vec::new();
    // Kills on a fixed schedule from the start, so restart times do not push the last kill
    // past the end of the load (and into its audit).
    let started = tokio::time::Instant::now();
    for cycle in 1..=options.cycles {
        tokio::time::sleep_until(started + options.kill_every * cycle).await;
        let kill_writer = options.kill_writer_every > 0 && cycle % options.kill_writer_every == 0;
        let killed_at = Instant::now();
        server.kill();
        if kill_writer {
            writer.kill();
        }
        server = start_server()?;
        if kill_writer {
            writer = Writer::start(&options, &server_dir, &writer_dir, &subscribed)?;
        }
        restarts.push((kill_writer, killed_at, server.listening_at));
    }
    if load.is_finished() {
        let detail = "the load ended before the last restart: raise --kill-every-s";
        return Err(LoadError::Setup(detail.to_owned()));
    }
    let finished = load.await.map_err(|err| LoadError::Setup(err.to_string()))??;
    let cycles = restarts
        .into_iter()
        .map(|(writer_killed, killed_at, listening_at)| Cycle {
            writer_killed,
            restart_ms: (listening_at - killed_at).as_millis() as u64,
            first_answer_ms: probe.first_after(listening_at),
            resubscribed_ms: first_after(&subscribed.lock().unwrap(), listening_at),
        })
        .collect();
    probe.stop();
    server.terminate();
    writer.terminate();
    Ok(ChaosReport { cycles, finished })
}

/// The milliseconds from `after` to the first of `instants` at or after it.
fn first_after(instants: &[Instant], after: Instant) -> Option<u64> {
    let first = instants.iter().find(|at| **at >= after)?;
    Some((*first - after).as_millis() as u64)
}

fn file_error(path: &Path, err: &std::io::Error) -> LoadError {
    LoadError::File { path: path.to_path_buf(), detail: err.to_string() }
}

/// A `flashstockd` child; its log goes to `<work dir>/server.log`.
struct Server {
    child: Child,
    listening_at: Instant,
}

impl Server {
    fn start(options: &ChaosOptions, data_dir: &Path) -> Result<Server, LoadError> {
        let log = log_file(&options.work_dir.join("server.log"))?;
        let mut child = Command::new(&options.server_bin)
            .arg("--listen")
            .arg(options.listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            // Any free port: rehearsals may run beside a server that has the default one.
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|err| file_error(&options.server_bin, &err))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).map_err(|err| file_error(data_dir, &err))?;
        if !line.starts_with("flashstockd listening on") {
            let _ = child.kill();
            let detail = format!("flashstockd did not start (see server.log): {line:?}");
            return Err(LoadError::Setup(detail));
        }
        Ok(Server { child, listening_at: Instant::now() })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        terminate(&mut self.child);
    }
}

/// An `order-writer` child; each "subscribed" line of its log is timed into `subscribed`.
struct Writer {
    child: Child,
}

impl Writer {
    fn start(
        options: &ChaosOptions,
        server_dir: &Path,
        data_dir: &Path,
        subscribed: &Arc<Mutex<Vec<Instant>>>,
    ) -> Result<Writer, LoadError> {
        let mut log = log_file(&options.work_dir.join("writer.log"))?;
        let mut child = Command::new(&options.writer_bin)
            .arg("--server")
            .arg(options.listen.to_string())
            .arg("--server-data-dir")
            .arg(server_dir)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| file_error(&options.writer_bin, &err))?;
        let stderr = child.stderr.take().expect("piped");
        let times = subscribed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" subscribed") {
                    times.lock().unwrap().push(Instant::now());
                }
                let _ = writeln!(log, "{line}");
            }
        });
        Ok(Writer { child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        terminate(&mut self.child);
    }
}

fn log_file(path: &Path) -> Result<std::fs::File, LoadError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| file_error(path, &err))
}

/// SIGTERM, then a wait; SIGKILL if it does not stop within 10 s.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A client connected before the kills that asks the server something every 10 ms, with the
/// client library's default settings, and notes when it was answered.
struct Probe {
    answered: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn start(addr: SocketAddr, tls: &ClientTls, token: &str) -> Result<Probe, LoadError> {
        let client =
            Client::connect(ClientConfig::new(addr, "localhost", tls.clone(), Some(token))).await?;
        let answered = Arc::new(Mutex::new(Vec::new()));
        let times = answered.clone();
        let task = tokio::spawn(async move {
            loop {
                if client.query_sku(SkuId(0)).await.is_ok() {
                    times.lock().unwrap().push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Ok(Probe { answered, task })
    }

    fn first_after(&self, at: Instant) -> Option<u64> {
        first_after(&self.answered.lock().unwrap(), at)
    }

    fn stop(self) {
        self.task.abort();
    }
}
