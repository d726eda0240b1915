//! flashstock's order writer: subscribes to the committed-deduction stream and stores each
//! confirmed reservation as exactly one order row.
//!
//! ```text
//! flashstock server ──Events (window)──► writer ──one transaction per database──► orders
//!          ▲                                │ (then, optionally, NATS JetStream)
//!          └────────────── Ack ◄────────────┘ only after every commit
//! ```
//!
//! Map of the modules:
//! - [`writer`]: [`run`], the loop: gather, write, publish, acknowledge; reconnects and
//!   retries with backoff.
//! - [`store`]: [`OrderStore`]: SQLite, PostgreSQL and MySQL/MariaDB through sqlx, embedded
//!   migrations, idempotent batched inserts, several databases routed by reservation id.
//! - [`nats`]: the optional JetStream sink, deduplicated by `Nats-Msg-Id`.
//! - [`error`]: [`WriterError`], the one error type.

pub mod error;
pub mod nats;
pub mod store;
pub mod writer;

pub use error::WriterError;
pub use nats::{NatsConfig, NatsSink};
pub use store::{Database, OrderRow, OrderStore, ReturnRow, Written};
pub use writer::{run, WriterConfig, WriterStats};
