//! flashstock's client library: how order services reach the server.
//!
//! Map of the modules:
//! - [`client`]: [`Client`] and [`ClientConfig`]: the API order services call (reserve,
//!   confirm, cancel, queries, admin calls, `reserve_many`), pipelined and automatically
//!   batched, with per-call deadlines, reconnects, retries that reuse the request id, and a
//!   circuit breaker ([`breaker`]).
//! - [`cluster`]: a cluster's client (`ClientConfig::cluster`): requests routed by slot over
//!   the shard map in etcd, batches split by server, `Moved` answers followed.
//! - [`tls`]: [`ClientTls`], which certificate the client trusts (the server's self-signed
//!   certificate file, or a CA); the only way to skip verification is loudly named and meant
//!   for local tests.
//! - [`connection`]: [`Connection`]: one QUIC connection, authenticated with a bearer token,
//!   carrying pipelined request batches on a long-lived stream; replies are matched to calls
//!   by correlation id and may arrive in any order.
//! - [`subscriber`]: [`Subscriber`]: a consumer's end of the committed-deduction stream
//!   (subscribe under a name, receive event batches, acknowledge what is handled).
//! - [`credentials`]: [`token_from_file`], a role's token from a server's tokens file.
//! - [`error`]: [`ClientError`], the one error type.

pub mod breaker;
pub mod client;
pub mod cluster;
pub mod connection;
pub mod credentials;
pub mod error;
pub mod subscriber;
pub mod tls;

pub use client::{Client, ClientConfig};
pub use cluster::MOVED_FOLLOWS_MAX;
pub use connection::{Connection, REPLY_FRAME_BYTES_MAX};
pub use credentials::{token_from_file, ServerFiles};
pub use error::ClientError;
pub use flashstock_cluster_etcd::EtcdConfig;
pub use subscriber::{SubscribeOptions, Subscriber};
pub use tls::ClientTls;
