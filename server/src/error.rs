//! What can stop the server from starting or serving. The runtime's own failures are
//! `flashstock_runtime::RuntimeError`, carried as [`ServerError::Runtime`].

/// Why the server could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A TLS certificate or key could not be generated, read or used.
    #[error("TLS material at {path}: {detail}")]
    Tls {
        /// The file concerned.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A configuration file (tokens, server config) could not be read, written or parsed.
    #[error("configuration {path}: {detail}")]
    Config {
        /// The file concerned.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Joining the cluster failed: etcd did not answer, or this server's id is taken.
    #[error("joining the cluster: {0}")]
    Cluster(#[from] flashstock_cluster_etcd::EtcdError),
    /// A setting is out of its range; the daemon refuses to start rather than misbehave.
    #[error("setting {name} = {value}: {detail}")]
    Setting {
        /// The setting's name, as in the TOML file (flags spell it with dashes).
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        detail: String,
    },
    /// The metrics recorder or listener could not be set up.
    #[error("metrics: {0}")]
    Observe(String),
    /// The listening socket could not be opened.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime could not start, or failed.
    #[error(transparent)]
    Runtime(#[from] flashstock_runtime::RuntimeError),
}
