//! Reserve rate limits, as an API gateway has them: token buckets per buyer and per
//! credential, set globally or per SKU by an admin, off by default. Pure: time is an
//! argument, so the rules are tested without a clock.
//!
//! Memory is bounded whatever buyer ids a caller invents: per-buyer buckets live in a fixed
//! table of [`BUYER_BUCKETS`] slots, [`BUYER_WAYS`]-way set-associative under a hash keyed at
//! start (callers cannot aim collisions). A new buyer takes the way that has refilled the most
//! (the least recently active). When every way of its set is busy, the buyer is let through
//! untracked: the per-credential bucket, which one caller cannot multiply, still holds it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use flashstock_engine::{BuyerId, SkuId};
use flashstock_protocol::{RateLimit, RateLimitEntry};

/// Slots of the per-buyer bucket table (24 bytes each: 1.5 MiB).
pub const BUYER_BUCKETS: usize = 1 << 16;
/// Ways per set of the buyer table.
pub const BUYER_WAYS: usize = 4;
/// SKUs that may have limits of their own.
pub const SKU_RATE_LIMITS_MAX: usize = 10_000;
/// Per-credential buckets kept (one per credential and limited scope).
pub const CREDENTIAL_BUCKETS_MAX: usize = 4_096;

/// Milli-tokens per token: buckets count thousandths, so a refill of a few per second is exact
/// at millisecond steps.
const MILLI: u64 = 1_000;

/// Which bucket refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitedBy {
    /// The buyer's.
    Buyer,
    /// The credential's.
    Credential,
}

/// A refused attempt: whose bucket, and when it holds a token again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Whose bucket.
    pub by: LimitedBy,
    /// Milliseconds until the bucket holds a token again.
    pub retry_after_ms: u32,
}

/// A token bucket of `rate` tokens per second, holding at most one second's worth.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    milli_tokens: u64,
    /// When it was last refilled; `None` for a bucket never used (it starts full).
    at_ms: Option<u64>,
}

impl Bucket {
    fn refilled(&self, rate: u32, now_ms: u64) -> u64 {
        let capacity = u64::from(rate) * MILLI;
        match self.at_ms {
            None => capacity,
            Some(at_ms) => {
                let refill = now_ms.saturating_sub(at_ms).saturating_mul(u64::from(rate));
                self.milli_tokens.saturating_add(refill).min(capacity)
            }
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: u32, now_ms: u64) -> Result<(), u32> {
        let milli_tokens = self.refilled(rate, now_ms);
        self.at_ms = Some(now_ms);
        if milli_tokens >= MILLI {
            self.milli_tokens = milli_tokens - MILLI;
            return Ok(());
        }
        self.milli_tokens = milli_tokens;
        let missing = MILLI - milli_tokens;
        Err(missing.div_ceil(u64::from(rate.max(1))).min(u64::from(u32::MAX)) as u32)
    }
}

/// A way of the buyer table: which buyer and scope it tracks, and its bucket.
#[derive(Clone, Copy, Debug, Default)]
struct Way {
    key: u64,
    bucket: Bucket,
}

/// The limits in force and their buckets.
#[derive(Debug)]
pub struct RateLimiter {
    global: RateLimit,
    per_sku: HashMap<SkuId, RateLimit>,
    buyers: Vec<Way>,
    credentials: HashMap<(u64, Option<SkuId>), Bucket>,
    hasher: RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

/// Why a limit could not be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A rate of zero would refuse everything; remove the limit instead.
    #[error("a rate of 0 per second would refuse every reserve; set None to remove the limit")]
    ZeroRate,
    /// Too many SKUs with limits of their own.
    #[error("at most {SKU_RATE_LIMITS_MAX} SKUs may have rate limits of their own")]
    TooManySkus,
}

impl RateLimiter {
    /// No limits.
    pub fn new() -> RateLimiter {
        RateLimiter {
            global: RateLimit::default(),
            per_sku: HashMap::new(),
            buyers: vec![Way::default(); BUYER_BUCKETS],
            credentials: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Whether any limit is set (when none is, callers skip the limiter entirely).
    pub fn is_active(&self) -> bool {
        self.global != RateLimit::default() || !self.per_sku.is_empty()
    }

    /// Sets the limits of `sku`, or the global ones. Buckets of the scope start afresh.
    pub fn set(&mut self, sku: Option<SkuId>, limit: RateLimit) -> Result<(), RateLimitError> {
        if limit.per_buyer_per_s == Some(0) || limit.per_credential_per_s == Some(0) {
            return Err(RateLimitError::ZeroRate);
        }
        match sku {
            None => self.global = limit,
            Some(sku) if limit == RateLimit::default() => drop(self.per_sku.remove(&sku)),
            Some(sku) => {
                if !self.per_sku.contains_key(&sku) && self.per_sku.len() >= SKU_RATE_LIMITS_MAX {
                    return Err(RateLimitError::TooManySkus);
                }
                self.per_sku.insert(sku, limit);
            }
        }
        self.credentials.retain(|(_, scope), _| *scope != sku);
        Ok(())
    }

    /// The limits in force: the global ones first, then each SKU's own, by id.
    pub fn entries(&self) -> Vec<RateLimitEntry> {
        let mut skus: Vec<RateLimitEntry> = self
            .per_sku
            .iter()
            .map(|(sku, limit)| RateLimitEntry { sku: Some(*sku), limit: *limit })
            .collect();
        skus.sort_unstable_by_key(|entry| entry.sku);
        let global = RateLimitEntry { sku: None, limit: self.global };
        std::iter::once(global).chain(skus).collect()
    }

    /// Takes one reserve attempt of `buyer` on `sku` through `credential`'s buckets at
    /// `now_ms`: the credential's first, so that a caller inventing buyer ids spends its own
    /// budget before it can touch the buyer table.
    pub fn check(
        &mut self,
        credential: u64,
        buyer: BuyerId,
        sku: SkuId,
        now_ms: u64,
    ) -> Result<(), Limited> {
        let (limit, scope) = match self.per_sku.get(&sku) {
            Some(limit) => (*limit, Some(sku)),
            None => (self.global, None),
        };
        if let Some(rate) = limit.per_credential_per_s {
            let bucket = self.credential_bucket(credential, scope, rate, now_ms);
            if let Err(retry_after_ms) = bucket.take(rate, now_ms) {
                return Err(Limited { by: LimitedBy::Credential, retry_after_ms });
            }
        }
        if let Some(rate) = limit.per_buyer_per_s {
            let key = self.hasher.hash_one((buyer.0, scope.map(|sku| sku.0)));
            if let Some(way) = self.buyer_way(key, rate, now_ms) {
                if let Err(retry_after_ms) = way.bucket.take(rate, now_ms) {
                    return Err(Limited { by: LimitedBy::Buyer, retry_after_ms });
                }
            }
        }
        Ok(())
    }

    fn credential_bucket(
        &mut self,
        credential: u64,
        scope: Option<SkuId>,
        rate: u32,
        now_ms: u64,
    ) -> &mut Bucket {
        if self.credentials.len() >= CREDENTIAL_BUCKETS_MAX
            && !self.credentials.contains_key(&(credential, scope))
        {
            // Full buckets carry no state: forgetting them changes nothing.
            let capacity = u64::from(rate) * MILLI;
            self.credentials.retain(|_, bucket| bucket.refilled(rate, now_ms) < capacity);
        }
        self.credentials.entry((credential, scope)).or_default()
    }

    /// The way tracking `key`, or the one to give it; `None` when every way of its set is
    /// busy (not refilled to the full second).
    fn buyer_way(&mut self, key: u64, rate: u32, now_ms: u64) -> Option<&mut Way> {
        let sets = BUYER_BUCKETS / BUYER_WAYS;
        let start = (key as usize % sets) * BUYER_WAYS;
        let set = &mut self.buyers[start..start + BUYER_WAYS];
        if let Some(index) = set.iter().position(|way| way.key == key && way.bucket.at_ms.is_some())
        {
            return Some(&mut set[index]);
        }
        let capacity = u64::from(rate) * MILLI;
        let (index, fullest) = set
            .iter()
            .map(|way| way.bucket.refilled(rate, now_ms))
            .enumerate()
            .max_by_key(|(_, milli_tokens)| *milli_tokens)
            .expect("a set has ways");
        if fullest < capacity {
            return None;
        }
        set[index] = Way { key, bucket: Bucket::default() };
        Some(&mut set[index])
    }
}

/// The limiter as the sessions share it: skipped at the cost of one atomic load while no
/// limit is set; otherwise one lock per frame, not per request.
#[derive(Debug, Default)]
pub struct RateGate {
    active: std::sync::atomic::AtomicBool,
    limiter: std::sync::Mutex<RateLimiter>,
    started: Option<std::time::Instant>,
}

/// The metadata key the limits are stored under.
pub const RATE_LIMITS_KEY: &str = "rate_limits";

impl RateGate {
    /// A gate with `entries` in force (as stored), its clock starting now.
    pub fn new(entries: &[RateLimitEntry]) -> RateGate {
        let mut limiter = RateLimiter::new();
        for entry in entries {
            if let Err(err) = limiter.set(entry.sku, entry.limit) {
                tracing::error!(%err, ?entry, "a stored rate limit is refused; skipped");
            }
        }
        RateGate {
            active: limiter.is_active().into(),
            limiter: std::sync::Mutex::new(limiter),
            started: Some(std::time::Instant::now()),
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.map_or(0, |started| started.elapsed().as_millis() as u64)
    }

    /// Sets limits; returns every entry in force after, for storing and answering.
    pub fn set(
        &self,
        sku: Option<SkuId>,
        limit: RateLimit,
    ) -> Result<Vec<RateLimitEntry>, RateLimitError> {
        let mut limiter = self.limiter();
        limiter.set(sku, limit)?;
        self.active.store(limiter.is_active(), std::sync::atomic::Ordering::Release);
        Ok(limiter.entries())
    }

    /// The limits in force.
    pub fn entries(&self) -> Vec<RateLimitEntry> {
        self.limiter().entries()
    }

    /// Checks each reserve of `batch` not already answered in `early`, and answers the ones
    /// over a limit `RateLimited`.
    pub fn check(
        &self,
        credential: u64,
        batch: &[flashstock_protocol::Request],
        early: &mut [Option<flashstock_protocol::Reply>],
    ) {
        use flashstock_engine::Command;
        use flashstock_protocol::{Refusal, Reply, Request};
        if !self.active.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let now_ms = self.now_ms();
        let mut limiter = self.limiter();
        for (request, answer) in batch.iter().zip(early.iter_mut()) {
            // A cart is one attempt, counted against its first line's SKU.
            let (buyer, sku) = match request {
                Request::Apply(Command::Reserve(reserve)) => (reserve.buyer, reserve.sku),
                Request::ReserveCart(cart) => match cart.lines.as_slice().first() {
                    Some(line) => (cart.buyer, line.sku),
                    None => continue,
                },
                _ => continue,
            };
            if answer.is_some() {
                continue;
            }
            if let Err(limited) = limiter.check(credential, buyer, sku, now_ms) {
                let by = match limited.by {
                    LimitedBy::Buyer => "buyer",
                    LimitedBy::Credential => "credential",
                };
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "by" => by).increment(1);
                let retry_after_ms = limited.retry_after_ms;
                *answer = Some(Reply::Refused(Refusal::RateLimited { retry_after_ms }));
            }
        }
    }
}

/// The limits' form in the log's metadata: per entry, a flag byte (bit 0: a SKU follows,
/// bit 1: a buyer rate, bit 2: a credential rate), then those values, little-endian.
pub fn encode_entries(entries: &[RateLimitEntry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in entries {
        let flags = u8::from(entry.sku.is_some())
            | u8::from(entry.limit.per_buyer_per_s.is_some()) << 1
            | u8::from(entry.limit.per_credential_per_s.is_some()) << 2;
        bytes.push(flags);
        if let Some(sku) = entry.sku {
            bytes.extend_from_slice(&sku.0.to_le_bytes());
        }
        for rate in
            [entry.limit.per_buyer_per_s, entry.limit.per_credential_per_s].into_iter().flatten()
        {
            bytes.extend_from_slice(&rate.to_le_bytes());
        }
    }
    bytes
}

/// The entries of [`encode_entries`]; `None` for bytes it did not write.
pub fn decode_entries(mut bytes: &[u8]) -> Option<Vec<RateLimitEntry>> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        *bytes = rest;
        Some(*head)
    }
    let mut entries = Vec::new();
    while let Some([flags]) = take::<1>(&mut bytes) {
        if flags > 0b111 {
            return None;
        }
        let sku =
            if flags & 1 != 0 { Some(SkuId(u64::from_le_bytes(take(&mut bytes)?))) } else { None };
        let mut rate = |bit: u8| -> Option<Option<u32>> {
            if flags & bit == 0 {
                return Some(None);
            }
            Some(Some(u32::from_le_bytes(take(&mut bytes)?)))
        };
        let per_buyer_per_s = rate(2)?;
        let per_credential_per_s = rate(4)?;
        entries.push(RateLimitEntry {
            sku,
            limit: RateLimit { per_buyer_per_s, per_credential_per_s },
        });
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_buyer_per_s: Option<u32>, per_credential_per_s: Option<u32>) -> RateLimit {
        RateLimit { per_buyer_per_s, per_credential_per_s }
    }

    #[test]
    fn a_buyer_gets_a_burst_of_one_second_then_the_rate() {
        let mut limiter = RateLimiter::new();
        assert!(!limiter.is_active());
        limiter.set(None, limit(Some(5), None)).unwrap();
        assert!(limiter.is_active());
        for _ in 0..5 {
            assert_eq!(limiter.check(1, BuyerId(7), SkuId(1), 1_000), Ok(()));
        }
        let refused = limiter.check(1, BuyerId(7), SkuId(1), 1_000).unwrap_err();
        assert_eq!(refused, Limited { by: LimitedBy::Buyer, retry_after_ms: 200 });
        // Another buyer, same credential and SKU: its own bucket.
        assert_eq!(limiter.check(1, BuyerId(8), SkuId(1), 1_000), Ok(()));
        // 200 ms later one token is back, and only one.
        assert_eq!(limiter.check(1, BuyerId(7), SkuId(1), 1_200), Ok(()));
        assert!(limiter.check(1, BuyerId(7), SkuId(1), 1_200).is_err());
    }

    #[test]
    fn a_credential_is_limited_over_every_buyer_it_claims() {
        let mut limiter = RateLimiter::new();
        limiter.set(None, limit(None, Some(100))).unwrap();
        let taken = (0..1_000u64).filter(|b| limiter.check(9, BuyerId(*b), SkuId(1), 0).is_ok());
        assert_eq!(taken.count(), 100, "a bot inventing buyer ids still gets its 100");
        let refused = limiter.check(9, BuyerId(5_000), SkuId(1), 0).unwrap_err();
        assert_eq!(refused.by, LimitedBy::Credential);
        assert_eq!(limiter.check(10, BuyerId(5_000), SkuId(1), 0), Ok(()), "another credential");
    }

    #[test]
    fn a_sku_of_its_own_overrides_the_global_limits_and_can_be_removed() {
        let mut limiter = RateLimiter::new();
        limiter.set(None, limit(Some(1), None)).unwrap();
        limiter.set(Some(SkuId(2)), limit(Some(3), None)).unwrap();
        assert_eq!(limiter.check(1, BuyerId(1), SkuId(1), 0), Ok(()));
        assert!(limiter.check(1, BuyerId(1), SkuId(3), 0).is_err(), "global: one in all");
        let hot: Vec<bool> =
            (0..4).map(|_| limiter.check(1, BuyerId(1), SkuId(2), 0).is_ok()).collect();
        assert_eq!(hot, [true, true, true, false], "SKU 2: three of its own");
        assert_eq!(limiter.entries().len(), 2);
        limiter.set(Some(SkuId(2)), RateLimit::default()).unwrap();
        assert_eq!(limiter.entries().len(), 1);
        assert_eq!(limiter.set(None, limit(Some(0), None)), Err(RateLimitError::ZeroRate));
    }

    #[test]
    fn invented_buyers_cannot_grow_memory_or_evict_an_active_buyer() {
        let mut limiter = RateLimiter::new();
        limiter.set(None, limit(Some(2), None)).unwrap();
        assert_eq!(limiter.check(1, BuyerId(u64::MAX), SkuId(1), 0), Ok(()));
        assert_eq!(limiter.check(1, BuyerId(u64::MAX), SkuId(1), 0), Ok(()));
        for buyer in 0..1_000_000u64 {
            let _ = limiter.check(2, BuyerId(buyer), SkuId(1), 0);
        }
        assert_eq!(limiter.buyers.len(), BUYER_BUCKETS);
        // Its set's other ways fill up, but its own busy way is never given away.
        assert!(limiter.check(1, BuyerId(u64::MAX), SkuId(1), 0).is_err());
    }

    #[test]
    fn skus_with_limits_of_their_own_are_capped() {
        let mut limiter = RateLimiter::new();
        for sku in 0..SKU_RATE_LIMITS_MAX as u64 {
            limiter.set(Some(SkuId(sku)), limit(Some(1), None)).unwrap();
        }
        let one_more = limiter.set(Some(SkuId(u64::MAX)), limit(Some(1), None));
        assert_eq!(one_more, Err(RateLimitError::TooManySkus));
        assert!(
            limiter.set(Some(SkuId(0)), limit(Some(2), None)).is_ok(),
            "a change is no new one"
        );
        assert_eq!(limiter.entries().len(), SKU_RATE_LIMITS_MAX + 1);
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_garbage() {
        let entries = vec![
            RateLimitEntry { sku: None, limit: limit(Some(5), None) },
            RateLimitEntry { sku: Some(SkuId(9)), limit: limit(Some(1), Some(1_000)) },
        ];
        assert_eq!(decode_entries(&encode_entries(&entries)), Some(entries));
        assert_eq!(decode_entries(&[0xff]), None);
        assert_eq!(decode_entries(&[0b1, 1, 2]), None, "a SKU cut short");
    }
}
