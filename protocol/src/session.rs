//! A connection's rules, sans IO (as `quinn-proto` is for QUIC): frames in, decisions out, time
//! as an argument. The server's session drives [`ServerSession`]; the client's connection and
//! subscriber drive [`ClientSession`]. No sockets here, so one set of unit tests covers every
//! rule and every bad input, and the network code only moves bytes and calls the engine.
//!
//! The rules:
//! - a connection authenticates first: its first frame, on its first stream, is a `Hello` of
//!   at most [`HELLO_BYTES_MAX`] payload bytes, within `hello_timeout_ms` of the connection's
//!   start; anything else, or nothing in time, closes it `Unauthenticated` (a larger frame
//!   `FrameTooLarge`). It authenticates once.
//! - after `Welcome`, a stream carries `Requests` batches, or is a subscription: a `Subscribe`
//!   (consumer credentials that may act for the named consumer) and then only `Ack`s;
//! - a client never sends what only a server sends (`Welcome`, `Replies`, `Events`...), and a
//!   server's frames are checked the same way on the client;
//! - an `Ack` must fit what was delivered ([`check_ack`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::FrameError;
use crate::frame::{Frame, HELLO_BYTES_MAX};
use crate::message::{
    AdminReply, AdminRequest, ConnectionError, ErrorCode, EventBatch, Message, Reply, Request,
    Role, Subscribe, Subscribed,
};
use crate::tokens::TokenEntry;

/// Why a side closes the connection: sent in an `Error` frame and as the QUIC close code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct Close {
    /// The reason.
    pub code: ErrorCode,
    /// Detail for humans and logs.
    pub detail: String,
}

impl Close {
    /// A close for `code`, explained by `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Close {
        Close { code, detail: detail.into() }
    }

    /// The close a stream's undecodable bytes call for.
    pub fn for_frame_error(err: &FrameError) -> Close {
        let code = match err {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::MalformedFrame,
        };
        Close::new(code, err.to_string())
    }
}

/// What a credential grants a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// For a token, its entry (which consumer names it acts for); `None` for a client
    /// certificate of the consumer CA, which may act for any consumer.
    pub consumers: Option<Arc<TokenEntry>>,
}

impl Grant {
    /// Whether this credential may act for `consumer`.
    pub fn may_act_for(&self, consumer: &str) -> bool {
        self.role == Role::Consumer
            && self.consumers.as_ref().is_none_or(|entry| entry.acts_for(consumer))
    }
}

/// The server's side of the limits a connection is told in `Welcome`, and the Hello deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest frame payload accepted once authenticated.
    pub frame_bytes_max: u32,
    /// Requests one connection may have in flight.
    pub in_flight_max: u32,
    /// How long a connection has to authenticate.
    pub hello_timeout_ms: u64,
}

/// What a frame asks of the server, once the rules let it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// Credentials: the driver checks them and calls [`ServerSession::authenticated`].
    Hello {
        /// The frame's correlation id, for the `Welcome`.
        correlation: u64,
        /// The bearer token, if any.
        token: Option<String>,
        /// The client's name, for logs.
        client_name: String,
    },
    /// A batch to answer with one `Replies` frame of the same correlation id.
    Requests {
        /// The frame's correlation id.
        correlation: u64,
        /// The requests.
        batch: Vec<Request>,
        /// The caller's role, which each request is checked against.
        role: Role,
    },
    /// A subscription to open on this stream (role and consumer name already checked).
    Subscribe {
        /// The frame's correlation id.
        correlation: u64,
        /// What to subscribe to.
        subscribe: Subscribe,
    },
    /// An operation on the server itself; the driver answers `Refused(PermissionDenied)`
    /// unless `role` is `Admin`.
    Admin {
        /// The frame's correlation id.
        correlation: u64,
        /// The operation.
        request: AdminRequest,
        /// The caller's role.
        role: Role,
    },
    /// An acknowledgement for this stream's subscription.
    Ack {
        /// The cursor the consumer has handled.
        cursor: Vec<u64>,
    },
}

/// What a stream carries, decided by its first message after `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamUse {
    Requests,
    Subscription,
}

/// Where the server's side of a connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ServerState {
    /// Nothing yet but maybe a Hello on its first stream, until the deadline.
    AwaitingHello { first_stream: Option<u64>, deadline_ms: u64 },
    /// A Hello is being checked by the driver.
    Authenticating,
    /// Authenticated.
    Ready(Grant),
}

/// The server's side of one connection's rules.
#[derive(Clone, Debug)]
pub struct ServerSession {
    limits: ServerLimits,
    state: ServerState,
    /// The use of each stream that has decided one (at most the streams QUIC lets open).
    streams: BTreeMap<u64, StreamUse>,
}

impl ServerSession {
    /// A connection that started at `now_ms`.
    pub fn new(limits: ServerLimits, now_ms: u64) -> ServerSession {
        let deadline_ms = now_ms.saturating_add(limits.hello_timeout_ms);
        let state = ServerState::AwaitingHello { first_stream: None, deadline_ms };
        ServerSession { limits, state, streams: BTreeMap::new() }
    }

    /// The largest frame payload to accept now: a Hello's until authenticated.
    pub fn frame_bytes_max(&self) -> u32 {
        match self.state {
            ServerState::Ready(_) => self.limits.frame_bytes_max,
            _ => HELLO_BYTES_MAX,
        }
    }

    /// When [`ServerSession::handle_timeout`] must be called: the Hello deadline, until
    /// authenticated.
    pub fn timeout_ms(&self) -> Option<u64> {
        match self.state {
            ServerState::AwaitingHello { deadline_ms, .. } => Some(deadline_ms),
            _ => None,
        }
    }

    /// The time is `now_ms`: past the Hello deadline without a Hello, the connection closes.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), Close> {
        match self.state {
            ServerState::AwaitingHello { deadline_ms, .. } if now_ms >= deadline_ms => {
                let limit_ms = self.limits.hello_timeout_ms;
                let detail = format!("no Hello with credentials within {limit_ms} ms");
                Err(Close::new(ErrorCode::Unauthenticated, detail))
            }
            _ => Ok(()),
        }
    }

    /// What the credentials granted, once authenticated.
    pub fn grant(&self) -> Option<&Grant> {
        match &self.state {
            ServerState::Ready(grant) => Some(grant),
            _ => None,
        }
    }

    /// Takes a frame from `stream`; what it asks, or why the connection must close.
    pub fn handle_frame(&mut self, stream: u64, frame: Frame) -> Result<ServerEvent, Close> {
        let grant = match &mut self.state {
            ServerState::AwaitingHello { first_stream, .. } => {
                if first_stream.is_some_and(|first| first != stream) {
                    return Err(unauthenticated("a Hello comes first, on the first stream"));
                }
                *first_stream = Some(stream);
                let Message::Hello { token, client_name } = frame.message else {
                    return Err(unauthenticated("send Hello with credentials first"));
                };
                self.state = ServerState::Authenticating;
                let correlation = frame.correlation;
                return Ok(ServerEvent::Hello { correlation, token, client_name });
            }
            ServerState::Authenticating => {
                return Err(unauthenticated("nothing may follow a Hello before its Welcome"));
            }
            ServerState::Ready(grant) => grant,
        };
        let unexpected = |detail: &str| Close::new(ErrorCode::UnexpectedMessage, detail);
        let use_ = self.streams.get(&stream).copied();
        match (frame.message, use_) {
            (Message::Hello { .. }, _) => Err(unexpected("a connection authenticates once")),
            (Message::Requests(batch), None | Some(StreamUse::Requests)) => {
                self.streams.insert(stream, StreamUse::Requests);
                let (correlation, role) = (frame.correlation, grant.role);
                Ok(ServerEvent::Requests { correlation, batch, role })
            }
            (Message::Admin(request), None | Some(StreamUse::Requests)) => {
                self.streams.insert(stream, StreamUse::Requests);
                let (correlation, role) = (frame.correlation, grant.role);
                Ok(ServerEvent::Admin { correlation, request, role })
            }
            (Message::Subscribe(subscribe), None) => {
                check_subscriber(grant, &subscribe)?;
                self.streams.insert(stream, StreamUse::Subscription);
                Ok(ServerEvent::Subscribe { correlation: frame.correlation, subscribe })
            }
            (Message::Ack(cursor), Some(StreamUse::Subscription)) => {
                Ok(ServerEvent::Ack { cursor })
            }
            (Message::Subscribe(_) | Message::Ack(_), _) => Err(unexpected(
                "Subscribe opens a stream of its own, and Ack belongs on that stream",
            )),
            (_, Some(StreamUse::Subscription)) => {
                Err(unexpected("a subscription's stream carries only Ack"))
            }
            (other, _) => {
                let name = message_name(&other);
                Err(unexpected(&format!("a client does not send {name}")))
            }
        }
    }

    /// The driver's verdict on the Hello's credentials: the `Welcome` to send, or the close.
    pub fn authenticated(&mut self, grant: Option<Grant>) -> Result<Message, Close> {
        if self.state != ServerState::Authenticating {
            return Err(Close::new(ErrorCode::UnexpectedMessage, "no Hello is being checked"));
        }
        let Some(grant) = grant else {
            let detail = "missing or unknown credentials (bearer token or client certificate)";
            return Err(unauthenticated(detail));
        };
        let role = grant.role;
        self.state = ServerState::Ready(grant);
        Ok(Message::Welcome {
            role,
            frame_bytes_max: self.limits.frame_bytes_max,
            in_flight_max: self.limits.in_flight_max,
        })
    }

    /// `stream` has ended: its use is forgotten.
    pub fn stream_ended(&mut self, stream: u64) {
        self.streams.remove(&stream);
    }
}

fn unauthenticated(detail: &str) -> Close {
    Close::new(ErrorCode::Unauthenticated, detail)
}

fn check_subscriber(grant: &Grant, subscribe: &Subscribe) -> Result<(), Close> {
    if grant.may_act_for(&subscribe.consumer) {
        return Ok(());
    }
    let detail = if grant.role == Role::Consumer {
        // One consumer must not replace another's subscription, nor move its cursor forward
        // past orders it never stored.
        format!("this credential may not act for consumer {:?}", subscribe.consumer)
    } else {
        format!("the {:?} role may not subscribe; use a consumer credential", grant.role)
    };
    Err(Close::new(ErrorCode::PermissionDenied, detail))
}

/// Checks a consumer's ack: one position per shard, never backwards from what it acknowledged
/// before, never past what was sent.
pub fn check_ack(ack: &[u64], acked: &[u64], sent: &[u64]) -> Result<(), Close> {
    let invalid = |detail: String| Close::new(ErrorCode::InvalidAck, detail);
    if ack.len() != sent.len() {
        return Err(invalid(format!("an ack has {} positions, one per shard", sent.len())));
    }
    for (shard, ((&position, &before), &end)) in ack.iter().zip(acked).zip(sent).enumerate() {
        if position < before {
            return Err(invalid(format!("shard {shard}: ack {position} moves back from {before}")));
        }
        if position > end {
            return Err(invalid(format!(
                "shard {shard}: ack {position} passes what was sent ({end})"
            )));
        }
    }
    Ok(())
}

/// The name of a message's kind, for errors.
pub fn message_name(message: &Message) -> &'static str {
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
        Message::Admin(_) => "Admin",
        Message::AdminReply(_) => "AdminReply",
    }
}

/// What a server's frame tells the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection is authenticated.
    Welcome {
        /// The role granted.
        role: Role,
        /// The largest frame payload the server accepts.
        frame_bytes_max: u32,
        /// Requests the server lets this connection have in flight.
        in_flight_max: u32,
    },
    /// The replies of the request frame with this correlation id.
    Replies {
        /// The request frame's correlation id.
        correlation: u64,
        /// One reply per request, in order.
        replies: Vec<Reply>,
    },
    /// The answer to the `Admin` frame with this correlation id.
    Admin {
        /// The request frame's correlation id.
        correlation: u64,
        /// The answer.
        reply: AdminReply,
    },
    /// The subscription is open.
    Subscribed(Subscribed),
    /// The next events of one shard.
    Events(EventBatch),
    /// The server refused the connection or is closing it, and said why.
    Refused(ConnectionError),
}

/// The client's side of one connection's rules: a `Welcome` (or an `Error`) first, then only
/// what a server sends.
#[derive(Clone, Debug, Default)]
pub struct ClientSession {
    role: Option<Role>,
}

impl ClientSession {
    /// A connection about to say Hello.
    pub fn new() -> ClientSession {
        ClientSession::default()
    }

    /// The first message: credentials (a token, or none when the TLS client certificate
    /// authenticates) and a name for the server's logs.
    pub fn hello(&self, token: Option<&str>, client_name: &str) -> Message {
        Message::Hello { token: token.map(str::to_owned), client_name: client_name.to_owned() }
    }

    /// The role granted, once welcomed.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Takes a frame from the server; what it says, or why the client gives the connection up.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<ClientEvent, Close> {
        let unexpected = |message: &Message, when: &str| {
            let detail = format!("the server sent {} {when}", message_name(message));
            Close::new(ErrorCode::UnexpectedMessage, detail)
        };
        match (frame.message, self.role) {
            (Message::Error(error), _) => Ok(ClientEvent::Refused(error)),
            (Message::Welcome { role, frame_bytes_max, in_flight_max }, None) => {
                self.role = Some(role);
                Ok(ClientEvent::Welcome { role, frame_bytes_max, in_flight_max })
            }
            (message, None) => Err(unexpected(&message, "before Welcome")),
            (Message::Replies(replies), Some(_)) => {
                Ok(ClientEvent::Replies { correlation: frame.correlation, replies })
            }
            (Message::AdminReply(reply), Some(_)) => {
                Ok(ClientEvent::Admin { correlation: frame.correlation, reply })
            }
            (Message::Subscribed(subscribed), Some(Role::Consumer)) => {
                Ok(ClientEvent::Subscribed(subscribed))
            }
            (Message::Events(batch), Some(Role::Consumer)) => Ok(ClientEvent::Events(batch)),
            (message, Some(_)) => Err(unexpected(&message, "after Welcome")),
        }
    }
}
