//! Memory per live reservation, counted by a wrapping global allocator: 1M reservations held
//! (1,000 SKUs, distinct buyers), bytes allocated divided by reservations.
//!
//! Reported twice: with the durable dedup answers the reserves leave behind (bounded by
//! `ShardConfig::dedup_entries_max` and `dedup_retention_ms`, not by live reservations), and
//! without them, which is the cost of the reservation itself (its record, its expiry entry and
//! its buyer's count).
//!
//! `cargo bench -p flashstock-bench --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use flashstock_bench::{commands, shards};
use flashstock_engine::{DiscardLog, ShardConfig};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// The only `unsafe` in the project: a global allocator must implement an unsafe trait. It
// forwards every call to the system allocator and only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESERVATIONS: u64 = 1_000_000;
const SKUS: u64 = 1_000;

fn bytes_per_reservation(config: ShardConfig) -> f64 {
    let mut shard = shards::stocked(SKUS, 1 << 30, config);
    let before = ALLOCATED.load(Ordering::Relaxed);
    for n in 0..RESERVATIONS {
        shard.apply(&commands::reserve(n, n % SKUS, 600_000), 1_000, &mut DiscardLog);
    }
    assert_eq!(shard.reservations_live() as u64, RESERVATIONS);
    let after = ALLOCATED.load(Ordering::Relaxed);
    (after - before) as f64 / RESERVATIONS as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let roomy = shards::roomy();
    let with_dedup = bytes_per_reservation(roomy);
    let without = bytes_per_reservation(ShardConfig { dedup_entries_max: 1, ..roomy });
    println!("{RESERVATIONS} live reservations over {SKUS} SKUs:");
    println!("  bytes per live reservation, reservation alone:        {without:.1} (goal <= 128)");
    println!("  bytes per live reservation, with its dedup answer:    {with_dedup:.1}");
    println!("  of which the dedup answer (bounded by count and age): {:.1}", with_dedup - without);
}
