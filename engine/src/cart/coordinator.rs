//! A coordinator's side of a cart: decide it once, end it once, and tell the participants.
//!
//! The coordinator's `CartCommitted` or `CartAborted` record decides a cart, and its
//! `CartEnded` decides how the cart ends. Every settle a participant gets is left in the
//! coordinator's outbox by one of these decisions (or by an answer to a participant's
//! question), so participants always follow what the coordinator's log says.

use crate::cart::participant::replay_error;
use crate::cart::{Ask, CartEnd, CartView, CommitCart, Decide, Fate, Groups, Settle, ShardMessage};
use crate::dedup::SLOT_NONE;
use crate::error::EngineError;
use crate::ids::{slot_of, OrderRef, RequestId, ReservationId};
use crate::limits::TTL_MS_MAX;
use crate::outcome::{Outcome, ReservationState};
use crate::record::{LogSink, Record};
use crate::shard::{end_decision, remember_ended, Cart, Shard, Step};

impl Decide {
    /// The cart's request id.
    pub fn request(&self) -> RequestId {
        match self {
            Decide::Commit(commit) => commit.request,
            Decide::Abort { request, .. } => *request,
        }
    }

    /// The groups the decision settles.
    pub fn groups(&self) -> Groups {
        match self {
            Decide::Commit(commit) => commit.groups,
            Decide::Abort { groups, .. } => *groups,
        }
    }
}

impl Shard {
    /// Decides a cart: holds it (a commit before its prepare deadline) or refuses it for
    /// good, and leaves each group's settle in the outbox. A cart already decided gets its
    /// first answer, and the groups of this attempt are settled to match it. A refusal with
    /// no group prepared undoes nothing, so it is not logged: it is remembered as a one-line
    /// refusal is (best effort), and a retry may be decided afresh.
    pub fn decide_cart(&mut self, decide: &Decide, now_ms: u64, log: &mut impl LogSink) -> Outcome {
        let now_ms = self.advance_clock(now_ms);
        let request = decide.request();
        if let Some(first) = self.first_cart_answer(request) {
            self.settle_late(request, &decide.groups(), first);
            return first;
        }
        let record = match *decide {
            Decide::Abort { outcome, ref groups, .. } if groups.as_slice().is_empty() => {
                self.dedup.remember_rejection(request, outcome);
                return outcome;
            }
            Decide::Commit(commit) if now_ms < commit.deadline_ms => {
                assert!((1..=TTL_MS_MAX).contains(&commit.ttl_ms), "the driver checks the TTL");
                Record::CartCommitted { at_ms: now_ms, commit: Box::new(commit) }
            }
            Decide::Commit(commit) => Record::CartAborted {
                at_ms: now_ms,
                request,
                outcome: Outcome::CartTimedOut,
                groups: Box::new(commit.groups),
            },
            Decide::Abort { outcome, groups, .. } => {
                assert!(
                    matches!(outcome, Outcome::CartRefused { .. } | Outcome::CartTimedOut),
                    "a cart is aborted as refused or timed out, not {outcome:?}"
                );
                Record::CartAborted { at_ms: now_ms, request, outcome, groups: Box::new(groups) }
            }
        };
        let outcome = self.apply_decision(&record);
        log.push(&record);
        let fresh = self.dedup.remember_change((request, SLOT_NONE), outcome, now_ms, &self.config);
        assert!(fresh, "cart {request:?} was looked up undecided just above");
        outcome
    }

    /// The answer a cart reserve already got: remembered, or rebuilt from the cart itself
    /// while the cart is remembered longer than its answer.
    fn first_cart_answer(&self, request: RequestId) -> Option<Outcome> {
        if let Some(first) = self.dedup.lookup(request) {
            return Some(first);
        }
        let &cart = self.cart_ids.get(&request)?;
        let expires_at_ms = self.carts[&cart].expires_at_ms;
        Some(Outcome::Reserved { reservation: cart, expires_at_ms })
    }

    /// Holds a decided cart or releases its groups (live and on replay alike).
    fn apply_decision(&mut self, record: &Record) -> Outcome {
        match record {
            Record::CartCommitted { at_ms, commit } => self.hold_cart(commit, *at_ms),
            &Record::CartAborted { outcome, ref groups, .. } => {
                for &(shard, group) in groups.as_slice() {
                    self.send_settle(shard, request_of(record), group, Fate::Released);
                }
                outcome
            }
            _ => unreachable!("not a cart decision: {record:?}"),
        }
    }

    fn hold_cart(&mut self, commit: &CommitCart, now_ms: u64) -> Outcome {
        // A cart is named by its first line's slot: its coordinator's SKU.
        let slot = slot_of(commit.lines.as_slice()[0].sku);
        let cart = ReservationId::new(slot, self.id, self.reservation_seq_next);
        self.reservation_seq_next += 1;
        let expires_at_ms = now_ms + commit.ttl_ms;
        let held = Cart {
            request: commit.request,
            buyer: commit.buyer,
            expires_at_ms,
            state: ReservationState::Held,
            order_ref: commit.order_ref,
            lines: commit.lines,
            groups: commit.groups,
        };
        self.carts.insert(cart, Box::new(held));
        let previous = self.cart_ids.insert(commit.request, cart);
        assert!(previous.is_none(), "cart request {:?} decided twice", commit.request);
        self.expiries.push(expires_at_ms, cart);
        self.carts_live += 1;
        for &(shard, group) in commit.groups.as_slice() {
            let fate = Fate::Held { cart, expires_at_ms };
            self.send_settle(shard, commit.request, group, fate);
        }
        Outcome::Reserved { reservation: cart, expires_at_ms }
    }

    /// Settles the groups of a late attempt at a cart already decided: a group the cart
    /// holds follows the cart; any other is released. A forgotten cart's groups are left to
    /// ask once their deadline passes.
    fn settle_late(&mut self, request: RequestId, groups: &Groups, first: Outcome) {
        let cart = match first {
            Outcome::Reserved { reservation, .. } => match self.carts.get(&reservation) {
                Some(cart) if cart.request == request => Some((reservation, **cart)),
                // Forgotten, or the id of a one-line reserve: the groups ask in time.
                _ => return,
            },
            _ => None,
        };
        for &(shard, group) in groups.as_slice() {
            let fate = match cart {
                Some((id, cart)) if cart.groups.contains(shard, group) => fate_of(id, &cart),
                _ => Fate::Released,
            };
            self.send_settle(shard, request, group, fate);
        }
    }

    fn send_settle(&mut self, to: crate::ids::ShardId, cart: RequestId, group: u64, fate: Fate) {
        self.outbox.push(ShardMessage::Settle { to, settle: Settle { cart, group, fate } });
    }

    /// A confirm or cancel of a cart this shard coordinates (`Step::Unchanged` with
    /// `UnknownReservation` when it knows no such cart). Past its TTL the cart expires
    /// instead, as a one-line reservation does.
    pub(crate) fn end_cart_on_request(
        &mut self,
        id: ReservationId,
        wanted: ReservationState,
        order_ref: Option<OrderRef>,
        now_ms: u64,
    ) -> Step {
        let Some(cart) = self.carts.get(&id) else {
            return Step::Unchanged(Outcome::UnknownReservation);
        };
        let (end, outcome) = match end_decision(cart.state, cart.expires_at_ms, wanted, now_ms) {
            Ok(decided) => decided,
            Err(answer) => return Step::Unchanged(answer),
        };
        let order_ref = order_ref.filter(|_| end == ReservationState::Confirmed);
        let ended = self.end_cart(id, end, order_ref, now_ms);
        self.expiries_stale += 1;
        self.compact_expiries_if_stale();
        Step::CartEnded(outcome, ended)
    }

    /// Ends a held cart exactly once, tells its groups, and forgets the oldest ended carts
    /// past their retention.
    pub(crate) fn end_cart(
        &mut self,
        id: ReservationId,
        state: ReservationState,
        order_ref: Option<OrderRef>,
        now_ms: u64,
    ) -> CartEnd {
        let cart = self.carts.get_mut(&id).expect("ending a known cart");
        assert_eq!(cart.state, ReservationState::Held, "cart {id} ends twice");
        cart.state = state;
        if order_ref.is_some() {
            cart.order_ref = order_ref;
        }
        let end = CartEnd { cart: id, state, order_ref: cart.order_ref };
        let (request, groups) = (cart.request, cart.groups);
        self.carts_live -= 1;
        for &(shard, group) in groups.as_slice() {
            self.send_settle(shard, request, group, Fate::Ended(end));
        }
        let bound = (self.config.carts_ended_max, self.config.ended_retention_ms);
        let (carts, cart_ids) = (&mut self.carts, &mut self.cart_ids);
        remember_ended(&mut self.carts_ended, (id, now_ms), bound, |oldest| {
            let forgotten = carts.remove(&oldest).expect("an ended cart is remembered");
            cart_ids.remove(&forgotten.request);
        });
        end
    }

    /// Answers a participant's question about its group by leaving the settle its group must
    /// follow. With no decision on record, the cart is presumed aborted: the abort is logged
    /// first, at a clock past the group's deadline, so no commit of it can follow.
    pub fn answer_ask(&mut self, ask: &Ask, now_ms: u64, log: &mut impl LogSink) {
        let now_ms = self.advance_clock(now_ms);
        if let Some(fate) = self.known_fate(ask) {
            self.send_settle(ask.participant, ask.cart, ask.group, fate);
            return;
        }
        let at_ms = self.advance_clock(now_ms.max(ask.deadline_ms));
        let mut groups = Groups::default();
        groups.push(ask.participant, ask.group);
        let outcome = Outcome::CartTimedOut;
        let groups = Box::new(groups);
        let record = Record::CartAborted { at_ms, request: ask.cart, outcome, groups };
        self.apply_decision(&record);
        log.push(&record);
        let fresh = self.dedup.remember_change((ask.cart, SLOT_NONE), outcome, at_ms, &self.config);
        assert!(fresh, "cart {:?} was looked up undecided", ask.cart);
    }

    fn known_fate(&mut self, ask: &Ask) -> Option<Fate> {
        if let Some(&id) = self.cart_ids.get(&ask.cart) {
            let cart = &self.carts[&id];
            let listed = cart.groups.contains(ask.participant, ask.group);
            return Some(if listed { fate_of(id, cart) } else { Fate::Released });
        }
        if let Some(id) = ask.held_by {
            // The cart ended and was forgotten before this group heard how. Nothing can
            // confirm it any more (a confirm finds no cart), so its units go back.
            let end = CartEnd { cart: id, state: ReservationState::Expired, order_ref: None };
            return Some(Fate::Ended(end));
        }
        match self.dedup.lookup(ask.cart)? {
            Outcome::CartRefused { .. } | Outcome::CartTimedOut => Some(Fate::Released),
            _ => {
                // The id answered something else here (not a cart): no commit of it can
                // follow once the clock passes the deadline.
                self.advance_clock(ask.deadline_ms);
                Some(Fate::Released)
            }
        }
    }

    /// Reads a cart this shard coordinates, held or remembered after its end.
    pub fn query_cart(&self, cart: ReservationId) -> Option<CartView> {
        self.carts.get(&cart).map(|c| {
            // A line held from a hot SKU's bucket is a line of the SKU the caller named.
            let mut lines = c.lines;
            for line in lines.as_mut_slice() {
                line.sku = line.sku.base();
            }
            CartView { cart, buyer: c.buyer, lines, expires_at_ms: c.expires_at_ms, state: c.state }
        })
    }

    /// How many carts this shard holds as their coordinator right now.
    pub fn carts_live(&self) -> usize {
        self.carts_live
    }

    /// How many questions to coordinators this shard has scheduled (one per open group,
    /// plus entries of groups that moved on, compacted once they outnumber the open ones).
    pub fn asks_scheduled(&self) -> usize {
        self.asks_due.len()
    }

    /// How many cart line groups this shard holds as a participant (in doubt or held).
    pub fn line_groups(&self) -> usize {
        self.groups.len()
    }

    /// Replays a coordinator's record through the same decisions as the live calls.
    pub(crate) fn replay_coordinator(&mut self, record: &Record) -> Result<(), EngineError> {
        let at_ms = self.advance_clock(record.at_ms());
        match *record {
            Record::CartCommitted { ref commit, .. } if at_ms >= commit.deadline_ms => {
                Err(replay_error(at_ms, "cart committed past its deadline"))
            }
            Record::CartCommitted { .. } | Record::CartAborted { .. } => {
                if self.cart_ids.contains_key(&request_of(record)) {
                    return Err(replay_error(at_ms, "cart decided twice"));
                }
                let outcome = self.apply_decision(record);
                let request = (request_of(record), SLOT_NONE);
                if !self.dedup.remember_change(request, outcome, at_ms, &self.config) {
                    return Err(replay_error(at_ms, "cart decided twice"));
                }
                Ok(())
            }
            Record::CartEnded { command: Some(command), end, .. } => {
                match self.decide(&command, at_ms) {
                    Step::CartEnded(outcome, replayed) if replayed == end => {
                        if self.dedup.remember_change(
                            (command.request(), command.route_key().slot()),
                            outcome,
                            at_ms,
                            &self.config,
                        ) {
                            return Ok(());
                        }
                        Err(replay_error(at_ms, "a cart's end answered twice"))
                    }
                    _ => Err(replay_error(at_ms, "logged end of a cart did otherwise on replay")),
                }
            }
            Record::CartEnded { command: None, end, .. } => {
                let due = self
                    .carts
                    .get(&end.cart)
                    .is_some_and(|c| c.state == ReservationState::Held && c.expires_at_ms <= at_ms);
                if !due || end.state != ReservationState::Expired {
                    return Err(replay_error(at_ms, "logged expiry of a cart not due"));
                }
                let replayed = self.end_cart(end.cart, ReservationState::Expired, None, at_ms);
                self.expiries_stale += 1;
                self.compact_expiries_if_stale();
                if replayed != end {
                    return Err(replay_error(at_ms, "logged expiry of a cart did otherwise"));
                }
                Ok(())
            }
            _ => unreachable!("not a coordinator's record: {record:?}"),
        }
    }

    /// Replays any cart record.
    pub(crate) fn replay_cart(&mut self, record: &Record) -> Result<(), EngineError> {
        match record {
            Record::LinesPrepared { .. }
            | Record::LinesResolved { .. }
            | Record::LinesEnded { .. } => self.replay_lines(record),
            _ => self.replay_coordinator(record),
        }
    }
}

/// What a group of `cart` must become, by the cart's state.
fn fate_of(id: ReservationId, cart: &Cart) -> Fate {
    match cart.state {
        ReservationState::Held => Fate::Held { cart: id, expires_at_ms: cart.expires_at_ms },
        state => Fate::Ended(CartEnd { cart: id, state, order_ref: cart.order_ref }),
    }
}

fn request_of(record: &Record) -> RequestId {
    match record {
        Record::CartCommitted { commit, .. } => commit.request,
        Record::CartAborted { request, .. } => *request,
        _ => unreachable!("not a cart decision: {record:?}"),
    }
}
