//! Scenario tests of the engine's business rules, one rule per test.

use flashstock_engine::{
    BuyerId, Command, EngineError, Outcome, Record, RequestId, ReservationId, ReservationState,
    Reserve, SaleWindow, Shard, ShardConfig, ShardId, SkuId, RESERVE_QTY_MAX, TTL_MS_MAX,
};

const SKU: SkuId = SkuId(7);

struct Fixture {
    shard: Shard,
    log: Vec<Record>,
    next_request: u128,
}

impl Fixture {
    fn new(config: ShardConfig) -> Fixture {
        Fixture { shard: Shard::new(ShardId(0), config), log: Vec::new(), next_request: 1 }
    }

    fn with_stock(total: u64) -> Fixture {
        let mut f = Fixture::new(ShardConfig::default());
        let outcome = f.apply(|request| Command::SetStock { request, sku: SKU, total }, 0);
        assert_eq!(outcome, Outcome::StockChanged { total, available: total });
        f
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn apply(&mut self, command: impl FnOnce(RequestId) -> Command, now_ms: u64) -> Outcome {
        let request = self.request();
        let outcome = self.shard.apply(&command(request), now_ms, &mut self.log);
        self.shard.check_invariants().expect("invariants hold after every step");
        outcome
    }

    fn reserve(&mut self, buyer: u64, qty: u32, ttl_ms: u64, now_ms: u64) -> Outcome {
        self.apply(
            |request| {
                Command::Reserve(Reserve {
                    request,
                    buyer: BuyerId(buyer),
                    sku: SKU,
                    qty,
                    ttl_ms,
                    order_ref: None,
                })
            },
            now_ms,
        )
    }

    fn reserved(&mut self, buyer: u64, qty: u32, ttl_ms: u64, now_ms: u64) -> ReservationId {
        match self.reserve(buyer, qty, ttl_ms, now_ms) {
            Outcome::Reserved { reservation, .. } => reservation,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    fn confirm(&mut self, reservation: ReservationId, now_ms: u64) -> Outcome {
        self.apply(|request| Command::Confirm { request, reservation, order_ref: None }, now_ms)
    }

    fn cancel(&mut self, reservation: ReservationId, now_ms: u64) -> Outcome {
        self.apply(|request| Command::Cancel { request, reservation }, now_ms)
    }

    fn counts(&self) -> (u64, u64, u64, u64) {
        let v = self.shard.query_sku(SKU).unwrap();
        (v.total, v.available, v.reserved, v.sold)
    }
}

#[test]
fn reserve_confirm_cancel_move_units_between_counts() {
    let mut f = Fixture::with_stock(10);
    let a = f.reserved(1, 3, 1_000, 10);
    let b = f.reserved(2, 2, 1_000, 10);
    assert_eq!(f.counts(), (10, 5, 5, 0));
    assert_eq!(f.confirm(a, 20), Outcome::Confirmed);
    assert_eq!(f.counts(), (10, 5, 2, 3));
    assert_eq!(f.cancel(b, 20), Outcome::Cancelled);
    assert_eq!(f.counts(), (10, 7, 0, 3));
    assert_eq!(f.shard.query_reservation(a).unwrap().state, ReservationState::Confirmed);
}

#[test]
fn sold_out_names_what_is_left() {
    let mut f = Fixture::with_stock(2);
    f.reserved(1, 2, 1_000, 0);
    assert_eq!(f.reserve(2, 1, 1_000, 0), Outcome::SoldOut { available: 0 });
    assert_eq!(f.counts(), (2, 0, 2, 0));
}

#[test]
fn expiry_returns_units_and_a_late_confirm_cannot_resurrect_them() {
    let mut f = Fixture::with_stock(1);
    let held = f.reserved(1, 1, 100, 0);
    assert_eq!(f.shard.tick(99, &mut f.log), 0, "nothing is due before the deadline");
    assert_eq!(f.shard.tick(100, &mut f.log), 1);
    assert_eq!(f.counts(), (1, 1, 0, 0));
    let other = f.reserved(2, 1, 100, 150);
    assert_eq!(f.confirm(held, 160), Outcome::Expired);
    assert_eq!(f.cancel(held, 160), Outcome::Expired);
    assert_eq!(f.counts(), (1, 0, 1, 0), "the unit stays with the second buyer");
    assert_eq!(f.confirm(other, 170), Outcome::Confirmed);
}

#[test]
fn confirm_at_the_deadline_expires_even_before_the_tick() {
    let mut f = Fixture::with_stock(1);
    let held = f.reserved(1, 1, 100, 0);
    assert_eq!(f.confirm(held, 100), Outcome::Expired);
    assert_eq!(f.counts(), (1, 1, 0, 0));
    assert_eq!(f.shard.tick(1_000, &mut f.log), 0, "it expired once, not twice");
}

#[test]
fn cancel_twice_has_one_effect() {
    let mut f = Fixture::with_stock(5);
    let held = f.reserved(1, 2, 1_000, 0);
    assert_eq!(f.cancel(held, 1), Outcome::Cancelled);
    let after_first = f.counts();
    assert_eq!(f.cancel(held, 2), Outcome::AlreadyCancelled);
    assert_eq!(f.confirm(held, 2), Outcome::AlreadyCancelled);
    assert_eq!(f.counts(), after_first);
}

#[test]
fn a_retried_request_gets_its_first_answer_and_changes_nothing() {
    let mut f = Fixture::with_stock(1);
    let reserve = Command::Reserve(Reserve {
        request: RequestId(u128::MAX),
        buyer: BuyerId(1),
        sku: SKU,
        qty: 1,
        ttl_ms: 1_000,
        order_ref: None,
    });
    let first = f.shard.apply(&reserve, 0, &mut f.log);
    let records = f.log.len();
    assert_eq!(f.shard.apply(&reserve, 5, &mut f.log), first);
    assert_eq!(f.log.len(), records, "a retry logs nothing");
    assert_eq!(f.counts(), (1, 0, 1, 0));

    // A rejection is remembered too: a restock does not turn a retried "sold out" into a hold.
    let late = Command::Reserve(Reserve {
        request: RequestId(99),
        buyer: BuyerId(2),
        sku: SKU,
        qty: 1,
        ttl_ms: 1_000,
        order_ref: None,
    });
    assert_eq!(f.shard.apply(&late, 6, &mut f.log), Outcome::SoldOut { available: 0 });
    f.apply(|request| Command::AdjustStock { request, sku: SKU, delta: 1 }, 7);
    assert_eq!(f.shard.apply(&late, 8, &mut f.log), Outcome::SoldOut { available: 0 });
    assert_eq!(f.counts(), (2, 1, 1, 0));
}

#[test]
fn per_buyer_limit_counts_held_and_bought() {
    let mut f = Fixture::with_stock(10);
    assert_eq!(
        f.apply(|request| Command::SetBuyerLimit { request, sku: SKU, limit: Some(2) }, 0),
        Outcome::LimitSet
    );
    let first = f.reserved(1, 1, 1_000, 0);
    f.confirm(first, 1);
    f.reserved(1, 1, 1_000, 2);
    assert_eq!(f.reserve(1, 1, 1_000, 3), Outcome::LimitExceeded { taken: 2, limit: 2 });
    f.reserved(2, 2, 1_000, 3);
    assert_eq!(
        f.apply(|request| Command::SetBuyerLimit { request, sku: SKU, limit: Some(1) }, 4),
        Outcome::LimitBelowHoldings { taken_max: 2 }
    );
}

#[test]
fn a_cancelled_hold_frees_the_buyers_allowance() {
    let mut f = Fixture::with_stock(10);
    f.apply(|request| Command::SetBuyerLimit { request, sku: SKU, limit: Some(1) }, 0);
    let held = f.reserved(1, 1, 1_000, 0);
    f.cancel(held, 1);
    f.reserved(1, 1, 1_000, 2);
}

#[test]
fn sale_window_gates_reserves() {
    let mut f = Fixture::with_stock(10);
    let window = SaleWindow { opens_at_ms: Some(100), closes_at_ms: Some(200) };
    assert_eq!(
        f.apply(|request| Command::SetSaleWindow { request, sku: SKU, window }, 0),
        Outcome::WindowSet
    );
    assert_eq!(f.reserve(1, 1, 10, 99), Outcome::SaleNotOpen { opens_at_ms: 100 });
    f.reserved(1, 1, 10, 100);
    assert_eq!(f.reserve(1, 1, 10, 200), Outcome::SaleClosed { closed_at_ms: 200 });
    let backwards = SaleWindow { opens_at_ms: Some(5), closes_at_ms: Some(5) };
    assert_eq!(
        f.apply(|request| Command::SetSaleWindow { request, sku: SKU, window: backwards }, 300),
        Outcome::InvalidWindow
    );
}

#[test]
fn bad_quantities_ttls_and_skus_are_refused_without_effect() {
    let mut f = Fixture::with_stock(10);
    assert_eq!(f.reserve(1, 0, 10, 0), Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX });
    assert_eq!(
        f.reserve(1, RESERVE_QTY_MAX + 1, 10, 0),
        Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX }
    );
    assert_eq!(f.reserve(1, 1, 0, 0), Outcome::InvalidTtl { ttl_ms_max: TTL_MS_MAX });
    assert_eq!(f.reserve(1, 1, TTL_MS_MAX + 1, 0), Outcome::InvalidTtl { ttl_ms_max: TTL_MS_MAX });
    let unknown = f.apply(
        |request| {
            Command::Reserve(Reserve {
                request,
                buyer: BuyerId(1),
                sku: SkuId(8),
                qty: 1,
                ttl_ms: 5,
                order_ref: None,
            })
        },
        0,
    );
    assert_eq!(unknown, Outcome::UnknownSku);
    assert_eq!(
        f.confirm(ReservationId::new(flashstock_engine::Slot(0), ShardId(3), 1), 0),
        Outcome::UnknownReservation
    );
    assert_eq!(f.counts(), (10, 10, 0, 0));
    assert_eq!(f.log.len(), 1, "only the set_stock was logged");
}

#[test]
fn stock_adjustments_never_drive_counts_negative() {
    let mut f = Fixture::with_stock(5);
    f.reserved(1, 3, 1_000, 0);
    assert_eq!(
        f.apply(|request| Command::AdjustStock { request, sku: SKU, delta: -3 }, 0),
        Outcome::InsufficientAvailable { available: 2 }
    );
    assert_eq!(
        f.apply(|request| Command::AdjustStock { request, sku: SKU, delta: -2 }, 0),
        Outcome::StockChanged { total: 3, available: 0 }
    );
    assert_eq!(
        f.apply(|request| Command::SetStock { request, sku: SKU, total: 2 }, 0),
        Outcome::StockBelowCommitted { committed: 3 }
    );
    assert_eq!(
        f.apply(|request| Command::AdjustStock { request, sku: SkuId(99), delta: 1 }, 0),
        Outcome::UnknownSku
    );
}

#[test]
fn the_live_reservation_bound_is_enforced() {
    let config = ShardConfig { reservations_live_max: 2, ..ShardConfig::default() };
    let mut f = Fixture::new(config);
    f.apply(|request| Command::SetStock { request, sku: SKU, total: 10 }, 0);
    f.reserved(1, 1, 100, 0);
    let second = f.reserved(2, 1, 100, 0);
    assert_eq!(f.reserve(3, 1, 100, 0), Outcome::TooManyReservations { live_max: 2 });
    f.confirm(second, 1);
    f.reserved(3, 1, 100, 1);
}

#[test]
fn ended_reservations_are_forgotten_after_their_retention() {
    let config = ShardConfig { ended_retention_ms: 1_000, ..ShardConfig::default() };
    let mut f = Fixture::new(config);
    f.apply(|request| Command::SetStock { request, sku: SKU, total: 10 }, 0);
    let old = f.reserved(1, 1, 100, 0);
    f.confirm(old, 10);
    assert_eq!(f.confirm(old, 500), Outcome::AlreadyConfirmed);
    // Eviction happens when a later reservation ends past the retention.
    let newer = f.reserved(2, 1, 100, 1_100);
    f.cancel(newer, 1_100);
    assert_eq!(f.confirm(old, 1_200), Outcome::UnknownReservation);
    assert_eq!(f.counts(), (10, 9, 0, 1), "forgetting the record keeps the sale");
}

#[test]
fn time_never_runs_backwards_inside_a_shard() {
    let mut f = Fixture::with_stock(1);
    let held = f.reserved(1, 1, 100, 1_000);
    assert_eq!(f.confirm(held, 5), Outcome::Confirmed, "an earlier clock reads as 1000");
    assert_eq!(f.shard.clock_ms(), 1_000);
}

#[test]
fn a_tick_expires_in_deadline_order_and_is_bounded() {
    let mut f = Fixture::with_stock(100);
    let late = f.reserved(1, 1, 300, 0);
    let early = f.reserved(2, 1, 100, 0);
    assert_eq!(f.shard.next_expiry_ms(), Some(100));
    assert_eq!(f.shard.tick(200, &mut f.log), 1);
    assert_eq!(f.shard.query_reservation(early).unwrap().state, ReservationState::Expired);
    assert_eq!(f.shard.query_reservation(late).unwrap().state, ReservationState::Held);
}

#[test]
fn replaying_the_log_rebuilds_the_same_state() {
    let mut f = Fixture::with_stock(20);
    f.apply(|request| Command::SetBuyerLimit { request, sku: SKU, limit: Some(5) }, 1);
    let a = f.reserved(1, 2, 100, 2);
    let b = f.reserved(2, 3, 500, 3);
    f.reserved(3, 4, 50, 4);
    f.confirm(a, 10);
    f.shard.tick(60, &mut f.log);
    f.cancel(b, 70);
    f.reserve(1, 4, 100, 80); // over the limit: not logged

    let mut replayed = Shard::new(ShardId(0), ShardConfig::default());
    for record in &f.log {
        replayed.replay(record).unwrap();
    }
    replayed.check_invariants().unwrap();
    assert_eq!(replayed.digest(), f.shard.digest());

    // A record that does not fit the state is refused, not silently skipped.
    let err = replayed.replay(&f.log[2]).unwrap_err();
    assert!(matches!(err, EngineError::ReplayNoEffect { .. }), "{err}");
}

#[test]
fn snapshot_plus_tail_equals_the_live_shard() {
    let mut f = Fixture::with_stock(20);
    let a = f.reserved(1, 2, 100, 2);
    let mut snapshot = Vec::new();
    f.shard.encode_snapshot(&mut snapshot);
    let tail_from = f.log.len();
    f.confirm(a, 5);
    f.reserved(2, 2, 100, 6);
    f.shard.tick(500, &mut f.log);

    let mut restored = Shard::restore(ShardId(0), ShardConfig::default(), &snapshot).unwrap();
    for record in &f.log[tail_from..] {
        restored.replay(record).unwrap();
    }
    assert_eq!(restored.digest(), f.shard.digest());

    let err = Shard::restore(ShardId(1), ShardConfig::default(), &snapshot).unwrap_err();
    assert_eq!(err, EngineError::WrongShard { expected: 1, found: 0 });
    let err = Shard::restore(ShardId(0), ShardConfig::default(), &snapshot[..snapshot.len() - 3]);
    // Either a read runs out, or an entry count no longer fits the bytes left.
    assert!(
        matches!(err, Err(EngineError::Truncated { .. } | EngineError::InvalidField { .. })),
        "{err:?}"
    );
}

#[test]
fn a_corrupt_snapshot_fails_its_invariant_check() {
    let mut f = Fixture::with_stock(20);
    f.reserved(1, 2, 100, 2);
    let mut snapshot = Vec::new();
    f.shard.encode_snapshot(&mut snapshot);
    // Byte 24 starts the first SKU; +16 is its `available`: bump it by one unit.
    snapshot[24 + 16] += 1;
    let err = Shard::restore(ShardId(0), ShardConfig::default(), &snapshot).unwrap_err();
    assert!(matches!(err, EngineError::Conservation { .. }), "{err}");
}

#[test]
fn bulk_replay_refuses_a_request_answered_twice() {
    let mut f = Fixture::with_stock(20);
    f.reserved(1, 2, 100, 2);
    // A log in which the same reserve appears twice, as no live run would write it.
    let mut log = f.log.clone();
    let Record::Apply { command, .. } = f.log[1] else { panic!("a reserve record") };
    log.push(Record::Apply { at_ms: 3, command });
    let mut replayed = Shard::new(ShardId(0), ShardConfig::default());
    replayed.begin_replay();
    for record in &log {
        replayed.replay(record).unwrap();
    }
    let err = replayed.finish_replay().unwrap_err();
    assert_eq!(err, EngineError::ReplayDuplicateRequest { request: command.request() });
}

#[test]
fn the_table_gauges_count_what_each_bounded_table_holds() {
    let mut f = Fixture::with_stock(10);
    let a = f.reserved(1, 3, 1_000, 10);
    let b = f.reserved(2, 2, 1_000, 10);
    f.confirm(a, 20);
    f.cancel(b, 20);
    let tables = f.shard.table_entries();
    // Set stock, two reserves, a confirm and a cancel: five answers to remember.
    assert_eq!(tables.remembered_answers, 5);
    assert_eq!(tables.ended_reservations, 2);
    assert_eq!(tables.returnable_sales, 1, "the confirmed sale, not the cancelled hold");
    assert_eq!((tables.carts, tables.cart_groups), (0, 0));
}
