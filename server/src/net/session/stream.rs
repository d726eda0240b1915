//! One stream, one task. The task reads frames, submits each request batch to the shards at
//! once, and writes the replies itself, coalescing every answer that is ready into one write.
//! No task per frame and no writer task: on a 2-core server the wake-ups between such tasks
//! cost more than the requests they carried (a single caller's frame went reader → batch
//! task → writer task → QUIC). Batches still finish in any order: their answers are futures
//! polled by this task (`FuturesUnordered`), not tasks of their own.
//!
//! Backpressure is by not reading. A frame whose requests exceed the connection's in-flight
//! budget is parked (decoded, not taken) and the stream is not read until the budget frees;
//! meanwhile answers keep being written, which is what frees it. An ack that finds its
//! subscription's queue full is parked the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flashstock_protocol::session::{Close, ServerEvent};
use flashstock_protocol::{
    ConnectionError, Decoded, ErrorCode, Frame, FrameDecoder, FrameEncoder, Message, Reply,
    Request, Role, SUPPORTED_VERSIONS,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::{auth_failed, refusal, InFlight, NetStats, Outgoing, Session};
use crate::net::auth::permits;
use crate::net::gates::Gates;
use flashstock_runtime::{Handle, PendingBatch};

/// Bytes read from a stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Frames a subscription may have queued for this stream's writer.
const SUBSCRIPTION_FRAMES_QUEUED_MAX: usize = 256;
/// Acks queued for a subscription task; the consumer waits for events between acks, so a
/// few suffice.
const ACKS_QUEUED_MAX: usize = 16;

/// A batch being answered: resolves to its `Replies` frame, the requests' in-flight permits
/// travelling with it until it is written.
type Answering = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// What a stream waits for before it reads on.
enum Parked {
    /// A frame's requests, waiting for the connection's in-flight budget.
    Requests {
        correlation: u64,
        batch: Vec<Request>,
        role: Role,
        permit: Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>,
    },
    /// An ack, waiting for room in its subscription's queue.
    Ack(Vec<u64>),
}

/// Everything a stream's task owns besides the bytes it reads.
struct StreamIo {
    writer: StreamWriter,
    answering: FuturesUnordered<Answering>,
    parked: Option<Parked>,
    /// The subscription this stream carries, if it became one, and the queue its acks take.
    subscription: Option<JoinHandle<Result<(), Close>>>,
    acks: Option<mpsc::Sender<Vec<u64>>>,
    /// The subscription task's way to the writer.
    frames: mpsc::Sender<Outgoing>,
}

pub(super) async fn run_stream(
    session: Arc<Session>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let stream = u64::from(recv.id());
    let (frames, mut queued) = mpsc::channel(SUBSCRIPTION_FRAMES_QUEUED_MAX);
    let mut io = StreamIo {
        writer: StreamWriter::new(send),
        answering: FuturesUnordered::new(),
        parked: None,
        subscription: None,
        acks: None,
        frames,
    };
    // The rules say how large a frame may be: a Hello's until authenticated, so a header
    // announcing more is refused before any of it is buffered.
    let mut decoder = FrameDecoder::new(session.rules().frame_bytes_max());
    let mut stopping = session.shared.stopping.clone();
    let mut close = None;
    loop {
        if let Err(reason) = session.take_buffered(stream, &mut decoder, &mut io).await {
            close = Some(reason);
            break;
        }
        // Everything answered since the last write goes out in one.
        io.collect_ready(&session.shared.stats, &mut queued);
        if io.writer.flush().await.is_err() {
            break;
        }
        tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK_BYTES, true), if io.parked.is_none() => match chunk {
                Ok(Some(chunk)) => decoder.push(&chunk.bytes),
                Ok(None) | Err(_) => break,
            },
            unparked = unpark(&mut io.parked, io.acks.as_ref()), if io.parked.is_some() => {
                if let Some((correlation, batch, role, permit)) = unparked {
                    io.answering.push(session.answer(correlation, batch, role, permit));
                }
            }
            Some(answer) = io.answering.next(), if !io.answering.is_empty() => {
                io.answered(&session.shared.stats, answer);
            }
            Some(frame) = queued.recv() => io.writer.queue(frame),
            _ = stopping.changed() => break,
            ended = async { io.subscription.as_mut().expect("guarded").await }, if io.subscription.is_some() => {
                io.subscription = None;
                if let Ok(Err(reason)) = ended {
                    close = Some(reason);
                }
                break;
            }
        }
    }
    session.end_stream(stream, io, close).await;
}

/// Waits for what the parked item waits for. A parked frame comes back with its permit, to be
/// answered; a parked ack is passed on here (or dropped with a subscription that ended).
async fn unpark(
    parked: &mut Option<Parked>,
    acks: Option<&mpsc::Sender<Vec<u64>>>,
) -> Option<(u64, Vec<Request>, Role, OwnedSemaphorePermit)> {
    match parked {
        Some(Parked::Requests { permit, .. }) => {
            let permit = permit.await;
            let Some(Parked::Requests { correlation, batch, role, .. }) = parked.take() else {
                unreachable!("matched above")
            };
            Some((correlation, batch, role, permit))
        }
        Some(Parked::Ack(_)) => {
            let slot = match acks {
                Some(acks) => acks.reserve().await.ok(),
                None => None,
            };
            if let (Some(slot), Some(Parked::Ack(cursor))) = (slot, parked.take()) {
                slot.send(cursor);
            }
            *parked = None;
            None
        }
        None => std::future::pending().await,
    }
}

impl StreamIo {
    /// Queues a batch's answer for writing: the batch is no longer held.
    fn answered(&mut self, stats: &NetStats, answer: Outgoing) {
        stats.batches_held.fetch_sub(1, Ordering::AcqRel);
        self.writer.queue(answer);
    }

    /// Queues every answer already resolved and every frame the subscription queued, without
    /// waiting: they leave in one write.
    fn collect_ready(&mut self, stats: &NetStats, queued: &mut mpsc::Receiver<Outgoing>) {
        while let Some(Some(answer)) = self.answering.next().now_or_never() {
            self.answered(stats, answer);
        }
        while let Ok(frame) = queued.try_recv() {
            self.writer.queue(frame);
        }
    }
}

impl Session {
    /// Puts every whole frame buffered through the rules and does what each asks, until the
    /// bytes run out or a frame has to wait for the in-flight budget.
    async fn take_buffered(
        self: &Arc<Self>,
        stream: u64,
        decoder: &mut FrameDecoder,
        io: &mut StreamIo,
    ) -> Result<(), Close> {
        while io.parked.is_none() {
            let frame = match decoder.decode() {
                Ok(Decoded::NeedMore { .. }) => return Ok(()),
                Ok(Decoded::Frame(frame)) => frame,
                Err(err) => return Err(Close::for_frame_error(&err)),
            };
            self.route(stream, frame, io).await?;
            decoder.set_frame_bytes_max(self.rules().frame_bytes_max());
        }
        Ok(())
    }

    /// Puts a frame through the rules, then does what it asks: authenticate, answer a batch,
    /// open a subscription, or pass an ack to this stream's subscription.
    async fn route(
        self: &Arc<Self>,
        stream: u64,
        frame: Frame,
        io: &mut StreamIo,
    ) -> Result<(), Close> {
        let event = self.rules().handle_frame(stream, frame)?;
        match event {
            ServerEvent::Hello { correlation, token, client_name } => {
                let (grant, credential) = self.authenticate(token.as_deref());
                let _ = self.credential.set(credential);
                if grant.is_none() {
                    auth_failed(if token.is_none() { "no_credentials" } else { "bad_credentials" });
                }
                let welcome = self.rules().authenticated(grant)?;
                tracing::debug!(client = %client_name, "authenticated");
                let _ = self.client_name.set(client_name);
                let limits = self.shared.limits;
                // Now, and only now, the peer may open more streams and send more bytes.
                self.connection.set_max_concurrent_bi_streams(limits.streams_max.into());
                self.connection.set_receive_window(limits.connection_receive_window_bytes.into());
                io.writer.queue((correlation, welcome, None));
            }
            ServerEvent::Requests { correlation, batch, role } => {
                self.take(correlation, batch, role, io)
            }
            ServerEvent::Subscribe { correlation, subscribe } => {
                let (acks, acks_rx) = mpsc::channel(ACKS_QUEUED_MAX);
                let events = self.shared.handle.events().clone();
                let window_max = self.shared.limits.stream_window_events_max;
                let task = tokio::spawn(crate::net::subscription::run(
                    events,
                    subscribe,
                    window_max,
                    correlation,
                    io.frames.clone(),
                    acks_rx,
                ));
                io.subscription = Some(task);
                io.acks = Some(acks);
            }
            ServerEvent::Admin { correlation, request, role } => {
                let reply = self.admin(request, role).await;
                io.writer.queue((correlation, Message::AdminReply(reply), None));
            }
            ServerEvent::Ack { cursor } => {
                // A full queue means the consumer acks faster than they are stored: the ack
                // waits, and this stream is not read meanwhile.
                if let Some(acks) = &io.acks {
                    if let Err(mpsc::error::TrySendError::Full(cursor)) = acks.try_send(cursor) {
                        io.parked = Some(Parked::Ack(cursor));
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes a batch's requests in flight and starts answering it; past the connection's
    /// budget the frame is parked instead (backpressure, not buffering).
    fn take(
        self: &Arc<Self>,
        correlation: u64,
        batch: Vec<Request>,
        role: Role,
        io: &mut StreamIo,
    ) {
        let wanted = batch.len().clamp(1, self.shared.limits.in_flight_max as usize) as u32;
        match self.in_flight.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => io.answering.push(self.answer(correlation, batch, role, permit)),
            Err(_) => {
                let permits = self.in_flight.clone();
                let permit = Box::pin(async move {
                    permits.acquire_many_owned(wanted).await.expect("the semaphore is never closed")
                });
                io.parked = Some(Parked::Requests { correlation, batch, role, permit });
            }
        }
    }

    /// Submits a batch to the shards now, and returns its answer to come.
    fn answer(
        self: &Arc<Self>,
        correlation: u64,
        batch: Vec<Request>,
        role: Role,
        permit: OwnedSemaphorePermit,
    ) -> Answering {
        let stats = self.shared.stats.clone();
        let requests = permit.num_permits();
        stats.requests_unwritten.fetch_add(requests, Ordering::AcqRel);
        stats.batches_held.fetch_add(1, Ordering::AcqRel);
        let read_at = std::time::Instant::now();
        let in_flight = InFlight { _permit: permit, requests, stats, read_at };
        let credential = self.credential.get().copied().unwrap_or(0);
        let submitted = submit(&self.shared.handle, role, (&self.shared.gates, credential), &batch);
        let session = self.clone();
        Box::pin(async move {
            let replies = submitted.replies().await;
            session.shared.counters.count(&batch, &replies);
            if role == Role::Admin {
                session.audit(&batch, &replies);
            }
            // The permits travel with the replies until they are written: a client that does
            // not read holds its own in-flight budget, not the server's memory.
            (correlation, Message::Replies(replies), Some(in_flight))
        })
    }

    /// Finishes a stream: its subscription stops, what it took is answered and written, and
    /// a stream ended by bad input says why before its connection closes.
    async fn end_stream(&self, stream: u64, mut io: StreamIo, close: Option<Close>) {
        // A subscription ends with its stream: what it sent and was not acknowledged is sent
        // again to the next subscription of its consumer.
        if let Some(task) = io.subscription.take() {
            task.abort();
        }
        while let Some(answer) = io.answering.next().await {
            io.answered(&self.shared.stats, answer);
        }
        self.rules().stream_ended(stream);
        if let Some(Close { code, detail }) = &close {
            tracing::info!(remote = %self.connection.remote_address(), ?code, %detail, "closing connection");
            let supported_versions = if *code == ErrorCode::UnsupportedVersion {
                SUPPORTED_VERSIONS.to_vec()
            } else {
                Vec::new()
            };
            let error = ConnectionError { code: *code, detail: detail.clone(), supported_versions };
            io.writer.queue((0, Message::Error(error), None));
        }
        if io.writer.flush().await.is_ok() {
            io.writer.finish().await;
        }
        if let Some(Close { code, detail }) = close {
            self.connection.close(code.as_u32().into(), detail.as_bytes());
        }
    }
}

/// A batch submitted to the shards: the answers of the requests refused before submission
/// (permission, rate limits), and the rest to come.
struct Submitted {
    early: Vec<Option<Reply>>,
    pending: PendingBatch,
}

/// Checks permission and rate limits per request, then submits the allowed ones together (one
/// job per owning shard).
fn submit(
    handle: &Handle,
    role: Role,
    (gates, credential): (&Gates, u64),
    batch: &[Request],
) -> Submitted {
    let refused = Reply::Refused(flashstock_protocol::Refusal::PermissionDenied);
    let mut early: Vec<Option<Reply>> =
        batch.iter().map(|request| (!permits(role, request)).then_some(refused.clone())).collect();
    gates.check(credential, batch, &mut early);
    // The runtime takes the wire's requests as they are; only refused ones are left out.
    let pending = if early.iter().all(Option::is_none) {
        handle.submit_batch(batch)
    } else {
        let permitted: Vec<Request> = batch
            .iter()
            .zip(&early)
            .filter(|(_, early)| early.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        handle.submit_batch(&permitted)
    };
    Submitted { early, pending }
}

impl Submitted {
    /// The batch's answers, in its order.
    async fn replies(self) -> Vec<Reply> {
        let mut answers = self.pending.wait().await.into_iter();
        self.early
            .into_iter()
            .map(|early| match early {
                Some(reply) => reply,
                None => match answers.next().expect("one answer per permitted request") {
                    Ok(reply) => reply,
                    Err(err) => refusal(err),
                },
            })
            .collect()
    }
}

/// A stream's send side: frames are encoded into one buffer as they are ready and written
/// together; the requests they answer stop counting in flight once written.
struct StreamWriter {
    send: quinn::SendStream,
    // Server frames are bounded by what the client sent (one reply per request), so the
    // client's own limit is never exceeded; no limit is enforced on this side.
    encoder: FrameEncoder,
    bytes: Vec<u8>,
    answered: Vec<InFlight>,
    frame_seconds: metrics::Histogram,
    frame_requests: metrics::Histogram,
}

/// The peer reset or stopped the stream, or the connection is gone.
struct WriteFailed;

impl StreamWriter {
    fn new(send: quinn::SendStream) -> StreamWriter {
        StreamWriter {
            send,
            encoder: FrameEncoder::new(u32::MAX),
            bytes: Vec::new(),
            answered: Vec::new(),
            frame_seconds: metrics::histogram!(crate::metrics::FRAME_DURATION_SECONDS),
            frame_requests: metrics::histogram!(crate::metrics::FRAME_REQUESTS),
        }
    }

    fn queue(&mut self, (correlation, message, in_flight): Outgoing) {
        self.encoder.encode(correlation, &message, &mut self.bytes).expect("no limit to exceed");
        self.answered.extend(in_flight);
    }

    /// Writes what is queued; waits while the peer's flow control says so.
    async fn flush(&mut self) -> Result<(), WriteFailed> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        self.send.write_all(&self.bytes).await.map_err(|_| WriteFailed)?;
        self.bytes.clear();
        for frame in self.answered.drain(..) {
            self.frame_seconds.record(frame.read_at.elapsed().as_secs_f64());
            self.frame_requests.record(frame.requests as f64);
        }
        Ok(())
    }

    /// Finishes the stream and gives the peer a moment to read it all before the connection
    /// may close.
    async fn finish(mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send.stopped()).await;
    }
}
