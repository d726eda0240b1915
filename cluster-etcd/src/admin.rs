//! The operator's calls: read the map, store a new one by compare-and-swap on its revision;
//! start, flip (the commit point) and abort a slot move.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use flashstock_cluster::{SlotMap, SlotMove};

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
    let found = first_read(&response).map_or(0, |(_, revision)| revision);
    Err(EtcdError::Conflict { expected: expected_revision, found })
}

/// The slot move in progress, if any.
pub async fn read_move(config: &EtcdConfig) -> Result<Option<SlotMove>, EtcdError> {
    let mut client = config.connect().await?;
    let response = client.get(config.move_key(), None).await.map_err(|e| config.error(e))?;
    let Some(kv) = response.kvs().first() else { return Ok(None) };
    Ok(Some(SlotMove::parse(kv.value())?))
}

/// Records `moving` as the move in progress, unless one is (then `MoveInProgress` names it).
pub async fn start_move(config: &EtcdConfig, moving: &SlotMove) -> Result<(), EtcdError> {
    let mut client = config.connect().await?;
    let key = config.move_key();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), moving.to_json(), None)])
        .or_else([TxnOp::get(key, None)]);
    let response = client.txn(txn).await.map_err(|e| config.error(e))?;
    if response.succeeded() {
        return Ok(());
    }
    match first_read(&response) {
        Some((bytes, _)) => Err(EtcdError::MoveInProgress(Box::new(SlotMove::parse(&bytes)?))),
        None => Err(EtcdError::NoMove),
    }
}

/// The commit point of a move: stores `map` (the range given to the move's target) and
/// removes the move, in one transaction, if the map is still at the revision the move
/// started from and the move is still in progress. Returns the new map's revision.
pub async fn flip_move(
    config: &EtcdConfig,
    moving: &SlotMove,
    map: &SlotMap,
) -> Result<i64, EtcdError> {
    let mut client = config.connect().await?;
    let (map_key, move_key) = (config.map_key(), config.move_key());
    let txn = Txn::new()
        .when([
            Compare::mod_revision(map_key.clone(), CompareOp::Equal, moving.map_revision),
            Compare::value(move_key.clone(), CompareOp::Equal, moving.to_json()),
        ])
        .and_then([TxnOp::put(map_key.clone(), map.to_json(), None), TxnOp::delete(move_key, None)])
        .or_else([TxnOp::get(map_key, None)]);
    let response = client.txn(txn).await.map_err(|e| config.error(e))?;
    if response.succeeded() {
        return Ok(response.header().map_or(0, |header| header.revision()));
    }
    let found = first_read(&response).map_or(0, |(_, revision)| revision);
    if found != moving.map_revision {
        return Err(EtcdError::Conflict { expected: moving.map_revision, found });
    }
    Err(EtcdError::NoMove)
}

/// Abandons the move in progress (whatever it is): each server then thaws or releases its
/// frozen copy by the map, which still gives the range to the source. Whether one was there.
pub async fn abort_move(config: &EtcdConfig) -> Result<bool, EtcdError> {
    let mut client = config.connect().await?;
    let response = client.delete(config.move_key(), None).await.map_err(|e| config.error(e))?;
    Ok(response.deleted() > 0)
}

/// The first key a failed transaction's `or_else` read: its value and `mod_revision`.
fn first_read(response: &etcd_client::TxnResponse) -> Option<(Vec<u8>, i64)> {
    response.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(get) => {
            get.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision()))
        }
        _ => None,
    })
}
