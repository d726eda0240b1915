//! The load driver: workers each send groups of checkouts to whichever node leads, one group
//! at a time, retrying a group (same request ids) on another node after a refusal, a timeout
//! or a closed connection. Measures committed checkouts per second, call latency, the longest
//! time with no commit at all (a failover's cost), and audits every node at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::wire::{self, ClientReply, ClientRequest};

pub struct DriveSettings {
    pub nodes: Vec<String>,
    pub workers: usize,
    pub group: usize,
    pub duration_s: u64,
    pub skus: u64,
    pub call_timeout_ms: u64,
}

/// Commits counted per 10 ms: a run of empty buckets is time with no commit anywhere.
const BUCKET_MS: u64 = 10;

struct Shared {
    started: Instant,
    buckets: Vec<AtomicU64>,
    latency_us: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    acked: AtomicU64,
    abandoned: AtomicU64,
}

pub async fn run(settings: DriveSettings) -> anyhow::Result<()> {
    let nodes: Vec<String> = settings.nodes.iter().map(|p| crate::client_addr(p)).collect();
    let mut caller = Caller::new(nodes.clone(), Duration::from_secs(5));
    let stock =
        ClientRequest::Stock { request: u64::MAX >> 1, skus: settings.skus, total: 1 << 40 };
    caller.until_done(&stock, Instant::now() + Duration::from_secs(60)).await?;
    let shared = Arc::new(Shared {
        started: Instant::now(),
        buckets: (0..settings.duration_s * 1000 / BUCKET_MS + 1000)
            .map(|_| AtomicU64::new(0))
            .collect(),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
    });
    let deadline = shared.started + Duration::from_secs(settings.duration_s);
    let workers: Vec<_> = (0..settings.workers)
        .map(|w| {
            let shared = shared.clone();
            let mut caller =
                Caller::new(nodes.clone(), Duration::from_millis(settings.call_timeout_ms));
            let (group, skus) = (settings.group, settings.skus);
            tokio::spawn(async move { caller.work(w as u64, group, skus, deadline, &shared).await })
        })
        .collect();
    report_progress(&shared, deadline).await;
    for w in workers {
        w.await?;
    }
    summarize(&settings, &shared, &nodes).await
}

async fn report_progress(shared: &Shared, deadline: Instant) {
    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = shared.acked.load(Ordering::Relaxed);
        eprintln!("t={:>3}s checkouts/s={}", shared.started.elapsed().as_secs(), acked - last);
        last = acked;
    }
}

async fn summarize(
    settings: &DriveSettings,
    shared: &Shared,
    nodes: &[String],
) -> anyhow::Result<()> {
    let elapsed_s = settings.duration_s as f64;
    let acked = shared.acked.load(Ordering::Relaxed);
    let latency = shared.latency_us.lock().unwrap().clone();
    let counts: Vec<u64> = shared.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let (mut stall, mut run) = (0, 0);
    for &c in &counts[first..=last] {
        run = if c == 0 { run + 1 } else { 0 };
        stall = stall.max(run);
    }
    println!(
        "checkouts/s={:.0} records/s={:.0} call_us_p50={} p99={} p999={} max={} longest_no_commit_ms={} acked={} sent={} abandoned={}",
        acked as f64 / elapsed_s,
        2.0 * acked as f64 / elapsed_s,
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
        stall * BUCKET_MS,
        acked,
        shared.sent.load(Ordering::Relaxed),
        shared.abandoned.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = shared.sent.load(Ordering::Relaxed);
    let mut audit_ok = true;
    for node in nodes {
        match audit(node).await {
            Ok((sold, digest, applied, _)) => {
                let ok = acked <= sold && sold <= sent;
                audit_ok &= ok;
                println!("audit {node}: sold={sold} applied={applied} digest={digest:016x} acked<=sold<=sent: {ok}");
            }
            Err(e) => println!("audit {node}: unreachable ({e})"),
        }
    }
    println!("audit {}", if audit_ok { "PASS" } else { "FAIL" });
    Ok(())
}

/// Prints the index of the node that says it leads, or -1.
pub async fn leader(nodes: &[String]) {
    for (i, node) in nodes.iter().enumerate() {
        if let Ok((_, _, _, true)) = audit(&crate::client_addr(node)).await {
            println!("{i}");
            return;
        }
    }
    println!("-1");
}

async fn audit(node: &str) -> anyhow::Result<(u64, u64, u64, bool)> {
    match wire::Link::new(node).call(&ClientRequest::Audit, Duration::from_secs(5)).await? {
        ClientReply::Audit { sold, digest, applied, leading } => {
            Ok((sold, digest, applied, leading))
        }
        other => anyhow::bail!("audit answered {other:?}"),
    }
}

struct Caller {
    nodes: Vec<String>,
    target: usize,
    link: wire::Link,
    timeout: Duration,
}

impl Caller {
    fn new(nodes: Vec<String>, timeout: Duration) -> Caller {
        let link = wire::Link::new(nodes[0].clone());
        Caller { nodes, target: 0, link, timeout }
    }

    async fn call(&mut self, request: &ClientRequest) -> std::io::Result<ClientReply> {
        self.link.call(request, self.timeout).await
    }

    fn switch(&mut self, to: Option<u64>) {
        self.target = match to {
            Some(leader) => leader as usize,
            None => (self.target + 1) % self.nodes.len(),
        };
        self.link = wire::Link::new(self.nodes[self.target].clone());
    }

    /// Sends `request` until a node answers `Done`, following leaders; false past `deadline`.
    async fn until_done(
        &mut self,
        request: &ClientRequest,
        deadline: Instant,
    ) -> anyhow::Result<u32> {
        while Instant::now() < deadline {
            match self.call(request).await {
                Ok(ClientReply::Done { sold }) => return Ok(sold),
                Ok(ClientReply::NotLeader { leader }) => {
                    if leader.is_none() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    self.switch(leader)
                }
                Ok(_) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.switch(None)
                }
            }
        }
        anyhow::bail!("no node answered before the deadline")
    }

    async fn work(
        &mut self,
        worker: u64,
        group: usize,
        skus: u64,
        deadline: Instant,
        shared: &Shared,
    ) {
        let mut next = worker << 40;
        let mut rng = worker.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        while Instant::now() < deadline {
            let requests: Vec<(u64, u64)> = (0..group)
                .map(|_| {
                    next += 1;
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (next, rng % skus)
                })
                .collect();
            shared.sent.fetch_add(group as u64, Ordering::Relaxed);
            let started = Instant::now();
            let request = ClientRequest::Checkout { requests };
            // A group in doubt is retried for up to 30 s past the run's end, then abandoned.
            match self.until_done(&request, deadline + Duration::from_secs(30)).await {
                Ok(_) => {
                    let now = Instant::now();
                    let us = now.duration_since(started).as_micros() as u64;
                    shared.latency_us.lock().unwrap().saturating_record(us.max(1));
                    shared.acked.fetch_add(group as u64, Ordering::Relaxed);
                    let bucket = (now.duration_since(shared.started).as_millis() as u64 / BUCKET_MS)
                        as usize;
                    if let Some(b) = shared.buckets.get(bucket) {
                        b.fetch_add(group as u64, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    shared.abandoned.fetch_add(group as u64, Ordering::Relaxed);
                }
            }
        }
    }
}
