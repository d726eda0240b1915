//! One authenticated QUIC connection carrying pipelined request batches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use flashstock_protocol::session::{ClientEvent, ClientSession};
use flashstock_protocol::{
    AdminReply, AdminRequest, Decoded, FrameDecoder, FrameEncoder, Message, Reply, Request, Role,
    FRAME_BYTES_MAX_DEFAULT,
};
use tokio::sync::{oneshot, Mutex};

use crate::error::ClientError;
use crate::tls::ClientTls;

type Waiting = Arc<DashMap<u64, oneshot::Sender<Result<ClientEvent, Arc<ClientError>>>>>;

/// An authenticated connection. Calls from many tasks pipeline over one stream.
#[derive(Debug)]
pub struct Connection {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
    send: Mutex<(quinn::SendStream, FrameEncoder)>,
    waiting: Waiting,
    next_correlation: AtomicU64,
    role: Role,
    in_flight_max: u32,
}

impl Connection {
    /// Connects to `addr` (certificate checked against `server_name`), and authenticates.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
        token: Option<&str>,
    ) -> Result<Connection, ClientError> {
        let (endpoint, connection) = open(addr, server_name, tls).await?;
        let (send, recv) = connection.open_bi().await?;
        let waiting: Waiting = Arc::new(DashMap::new());
        let rules = ClientSession::new();
        let hello = hello(&rules, token);
        tokio::spawn(read_replies(recv, waiting.clone(), rules, connection.clone()));
        let mut client = Connection {
            connection,
            _endpoint: endpoint,
            send: Mutex::new((send, FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT))),
            waiting,
            next_correlation: AtomicU64::new(1),
            role: Role::Service,
            in_flight_max: 0,
        };
        match client.exchange(hello).await? {
            ClientEvent::Welcome { role, in_flight_max, .. } => {
                client.role = role;
                client.in_flight_max = in_flight_max;
                Ok(client)
            }
            other => Err(ClientError::Unexpected(format!("{other:?} in answer to Hello"))),
        }
    }

    /// The role the server granted.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Requests the server lets this connection have in flight.
    pub fn in_flight_max(&self) -> u32 {
        self.in_flight_max
    }

    /// Sends a batch and waits for its replies, one per request, in order.
    pub async fn call(&self, requests: Vec<Request>) -> Result<Vec<Reply>, ClientError> {
        let count = requests.len();
        match self.exchange(Message::Requests(requests)).await? {
            ClientEvent::Replies { replies, .. } if replies.len() == count => Ok(replies),
            other => {
                Err(ClientError::Unexpected(format!("{other:?} in answer to {count} requests")))
            }
        }
    }

    /// Whether the connection has closed (by either side, or by the silence watchdog).
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Sends an operation on the server itself (admin credentials) and waits for its answer.
    pub async fn admin(&self, request: AdminRequest) -> Result<AdminReply, ClientError> {
        match self.exchange(Message::Admin(request)).await? {
            ClientEvent::Admin { reply, .. } => Ok(reply),
            other => Err(ClientError::Unexpected(format!("{other:?} in answer to Admin"))),
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection.close(0u32.into(), b"client done");
    }

    /// Closes the connection and waits (at most [`CLOSE_FLUSH_MAX`]) until the close has gone
    /// out: a process that exits right after a bare `close` may never send it, and the server
    /// then holds the connection, and its place in the per-address count, until its idle
    /// timeout.
    pub async fn close_and_flush(&self) {
        self.close();
        self.flushed().await;
    }

    /// Waits (at most [`CLOSE_FLUSH_MAX`]) until a closed connection's close has gone out.
    pub async fn flushed(&self) {
        let _ = tokio::time::timeout(CLOSE_FLUSH_MAX, self._endpoint.wait_idle()).await;
    }

    async fn exchange(&self, message: Message) -> Result<ClientEvent, ClientError> {
        let correlation = self.next_correlation.fetch_add(1, Ordering::Relaxed);
        let (answered, answer) = oneshot::channel();
        self.waiting.insert(correlation, answered);
        let mut frame = Vec::new();
        {
            let mut send = self.send.lock().await;
            let (stream, encoder) = &mut *send;
            if let Err(err) = encoder.encode(correlation, &message, &mut frame) {
                self.waiting.remove(&correlation);
                return Err(err.into());
            }
            if let Err(err) = stream.write_all(&frame).await {
                self.waiting.remove(&correlation);
                return Err(self.closed_reason().unwrap_or(err.into()));
            }
        }
        match answer.await {
            Ok(Ok(ClientEvent::Refused(error))) => Err(ClientError::Rejected {
                code: error.code,
                detail: error.detail,
                supported_versions: error.supported_versions,
            }),
            Ok(Ok(event)) => Ok(event),
            // What the server sent was not a valid frame: that, not the close, is the news.
            Ok(Err(failure)) if matches!(*failure, ClientError::Protocol(_)) => {
                let ClientError::Protocol(err) = &*failure else { unreachable!("matched") };
                Err(ClientError::Protocol(err.clone()))
            }
            Ok(Err(_)) | Err(_) => Err(self.closed_reason().unwrap_or(ClientError::Closed)),
        }
    }

    fn closed_reason(&self) -> Option<ClientError> {
        closed_reason(&self.connection)
    }
}

/// Opens a QUIC connection to `addr`, its certificate checked against `server_name`.
pub(crate) async fn open(
    addr: SocketAddr,
    server_name: &str,
    tls: &ClientTls,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let bind: SocketAddr =
        if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("a wildcard address");
    let setup = |err: std::io::Error| ClientError::Setup(err.to_string());
    let socket = std::net::UdpSocket::bind(bind).map_err(setup)?;
    size_buffers(&socket, UDP_BUFFER_BYTES).map_err(setup)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(setup)?;
    endpoint.set_default_client_config(tls.quinn_config());
    let connecting = endpoint.connect(addr, server_name)?;
    let connection =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await.map_err(|_| {
            ClientError::Timeout { deadline_ms: HANDSHAKE_TIMEOUT.as_millis() as u64 }
        })??;
    tokio::spawn(watch(connection.clone()));
    Ok((endpoint, connection))
}

/// How long a handshake may take before it is abandoned for a fresh one. A handshake begun
/// while the server was down waits for QUIC's (exponentially backed-off) retransmission timer
/// once it is back; a new one reaches it at once. A handshake a data centre away takes a few
/// milliseconds: 250 ms leaves room for a loaded server and finds a restarted one at once.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// The longest [`Connection::close_and_flush`] waits for the close to go out.
pub const CLOSE_FLUSH_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a connection may hear nothing at all from its server (keep-alives are acknowledged
/// every [`crate::tls::KEEP_ALIVE_INTERVAL`]) before the client gives it up.
pub(crate) const SILENCE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes `connection` once the server has been silent for [`SILENCE_MAX`]. A server that
/// died is otherwise noticed only at the idle timeout: QUIC backs its retransmissions off
/// exponentially, so the packet that would draw the restarted server's stateless reset may
/// come seconds after it is back. Closing fails every call waiting on the connection, and the
/// client reconnects (retrying with the same request ids).
async fn watch(connection: quinn::Connection) {
    let mut heard = connection.stats().udp_rx.datagrams;
    let mut heard_at = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(crate::tls::KEEP_ALIVE_INTERVAL);
    loop {
        tokio::select! {
            _ = connection.closed() => return,
            _ = ticks.tick() => {}
        }
        let now_heard = connection.stats().udp_rx.datagrams;
        if now_heard != heard {
            (heard, heard_at) = (now_heard, tokio::time::Instant::now());
        } else if heard_at.elapsed() >= SILENCE_MAX {
            tracing::debug!(remote = %connection.remote_address(), "server silent; closing");
            connection.close(0u32.into(), b"server silent");
            return;
        }
    }
}

/// The kernel send and receive buffer asked for each connection's UDP socket. Linux's
/// default (~208 KiB) overflowed under bursts of pipelined replies and dropped datagrams on
/// loopback, each drop costing a retransmission and a congestion-window cut.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Asks for `bytes` of send and receive buffer; the kernel caps it at `net.core.rmem_max`,
/// which is logged rather than refused (the client works, it only drops more under bursts).
fn size_buffers(socket: &std::net::UdpSocket, bytes: usize) -> std::io::Result<()> {
    let state = quinn::udp::UdpSocketState::new(socket.into())?;
    state.set_recv_buffer_size(socket.into(), bytes)?;
    state.set_send_buffer_size(socket.into(), bytes)?;
    let granted_bytes = state.recv_buffer_size(socket.into())?;
    if granted_bytes < bytes {
        tracing::debug!(bytes, granted_bytes, "UDP receive buffer capped by net.core.rmem_max");
    }
    Ok(())
}

/// The first message of a connection, naming this library for the server's logs.
pub(crate) fn hello(rules: &ClientSession, token: Option<&str>) -> Message {
    rules.hello(token, concat!("flashstock-client/", env!("CARGO_PKG_VERSION")))
}

/// Why the connection closed, if the server said.
pub(crate) fn closed_reason(connection: &quinn::Connection) -> Option<ClientError> {
    let reason = connection.close_reason()?;
    if let quinn::ConnectionError::ApplicationClosed(close) = &reason {
        let code = u32::try_from(close.error_code.into_inner()).ok();
        if let Some(code) = code.and_then(flashstock_protocol::ErrorCode::from_u32) {
            let detail = String::from_utf8_lossy(&close.reason).into_owned();
            return Some(ClientError::Rejected { code, detail, supported_versions: Vec::new() });
        }
    }
    Some(ClientError::Connection(reason))
}

/// The largest reply frame accepted: a reply is never much larger than its request (the
/// largest, a SKU view, is ~100 bytes; a request ~63), so four of the server's largest
/// request frames is ample, and a server (or anything posing as one) that announces more is
/// refused before any of it is buffered.
pub const REPLY_FRAME_BYTES_MAX: u32 = 4 * FRAME_BYTES_MAX_DEFAULT;

/// Reads frames, puts each through the connection's rules, and hands it to the call waiting
/// for its correlation id. A connection-level error frame (correlation 0) goes to every
/// waiting call; a frame the rules refuse, or the end of the stream, fails every call still
/// waiting (and a refused frame closes the connection, saying why).
async fn read_replies(
    mut recv: quinn::RecvStream,
    waiting: Waiting,
    mut rules: ClientSession,
    connection: quinn::Connection,
) {
    let mut decoder = FrameDecoder::new(REPLY_FRAME_BYTES_MAX);
    let failure = loop {
        let chunk = match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break ClientError::Closed,
            Err(err) => break ClientError::Unexpected(err.to_string()),
        };
        decoder.push(&chunk.bytes);
        if let Err(failed) = dispatch_frames(&mut decoder, &mut rules, &waiting) {
            if let ClientError::Unexpected(detail) = &failed {
                let code = flashstock_protocol::ErrorCode::UnexpectedMessage.as_u32();
                connection.close(code.into(), detail.as_bytes());
            }
            break failed;
        }
    };
    let failure = Arc::new(failure);
    for key in waiting.iter().map(|e| *e.key()).collect::<Vec<_>>() {
        if let Some((_, call)) = waiting.remove(&key) {
            let _ = call.send(Err(failure.clone()));
        }
    }
}

/// Hands every whole frame buffered to its call; the error that ends the connection, if any.
fn dispatch_frames(
    decoder: &mut FrameDecoder,
    rules: &mut ClientSession,
    waiting: &Waiting,
) -> Result<(), ClientError> {
    loop {
        let frame = match decoder.decode()? {
            Decoded::NeedMore { .. } => return Ok(()),
            Decoded::Frame(frame) => frame,
        };
        let correlation = frame.correlation;
        let event =
            rules.handle_frame(frame).map_err(|close| ClientError::Unexpected(close.detail))?;
        if correlation == 0 {
            for key in waiting.iter().map(|e| *e.key()).collect::<Vec<_>>() {
                if let Some((_, call)) = waiting.remove(&key) {
                    let _ = call.send(Ok(event.clone()));
                }
            }
        } else if let Some((_, call)) = waiting.remove(&correlation) {
            let _ = call.send(Ok(event));
        }
    }
}
