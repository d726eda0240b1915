//! flashstock's runtime: the only place that wires threads, the clock and the log to the pure
//! engine. It does no networking: the server's network layer drives it through [`Handle`].
//!
//! ```text
//! Handle ──try_send──► shard actor (one thread per shard, bounded inbox)
//!                        │ applies a batch of jobs to its `Shard`
//!                        ▼
//!                      durability thread: appends every waiting batch, one sync, then
//!                      releases the batch's replies (group commit)
//!                        │ durable ends, per shard
//!                        ▼
//!                      checkpoint thread: replays the durable log into a replica of each
//!                      shard, snapshots the replica, then truncates the log below it
//! ```
//! While the durability thread syncs one group, the actors already apply the next batch; a
//! snapshot is neither encoded nor written on a shard's thread, so it never stalls one.
//!
//! Map of the modules:
//! - [`config`]: [`RuntimeConfig`], every knob and its default.
//! - [`clock`]: [`Clock`], with [`SystemClock`] and the [`ManualClock`] tests drive.
//! - [`handle`]: [`Handle`], the async API the network layer and tests call.
//! - [`runtime`]: [`Runtime`], start (with recovery) and graceful shutdown.
//! - `actor`, `durability`, `checkpoint`, `recovery`: the shard loop; the group-commit thread;
//!   the checkpoint thread and its replicas; rebuilding shards (in parallel) from the latest
//!   snapshot plus the log.
//! - `buckets`: hot-SKU buckets: the table of spread SKUs, how a request naming one is
//!   rewritten for its buckets, refills from sibling buckets, and reads that add them up.
//! - `slots`: slot moves between servers (docs/cluster.md): each shard's freeze, export,
//!   import, thaw and release as jobs, and the exports kept for paging.
//! - [`stream`]: the committed-deduction stream's log reader ([`stream::EventLog`]) and the
//!   consumer registry whose acknowledged cursors hold truncation back.
//! - [`metrics`]: the runtime's metrics (shards, log, snapshots, recovery, consumers).
//! - [`error`]: [`RuntimeError`], the one error type.

pub mod clock;
pub mod config;
pub mod error;
pub mod handle;
pub mod metrics;
pub mod runtime;
pub mod stream;

mod actor;
mod buckets;
mod checkpoint;
mod durability;
mod recovery;
mod slots;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::RuntimeConfig;
pub use durability::DurabilityStats;
pub use error::RuntimeError;
pub use handle::{Handle, Pending, PendingBatch};
pub use recovery::RecoveryReport;
pub use runtime::Runtime;
