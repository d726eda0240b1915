//! `flashstock`, the operator's command line: look at and change a running server's SKUs,
//! buyer limits, sale windows, reservations and stream consumers, and ask whether it is
//! healthy. A readable table by default, `--json` for scripts; exit status 1 when the server
//! refused or did not find what was asked.
//!
//! Map of the modules:
//! - [`cli`]: the commands and flags (clap), with the server, certificate and token to use.
//! - [`commands`]: each command against the server, answered as a [`Report`].
//! - [`cluster`]: `cluster show` and `cluster init`, against the cluster's etcd.
//! - [`moves`]: `cluster move`, `resume` and `abort`: driving a slot move between servers.
//! - [`report`]: [`Report`], rendered as a table or JSON.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod moves;
pub mod report;

pub use cli::Cli;
pub use commands::run;
pub use report::Report;

/// What can stop a command from being answered at all (a refused change is a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The certificate or token could not be read, or the server not reached.
    #[error(transparent)]
    Client(#[from] flashstock_client::ClientError),
    /// etcd did not answer, or refused a change to the cluster's map.
    #[error(transparent)]
    Cluster(#[from] flashstock_cluster_etcd::EtcdError),
    /// A value given on the command line is out of range.
    #[error("{0}")]
    Usage(String),
}
