//! flashstock's wire protocol, sans IO: bytes in, messages out, and back.
//!
//! No sockets here. The QUIC transport (in the server and the client library) reads bytes off
//! a stream, pushes them into a [`FrameDecoder`], and writes what [`FrameEncoder`] produces.
//!
//! Map of the modules:
//! - [`frame`]: the 20-byte frame header, [`FrameEncoder`] and [`FrameDecoder`] (which says
//!   "need more bytes" for partial input, and enforces the frame size limit before buffering).
//! - [`message`]: what frames carry: the hello handshake, batches of requests (engine commands
//!   and queries) and of replies, the committed-deduction stream (subscribe, events, acks), and
//!   connection errors.
//! - [`session`]: a connection's rules as sans-IO state machines, [`session::ServerSession`]
//!   and [`session::ClientSession`]: `Hello` first, small and in time; what each role may
//!   send; acks checked. The server's session and the client drive them.
//! - [`keys`]: request ids derived from a caller's own key (its order id), so a retry after
//!   the caller restarts is the same request.
//! - [`tokens`]: the tokens file's format (roles, and the consumer names a token may act for),
//!   parsed without IO for the server and the tools alike.
//! - [`error`]: [`FrameError`], the one error type.
//! - `fuzz`: the bodies of the fuzz targets in `fuzz/`, shared with the test that replays
//!   their corpora.
//!
//! A frame's payload is an rkyv archive of a [`Message`], checked with bytecheck before any
//! field is read. Archives are unaligned (rkyv's `unaligned` feature): no padding on the wire,
//! and a payload is checked where it lies in the receive buffer, without an aligned copy.

pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod message;
pub mod session;
pub mod tokens;

pub use error::FrameError;
pub use frame::{
    Decoded, Frame, FrameDecoder, FrameEncoder, ALPN, FRAME_BYTES_MAX_DEFAULT, HEADER_BYTES,
    HELLO_BYTES_MAX, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
pub use message::{
    AdminReply, AdminRequest, ConnectionError, ConsumerInfo, ErrorCode, EventBatch, Message, Moved,
    RateLimit, RateLimitEntry, Refusal, Reply, Request, Role, SlotsAction, StartAt, StreamEvent,
    Subscribe, Subscribed, SKU_PAGE_MAX, SLOT_ITEMS_PAGE_MAX,
};
