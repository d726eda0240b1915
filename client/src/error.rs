//! The client's one error type. Business outcomes (sold out...) are replies, not errors.

use flashstock_protocol::{ErrorCode, FrameError};

/// Why a call or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client endpoint could not be set up (socket, TLS configuration).
    #[error("client setup: {0}")]
    Setup(String),
    /// The connection could not be started (bad address or server name).
    #[error("connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (handshake refused, wrong ALPN, timeout, reset).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The server refused the connection and said why (bad credentials, unsupported version,
    /// malformed frame...).
    #[error("the server closed the connection: {code:?}: {detail}")]
    Rejected {
        /// The reason.
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
        /// The protocol versions the server speaks, when the version was the problem.
        supported_versions: Vec<u8>,
    },
    /// The server sent bytes that are not a valid frame.
    #[error("invalid frame from the server: {0}")]
    Protocol(#[from] FrameError),
    /// The server answered with a message that makes no sense here.
    #[error("unexpected message from the server: {0}")]
    Unexpected(String),
    /// The server found a value of the request out of range, and said which.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Writing to the stream failed.
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    /// The connection ended before the call was answered.
    #[error("the connection closed before the call was answered")]
    Closed,
    /// The connection carrying the call was lost; the call may or may not have been applied,
    /// so retrying with the same request id is the safe next step (the client does so).
    #[error("connection lost: {detail}")]
    ConnectionLost {
        /// What happened to it.
        detail: String,
    },
    /// No answer within the call's deadline (all retries included). The request may have been
    /// applied: retry it with the same request id to learn its outcome.
    #[error("no answer within the deadline of {deadline_ms} ms")]
    Timeout {
        /// The deadline.
        deadline_ms: u64,
    },
    /// The circuit breaker is open after repeated failures: failing fast instead of waiting.
    #[error("circuit open after repeated failures; retry in {retry_after_ms} ms")]
    CircuitOpen {
        /// When a probe call will be let through.
        retry_after_ms: u64,
    },
    /// A caller's idempotency key that is empty or too long.
    #[error("an idempotency key is 1 to {bytes_max} bytes, not {bytes}")]
    InvalidKey {
        /// The key's length.
        bytes: usize,
        /// The longest key accepted.
        bytes_max: usize,
    },
    /// The cluster could not be read from etcd (at connect: etcd did not answer).
    #[error("the cluster: {0}")]
    Cluster(#[from] flashstock_cluster_etcd::EtcdError),
    /// No shard map is stored in the cluster's etcd yet: no server owns any SKU.
    #[error("no shard map is stored for the cluster")]
    NoMap,
    /// The map gives the request's slot to a server with no live member entry (it is down
    /// or has not registered yet): retried like a lost connection, within the deadline.
    #[error("slot {slot} is owned by server {server:?}, which is not registered")]
    ServerDown {
        /// The request's slot.
        slot: u16,
        /// Its owner in the map.
        server: String,
    },
    /// Servers kept answering `Moved` for the request's slot through every follow (a map
    /// change that does not settle): the last answer's slot and server.
    #[error("slot {slot} kept moving (last said to be on {server:?})")]
    Moved {
        /// The request's slot.
        slot: u16,
        /// The server last named.
        server: String,
    },
    /// An admin request sent through a cluster client: admin requests are one server's
    /// (its rate limits, its SKUs, its consumers); connect to that server.
    #[error("admin requests go to one server: connect to it, not to the cluster")]
    AdminInCluster,
    /// The server kept refusing the call (overloaded or shutting down) through every retry.
    #[error("the server refused the call: {refusal:?}")]
    Refused {
        /// Its last refusal.
        refusal: flashstock_protocol::Refusal,
    },
}

impl ClientError {
    /// Whether a new connection might fare better (the transport failed, not the request).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Connect(_)
                | ClientError::Connection(_)
                | ClientError::Write(_)
                | ClientError::Closed
                | ClientError::ConnectionLost { .. }
                | ClientError::Timeout { .. }
                | ClientError::ServerDown { .. }
        )
    }
}
