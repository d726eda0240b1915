//! Property tests: random command sequences, clock jumps included, applied to the engine and to
//! a deliberately naive reference model (sorted maps and linear scans). After every step the
//! outcomes and every read must agree and every invariant must hold; at the end, replaying the
//! log, and restoring a mid-run snapshot then replaying the tail, must rebuild the same state.

use std::collections::{BTreeMap, HashMap, VecDeque};

use flashstock_engine::{
    slot_of, BuyerId, Change, Command, Ended, OrderRef, Outcome, Record, RequestId, ReservationId,
    ReservationState, ReservationView, Reserve, SaleWindow, Shard, ShardConfig, ShardId, SkuId,
    SkuView, Slot, RESERVE_QTY_MAX, SLOT_COUNT, STOCK_TOTAL_MAX, TTL_MS_MAX,
};
use proptest::prelude::*;

const SHARD: ShardId = ShardId(3);

/// Small bounds so that every eviction and refusal path is reached in a short run; the hash
/// seed only decides where table entries sit, so replays and restores use other seeds than
/// the live shard and must still agree with it.
fn config(hash_seed: u64) -> ShardConfig {
    ShardConfig {
        hash_seed,
        skus_max: 3,
        reservations_live_max: 6,
        dedup_retention_ms: 2_000,
        dedup_entries_max: 12,
        rejection_cache_slots: 1 << 12,
        ended_retention_ms: 3_000,
        ended_entries_max: 5,
        carts_ended_max: 5,
        return_window_ms: 4_000,
        returnable_entries_max: 4,
    }
}

#[derive(Clone, Debug, Default)]
struct ModelSku {
    total: u64,
    available: u64,
    reserved: u64,
    sold: u64,
    limit: Option<u32>,
    window: SaleWindow,
    taken: BTreeMap<u64, u64>,
}

#[derive(Clone, Copy, Debug)]
struct ModelReservation {
    buyer: u64,
    sku: u64,
    qty: u32,
    expires_at_ms: u64,
    state: ReservationState,
    order_ref: Option<OrderRef>,
}

#[derive(Debug, Default)]
struct Model {
    clock_ms: u64,
    seq_next: u64,
    skus: BTreeMap<u64, ModelSku>,
    reservations: BTreeMap<u64, ModelReservation>,
    ended: VecDeque<(u64, u64)>,
    answers: VecDeque<(u128, u64, Outcome)>,
    rejections: HashMap<u128, Outcome>,
    /// Every reservation that ended, in order: what the log's events must report.
    endings: Vec<Ended>,
    /// Sales still returnable, oldest first: (reservation, sku, buyer, qty, returned, sold at).
    sales: VecDeque<(u64, u64, u64, u32, u32, u64)>,
    /// Every return, in order: (reservation, qty, returned total).
    returns: Vec<(u64, u32, u32)>,
}

impl Model {
    fn new() -> Model {
        Model { seq_next: 1, ..Model::default() }
    }

    fn apply(&mut self, command: &Command, now_ms: u64) -> Outcome {
        self.clock_ms = self.clock_ms.max(now_ms);
        let now = self.clock_ms;
        let request = command.request().0;
        if let Some(&(_, _, outcome)) = self.answers.iter().find(|(r, _, _)| *r == request) {
            return outcome;
        }
        if let Some(outcome) = self.rejections.get(&request) {
            return *outcome;
        }
        let (outcome, changed) = self.decide(command, now);
        if changed {
            self.answers.push_back((request, now, outcome));
            let c = config(0);
            while let Some(&(_, at, _)) = self.answers.front() {
                if self.answers.len() > c.dedup_entries_max || at + c.dedup_retention_ms <= now {
                    self.answers.pop_front();
                } else {
                    break;
                }
            }
        } else {
            self.rejections.insert(request, outcome);
        }
        outcome
    }

    fn decide(&mut self, command: &Command, now: u64) -> (Outcome, bool) {
        let c = config(0);
        match *command {
            Command::Reserve(r) => self.reserve(r, now),
            Command::Confirm { reservation, order_ref, .. } => {
                self.end(reservation, Some(order_ref), now)
            }
            Command::Cancel { reservation, .. } => self.end(reservation, None, now),
            Command::ReturnSold { reservation, line, sku, qty, .. } => {
                self.return_sold(reservation.0, line, sku.0, qty, now)
            }
            Command::SetStock { sku, total, .. } => {
                if total > STOCK_TOTAL_MAX {
                    return (Outcome::StockOutOfRange { total_max: STOCK_TOTAL_MAX }, false);
                }
                if !self.skus.contains_key(&sku.0) && self.skus.len() >= c.skus_max {
                    return (Outcome::TooManySkus { skus_max: c.skus_max as u64 }, false);
                }
                let s = self.skus.entry(sku.0).or_default();
                let committed = s.reserved + s.sold;
                if total < committed {
                    return (Outcome::StockBelowCommitted { committed }, false);
                }
                s.total = total;
                s.available = total - committed;
                (Outcome::StockChanged { total, available: s.available }, true)
            }
            Command::AdjustStock { sku, delta, .. } => {
                let Some(s) = self.skus.get_mut(&sku.0) else {
                    return (Outcome::UnknownSku, false);
                };
                let available = s.available as i128 + delta as i128;
                let total = s.total as i128 + delta as i128;
                if available < 0 {
                    return (Outcome::InsufficientAvailable { available: s.available }, false);
                }
                if total > STOCK_TOTAL_MAX as i128 {
                    return (Outcome::StockOutOfRange { total_max: STOCK_TOTAL_MAX }, false);
                }
                s.available = available as u64;
                s.total = total as u64;
                (Outcome::StockChanged { total: s.total, available: s.available }, true)
            }
            Command::SetBuyerLimit { sku, limit, .. } => {
                let Some(s) = self.skus.get_mut(&sku.0) else {
                    return (Outcome::UnknownSku, false);
                };
                let taken_max = s.taken.values().copied().max().unwrap_or(0);
                if limit.is_some_and(|l| taken_max > u64::from(l)) {
                    return (Outcome::LimitBelowHoldings { taken_max }, false);
                }
                s.limit = limit;
                (Outcome::LimitSet, true)
            }
            Command::SetSaleWindow { sku, window, .. } => {
                let Some(s) = self.skus.get_mut(&sku.0) else {
                    return (Outcome::UnknownSku, false);
                };
                if let (Some(o), Some(cl)) = (window.opens_at_ms, window.closes_at_ms) {
                    if o >= cl {
                        return (Outcome::InvalidWindow, false);
                    }
                }
                s.window = window;
                (Outcome::WindowSet, true)
            }
            Command::SetBuckets { .. } => unreachable!("spread SKUs are engine/tests/buckets.rs"),
        }
    }

    fn reserve(&mut self, r: Reserve, now: u64) -> (Outcome, bool) {
        if r.qty == 0 || r.qty > RESERVE_QTY_MAX {
            return (Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX }, false);
        }
        if r.ttl_ms == 0 || r.ttl_ms > TTL_MS_MAX {
            return (Outcome::InvalidTtl { ttl_ms_max: TTL_MS_MAX }, false);
        }
        let live = self.reservations.values().filter(|r| r.state == ReservationState::Held).count();
        let Some(s) = self.skus.get_mut(&r.sku.0) else {
            return (Outcome::UnknownSku, false);
        };
        if let Some(opens_at_ms) = s.window.opens_at_ms.filter(|&o| now < o) {
            return (Outcome::SaleNotOpen { opens_at_ms }, false);
        }
        if let Some(closed_at_ms) = s.window.closes_at_ms.filter(|&cl| now >= cl) {
            return (Outcome::SaleClosed { closed_at_ms }, false);
        }
        let taken = s.taken.get(&r.buyer.0).copied().unwrap_or(0);
        if let Some(limit) = s.limit.filter(|&l| taken + u64::from(r.qty) > u64::from(l)) {
            return (Outcome::LimitExceeded { taken, limit }, false);
        }
        if s.available < u64::from(r.qty) {
            return (Outcome::SoldOut { available: s.available }, false);
        }
        if live >= config(0).reservations_live_max {
            return (
                Outcome::TooManyReservations { live_max: config(0).reservations_live_max as u64 },
                false,
            );
        }
        s.available -= u64::from(r.qty);
        s.reserved += u64::from(r.qty);
        *s.taken.entry(r.buyer.0).or_default() += u64::from(r.qty);
        let id = ReservationId::new(slot_of(r.sku), SHARD, self.seq_next);
        self.seq_next += 1;
        let expires_at_ms = now + r.ttl_ms;
        let held = ModelReservation {
            buyer: r.buyer.0,
            sku: r.sku.0,
            qty: r.qty,
            expires_at_ms,
            state: ReservationState::Held,
            order_ref: r.order_ref,
        };
        self.reservations.insert(id.0, held);
        (Outcome::Reserved { reservation: id, expires_at_ms }, true)
    }

    /// Confirm (with the confirm's order reference, maybe none) or cancel (`None`).
    fn end(
        &mut self,
        id: ReservationId,
        confirm: Option<Option<OrderRef>>,
        now: u64,
    ) -> (Outcome, bool) {
        let Some(r) = self.reservations.get(&id.0).copied() else {
            return (Outcome::UnknownReservation, false);
        };
        match r.state {
            ReservationState::Confirmed => (Outcome::AlreadyConfirmed, false),
            ReservationState::Cancelled => (Outcome::AlreadyCancelled, false),
            ReservationState::Expired => (Outcome::Expired, false),
            ReservationState::Held if now >= r.expires_at_ms => {
                self.finish(id.0, ReservationState::Expired, now);
                (Outcome::Expired, true)
            }
            ReservationState::Held if confirm.is_some() => {
                if let Some(Some(order_ref)) = confirm {
                    self.reservations.get_mut(&id.0).unwrap().order_ref = Some(order_ref);
                }
                self.finish(id.0, ReservationState::Confirmed, now);
                (Outcome::Confirmed, true)
            }
            ReservationState::Held => {
                self.finish(id.0, ReservationState::Cancelled, now);
                (Outcome::Cancelled, true)
            }
        }
    }

    fn return_sold(&mut self, id: u64, line: u8, sku: u64, qty: u32, now: u64) -> (Outcome, bool) {
        if qty == 0 || qty > RESERVE_QTY_MAX {
            return (Outcome::InvalidQuantity { qty_max: RESERVE_QTY_MAX }, false);
        }
        let window_ms = config(0).return_window_ms;
        let found = self.sales.iter_mut().find(|s| s.0 == id && line == 0 && s.5 + window_ms > now);
        let Some(sale) = found.filter(|s| s.1 == sku) else {
            return (Outcome::NotReturnable, false);
        };
        if qty > sale.3 - sale.4 {
            return (Outcome::ReturnExceedsSold { returnable: sale.3 - sale.4 }, false);
        }
        sale.4 += qty;
        let (buyer, returned_total) = (sale.2, sale.4);
        self.returns.push((id, qty, returned_total));
        let s = self.skus.get_mut(&sku).unwrap();
        s.sold -= u64::from(qty);
        s.available += u64::from(qty);
        let t = s.taken.get_mut(&buyer).unwrap();
        *t -= u64::from(qty);
        if *t == 0 {
            s.taken.remove(&buyer);
        }
        (Outcome::Returned { returned_total }, true)
    }

    fn finish(&mut self, id: u64, end: ReservationState, now: u64) {
        let r = self.reservations.get_mut(&id).unwrap();
        r.state = end;
        let r = *r;
        self.endings.push(Ended {
            reservation: ReservationId(id),
            state: end,
            buyer: BuyerId(r.buyer),
            sku: SkuId(r.sku),
            qty: r.qty,
            order_ref: r.order_ref,
        });
        let s = self.skus.get_mut(&r.sku).unwrap();
        s.reserved -= u64::from(r.qty);
        if end == ReservationState::Confirmed {
            s.sold += u64::from(r.qty);
            self.sales.push_back((id, r.sku, r.buyer, r.qty, 0, now));
            let c = config(0);
            while let Some(&(_, _, _, _, _, sold_at)) = self.sales.front() {
                if self.sales.len() > c.returnable_entries_max
                    || sold_at + c.return_window_ms <= now
                {
                    self.sales.pop_front();
                } else {
                    break;
                }
            }
        } else {
            s.available += u64::from(r.qty);
            let t = s.taken.get_mut(&r.buyer).unwrap();
            *t -= u64::from(r.qty);
            if *t == 0 {
                s.taken.remove(&r.buyer);
            }
        }
        self.ended.push_back((id, now));
        let c = config(0);
        while let Some(&(old, at)) = self.ended.front() {
            if self.ended.len() > c.ended_entries_max || at + c.ended_retention_ms <= now {
                self.ended.pop_front();
                self.reservations.remove(&old);
            } else {
                break;
            }
        }
    }

    fn tick(&mut self, now_ms: u64) -> u32 {
        self.clock_ms = self.clock_ms.max(now_ms);
        let now = self.clock_ms;
        let mut due: Vec<(u64, u64)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.state == ReservationState::Held && r.expires_at_ms <= now)
            .map(|(&id, r)| (r.expires_at_ms, id))
            .collect();
        due.sort_unstable();
        for &(_, id) in &due {
            self.finish(id, ReservationState::Expired, now);
        }
        due.len() as u32
    }

    fn sku_view(&self, sku: u64) -> Option<SkuView> {
        self.skus.get(&sku).map(|s| SkuView {
            sku: SkuId(sku),
            total: s.total,
            available: s.available,
            reserved: s.reserved,
            sold: s.sold,
            buyer_limit: s.limit,
            window: s.window,
        })
    }

    fn reservation_view(&self, id: u64) -> Option<ReservationView> {
        self.reservations.get(&id).map(|r| ReservationView {
            reservation: ReservationId(id),
            buyer: BuyerId(r.buyer),
            sku: SkuId(r.sku),
            qty: r.qty,
            expires_at_ms: r.expires_at_ms,
            state: r.state,
        })
    }
}

/// One generated step. Targets of confirm/cancel and retries are indices into what the run
/// has produced so far, so that most of them name real reservations and requests.
#[derive(Clone, Debug)]
enum Op {
    Reserve { buyer: u64, sku: u64, qty: u32, ttl_ms: u64 },
    Confirm { pick: usize },
    Cancel { pick: usize },
    SetStock { sku: u64, total: u64 },
    Adjust { sku: u64, delta: i64 },
    Limit { sku: u64, limit: Option<u32> },
    Window { sku: u64, opens: Option<u64>, closes: Option<u64> },
    Retry { pick: usize },
    Return { pick: usize, qty: u32, wrong_sku: bool },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let sku = 0u64..4;
    let qty = prop_oneof![8 => 1u32..4, 1 => Just(0u32), 1 => Just(RESERVE_QTY_MAX + 1)];
    // Short TTLs and small clock steps make `now == expires_at` common: the boundary matters.
    let ttl =
        prop_oneof![3 => 1u64..3_000, 3 => 1u64..6, 1 => Just(0u64), 1 => Just(TTL_MS_MAX + 1)];
    let time = proptest::option::of(0u64..20_000);
    prop_oneof![
        10 => (0u64..4, sku.clone(), qty, ttl)
            .prop_map(|(buyer, sku, qty, ttl_ms)| Op::Reserve { buyer, sku, qty, ttl_ms }),
        4 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => (sku.clone(), prop_oneof![0u64..12, Just(STOCK_TOTAL_MAX + 1)])
            .prop_map(|(sku, total)| Op::SetStock { sku, total }),
        2 => (sku.clone(), -4i64..5).prop_map(|(sku, delta)| Op::Adjust { sku, delta }),
        1 => (sku.clone(), proptest::option::of(0u32..4))
            .prop_map(|(sku, limit)| Op::Limit { sku, limit }),
        1 => (sku, time.clone(), time)
            .prop_map(|(sku, opens, closes)| Op::Window { sku, opens, closes }),
        3 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        3 => (any::<usize>(), prop_oneof![5 => 1u32..3, 1 => Just(0u32), 1 => 3u32..6], proptest::bool::weighted(0.1))
            .prop_map(|(pick, qty, wrong_sku)| Op::Return { pick, qty, wrong_sku }),
        3 => Just(Op::Tick),
    ]
}

/// Clock steps: mostly small, some large jumps, some backwards.
fn clock_step() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0i64..3, 4 => 0i64..50, 2 => 50i64..2_000, 1 => 2_000i64..10_000, 1 => -1_000i64..0]
}

struct Run {
    shard: Shard,
    model: Model,
    log: Vec<Record>,
    issued: Vec<ReservationId>,
    sent: Vec<Command>,
    next_request: u128,
}

impl Run {
    fn command(&mut self, op: &Op) -> Option<Command> {
        let mut request = || {
            self.next_request += 1;
            RequestId(self.next_request)
        };
        let pick_reservation = |pick: usize, issued: &[ReservationId]| {
            // One pick in eight names a reservation nobody issued: mostly an issued sequence
            // under another SKU's slot (a forged id), which must name nothing.
            if issued.is_empty() || pick % 8 == 0 {
                let slot = Slot((pick / 8 % usize::from(SLOT_COUNT)) as u16);
                ReservationId::new(slot, SHARD, 1 + pick as u64 % 7)
            } else {
                issued[pick % issued.len()]
            }
        };
        Some(match *op {
            Op::Reserve { buyer, sku, qty, ttl_ms } => Command::Reserve(Reserve {
                request: request(),
                buyer: BuyerId(buyer),
                sku: SkuId(sku),
                qty,
                ttl_ms,
                // Some reserves carry the caller's order reference, some confirms give one.
                order_ref: (buyer % 2 == 0).then_some(OrderRef(u128::from(buyer) << 64 | 1)),
            }),
            Op::Confirm { pick } => Command::Confirm {
                request: request(),
                reservation: pick_reservation(pick, &self.issued),
                order_ref: (pick % 3 == 0).then_some(OrderRef(pick as u128)),
            },
            Op::Cancel { pick } => Command::Cancel {
                request: request(),
                reservation: pick_reservation(pick, &self.issued),
            },
            Op::SetStock { sku, total } => {
                Command::SetStock { request: request(), sku: SkuId(sku), total }
            }
            Op::Adjust { sku, delta } => {
                Command::AdjustStock { request: request(), sku: SkuId(sku), delta }
            }
            Op::Limit { sku, limit } => {
                Command::SetBuyerLimit { request: request(), sku: SkuId(sku), limit }
            }
            Op::Window { sku, opens, closes } => Command::SetSaleWindow {
                request: request(),
                sku: SkuId(sku),
                window: SaleWindow { opens_at_ms: opens, closes_at_ms: closes },
            },
            Op::Return { pick, qty, wrong_sku } => {
                let reservation = pick_reservation(pick, &self.issued);
                // The SKU the sale sold, if the model knows the reservation (else any).
                let sku = self.model.reservations.get(&reservation.0).map_or(0, |r| r.sku);
                let sku = SkuId(if wrong_sku { sku + 1 } else { sku });
                Command::ReturnSold { request: request(), reservation, line: 0, sku, qty }
            }
            Op::Retry { pick } if !self.sent.is_empty() => self.sent[pick % self.sent.len()],
            Op::Retry { .. } | Op::Tick => return None,
        })
    }

    fn agree(&self) {
        self.shard.check_invariants().expect("engine invariants");
        for sku in 0..4 {
            assert_eq!(self.shard.query_sku(SkuId(sku)), self.model.sku_view(sku), "sku {sku}");
        }
        for id in self.issued.iter().map(|r| r.0).chain(self.model.reservations.keys().copied()) {
            let id = ReservationId(id);
            assert_eq!(self.shard.query_reservation(id), self.model.reservation_view(id.0), "{id}");
        }
        assert_eq!(
            self.shard.reservations_live(),
            self.model.reservations.values().filter(|r| r.state == ReservationState::Held).count()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_and_replays(
        steps in proptest::collection::vec((op(), clock_step()), 1..160),
        snapshot_at in any::<prop::sample::Index>(),
        hash_seed in any::<u64>(),
    ) {
        let mut run = Run {
            shard: Shard::new(SHARD, config(hash_seed)),
            model: Model::new(),
            log: Vec::new(),
            issued: Vec::new(),
            sent: Vec::new(),
            next_request: 0,
        };
        let snapshot_step = snapshot_at.index(steps.len());
        let mut snapshot = None;
        let mut now_ms: u64 = 1_000;
        for (index, (op, step)) in steps.iter().enumerate() {
            if index == snapshot_step {
                let mut bytes = Vec::new();
                run.shard.encode_snapshot(&mut bytes);
                snapshot = Some((bytes, run.log.len()));
            }
            now_ms = now_ms.saturating_add_signed(*step);
            match run.command(op) {
                Some(command) => {
                    let got = run.shard.apply(&command, now_ms, &mut run.log);
                    let want = run.model.apply(&command, now_ms);
                    prop_assert_eq!(got, want, "{:?} at {}", command, now_ms);
                    if let Outcome::Reserved { reservation, .. } = got {
                        run.issued.push(reservation);
                    }
                    run.sent.push(command);
                }
                None => {
                    let got = run.shard.tick(now_ms, &mut run.log);
                    prop_assert_eq!(got, run.model.tick(now_ms), "tick at {}", now_ms);
                }
            }
            run.agree();
        }

        // The log's events report every ending the model saw, in order, with its detail.
        let endings: Vec<Ended> = run
            .log
            .iter()
            .flat_map(Record::events)
            .filter_map(|event| match event.change {
                Change::Ended(ended) => Some(ended),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&endings, &run.model.endings);
        let returns: Vec<(u64, u32, u32)> = run
            .log
            .iter()
            .flat_map(Record::events)
            .filter_map(|event| match event.change {
                Change::Returned(r) => Some((r.reservation.0, r.qty, r.returned_total)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&returns, &run.model.returns);

        let mut replayed = Shard::new(SHARD, config(!hash_seed));
        for record in &run.log {
            replayed.replay(record).unwrap();
        }
        replayed.check_invariants().unwrap();
        prop_assert_eq!(replayed.digest(), run.shard.digest());

        // Bulk replay (what recovery does) must end in the same state as replaying one by one.
        let mut bulk = Shard::new(SHARD, config(!hash_seed));
        bulk.begin_replay();
        for record in &run.log {
            bulk.replay(record).unwrap();
        }
        bulk.finish_replay().unwrap();
        bulk.check_invariants().unwrap();
        prop_assert_eq!(bulk.digest(), run.shard.digest());

        let (bytes, tail_from) = snapshot.unwrap();
        let mut restored = Shard::restore(SHARD, config(hash_seed ^ 0x5eed), &bytes).unwrap();
        for record in &run.log[tail_from..] {
            restored.replay(record).unwrap();
        }
        prop_assert_eq!(restored.digest(), run.shard.digest());

        let mut restored = Shard::restore(SHARD, config(hash_seed ^ 0x5eed), &bytes).unwrap();
        restored.begin_replay();
        for record in &run.log[tail_from..] {
            restored.replay(record).unwrap();
        }
        restored.finish_replay().unwrap();
        prop_assert_eq!(restored.digest(), run.shard.digest());
    }
}
