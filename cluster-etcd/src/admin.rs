//! The operator's calls: read the map, store a new one by compare-and-swap on its revision.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use flashstock_cluster::SlotMap;

use crate::error::EtcdError;
use crate::keys::EtcdConfig;

/// The stored map, at its revision, or `None` when no map is stored.
pub async fn read_map(config: &EtcdConfig) -> Result<Option<SlotMap>, EtcdError> {
    let mut client = config.connect().await?;
    let response = client.get(config.map_key(), None).await.map_err(|e| config.error(e))?;
    let Some(kv) = response.kvs().first() else { return Ok(None) };
    Ok(Some(SlotMap::parse(kv.value(), kv.mod_revision())?))
}

/// Stores `map` if the stored map is still at `expected_revision` (0: if none is stored), and
/// returns the new map's revision. The one way the map changes: a change made against a map
/// someone else changed meanwhile is refused with [`EtcdError::Conflict`].
pub async fn store_map(
    config: &EtcdConfig,
    map: &SlotMap,
    expected_revision: i64,
) -> Result<i64, EtcdError> {
    let mut client = config.connect().await?;
    let key = config.map_key();
    let compare = Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision);
    let txn = Txn::new()
        .when([compare])
        .and_then([TxnOp::put(key.clone(), map.to_json(), None)])
        .or_else([TxnOp::get(key, None)]);
    let response = client.txn(txn).await.map_err(|e| config.error(e))?;
    if response.succeeded() {
        return Ok(response.header().map_or(0, |header| header.revision()));
    }
    let found = response
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        })
        .unwrap_or(0);
    Err(EtcdError::Conflict { expected: expected_revision, found })
}
