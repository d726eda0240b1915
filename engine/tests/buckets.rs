//! Hot-SKU buckets, model-based: one SKU spread over 2-4 buckets on 2-4 shards; random
//! reserves by buyers under a limit (routed to their home bucket and refilled from the
//! siblings when it runs dry, as the runtime does), retries of earlier reserves with their
//! request ids, confirms, cancels, restocks, moves delivered late, and crashes that cut each
//! shard's log anywhere after what it had acknowledged or sent (some shards restored from a
//! snapshot). After every step:
//! - each shard's invariants hold;
//! - the SKU's total over its buckets, plus the units of moves not yet put in, is what was
//!   stocked (moves neither lose nor make units, crashes included);
//! - no buyer holds plus bought more than the limit, counted over every bucket;
//! - no reserve was answered sold out while the buckets had the units between them;
//! - a retried reserve that was held gets the same reservation back.
//!
//! At the end every message is delivered and the start-up pass runs: no move is left in
//! flight and the totals add up exactly.

use std::collections::{BTreeMap, VecDeque};

use flashstock_engine::cart::deliver;
use flashstock_engine::{
    check_carts, mix64, settle_all, BuyerId, Command, MoveOut, MoveSplit, Outcome, Record,
    RequestId, ReservationId, Reserve, Shard, ShardConfig, ShardId, ShardMap, ShardMessage, SkuId,
};
use proptest::prelude::*;

const SKU: SkuId = SkuId(77);
const LIMIT: u32 = 3;
const STOCK: u64 = 40;

fn config() -> ShardConfig {
    ShardConfig {
        skus_max: 16,
        reservations_live_max: 64,
        dedup_retention_ms: 10_000_000,
        dedup_entries_max: 10_000,
        rejection_cache_slots: 1 << 8,
        ended_retention_ms: 10_000_000,
        ended_entries_max: 10_000,
        ..ShardConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        buyer: u64,
        qty: u32,
    },
    Retry {
        pick: usize,
    },
    Confirm {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Restock {
        units: u8,
    },
    /// An unasked move between two buckets, left in the network; or, not `durable`, left
    /// in its step (a crash may cut it; the shard's next durable step sends it).
    Move {
        from: u32,
        to: u32,
        units: u8,
        durable: bool,
    },
    Deliver {
        count: usize,
    },
    Snapshot {
        shard: usize,
    },
    Crash {
        cuts: Vec<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u64..12, 1u32..3).prop_map(|(buyer, qty)| Op::Reserve { buyer, qty }),
        2 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (1u8..6).prop_map(|units| Op::Restock { units }),
        3 => (0u32..4, 0u32..4, 1u8..8, any::<bool>())
            .prop_map(|(from, to, units, durable)| Op::Move { from, to, units, durable }),
        4 => (1usize..4).prop_map(|count| Op::Deliver { count }),
        1 => (0usize..4).prop_map(|shard| Op::Snapshot { shard }),
        1 => proptest::collection::vec(any::<usize>(), 4).prop_map(|cuts| Op::Crash { cuts }),
    ]
}

struct Sim {
    map: ShardMap,
    buckets: u32,
    now_ms: u64,
    shards: Vec<Shard>,
    logs: Vec<Vec<Record>>,
    /// Per shard, how much of its log an answer or a message sent already depended on.
    durable: Vec<usize>,
    snapshots: Vec<Option<(Vec<u8>, usize)>>,
    network: VecDeque<ShardMessage>,
    next_request: u128,
    stocked: u64,
    /// Reserves answered: the command, and the answer its caller got.
    answered: Vec<(Reserve, Outcome)>,
    /// Held reservations acknowledged, with their buyer and units.
    held: Vec<(ReservationId, u64, u32)>,
    /// Units each buyer holds plus bought, as the answers said.
    taken: BTreeMap<u64, u64>,
}

impl Sim {
    fn new(shard_count: u16, buckets: u32) -> Sim {
        let count = usize::from(shard_count);
        let mut sim = Sim {
            map: ShardMap::new(shard_count),
            buckets,
            now_ms: 1_000,
            shards: (0..shard_count).map(|id| Shard::new(ShardId(id), config())).collect(),
            logs: vec![Vec::new(); count],
            durable: vec![0; count],
            snapshots: vec![None; count],
            network: VecDeque::new(),
            next_request: 0,
            stocked: STOCK,
            answered: Vec::new(),
            held: Vec::new(),
            taken: BTreeMap::new(),
        };
        let request = sim.request();
        assert!(matches!(
            sim.apply(Command::SetStock { request, sku: SKU, total: STOCK }),
            Outcome::StockChanged { .. }
        ));
        let request = sim.request();
        sim.apply(Command::SetBuyerLimit { request, sku: SKU, limit: Some(LIMIT) });
        let request = sim.request();
        let set = sim.apply(Command::SetBuckets { request, sku: SKU, buckets });
        assert_eq!(set, Outcome::BucketsSet { buckets });
        // The runtime's spread: an even share to each other bucket.
        for index in 1..buckets {
            sim.move_units(0, index, STOCK / u64::from(buckets), MoveSplit::Exact);
        }
        sim.deliver_all();
        sim
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn shard_of(&self, index: u32) -> usize {
        usize::from(self.map.shard_of_sku(SKU.bucket(index)).0)
    }

    /// Applies a command on its shard; its answer is released, so what it logged is durable.
    fn apply(&mut self, command: Command) -> Outcome {
        let shard = match command.route_key() {
            flashstock_engine::RouteKey::Sku(sku) => usize::from(self.map.shard_of_sku(sku).0),
            flashstock_engine::RouteKey::Reservation(id) => usize::from(id.shard().0),
        };
        let outcome = self.shards[shard].apply(&command, self.now_ms, &mut self.logs[shard]);
        self.release(shard);
        outcome
    }

    /// The runtime sends a shard's messages once its step is durable.
    fn release(&mut self, shard: usize) {
        self.durable[shard] = self.logs[shard].len();
        let mut messages = Vec::new();
        self.shards[shard].take_messages(&mut messages);
        self.network.extend(messages);
    }

    fn move_units(&mut self, from: u32, to: u32, units: u64, split: MoveSplit) -> bool {
        self.move_unreleased(from, to, units, split).is_some_and(|sender| {
            self.release(sender);
            true
        })
    }

    /// Moves units out, leaving the step unreleased; the sender's index when it moved some.
    fn move_unreleased(
        &mut self,
        from: u32,
        to: u32,
        units: u64,
        split: MoveSplit,
    ) -> Option<usize> {
        let (sender, to_shard) = (self.shard_of(from), self.map.shard_of_sku(SKU.bucket(to)));
        let ask = MoveOut {
            from_sku: SKU.bucket(from),
            to_sku: SKU.bucket(to),
            to: to_shard,
            units,
            split,
        };
        let moved = self.shards[sender].move_out(&ask, self.now_ms, &mut self.logs[sender]);
        moved.map(|_| sender)
    }

    fn deliver_one(&mut self) {
        let Some(message) = self.network.pop_front() else { return };
        let to = usize::from(message.to().0);
        deliver(&mut self.shards, message, self.now_ms, &mut self.logs).unwrap();
        self.release(to);
    }

    fn deliver_all(&mut self) {
        while !self.network.is_empty() {
            self.deliver_one();
        }
    }

    /// The runtime's reserve of a spread SKU: the buyer's home bucket, refilled from each
    /// sibling in turn while it answers sold out.
    fn reserve(&mut self, reserve: Reserve) -> Outcome {
        let home = (mix64(reserve.buyer.0) % u64::from(self.buckets)) as u32;
        let command = Command::Reserve(Reserve { sku: SKU.bucket(home), ..reserve });
        let mut outcome = self.apply(command);
        for step in 1..self.buckets {
            if !matches!(outcome, Outcome::SoldOut { .. } | Outcome::UnknownSku) {
                break;
            }
            let sibling = (home + step) % self.buckets;
            if self.move_units(sibling, home, u64::from(reserve.qty), MoveSplit::HalfOrMore) {
                self.deliver_all();
                let shard = self.shard_of(home);
                outcome =
                    self.shards[shard].apply_again(&command, self.now_ms, &mut self.logs[shard]);
                self.release(shard);
            }
        }
        outcome
    }

    fn bucket_views(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.buckets).filter_map(|index| {
            let view = self.shards[self.shard_of(index)].query_sku(SKU.bucket(index))?;
            Some((view.total, view.available))
        })
    }

    /// Units moved out and not yet put in.
    fn units_in_flight(&self) -> u64 {
        let mut units = 0;
        for sender in &self.shards {
            for stock_move in sender.moves_in_flight() {
                let receiver = &self.shards[usize::from(stock_move.to.0)];
                if stock_move.id > receiver.move_applied_from(sender.id()) {
                    units += stock_move.units;
                }
            }
        }
        units
    }

    fn check(&self) {
        for shard in &self.shards {
            shard.check_invariants().unwrap();
        }
        let total: u64 = self.bucket_views().map(|(total, _)| total).sum();
        assert_eq!(total + self.units_in_flight(), self.stocked, "units made or lost");
        for (&buyer, &units) in &self.taken {
            assert!(units <= u64::from(LIMIT), "buyer {buyer} holds plus bought {units}");
        }
    }

    fn answer(&mut self, reserve: Reserve, outcome: Outcome, retry: Option<Outcome>) {
        match (outcome, retry) {
            (
                Outcome::Reserved { reservation, .. },
                Some(Outcome::Reserved { reservation: first, .. }),
            ) => {
                assert_eq!(reservation, first, "a retry held a second reservation");
            }
            (Outcome::Reserved { reservation, .. }, _) => {
                self.held.push((reservation, reserve.buyer.0, reserve.qty));
                *self.taken.entry(reserve.buyer.0).or_default() += u64::from(reserve.qty);
            }
            (Outcome::SoldOut { .. }, _) if self.network.is_empty() => {
                let available: u64 = self.bucket_views().map(|(_, available)| available).sum();
                assert!(
                    available < u64::from(reserve.qty),
                    "sold out with {available} units in buckets"
                );
            }
            _ => {}
        }
    }

    fn end(&mut self, pick: usize, confirm: bool) {
        if self.held.is_empty() {
            return;
        }
        let (reservation, buyer, qty) = self.held.remove(pick % self.held.len());
        let request = self.request();
        let outcome = if confirm {
            self.apply(Command::Confirm { request, reservation, order_ref: None })
        } else {
            self.apply(Command::Cancel { request, reservation })
        };
        match outcome {
            Outcome::Confirmed => {}
            Outcome::Cancelled => *self.taken.get_mut(&buyer).unwrap() -= u64::from(qty),
            other => panic!("ending a held reservation answered {other:?}"),
        }
    }

    fn crash(&mut self, cuts: &[usize]) {
        self.network.clear();
        for index in 0..self.shards.len() {
            let lost = self.logs[index].len() - self.durable[index];
            let keep = self.durable[index] + cuts[index % cuts.len()] % (lost + 1);
            self.logs[index].truncate(keep);
            self.shards[index] = self.recover(index);
        }
        let mut appended: Vec<Vec<Record>> = vec![Vec::new(); self.shards.len()];
        settle_all(&mut self.shards, self.now_ms, &mut appended).unwrap();
        check_carts(&self.shards).unwrap();
        for (log, more) in self.logs.iter_mut().zip(appended) {
            log.extend(more);
        }
        self.durable = self.logs.iter().map(Vec::len).collect();
    }

    fn recover(&self, index: usize) -> Shard {
        let id = ShardId(index as u16);
        let (mut shard, from) = match &self.snapshots[index] {
            Some((bytes, at)) if *at <= self.logs[index].len() => {
                (Shard::restore(id, config(), bytes).unwrap(), *at)
            }
            _ => (Shard::new(id, config()), 0),
        };
        for record in &self.logs[index][from..] {
            shard.replay(record).unwrap();
        }
        shard
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Reserve { buyer, qty } => {
                let reserve = Reserve {
                    request: self.request(),
                    buyer: BuyerId(buyer),
                    sku: SKU,
                    qty,
                    ttl_ms: 1_000_000,
                    order_ref: None,
                };
                let outcome = self.reserve(reserve);
                self.answer(reserve, outcome, None);
                self.answered.push((reserve, outcome));
            }
            Op::Retry { pick } if !self.answered.is_empty() => {
                let index = pick % self.answered.len();
                let (reserve, first) = self.answered[index];
                let outcome = self.reserve(reserve);
                self.answer(reserve, outcome, Some(first));
                // A refused reserve may hold when retried later; then it is held for good.
                if !matches!(first, Outcome::Reserved { .. }) {
                    self.answered[index].1 = outcome;
                }
            }
            Op::Confirm { pick } => self.end(pick, true),
            Op::Cancel { pick } => self.end(pick, false),
            Op::Restock { units } => {
                let request = self.request();
                let delta = i64::from(units);
                if let Outcome::StockChanged { .. } =
                    self.apply(Command::AdjustStock { request, sku: SKU, delta })
                {
                    self.stocked += u64::from(units);
                }
            }
            Op::Move { from, to, units, durable } => {
                let (from, to) = (from % self.buckets, to % self.buckets);
                if from == to {
                    return;
                }
                let sender = self.move_unreleased(from, to, u64::from(units), MoveSplit::Exact);
                if let (Some(sender), true) = (sender, durable) {
                    self.release(sender);
                }
            }
            Op::Deliver { count } => (0..count).for_each(|_| self.deliver_one()),
            Op::Snapshot { shard } => {
                let index = shard % self.shards.len();
                // A snapshot covers a durable prefix, as the checkpoint thread's replica does.
                let mut replica = Shard::new(ShardId(index as u16), config());
                let at = self.durable[index];
                for record in &self.logs[index][..at] {
                    replica.replay(record).unwrap();
                }
                let mut bytes = Vec::new();
                replica.encode_snapshot(&mut bytes);
                self.snapshots[index] = Some((bytes, at));
            }
            Op::Crash { cuts } => self.crash(&cuts),
            Op::Retry { .. } => {}
        }
        self.now_ms += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn moves_between_buckets_neither_lose_nor_make_units(
        (shard_count, buckets) in (2u16..=4).prop_flat_map(|n| (Just(n), 2u32..=u32::from(n))),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut sim = Sim::new(shard_count, buckets);
        sim.check();
        for op in ops {
            sim.step(op);
            sim.check();
        }
        sim.deliver_all();
        let mut appended: Vec<Vec<Record>> = vec![Vec::new(); sim.shards.len()];
        settle_all(&mut sim.shards, sim.now_ms, &mut appended).unwrap();
        check_carts(&sim.shards).unwrap();
        let total: u64 = sim.bucket_views().map(|(total, _)| total).sum();
        prop_assert_eq!(total, sim.stocked);
    }
}

/// A snapshot holding spread SKUs and moves in flight restores to the same state, and every
/// cut of it (a torn file) is refused with a typed error, never a panic.
#[test]
fn a_snapshot_with_moves_in_flight_restores_exactly_and_refuses_every_cut() {
    let mut sim = Sim::new(2, 2);
    // Two moves left in flight: sent, not delivered.
    assert!(sim.move_units(0, 1, 3, MoveSplit::Exact));
    assert!(sim.move_units(1, 0, 2, MoveSplit::Exact));
    for shard in &sim.shards {
        let mut bytes = Vec::new();
        shard.encode_snapshot(&mut bytes);
        let restored = Shard::restore(shard.id(), config(), &bytes).unwrap();
        assert_eq!(restored.digest(), shard.digest());
        assert_eq!(restored.moves_in_flight().count(), shard.moves_in_flight().count());
        assert_eq!(
            restored.bucket_stock().collect::<Vec<_>>(),
            shard.bucket_stock().collect::<Vec<_>>()
        );
        for cut in 0..bytes.len() {
            assert!(Shard::restore(shard.id(), config(), &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
    assert_eq!(sim.shards.iter().map(|s| s.moves_in_flight().count()).sum::<usize>(), 2);
}

/// A spread SKU's admin rules: set once, before any buyer; its total, limit and window are
/// fixed from then on, and stock is added into bucket 0.
#[test]
fn a_spread_sku_refuses_what_would_split_its_rules() {
    let mut sim = Sim::new(2, 2);
    let request = sim.request();
    assert_eq!(
        sim.apply(Command::SetBuckets { request, sku: SKU, buckets: 2 }),
        Outcome::Bucketed { buckets: 2 }
    );
    let request = sim.request();
    assert_eq!(
        sim.apply(Command::SetStock { request, sku: SKU, total: 5 }),
        Outcome::Bucketed { buckets: 2 }
    );
    let request = sim.request();
    assert_eq!(
        sim.apply(Command::SetBuyerLimit { request, sku: SKU, limit: None }),
        Outcome::Bucketed { buckets: 2 }
    );
    // Another SKU with a buyer already counted cannot be spread.
    let other = SkuId(5);
    let request = sim.request();
    sim.apply(Command::SetStock { request, sku: other, total: 10 });
    let reserve = Reserve {
        request: sim.request(),
        buyer: BuyerId(1),
        sku: other,
        qty: 1,
        ttl_ms: 1_000,
        order_ref: None,
    };
    assert!(matches!(sim.apply(Command::Reserve(reserve)), Outcome::Reserved { .. }));
    let request = sim.request();
    assert_eq!(
        sim.apply(Command::SetBuckets { request, sku: other, buckets: 2 }),
        Outcome::BuyersCounted { buyers: 1 }
    );
    let request = sim.request();
    assert_eq!(
        sim.apply(Command::SetBuckets { request, sku: SkuId(6), buckets: 1 }),
        Outcome::InvalidBuckets { buckets_max: flashstock_engine::BUCKETS_MAX }
    );
}
