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
    /// Writing to the stream failed.
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    /// The connection ended before the call was answered.
    #[error("the connection closed before the call was answered")]
    Closed,
}
