//! The QUIC listener and its sessions: one task per connection, and one per stream (see
//! `stream`: no task per frame). The network code only moves bytes: what a peer may send, and
//! when, is decided by the connection's sans-IO rules,
//! `flashstock_protocol::session::ServerSession`, which every stream's frames go through
//! (`Hello` first, small and in time; roles; one use per stream).
//!
//! After `Welcome` a stream carries pipelined `Requests` frames: each batch is submitted to the
//! shards whole as soon as it is read, and its replies are written back, by the stream's own
//! task, as one `Replies` frame with the same correlation id; batches finish in any order. A
//! per-connection semaphore caps requests in flight, from the frame being read until its
//! replies are written: when it is exhausted the stream is simply not read, and QUIC flow
//! control pushes back on the client.
//!
//! A stream whose first message is `Subscribe` carries a subscription to the
//! committed-deduction stream instead (see `subscription`); the consumer's `Ack`s arrive on it.
//!
//! Bad input closes only the connection that sent it, after an `Error` frame saying why, and
//! with the same reason as the QUIC application close code.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashstock_protocol::session::{Close, Grant, ServerLimits, ServerSession};
use flashstock_protocol::{
    AdminReply, AdminRequest, ConsumerInfo, Message, Refusal, Reply, Request, Role,
};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::net::auth::SharedAuth;
use crate::net::gates::Gates;
use crate::net::rate::RateGate;
use flashstock_runtime::{Handle, RuntimeError};

mod stream;

/// Limits of the network layer. Each is a bound on what a peer can make the server hold.
#[derive(Clone, Copy, Debug)]
pub struct NetLimits {
    /// The largest frame payload accepted once authenticated (before, [`HELLO_BYTES_MAX`]).
    pub frame_bytes_max: u32,
    /// Connections served at once, handshakes in progress included; more are refused. From
    /// half of it on, a new connection must first prove its address (QUIC Retry).
    pub connections_max: usize,
    /// Connections served at once from one IP address.
    pub connections_per_address_max: usize,
    /// Requests one connection may have taken and not yet answered onto the wire. A client
    /// that does not read its replies stops being read once it reaches this.
    pub in_flight_max: u32,
    /// Streams one authenticated connection may have open (before `Welcome`: one).
    pub streams_max: u32,
    /// Bytes an authenticated connection may send beyond what the server has read, over all
    /// its streams (QUIC connection flow control; before `Welcome`, one `Hello`'s worth).
    pub connection_receive_window_bytes: u32,
    /// How long a new connection has to authenticate before it is closed `Unauthenticated`.
    pub hello_timeout_ms: u64,
    /// How long a shutdown waits for sessions to finish what they took.
    pub drain_timeout_ms: u64,
    /// The largest window of unacknowledged events a subscription may ask for.
    pub stream_window_events_max: u32,
}

/// Default of [`NetLimits::hello_timeout_ms`].
pub const HELLO_TIMEOUT_MS_DEFAULT: u64 = 2_000;

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            frame_bytes_max: flashstock_protocol::FRAME_BYTES_MAX_DEFAULT,
            connections_max: 1_024,
            connections_per_address_max: 256,
            in_flight_max: 16_384,
            streams_max: 16,
            connection_receive_window_bytes: 16 << 20,
            hello_timeout_ms: HELLO_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: 10_000,
            stream_window_events_max: 65_536,
        }
    }
}

/// What the network layer holds right now, for operators and for the tests that prove each
/// bound: every figure here must stay flat under sustained load.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connections accepted and not yet ended (handshakes in progress included).
    pub connections_open: AtomicUsize,
    /// Connections refused by `connections_max` or `connections_per_address_max`.
    pub connections_refused: AtomicUsize,
    /// Request batches being answered: taken off the wire and submitted, their replies not
    /// yet queued for writing. Each holds memory until then, so this must track requests in
    /// flight, not frames ever received.
    pub batches_held: AtomicUsize,
    /// Requests taken off the wire whose replies are not yet written to QUIC: bounded by
    /// `in_flight_max` per connection, however slowly a client reads.
    pub requests_unwritten: AtomicUsize,
    /// Connections closed for not authenticating within `hello_timeout_ms`.
    pub hello_timeouts: AtomicUsize,
}

impl NetStats {
    /// Request batches being answered.
    pub fn batches_held(&self) -> usize {
        self.batches_held.load(Ordering::Acquire)
    }

    /// Requests taken whose replies are not yet written.
    pub fn requests_unwritten(&self) -> usize {
        self.requests_unwritten.load(Ordering::Acquire)
    }

    /// Connections refused by a connection limit.
    pub fn connections_refused(&self) -> usize {
        self.connections_refused.load(Ordering::Acquire)
    }

    /// Connections closed by the Hello deadline.
    pub fn hello_timeouts(&self) -> usize {
        self.hello_timeouts.load(Ordering::Acquire)
    }
}

/// Requests of one batch counted in flight, from being taken off the wire until their replies
/// are written: the permits return to the connection, the count to the stats, when dropped.
pub(crate) struct InFlight {
    _permit: OwnedSemaphorePermit,
    requests: usize,
    stats: Arc<NetStats>,
    /// When the frame was read: its latency ends when its replies are written.
    read_at: std::time::Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.requests_unwritten.fetch_sub(self.requests, Ordering::AcqRel);
    }
}

struct Shared {
    handle: Handle,
    auth: SharedAuth,
    limits: NetLimits,
    stats: Arc<NetStats>,
    /// Slot ownership and reserve rate limits, shared by every connection (and the HTTP API).
    gates: Gates,
    /// `flashstock_requests_total`'s handles.
    counters: crate::metrics::RequestCounters,
    /// Connections open per source address (only addresses with one or more).
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    stopping: watch::Receiver<bool>,
}

/// Why [`serve`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `shutdown` completed.
    Shutdown,
    /// The write-ahead log failed: nothing more can be acknowledged, so the server stops
    /// rather than answer `Unavailable` for ever; restarting recovers what is durable.
    WalFailed {
        /// The log's error.
        reason: String,
    },
}

/// Serves `endpoint` until `shutdown` completes or the log fails; then stops accepting, lets
/// every session finish the requests it took (up to `drain_timeout_ms`; after a log failure
/// they are answered `Unavailable`), and closes the endpoint.
pub async fn serve(
    endpoint: quinn::Endpoint,
    handle: Handle,
    auth: impl Into<SharedAuth>,
    gates: impl Into<Gates>,
    limits: NetLimits,
    stats: Arc<NetStats>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let auth = auth.into();
    let gates = gates.into();
    let (stop, stopping) = watch::channel(false);
    let wal = handle.clone();
    let wal_failed = wal.wal_failed();
    let by_address = std::sync::Mutex::new(std::collections::HashMap::new());
    let counters = crate::metrics::RequestCounters::default();
    let shared =
        Arc::new(Shared { handle, auth, limits, stats, gates, counters, by_address, stopping });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown, wal_failed);
    let mut stopped = Stopped::Shutdown;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if let Some(count) = admit(incoming, &shared) {
                    connections.spawn(run_connection(count, shared.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
            reason = &mut wal_failed => {
                tracing::error!(%reason, "the write-ahead log failed: stopping (fail-stop)");
                stopped = Stopped::WalFailed { reason };
                break;
            }
        }
    }
    tracing::info!("shutting down: no new connections; draining sessions");
    endpoint.set_server_config(None);
    let _ = stop.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(limits.drain_timeout_ms), drain).await.is_err() {
        tracing::warn!("sessions still busy after the drain timeout; closing them");
        connections.abort_all();
    }
    endpoint.close(0u32.into(), b"server shutting down");
    endpoint.wait_idle().await;
    stopped
}

/// The reserve rate limits stored in the log's metadata, in force: what [`serve`] and the
/// HTTP API share.
pub async fn stored_rate_gate(handle: &Handle) -> RateGate {
    RateGate::new(&stored_rate_limits(handle).await)
}

/// The rate limits stored in the log's metadata (none when unreadable, loudly).
async fn stored_rate_limits(handle: &Handle) -> Vec<flashstock_protocol::RateLimitEntry> {
    let events = handle.events().clone();
    let key = crate::net::rate::RATE_LIMITS_KEY;
    let stored = tokio::task::spawn_blocking(move || events.read_meta(key)).await;
    match stored {
        Ok(Ok(None)) => Vec::new(),
        Ok(Ok(Some(bytes))) => crate::net::rate::decode_entries(&bytes).unwrap_or_else(|| {
            tracing::error!("the stored rate limits are unreadable; starting with none");
            Vec::new()
        }),
        Ok(Err(err)) => {
            tracing::error!(%err, "reading the stored rate limits failed; starting with none");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

struct Session {
    connection: quinn::Connection,
    /// The connection's rules (sans IO); every stream's frames go through them.
    rules: std::sync::Mutex<ServerSession>,
    /// The session clock's zero: the rules take time as milliseconds since.
    started: tokio::time::Instant,
    in_flight: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// The name the client gave in its `Hello`, for the audit log.
    client_name: std::sync::OnceLock<String>,
    /// Which credential authenticated the connection, for per-credential rate limits.
    credential: std::sync::OnceLock<u64>,
}

impl Session {
    fn rules(&self) -> std::sync::MutexGuard<'_, ServerSession> {
        self.rules.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

async fn run_connection(mut count: ConnectionCount, shared: Arc<Shared>) {
    let incoming = count.incoming.take().expect("an admitted connection");
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => {
            // Wrong ALPN, failed TLS handshake, a client that went away.
            tracing::info!(%remote, %err, "handshake failed");
            return;
        }
    };
    let limits = ServerLimits {
        frame_bytes_max: shared.limits.frame_bytes_max,
        in_flight_max: shared.limits.in_flight_max,
        hello_timeout_ms: shared.limits.hello_timeout_ms,
    };
    let in_flight = Arc::new(Semaphore::new(shared.limits.in_flight_max as usize));
    let rules = std::sync::Mutex::new(ServerSession::new(limits, 0));
    let started = tokio::time::Instant::now();
    let client_name = std::sync::OnceLock::new();
    let credential = std::sync::OnceLock::new();
    let session = Arc::new(Session {
        connection,
        rules,
        started,
        in_flight,
        shared,
        client_name,
        credential,
    });
    let mut streams = JoinSet::new();
    let mut stopping = session.shared.stopping.clone();
    loop {
        // Keep-alives and a trickle of bytes reset QUIC's idle timer; the Hello deadline they
        // cannot. Re-read every turn: once authenticated there is none.
        let deadline = session.rules().timeout_ms();
        let timer = async {
            match deadline {
                Some(ms) => tokio::time::sleep_until(started + Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stream = session.connection.accept_bi() => match stream {
                Ok((send, recv)) => { streams.spawn(stream::run_stream(session.clone(), send, recv)); }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = timer => {
                let timed_out = session.rules().handle_timeout(session.now_ms());
                if let Err(Close { code, detail }) = timed_out {
                    session.shared.stats.hello_timeouts.fetch_add(1, Ordering::AcqRel);
                    auth_failed("timeout");
                    tracing::info!(%remote, %detail, "closing connection");
                    session.connection.close(code.as_u32().into(), detail.as_bytes());
                    break;
                }
            }
            _ = stopping.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
    session.connection.close(0u32.into(), b"bye");
}

/// Decides whether a new connection is served: refused past `connections_max` in all or
/// `connections_per_address_max` from its address (a handshake in progress counts); asked to
/// prove its address with a QUIC Retry once the server is half full, so a flood of spoofed
/// source addresses cannot fill it. The count it returns is released when the connection ends.
fn admit(incoming: quinn::Incoming, shared: &Arc<Shared>) -> Option<ConnectionCount> {
    let (limits, remote) = (shared.limits, incoming.remote_address());
    let open = shared.stats.connections_open.load(Ordering::Acquire);
    if open >= limits.connections_max {
        tracing::warn!(%remote, "connection limit reached; refused");
        refused("connections_max");
        shared.stats.connections_refused.fetch_add(1, Ordering::AcqRel);
        incoming.refuse();
        return None;
    }
    if open >= limits.connections_max / 2 && !incoming.remote_address_validated() {
        // The client answers with the token and comes back as a validated Incoming.
        let _ = incoming.retry();
        return None;
    }
    let ip = remote.ip();
    let mut by_address = shared.by_address.lock().unwrap_or_else(|p| p.into_inner());
    let from_here = by_address.entry(ip).or_insert(0);
    if *from_here >= limits.connections_per_address_max {
        drop(by_address);
        tracing::warn!(%remote, "connection limit per address reached; refused");
        refused("connections_per_address_max");
        shared.stats.connections_refused.fetch_add(1, Ordering::AcqRel);
        incoming.refuse();
        return None;
    }
    *from_here += 1;
    shared.stats.connections_open.fetch_add(1, Ordering::AcqRel);
    Some(ConnectionCount { shared: shared.clone(), ip, incoming: Some(incoming) })
}

fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// One admitted connection's place in the counts, given back when it ends.
struct ConnectionCount {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
    incoming: Option<quinn::Incoming>,
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.shared.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
        let mut by_address = self.shared.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_address.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.ip);
            }
        }
    }
}

impl Session {
    /// Does an operation on the server itself, for an admin; anyone else is refused. Each is
    /// written to the log with the caller's identity, as an audit trail.
    async fn admin(&self, request: AdminRequest, role: Role) -> AdminReply {
        let remote = self.connection.remote_address();
        let client = self.client_name.get().map_or("", String::as_str);
        if role != Role::Admin {
            tracing::warn!(target: "flashstock::audit", %remote, client, ?role, ?request, "admin operation refused");
            return AdminReply::Refused(Refusal::PermissionDenied);
        }
        tracing::info!(target: "flashstock::audit", %remote, client, role = "admin", ?request, "admin operation");
        let operation = match &request {
            AdminRequest::ListConsumers => "list_consumers",
            AdminRequest::RemoveConsumer(_) => "remove_consumer",
            AdminRequest::ListSkus { .. } => "list_skus",
            AdminRequest::SetRateLimit { .. } => "set_rate_limit",
            AdminRequest::ListRateLimits => "list_rate_limits",
            AdminRequest::Slots { .. } => "slots",
            AdminRequest::ExportSlots { .. } => "export_slots",
            AdminRequest::ImportSlots { .. } => "import_slots",
            AdminRequest::SlotsStatus => "slots_status",
        };
        metrics::counter!(crate::metrics::ADMIN_OPERATIONS_TOTAL, "operation" => operation)
            .increment(1);
        match request {
            AdminRequest::ListSkus { after, limit } => {
                let limit = limit.clamp(1, flashstock_protocol::SKU_PAGE_MAX) as usize;
                match self.shared.handle.list_skus_page(after, limit).await {
                    Ok((skus, next_after)) => AdminReply::Skus { skus, next_after },
                    Err(err) => AdminReply::Refused(refusal_of(err)),
                }
            }
            AdminRequest::ListRateLimits => {
                AdminReply::RateLimits(self.shared.gates.rates.entries())
            }
            AdminRequest::SetRateLimit { sku, limit } => self.set_rate_limit(sku, limit).await,
            request @ (AdminRequest::Slots { .. }
            | AdminRequest::ExportSlots { .. }
            | AdminRequest::ImportSlots { .. }
            | AdminRequest::SlotsStatus) => {
                crate::net::slots::admin(&self.shared.handle, request).await
            }
            request => self.admin_consumers(request).await,
        }
    }

    /// Puts a limit in force, then stores every limit in the log's metadata.
    async fn set_rate_limit(
        &self,
        sku: Option<flashstock_engine::SkuId>,
        limit: flashstock_protocol::RateLimit,
    ) -> AdminReply {
        let entries = match self.shared.gates.rates.set(sku, limit) {
            Ok(entries) => entries,
            Err(err) => return AdminReply::Invalid { detail: err.to_string() },
        };
        let events = self.shared.handle.events().clone();
        let bytes = crate::net::rate::encode_entries(&entries);
        let key = crate::net::rate::RATE_LIMITS_KEY;
        match tokio::task::spawn_blocking(move || events.write_meta(key, &bytes)).await {
            Ok(Ok(())) => AdminReply::RateLimits(entries),
            Ok(Err(err)) => {
                tracing::error!(%err, "storing rate limits failed; in force until restart");
                AdminReply::Refused(Refusal::Unavailable)
            }
            Err(_) => AdminReply::Refused(Refusal::Unavailable),
        }
    }

    async fn admin_consumers(&self, request: AdminRequest) -> AdminReply {
        let consumers = self.shared.handle.events().consumers().clone();
        let done = tokio::task::spawn_blocking(move || match request {
            AdminRequest::ListConsumers => {
                let list = consumers.list().into_iter();
                let infos =
                    list.map(|(name, acked, subscribed)| ConsumerInfo { name, acked, subscribed });
                Ok(AdminReply::Consumers(infos.collect()))
            }
            AdminRequest::RemoveConsumer(name) => {
                consumers.remove(&name).map(|existed| AdminReply::ConsumerRemoved { existed })
            }
            other => unreachable!("{other:?} is answered by admin()"),
        });
        match done.await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                tracing::error!(%err, "admin operation failed");
                AdminReply::Refused(Refusal::Unavailable)
            }
            Err(_) => AdminReply::Refused(Refusal::Unavailable),
        }
    }

    /// Writes each admin command of a batch (stock, limits, windows) to the audit log, with
    /// who sent it and what it did. Reads and service calls are not audited.
    fn audit(&self, batch: &[Request], replies: &[Reply]) {
        let remote = self.connection.remote_address();
        let client = self.client_name.get().map_or("", String::as_str);
        for (request, reply) in batch.iter().zip(replies) {
            let Request::Apply(command) = request else { continue };
            if command.is_admin() {
                let outcome = crate::metrics::reply_outcome(reply);
                tracing::info!(target: "flashstock::audit", %remote, client, role = "admin", ?command, outcome, "admin command");
            }
        }
    }

    /// What a token or the handshake's client certificate grants, and a stable id of that
    /// credential (for per-credential rate limits). Sync: the peer identity is not `Send`,
    /// so it must not live across an await.
    fn authenticate(&self, token: Option<&str>) -> (Option<Grant>, u64) {
        let identity = self.connection.peer_identity();
        let chain = identity
            .as_ref()
            .and_then(|any| any.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>());
        let grant = self.shared.auth.current().authenticate(token, chain.map(Vec::as_slice));
        let leaf = chain.and_then(|chain| chain.first()).map(|cert| cert.as_ref());
        (grant, crate::net::auth::credential_id(token, leaf))
    }
}

pub(crate) fn auth_failed(reason: &'static str) {
    let name = crate::metrics::AUTHENTICATION_FAILURES_TOTAL;
    metrics::counter!(name, "reason" => reason).increment(1);
}

fn refusal(err: RuntimeError) -> Reply {
    Reply::Refused(refusal_of(err))
}

pub(crate) fn refusal_of(err: RuntimeError) -> Refusal {
    match err {
        RuntimeError::Overloaded { .. } => Refusal::Overloaded,
        RuntimeError::ShuttingDown => Refusal::ShuttingDown,
        RuntimeError::SlotMoving { slot } => Refusal::SlotMoving { slot },
        _ => Refusal::Unavailable,
    }
}

/// A frame to send: its correlation id and message, encoded by the stream's writer, and the
/// requests it answers, released once it is written.
pub(crate) type Outgoing = (u64, Message, Option<InFlight>);
