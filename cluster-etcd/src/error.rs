//! [`EtcdError`]: what can go wrong talking to etcd about the cluster.

use flashstock_cluster::MapError;

/// A failed etcd call, or a map that cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer, or answered with an error (down, unreachable, timed out).
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What the etcd client said.
        #[source]
        source: etcd_client::Error,
    },
    /// The stored map (or the one given) fails the map's checks.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The map changed since it was read: the compare-and-swap found another revision (0:
    /// no map stored). Read it again and decide again.
    #[error("the shard map is at revision {found}, not {expected}: read it again")]
    Conflict {
        /// The revision the change was made against.
        expected: i64,
        /// The revision stored now.
        found: i64,
    },
    /// A slot move is in progress already (one at a time): finish or abort it first.
    #[error("a slot move is in progress: slots {}-{} from {} to {}", .0.first, .0.last, .0.from.0, .0.to.0)]
    MoveInProgress(Box<flashstock_cluster::SlotMove>),
    /// The flip found no move in progress (it was aborted meanwhile).
    #[error("no slot move is in progress (aborted meanwhile?)")]
    NoMove,
    /// Another live server is registered under this id (or this one's entry from before a
    /// crash did not lapse within its lease): two servers must not share an id.
    #[error("server id {server:?} is registered by a live server")]
    ServerIdTaken {
        /// The id.
        server: String,
    },
}
