//! The HTTP/JSON API, for order services not written in Rust: the same calls as the QUIC
//! protocol (reserve, cart reserve, confirm, cancel, return, queries, and setting stock),
//! the same bearer tokens and roles, the same idempotency keys (`Idempotency-Key`, hashed as
//! the Rust client hashes its keys), and the same outcome names. Off by default
//! (`http_listen`).
//!
//! - [`json`]: the bodies and the answers, pure mappings to and from the protocol.
//! - [`routes`]: which method and path is which call, and each call's steps
//!   (authenticate, read, check, submit, answer); the OpenAPI document is generated from
//!   the routes' annotations.
//! - [`coalesce`]: concurrent calls coalesced into shard batches.
//!
//! HTTP/1.1 with keep-alive (hyper). What one peer can make the server hold is bounded by
//! [`HttpApiLimits`]: connections, the bytes of a request head and of a body, and the time
//! a request may take to arrive. One call is in flight per connection (HTTP/1.1 answers in
//! order), so calls in flight are bounded by the connection limit.

pub mod coalesce;
pub mod json;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::net::gates::Gates;
use crate::net::SharedAuth;
use crate::ServerError;
use flashstock_runtime::Handle;

pub use coalesce::Coalescer;

/// The bounds of the HTTP API, each on what a peer can make the server hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpApiLimits {
    /// Connections served at once; more are closed as they are accepted.
    pub connections_max: usize,
    /// The largest request body read, in bytes; a larger one is answered 413 unread.
    pub body_bytes_max: usize,
    /// How long a request's head and body may take to arrive, and an idle keep-alive
    /// connection may stay open, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long a shutdown waits for calls in flight.
    pub drain_timeout_ms: u64,
}

/// The largest request head read, in bytes: hyper's smallest read buffer, ample for a bearer
/// token and a 256-byte idempotency key.
pub const HEAD_BYTES_MAX: usize = 8_192;

impl Default for HttpApiLimits {
    fn default() -> Self {
        HttpApiLimits {
            connections_max: 1_024,
            // A 16-line cart is ~700 bytes of JSON.
            body_bytes_max: 16_384,
            request_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
        }
    }
}

/// Everything a call needs, shared by every connection.
#[derive(Debug)]
pub struct Api {
    coalescer: Coalescer,
    auth: SharedAuth,
    gates: Gates,
    limits: HttpApiLimits,
    counters: crate::metrics::RequestCounters,
    responses: ResponseCounters,
    /// Request ids of calls with no `Idempotency-Key`: a random prefix and a counter, as the
    /// Rust client makes them.
    id_prefix: u64,
    id_counter: AtomicU64,
}

impl Api {
    /// The API over `handle`, checking credentials with `auth`, and slot ownership and
    /// reserve rates with `gates` (both shared with the QUIC listener, so a reload, a new
    /// limit or a new map holds for both).
    pub fn new(
        handle: Handle,
        auth: SharedAuth,
        gates: impl Into<Gates>,
        limits: HttpApiLimits,
    ) -> Result<Api, ServerError> {
        let id_prefix = u64::from_le_bytes(crate::net::secrets::random_bytes::<8>()?);
        Ok(Api {
            coalescer: Coalescer::start(handle, limits.connections_max),
            auth,
            gates: gates.into(),
            limits,
            counters: crate::metrics::RequestCounters::default(),
            responses: ResponseCounters::new(),
            id_prefix,
            id_counter: AtomicU64::new(0),
        })
    }

    /// The coalescer's figures.
    pub fn coalescer(&self) -> &Coalescer {
        &self.coalescer
    }

    fn fresh_request_id(&self) -> flashstock_engine::RequestId {
        let counter = self.id_counter.fetch_add(1, Ordering::Relaxed);
        flashstock_engine::RequestId((u128::from(self.id_prefix) << 64) | u128::from(counter))
    }
}

/// `flashstock_http_responses_total`'s handles for the statuses the API answers, looked up
/// once rather than per call (a labelled lookup hashes and allocates).
#[derive(Debug)]
struct ResponseCounters(Vec<(hyper::StatusCode, metrics::Counter)>);

impl ResponseCounters {
    fn new() -> ResponseCounters {
        let statuses = [200, 400, 401, 403, 404, 405, 408, 409, 413, 429, 503];
        let counters = statuses.into_iter().map(|code| {
            let status = hyper::StatusCode::from_u16(code).expect("a status");
            let name = crate::metrics::HTTP_RESPONSES_TOTAL;
            (status, metrics::counter!(name, "status" => status.as_str().to_owned()))
        });
        ResponseCounters(counters.collect())
    }

    fn count(&self, status: hyper::StatusCode) {
        match self.0.iter().find(|(known, _)| *known == status) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let name = crate::metrics::HTTP_RESPONSES_TOTAL;
                metrics::counter!(name, "status" => status.as_str().to_owned()).increment(1);
            }
        }
    }
}

/// Connections the kernel may hold accepted-but-not-yet-taken: std's 128 dropped the SYNs of
/// 500 callers connecting at once, and each dropped SYN cost its caller a 1 s retransmit (the
/// 1.03 s maximum of a 500-caller soak). The kernel caps it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4_096;

/// Binds the API's address; separate from [`serve`] so that a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind = || {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_BACKLOG)
    };
    bind().map_err(|source| ServerError::Bind { addr, source })
}

/// Serves the API on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the call it is answering (up to `drain_timeout_ms`), and returns.
pub async fn serve(listener: TcpListener, api: Arc<Api>, shutdown: impl Future<Output = ()>) {
    let limits = api.limits;
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = flashstock_observe::accept(&listener, "HTTP API") => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "HTTP API connection limit reached; closed");
            metrics::counter!(crate::metrics::HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (api, stopping) = (api.clone(), stopping.clone());
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, api, stopping).await;
        });
    }
    let _ = stop.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(limits.drain_timeout_ms), drain).await.is_err() {
        tracing::warn!("HTTP API connections still busy after the drain timeout; closing them");
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    api: Arc<Api>,
    mut stopping: watch::Receiver<bool>,
) {
    let timeout = Duration::from_millis(api.limits.request_timeout_ms);
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(routes::respond(&api, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Also bounds an idle keep-alive connection: the next head must start arriving.
        .header_read_timeout(timeout)
        .max_buf_size(HEAD_BYTES_MAX)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            // Finish the call in flight, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = served {
        tracing::debug!(%peer, %err, "HTTP API connection ended");
    }
}
