//! The order writer's one error type.

use flashstock_client::ClientError;

/// Why the order writer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A setting is missing or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A database URL names a scheme other than sqlite, postgres(ql), mysql or mariadb.
    #[error(
        "unknown database URL scheme in {url}: use sqlite:PATH, postgres://... or mysql://..."
    )]
    UnknownScheme {
        /// The URL (password hidden).
        url: String,
    },
    /// A database is unreachable, refused the credentials, or failed a statement.
    #[error("database {url}: {source}")]
    Database {
        /// The URL (password hidden).
        url: String,
        /// What sqlx reported.
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("migrating {url}: {source}")]
    Migrate {
        /// The URL (password hidden).
        url: String,
        /// What sqlx reported.
        source: sqlx::migrate::MigrateError,
    },
    /// Another process held the schema migration lock of a MySQL or MariaDB database for
    /// longer than the writer waits.
    #[error("migrating {url}: another process held the migration lock for {waited_s} s")]
    MigrateLocked {
        /// The URL (password hidden).
        url: String,
        /// How long the writer waited, in seconds.
        waited_s: u32,
    },
    /// The flashstock server refused the subscription (credentials, role, cursor).
    #[error("flashstock server: {0}")]
    Server(ClientError),
    /// The cluster's etcd could not be read (at start: etcd did not answer).
    #[error("the cluster: {0}")]
    Cluster(#[from] flashstock_cluster_etcd::EtcdError),
    /// A server's writer task panicked.
    #[error("a server's writer task failed: {0}")]
    Task(String),
    /// NATS could not be reached or its stream set up.
    #[error("NATS {url}: {detail}")]
    Nats {
        /// The server URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// A file the writer needs (certificate, tokens) could not be read.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        detail: String,
    },
}
