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
use flashstock_engine::{Change, Ended, ReservationState};
use flashstock_protocol::StreamEvent;
use serde_json::json;

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
    let (at_ms, seq) = (event.event.at_ms, event.seq);
    let (kind, id, body) = match event.event.change {
        Change::Ended(ended) => {
            let (kind, body) = describe_ended(&ended);
            (kind, ended.reservation.0.to_string(), body)
        }
        Change::CartLineEnded { line, ended } => {
            let (kind, mut body) = describe_ended(&ended);
            body["line"] = json!(line);
            (kind, format!("{}-{line}", ended.reservation.0), body)
        }
        Change::Returned(r) => {
            let body = json!({
                "event": "returned",
                "reservation_id": r.reservation.0,
                "line": r.line,
                "buyer_id": r.buyer.0,
                "sku_id": r.sku.0,
                "qty": r.qty,
                "returned_total": r.returned_total,
            });
            // A sale's running total names each of its returns once.
            let id = format!("return-{}-{}-{}", r.reservation.0, r.line, r.returned_total);
            ("returned", id, body)
        }
        Change::StockSet { sku, total } => {
            let body = json!({"event": "stock_set", "sku_id": sku.0, "total": total});
            ("stock", format!("stock-{shard}-{seq}"), body)
        }
        Change::StockAdjusted { sku, delta } => {
            let body = json!({"event": "stock_adjusted", "sku_id": sku.0, "delta": delta});
            ("stock", format!("stock-{shard}-{seq}"), body)
        }
    };
    let mut body = body;
    body["at_ms"] = json!(at_ms);
    body["shard"] = json!(shard);
    body["seq"] = json!(seq);
    (kind, id, body.to_string())
}

/// The subject suffix and JSON body of a reservation's (or a cart line's) end.
fn describe_ended(ended: &Ended) -> (&'static str, serde_json::Value) {
    let kind = match ended.state {
        ReservationState::Confirmed => "confirmed",
        ReservationState::Cancelled => "cancelled",
        ReservationState::Expired | ReservationState::Held => "expired",
    };
    let body = json!({
        "event": kind,
        "reservation_id": ended.reservation.0,
        "order_ref": ended.order_ref.map(|r| format!("{:032x}", r.0)),
        "buyer_id": ended.buyer.0,
        "sku_id": ended.sku.0,
        "qty": ended.qty,
    });
    (kind, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashstock_engine::{BuyerId, Event, OrderRef, ReservationId, SkuId};

    #[test]
    fn a_confirm_is_named_by_its_reservation_and_described_in_json() {
        let ended = Ended {
            reservation: ReservationId(77),
            state: ReservationState::Confirmed,
            buyer: BuyerId(5),
            sku: SkuId(9),
            qty: 2,
            order_ref: Some(OrderRef(0xabc)),
        };
        let event =
            StreamEvent { seq: 12, event: Event { at_ms: 1_000, change: Change::Ended(ended) } };
        let (kind, id, body) = describe(1, &event);
        assert_eq!((kind, id.as_str()), ("confirmed", "77"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["order_ref"], "00000000000000000000000000000abc");
        assert_eq!(
            (body["qty"].as_u64(), body["seq"].as_u64(), body["shard"].as_u64()),
            (Some(2), Some(12), Some(1))
        );
        let stock = StreamEvent {
            seq: 3,
            event: Event { at_ms: 1, change: Change::StockSet { sku: SkuId(9), total: 10 } },
        };
        assert_eq!(describe(0, &stock).1, "stock-0-3");
    }
}
