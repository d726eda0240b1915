//! The Redis baseline: flash-sale stock the way it is usually kept in Redis today.
//!
//! A reserve is one Lua script run atomically by Redis: check the per-buyer limit in a hash,
//! check-and-decrement the stock (the classic script in `../shared/FACTS.md`, extended), count
//! the hold, and register it in a sorted set of deadlines. Confirm and cancel are a second
//! script; expiry is the generator sweeping the sorted set (what application code does beside
//! Redis). Requests are pipelined to the same depth as flashstock's batches. Keys carry a
//! per-run prefix, so runs do not disturb each other. Persistence is whatever the Redis server
//! is set to (`describe` says; `loadgen compare` can switch it to AOF everysec).

use redis::aio::MultiplexedConnection;

use crate::scenario::{ReserveOp, SkuSetup};
use crate::target::{Hold, LoadError, ReserveAnswer, SkuCounts};

/// KEYS: stock, reserved, taken (hash), deadlines (zset), holds (hash), hold counter.
/// ARGV: qty, buyer, limit (0 = none), deadline_ms, sku.
/// Returns the hold id, or -1 sold out, -2 limit exceeded, -3 unknown SKU.
const RESERVE_LUA: &str = r#"
local qty = tonumber(ARGV[1])
local stock = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stock < 0 then return -3 end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local taken = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
  if taken + qty > limit then return -2 end
end
if stock < qty then return -1 end
redis.call('DECRBY', KEYS[1], qty)
redis.call('INCRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], ARGV[2], qty)
local id = redis.call('INCR', KEYS[6])
redis.call('ZADD', KEYS[4], ARGV[4], id)
redis.call('HSET', KEYS[5], id, ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[5])
return id
"#;

/// KEYS: holds (hash), deadlines (zset). ARGV: hold id, `confirm` | `cancel`, key prefix.
/// Returns 1 when the hold ended now, 0 when it had already ended (expired or settled).
const SETTLE_LUA: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local qty, buyer, sku = string.match(v, '(%d+):(%d+):(%d+)')
local p = ARGV[3]
redis.call('DECRBY', p .. 'reserved:' .. sku, qty)
if ARGV[2] == 'confirm' then
  redis.call('INCRBY', p .. 'sold:' .. sku, qty)
else
  redis.call('INCRBY', p .. 'stock:' .. sku, qty)
  redis.call('HINCRBY', p .. 'taken:' .. sku, buyer, -tonumber(qty))
end
return 1
"#;

/// Redis with the flash-sale scripts loaded.
#[derive(Debug)]
pub struct RedisTarget {
    url: String,
    /// One connection per caller in `--mode client` (as redis-benchmark's clients), else one
    /// multiplexed connection that pipelines everything.
    connections: Vec<MultiplexedConnection>,
    next: std::sync::atomic::AtomicUsize,
    prefix: String,
    reserve_sha: String,
    settle_sha: String,
    limits: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

impl RedisTarget {
    /// Opens `connections` connections and loads the scripts; keys of this run start with
    /// `fsl:<run_id>:`.
    pub async fn connect(
        url: &str,
        run_id: u64,
        connections: usize,
    ) -> Result<RedisTarget, LoadError> {
        let client = redis::Client::open(url)?;
        let mut opened = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            opened.push(client.get_multiplexed_async_connection().await?);
        }
        let mut connection = opened[0].clone();
        let load = |src: &'static str| redis::cmd("SCRIPT").arg("LOAD").arg(src).clone();
        let reserve_sha: String = load(RESERVE_LUA).query_async(&mut connection).await?;
        let settle_sha: String = load(SETTLE_LUA).query_async(&mut connection).await?;
        Ok(RedisTarget {
            url: url.to_owned(),
            connections: opened,
            next: std::sync::atomic::AtomicUsize::new(0),
            prefix: format!("fsl:{run_id}:"),
            reserve_sha,
            settle_sha,
            limits: Default::default(),
        })
    }

    /// The next connection, in turn.
    fn connection(&self) -> MultiplexedConnection {
        let next = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[next % self.connections.len()].clone()
    }

    fn key(&self, name: &str, sku: u64) -> String {
        format!("{}{name}:{sku}", self.prefix)
    }

    /// Which persistence the server runs with, for reports.
    pub async fn describe(&self) -> String {
        let mut connection = self.connection();
        let persistence = persistence(&mut connection).await.unwrap_or_else(|err| err.to_string());
        format!("redis at {} ({persistence})", self.url)
    }

    /// Switches the server to AOF with `appendfsync everysec` (for a fair comparison with a
    /// durable flashstock) or back to no persistence.
    pub async fn set_aof(&self, on: bool) -> Result<(), LoadError> {
        let mut connection = self.connection();
        let (appendonly, fsync) = if on { ("yes", "everysec") } else { ("no", "everysec") };
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg(appendonly)
            .query_async(&mut connection)
            .await?;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(fsync)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    pub(crate) async fn setup(&self, skus: &[SkuSetup]) -> Result<(), LoadError> {
        let mut connection = self.connection();
        for chunk in skus.chunks(1_000) {
            let mut pipe = redis::pipe();
            for s in chunk {
                pipe.cmd("SET").arg(self.key("stock", s.sku)).arg(s.units).ignore();
                pipe.cmd("SET").arg(self.key("total", s.sku)).arg(s.units).ignore();
                pipe.cmd("SET").arg(self.key("reserved", s.sku)).arg(0).ignore();
                pipe.cmd("SET").arg(self.key("sold", s.sku)).arg(0).ignore();
            }
            let _: () = pipe.query_async(&mut connection).await?;
        }
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        for s in skus {
            if let Some(limit) = s.buyer_limit {
                limits.insert(s.sku, limit);
            }
        }
        Ok(())
    }

    pub(crate) async fn reserve(&self, ops: &[ReserveOp]) -> Result<Vec<ReserveAnswer>, LoadError> {
        let now_ms = now_ms();
        let mut pipe = redis::pipe();
        {
            let limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            for op in ops {
                if op.cart {
                    return Err(LoadError::Setup("carts run against flashstock only".into()));
                }
                let (sku, qty) = op.units().next().expect("a reserve has a line");
                let limit = limits.get(&sku).copied().unwrap_or(0);
                pipe.cmd("EVALSHA")
                    .arg(&self.reserve_sha)
                    .arg(6)
                    .arg(self.key("stock", sku))
                    .arg(self.key("reserved", sku))
                    .arg(self.key("taken", sku))
                    .arg(format!("{}deadlines", self.prefix))
                    .arg(format!("{}holds", self.prefix))
                    .arg(format!("{}hold_seq", self.prefix))
                    .arg(qty)
                    .arg(op.buyer)
                    .arg(limit)
                    .arg(now_ms + op.ttl_ms)
                    .arg(sku);
            }
        }
        let mut connection = self.connection();
        let answers: Vec<i64> = pipe.query_async(&mut connection).await?;
        Ok(answers
            .into_iter()
            .zip(ops)
            .map(|(answer, op)| match answer {
                id if id > 0 => ReserveAnswer::Held(Hold { id: id as u64, lines: op.lines }),
                -1 => ReserveAnswer::Refused("sold_out"),
                -2 => ReserveAnswer::Refused("limit_exceeded"),
                _ => ReserveAnswer::Refused("other"),
            })
            .collect())
    }

    pub(crate) async fn settle(
        &self,
        holds: &[Hold],
        confirm: bool,
    ) -> Result<Vec<&'static str>, LoadError> {
        let action = if confirm { "confirm" } else { "cancel" };
        let ids: Vec<u64> = holds.iter().map(|h| h.id).collect();
        let ended = self.settle_ids(&ids, action).await?;
        Ok(ended
            .into_iter()
            .map(|ended| match (ended, confirm) {
                (true, true) => "confirmed",
                (true, false) => "cancelled",
                (false, _) => "expired",
            })
            .collect())
    }

    async fn settle_ids(&self, ids: &[u64], action: &str) -> Result<Vec<bool>, LoadError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EVALSHA")
                .arg(&self.settle_sha)
                .arg(2)
                .arg(format!("{}holds", self.prefix))
                .arg(format!("{}deadlines", self.prefix))
                .arg(id)
                .arg(action)
                .arg(&self.prefix);
        }
        let mut connection = self.connection();
        let ended: Vec<i64> = pipe.query_async(&mut connection).await?;
        Ok(ended.into_iter().map(|e| e == 1).collect())
    }

    /// Expires holds past their deadline, up to `max` of them; returns how many expired.
    pub async fn sweep(&self, max: usize) -> Result<usize, LoadError> {
        let mut connection = self.connection();
        let due: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}deadlines", self.prefix))
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .query_async(&mut connection)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        Ok(self.settle_ids(&due, "expire").await?.into_iter().filter(|&e| e).count())
    }

    pub(crate) async fn counts(&self, skus: &[u64]) -> Result<Vec<SkuCounts>, LoadError> {
        let mut connection = self.connection();
        let mut counts = Vec::with_capacity(skus.len());
        for chunk in skus.chunks(1_000) {
            let mut pipe = redis::pipe();
            for &sku in chunk {
                for name in ["total", "stock", "reserved", "sold"] {
                    pipe.cmd("GET").arg(self.key(name, sku));
                }
            }
            let values: Vec<Option<i64>> = pipe.query_async(&mut connection).await?;
            for (&sku, v) in chunk.iter().zip(values.chunks(4)) {
                // A negative count (which the scripts never make) shows as a huge number and
                // fails the audit, as it should.
                let at = |i: usize| v[i].unwrap_or(0) as u64;
                counts.push(SkuCounts {
                    sku,
                    total: at(0),
                    available: at(1),
                    reserved: at(2),
                    sold: at(3),
                });
            }
        }
        Ok(counts)
    }
}

/// `appendonly yes, appendfsync everysec` or `no persistence`, from CONFIG GET.
async fn persistence(connection: &mut MultiplexedConnection) -> Result<String, redis::RedisError> {
    let appendonly: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(connection).await?;
    let fsync: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("appendfsync").query_async(connection).await?;
    let save: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("save").query_async(connection).await?;
    let aof = appendonly.get(1).map(String::as_str) == Some("yes");
    let rdb = save.get(1).is_some_and(|s| !s.is_empty());
    Ok(match (aof, rdb) {
        (true, _) => format!("AOF, appendfsync {}", fsync.get(1).map_or("?", String::as_str)),
        (false, true) => "RDB snapshots only".to_owned(),
        (false, false) => "no persistence".to_owned(),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
