//! A participant's side of a cart: prepare a group of lines, then follow the coordinator.
//!
//! A group's units are reserved from its prepare on, so that a cart that commits can never
//! find them gone. The group is in doubt until the coordinator's decision arrives as a
//! [`Settle`]; past its deadline (or, once held, past its cart's expiry plus a grace) the
//! participant asks the coordinator itself, so a lost message delays a group, never strands
//! it.

use std::cmp::Reverse;

use crate::cart::{
    Ask, Fate, LinesEnd, PrepareLines, Prepared, Settle, ShardMessage, CART_ASK_RETRY_MS,
    CART_END_GRACE_MS,
};
use crate::error::EngineError;
use crate::ids::{slot_of, RequestId};
use crate::outcome::{LineRefusal, ReservationState};
use crate::record::{LogSink, Record};
use crate::shard::{LineGroup, Shard};

impl Shard {
    /// Checks this shard's lines of a cart and, when every one passes, holds them as one
    /// group in doubt. A second prepare of the same cart (a retried driver) gets the group it
    /// already has and changes nothing.
    pub fn prepare_lines(
        &mut self,
        prepare: &PrepareLines,
        now_ms: u64,
        log: &mut impl LogSink,
    ) -> Prepared {
        let now_ms = self.advance_clock(now_ms);
        if let Some(existing) = self.groups.get(&prepare.cart) {
            if existing.lines == prepare.lines && existing.buyer == prepare.buyer {
                return Prepared::Group(existing.group);
            }
            let line = prepare.lines.as_slice().first().map_or(0, |line| line.index);
            return Prepared::Refused { line, refusal: LineRefusal::RequestReused, value: 0 };
        }
        if let Err(refused) = self.check_group(prepare, now_ms) {
            return refused;
        }
        let group = self.hold_group(prepare);
        log.push(&Record::LinesPrepared { at_ms: now_ms, prepare: Box::new(*prepare) });
        Prepared::Group(group)
    }

    /// Every line's checks (as a one-line reserve's), then room for one more group.
    fn check_group(&self, prepare: &PrepareLines, now_ms: u64) -> Result<(), Prepared> {
        let lines = prepare.lines.as_slice();
        for line in lines {
            let slot = slot_of(line.sku);
            if self.frozen_slot(slot) {
                let (refusal, value) = (LineRefusal::SlotMoving, u64::from(slot.0));
                return Err(Prepared::Refused { line: line.index, refusal, value });
            }
            if let Err(outcome) = self.check_line(line.sku, prepare.buyer, line.qty, now_ms) {
                let (refusal, value) =
                    LineRefusal::of(outcome).expect("a line's checks refuse with line outcomes");
                return Err(Prepared::Refused { line: line.index, refusal, value });
            }
        }
        if let Err(outcome) = self.check_room() {
            let (refusal, value) = LineRefusal::of(outcome).expect("room is a line outcome");
            let line = lines.first().map_or(0, |line| line.index);
            return Err(Prepared::Refused { line, refusal, value });
        }
        Ok(())
    }

    fn hold_group(&mut self, prepare: &PrepareLines) -> u64 {
        debug_assert!(
            {
                let lines = prepare.lines.as_slice();
                lines.iter().enumerate().all(|(i, a)| lines[..i].iter().all(|b| a.sku != b.sku))
            },
            "a cart names each SKU once (the driver checks)"
        );
        for line in prepare.lines.as_slice() {
            self.hold_units(line.sku, prepare.buyer, line.qty);
        }
        let group = self.group_seq_next;
        self.group_seq_next += 1;
        let held = LineGroup {
            group,
            coordinator: prepare.coordinator,
            buyer: prepare.buyer,
            lines: prepare.lines,
            deadline_ms: prepare.deadline_ms,
            held_by: None,
            ask_at_ms: prepare.deadline_ms,
        };
        self.groups.insert(prepare.cart, Box::new(held));
        self.asks_due.push(Reverse((prepare.deadline_ms, prepare.cart, group)));
        group
    }

    /// Settles a group as its coordinator decided. A settle of a group this shard no longer
    /// has, or that cannot follow its state (a second `Held`), changes nothing.
    pub fn settle(&mut self, settle: &Settle, now_ms: u64, log: &mut impl LogSink) {
        let now_ms = self.advance_clock(now_ms);
        if let Some(record) = self.settle_group(settle, now_ms) {
            log.push(&record);
        }
    }

    /// Applies a settle: the record that says what it did, or `None` when it did nothing.
    fn settle_group(&mut self, settle: &Settle, now_ms: u64) -> Option<Record> {
        let cart = settle.cart;
        let group = **self.groups.get(&cart).filter(|g| g.group == settle.group)?;
        match (group.held_by, settle.fate) {
            (None, Fate::Held { cart: held_by, expires_at_ms }) => {
                let ask_at_ms = expires_at_ms.saturating_add(CART_END_GRACE_MS);
                let entry = self.groups.get_mut(&cart).expect("found above");
                entry.held_by = Some((held_by, expires_at_ms));
                entry.ask_at_ms = ask_at_ms;
                // The entry at the deadline is stale now; this one replaces it.
                self.asks_due.push(Reverse((ask_at_ms, cart, group.group)));
                self.asks_stale += 1;
                self.compact_asks_if_stale();
                let held_by = Some((held_by, expires_at_ms));
                Some(Record::LinesResolved { at_ms: now_ms, cart, group: group.group, held_by })
            }
            (None, Fate::Released) => {
                self.end_group(cart, &group, ReservationState::Cancelled, now_ms, None);
                Some(Record::LinesResolved {
                    at_ms: now_ms,
                    cart,
                    group: group.group,
                    held_by: None,
                })
            }
            (held_by, Fate::Ended(end)) if held_by.is_none_or(|(id, _)| id == end.cart) => {
                self.end_group(cart, &group, end.state, now_ms, Some(end.cart));
                let (buyer, lines) = (group.buyer, group.lines);
                let end = Box::new(LinesEnd { cart, group: group.group, end, buyer, lines });
                Some(Record::LinesEnded { at_ms: now_ms, end })
            }
            // Already held; or a release or end that contradicts the cart holding the group,
            // which the coordinator never sends.
            _ => None,
        }
    }

    /// Sells (`Confirmed`, each line then returnable under the cart's id) or gives back a
    /// group's units, and forgets the group.
    fn end_group(
        &mut self,
        cart: RequestId,
        group: &LineGroup,
        state: ReservationState,
        now_ms: u64,
        held_by: Option<crate::ids::ReservationId>,
    ) {
        for line in group.lines.as_slice() {
            self.release_units(line.sku, group.buyer, line.qty, state);
            if let (ReservationState::Confirmed, Some(id)) = (state, held_by) {
                let (buyer, sku, qty) = (group.buyer, line.sku, line.qty);
                let sale =
                    crate::returns::Sale { buyer, sku, qty, returned: 0, sold_at_ms: now_ms };
                self.returnable.record((id, line.index), sale, &self.config);
            }
        }
        self.groups.remove(&cart);
        // The group's scheduled question is stale now.
        self.asks_stale += 1;
        self.compact_asks_if_stale();
    }

    /// Drops stale questions once they outnumber the open groups' (as the expiry queue
    /// drops stale expiries): the schedule stays within about twice the open groups.
    fn compact_asks_if_stale(&mut self) {
        if self.asks_stale > 1024 && self.asks_stale > self.groups.len() {
            let open = self.groups.iter().map(|(&cart, g)| Reverse((g.ask_at_ms, cart, g.group)));
            self.asks_due = open.collect();
            self.asks_stale = 0;
        }
    }

    /// Leaves a question for the coordinator of every group whose time to ask has come, and
    /// schedules the next one in case no answer comes.
    pub(crate) fn ask_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((at_ms, cart, group))) = self.asks_due.peek() {
            if at_ms > now_ms {
                break;
            }
            self.asks_due.pop();
            let live =
                self.groups.get(&cart).is_some_and(|g| g.group == group && g.ask_at_ms == at_ms);
            if !live {
                self.asks_stale -= 1;
                continue;
            }
            let entry = self.groups.get_mut(&cart).expect("found just above");
            entry.ask_at_ms = now_ms + CART_ASK_RETRY_MS;
            let ask = Ask {
                cart,
                participant: self.id,
                group,
                held_by: entry.held_by.map(|(id, _)| id),
                deadline_ms: entry.deadline_ms,
            };
            self.outbox.push(ShardMessage::Ask { to: entry.coordinator, ask });
            self.asks_due.push(Reverse((entry.ask_at_ms, cart, group)));
        }
    }

    /// A question for every open group, whatever its time to ask (the start-up pass).
    pub(crate) fn asks_for_all_groups(&self) -> Vec<(crate::ids::ShardId, Ask)> {
        let mut asks: Vec<_> = self
            .groups
            .iter()
            .map(|(&cart, g)| {
                let held_by = g.held_by.map(|(id, _)| id);
                // No deadline: after a restart no driver of the old run can commit any more.
                let ask =
                    Ask { cart, participant: self.id, group: g.group, held_by, deadline_ms: 0 };
                (g.coordinator, ask)
            })
            .collect();
        asks.sort_unstable_by_key(|(_, ask)| (ask.cart, ask.group));
        asks
    }

    /// Rebuilds the ask schedule from the groups (restore only).
    pub(crate) fn rebuild_asks(&mut self) {
        self.asks_due.clear();
        self.asks_stale = 0;
        for (&cart, entry) in self.groups.iter_mut() {
            entry.ask_at_ms = match entry.held_by {
                None => entry.deadline_ms,
                Some((_, expires_at_ms)) => expires_at_ms.saturating_add(CART_END_GRACE_MS),
            };
            self.asks_due.push(Reverse((entry.ask_at_ms, cart, entry.group)));
        }
    }

    /// Replays a participant's record through the same decisions as the live calls.
    pub(crate) fn replay_lines(&mut self, record: &Record) -> Result<(), EngineError> {
        let at_ms = self.advance_clock(record.at_ms());
        let settle = match *record {
            Record::LinesPrepared { ref prepare, .. } => {
                if self.groups.contains_key(&prepare.cart) {
                    return Err(replay_error(at_ms, "prepare of a cart whose group is open"));
                }
                return match self.check_group(prepare, at_ms) {
                    Ok(()) => {
                        self.hold_group(prepare);
                        Ok(())
                    }
                    Err(_) => Err(replay_error(at_ms, "logged prepare refused on replay")),
                };
            }
            Record::LinesResolved { cart, group, held_by, .. } => {
                let fate = match held_by {
                    Some((cart, expires_at_ms)) => Fate::Held { cart, expires_at_ms },
                    None => Fate::Released,
                };
                Settle { cart, group, fate }
            }
            Record::LinesEnded { ref end, .. } => {
                Settle { cart: end.cart, group: end.group, fate: Fate::Ended(end.end) }
            }
            _ => unreachable!("not a participant's record: {record:?}"),
        };
        match self.settle_group(&settle, at_ms) {
            Some(replayed) if replayed == *record => Ok(()),
            _ => Err(replay_error(at_ms, "logged settle of a group did otherwise on replay")),
        }
    }
}

pub(crate) fn replay_error(at_ms: u64, detail: &'static str) -> EngineError {
    EngineError::ReplayCart { at_ms, detail }
}
