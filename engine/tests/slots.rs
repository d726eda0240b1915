//! Slot moves (docs/cluster.md): a range exported from one shard and imported into another
//! (same shard index, another server) answers every query, retry and later command on the
//! target exactly as it would have on the source; both logs replay to the live states, and
//! both pass every invariant at every step.

use flashstock_engine::{
    slot_of, BuyerId, Command, Outcome, Record, RequestId, ReservationId, Reserve, Shard,
    ShardConfig, ShardId, SkuId, Slot, SlotRange, SplitMix64,
};

const SHARD: ShardId = ShardId(3);
const TTL_MS: u64 = 5_000;

fn config() -> ShardConfig {
    ShardConfig {
        hash_seed: 7,
        // Bounds no run reaches: the target's tables hold other sales than the source's,
        // so what each forgets first at a bound differs (and answers "unknown" then).
        ended_entries_max: 100_000,
        returnable_entries_max: 100_000,
        ..ShardConfig::default()
    }
}

/// The range that moves: the lower half of the slots.
fn range() -> SlotRange {
    SlotRange::new(Slot(0), Slot(2047)).unwrap()
}

/// A shard with its log and its history of answered requests.
struct Side {
    shard: Shard,
    log: Vec<Record>,
    answered: Vec<(Command, Outcome)>,
}

impl Side {
    fn new() -> Side {
        Side { shard: Shard::new(SHARD, config()), log: Vec::new(), answered: Vec::new() }
    }

    fn apply(&mut self, command: Command, now_ms: u64) -> Outcome {
        let outcome = self.shard.apply(&command, now_ms, &mut self.log);
        self.shard.check_invariants().expect("invariants hold after every step");
        self.answered.push((command, outcome));
        outcome
    }

    fn tick(&mut self, now_ms: u64) {
        self.shard.tick(now_ms, &mut self.log);
        self.shard.check_invariants().expect("invariants hold after a tick");
    }

    fn replayed(&self) -> Shard {
        let mut shard = Shard::new(SHARD, config());
        for record in &self.log {
            shard.replay(record).unwrap_or_else(|e| panic!("replay of {record:?}: {e}"));
        }
        shard
    }
}

/// Random sales: stock and limits set, then reserves, confirms, cancels, returns and time
/// passing. Request ids count up from `request`.
struct Load {
    rng: SplitMix64,
    request: u128,
    now_ms: u64,
}

impl Load {
    fn request(&mut self) -> RequestId {
        self.request += 1;
        RequestId(self.request)
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    fn stock(&mut self, side: &mut Side, skus: &[SkuId]) {
        for (i, &sku) in skus.iter().enumerate() {
            let request = self.request();
            side.apply(Command::SetStock { request, sku, total: 30 }, self.now_ms);
            if i % 3 == 0 {
                let request = self.request();
                side.apply(Command::SetBuyerLimit { request, sku, limit: Some(4) }, self.now_ms);
            }
        }
    }

    /// One random command on `skus` (or on a reservation of them) at the load's clock.
    fn command(
        &mut self,
        skus: &[SkuId],
        held: &[ReservationId],
        sold: &[ReservationId],
    ) -> Command {
        let request = self.request();
        let kind = self.pick(10);
        if kind < 5 || held.is_empty() {
            let sku = skus[self.pick(skus.len())];
            let (buyer, qty) = (BuyerId(1 + self.pick(6) as u64), 1 + self.pick(3) as u32);
            let ttl_ms = TTL_MS + self.pick(3) as u64 * 1_000;
            return Command::Reserve(Reserve { request, buyer, sku, qty, ttl_ms, order_ref: None });
        }
        let reservation = held[self.pick(held.len())];
        match kind {
            5..=6 => Command::Confirm { request, reservation, order_ref: None },
            7 => Command::Cancel { request, reservation },
            _ if !sold.is_empty() => {
                let reservation = sold[self.pick(sold.len())];
                let sku = skus.iter().copied().find(|&s| slot_of(s) == reservation.slot());
                Command::ReturnSold { request, reservation, line: 0, sku: sku.unwrap(), qty: 1 }
            }
            _ => Command::Cancel { request, reservation },
        }
    }

    /// `steps` random commands on `side`, with time passing so some holds expire.
    fn run(&mut self, side: &mut Side, skus: &[SkuId], steps: usize) {
        let (mut held, mut sold) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            self.now_ms += self.pick(300) as u64;
            side.tick(self.now_ms);
            let command = self.command(skus, &held, &sold);
            match side.apply(command, self.now_ms) {
                Outcome::Reserved { reservation, .. } => held.push(reservation),
                Outcome::Confirmed => {
                    if let Command::Confirm { reservation, .. } = command {
                        sold.push(reservation);
                    }
                }
                _ => {}
            }
        }
    }
}

fn skus_split(count: u64) -> (Vec<SkuId>, Vec<SkuId>) {
    (1..=count).map(SkuId).partition(|&sku| range().contains(slot_of(sku)))
}

fn moving_state(shard: &Shard) -> Vec<String> {
    let mut views: Vec<String> = shard
        .skus()
        .filter(|view| range().contains(slot_of(view.sku)))
        .map(|view| format!("{view:?}"))
        .collect();
    views.sort();
    views
}

/// Moves the range from `source` to `target`: both freeze, the source exports, the target
/// imports every item, then the target thaws (it owns the range) and, unless `rollback`, the
/// source releases; with `rollback` the source thaws instead and the target releases.
fn move_range(source: &mut Side, target: &mut Side, now_ms: u64, rollback: bool) -> usize {
    source.shard.freeze_slots(range(), now_ms, &mut source.log).unwrap();
    target.shard.freeze_slots(range(), now_ms, &mut target.log).unwrap();
    let items = source.shard.export_slots(range()).unwrap();
    for item in &items {
        target.shard.import_slot(item, now_ms, &mut target.log).unwrap();
        target.shard.check_invariants().expect("invariants hold after each import");
    }
    let (owner, other) = if rollback { (source, target) } else { (target, source) };
    owner.shard.thaw_slots(range(), now_ms, &mut owner.log).unwrap();
    other.shard.release_slots(range(), now_ms, &mut other.log).unwrap();
    for side in [owner, other] {
        side.shard.check_invariants().expect("invariants hold after the move");
    }
    items.len()
}

#[test]
fn a_moved_range_answers_on_the_target_as_it_would_have_on_the_source() {
    for seed in 0..12u64 {
        let (moving, staying) = skus_split(40);
        let mut source = Side::new();
        let mut load = Load { rng: SplitMix64::new(seed), request: 0, now_ms: 1_000 };
        let all: Vec<SkuId> = moving.iter().chain(&staying).copied().collect();
        load.stock(&mut source, &all);
        load.run(&mut source, &all, 400);

        // The target sells SKUs of its own outside the range, issuing sequences that collide
        // with the source's.
        let mut target = Side::new();
        let own: Vec<SkuId> =
            (1_000..1_100).map(SkuId).filter(|&s| !range().contains(slot_of(s))).collect();
        let mut target_load =
            Load { rng: SplitMix64::new(seed + 100), request: 1 << 64, now_ms: 1_000 };
        target_load.stock(&mut target, &own);
        target_load.run(&mut target, &own, 150);

        // The same continuation applied to the source rolled back (it keeps the range) and
        // to the target after the move must answer the same.
        let mut kept =
            Side { shard: source.shard.clone(), log: source.log.clone(), answered: vec![] };
        let mut rolled_back = Side::new();
        let before = moving_state(&source.shard);
        let now_ms = load.now_ms.max(target_load.now_ms);
        let items = move_range(&mut source, &mut target, now_ms, false);
        move_range(&mut kept, &mut rolled_back, now_ms, true);
        assert!(items > moving.len(), "seed {seed}: only {items} items exported");
        assert_eq!(moving_state(&target.shard), before, "seed {seed}: SKUs moved as they were");
        assert!(moving_state(&source.shard).is_empty(), "seed {seed}: the source released them");
        assert_eq!(moving_state(&kept.shard), before, "seed {seed}: a rollback keeps them");
        assert!(moving_state(&rolled_back.shard).is_empty(), "seed {seed}: a rollback drops them");

        // Every reservation of the range reads the same; retries get their first answers.
        for (command, first) in source.answered.clone() {
            if !range().contains(command.route_key().slot()) {
                continue;
            }
            if let Outcome::Reserved { reservation, .. } = first {
                let on_target = target.shard.query_reservation(reservation);
                assert_eq!(on_target, kept.shard.query_reservation(reservation), "seed {seed}");
                assert!(source.shard.query_reservation(reservation).is_none(), "seed {seed}");
            }
            if changed_state(first) {
                let retried = target.shard.apply(&command, now_ms, &mut target.log);
                assert_eq!(retried, first, "seed {seed}: retry of {command:?} on the target");
            }
        }

        // The continuation: new commands on moved SKUs and on moved reservations, and time
        // passing past every hold.
        let mut next = Load { rng: SplitMix64::new(seed + 200), request: 2 << 64, now_ms };
        let held: Vec<ReservationId> = source
            .answered
            .iter()
            .filter_map(|(_, outcome)| match outcome {
                Outcome::Reserved { reservation, .. } if range().contains(reservation.slot()) => {
                    Some(*reservation)
                }
                _ => None,
            })
            .collect();
        for _ in 0..200 {
            next.now_ms += next.pick(200) as u64;
            target.tick(next.now_ms);
            kept.tick(next.now_ms);
            let command = next.command(&moving, &held, &held);
            let (on_target, on_source) =
                (target.apply(command, next.now_ms), kept.apply(command, next.now_ms));
            assert_eq!(
                same_up_to_new_ids(on_target),
                same_up_to_new_ids(on_source),
                "seed {seed}: {command:?}"
            );
        }
        assert_eq!(moving_state(&target.shard), moving_state(&kept.shard), "seed {seed}");

        for side in [&source, &target, &kept, &rolled_back] {
            let replayed = side.replayed();
            assert_eq!(replayed.digest(), side.shard.digest(), "seed {seed}: replay rebuilds it");
            let mut bytes = Vec::new();
            side.shard.encode_snapshot(&mut bytes);
            let restored = Shard::restore(SHARD, config(), &bytes).unwrap();
            assert_eq!(restored.digest(), side.shard.digest(), "seed {seed}: snapshot restores it");
        }
    }
}

/// Whether an answer was remembered (the request changed state).
fn changed_state(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Reserved { .. }
            | Outcome::Confirmed
            | Outcome::Cancelled
            | Outcome::Returned { .. }
            | Outcome::StockChanged { .. }
            | Outcome::LimitSet
    )
}

/// New reservations get ids from the shard that makes them: equal up to the id.
fn same_up_to_new_ids(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Reserved { expires_at_ms, .. } => {
            Outcome::Reserved { reservation: ReservationId(0), expires_at_ms }
        }
        other => other,
    }
}

#[test]
fn frozen_ranges_refuse_what_does_not_fit() {
    let mut side = Side::new();
    let (moving, _) = skus_split(20);
    let mut load = Load { rng: SplitMix64::new(1), request: 0, now_ms: 0 };
    load.stock(&mut side, &moving);
    let not_frozen = side.shard.export_slots(range()).unwrap_err().to_string();
    assert!(not_frozen.contains("not frozen"), "{not_frozen}");
    side.shard.freeze_slots(range(), 0, &mut side.log).unwrap();
    assert!(side.shard.frozen_slot(slot_of(moving[0])));
    let overlapping = SlotRange::new(Slot(2000), Slot(3000)).unwrap();
    let error = side.shard.freeze_slots(overlapping, 0, &mut side.log).unwrap_err();
    assert!(error.to_string().contains("overlaps"), "{error}");
    // An item of a SKU already here, or of a reservation of an unknown SKU, is refused.
    let items = side.shard.export_slots(range()).unwrap();
    let error = side.shard.import_slot(&items[0], 0, &mut side.log).unwrap_err();
    assert!(error.to_string().contains("does not fit"), "{error}");
    let thawed = SlotRange::new(Slot(3000), Slot(3001)).unwrap();
    assert!(side.shard.thaw_slots(thawed, 0, &mut side.log).is_err());
    side.shard.check_invariants().unwrap();
}
