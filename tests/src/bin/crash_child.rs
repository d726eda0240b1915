//! The process the crash test kills with SIGKILL.
//!
//! `crash-child load <data_dir> <seed>`: recovers the runtime from the sled log in `data_dir`,
//! creates the test SKUs if they are new, prints `READY`, then runs reserve / confirm / cancel
//! traffic from 32 tasks forever (a quarter of them reserving carts of 2-3 SKUs across both
//! shards, a quarter reserving a hot SKU spread over both shards, whose buckets run dry and
//! refill each other while one more task restocks it), printing one line per acknowledged
//! effect *after* the answer arrived: `R <reservation> <sku> <qty>`,
//! `K <cart> <sku> <qty> <sku> <qty>...`, `C <id>`, `X <id>`, `A <units restocked>`.
//!
//! `crash-child verify <data_dir> <ids_file>`: recovers (which checks every invariant), prints
//! `S <sku> <total> <available> <reserved> <sold>` per SKU and `<id> <state>` for each
//! reservation or cart id in `ids_file`, then shuts down gracefully. Recovery settles every
//! cart line group a kill left open and checks the invariants between shards.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use flashstock_engine::{BuyerId, Lines, Outcome, RequestId, ReservationId, ReserveCart, SkuId};
use flashstock_runtime::{Handle, Runtime, RuntimeConfig, SystemClock};
use flashstock_tests::{hot, states, Rng};

const SKUS: [u64; 4] = [11, 12, 13, 14];
const UNITS_PER_SKU: u64 = 1_000_000;
const HOT_SKU: u64 = hot::SKU;

fn config() -> RuntimeConfig {
    RuntimeConfig {
        shard_count: 2,
        // Small, so that kills land during and between snapshots too.
        snapshot_every_records: 3_000,
        snapshot_every_ms: 200,
        ..RuntimeConfig::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: crash-child load <data_dir> <seed> | verify <data_dir> <ids_file>";
    let (mode, data_dir, extra) = match args.as_slice() {
        [_, mode, dir, extra] => (mode.as_str(), Path::new(dir), extra.as_str()),
        _ => panic!("{usage}"),
    };
    let runtime = match Runtime::open(data_dir, config(), Arc::new(SystemClock)) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("recovery failed: {err}");
            std::process::exit(3);
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let tokio = tokio.expect("a tokio runtime");
    match mode {
        "load" => tokio.block_on(load(runtime.handle(), extra.parse().expect("a numeric seed"))),
        "verify" => tokio.block_on(verify(runtime.handle(), Path::new(extra))),
        _ => panic!("{usage}"),
    }
    runtime.shutdown();
}

fn say(line: String) {
    // One write per line, so a kill leaves at most one partial line, which the parent drops.
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).and_then(|()| out.flush()).expect("stdout");
}

async fn load(handle: Handle, seed: u64) {
    for (index, sku) in SKUS.iter().enumerate() {
        if handle.query_sku(SkuId(*sku)).await.expect("query").is_none() {
            let request = RequestId((u128::from(seed) << 64) | index as u128);
            handle.set_stock(request, SkuId(*sku), UNITS_PER_SKU).await.expect("set stock");
        }
    }
    if handle.query_sku(SkuId(HOT_SKU)).await.expect("query").is_none() {
        let request = RequestId((u128::from(seed) << 64) | 99);
        handle.set_stock(request, SkuId(HOT_SKU), hot::UNITS).await.expect("set stock");
    }
    // Once for good: later runs are told it is spread already (or the first answer again).
    let spread = handle.set_buckets(RequestId(u128::MAX - 15), SkuId(HOT_SKU), 2).await;
    match spread.expect("set buckets") {
        Outcome::BucketsSet { buckets: 2 } | Outcome::Bucketed { buckets: 2 } => {}
        other => panic!("spreading the hot SKU answered {other:?}"),
    }
    say("READY\n".to_owned());
    let mut tasks = Vec::new();
    let restocks = handle.clone();
    tasks.push(tokio::spawn(async move { restock(restocks, seed).await }));
    for task in 0..32u64 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move { traffic(handle, seed, task).await }));
    }
    for task in tasks {
        task.await.expect("traffic task");
    }
}

/// Restocks the hot SKU (into its bucket 0) every 5 ms.
async fn restock(handle: Handle, seed: u64) {
    for counter in 0u128.. {
        let request = RequestId((u128::from(seed) << 64) | (1 << 63) | counter);
        let units = hot::RESTOCK_UNITS;
        let added = handle.adjust_stock(request, SkuId(HOT_SKU), units as i64).await;
        if let Ok(Outcome::StockChanged { .. }) = added {
            say(format!("A {units}\n"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn traffic(handle: Handle, seed: u64, task: u64) {
    let mut rng = Rng::new(seed ^ (task << 48));
    let mut counter = 1_000u64;
    let mut next_request = || {
        counter += 1;
        RequestId((u128::from(seed) << 64) | (u128::from(task) << 40) | u128::from(counter))
    };
    loop {
        let buyer = BuyerId(rng.next_u64());
        let reservation = if task % 4 == 0 {
            let first = rng.below(SKUS.len() as u64) as usize;
            let count = 2 + rng.below(2) as usize;
            let lines: Vec<(SkuId, u32)> = (0..count)
                .map(|n| (SkuId(SKUS[(first + n) % SKUS.len()]), 1 + rng.below(3) as u32))
                .collect();
            let cart = ReserveCart {
                request: next_request(),
                buyer,
                ttl_ms: 600_000,
                order_ref: None,
                lines: Lines::numbered(lines.iter().copied()).expect("a few lines"),
            };
            let Ok(Outcome::Reserved { reservation, .. }) = handle.reserve_cart(cart).await else {
                continue;
            };
            let lines: String =
                lines.iter().map(|(sku, qty)| format!(" {} {qty}", sku.0)).collect();
            say(format!("K {}{lines}\n", reservation.0));
            reservation
        } else {
            let sku = match task % 4 {
                1 => HOT_SKU,
                _ => SKUS[rng.below(SKUS.len() as u64) as usize],
            };
            let qty = 1 + rng.below(3) as u32;
            let outcome = handle.reserve(next_request(), buyer, SkuId(sku), qty, 600_000).await;
            let Ok(Outcome::Reserved { reservation, .. }) = outcome else {
                continue;
            };
            say(format!("R {} {sku} {qty}\n", reservation.0));
            reservation
        };
        match rng.below(3) {
            0 => {
                if let Ok(Outcome::Confirmed) = handle.confirm(next_request(), reservation).await {
                    say(format!("C {}\n", reservation.0));
                }
            }
            1 => {
                if let Ok(Outcome::Cancelled) = handle.cancel(next_request(), reservation).await {
                    say(format!("X {}\n", reservation.0));
                }
            }
            _ => {}
        }
    }
}

async fn verify(handle: Handle, ids_file: &Path) {
    let mut out = String::new();
    for view in handle.list_skus().await.expect("list skus") {
        let line = format!(
            "S {} {} {} {} {}\n",
            view.sku.0, view.total, view.available, view.reserved, view.sold
        );
        out.push_str(&line);
    }
    let ids = std::fs::read_to_string(ids_file).expect("the ids file");
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let reservation = ReservationId(id.parse().expect("a numeric reservation id"));
        let view = handle.query_reservation(reservation).await.expect("query reservation");
        let state = match view {
            Some(view) => Some(view.state),
            None => handle.query_cart(reservation).await.expect("query cart").map(|v| v.state),
        };
        out.push_str(&format!("{id} {}\n", states::name(state)));
    }
    say(out);
}
