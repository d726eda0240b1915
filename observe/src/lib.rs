//! What operators see of a flashstock process: its metrics, in Prometheus' text format, and
//! whether it is alive and ready, on one HTTP listener of its own.
//!
//! Map of the modules:
//! - [`recorder`]: installs the process's one Prometheus recorder (explicit histogram buckets,
//!   periodic upkeep) and `flashstock_build_info`.
//! - [`health`]: [`Health`], named readiness checks a process sets as it starts, serves and
//!   stops.
//! - [`fetch`]: a small blocking `GET` of that listener, for the admin CLI and tests.
//! - [`logging`]: the binaries' logs, as text or JSON lines (`--log-format`).
//! - [`signals`]: SIGINT and SIGTERM, installed before a process starts anything.
//! - [`listener`]: the HTTP listener: `/metrics`, `/livez`, `/readyz`, with its bounds.
//!
//! Metric names follow Prometheus' conventions: a `flashstock_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters, and no label whose values a buyer or a SKU
//! chooses (a label per SKU would grow the exporter's memory with every SKU ever sold).

pub mod fetch;
pub mod health;
pub mod listener;
pub mod logging;
pub mod recorder;
pub mod signals;

pub use fetch::{fetch, Fetched};
pub use health::{Check, Health};
pub use listener::{accept, bind, serve, start, HttpLimits, Listening, Observed};
pub use logging::{init_logging, LogFormat};
pub use recorder::{build_info, install, SECONDS_BUCKETS};
pub use signals::shutdown_signal;

use std::net::SocketAddr;

/// What can go wrong setting up observation.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Another metrics recorder was installed in this process before ours.
    #[error("a metrics recorder other than flashstock's is already installed")]
    RecorderTaken,
    /// The exporter refused its configuration (a bucket list it cannot use).
    #[error("the Prometheus exporter refused its configuration: {0}")]
    Exporter(String),
    /// The metrics listener could not bind its address.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
