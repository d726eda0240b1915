//! [`EtcdConfig`]: which etcd, and which cluster in it; and the keys under the cluster's prefix.

use std::time::Duration;

use flashstock_cluster::ServerId;

use crate::error::EtcdError;

/// The cluster prefix when none is given.
pub const CLUSTER_PREFIX_DEFAULT: &str = "/flashstock/default";

/// How long one etcd call may take before it fails (connecting included).
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Which etcd holds the cluster, and under which prefix (several clusters may share one etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// etcd's client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The cluster's key prefix, without a trailing slash.
    pub prefix: String,
}

impl EtcdConfig {
    /// The cluster under `prefix` in the etcd at `endpoints`.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
        EtcdConfig { endpoints, prefix: prefix.trim_end_matches('/').to_owned() }
    }

    /// The cluster named by a setting or flag: `urls` comma-separated (`None` when empty:
    /// no cluster) and its prefix. The one parser of `--etcd` for every binary.
    pub fn from_urls(urls: &str, prefix: &str) -> Option<EtcdConfig> {
        let endpoints: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        (!endpoints.is_empty()).then(|| EtcdConfig::new(endpoints, prefix))
    }

    /// The shard map's key.
    pub fn map_key(&self) -> String {
        format!("{}/map", self.prefix)
    }

    /// The key of the slot move in progress (one at a time).
    pub fn move_key(&self) -> String {
        format!("{}/move", self.prefix)
    }

    /// The prefix of the members' keys.
    pub fn members_prefix(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    /// `server`'s member key.
    pub fn member_key(&self, server: &ServerId) -> String {
        format!("{}{}", self.members_prefix(), server.0)
    }

    /// The prefix every key of the cluster starts with.
    pub fn cluster_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// A connection to etcd (calls time out after 3 s).
    pub async fn connect(&self) -> Result<etcd_client::Client, EtcdError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(ETCD_CALL_TIMEOUT)
            .with_timeout(ETCD_CALL_TIMEOUT);
        etcd_client::Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|source| self.error(source))
    }

    /// `source`, naming these endpoints.
    pub(crate) fn error(&self, source: etcd_client::Error) -> EtcdError {
        EtcdError::Etcd { endpoints: self.endpoints.join(","), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_are_split_and_trimmed_and_none_means_no_cluster() {
        let config = EtcdConfig::from_urls(" http://a:2379, http://b:2379 ,", "/x/").unwrap();
        assert_eq!(config.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(
            (config.map_key(), config.member_key(&ServerId("s".into()))),
            ("/x/map".into(), "/x/members/s".into())
        );
        assert_eq!(EtcdConfig::from_urls("", "/x"), None);
        assert_eq!(EtcdConfig::from_urls(" , ", "/x"), None);
    }
}
