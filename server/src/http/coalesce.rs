//! Concurrent HTTP calls coalesced into shard batches, as the Rust client coalesces its
//! callers' requests into frames: each call is queued; one task takes everything queued (up
//! to [`BATCH_REQUESTS_MAX`]) and submits it with one `Handle::submit_batch`, so 500 callers
//! cost a few jobs per shard step rather than 500, and share group commits.
//!
//! The task never waits for a batch's answers before taking the next batch: answers are
//! futures it polls (as a QUIC stream's task does), handed to each caller as they resolve.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstock_protocol::{Reply, Request};
use flashstock_runtime::{Handle, RuntimeError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

/// The most requests one submitted batch carries.
pub const BATCH_REQUESTS_MAX: usize = 1_024;

/// One queued call and where its answer goes.
type Call = (Request, oneshot::Sender<Result<Reply, RuntimeError>>);

/// What the coalescer has done, for the tests and `/metrics`.
#[derive(Debug, Default)]
pub struct CoalesceStats {
    /// Batches submitted.
    pub batches: AtomicU64,
    /// Requests submitted, over all batches.
    pub requests: AtomicU64,
}

/// The queue in front of the shards, shared by every HTTP connection.
#[derive(Clone, Debug)]
pub struct Coalescer {
    queue: mpsc::Sender<Call>,
    stats: Arc<CoalesceStats>,
}

impl Coalescer {
    /// Starts the coalescing task; it ends when every [`Coalescer`] clone is dropped, after
    /// answering what it took. `queued_max` calls wait at most (each HTTP connection has one
    /// call at a time, so the connection bound is the natural one).
    pub fn start(handle: Handle, queued_max: usize) -> Coalescer {
        let (queue, calls) = mpsc::channel(queued_max.max(1));
        let stats = Arc::new(CoalesceStats::default());
        tokio::spawn(run(handle, calls, stats.clone()));
        Coalescer { queue, stats }
    }

    /// Submits `request` with whatever other calls are queued, and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Reply, RuntimeError> {
        let (answer, answered) = oneshot::channel();
        self.queue.send((request, answer)).await.map_err(|_| RuntimeError::ShuttingDown)?;
        answered.await.unwrap_or(Err(RuntimeError::ShuttingDown))
    }

    /// What it has done so far.
    pub fn stats(&self) -> &CoalesceStats {
        &self.stats
    }
}

type Answering = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn run(handle: Handle, mut calls: mpsc::Receiver<Call>, stats: Arc<CoalesceStats>) {
    let mut taken: Vec<Call> = Vec::with_capacity(BATCH_REQUESTS_MAX);
    let mut answering: FuturesUnordered<Answering> = FuturesUnordered::new();
    let batch_requests = metrics::histogram!(crate::metrics::HTTP_BATCH_REQUESTS);
    loop {
        tokio::select! {
            count = calls.recv_many(&mut taken, BATCH_REQUESTS_MAX) => {
                if count == 0 {
                    break;
                }
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.requests.fetch_add(count as u64, Ordering::Relaxed);
                batch_requests.record(count as f64);
                answering.push(submit(&handle, &mut taken));
            }
            Some(()) = answering.next(), if !answering.is_empty() => {}
        }
    }
    while answering.next().await.is_some() {}
}

/// Submits the taken calls as one batch; the future hands each caller its answer.
fn submit(handle: &Handle, taken: &mut Vec<Call>) -> Answering {
    let (requests, answers): (Vec<Request>, Vec<_>) = taken.drain(..).unzip();
    let pending = handle.submit_batch(&requests);
    Box::pin(async move {
        for (answer, reply) in answers.into_iter().zip(pending.wait().await) {
            // A caller that went away (its connection closed) needs no answer.
            let _ = answer.send(reply);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use flashstock_engine::SkuId;
    use flashstock_protocol::{Reply, Request};
    use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
    use flashstock_wal::MemWal;

    use super::Coalescer;

    /// Calls queued while the coalescing task is not running all go in its next batch. On a
    /// one-thread runtime that is exact: the 64 callers each queue their call before the task,
    /// woken by the first, runs again. (Over HTTP, how many calls overlap depends on the
    /// machine's scheduling; the daemon's test checks the counts, this one the coalescing.)
    #[tokio::test(flavor = "current_thread")]
    async fn calls_queued_together_are_submitted_as_one_batch() {
        let wal = MemWal::new();
        let runtime = Runtime::start(RuntimeConfig::default(), wal, Arc::new(SystemClock)).unwrap();
        let coalescer = Coalescer::start(runtime.handle(), 64);
        let calls: Vec<_> = (0..64)
            .map(|sku| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { coalescer.call(Request::QuerySku(SkuId(sku))).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), Reply::Sku(None), "an unknown SKU");
        }
        let stats = coalescer.stats();
        assert_eq!(stats.requests.load(Ordering::Relaxed), 64);
        assert_eq!(stats.batches.load(Ordering::Relaxed), 1, "64 calls queued together");
        drop(coalescer);
        runtime.shutdown();
    }
}
