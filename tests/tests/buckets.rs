//! Hot-SKU buckets through the runtime, in process: a SKU spread over the shards, buyers
//! racing for it through single calls and network-style batches, refills between buckets,
//! the reads and the stream seeing one SKU, and the spread surviving a restart.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstock_engine::{
    mix64, BuyerId, Change, Command, Lines, Outcome, RequestId, ReservationState, Reserve,
    ReserveCart, SkuId,
};
use flashstock_protocol::{Reply, Request};
use flashstock_runtime::{Handle, Runtime, RuntimeConfig, SystemClock};

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

const HOT: SkuId = SkuId(4242);

fn request() -> RequestId {
    RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)))
}

fn config() -> RuntimeConfig {
    RuntimeConfig { shard_count: 2, tick_interval_ms: 2, ..RuntimeConfig::default() }
}

fn reserve(buyer: u64, qty: u32) -> Reserve {
    Reserve {
        request: request(),
        buyer: BuyerId(buyer),
        sku: HOT,
        qty,
        ttl_ms: 600_000,
        order_ref: None,
    }
}

/// A cart of `lines` for `buyer`, held for a minute.
fn cart_of(buyer: u64, lines: Lines) -> ReserveCart {
    ReserveCart {
        request: request(),
        buyer: BuyerId(buyer),
        ttl_ms: 60_000,
        order_ref: None,
        lines,
    }
}

async fn spread(handle: &Handle, units: u64, limit: Option<u32>) {
    handle.set_stock(request(), HOT, units).await.unwrap();
    handle.set_buyer_limit(request(), HOT, limit).await.unwrap();
    assert_eq!(
        handle.set_buckets(request(), HOT, 2).await.unwrap(),
        Outcome::BucketsSet { buckets: 2 }
    );
}

/// 600 buyers want 3 units each of 1,000: every unit is held once, both shards hold some,
/// and sold out is answered only once fewer than 3 units are left in all buckets together
/// (stock only falls here, so the end state bounds every earlier decision).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_buyers_hold_every_unit_of_a_spread_sku_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    spread(&handle, 1_000, Some(3)).await;
    let view = handle.query_sku(HOT).await.unwrap().unwrap();
    assert_eq!((view.total, view.available), (1_000, 1_000));

    // Half the buyers call one at a time, half arrive in batches of 50 as a network frame.
    let mut calls = Vec::new();
    for buyer in 0..300u64 {
        let handle = handle.clone();
        calls.push(tokio::spawn(async move {
            vec![handle.apply(Command::Reserve(reserve(buyer, 3))).await.unwrap()]
        }));
    }
    for first in (300..600u64).step_by(50) {
        let handle = handle.clone();
        calls.push(tokio::spawn(async move {
            let items: Vec<Request> = (first..first + 50)
                .map(|b| Request::Apply(Command::Reserve(reserve(b, 3))))
                .collect();
            let answers = handle.submit_batch(&items).wait().await;
            answers
                .into_iter()
                .map(|a| match a.unwrap() {
                    Reply::Outcome(outcome) => outcome,
                    other => panic!("a reserve answered {other:?}"),
                })
                .collect()
        }));
    }
    let mut held = Vec::new();
    let mut sold_out = 0;
    for call in calls {
        for outcome in call.await.unwrap() {
            match outcome {
                Outcome::Reserved { reservation, .. } => held.push(reservation),
                Outcome::SoldOut { .. } => sold_out += 1,
                other => panic!("a reserve answered {other:?}"),
            }
        }
    }
    let view = handle.query_sku(HOT).await.unwrap().unwrap();
    assert_eq!(view.reserved, 3 * held.len() as u64);
    assert_eq!(view.total, 1_000, "moves made or lost units");
    assert_eq!(view.available + view.reserved, 1_000);
    assert!(
        sold_out > 0 && view.available < 3,
        "{sold_out} sold out with {} units left",
        view.available
    );
    let shards: BTreeSet<u16> = held.iter().map(|id| id.shard().0).collect();
    assert_eq!(shards.len(), 2, "both buckets' shards held units");

    // A buyer's limit is exact: counted in its home bucket whichever way it calls.
    let again = handle.apply(Command::Reserve(reserve(7, 1))).await.unwrap();
    assert!(
        matches!(again, Outcome::LimitExceeded { taken: 3, limit: 3 } | Outcome::SoldOut { .. }),
        "{again:?}"
    );

    // Confirms are events of the SKU the caller named; reads name it too.
    for &reservation in &held[..20] {
        assert_eq!(handle.confirm(request(), reservation).await.unwrap(), Outcome::Confirmed);
        let view = handle.query_reservation(reservation).await.unwrap().unwrap();
        assert_eq!((view.sku, view.state), (HOT, ReservationState::Confirmed));
    }
    // A return names the SKU; the bucket that sold it takes the units back.
    for &reservation in &held[..2] {
        let back =
            Command::ReturnSold { request: request(), reservation, line: 0, sku: HOT, qty: 1 };
        assert_eq!(handle.apply(back).await.unwrap(), Outcome::Returned { returned_total: 1 });
    }
    let mut sold_by_events = 0;
    for shard in 0..2 {
        let read = handle.events().read(shard, 0, u8::MAX, usize::MAX, u64::MAX).unwrap();
        for event in read.events {
            match event.event.change {
                Change::Ended(ended) => {
                    assert_eq!(ended.sku, HOT, "the stream names no bucket");
                    sold_by_events += u64::from(ended.qty);
                }
                Change::Returned(returned) => {
                    assert_eq!(returned.sku, HOT, "the stream names no bucket");
                    sold_by_events -= u64::from(returned.qty);
                }
                _ => {}
            }
        }
    }
    assert_eq!(sold_by_events, 58);
    let listed: Vec<_> = handle.list_skus().await.unwrap();
    assert_eq!(listed.len(), 1, "one SKU listed: {listed:?}");
    assert_eq!((listed[0].sku, listed[0].sold, listed[0].total), (HOT, 58, 1_000));
    runtime.shutdown();
}

/// Refills: a buyer whose home bucket is empty is served from the other one, and a bucket's
/// own id is no SKU a caller may name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_home_bucket_is_refilled_before_sold_out_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    // 3 units over 2 buckets: bucket 0 keeps 2, bucket 1 gets 1.
    spread(&handle, 3, None).await;
    let mut held = 0;
    for buyer in 0..10 {
        match handle.apply(Command::Reserve(reserve(buyer, 1))).await.unwrap() {
            Outcome::Reserved { .. } => held += 1,
            Outcome::SoldOut { available: 0 } => assert_eq!(held, 3, "sold out with units left"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held, 3);
    // Restocks go into bucket 0 and reach any buyer.
    handle.adjust_stock(request(), HOT, 4).await.unwrap();
    for buyer in 10..14 {
        assert!(matches!(
            handle.apply(Command::Reserve(reserve(buyer, 1))).await.unwrap(),
            Outcome::Reserved { .. }
        ));
    }
    let view = handle.query_sku(HOT).await.unwrap().unwrap();
    assert_eq!((view.total, view.available, view.reserved), (7, 0, 7));
    let bucket = HOT.bucket(1);
    assert_eq!(handle.query_sku(bucket).await.unwrap(), None);
    let named = handle.apply(Command::SetStock { request: request(), sku: bucket, total: 9 }).await;
    assert_eq!(named.unwrap(), Outcome::UnknownSku);
    runtime.shutdown();
}

/// A cart's line of a spread SKU is held from the buyer's home bucket, which is filled from
/// the other bucket first when it is short: a cart is never refilled after its refusal (the
/// refusal is its coordinator's logged decision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_line_of_a_spread_sku_is_filled_before_the_cart_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    // 4 units: 2 in each bucket.
    spread(&handle, 4, None).await;
    handle.set_stock(request(), SkuId(7), 10).await.unwrap();
    let homed_in = |bucket: u64| (0..).find(|&b| mix64(b) % 2 == bucket).unwrap();
    for buyer in [homed_in(0), homed_in(1)] {
        let lines = Lines::numbered([(SkuId(7), 1), (HOT, 2)]).unwrap();
        let cart = cart_of(buyer, lines);
        assert!(matches!(handle.reserve_cart(cart).await.unwrap(), Outcome::Reserved { .. }));
    }
    // Both buckets are empty now; a third cart of 1 is refused, as it should be.
    let lines = Lines::numbered([(HOT, 1)]).unwrap();
    let cart = cart_of(homed_in(1), lines);
    assert!(matches!(handle.reserve_cart(cart).await.unwrap(), Outcome::CartRefused { .. }));
    // A home bucket short of a line: 3 units left over 2 buckets after a restock of 3.
    handle.adjust_stock(request(), HOT, 3).await.unwrap();
    let lines = Lines::numbered([(HOT, 3)]).unwrap();
    let cart = cart_of(homed_in(1), lines);
    let held = handle.reserve_cart(cart).await.unwrap();
    assert!(matches!(held, Outcome::Reserved { .. }), "the home bucket was not filled: {held:?}");
    let view = handle.query_sku(HOT).await.unwrap().unwrap();
    assert_eq!((view.total, view.available, view.reserved), (7, 0, 7));
    runtime.shutdown();
}

/// The spread is durable: after a restart the SKU still reads as one and reserves still go
/// to both buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_sku_stays_spread_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(), Arc::new(SystemClock)).unwrap();
    spread(&runtime.handle(), 100, None).await;
    runtime.shutdown();
    let runtime = Runtime::open(dir.path(), config(), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    let view = handle.query_sku(HOT).await.unwrap().unwrap();
    assert_eq!((view.total, view.available), (100, 100));
    let mut shards = BTreeSet::new();
    for buyer in 0..40 {
        if let Outcome::Reserved { reservation, .. } =
            handle.apply(Command::Reserve(reserve(buyer, 1))).await.unwrap()
        {
            shards.insert(reservation.shard().0);
        }
    }
    assert_eq!(shards.len(), 2, "reserves reached both buckets after the restart");
    assert_eq!(
        handle.set_buckets(request(), HOT, 2).await.unwrap(),
        Outcome::Bucketed { buckets: 2 }
    );
    assert_eq!(
        handle.set_buckets(request(), SkuId(1), 3).await.unwrap(),
        Outcome::InvalidBuckets { buckets_max: 2 }
    );
    runtime.shutdown();
}
