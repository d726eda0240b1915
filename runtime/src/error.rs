//! The runtime's one error type. Business outcomes are `Outcome`s, never errors.

/// Why the runtime could not answer a request, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The shard's inbox is full: back off and retry with the same request id.
    #[error("shard {shard} is overloaded; retry later with the same request id")]
    Overloaded {
        /// The shard whose inbox is full.
        shard: u16,
    },
    /// The runtime is shutting down or has shut down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The log failed to make a batch durable. Effects may have been applied in memory but
    /// were not acknowledged; the runtime answers nothing more until it is restarted and
    /// recovers from what is durable.
    #[error("the write-ahead log failed; restart to recover: {reason}")]
    WalFailed {
        /// The log's error.
        reason: String,
    },
    /// The store was written by a runtime with another shard count; SKUs would move shards.
    #[error("the store holds {stored} shards but {configured} are configured")]
    ShardCountMismatch {
        /// The count the store was written with.
        stored: u16,
        /// The count configured now.
        configured: u16,
    },
    /// The store names reservations in another id layout than this runtime's (1: written
    /// before reservation ids carried their slot). There is no rewrite: drain the old server
    /// (let its holds end and its stream be read) and start this one on a new data directory.
    #[error(
        "the store's reservation ids are in layout {stored}, this server reads layout \
         {supported}: drain it with the version that wrote it, then start on a new data directory"
    )]
    IdLayout {
        /// The layout the store was written with (1 when unmarked).
        stored: u8,
        /// The layout this runtime reads and writes.
        supported: u8,
    },
    /// Recovery found a log it cannot use (corruption mid-log, a gap, a bad snapshot...).
    #[error("recovery of shard {shard} failed: {source}")]
    Recovery {
        /// The shard.
        shard: u16,
        /// What the log said.
        source: flashstock_wal::WalError,
    },
    /// A recovered shard fails its invariants.
    #[error("recovered shard {shard} breaks an invariant: {source}")]
    RecoveredInvariant {
        /// The shard.
        shard: u16,
        /// The broken invariant.
        source: flashstock_engine::EngineError,
    },
    /// The log could not be opened or its layout read.
    /// The command's slot is moving to another server (docs/cluster.md): retry shortly with
    /// the same request id.
    #[error("slot {slot} is moving to another server; retry shortly with the same request id")]
    SlotMoving {
        /// The slot.
        slot: u16,
    },
    /// A slot move's step that does not fit this server's state (docs/cluster.md): the
    /// range is not frozen here, holds what cannot move, or an item does not fit.
    #[error("slot move: {0}")]
    Slots(flashstock_engine::EngineError),
    #[error("the write-ahead log: {0}")]
    Wal(#[from] flashstock_wal::WalError),
    /// The engine's hash seed could not be read from the store or drawn.
    #[error("the table hash seed: {0}")]
    HashSeed(String),
    /// A thread could not be started.
    #[error("spawning {what}: {source}")]
    Spawn {
        /// Which thread.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// The same refusal again, for each request of a batch it applies to. Only the per-request
    /// refusals are ever duplicated; anything else becomes `ShuttingDown`.
    pub(crate) fn duplicate(&self) -> RuntimeError {
        match self {
            RuntimeError::Overloaded { shard } => RuntimeError::Overloaded { shard: *shard },
            RuntimeError::WalFailed { reason } => {
                RuntimeError::WalFailed { reason: reason.clone() }
            }
            _ => RuntimeError::ShuttingDown,
        }
    }
}
