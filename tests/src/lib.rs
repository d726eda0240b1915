//! Helpers shared by flashstock's integration tests and the crash-test child process.
//!
//! - [`Rng`]: a tiny seeded generator, so every random choice a test makes replays from the
//!   seed it prints.
//! - [`states`]: the text form of reservation states the child prints and the parent parses.
//! - [`hot`]: the crash test's hot SKU, spread over buckets.
//! - [`server`]: [`server::TestServer`], an in-process server on loopback QUIC.
//! - [`proxy`]: [`proxy::UdpProxy`], a forwarder that can black-hole either direction, and
//!   [`proxy::TcpProxy`], one that can cut its connections (a database going away).

pub mod proxy;
pub mod server;

/// SplitMix64: small, fast, and good enough to pick test inputs from a seed.
#[derive(Clone, Debug)]
pub struct Rng {
    state: flashstock_engine::SplitMix64,
}

impl Rng {
    /// A generator that replays from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: flashstock_engine::SplitMix64::new(seed) }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state.next_u64()
    }

    /// A number in `range` (which must not be empty).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// A seed from the time, for runs that should differ; tests print it so a failure replays.
    pub fn seed_from_time() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }
}

/// The text form of reservation states shared by the crash child and its parent.
/// The crash test's hot SKU, spread over both shards' buckets (docs/hot-skus.md): the child
/// loads it, and the parent checks its total.
pub mod hot {
    /// Its id.
    pub const SKU: u64 = 15;
    /// Its first stock: small, so that its buckets drain and stock moves between them.
    pub const UNITS: u64 = 300;
    /// Units of each of its restocks.
    pub const RESTOCK_UNITS: u64 = 10;
}

pub mod states {
    use flashstock_engine::ReservationState;

    /// One word per state.
    pub fn name(state: Option<ReservationState>) -> &'static str {
        state.map_or("missing", ReservationState::name)
    }
}
