//! [`Subscriber`]: a consumer's end of the committed-deduction stream.
//!
//! One connection, one stream: `Hello`, then `Subscribe`, then the server's `Events` frames
//! as fast as the window allows. The consumer handles a batch (writes it to its database),
//! then acknowledges the cursor the batch reached; the server persists that cursor under the
//! consumer's name and resumes from it after any restart of either side. Delivery is at least
//! once: events after the last acknowledgement come again, so handling must be idempotent.
//!
//! ```no_run
//! # async fn example(tls: flashstock_client::ClientTls, token: &str) -> Result<(), flashstock_client::ClientError> {
//! use flashstock_client::{SubscribeOptions, Subscriber};
//! use flashstock_engine::{Change, ReservationState};
//!
//! let options = SubscribeOptions::new("order-writer");
//! let addr = "127.0.0.1:7400".parse().unwrap();
//! let mut subscriber = Subscriber::connect(addr, "localhost", &tls, Some(token), options).await?;
//! loop {
//!     let batch = subscriber.next_batch().await?;
//!     for event in &batch.events {
//!         if let Change::Ended(ended) = event.event.change {
//!             if ended.state == ReservationState::Confirmed {
//!                 // store the order for `ended.reservation`, idempotently
//!             }
//!         }
//!     }
//!     subscriber.ack_delivered().await?;
//! }
//! # }
//! ```

use std::net::SocketAddr;

use flashstock_engine::EventKind;
use flashstock_protocol::session::{ClientEvent, ClientSession};
use flashstock_protocol::{
    Decoded, EventBatch, FrameDecoder, FrameEncoder, Message, StartAt, Subscribe, Subscribed,
    FRAME_BYTES_MAX_DEFAULT,
};

use crate::connection::{closed_reason, hello, open};
use crate::error::ClientError;
use crate::tls::ClientTls;

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The consumer's durable name; its acknowledged cursor is kept under it.
    pub consumer: String,
    /// Where to start (default: after what the consumer acknowledged).
    pub start: StartAt,
    /// The kinds of events wanted (default: all).
    pub kinds: Vec<EventKind>,
    /// Events the server may send beyond the last acknowledgement (default 16,384).
    pub window_events: u32,
}

impl SubscribeOptions {
    /// Every event, from the consumer's acknowledged cursor, with the default window.
    pub fn new(consumer: impl Into<String>) -> SubscribeOptions {
        SubscribeOptions {
            consumer: consumer.into(),
            start: StartAt::Acknowledged,
            kinds: Vec::new(),
            window_events: 16_384,
        }
    }
}

/// A live subscription. Not `Clone`: one task reads it, and acknowledges what it handled.
#[derive(Debug)]
pub struct Subscriber {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    frame: Vec<u8>,
    /// The connection's rules: what the server may send, and when.
    rules: ClientSession,
    subscribed: Subscribed,
    /// Where each shard's delivery has reached (what the next ack may say at most).
    delivered: Vec<u64>,
}

impl Subscriber {
    /// Connects, authenticates with a `consumer` credential, and subscribes.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
        token: Option<&str>,
        options: SubscribeOptions,
    ) -> Result<Subscriber, ClientError> {
        let (endpoint, connection) = open(addr, server_name, tls).await?;
        let (send, recv) = connection.open_bi().await?;
        let mut subscriber = Subscriber {
            connection,
            _endpoint: endpoint,
            send,
            recv,
            decoder: FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT),
            encoder: FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT),
            frame: Vec::new(),
            rules: ClientSession::new(),
            subscribed: Subscribed { cursor: Vec::new(), window_events: 0 },
            delivered: Vec::new(),
        };
        subscriber.send(&hello(&subscriber.rules, token)).await?;
        match subscriber.receive().await? {
            ClientEvent::Welcome { .. } => {}
            other => return Err(ClientError::Unexpected(format!("{other:?} in answer to Hello"))),
        }
        let subscribe = Subscribe {
            consumer: options.consumer,
            start: options.start,
            kinds: options.kinds,
            window_events: options.window_events,
        };
        subscriber.send(&Message::Subscribe(subscribe)).await?;
        match subscriber.receive().await? {
            ClientEvent::Subscribed(subscribed) => {
                subscriber.delivered = subscribed.cursor.clone();
                subscriber.subscribed = subscribed;
                Ok(subscriber)
            }
            other => Err(ClientError::Unexpected(format!("{other:?} in answer to Subscribe"))),
        }
    }

    /// Where delivery started: one sequence number per shard.
    pub fn start_cursor(&self) -> &[u64] {
        &self.subscribed.cursor
    }

    /// The window the server granted.
    pub fn window_events(&self) -> u32 {
        self.subscribed.window_events
    }

    /// Where delivery has reached, per shard: acknowledging this says every event received
    /// so far is handled.
    pub fn delivered(&self) -> &[u64] {
        &self.delivered
    }

    /// Waits for the next batch of events (one shard's, in its log order).
    pub async fn next_batch(&mut self) -> Result<EventBatch, ClientError> {
        match self.receive().await? {
            ClientEvent::Events(batch) => {
                let shard = usize::from(batch.shard);
                let Some(position) = self.delivered.get_mut(shard) else {
                    return Err(ClientError::Unexpected(format!(
                        "events of unknown shard {shard}"
                    )));
                };
                *position = (*position).max(batch.end_seq);
                Ok(batch)
            }
            other => Err(ClientError::Unexpected(format!("{other:?} on a subscription"))),
        }
    }

    /// Acknowledges `cursor` (one position per shard): every event below it is handled for
    /// good. The server stores it before it counts; a cursor that moves back or passes what
    /// was delivered closes the subscription with `InvalidAck`.
    pub async fn ack_cursor(&mut self, cursor: &[u64]) -> Result<(), ClientError> {
        self.send(&Message::Ack(cursor.to_vec())).await
    }

    /// Acknowledges everything delivered so far (call it once every batch received is handled).
    pub async fn ack_delivered(&mut self) -> Result<(), ClientError> {
        let cursor = self.delivered.clone();
        self.ack_cursor(&cursor).await
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection.close(0u32.into(), b"subscriber done");
    }

    async fn send(&mut self, message: &Message) -> Result<(), ClientError> {
        self.frame.clear();
        self.encoder.encode(0, message, &mut self.frame)?;
        if let Err(err) = self.send.write_all(&self.frame).await {
            return Err(closed_reason(&self.connection).unwrap_or(err.into()));
        }
        Ok(())
    }

    /// The next frame from the server, put through the connection's rules.
    async fn receive(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            match self.decoder.decode()? {
                Decoded::Frame(frame) => {
                    return match self.rules.handle_frame(frame) {
                        Ok(ClientEvent::Refused(error)) => Err(ClientError::Rejected {
                            code: error.code,
                            detail: error.detail,
                            supported_versions: error.supported_versions,
                        }),
                        Ok(event) => Ok(event),
                        Err(close) => {
                            self.connection
                                .close(close.code.as_u32().into(), close.detail.as_bytes());
                            Err(ClientError::Unexpected(close.detail))
                        }
                    };
                }
                Decoded::NeedMore { .. } => {}
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => {
                    return Err(closed_reason(&self.connection).unwrap_or(ClientError::Closed))
                }
                Err(err) => {
                    return Err(closed_reason(&self.connection)
                        .unwrap_or(ClientError::Unexpected(err.to_string())))
                }
            }
        }
    }
}
