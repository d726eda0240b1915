//! [`Membership`]: a server's entry under `members/<id>`, written with a lease the server keeps
//! alive, so that clients find its address and the entry goes when the server does.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use flashstock_cluster::{Member, ServerId};

use crate::error::EtcdError;
use crate::keys::EtcdConfig;

/// The member lease's time to live: a killed server's entry is gone this long after it died,
/// and a server restarted under the same id waits up to this long for it to go.
pub const MEMBER_LEASE_TTL_S: i64 = 5;

/// How often a lost lease is looked for again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// A registered server; dropping it stops the keep-alive (the entry lapses within the TTL),
/// [`Membership::leave`] removes the entry at once.
#[derive(Debug)]
pub struct Membership {
    config: EtcdConfig,
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Writes `server`'s entry under a lease and keeps it alive. An entry of that id still
    /// alive (another server by that name, or this one before a crash) is waited for, up to
    /// the lease's TTL and a little more; then [`EtcdError::ServerIdTaken`].
    pub async fn register(
        config: EtcdConfig,
        server: ServerId,
        member: Member,
    ) -> Result<Membership, EtcdError> {
        let mut client = config.connect().await?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(MEMBER_LEASE_TTL_S as u64 + 2);
        let lease = loop {
            match put_under_lease(&config, &mut client, &server, &member).await? {
                Some(lease) => break lease,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_DELAY).await
                }
                None => return Err(EtcdError::ServerIdTaken { server: server.0 }),
            }
        };
        let lease = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(lease));
        let task = tokio::spawn(keep_alive(config.clone(), client, server, member, lease.clone()));
        Ok(Membership { config, lease, task })
    }

    /// Removes the entry now (a clean shutdown), rather than when the lease lapses.
    pub async fn leave(self) {
        self.task.abort();
        let lease = self.lease.load(std::sync::atomic::Ordering::Acquire);
        if let Ok(mut client) = self.config.connect().await {
            if let Err(err) = client.lease_revoke(lease).await {
                tracing::warn!(%err, "leaving the cluster: the lease was not revoked; it lapses");
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Grants a lease and writes the entry under it if no entry of that id exists; `None` if one
/// does (the lease is revoked again).
async fn put_under_lease(
    config: &EtcdConfig,
    client: &mut etcd_client::Client,
    server: &ServerId,
    member: &Member,
) -> Result<Option<i64>, EtcdError> {
    let granted =
        client.lease_grant(MEMBER_LEASE_TTL_S, None).await.map_err(|e| config.error(e))?;
    let key = config.member_key(server);
    let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
    let put = TxnOp::put(key, member.to_json(), Some(PutOptions::new().with_lease(granted.id())));
    let txn = Txn::new().when([absent]).and_then([put]);
    let response = client.txn(txn).await.map_err(|e| config.error(e))?;
    if response.succeeded() {
        return Ok(Some(granted.id()));
    }
    let _ = client.lease_revoke(granted.id()).await;
    Ok(None)
}

/// Renews the lease at a third of its TTL; when etcd says it is gone (etcd lost it, or this
/// process was paused past the TTL), writes the entry again under a new one.
async fn keep_alive(
    config: EtcdConfig,
    mut client: etcd_client::Client,
    server: ServerId,
    member: Member,
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
) {
    let period = Duration::from_millis(MEMBER_LEASE_TTL_S as u64 * 1000 / 3);
    loop {
        let id = lease.load(std::sync::atomic::Ordering::Acquire);
        let renewed = async {
            let (mut keeper, mut stream) =
                client.lease_keep_alive(id).await.map_err(|e| config.error(e))?;
            loop {
                keeper.keep_alive().await.map_err(|e| config.error(e))?;
                match stream.message().await.map_err(|e| config.error(e))? {
                    Some(answer) if answer.ttl() > 0 => tokio::time::sleep(period).await,
                    _ => return Ok::<(), EtcdError>(()),
                }
            }
        };
        match renewed.await {
            Ok(()) => {
                tracing::warn!(server = %server.0, "the member lease lapsed; registering again")
            }
            Err(err) => tracing::warn!(%err, "renewing the member lease failed; trying again"),
        }
        loop {
            tokio::time::sleep(RETRY_DELAY).await;
            let again = async {
                let mut fresh = config.connect().await?;
                let granted = put_under_lease(&config, &mut fresh, &server, &member).await?;
                Ok::<_, EtcdError>((fresh, granted))
            };
            match again.await {
                Ok((fresh, Some(id))) => {
                    client = fresh;
                    lease.store(id, std::sync::atomic::Ordering::Release);
                    break;
                }
                // The old lease still holds the entry: renew that one.
                Ok((fresh, None)) => {
                    client = fresh;
                    break;
                }
                Err(err) => tracing::warn!(%err, "registering again failed; trying again"),
            }
        }
    }
}
