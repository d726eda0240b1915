//! Carts across shards, model-based: random carts over 2-4 shards, interleaved with one-line
//! reserves, confirms, cancels, expiries, drivers that stall or die, lost messages, and
//! crashes that cut each shard's log anywhere after what it had acknowledged. After every
//! step each shard's invariants hold; after every recovery (and at the end, once every
//! message is delivered) the invariants between shards hold too:
//! - every held line belongs to a held cart that lists it, and every held cart holds all of
//!   its lines;
//! - a cart that was acknowledged survives, in the state its acknowledged end gave it;
//! - each confirmed cart has exactly one confirmed event per line in the logs, and the units
//!   sold of every SKU are what the logs' confirmed events add up to, less their returns
//!   (returns of confirmed cart lines are part of the mix).

use std::collections::{BTreeMap, BTreeSet};

use flashstock_engine::cart::deliver;
use flashstock_engine::{
    check_carts, settle_all, BuyerId, CartDriver, Change, Command, Lines, Outcome, Record,
    RequestId, ReservationId, ReservationState, Reserve, ReserveCart, Shard, ShardConfig, ShardId,
    ShardMap, ShardMessage, SkuId,
};
use proptest::prelude::*;

const SKUS: u64 = 8;

fn config(hash_seed: u64) -> ShardConfig {
    ShardConfig {
        hash_seed,
        skus_max: 16,
        reservations_live_max: 12,
        dedup_retention_ms: 60_000,
        dedup_entries_max: 64,
        rejection_cache_slots: 1 << 8,
        // Long enough that no acknowledged cart is forgotten within a run.
        ended_retention_ms: 10_000_000,
        ended_entries_max: 10_000,
        carts_ended_max: 10_000,
        return_window_ms: 10_000_000,
        returnable_entries_max: 10_000,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Cart {
        buyer: u64,
        lines: Vec<(u64, u32)>,
        ttl_ms: u64,
    },
    Reserve {
        buyer: u64,
        sku: u64,
        qty: u32,
    },
    /// Moves one in-flight cart reserve one step (a prepare, or its decision).
    Advance {
        pick: usize,
        prepare: usize,
    },
    /// A driver dies: its cart is left to the participants' deadlines.
    Abandon {
        pick: usize,
    },
    /// One message between shards arrives, or is lost.
    Deliver {
        pick: usize,
        lost: bool,
    },
    Confirm {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    /// A retry of a cart reserve already answered, with the same request id.
    Retry {
        pick: usize,
    },
    /// Units of a confirmed cart's line come back.
    Return {
        pick: usize,
        line: usize,
        qty: u32,
    },
    Tick {
        step_ms: u64,
    },
    Snapshot {
        shard: usize,
    },
    Crash {
        cuts: Vec<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lines = proptest::collection::vec((0..SKUS, 1u32..4), 1..5);
    prop_oneof![
        6 => (0u64..4, lines, prop_oneof![1u64..3_000, Just(20_000u64)])
            .prop_map(|(buyer, lines, ttl_ms)| Op::Cart { buyer, lines, ttl_ms }),
        2 => (0u64..4, 0..SKUS, 1u32..3).prop_map(|(buyer, sku, qty)| Op::Reserve { buyer, sku, qty }),
        14 => (any::<usize>(), any::<usize>()).prop_map(|(pick, prepare)| Op::Advance { pick, prepare }),
        1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
        8 => (any::<usize>(), proptest::bool::weighted(0.1))
            .prop_map(|(pick, lost)| Op::Deliver { pick, lost }),
        3 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        2 => (any::<usize>(), any::<usize>(), 1u32..3)
            .prop_map(|(pick, line, qty)| Op::Return { pick, line, qty }),
        4 => prop_oneof![4 => 0u64..50, 1 => 1_000u64..8_000].prop_map(|step_ms| Op::Tick { step_ms }),
        1 => (0usize..4).prop_map(|shard| Op::Snapshot { shard }),
        1 => proptest::collection::vec(any::<usize>(), 4).prop_map(|cuts| Op::Crash { cuts }),
    ]
}

/// A cart reserve in flight: its driver, and which prepares it has yet to send.
struct Flight {
    cart: ReserveCart,
    driver: CartDriver,
    unsent: Vec<usize>,
}

struct Sim {
    map: ShardMap,
    seed: u64,
    now_ms: u64,
    shards: Vec<Shard>,
    logs: Vec<Vec<Record>>,
    /// Per shard, how much of its log some answer or message already depended on: a crash
    /// may lose only what lies beyond (the runtime releases both after the sync).
    durable: Vec<usize>,
    snapshots: Vec<Option<(Vec<u8>, usize)>>,
    network: Vec<ShardMessage>,
    flights: Vec<Flight>,
    next_request: u128,
    /// Cart reserves answered, with the answer the caller got.
    answered: Vec<(ReserveCart, Outcome)>,
    /// Carts whose `Reserved` the caller got, and those whose confirm it got.
    held: Vec<ReservationId>,
    confirmed: BTreeSet<ReservationId>,
    ended: BTreeMap<ReservationId, ReservationState>,
    /// Returns acknowledged.
    returned: usize,
}

impl Sim {
    fn new(shard_count: u16, seed: u64) -> Sim {
        let map = ShardMap::new(shard_count);
        let shards: Vec<Shard> =
            (0..shard_count).map(|id| Shard::new(ShardId(id), config(seed))).collect();
        let count = usize::from(shard_count);
        let mut sim = Sim {
            map,
            seed,
            now_ms: 1_000,
            shards,
            logs: vec![Vec::new(); count],
            durable: vec![0; count],
            snapshots: vec![None; count],
            network: Vec::new(),
            flights: Vec::new(),
            next_request: 0,
            answered: Vec::new(),
            held: Vec::new(),
            confirmed: BTreeSet::new(),
            ended: BTreeMap::new(),
            returned: 0,
        };
        for sku in 0..SKUS {
            let total = 3 + sku % 4;
            let request = sim.request();
            sim.apply(Command::SetStock { request, sku: SkuId(sku), total });
            if sku % 3 == 0 {
                let request = sim.request();
                sim.apply(Command::SetBuyerLimit { request, sku: SkuId(sku), limit: Some(3) });
            }
        }
        sim
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn owner(&self, sku: SkuId) -> usize {
        usize::from(self.map.shard_of_sku(sku).0)
    }

    /// Applies a command on its shard; its answer is released, so what it logged is durable.
    fn apply(&mut self, command: Command) -> Outcome {
        let shard = match command.route_key() {
            flashstock_engine::RouteKey::Sku(sku) => self.owner(sku),
            flashstock_engine::RouteKey::Reservation(id) => usize::from(id.shard().0),
        };
        let outcome = self.shards[shard].apply(&command, self.now_ms, &mut self.logs[shard]);
        self.durable[shard] = self.logs[shard].len();
        outcome
    }

    fn start_cart(&mut self, cart: ReserveCart) {
        match CartDriver::start(cart, &self.map, self.now_ms) {
            Ok(driver) => {
                let unsent = (0..driver.prepares().len()).collect();
                self.flights.push(Flight { cart, driver, unsent });
            }
            Err(outcome) => self.answered.push((cart, outcome)),
        }
    }

    fn advance(&mut self, pick: usize, prepare: usize) {
        if self.flights.is_empty() {
            return;
        }
        let index = pick % self.flights.len();
        let flight = &mut self.flights[index];
        if !flight.unsent.is_empty() {
            let which = flight.unsent.remove(prepare % flight.unsent.len());
            let (shard, job) = flight.driver.prepares()[which];
            let shard = usize::from(shard.0);
            let answer = self.shards[shard].prepare_lines(&job, self.now_ms, &mut self.logs[shard]);
            self.durable[shard] = self.logs[shard].len();
            flight.driver.prepared(which, answer);
            return;
        }
        let flight = self.flights.remove(index);
        let decide = flight.driver.decision().expect("every prepare answered");
        let shard = usize::from(flight.driver.coordinator().0);
        let outcome = self.shards[shard].decide_cart(&decide, self.now_ms, &mut self.logs[shard]);
        self.durable[shard] = self.logs[shard].len();
        self.answer(flight.cart, outcome);
    }

    fn answer(&mut self, cart: ReserveCart, outcome: Outcome) {
        if let Outcome::Reserved { reservation, .. } = outcome {
            if !self.held.contains(&reservation) {
                self.held.push(reservation);
            }
        }
        self.answered.push((cart, outcome));
    }

    fn end(&mut self, pick: usize, confirm: bool) {
        if self.held.is_empty() {
            return;
        }
        let reservation = self.held[pick % self.held.len()];
        let request = self.request();
        let command = if confirm {
            Command::Confirm { request, reservation, order_ref: None }
        } else {
            Command::Cancel { request, reservation }
        };
        match self.apply(command) {
            Outcome::Confirmed => {
                self.confirmed.insert(reservation);
                self.ended.insert(reservation, ReservationState::Confirmed);
            }
            Outcome::Cancelled => {
                self.ended.insert(reservation, ReservationState::Cancelled);
            }
            Outcome::Expired => {
                self.ended.insert(reservation, ReservationState::Expired);
            }
            Outcome::AlreadyConfirmed => assert!(self.confirmed.contains(&reservation)),
            Outcome::AlreadyCancelled => {
                assert_eq!(self.ended.get(&reservation), Some(&ReservationState::Cancelled))
            }
            other => panic!("ending an acknowledged cart answered {other:?}"),
        }
    }

    /// Returns `qty` units of one line of a confirmed cart, at the shard owning its SKU.
    fn return_line(&mut self, pick: usize, line: usize, qty: u32) {
        if self.confirmed.is_empty() {
            return;
        }
        let cart = *self.confirmed.iter().nth(pick % self.confirmed.len()).unwrap();
        let view = self.shards[usize::from(cart.shard().0)].query_cart(cart).unwrap();
        let line = view.lines.as_slice()[line % view.lines.len()];
        let request = self.request();
        let command = Command::ReturnSold {
            request,
            reservation: cart,
            line: line.index,
            sku: line.sku,
            qty,
        };
        let outcome = self.apply(command);
        assert!(
            matches!(
                outcome,
                Outcome::Returned { .. }
                    | Outcome::ReturnExceedsSold { .. }
                    | Outcome::NotReturnable
            ),
            "{outcome:?}"
        );
        if let Outcome::Returned { .. } = outcome {
            self.returned += 1;
        }
    }

    /// Collects every shard's messages into the network; their records are durable first.
    fn collect(&mut self) {
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let before = self.network.len();
            shard.take_messages(&mut self.network);
            if self.network.len() > before {
                self.durable[index] = self.logs[index].len();
            }
        }
    }

    fn deliver_one(&mut self, pick: usize, lost: bool) {
        if self.network.is_empty() {
            return;
        }
        let message = self.network.swap_remove(pick % self.network.len());
        if !lost {
            deliver(&mut self.shards, message, self.now_ms, &mut self.logs).unwrap();
        }
    }

    fn tick(&mut self, step_ms: u64) {
        self.now_ms += step_ms;
        for (shard, log) in self.shards.iter_mut().zip(&mut self.logs) {
            shard.tick(self.now_ms, log);
        }
    }

    /// Kill -9: drivers and messages are gone, and each log loses some of what no answer or
    /// message depended on. Then recovery: snapshot (when it is still within the log) plus
    /// replay, and the start-up pass.
    fn crash(&mut self, cuts: &[usize]) {
        self.flights.clear();
        self.network.clear();
        for (index, cut_pick) in cuts.iter().enumerate().take(self.shards.len()) {
            let (durable, len) = (self.durable[index], self.logs[index].len());
            let cut = durable + cut_pick % (len - durable + 1);
            self.logs[index].truncate(cut);
            // A snapshot of records the crash lost is no snapshot of this log any more (the
            // runtime snapshots only what is durable).
            if self.snapshots[index].as_ref().is_some_and(|(_, at)| *at > cut) {
                self.snapshots[index] = None;
            }
            self.shards[index] = self.recover(index);
        }
        let asked = settle_all(&mut self.shards, self.now_ms, &mut self.logs).unwrap();
        self.collect();
        assert!(self.network.is_empty(), "the start-up pass leaves no message ({asked} asked)");
        for index in 0..self.shards.len() {
            self.durable[index] = self.logs[index].len();
        }
        check_carts(&self.shards).expect("carts agree across shards after recovery");
        self.check_acknowledged();
    }

    fn recover(&self, index: usize) -> Shard {
        let id = ShardId(index as u16);
        let log = &self.logs[index];
        let seed = self.seed ^ 0x5eed;
        let (mut shard, from) = match &self.snapshots[index] {
            Some((bytes, at)) => (Shard::restore(id, config(seed), bytes).unwrap(), *at),
            _ => (Shard::new(id, config(seed)), 0),
        };
        shard.begin_replay();
        for record in &log[from..] {
            shard.replay(record).unwrap();
        }
        shard.finish_replay().unwrap();
        shard.check_invariants().unwrap();
        shard
    }

    fn check_acknowledged(&self) {
        for &cart in &self.held {
            let coordinator = &self.shards[usize::from(cart.shard().0)];
            let view = coordinator.query_cart(cart).expect("an acknowledged cart survives");
            if let Some(&state) = self.ended.get(&cart) {
                assert_eq!(view.state, state, "an acknowledged end survives: {cart}");
            }
        }
    }

    /// Lets every cart run its course: drivers die, messages arrive, time passes every
    /// deadline and TTL.
    fn quiesce(&mut self) {
        self.flights.clear();
        for _ in 0..8 {
            self.collect();
            while let Some(message) = self.network.pop() {
                deliver(&mut self.shards, message, self.now_ms, &mut self.logs).unwrap();
                self.collect();
            }
            self.tick(30_000);
        }
        self.collect();
        assert!(self.network.is_empty());
    }

    /// Units sold per SKU, and confirmed cart lines per cart, as the logs' events say.
    fn check_events(&self) {
        let mut sold: BTreeMap<SkuId, u64> = BTreeMap::new();
        let mut cart_lines: BTreeMap<ReservationId, Vec<u8>> = BTreeMap::new();
        let mut returns = 0;
        for event in self.logs.iter().flatten().flat_map(Record::events) {
            match event.change {
                Change::Ended(ended) if ended.state == ReservationState::Confirmed => {
                    *sold.entry(ended.sku).or_default() += u64::from(ended.qty);
                }
                Change::CartLineEnded { line, ended }
                    if ended.state == ReservationState::Confirmed =>
                {
                    *sold.entry(ended.sku).or_default() += u64::from(ended.qty);
                    cart_lines.entry(ended.reservation).or_default().push(line);
                }
                Change::Returned(returned) => {
                    *sold.get_mut(&returned.sku).expect("a return follows its sale") -=
                        u64::from(returned.qty);
                    returns += 1;
                }
                _ => {}
            }
        }
        assert_eq!(returns, self.returned, "every acknowledged return is in a log, once");
        for sku in (0..SKUS).map(SkuId) {
            let view = self.shards[self.owner(sku)].query_sku(sku).unwrap();
            assert_eq!(view.sold, sold.get(&sku).copied().unwrap_or(0), "{sku:?}: sold vs events");
        }
        for shard in &self.shards {
            for cart in self.held.iter().filter(|c| c.shard() == shard.id()) {
                let view = shard.query_cart(*cart).unwrap();
                let mut lines = cart_lines.remove(cart).unwrap_or_default();
                lines.sort_unstable();
                let want: Vec<u8> = if view.state == ReservationState::Confirmed {
                    view.lines.as_slice().iter().map(|l| l.index).collect()
                } else {
                    Vec::new()
                };
                assert_eq!(lines, want, "{cart}: one confirmed event per line, once");
            }
        }
        // Carts no caller heard of (answers lost in a crash) may have been confirmed only
        // by a confirm someone sent: none here, so no other cart has confirmed lines.
        assert!(cart_lines.is_empty(), "confirmed lines of unknown carts: {cart_lines:?}");
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Cart { buyer, lines, ttl_ms } => {
                let lines = Lines::numbered(lines.iter().map(|&(sku, qty)| (SkuId(sku), qty)));
                let cart = ReserveCart {
                    request: self.request(),
                    buyer: BuyerId(*buyer),
                    ttl_ms: *ttl_ms,
                    order_ref: None,
                    lines: lines.unwrap(),
                };
                self.start_cart(cart);
            }
            &Op::Reserve { buyer, sku, qty } => {
                let request = self.request();
                let (buyer, sku) = (BuyerId(buyer), SkuId(sku));
                let reserve = Reserve { request, buyer, sku, qty, ttl_ms: 500, order_ref: None };
                self.apply(Command::Reserve(reserve));
            }
            &Op::Advance { pick, prepare } => self.advance(pick, prepare),
            &Op::Abandon { pick } => {
                if !self.flights.is_empty() {
                    self.flights.swap_remove(pick % self.flights.len());
                }
            }
            &Op::Deliver { pick, lost } => self.deliver_one(pick, lost),
            &Op::Confirm { pick } => self.end(pick, true),
            &Op::Cancel { pick } => self.end(pick, false),
            &Op::Retry { pick } => {
                if !self.answered.is_empty() {
                    let (cart, _) = self.answered[pick % self.answered.len()];
                    self.start_cart(cart);
                }
            }
            &Op::Return { pick, line, qty } => self.return_line(pick, line, qty),
            &Op::Tick { step_ms } => self.tick(step_ms),
            &Op::Snapshot { shard } => {
                let index = shard % self.shards.len();
                let mut bytes = Vec::new();
                self.shards[index].encode_snapshot(&mut bytes);
                self.snapshots[index] = Some((bytes, self.logs[index].len()));
            }
            Op::Crash { cuts } => self.crash(cuts),
        }
        self.collect();
        for shard in &self.shards {
            shard.check_invariants().expect("each shard's invariants hold after every step");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn carts_are_all_or_nothing_through_crashes(
        shard_count in 2u16..=4,
        ops in proptest::collection::vec(op(), 1..150),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(shard_count, seed);
        for op in &ops {
            sim.run(op);
        }
        sim.quiesce();
        check_carts(&sim.shards).expect("carts agree across shards at the end");
        for shard in &sim.shards {
            prop_assert_eq!(shard.line_groups(), 0, "every group ended once every cart did");
            prop_assert_eq!(shard.carts_live(), 0);
        }
        sim.check_acknowledged();
        sim.check_events();
        // A retried cart reserve got its first answer whenever that was still remembered.
        let mut first: BTreeMap<RequestId, Outcome> = BTreeMap::new();
        for (cart, outcome) in &sim.answered {
            if let Outcome::Reserved { .. } = outcome {
                let earlier = first.entry(cart.request).or_insert(*outcome);
                prop_assert_eq!(earlier, outcome, "one cart per request id");
            }
        }
    }
}

/// Scenario tests, one rule each: shards in one process, every message delivered at once.
mod scenarios {
    use super::*;
    use flashstock_engine::{LineRefusal, SaleWindow, CART_LINES_MAX, CART_PREPARE_TIMEOUT_MS};

    struct Cluster {
        map: ShardMap,
        shards: Vec<Shard>,
        logs: Vec<Vec<Record>>,
        next_request: u128,
    }

    impl Cluster {
        /// Two shards, and SKUs 0..8 with 10 units each (both shards own some).
        fn new() -> Cluster {
            let map = ShardMap::new(2);
            let shards = (0..2).map(|id| Shard::new(ShardId(id), ShardConfig::default())).collect();
            let mut cluster =
                Cluster { map, shards, logs: vec![Vec::new(), Vec::new()], next_request: 0 };
            for sku in 0..8 {
                let request = cluster.request();
                cluster.apply(Command::SetStock { request, sku: SkuId(sku), total: 10 }, 0);
            }
            assert!((0..8).any(|s| map.shard_of_sku(SkuId(s)) == ShardId(1)));
            assert!((0..8).any(|s| map.shard_of_sku(SkuId(s)) == ShardId(0)));
            cluster
        }

        fn request(&mut self) -> RequestId {
            self.next_request += 1;
            RequestId(self.next_request)
        }

        /// Two SKUs owned by different shards.
        fn split_pair(&self) -> (u64, u64) {
            let first = self.map.shard_of_sku(SkuId(0));
            let other = (1..8).find(|&s| self.map.shard_of_sku(SkuId(s)) != first).unwrap();
            (0, other)
        }

        fn apply(&mut self, command: Command, now_ms: u64) -> Outcome {
            let shard = match command.route_key() {
                flashstock_engine::RouteKey::Sku(sku) => self.map.shard_of_sku(sku),
                flashstock_engine::RouteKey::Reservation(id) => id.shard(),
            };
            let index = usize::from(shard.0);
            let outcome = self.shards[index].apply(&command, now_ms, &mut self.logs[index]);
            self.deliver_all(now_ms);
            outcome
        }

        fn cart(&mut self, buyer: u64, lines: &[(u64, u32)], ttl_ms: u64) -> ReserveCart {
            let lines = Lines::numbered(lines.iter().map(|&(sku, qty)| (SkuId(sku), qty)));
            ReserveCart {
                request: self.request(),
                buyer: BuyerId(buyer),
                ttl_ms,
                order_ref: None,
                lines: lines.unwrap(),
            }
        }

        /// Runs a driver to its end, then delivers every message.
        fn reserve(&mut self, cart: ReserveCart, now_ms: u64) -> Outcome {
            let mut driver = match CartDriver::start(cart, &self.map, now_ms) {
                Ok(driver) => driver,
                Err(outcome) => return outcome,
            };
            self.prepare_all(&mut driver, now_ms);
            let decide = driver.decision().unwrap();
            let index = usize::from(driver.coordinator().0);
            let outcome = self.shards[index].decide_cart(&decide, now_ms, &mut self.logs[index]);
            self.deliver_all(now_ms);
            outcome
        }

        fn prepare_all(&mut self, driver: &mut CartDriver, now_ms: u64) {
            for index in 0..driver.prepares().len() {
                let (shard, prepare) = driver.prepares()[index];
                let shard = usize::from(shard.0);
                let answer =
                    self.shards[shard].prepare_lines(&prepare, now_ms, &mut self.logs[shard]);
                driver.prepared(index, answer);
            }
        }

        fn deliver_all(&mut self, now_ms: u64) {
            let mut messages = Vec::new();
            loop {
                for shard in &mut self.shards {
                    shard.take_messages(&mut messages);
                }
                if messages.is_empty() {
                    break;
                }
                for message in messages.drain(..) {
                    deliver(&mut self.shards, message, now_ms, &mut self.logs).unwrap();
                }
            }
            for shard in &self.shards {
                shard.check_invariants().unwrap();
            }
        }

        fn tick(&mut self, now_ms: u64) {
            for (shard, log) in self.shards.iter_mut().zip(&mut self.logs) {
                shard.tick(now_ms, log);
            }
            self.deliver_all(now_ms);
        }

        fn sku(&self, sku: u64) -> flashstock_engine::SkuView {
            self.shards[usize::from(self.map.shard_of_sku(SkuId(sku)).0)]
                .query_sku(SkuId(sku))
                .unwrap()
        }

        fn held(&self, sku: u64) -> (u64, u64, u64) {
            let view = self.sku(sku);
            (view.available, view.reserved, view.sold)
        }
    }

    fn reserved(outcome: Outcome) -> ReservationId {
        match outcome {
            Outcome::Reserved { reservation, .. } => reservation,
            other => panic!("expected a held cart, got {other:?}"),
        }
    }

    #[test]
    fn a_cart_on_two_shards_holds_every_line_and_a_confirm_sells_each_once() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let cart = c.cart(7, &[(a, 2), (b, 3)], 60_000);
        let id = reserved(c.reserve(cart, 10));
        assert_eq!((c.held(a), c.held(b)), ((8, 2, 0), (7, 3, 0)));
        check_carts(&c.shards).unwrap();
        let request = c.request();
        let confirm = Command::Confirm { request, reservation: id, order_ref: None };
        assert_eq!(c.apply(confirm, 20), Outcome::Confirmed);
        assert_eq!((c.held(a), c.held(b)), ((8, 0, 2), (7, 0, 3)));
        assert_eq!(c.apply(confirm, 21), Outcome::Confirmed, "a retried confirm");
        let request = c.request();
        let again = Command::Confirm { request, reservation: id, order_ref: None };
        assert_eq!(c.apply(again, 22), Outcome::AlreadyConfirmed);
        let lines: Vec<(u8, SkuId, u32)> = c
            .logs
            .iter()
            .flatten()
            .flat_map(Record::events)
            .filter_map(|event| match event.change {
                Change::CartLineEnded { line, ended } => {
                    assert_eq!((ended.reservation, ended.state), (id, ReservationState::Confirmed));
                    Some((line, ended.sku, ended.qty))
                }
                _ => None,
            })
            .collect();
        let mut lines = lines;
        lines.sort_unstable();
        assert_eq!(lines, vec![(0, SkuId(a), 2), (1, SkuId(b), 3)]);
        check_carts(&c.shards).unwrap();
    }

    #[test]
    fn a_refused_line_refuses_the_whole_cart_and_is_named() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let cart = c.cart(7, &[(a, 2), (b, 11)], 60_000);
        let outcome = c.reserve(cart, 10);
        let refusal = LineRefusal::SoldOut;
        assert_eq!(outcome, Outcome::CartRefused { line: 1, refusal, value: 10 });
        assert_eq!((c.held(a), c.held(b)), ((10, 0, 0), (10, 0, 0)), "nothing stays held");
        // The refusal is the cart's answer for good: a retry gets it, even once stock is back.
        let request = c.request();
        c.apply(Command::AdjustStock { request, sku: SkuId(b), delta: 5 }, 11);
        assert_eq!(c.reserve(cart, 12), outcome);
        assert_eq!((c.held(a), c.held(b)), ((10, 0, 0), (15, 0, 0)));
    }

    #[test]
    fn buyer_limits_and_sale_windows_hold_per_line() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let request = c.request();
        c.apply(Command::SetBuyerLimit { request, sku: SkuId(b), limit: Some(3) }, 0);
        let first = c.cart(7, &[(a, 1), (b, 2)], 60_000);
        reserved(c.reserve(first, 10));
        let second = c.cart(7, &[(a, 1), (b, 2)], 60_000);
        let refusal = LineRefusal::LimitExceeded;
        assert_eq!(c.reserve(second, 11), Outcome::CartRefused { line: 1, refusal, value: 2 });
        let other_buyer = c.cart(8, &[(a, 1), (b, 2)], 60_000);
        reserved(c.reserve(other_buyer, 12));
        let request = c.request();
        let window = SaleWindow { opens_at_ms: None, closes_at_ms: Some(100) };
        c.apply(Command::SetSaleWindow { request, sku: SkuId(a), window }, 13);
        let late = c.cart(9, &[(b, 1), (a, 1)], 60_000);
        let refusal = LineRefusal::SaleClosed;
        assert_eq!(c.reserve(late, 100), Outcome::CartRefused { line: 1, refusal, value: 100 });
        assert_eq!(c.held(a), (8, 2, 0));
    }

    #[test]
    fn a_retried_cart_reserve_gets_its_first_answer_and_holds_once() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let cart = c.cart(7, &[(a, 2), (b, 3)], 60_000);
        let first = c.reserve(cart, 10);
        assert_eq!(c.reserve(cart, 20), first);
        assert_eq!((c.held(a), c.held(b)), ((8, 2, 0), (7, 3, 0)));
        check_carts(&c.shards).unwrap();
    }

    /// A retry whose every line is refused now (the buyer reached its limit with the first
    /// attempt itself) still gets the first answer: the coordinator is asked even when no
    /// group was prepared.
    #[test]
    fn a_retry_refused_everywhere_still_gets_the_first_answer() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        for sku in [a, b] {
            let request = c.request();
            c.apply(Command::SetBuyerLimit { request, sku: SkuId(sku), limit: Some(1) }, 0);
        }
        let cart = c.cart(7, &[(a, 1), (b, 1)], 60_000);
        let first = c.reserve(cart, 10);
        let id = reserved(first);
        let request = c.request();
        c.apply(Command::Confirm { request, reservation: id, order_ref: None }, 11);
        assert_eq!(c.reserve(cart, 12), first);
        assert_eq!((c.held(a), c.held(b)), ((9, 0, 1), (9, 0, 1)));
    }

    #[test]
    fn a_driver_that_dies_after_its_prepares_holds_nothing_past_the_deadline() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let cart = c.cart(7, &[(a, 2), (b, 3)], 60_000);
        let mut driver = CartDriver::start(cart, &c.map, 10).unwrap();
        c.prepare_all(&mut driver, 10);
        assert_eq!((c.held(a), c.held(b)), ((8, 2, 0), (7, 3, 0)), "prepared, in doubt");
        c.tick(10 + CART_PREPARE_TIMEOUT_MS - 1);
        assert_eq!(c.held(a).1, 2, "held until the deadline");
        c.tick(10 + CART_PREPARE_TIMEOUT_MS);
        assert_eq!((c.held(a), c.held(b)), ((10, 0, 0), (10, 0, 0)), "released at the deadline");
        // The driver, had it only stalled, can no longer hold the cart.
        let decide = driver.decision().unwrap();
        let index = usize::from(driver.coordinator().0);
        let late = c.shards[index].decide_cart(&decide, 20, &mut c.logs[index]);
        assert_eq!(late, Outcome::CartTimedOut);
        c.deliver_all(20);
        assert_eq!((c.held(a), c.held(b)), ((10, 0, 0), (10, 0, 0)));
        check_carts(&c.shards).unwrap();
    }

    #[test]
    fn a_cart_expires_as_a_whole() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        let cart = c.cart(7, &[(a, 2), (b, 3)], 1_000);
        let id = reserved(c.reserve(cart, 10));
        c.tick(1_009);
        assert_eq!(c.held(b).1, 3);
        c.tick(1_010);
        assert_eq!((c.held(a), c.held(b)), ((10, 0, 0), (10, 0, 0)));
        let request = c.request();
        let confirm = Command::Confirm { request, reservation: id, order_ref: None };
        assert_eq!(c.apply(confirm, 1_011), Outcome::Expired);
        check_carts(&c.shards).unwrap();
    }

    /// A participant schedules a question per open group; the schedule of groups that
    /// ended early (held for 15 minutes, confirmed at once) must not stay behind until their
    /// expiry, or a busy shard would carry every cart of the last 15 minutes.
    #[test]
    fn the_schedule_of_questions_stays_near_the_open_groups() {
        let mut c = Cluster::new();
        let (a, b) = c.split_pair();
        for sku in [a, b] {
            let request = c.request();
            c.apply(Command::SetStock { request, sku: SkuId(sku), total: 1 << 30 }, 0);
        }
        for buyer in 0..2_500 {
            let cart = c.cart(buyer, &[(a, 1), (b, 1)], 15 * 60 * 1000);
            let id = reserved(c.reserve(cart, 10 + buyer));
            let request = c.request();
            c.apply(Command::Confirm { request, reservation: id, order_ref: None }, 10 + buyer);
        }
        for shard in &c.shards {
            assert_eq!(shard.line_groups(), 0);
            let scheduled = shard.asks_scheduled();
            assert!(scheduled <= 2 * 1_024, "{scheduled} questions scheduled for no open group");
        }
    }

    #[test]
    fn malformed_carts_are_refused_before_anything_is_held() {
        let mut c = Cluster::new();
        let lines_max = CART_LINES_MAX as u32;
        let empty = c.cart(7, &[], 1_000);
        assert_eq!(c.reserve(empty, 1), Outcome::InvalidCart { lines_max });
        let twice = c.cart(7, &[(1, 1), (2, 1), (1, 1)], 1_000);
        assert_eq!(c.reserve(twice, 1), Outcome::InvalidCart { lines_max });
        let zero = c.cart(7, &[(1, 1), (2, 0)], 1_000);
        let refusal = LineRefusal::InvalidQuantity;
        assert!(
            matches!(c.reserve(zero, 1), Outcome::CartRefused { line: 1, refusal: r, .. } if r == refusal)
        );
        let no_ttl = c.cart(7, &[(1, 1)], 0);
        assert!(matches!(c.reserve(no_ttl, 1), Outcome::InvalidTtl { .. }));
        let too_many = (0..=CART_LINES_MAX as u64).map(|sku| (SkuId(sku), 1));
        assert!(Lines::numbered(too_many).is_none());
        assert!((0..8).all(|sku| c.held(sku) == (10, 0, 0)));
    }
}
