//! What frames carry.
//!
//! A connection opens with `Hello` (credentials) and the server's `Welcome` (the role granted).
//! Then the client sends `Requests` frames, each a batch, and the server answers each with one
//! `Replies` frame carrying the same correlation id and one reply per request, in order. Frames
//! pipeline: many may be in flight, and replies may come back in any order.
//!
//! The committed-deduction stream takes a stream of its own: a `consumer` sends `Subscribe`,
//! the server answers `Subscribed` and then pushes `Events` frames (one shard's events each, in
//! that shard's log order); the consumer sends `Ack` with the cursor it has durably handled.
//! The server sends at most the subscription's window of events beyond the last `Ack`.

use flashstock_engine::{
    slot_of, CartView, Command, Event, EventKind, Outcome, ReservationId, ReservationView,
    ReserveCart, SkuId, SkuView, Slot,
};
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
    // The stream's messages come after the first five, so those keep their archived tags.
    /// Consumer → server, on a stream of its own: start the committed-deduction stream.
    Subscribe(Subscribe),
    /// Server → consumer: the subscription is open, and where it starts.
    Subscribed(Subscribed),
    /// Server → consumer: the next events of one shard.
    Events(EventBatch),
    /// Consumer → server: every event below this cursor (one sequence number per shard) is
    /// handled for good; the server persists it under the consumer's name.
    Ack(Vec<u64>),
    // Version 4 added the two below; the earlier ones keep their archived tags.
    /// Admin → server, on a requests stream: an operation on the server itself.
    Admin(AdminRequest),
    /// Server → admin: the answer to the `Admin` frame with the same correlation id.
    AdminReply(AdminReply),
}

/// An operation on the server itself, for operators.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// List the registered consumers of the committed-deduction stream.
    ListConsumers,
    /// Forget a consumer: its acknowledged cursor, and the log it holds back. Its open
    /// subscription, if any, is closed.
    RemoveConsumer(String),
    // Version 5 added the one below.
    /// One page of SKUs in id order: those after `after` (from the first when `None`), at
    /// most `limit` (clamped to [`SKU_PAGE_MAX`]).
    ListSkus {
        /// The last SKU of the previous page.
        after: Option<SkuId>,
        /// The most SKUs wanted.
        limit: u32,
    },
    /// Sets the reserve rate limits of one SKU (`Some`), or the global ones (`None`) that
    /// every SKU without its own follows. Stored in the log's metadata: they survive restarts.
    SetRateLimit {
        /// The SKU, or `None` for the global limits.
        sku: Option<SkuId>,
        /// The limits; both `None` removes the SKU's own (or turns the global ones off).
        limit: RateLimit,
    },
    /// Lists the rate limits in force.
    ListRateLimits,
    // Version 9 added the ones below: slot moves between servers (docs/cluster.md).
    /// Freezes, thaws or releases slots `first..=last` on every shard.
    Slots {
        /// The range's first slot.
        first: u16,
        /// Its last slot (included).
        last: u16,
        /// What to do.
        action: SlotsAction,
    },
    /// One page of what `shard` holds of a frozen range, as encoded slot items.
    ExportSlots {
        /// The range's first slot.
        first: u16,
        /// Its last slot.
        last: u16,
        /// The shard.
        shard: u16,
        /// Items to skip (the previous pages').
        offset: u64,
        /// The most items wanted (clamped to [`SLOT_ITEMS_PAGE_MAX`]).
        limit: u32,
    },
    /// Imports encoded slot items (a page of `ExportSlots` from the source) into `shard`.
    ImportSlots {
        /// The shard (the source's shard of the same index).
        shard: u16,
        /// The items, as `ExportSlots` gave them.
        items: Vec<u8>,
    },
    /// The slot ranges frozen here, and the shard count.
    SlotsStatus,
}

/// What [`AdminRequest::Slots`] does to a range.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotsAction {
    /// No command of the range applies, none of its holds expires (both servers, first).
    Freeze,
    /// The range is served again (its owner, after the move).
    Thaw,
    /// The range's state is dropped (the server that no longer owns it).
    Release,
}

/// The most slot items one [`AdminRequest::ExportSlots`] page carries (~40 bytes each
/// encoded, so a page stays far below the default 1 MiB frame limit).
pub const SLOT_ITEMS_PAGE_MAX: u32 = 8_192;

/// Reserve attempts allowed per second, as token buckets holding one second's worth (so a
/// burst of that many, then that many per second). `None` is no limit.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Per buyer.
    pub per_buyer_per_s: Option<u32>,
    /// Per credential (a token, or a client certificate).
    pub per_credential_per_s: Option<u32>,
}

/// One SKU's rate limits, or the global ones.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitEntry {
    /// The SKU, or `None` for the global limits.
    pub sku: Option<SkuId>,
    /// Its limits.
    pub limit: RateLimit,
}

/// The most SKUs one [`AdminRequest::ListSkus`] page carries (~80 bytes each archived, so a
/// page stays far below the default 1 MiB frame limit).
pub const SKU_PAGE_MAX: u32 = 1_000;

/// The answer to an [`AdminRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AdminReply {
    /// The registered consumers, by name.
    Consumers(Vec<ConsumerInfo>),
    /// The consumer is forgotten; whether it was registered.
    ConsumerRemoved {
        /// Whether it was registered.
        existed: bool,
    },
    /// Not done, and why (`PermissionDenied` for a caller that is not an admin).
    Refused(Refusal),
    /// The rate limits in force: the global ones first, then each SKU's own.
    RateLimits(Vec<RateLimitEntry>),
    /// The request's values are out of range (a rate of zero, too many SKUs with limits).
    Invalid {
        /// Which value, and its range.
        detail: String,
    },
    /// A page of SKUs, in id order.
    Skus {
        /// The SKUs.
        skus: Vec<SkuView>,
        /// Where the next page starts (pass it as `after`); `None` when this is the last.
        next_after: Option<SkuId>,
    },
    // Version 9 added the ones below.
    /// The slot operation is done (durably).
    SlotsDone,
    /// A page of a range's items.
    SlotItems {
        /// The items, encoded back to back.
        items: Vec<u8>,
        /// How many.
        count: u32,
        /// How many the shard holds of the range in all.
        total: u64,
    },
    /// The ranges frozen here.
    SlotsStatus {
        /// Each frozen range's first and last slot.
        frozen: Vec<(u16, u16)>,
        /// The server's shard count.
        shards: u16,
    },
}

/// A registered consumer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// What it acknowledged: one sequence number per shard.
    pub acked: Vec<u64>,
    /// Whether a subscription of it is open now.
    pub subscribed: bool,
}

/// Where a subscription starts.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// After what this consumer acknowledged last; at the start of the log for a new consumer.
    Acknowledged,
    /// At the first record each shard's log still holds.
    Earliest,
    /// At this cursor: one record sequence number per shard.
    Cursor(Vec<u64>),
}

/// A request to open the committed-deduction stream.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The consumer's durable name (1 to 64 of `A-Z a-z 0-9 _ - .`): its acknowledged cursor
    /// is kept under it, and the log is kept until it has acknowledged.
    pub consumer: String,
    /// Where to start.
    pub start: StartAt,
    /// The kinds of events wanted; empty means all.
    pub kinds: Vec<EventKind>,
    /// Events the server may send beyond the last acknowledgement; clamped to the server's
    /// own maximum.
    pub window_events: u32,
}

/// The server's answer to `Subscribe`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// Where delivery starts: one record sequence number per shard.
    pub cursor: Vec<u64>,
    /// The window granted.
    pub window_events: u32,
}

/// Events of one shard, in its log order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EventBatch {
    /// The shard whose log they come from.
    pub shard: u16,
    /// The events, each with its record's sequence number in the shard's log.
    pub events: Vec<StreamEvent>,
    /// Every record of the shard below this was delivered (filtered-out ones included): once
    /// the batch is handled, the shard's cursor may move here.
    pub end_seq: u64,
}

/// One event of the stream.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    /// The record's sequence number in its shard's log.
    pub seq: u64,
    /// What happened.
    pub event: Event,
}

/// One request of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A state-changing engine command (reserve, confirm, cancel, or an admin command).
    Apply(Command),
    /// Read a SKU.
    QuerySku(SkuId),
    /// Read a reservation.
    QueryReservation(ReservationId),
    // Version 6 added the two below; the earlier ones keep their archived tags.
    /// Hold every line of a cart, or none (boxed: an archived enum is as large as its
    /// largest variant, and a cart is ~280 bytes against a command's ~60).
    ReserveCart(Box<ReserveCart>),
    /// Read a cart (confirm and cancel take its id as a reservation's).
    QueryCart(ReservationId),
}

impl Request {
    /// The cluster slot that must answer this request: its SKU's, or the slot its reservation
    /// or cart id carries; a cart's is its first line's (its id's). An empty cart, which every
    /// server refuses alike, has slot 0.
    pub fn slot(&self) -> Slot {
        match self {
            Request::Apply(command) => command.route_key().slot(),
            Request::QuerySku(sku) => slot_of(*sku),
            Request::QueryReservation(id) | Request::QueryCart(id) => id.slot(),
            Request::ReserveCart(cart) => {
                cart.lines.as_slice().first().map_or(Slot(0), |line| slot_of(line.sku))
            }
        }
    }
}

/// The answer to one request.
///
/// The views are boxed: an archived enum is as large as its largest variant, and a batch of
/// replies is almost all outcomes. Boxed, a reply archives in 18 bytes instead of 65.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// What the command did (business outcomes such as sold out are here).
    Outcome(Outcome),
    /// The SKU read, if it exists.
    Sku(Option<Box<SkuView>>),
    /// The reservation read, if it is known.
    Reservation(Option<Box<ReservationView>>),
    /// The request was not applied, and why; retrying with the same request id is safe.
    Refused(Refusal),
    /// The cart read, if it is known.
    Cart(Option<Box<CartView>>),
    // Version 8 added the one below.
    /// Not applied: this server of a cluster does not own the request's slot. Send it to
    /// `server` (after reading the map at `map_revision` or later); retrying with the same
    /// request id is safe.
    Moved(Box<Moved>),
}

/// Where a request of a slot this server does not own must go (docs/cluster.md).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The request's slot.
    pub slot: u16,
    /// The server that owns it in this server's map; empty when no map is stored yet.
    pub server: String,
    /// The etcd revision of that map.
    pub map_revision: i64,
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
    /// Too many reserve attempts per second from this buyer or this credential: try again
    /// after `retry_after_ms`, not sooner.
    RateLimited {
        /// When a retry may succeed.
        retry_after_ms: u32,
    },
    /// A cart whose lines are owned by more than one server of a cluster: carts across
    /// servers are not supported (docs/cluster.md); `slot` is the first line's slot owned
    /// elsewhere. Not retryable as it is.
    SpansServers {
        /// That line's slot.
        slot: u16,
    },
    // Version 9 added the one below.
    /// The request's slot is moving between servers of a cluster (docs/cluster.md): retry
    /// with the same request id shortly; once the move is done, its new owner (or, if the
    /// move is rolled back, this server) answers.
    SlotMoving {
        /// The slot.
        slot: u16,
    },
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
    /// The caller's role does not allow this (a non-consumer subscribing).
    PermissionDenied,
    /// A `Subscribe` the server cannot honour (bad consumer name, wrong cursor length, a
    /// cursor beyond the log's end).
    InvalidSubscription,
    /// The subscription's cursor points at records the log no longer holds.
    CursorTruncated,
    /// An `Ack` that does not fit what was delivered (wrong length, beyond what was sent,
    /// backwards).
    InvalidAck,
    /// The server could not serve the request (its log could not be read or written).
    Unavailable,
    /// A newer subscription of the same consumer took this one's place.
    Replaced,
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
            ErrorCode::PermissionDenied => 7,
            ErrorCode::InvalidSubscription => 8,
            ErrorCode::CursorTruncated => 9,
            ErrorCode::InvalidAck => 10,
            ErrorCode::Unavailable => 11,
            ErrorCode::Replaced => 12,
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
            7 => ErrorCode::PermissionDenied,
            8 => ErrorCode::InvalidSubscription,
            9 => ErrorCode::CursorTruncated,
            10 => ErrorCode::InvalidAck,
            11 => ErrorCode::Unavailable,
            12 => ErrorCode::Replaced,
            _ => return None,
        })
    }
}
