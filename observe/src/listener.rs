//! The observation listener: plain HTTP/1.1, `GET` only, one request per connection.
//!
//! - `/metrics`: every metric in Prometheus' text format;
//! - `/livez`: 200 while the process answers at all;
//! - `/readyz`: 200 when every [`Health`] check passes, else 503; the body lists each check
//!   (`[+]wal ok`, `[-]recovery failed: recovering`).
//!
//! It listens on loopback by default and needs no credentials, so whatever reaches it is
//! bounded: [`HttpLimits`] caps connections, the bytes of a request head and the time a
//! connection may take.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::{Health, ObserveError};

/// What one unauthenticated peer of the listener can make the process hold.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; more are closed on accept.
    pub connections_max: usize,
    /// The largest request head read, in bytes (hyper's smallest allowed buffer).
    pub head_bytes_max: usize,
    /// How long a connection may take from accept to the end of its response.
    pub connection_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { connections_max: 64, head_bytes_max: 8_192, connection_timeout_ms: 5_000 }
    }
}

/// What the listener serves.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The process's metrics.
    pub metrics: PrometheusHandle,
    /// The process's readiness.
    pub health: Arc<Health>,
}

/// Binds `addr` for [`serve`]; separate, so that a process can fail on a taken port before it
/// starts anything else, and report the bound port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ObserveError> {
    TcpListener::bind(addr).await.map_err(|source| ObserveError::Bind { addr, source })
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    observed: Observed,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, "metrics listener") => accepted,
            () = &mut shutdown => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "metrics listener full; connection closed");
            continue;
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&observed, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(limits.connection_timeout_ms))
                .max_buf_size(limits.head_bytes_max)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let timeout = Duration::from_millis(limits.connection_timeout_ms);
            match tokio::time::timeout(timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%peer, %err, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

/// The next connection of `listener`. A failed accept (out of file descriptors, say) is
/// logged as `what`'s and retried after a pause, so the listener serves again once some are
/// back.
pub async fn accept(listener: &TcpListener, what: &str) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(%err, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn respond(observed: &Observed, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, observed.metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let checks = observed.health.checks();
            let ready = checks.iter().all(|check| check.result.is_ok());
            let mut body = String::new();
            for check in &checks {
                match &check.result {
                    Ok(()) => body.push_str(&format!("[+]{} ok\n", check.name)),
                    Err(reason) => body.push_str(&format!("[-]{} failed: {reason}\n", check.name)),
                }
            }
            body.push_str(if ready { "ready\n" } else { "not ready\n" });
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, body)
        }
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics, /livez, /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// A running listener; dropping it stops the listener.
#[derive(Debug)]
pub struct Listening {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Listening {
    /// Completes once the listener is told to stop (for tasks that should stop with it).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Installs the recorder, binds `addr` and serves it in a task of its own, with the default
/// [`HttpLimits`]: what a process does at start. `/readyz` answers from `health`.
pub async fn start(addr: SocketAddr, health: Arc<Health>) -> Result<Listening, ObserveError> {
    let metrics = crate::install()?;
    let listener = bind(addr).await?;
    let bound = listener.local_addr().map_err(|source| ObserveError::Bind { addr, source })?;
    let stop = tokio::sync::watch::Sender::new(false);
    let mut stopped = stop.subscribe();
    let observed = Observed { metrics, health };
    tokio::spawn(serve(listener, observed, HttpLimits::default(), async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    Ok(Listening { addr: bound, stop })
}
