//! flashstock's cluster coordination on etcd (docs/cluster.md): the only coordination there
//! is, so that no election or quorum code of our own exists. Servers and clients read and
//! watch the cluster's keys; an operator changes the map by compare-and-swap on its revision.
//!
//! Map of the modules:
//! - [`keys`]: [`EtcdConfig`] and where each thing lives under the cluster's prefix.
//! - [`watch`]: [`ClusterWatch`], the map and the members as etcd has them now, kept current
//!   by a watch that reconnects on its own.
//! - [`member`]: [`Membership`], a server's entry under `members/`, kept alive by a lease.
//! - [`admin`]: reading the map and storing a new one by compare-and-swap; a slot move's
//!   start, flip (its commit point) and abort.
//! - [`error`]: [`EtcdError`], what a call to etcd can fail with.

pub mod admin;
pub mod error;
pub mod keys;
pub mod member;
pub mod watch;

pub use admin::{abort_move, flip_move, read_map, read_move, start_move, store_map};
pub use error::EtcdError;
pub use keys::EtcdConfig;
pub use member::Membership;
pub use watch::ClusterWatch;
