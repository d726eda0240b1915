//! The sans-IO run of one cart reserve, the start-up pass over open groups, and the
//! invariants that span shards.

use crate::cart::{
    CommitCart, Decide, Groups, Lines, PrepareLines, Prepared, ReserveCart, ShardMessage,
    CART_LINES_MAX, CART_PREPARE_TIMEOUT_MS,
};
use crate::error::EngineError;
use crate::ids::{ReservationId, ShardId, ShardMap};
use crate::limits::{RESERVE_QTY_MAX, TTL_MS_MAX};
use crate::outcome::{LineRefusal, Outcome, ReservationState};
use crate::record::LogSink;
use crate::shard::Shard;

/// One cart reserve, from its lines to the coordinator's decision. The caller carries the
/// jobs: each of [`CartDriver::prepares`] to its shard, their answers back through
/// [`CartDriver::prepared`], then [`CartDriver::decision`] to the coordinator, whose answer
/// is the cart's (even a refusal: a retry of a cart already decided gets its first answer).
///
/// A driver holds no lock and decides nothing: if it stops halfway, the participants' groups
/// ask the coordinator once their deadline passes.
#[derive(Clone, Debug)]
pub struct CartDriver {
    cart: ReserveCart,
    coordinator: ShardId,
    deadline_ms: u64,
    prepares: Vec<(ShardId, PrepareLines)>,
    answers: Vec<Option<Prepared>>,
}

impl CartDriver {
    /// Checks the cart and splits its lines by shard; the refusal is the caller's answer
    /// when the cart itself is malformed (no lines, too many, a SKU twice, a quantity or TTL
    /// out of range).
    pub fn start(cart: ReserveCart, map: &ShardMap, now_ms: u64) -> Result<CartDriver, Outcome> {
        validate(&cart)?;
        let lines = cart.lines.as_slice();
        let coordinator = map.shard_of_sku(lines[0].sku);
        let deadline_ms = now_ms.saturating_add(CART_PREPARE_TIMEOUT_MS);
        let mut prepares: Vec<(ShardId, PrepareLines)> = Vec::new();
        for &line in lines {
            let shard = map.shard_of_sku(line.sku);
            match prepares.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, prepare)) => prepare.lines.push(line),
                None => {
                    let mut own = Lines::default();
                    own.push(line);
                    let prepare = PrepareLines {
                        cart: cart.request,
                        coordinator,
                        buyer: cart.buyer,
                        deadline_ms,
                        lines: own,
                    };
                    prepares.push((shard, prepare));
                }
            }
        }
        let answers = vec![None; prepares.len()];
        Ok(CartDriver { cart, coordinator, deadline_ms, prepares, answers })
    }

    /// The prepare jobs, one per participant.
    pub fn prepares(&self) -> &[(ShardId, PrepareLines)] {
        &self.prepares
    }

    /// Takes the answer to `prepares()[index]`.
    pub fn prepared(&mut self, index: usize, answer: Prepared) {
        self.answers[index] = Some(answer);
    }

    /// The shard that decides the cart.
    pub fn coordinator(&self) -> ShardId {
        self.coordinator
    }

    /// Once every prepare is answered, the decision for the coordinator; `None` until then.
    pub fn decision(&self) -> Option<Decide> {
        let mut groups = Groups::default();
        let mut refused: Option<Outcome> = None;
        for ((shard, _), answer) in self.prepares.iter().zip(&self.answers) {
            match (*answer)? {
                Prepared::Group(group) => groups.push(*shard, group),
                Prepared::Refused { line, refusal, value } => {
                    let earlier =
                        matches!(refused, Some(Outcome::CartRefused { line: l, .. }) if l < line);
                    if !earlier {
                        refused = Some(Outcome::CartRefused { line, refusal, value });
                    }
                }
            }
        }
        let request = self.cart.request;
        Some(match refused {
            None => Decide::Commit(CommitCart {
                request,
                buyer: self.cart.buyer,
                ttl_ms: self.cart.ttl_ms,
                order_ref: self.cart.order_ref,
                deadline_ms: self.deadline_ms,
                lines: self.cart.lines,
                groups,
            }),
            Some(outcome) => Decide::Abort { request, outcome, groups },
        })
    }

    /// The decision when the prepares cannot all be answered in time (a shard stayed
    /// overloaded past the deadline): abort, releasing what was prepared.
    pub fn give_up(&self) -> Decide {
        let mut groups = Groups::default();
        for ((shard, _), answer) in self.prepares.iter().zip(&self.answers) {
            if let Some(Prepared::Group(group)) = answer {
                groups.push(*shard, *group);
            }
        }
        Decide::Abort { request: self.cart.request, outcome: Outcome::CartTimedOut, groups }
    }
}

fn validate(cart: &ReserveCart) -> Result<(), Outcome> {
    let lines = cart.lines.as_slice();
    let lines_max = CART_LINES_MAX as u32;
    if lines.is_empty() || !cart.lines.is_well_formed() {
        return Err(Outcome::InvalidCart { lines_max });
    }
    for (position, line) in lines.iter().enumerate() {
        let twice = lines[..position].iter().any(|earlier| earlier.sku == line.sku);
        if twice || usize::from(line.index) != position {
            return Err(Outcome::InvalidCart { lines_max });
        }
        if line.qty == 0 || line.qty > RESERVE_QTY_MAX {
            let value = u64::from(RESERVE_QTY_MAX);
            let refusal = LineRefusal::InvalidQuantity;
            return Err(Outcome::CartRefused { line: line.index, refusal, value });
        }
    }
    if cart.ttl_ms == 0 || cart.ttl_ms > TTL_MS_MAX {
        return Err(Outcome::InvalidTtl { ttl_ms_max: TTL_MS_MAX });
    }
    Ok(())
}

/// Delivers one message between shards held in one slice (tests, and the start-up pass).
pub fn deliver(
    shards: &mut [Shard],
    message: ShardMessage,
    now_ms: u64,
    logs: &mut [impl LogSink],
) -> Result<(), EngineError> {
    let index = usize::from(message.to().0);
    if index >= shards.len() {
        return Err(EngineError::CartBookkeeping { cart: None, detail: "message to no shard" });
    }
    let (shard, log) = (&mut shards[index], &mut logs[index]);
    match message {
        ShardMessage::Ask { ask, .. } => shard.answer_ask(&ask, now_ms, log),
        ShardMessage::Settle { settle, .. } => shard.settle(&settle, now_ms, log),
        ShardMessage::MoveIn { from, stock_move, .. } => {
            shard.move_in(from, &stock_move, now_ms, log);
        }
        ShardMessage::MoveAck { id, .. } => shard.move_acked(id, now_ms, log),
    }
    Ok(())
}

/// The start-up pass: every open group (in doubt, or held by a cart that may have ended)
/// asks its coordinator, every move of stock still in flight is sent again, and every
/// answer is applied, until no message is left. Afterwards no group is in doubt, no move is
/// in flight, and [`check_carts`] holds. Returns how many groups asked.
pub fn settle_all(
    shards: &mut [Shard],
    now_ms: u64,
    logs: &mut [impl LogSink],
) -> Result<usize, EngineError> {
    let mut messages = Vec::new();
    for shard in shards.iter() {
        let asks = shard.asks_for_all_groups();
        messages.extend(asks.into_iter().map(|(to, ask)| ShardMessage::Ask { to, ask }));
    }
    let asked = messages.len();
    for shard in shards.iter() {
        let from = shard.id();
        let resends = shard.moves_in_flight().map(|&stock_move| ShardMessage::MoveIn {
            to: stock_move.to,
            from,
            stock_move,
        });
        messages.extend(resends);
    }
    while !messages.is_empty() {
        for message in messages.drain(..) {
            deliver(shards, message, now_ms, logs)?;
        }
        for shard in shards.iter_mut() {
            shard.take_messages(&mut messages);
        }
    }
    Ok(asked)
}

/// The invariants between shards, for a quiet moment (no driver running, every message
/// delivered): every group is held by a held cart that lists it, with the cart's own lines;
/// every held cart's groups are all there; no ended cart has a group left.
pub fn check_carts(shards: &[Shard]) -> Result<(), EngineError> {
    for shard in shards {
        if let Some(stock_move) = shard.moves_in_flight().next() {
            let detail = "a move is still in flight at a quiet moment";
            return Err(EngineError::MoveBookkeeping { id: stock_move.id, detail });
        }
    }
    let cart_of = |id: ReservationId| shards.get(usize::from(id.shard().0))?.carts.get(&id);
    let broken = |cart, detail| Err(EngineError::CartBookkeeping { cart, detail });
    for shard in shards {
        for (&request, group) in &shard.groups {
            let Some((id, expires_at_ms)) = group.held_by else {
                return broken(None, "a group is still in doubt");
            };
            let Some(cart) = cart_of(id) else {
                return broken(Some(id), "a group is held by a cart its coordinator lacks");
            };
            let listed = cart.groups.contains(shard.id, group.group);
            if !listed || cart.request != request || cart.expires_at_ms != expires_at_ms {
                return broken(Some(id), "a group is held by a cart that does not list it");
            }
            if cart.state != ReservationState::Held {
                return broken(Some(id), "a group outlives its cart's end");
            }
            let in_cart = |line: &&crate::cart::CartLine| cart.lines.as_slice().contains(line);
            if !group.lines.as_slice().iter().all(|line| in_cart(&line))
                || group.buyer != cart.buyer
            {
                return broken(Some(id), "a group holds other lines than its cart");
            }
        }
    }
    for shard in shards {
        for (&id, cart) in &shard.carts {
            let mut lines_held = 0;
            for &(participant, group) in cart.groups.as_slice() {
                let found = shards
                    .get(usize::from(participant.0))
                    .and_then(|p| p.groups.get(&cart.request))
                    .filter(|g| g.group == group);
                match (cart.state, found) {
                    (ReservationState::Held, Some(g)) => lines_held += g.lines.len(),
                    (ReservationState::Held, None) => {
                        return broken(Some(id), "a held cart misses a group")
                    }
                    (_, Some(_)) => return broken(Some(id), "an ended cart left a group"),
                    (_, None) => {}
                }
            }
            if cart.state == ReservationState::Held && lines_held != cart.lines.len() {
                return broken(Some(id), "a held cart's groups hold other lines than it has");
            }
        }
    }
    Ok(())
}
