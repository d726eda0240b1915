//! Carts through the runtime, in process: drivers on tokio, shard actors, group commit, the
//! messages between shards, the stream's events, and the start-up pass after a crash.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstock_engine::{
    BuyerId, CartDriver, Change, Command, EncodedLog, LineRefusal, Lines, LogSink, Outcome, Record,
    RequestId, ReservationState, ReserveCart, Shard, ShardConfig, ShardId, ShardMap, SkuId,
    CART_PREPARE_TIMEOUT_MS,
};
use flashstock_runtime::{Handle, ManualClock, Runtime, RuntimeConfig, SystemClock};
use flashstock_tests::Rng;
use flashstock_wal::{MemWal, Wal};

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn request() -> RequestId {
    RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)))
}

fn config(shards: u16) -> RuntimeConfig {
    RuntimeConfig { shard_count: shards, tick_interval_ms: 2, ..RuntimeConfig::default() }
}

fn cart(buyer: u64, lines: &[(u64, u32)], ttl_ms: u64) -> ReserveCart {
    let lines = Lines::numbered(lines.iter().map(|&(sku, qty)| (SkuId(sku), qty))).unwrap();
    ReserveCart { request: request(), buyer: BuyerId(buyer), ttl_ms, order_ref: None, lines }
}

async fn held(handle: &Handle, sku: u64) -> (u64, u64, u64) {
    let view = handle.query_sku(SkuId(sku)).await.unwrap().unwrap();
    (view.available, view.reserved, view.sold)
}

/// Waits (up to a second) until `sku` stands at `want`: the participants' settles travel
/// after the coordinator's answer. Returns what it stands at.
async fn settles_at(handle: &Handle, sku: u64, want: (u64, u64, u64)) -> (u64, u64, u64) {
    for _ in 0..200 {
        if held(handle, sku).await == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    held(handle, sku).await
}

/// Confirmed units per SKU, as the committed-deduction stream reports them.
fn sold_by_events(handle: &Handle, shards: u16) -> BTreeMap<u64, u64> {
    let mut sold = BTreeMap::new();
    for shard in 0..shards {
        let read = handle.events().read(shard, 0, u8::MAX, usize::MAX, u64::MAX).unwrap();
        for event in read.events {
            let ended = match event.event.change {
                Change::Ended(ended) | Change::CartLineEnded { ended, .. } => ended,
                _ => continue,
            };
            if ended.state == ReservationState::Confirmed {
                *sold.entry(ended.sku.0).or_default() += u64::from(ended.qty);
            }
        }
    }
    sold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_carts_over_four_shards_hold_all_their_lines_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(dir.path(), config(4), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    for sku in 0..8 {
        handle.set_stock(request(), SkuId(sku), 5).await.unwrap();
    }
    let mut rng = Rng::new(Rng::seed_from_time());
    let carts: Vec<ReserveCart> = (0..300)
        .map(|buyer| {
            let first = rng.below(8);
            let lines: Vec<(u64, u32)> =
                (0..1 + rng.below(3)).map(|n| ((first + n * 3) % 8, 1)).collect();
            cart(buyer, &lines, 60_000)
        })
        .collect();
    let tasks: Vec<_> = carts
        .iter()
        .map(|&cart| {
            let handle = handle.clone();
            tokio::spawn(async move { (cart, handle.reserve_cart(cart).await.unwrap()) })
        })
        .collect();
    let mut in_carts = [0u64; 8];
    let mut winners = Vec::new();
    for task in tasks {
        let (cart, outcome) = task.await.unwrap();
        match outcome {
            Outcome::Reserved { reservation, .. } => {
                for line in cart.lines.as_slice() {
                    in_carts[line.sku.0 as usize] += u64::from(line.qty);
                }
                winners.push((cart, reservation));
            }
            Outcome::CartRefused { refusal: LineRefusal::SoldOut, .. } => {}
            other => panic!("a racing cart got {other:?}"),
        }
    }
    assert!(!winners.is_empty());
    // Settles travel after the decisions; once they arrived, every unit is accounted for.
    for sku in 0..8u64 {
        let want = (5 - in_carts[sku as usize], in_carts[sku as usize], 0);
        let (available, reserved, sold) = settles_at(&handle, sku, want).await;
        assert_eq!((reserved, sold), (in_carts[sku as usize], 0), "sku {sku}");
        assert_eq!(available + reserved, 5, "sku {sku}");
    }
    // Confirm every other cart, cancel the rest: each line sells once, or goes back.
    let mut sold = [0u64; 8];
    for (index, (cart, reservation)) in winners.iter().enumerate() {
        let outcome = if index % 2 == 0 {
            for line in cart.lines.as_slice() {
                sold[line.sku.0 as usize] += u64::from(line.qty);
            }
            handle.confirm(request(), *reservation).await.unwrap()
        } else {
            handle.cancel(request(), *reservation).await.unwrap()
        };
        assert!(matches!(outcome, Outcome::Confirmed | Outcome::Cancelled), "{outcome:?}");
        let view = handle.query_cart(*reservation).await.unwrap().unwrap();
        assert_eq!(view.lines, cart.lines);
    }
    for sku in 0..8u64 {
        let want = (5 - sold[sku as usize], 0, sold[sku as usize]);
        let (available, reserved, units_sold) = settles_at(&handle, sku, want).await;
        assert_eq!((reserved, units_sold), (0, sold[sku as usize]), "sku {sku}");
        assert_eq!(available + units_sold, 5);
    }
    let by_events = sold_by_events(&handle, 4);
    for sku in 0..8u64 {
        let units_sold = sold[sku as usize];
        assert_eq!(by_events.get(&sku).copied().unwrap_or(0), units_sold, "events of sku {sku}");
    }
    // A restart finds the same state.
    drop(handle);
    runtime.shutdown();
    let runtime = Runtime::open(dir.path(), config(4), Arc::new(SystemClock)).unwrap();
    let handle = runtime.handle();
    for sku in 0..8u64 {
        assert_eq!(held(&handle, sku).await.2, sold[sku as usize]);
    }
    for (cart, reservation) in &winners {
        let view = handle.query_cart(*reservation).await.unwrap().unwrap();
        assert_ne!(view.state, ReservationState::Held);
        // A retried reserve of a cart that was answered gets its first answer.
        let again = handle.reserve_cart(*cart).await.unwrap();
        assert!(matches!(again, Outcome::Reserved { reservation: r, .. } if r == *reservation));
    }
}

/// Two SKUs on different shards of `map`.
fn split_pair(map: &ShardMap) -> (u64, u64) {
    let first = map.shard_of_sku(SkuId(0));
    (0, (1..64).find(|&s| map.shard_of_sku(SkuId(s)) != first).unwrap())
}

/// Writes, shard by shard, what an engine run logged into a log store, as a run that was
/// killed at that point would have left it (everything appended is synced).
fn write_logs(wal: &MemWal, logs: &[Vec<Record>]) {
    for (shard, records) in logs.iter().enumerate() {
        let mut encoded = EncodedLog::default();
        records.iter().for_each(|record| encoded.push(record));
        if encoded.record_count > 0 {
            wal.append(shard as u16, 0, encoded.record_count, &encoded.bytes).unwrap();
        }
    }
    wal.sync().unwrap();
}

/// A run killed mid-cart: stock set on both shards, a cart prepared on both, then
/// `decided` (commit) or not. Returns the log store, the cart, and its SKUs.
fn killed_mid_cart(decided: bool) -> (MemWal, ReserveCart, (u64, u64)) {
    let map = ShardMap::new(2);
    let (a, b) = split_pair(&map);
    let mut shards: Vec<Shard> =
        (0..2).map(|id| Shard::new(ShardId(id), ShardConfig::default())).collect();
    let mut logs = vec![Vec::new(), Vec::new()];
    let now_ms = 1_000;
    for sku in [a, b] {
        let index = usize::from(map.shard_of_sku(SkuId(sku)).0);
        let stock = Command::SetStock { request: request(), sku: SkuId(sku), total: 10 };
        shards[index].apply(&stock, now_ms, &mut logs[index]);
    }
    let cart = cart(7, &[(a, 2), (b, 3)], 60_000);
    let mut driver = CartDriver::start(cart, &map, now_ms).unwrap();
    for index in 0..driver.prepares().len() {
        let (shard, prepare) = driver.prepares()[index];
        let shard = usize::from(shard.0);
        let answer = shards[shard].prepare_lines(&prepare, now_ms, &mut logs[shard]);
        driver.prepared(index, answer);
    }
    if decided {
        let decide = driver.decision().unwrap();
        let coordinator = usize::from(driver.coordinator().0);
        let outcome = shards[coordinator].decide_cart(&decide, now_ms, &mut logs[coordinator]);
        assert!(matches!(outcome, Outcome::Reserved { .. }), "{outcome:?}");
    }
    let wal = MemWal::new();
    write_logs(&wal, &logs);
    (wal, cart, (a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_in_doubt_at_a_crash_is_released_before_the_restart_serves() {
    let (wal, cart, (a, b)) = killed_mid_cart(false);
    // The restart happens well within the prepare deadline: the pass does not wait for it.
    let clock = Arc::new(ManualClock::new(1_000 + CART_PREPARE_TIMEOUT_MS / 2));
    let runtime = Runtime::start(config(2), wal, clock).unwrap();
    let handle = runtime.handle();
    assert_eq!((held(&handle, a).await, held(&handle, b).await), ((10, 0, 0), (10, 0, 0)));
    // The caller never heard; its retry is told the attempt timed out, and holds nothing
    // (its own prepares are released as soon as the coordinator's answer is durable).
    assert_eq!(handle.reserve_cart(cart).await.unwrap(), Outcome::CartTimedOut);
    let free = (10, 0, 0);
    assert_eq!(
        (settles_at(&handle, a, free).await, settles_at(&handle, b, free).await),
        (free, free)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_committed_before_a_crash_holds_all_its_lines_after_it() {
    let (wal, cart, (a, b)) = killed_mid_cart(true);
    let clock = Arc::new(ManualClock::new(2_000));
    let runtime = Runtime::start(config(2), wal, clock).unwrap();
    let handle = runtime.handle();
    assert_eq!((held(&handle, a).await, held(&handle, b).await), ((8, 2, 0), (7, 3, 0)));
    let Outcome::Reserved { reservation, .. } = handle.reserve_cart(cart).await.unwrap() else {
        panic!("the committed cart's answer is remembered");
    };
    assert_eq!(handle.confirm(request(), reservation).await.unwrap(), Outcome::Confirmed);
    let (sold_a, sold_b) =
        (settles_at(&handle, a, (8, 0, 2)).await, settles_at(&handle, b, (7, 0, 3)).await);
    assert_eq!((sold_a, sold_b), ((8, 0, 2), (7, 0, 3)));
}
