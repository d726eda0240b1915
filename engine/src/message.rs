//! Messages between shards: what one shard's step leaves for another, delivered by the
//! runtime once the step's records are durable (and by the start-up pass after a crash).

use crate::buckets::StockMove;
use crate::cart::{Ask, Settle};
use crate::ids::ShardId;

/// A message one shard's step leaves for another shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardMessage {
    /// Cart coordinator → participant.
    Settle {
        /// The participant.
        to: ShardId,
        /// What to do.
        settle: Settle,
    },
    /// Cart participant → coordinator.
    Ask {
        /// The coordinator.
        to: ShardId,
        /// The question.
        ask: Ask,
    },
    /// Bucket → bucket: units taken out of one bucket, to be put into another.
    MoveIn {
        /// The receiving bucket's shard.
        to: ShardId,
        /// The sending bucket's shard.
        from: ShardId,
        /// The move.
        stock_move: StockMove,
    },
    /// Bucket → bucket: the move is in (now, or before); the sender forgets it.
    MoveAck {
        /// The sending bucket's shard.
        to: ShardId,
        /// The move's id.
        id: u64,
    },
}

impl ShardMessage {
    /// The shard the message is for.
    pub fn to(&self) -> ShardId {
        match *self {
            ShardMessage::Settle { to, .. }
            | ShardMessage::Ask { to, .. }
            | ShardMessage::MoveIn { to, .. }
            | ShardMessage::MoveAck { to, .. } => to,
        }
    }
}
