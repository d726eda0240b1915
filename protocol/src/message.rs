//! What frames carry.
//!
//! A connection opens with `Hello` (credentials) and the server's `Welcome` (the role granted).
//! Then the client sends `Requests` frames, each a batch, and the server answers each with one
//! `Replies` frame carrying the same correlation id and one reply per request, in order. Frames
//! pipeline: many may be in flight, and replies may come back in any order.

use flashstock_engine::{Command, Outcome, ReservationId, ReservationView, SkuId, SkuView};
use rkyv::{Archive, Deserialize, Serialize};

/// Everything a frame can carry.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first frame: who is calling.
    Hello {
        /// A bearer token, if the client authenticates with one (mutual TLS needs none).
        token: Option<String>,
        /// A name for logs.
        client_name: String,
    },
    /// Server → client, the answer to `Hello`: what the caller may do.
    Welcome {
        /// The role granted.
        role: Role,
        /// The largest frame payload the server accepts.
        frame_bytes_max: u32,
        /// The most requests the server lets one connection have in flight.
        in_flight_max: u32,
    },
    /// Client → server: a batch of requests.
    Requests(Vec<Request>),
    /// Server → client: one reply per request of the batch with the same correlation id.
    Replies(Vec<Reply>),
    /// Either way: the connection is refused or about to close, and why.
    Error(ConnectionError),
}

/// One request of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A state-changing engine command (reserve, confirm, cancel, or an admin command).
    Apply(Command),
    /// Read a SKU.
    QuerySku(SkuId),
    /// Read a reservation.
    QueryReservation(ReservationId),
}

/// The answer to one request.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// What the command did (business outcomes such as sold out are here).
    Outcome(Outcome),
    /// The SKU read, if it exists.
    Sku(Option<SkuView>),
    /// The reservation read, if it is known.
    Reservation(Option<ReservationView>),
    /// The request was not applied, and why; retrying with the same request id is safe.
    Refused(Refusal),
}

/// Why a request was not applied.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The owning shard is overloaded: back off, then retry with the same request id.
    Overloaded,
    /// The caller's role does not allow this request.
    PermissionDenied,
    /// The server is shutting down.
    ShuttingDown,
    /// The server's log failed; it acknowledges nothing until restarted.
    Unavailable,
}

/// What a caller may do.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Order services: reserve, confirm, cancel, query.
    Service,
    /// Operators: everything a service may do, plus stock, buyer limits and sale windows.
    Admin,
    /// The order writer: the committed-deduction stream.
    Consumer,
}

/// A connection-level error: sent just before the sender closes the connection.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Detail for humans and logs.
    pub detail: String,
    /// The protocol versions the sender speaks (set for `UnsupportedVersion`).
    pub supported_versions: Vec<u8>,
}

/// Kinds of connection-level errors.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer's protocol version is not spoken here.
    UnsupportedVersion,
    /// Bytes that are not a valid frame.
    MalformedFrame,
    /// A frame above the size limit.
    FrameTooLarge,
    /// No credentials, or wrong ones.
    Unauthenticated,
    /// A message that is valid but not allowed at this point (requests before `Hello`...).
    UnexpectedMessage,
    /// Too many connections.
    TooManyConnections,
}

impl ErrorCode {
    /// The QUIC application error code a connection closed for this reason carries.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::MalformedFrame => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::Unauthenticated => 4,
            ErrorCode::UnexpectedMessage => 5,
            ErrorCode::TooManyConnections => 6,
        }
    }

    /// The reason behind a QUIC application error code, if it is one of ours.
    pub fn from_u32(code: u32) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::MalformedFrame,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::Unauthenticated,
            5 => ErrorCode::UnexpectedMessage,
            6 => ErrorCode::TooManyConnections,
            _ => return None,
        })
    }
}
