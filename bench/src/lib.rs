//! Workloads shared by flashstock's benchmarks (`benches/`), so every suite measures the same
//! commands.
//!
//! - [`commands`]: reserve and confirm commands for a hot SKU or for many SKUs.
//! - [`shards`]: shards set up with stock.
//! - [`records`]: encoded record batches like the ones the runtime logs.

/// Commands the benchmarks apply.
pub mod commands {
    use flashstock_engine::{BuyerId, Command, RequestId, ReservationId, Reserve, SkuId};

    /// Reserve one unit of `sku` for buyer `n`, request id `n`.
    pub fn reserve(n: u64, sku: u64, ttl_ms: u64) -> Command {
        Command::Reserve(Reserve {
            request: RequestId(u128::from(n) | (1 << 100)),
            buyer: BuyerId(n),
            sku: SkuId(sku),
            qty: 1,
            ttl_ms,
            order_ref: None,
        })
    }

    /// Confirm `reservation`, request id derived from `n`.
    pub fn confirm(n: u64, reservation: ReservationId) -> Command {
        Command::Confirm {
            request: RequestId(u128::from(n) | (2 << 100)),
            reservation,
            order_ref: None,
        }
    }

    /// A cheap, well-spread pseudo-random SKU for step `n` among `skus`.
    pub fn spread_sku(n: u64, skus: u64) -> u64 {
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % skus
    }
}

/// Shards the benchmarks start from.
pub mod shards {
    use flashstock_engine::{Command, DiscardLog, RequestId, Shard, ShardConfig, ShardId, SkuId};

    /// A shard holding `skus` SKUs (ids `0..skus`) of `units` each.
    pub fn stocked(skus: u64, units: u64, config: ShardConfig) -> Shard {
        let mut shard = Shard::new(ShardId(0), config);
        for sku in 0..skus {
            let request = RequestId(u128::from(sku) | (3 << 100));
            shard.apply(
                &Command::SetStock { request, sku: SkuId(sku), total: units },
                0,
                &mut DiscardLog,
            );
        }
        shard
    }

    /// Bounds large enough that no benchmark hits them.
    pub fn roomy() -> ShardConfig {
        ShardConfig {
            skus_max: 2_000_000,
            reservations_live_max: 8_000_000,
            ..ShardConfig::default()
        }
    }
}

/// Record batches like the runtime's.
pub mod records {
    use flashstock_engine::{EncodedLog, Outcome, Shard};

    use crate::commands;

    /// Encodes `count` records of a reserve-then-confirm workload on `sku` of `shard` (which
    /// must have it in stock), starting at step `from`.
    pub fn reserve_confirm(shard: &mut Shard, sku: u64, from: u64, count: u32) -> EncodedLog {
        let mut log = EncodedLog::default();
        let mut n = from;
        while log.record_count < count {
            let now_ms = 1_000 + n / 1_000;
            let outcome = shard.apply(&commands::reserve(n, sku, 600_000), now_ms, &mut log);
            if let Outcome::Reserved { reservation, .. } = outcome {
                if log.record_count < count && n % 2 == 0 {
                    shard.apply(&commands::confirm(n, reservation), now_ms, &mut log);
                }
            }
            n += 1;
        }
        log
    }
}
