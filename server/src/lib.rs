//! flashstock's server: the network layer over the runtime (`flashstock-runtime`), its
//! metrics, and the `flashstockd` daemon.
//!
//! Map of the modules:
//! - [`net`]: the QUIC listener: TLS, authentication, sessions, subscriptions, rate limits.
//! - [`http`]: the HTTP/JSON API (off by default): the same calls, tokens, keys and outcome
//!   names for services not written in Rust, coalesced into shard batches; its OpenAPI
//!   document.
//! - [`metrics`]: the metrics the network layer exports, named and described in one place
//!   (the runtime's are `flashstock_runtime::metrics`).
//! - `disk`: the data directory's free disk, as a gauge and a readiness check.
//! - `moves`: slot moves that are over: frozen ranges thawed or released by the map.
//! - [`daemon`]: the `flashstockd` settings (file, environment, flags; defaults; the
//!   generated reference) and `run`.
//! - [`error`]: [`ServerError`], what can stop the server from starting or serving.

pub mod daemon;
mod disk;
pub mod error;
pub mod http;
pub mod metrics;
mod moves;
pub mod net;

pub use error::ServerError;
