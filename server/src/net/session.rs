//! The QUIC listener and its sessions: one task per connection, one per stream.
//!
//! A connection authenticates once (`Hello` → `Welcome`) on any stream; after that every stream
//! carries pipelined `Requests` frames. Each batch is submitted to the shards whole, then its
//! replies are awaited and written back as one `Replies` frame with the same correlation id;
//! batches finish in any order. A per-connection semaphore caps requests in flight: when it is
//! exhausted the stream is simply not read, and QUIC flow control pushes back on the client.
//!
//! A stream whose first message is `Subscribe` carries a subscription to the
//! committed-deduction stream instead (see `subscription`); the consumer's `Ack`s arrive on it.
//!
//! Bad input closes only the connection that sent it, after an `Error` frame saying why, and
//! with the same reason as the QUIC application close code.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flashstock_protocol::{
    ConnectionError, Decoded, ErrorCode, Frame, FrameDecoder, FrameEncoder, FrameError, Message,
    Refusal, Reply, Request, Role, HELLO_BYTES_MAX, SUPPORTED_VERSIONS,
};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::net::auth::{permits, Authenticator, Grant};
use crate::{Answer, Handle, Item, RuntimeError};

/// Bytes read from a stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Encoded frames waiting to be written on one stream.
const WRITE_QUEUE_FRAMES: usize = 256;

/// Limits of the network layer. Each is a bound on what a peer can make the server hold.
#[derive(Clone, Copy, Debug)]
pub struct NetLimits {
    /// The largest frame payload accepted once authenticated (before, [`HELLO_BYTES_MAX`]).
    pub frame_bytes_max: u32,
    /// Connections served at once, handshakes in progress included; more are refused.
    pub connections_max: usize,
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
    /// Request-batch tasks spawned and not yet joined: each holds its task's memory until it
    /// is joined, so this must track requests in flight, not frames ever received.
    pub batch_tasks_held: AtomicUsize,
    /// Requests taken off the wire whose replies are not yet written to QUIC: bounded by
    /// `in_flight_max` per connection, however slowly a client reads.
    pub requests_unwritten: AtomicUsize,
    /// Connections closed for not authenticating within `hello_timeout_ms`.
    pub hello_timeouts: AtomicUsize,
}

impl NetStats {
    /// Request-batch tasks spawned and not yet joined.
    pub fn batch_tasks_held(&self) -> usize {
        self.batch_tasks_held.load(Ordering::Acquire)
    }

    /// Requests taken whose replies are not yet written.
    pub fn requests_unwritten(&self) -> usize {
        self.requests_unwritten.load(Ordering::Acquire)
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
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.requests_unwritten.fetch_sub(self.requests, Ordering::AcqRel);
    }
}

struct Shared {
    handle: Handle,
    auth: Authenticator,
    limits: NetLimits,
    stats: Arc<NetStats>,
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
    auth: Authenticator,
    limits: NetLimits,
    stats: Arc<NetStats>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let (stop, stopping) = watch::channel(false);
    let wal = handle.clone();
    let wal_failed = wal.wal_failed();
    let shared = Arc::new(Shared { handle, auth, limits, stats, stopping });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown, wal_failed);
    let mut stopped = Stopped::Shutdown;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if shared.stats.connections_open.load(Ordering::Acquire) >= limits.connections_max {
                    tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refused");
                    incoming.refuse();
                    continue;
                }
                shared.stats.connections_open.fetch_add(1, Ordering::AcqRel);
                connections.spawn(run_connection(incoming, shared.clone()));
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

struct Session {
    connection: quinn::Connection,
    /// Set by the Hello: who the peer is and what it may do.
    grant: OnceLock<Grant>,
    in_flight: Arc<Semaphore>,
    shared: Arc<Shared>,
}

async fn run_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let _count = ConnectionCount(shared.clone());
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => {
            // Wrong ALPN, failed TLS handshake, a client that went away.
            tracing::info!(%remote, %err, "handshake failed");
            return;
        }
    };
    let in_flight = Arc::new(Semaphore::new(shared.limits.in_flight_max as usize));
    let session = Arc::new(Session { connection, grant: OnceLock::new(), in_flight, shared });
    let mut streams = JoinSet::new();
    let mut stopping = session.shared.stopping.clone();
    // Keep-alives and a trickle of bytes reset QUIC's idle timer; this deadline they cannot.
    let hello_deadline =
        tokio::time::sleep(Duration::from_millis(session.shared.limits.hello_timeout_ms));
    tokio::pin!(hello_deadline);
    let mut awaiting_hello = true;
    loop {
        tokio::select! {
            stream = session.connection.accept_bi() => match stream {
                Ok((send, recv)) => { streams.spawn(run_stream(session.clone(), send, recv)); }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = &mut hello_deadline, if awaiting_hello => {
                awaiting_hello = false;
                if session.grant.get().is_none() {
                    session.shared.stats.hello_timeouts.fetch_add(1, Ordering::AcqRel);
                    let limit_ms = session.shared.limits.hello_timeout_ms;
                    let detail = format!("no Hello with credentials within {limit_ms} ms");
                    tracing::info!(%remote, %detail, "closing connection");
                    session.connection.close(ErrorCode::Unauthenticated.as_u32().into(), detail.as_bytes());
                    break;
                }
            }
            _ = stopping.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
    session.connection.close(0u32.into(), b"bye");
}

struct ConnectionCount(Arc<Shared>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a session ends its connection.
pub(crate) struct Close {
    pub(crate) code: ErrorCode,
    pub(crate) detail: String,
}

/// What a stream carries, decided by its first message.
enum StreamUse {
    /// Nothing yet.
    Undecided,
    /// Request batches.
    Requests,
    /// A subscription: its acks go to its task.
    Subscription(mpsc::Sender<Vec<u64>>),
}

/// Acks queued for a subscription task; the consumer waits for events between acks, so a
/// few suffice.
const ACKS_QUEUED_MAX: usize = 16;

async fn run_stream(session: Arc<Session>, send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let (frames, queued) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let writer = tokio::spawn(write_frames(send, queued));
    // Before `Welcome` only a Hello may come, and it is small: a header announcing more is
    // refused before any of it is buffered.
    let authenticated = session.grant.get().is_some();
    let frame_bytes_max = session.shared.limits.frame_bytes_max;
    let mut decoder =
        FrameDecoder::new(if authenticated { frame_bytes_max } else { HELLO_BYTES_MAX });
    let mut batches = JoinSet::new();
    let mut stopping = session.shared.stopping.clone();
    let mut close = None;
    let mut use_ = StreamUse::Undecided;
    let mut subscription: Option<tokio::task::JoinHandle<Result<(), Close>>> = None;
    'read: loop {
        let chunk = tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK_BYTES, true) => chunk,
            // A finished task keeps its memory until joined, and the stream may live for days.
            Some(_) = batches.join_next(), if !batches.is_empty() => {
                session.shared.stats.batch_tasks_held.fetch_sub(1, Ordering::AcqRel);
                continue 'read;
            }
            _ = stopping.changed() => break 'read,
            ended = async { subscription.as_mut().expect("guarded").await }, if subscription.is_some() => {
                subscription = None;
                if let Ok(Err(reason)) = ended {
                    close = Some(reason);
                }
                break 'read;
            }
        };
        match chunk {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) | Err(_) => break 'read,
        }
        loop {
            let decoded = decoder.decode();
            let taken = match decoded {
                Ok(Decoded::NeedMore { .. }) => break,
                Ok(Decoded::Frame(frame)) => {
                    session.route(frame, &frames, &mut batches, &mut use_, &mut subscription).await
                }
                Err(err) => Err(close_for(&err)),
            };
            if let Err(reason) = taken {
                close = Some(reason);
                break 'read;
            }
            while batches.try_join_next().is_some() {
                session.shared.stats.batch_tasks_held.fetch_sub(1, Ordering::AcqRel);
            }
            if decoder.frame_bytes_max() != frame_bytes_max && session.grant.get().is_some() {
                decoder.set_frame_bytes_max(frame_bytes_max);
            }
        }
    }
    // A subscription ends with its stream: what it sent and was not acknowledged is sent
    // again to the next subscription of its consumer.
    if let Some(task) = subscription {
        task.abort();
    }
    while batches.join_next().await.is_some() {
        session.shared.stats.batch_tasks_held.fetch_sub(1, Ordering::AcqRel);
    }
    if let Some(Close { code, detail }) = &close {
        tracing::info!(remote = %session.connection.remote_address(), ?code, %detail, "closing connection");
        let supported_versions = if *code == ErrorCode::UnsupportedVersion {
            SUPPORTED_VERSIONS.to_vec()
        } else {
            Vec::new()
        };
        let error = ConnectionError { code: *code, detail: detail.clone(), supported_versions };
        let _ = frames.send((0, Message::Error(error), None)).await;
    }
    drop(frames);
    let _ = writer.await;
    if let Some(Close { code, detail }) = close {
        session.connection.close(code.as_u32().into(), detail.as_bytes());
    }
}

fn close_for(err: &FrameError) -> Close {
    let code = match err {
        FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        FrameError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::MalformedFrame,
    };
    Close { code, detail: err.to_string() }
}

impl Session {
    /// Sends a frame where its stream's use says: a subscription's acks to its task, anything
    /// else to `take`. A `Subscribe` as a stream's first message makes it a subscription.
    async fn route(
        self: &Arc<Self>,
        frame: Frame,
        frames: &mpsc::Sender<Outgoing>,
        batches: &mut JoinSet<()>,
        use_: &mut StreamUse,
        subscription: &mut Option<tokio::task::JoinHandle<Result<(), Close>>>,
    ) -> Result<(), Close> {
        let unexpected =
            |detail: &str| Close { code: ErrorCode::UnexpectedMessage, detail: detail.to_owned() };
        match (frame.message, &*use_) {
            (Message::Subscribe(subscribe), StreamUse::Undecided) => {
                match self.grant.get() {
                    Some(grant) if grant.may_act_for(&subscribe.consumer) => {}
                    Some(grant) if grant.role == Role::Consumer => {
                        // One consumer must not replace another's subscription, nor move its
                        // cursor forward past orders it never stored.
                        let detail = format!(
                            "this credential may not act for consumer {:?}",
                            subscribe.consumer
                        );
                        return Err(Close { code: ErrorCode::PermissionDenied, detail });
                    }
                    Some(grant) => {
                        let detail = format!(
                            "the {:?} role may not subscribe; use a consumer credential",
                            grant.role
                        );
                        return Err(Close { code: ErrorCode::PermissionDenied, detail });
                    }
                    None => {
                        let detail = "send Hello with credentials first".to_owned();
                        return Err(Close { code: ErrorCode::Unauthenticated, detail });
                    }
                }
                let (acks, acks_rx) = mpsc::channel(ACKS_QUEUED_MAX);
                *use_ = StreamUse::Subscription(acks);
                let events = self.shared.handle.events().clone();
                let window_max = self.shared.limits.stream_window_events_max;
                *subscription = Some(tokio::spawn(crate::net::subscription::run(
                    events,
                    subscribe,
                    window_max,
                    frame.correlation,
                    frames.clone(),
                    acks_rx,
                )));
                Ok(())
            }
            (Message::Ack(cursor), StreamUse::Subscription(acks)) => {
                // A full queue means the consumer acks faster than they are stored: wait,
                // which stops this stream being read.
                let _ = acks.send(cursor).await;
                Ok(())
            }
            (Message::Subscribe(_) | Message::Ack(_), _) => Err(unexpected(
                "Subscribe opens a stream of its own, and Ack belongs on that stream",
            )),
            (_, StreamUse::Subscription(_)) => {
                Err(unexpected("a subscription's stream carries only Ack"))
            }
            (message, _) => {
                if matches!(message, Message::Requests(_)) {
                    *use_ = StreamUse::Requests;
                }
                self.take(Frame { correlation: frame.correlation, message }, frames, batches).await
            }
        }
    }

    async fn take(
        self: &Arc<Self>,
        frame: Frame,
        frames: &mpsc::Sender<Outgoing>,
        batches: &mut JoinSet<()>,
    ) -> Result<(), Close> {
        match frame.message {
            Message::Hello { token, client_name } => {
                if self.grant.get().is_some() {
                    let detail = "a connection authenticates once".to_owned();
                    return Err(Close { code: ErrorCode::UnexpectedMessage, detail });
                }
                let Some(grant) = self.authenticate(token.as_deref()) else {
                    let detail =
                        "missing or unknown credentials (bearer token or client certificate)"
                            .to_owned();
                    return Err(Close { code: ErrorCode::Unauthenticated, detail });
                };
                // Only the first stream is open before `Welcome`, so only it can get here.
                let role = grant.role;
                let _ = self.grant.set(grant);
                tracing::debug!(client = %client_name, ?role, "authenticated");
                let limits = self.shared.limits;
                // Now, and only now, the peer may open more streams and send more bytes.
                self.connection.set_max_concurrent_bi_streams(limits.streams_max.into());
                self.connection.set_receive_window(limits.connection_receive_window_bytes.into());
                let welcome = Message::Welcome {
                    role,
                    frame_bytes_max: limits.frame_bytes_max,
                    in_flight_max: limits.in_flight_max,
                };
                let _ = frames.send((frame.correlation, welcome, None)).await;
                Ok(())
            }
            Message::Requests(batch) => {
                let Some(role) = self.grant.get().map(|grant| grant.role) else {
                    let detail = "send Hello with credentials first".to_owned();
                    return Err(Close { code: ErrorCode::Unauthenticated, detail });
                };
                // Waiting here stops this stream being read: backpressure, not buffering.
                let wanted = batch.len().clamp(1, self.shared.limits.in_flight_max as usize);
                let permit = self.in_flight.clone().acquire_many_owned(wanted as u32).await;
                let permit = permit.expect("the semaphore is never closed");
                let stats = self.shared.stats.clone();
                stats.requests_unwritten.fetch_add(wanted, Ordering::AcqRel);
                let permit = InFlight { _permit: permit, requests: wanted, stats };
                let (session, frames) = (self.clone(), frames.clone());
                self.shared.stats.batch_tasks_held.fetch_add(1, Ordering::AcqRel);
                batches.spawn(async move {
                    session.answer(frame.correlation, batch, role, permit, frames).await
                });
                Ok(())
            }
            other => {
                let detail = format!("a client does not send {}", message_name(&other));
                Err(Close { code: ErrorCode::UnexpectedMessage, detail })
            }
        }
    }

    /// What a token or the handshake's client certificate grants. (Sync: the peer identity
    /// is not `Send`, so it must not live across an await.)
    fn authenticate(&self, token: Option<&str>) -> Option<Grant> {
        let identity = self.connection.peer_identity();
        let chain = identity
            .as_ref()
            .and_then(|any| any.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>());
        self.shared.auth.authenticate(token, chain.map(Vec::as_slice))
    }

    async fn answer(
        &self,
        correlation: u64,
        batch: Vec<Request>,
        role: Role,
        in_flight: InFlight,
        frames: mpsc::Sender<Outgoing>,
    ) {
        let replies = dispatch(&self.shared.handle, role, &batch).await;
        // The permits travel with the replies until they are written: a client that does not
        // read holds its own in-flight budget, not the server's memory.
        let _ = frames.send((correlation, Message::Replies(replies), Some(in_flight))).await;
    }
}

/// Answers a batch: permission checked per request, then the allowed ones submitted together
/// (one job per owning shard), answers back in the batch's order.
async fn dispatch(handle: &Handle, role: Role, batch: &[Request]) -> Vec<Reply> {
    let mut replies: Vec<Option<Reply>> = vec![None; batch.len()];
    let mut items = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    for (index, request) in batch.iter().enumerate() {
        if !permits(role, request) {
            replies[index] = Some(Reply::Refused(Refusal::PermissionDenied));
            continue;
        }
        items.push(match *request {
            Request::Apply(command) => Item::Apply(command),
            Request::QuerySku(sku) => Item::QuerySku(sku),
            Request::QueryReservation(id) => Item::QueryReservation(id),
        });
        positions.push(index);
    }
    let answers = handle.submit_batch(&items).wait().await;
    for (index, answer) in positions.into_iter().zip(answers) {
        replies[index] = Some(match answer {
            Ok(Answer::Outcome(outcome)) => Reply::Outcome(outcome),
            Ok(Answer::Sku(view)) => Reply::Sku(view.map(Box::new)),
            Ok(Answer::Reservation(view)) => Reply::Reservation(view.map(Box::new)),
            Ok(Answer::Skus(_)) => unreachable!("no request lists SKUs"),
            Err(err) => refusal(err),
        });
    }
    replies.into_iter().map(|reply| reply.expect("every request is answered")).collect()
}

fn refusal(err: RuntimeError) -> Reply {
    Reply::Refused(match err {
        RuntimeError::Overloaded { .. } => Refusal::Overloaded,
        RuntimeError::ShuttingDown => Refusal::ShuttingDown,
        _ => Refusal::Unavailable,
    })
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::Requests(_) => "Requests",
        Message::Replies(_) => "Replies",
        Message::Error(_) => "Error",
        Message::Subscribe(_) => "Subscribe",
        Message::Subscribed(_) => "Subscribed",
        Message::Events(_) => "Events",
        Message::Ack(_) => "Ack",
    }
}

/// A frame to send: its correlation id and message, encoded by the stream's writer, and the
/// requests it answers, released once it is written.
pub(crate) type Outgoing = (u64, Message, Option<InFlight>);

/// Encodes queued frames with one encoder and one buffer for the stream, coalescing whatever is
/// waiting into one write; then finishes the stream and gives the peer a moment to read it all
/// before the connection may close.
async fn write_frames(mut send: quinn::SendStream, mut queued: mpsc::Receiver<Outgoing>) {
    // Server frames are bounded by what the client sent (one reply per request), so the
    // client's own limit is never exceeded; no limit is enforced on this side.
    let mut encoder = FrameEncoder::new(u32::MAX);
    let mut bytes = Vec::new();
    let mut answered = Vec::new();
    while let Some((correlation, message, in_flight)) = queued.recv().await {
        bytes.clear();
        encoder.encode(correlation, &message, &mut bytes).expect("no limit to exceed");
        answered.extend(in_flight);
        while let Ok((correlation, message, in_flight)) = queued.try_recv() {
            encoder.encode(correlation, &message, &mut bytes).expect("no limit to exceed");
            answered.extend(in_flight);
        }
        if send.write_all(&bytes).await.is_err() {
            return;
        }
        answered.clear();
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}
