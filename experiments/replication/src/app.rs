//! The replicated state: one flashstock shard. The node that leads decides client requests on
//! a shard of its own (the engine's `apply`, producing records); every node, the leader
//! included, builds its committed shard from the replicated records with `Shard::replay`.

use flashstock_engine::{
    decode_records, BuyerId, Command, EncodedLog, Outcome, RequestId, ReservationId, Reserve,
    Shard, ShardConfig, ShardId, SkuId,
};

use crate::wire::ClientRequest;

/// How long a checkout's hold would last unconfirmed (it is confirmed at once).
const HOLD_TTL_MS: u64 = 10 * 60 * 1000;

pub fn new_shard() -> Shard {
    Shard::new(ShardId(0), ShardConfig::default())
}

/// Decides `request` on the leader's shard, appending its records to `log`. Returns the units
/// sold (0 for a request that sells nothing).
pub fn decide(
    shard: &mut Shard,
    request: &ClientRequest,
    now_ms: u64,
    log: &mut EncodedLog,
) -> u32 {
    match request {
        ClientRequest::Stock { request, skus, total } => {
            for sku in 0..*skus {
                let id = RequestId((u128::from(*request) << 64) | u128::from(sku));
                let command = Command::SetStock { request: id, sku: SkuId(sku), total: *total };
                shard.apply(&command, now_ms, log);
            }
            0
        }
        ClientRequest::Checkout { requests } => {
            let mut sold = 0;
            for &(request, sku) in requests {
                if let Some(reservation) = reserve(shard, request, sku, now_ms, log) {
                    let confirm = Command::Confirm {
                        request: RequestId((u128::from(request) << 1) | 1),
                        reservation,
                        order_ref: None,
                    };
                    if shard.apply(&confirm, now_ms, log) == Outcome::Confirmed {
                        sold += 1;
                    }
                }
            }
            sold
        }
        ClientRequest::Audit => 0,
    }
}

fn reserve(
    shard: &mut Shard,
    request: u64,
    sku: u64,
    now_ms: u64,
    log: &mut EncodedLog,
) -> Option<ReservationId> {
    let reserve = Command::Reserve(Reserve {
        request: RequestId(u128::from(request) << 1),
        buyer: BuyerId(request),
        sku: SkuId(sku),
        qty: 1,
        ttl_ms: HOLD_TTL_MS,
        order_ref: None,
    });
    match shard.apply(&reserve, now_ms, log) {
        Outcome::Reserved { reservation, .. } => Some(reservation),
        _ => None,
    }
}

/// Replays replicated records onto a committed shard.
pub fn replay(shard: &mut Shard, bytes: &[u8]) {
    for record in decode_records(bytes) {
        let record = record.expect("a replicated record decodes");
        shard.replay(&record).expect("a replicated record replays as it was decided");
    }
}

/// Units sold over all SKUs, and the shard's digest.
pub fn audit(shard: &Shard) -> (u64, u64) {
    (shard.skus().map(|s| s.sold).sum(), shard.digest())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
