//! Every bound the engine enforces, as named constants, and the per-shard configuration.
//!
//! A limit on everything: a request can never make the engine do unbounded work or hold
//! unbounded memory.

/// The most units one reservation may hold. Larger requests get `Outcome::InvalidQuantity`.
pub const RESERVE_QTY_MAX: u32 = 10_000;

/// The longest time-to-live of a reservation (24 hours). Longer requests get `InvalidTtl`.
pub const TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// The most units of one SKU (about 1.1e12): keeps every sum of counts far from overflow.
pub const STOCK_TOTAL_MAX: u64 = 1 << 40;

/// The most reservations one `tick` expires; the rest wait for the next tick, so a mass
/// expiry never stalls a shard for longer than one bounded step.
pub const TICK_EXPIRIES_MAX: u32 = 65_536;

/// The most slots a shard's rings and queues (reservations, ended reservations, expiries) are
/// given when it is built, short of their configured bounds: growing one later copies it
/// while the shard waits (doubling a 64 MB ring stalled a shard for ~100-200 ms under load),
/// so they start large. The memory is address space until used, but a ring that cycles
/// through its buffer touches all of it in time: the cap bounds that to 64 MB for the
/// reservation ring (32-byte slots), less for the others.
pub const PRESIZED_SLOTS_MAX: usize = 1 << 21;

const _: () = assert!((RESERVE_QTY_MAX as u64) < STOCK_TOTAL_MAX);
const _: () = assert!(STOCK_TOTAL_MAX.checked_mul(4).is_some());
const _: () = assert!(TTL_MS_MAX < u64::MAX / 4);

/// Per-shard bounds and retentions. Every field is a limit on memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// The most SKUs one shard holds; `set_stock` of a new SKU beyond it is refused.
    pub skus_max: usize,
    /// The most reservations held at once by one shard; reserves beyond it are refused.
    pub reservations_live_max: usize,
    /// How long the answer to a state-changing request is remembered for retries.
    pub dedup_retention_ms: u64,
    /// The most remembered answers to state-changing requests; the oldest go first. Their
    /// ring and index are sized for this many when the shard is built (~72 bytes an answer
    /// of address space, committed as used), so they never grow on the hot path.
    pub dedup_entries_max: usize,
    /// Slots of the best-effort cache of answers to requests that changed nothing (sold out,
    /// limit exceeded...). A power of two; a colliding newer answer evicts an older one.
    /// 2^14 slots (640 KiB) stay in a core's L2 cache: the cache is probed by every new
    /// request, and at flash-sale rates a bigger one would only remember a few more ms.
    pub rejection_cache_slots: usize,
    /// How long an ended reservation is remembered, so that a late confirm or cancel gets
    /// "already confirmed" / "expired" rather than "unknown reservation".
    pub ended_retention_ms: u64,
    /// The most ended reservations remembered; the oldest go first.
    pub ended_entries_max: usize,
    /// The most ended carts a coordinator remembers (~600 bytes each), for
    /// `ended_retention_ms` at most; the oldest go first. A participant that has not heard a
    /// cart's end can still ask while it is remembered; messages between shards are never
    /// dropped, so it hears within milliseconds unless its inbox stays full.
    pub carts_ended_max: usize,
    /// How long after a sale its units may still be returned (`ReturnSold`).
    pub return_window_ms: u64,
    /// The most sales one shard keeps returnable; the oldest go first. About 80 bytes each.
    pub returnable_entries_max: usize,
    /// Seeds the keys the shard's hash tables hash client-chosen ids (buyers, requests) with,
    /// so that no client can pick ids that collide. The runtime draws it once per data
    /// directory and keeps it in the log's metadata; tables are rebuilt on recovery, so the
    /// seed decides only where entries sit in memory, never what a snapshot holds.
    pub hash_seed: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            skus_max: 4_000_000,
            reservations_live_max: 4_000_000,
            dedup_retention_ms: 15 * 60 * 1000,
            dedup_entries_max: 2_000_000,
            rejection_cache_slots: 1 << 14,
            ended_retention_ms: 15 * 60 * 1000,
            ended_entries_max: 1_000_000,
            carts_ended_max: 200_000,
            return_window_ms: 30 * 24 * 60 * 60 * 1000,
            returnable_entries_max: 1_000_000,
            hash_seed: 0,
        }
    }
}

impl ShardConfig {
    /// Panics when a field is out of range; called once when a shard is built.
    pub fn validate(&self) {
        assert!(self.skus_max > 0, "skus_max must be positive");
        assert!(self.reservations_live_max > 0, "reservations_live_max must be positive");
        // Remembered answers are indexed by 32-bit wrapping ring positions.
        assert!(
            (1..1 << 31).contains(&self.dedup_entries_max),
            "dedup_entries_max must be in 1..2^31"
        );
        assert!(
            self.rejection_cache_slots.is_power_of_two(),
            "rejection_cache_slots must be a power of two"
        );
        assert!(self.ended_entries_max > 0, "ended_entries_max must be positive");
        assert!(self.returnable_entries_max > 0, "returnable_entries_max must be positive");
        assert!(self.carts_ended_max > 0, "carts_ended_max must be positive");
    }

    /// Slots a shard's reservation ring starts with: it spans the live reservations and the
    /// ended ones still remembered.
    pub(crate) fn reservation_slots_presized(&self) -> usize {
        self.reservations_live_max.saturating_add(self.ended_entries_max).min(PRESIZED_SLOTS_MAX)
    }

    /// Slots a shard's expiry queue starts with: one per live reservation.
    pub(crate) fn expiry_slots_presized(&self) -> usize {
        self.reservations_live_max.min(PRESIZED_SLOTS_MAX)
    }

    /// Slots a shard's queue of ended reservations starts with (one more than its bound: an
    /// end is queued before the oldest is forgotten).
    pub(crate) fn ended_slots_presized(&self) -> usize {
        self.ended_entries_max.saturating_add(1).min(PRESIZED_SLOTS_MAX)
    }
}
