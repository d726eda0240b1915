//! One subscription to the committed-deduction stream, on a stream of its own.
//!
//! The task reads each shard's log from the subscription's cursor (below the durable end),
//! sends `Events` frames while the events sent and not yet acknowledged stay within the window,
//! and otherwise waits for the next group commit or the consumer's next `Ack`. Acks are checked
//! against what was sent and persisted under the consumer's name before they count. Memory per
//! subscription is bounded by its window: one sequence number per unacknowledged event.

use std::collections::VecDeque;

use flashstock_protocol::session::{check_ack, Close};
use flashstock_protocol::{ErrorCode, EventBatch, Message, StartAt, Subscribe, Subscribed};
use tokio::sync::mpsc;

use crate::net::session::Outgoing;
use flashstock_runtime::stream::{kinds_mask, EventLog, StreamError};

/// The most events one `Events` frame carries (about 100 bytes each archived, so a frame stays
/// far below the 1 MiB default frame limit).
pub const EVENTS_PER_FRAME_MAX: usize = 2048;
/// The most records one read looks at, so a consumer filtering out nearly everything still
/// gets progress frames at a bounded cost per read.
const RECORDS_PER_READ_MAX: u64 = 65_536;

/// Runs a subscription until the consumer goes away (`Ok`) or breaks the protocol (`Err`,
/// with the reason the connection closes for).
pub(crate) async fn run(
    events: EventLog,
    subscribe: Subscribe,
    window_events_max: u32,
    correlation: u64,
    frames: mpsc::Sender<Outgoing>,
    mut acks: mpsc::Receiver<Vec<u64>>,
) -> Result<(), Close> {
    let shard_count = events.shard_count();
    let window_events = subscribe.window_events.clamp(1, window_events_max);
    let mask = kinds_mask(&subscribe.kinds);
    let (claim, start) = {
        let events = events.clone();
        blocking(move || open(&events, &subscribe)).await?
    };
    let mut claim = claim;
    let consumer = claim.consumer.clone();
    tracing::info!(%consumer, cursor = ?start, window_events, "subscription opened");
    let subscribed = Subscribed { cursor: start.clone(), window_events };
    if frames.send((correlation, Message::Subscribed(subscribed), None)).await.is_err() {
        return Ok(());
    }

    let mut next = start.clone();
    let mut acked = start;
    // Per shard, the sequence numbers of events sent and not yet acknowledged.
    let mut unacked: Vec<VecDeque<u64>> = vec![VecDeque::new(); shard_count];
    let mut unacked_count = 0usize;
    let mut commits = events.commits();
    let mut turn = 0usize;
    let delivered: Vec<metrics::Gauge> = (0..shard_count)
        .map(|shard| {
            let labels = [("consumer", consumer.clone()), ("shard", shard.to_string())];
            metrics::gauge!(crate::metrics::CONSUMER_DELIVERED_POSITION, &labels)
        })
        .collect();
    loop {
        // Fill the window, one read per shard in turn.
        let mut sent_any = false;
        for _ in 0..shard_count {
            let shard = turn % shard_count;
            turn += 1;
            let room = (window_events as usize).saturating_sub(unacked_count);
            let shard_id = shard as u16;
            if room == 0 || next[shard] >= events.durable_end(shard_id) {
                continue;
            }
            let events_max = room.min(EVENTS_PER_FRAME_MAX);
            let from_seq = next[shard];
            let read = {
                let events = events.clone();
                blocking(move || {
                    events.read(shard_id, from_seq, mask, events_max, RECORDS_PER_READ_MAX)
                })
                .await?
            };
            if read.end_seq == from_seq {
                continue;
            }
            unacked[shard].extend(read.events.iter().map(|e| e.seq));
            unacked_count += read.events.len();
            next[shard] = read.end_seq;
            delivered[shard].set(read.end_seq as f64);
            let batch = EventBatch { shard: shard_id, events: read.events, end_seq: read.end_seq };
            if frames.send((correlation, Message::Events(batch), None)).await.is_err() {
                return Ok(());
            }
            sent_any = true;
        }
        // Take every ack already here; wait for one, or a commit, only when nothing moved.
        let ack = if sent_any {
            match acks.try_recv() {
                Ok(ack) => Some(ack),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            }
        } else {
            tokio::select! {
                () = claim.subscription.replaced() => {
                    let detail = format!(
                        "a newer subscription of consumer {consumer:?} took over, or an admin removed it"
                    );
                    return Err(Close { code: ErrorCode::Replaced, detail });
                }
                ack = acks.recv() => match ack {
                    Some(ack) => Some(ack),
                    None => return Ok(()),
                },
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the runtime stopped
                    }
                    None
                }
            }
        };
        let Some(ack) = ack else { continue };
        check_ack(&ack, &acked, &next)?;
        {
            let (consumers, consumer, ack) =
                (events.consumers().clone(), consumer.clone(), ack.clone());
            blocking(move || consumers.acknowledge(&consumer, &ack)).await?;
        }
        for (shard, &position) in ack.iter().enumerate() {
            while unacked[shard].front().is_some_and(|&seq| seq < position) {
                unacked[shard].pop_front();
                unacked_count -= 1;
            }
        }
        acked = ack;
    }
}

/// Checks the request, claims the consumer name and decides where delivery starts. Nothing is
/// registered for a request that fails its checks.
fn open(events: &EventLog, subscribe: &Subscribe) -> Result<(Claim, Vec<u64>), StreamError> {
    let shard_count = events.shard_count();
    let first: Vec<u64> = (0..shard_count as u16)
        .map(|shard| events.first_available(shard))
        .collect::<Result<_, _>>()?;
    if let StartAt::Cursor(cursor) = &subscribe.start {
        check_cursor(events, cursor, &first)?;
    }
    // A new consumer is registered where it starts (or where the log starts now), so that
    // from this moment on truncation keeps what it has not acknowledged.
    let initial = match &subscribe.start {
        StartAt::Cursor(cursor) => cursor.clone(),
        StartAt::Acknowledged | StartAt::Earliest => first.clone(),
    };
    let (subscription, acked) =
        events.consumers().subscribe(&subscribe.consumer, || initial.clone())?;
    let start = match &subscribe.start {
        StartAt::Acknowledged => {
            check_cursor(events, &acked, &first)?;
            acked
        }
        StartAt::Earliest => first,
        StartAt::Cursor(cursor) => cursor.clone(),
    };
    Ok((Claim { subscription, consumer: subscribe.consumer.clone() }, start))
}

/// A cursor must have one position per shard, within what the log holds durably.
fn check_cursor(events: &EventLog, cursor: &[u64], first: &[u64]) -> Result<(), StreamError> {
    if cursor.len() != first.len() {
        return Err(StreamError::CursorLength { shard_count: first.len(), found: cursor.len() });
    }
    for (shard, (&position, &first_available)) in cursor.iter().zip(first).enumerate() {
        let shard = shard as u16;
        let durable_end = events.durable_end(shard);
        if position > durable_end {
            return Err(StreamError::CursorBeyondEnd { shard, requested: position, durable_end });
        }
        if position < first_available {
            return Err(StreamError::Truncated { shard, requested: position, first_available });
        }
    }
    Ok(())
}

/// Holds the consumer's name for the subscription's life.
struct Claim {
    subscription: flashstock_runtime::stream::Subscription,
    consumer: String,
}

/// An ack must have one position per shard, never move backwards, and never pass what was
/// sent.
/// Runs blocking log work off the executor, mapping its failure to a close reason.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StreamError> + Send + 'static,
) -> Result<T, Close> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(close_for(err)),
        Err(join) => Err(Close { code: ErrorCode::Unavailable, detail: join.to_string() }),
    }
}

fn close_for(err: StreamError) -> Close {
    let code = match err {
        StreamError::Truncated { .. } => ErrorCode::CursorTruncated,
        StreamError::Read { .. } | StreamError::Store(_) | StreamError::Stopped => {
            ErrorCode::Unavailable
        }
        StreamError::BadConsumerName(_)
        | StreamError::CursorLength { .. }
        | StreamError::CursorBeyondEnd { .. } => ErrorCode::InvalidSubscription,
    };
    Close { code, detail: err.to_string() }
}
