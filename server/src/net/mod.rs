//! The network layer: QUIC (quinn) with TLS 1.3, carrying the `flashstock-protocol` frames.
//!
//! - [`tls`]: the self-signed default certificate and the quinn/rustls server configuration.
//! - [`auth`]: bearer tokens and client certificates → roles, and which role may send what.
//! - [`gates`]: the checks before the shards: slot ownership in a cluster, then rate limits.
//! - [`rate`]: reserve rate limits per buyer and per credential (token buckets).
//! - [`secrets`]: the data directory's secret files (owner-only) and the stateless-reset key.
//! - [`session`]: the listener (`serve`), per-connection and per-stream sessions.
//! - `slots`: the admin side of slot moves: freeze, export, import, thaw, release.
//! - [`subscription`]: one consumer's committed-deduction stream: windowed, acknowledged.
//! - [`udp`]: the listener's socket, with kernel buffers sized for bursts.

pub mod auth;
pub mod gates;
pub mod rate;
pub mod secrets;
pub mod session;
pub(crate) mod slots;
pub mod subscription;
pub mod tls;
pub mod udp;

pub use auth::{Authenticator, ClientCertRoles, SharedAuth};
pub use gates::{Gates, Ownership};
pub use session::{
    serve, stored_rate_gate, NetLimits, NetStats, Stopped, HELLO_TIMEOUT_MS_DEFAULT,
};
pub use tls::{
    ensure_self_signed, server_config, TlsFiles, TransportLimits, SEND_WINDOW_BYTES,
    STREAM_RECEIVE_WINDOW_BYTES_DEFAULT, UNAUTHENTICATED_RECEIVE_WINDOW_BYTES,
};
pub use udp::{server_endpoint, UDP_BUFFER_BYTES_DEFAULT};
