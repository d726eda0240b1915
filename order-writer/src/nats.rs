//! The optional second sink: every event published to NATS JetStream, for fan-out to other
//! consumers (notifications, analytics).
//!
//! Each message carries a `Nats-Msg-Id` header naming the event: the reservation id (a
//! reservation ends once) or, for stock changes, the event's place in the log. JetStream drops
//! a message whose id it saw within the stream's duplicate window, so a batch published again
//! after a crash (before its acknowledgement) is not delivered twice downstream.

use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, stream};
use flashstock_engine::{Change, ReservationState};
use flashstock_protocol::StreamEvent;

use crate::error::WriterError;

/// Where events go in NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream (created if missing), e.g. `FLASHSTOCK`.
    pub stream: String,
    /// The subject prefix: events go to `<prefix>.<kind>`, e.g. `flashstock.confirmed`.
    pub subject_prefix: String,
}

/// A connected JetStream publisher.
#[derive(Debug, Clone)]
pub struct NatsSink {
    jetstream: jetstream::Context,
    subject_prefix: String,
}

impl NatsSink {
    /// Connects and makes sure the stream exists, with a duplicate window long enough to cover
    /// a writer restart.
    pub async fn connect(config: &NatsConfig) -> Result<NatsSink, WriterError> {
        let failed = |detail: String| WriterError::Nats { url: config.url.clone(), detail };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&config.url)
            .await
            .map_err(|err| failed(err.to_string()))?;
        let jetstream = jetstream::new(client);
        jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                duplicate_window: Duration::from_secs(10 * 60),
                ..Default::default()
            })
            .await
            .map_err(|err| failed(format!("stream {}: {err}", config.stream)))?;
        Ok(NatsSink { jetstream, subject_prefix: config.subject_prefix.clone() })
    }

    /// Publishes `events` of shard `shard` and waits until JetStream has stored each.
    pub async fn publish(&self, shard: u16, events: &[StreamEvent]) -> Result<(), String> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let (kind, id, body) = describe(shard, event);
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, id.as_str());
            let subject = format!("{}.{kind}", self.subject_prefix);
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|err| err.to_string())?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|err| err.to_string())?;
        }
        Ok(())
    }
}

/// The subject suffix, message id and JSON body of an event.
pub fn describe(shard: u16, event: &StreamEvent) -> (&'static str, String, String) {
    let at_ms = event.event.at_ms;
    match event.event.change {
        Change::Ended(ended) => {
            let kind = match ended.state {
                ReservationState::Confirmed => "confirmed",
                ReservationState::Cancelled => "cancelled",
                ReservationState::Expired | ReservationState::Held => "expired",
            };
            let order_ref = match ended.order_ref {
                Some(order_ref) => format!("\"{:032x}\"", order_ref.0),
                None => "null".to_owned(),
            };
            let body = format!(
                "{{\"event\":\"{kind}\",\"reservation_id\":{},\"order_ref\":{order_ref},\
                 \"buyer_id\":{},\"sku_id\":{},\"qty\":{},\"at_ms\":{at_ms},\"shard\":{shard},\
                 \"seq\":{}}}",
                ended.reservation.0, ended.buyer.0, ended.sku.0, ended.qty, event.seq
            );
            (kind, ended.reservation.0.to_string(), body)
        }
        Change::StockSet { sku, total } => (
            "stock",
            format!("stock-{shard}-{}", event.seq),
            format!(
                "{{\"event\":\"stock_set\",\"sku_id\":{},\"total\":{total},\"at_ms\":{at_ms},\
                 \"shard\":{shard},\"seq\":{}}}",
                sku.0, event.seq
            ),
        ),
        Change::StockAdjusted { sku, delta } => (
            "stock",
            format!("stock-{shard}-{}", event.seq),
            format!(
                "{{\"event\":\"stock_adjusted\",\"sku_id\":{},\"delta\":{delta},\"at_ms\":{at_ms},\
                 \"shard\":{shard},\"seq\":{}}}",
                sku.0, event.seq
            ),
        ),
    }
}
