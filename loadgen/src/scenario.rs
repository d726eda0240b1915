//! Scenarios: which SKUs a run sets up, and which reserves its buyers send.
//!
//! Every run works on SKUs of its own (numbered from a per-run base), so runs against the
//! same server never disturb each other.

use flashstock_engine::{Lines, SkuId, CART_LINES_MAX};

/// The seeded generator every random choice comes from (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(flashstock_engine::SplitMix64);

impl Rng {
    /// A generator replaying from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(flashstock_engine::SplitMix64::new(seed))
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a run does.
#[derive(Clone, Debug, PartialEq)]
pub enum Scenario {
    /// One hot SKU with `units` in stock; `buyers` distinct buyers race, one unit each.
    FlashSale {
        /// Units in stock.
        units: u64,
        /// Distinct buyers (the run's request count when no duration is set).
        buyers: u64,
        /// The most units one buyer may hold plus buy, if limited.
        buyer_limit: Option<u32>,
        /// flashstock: spread the SKU over this many buckets on as many shards
        /// (docs/hot-skus.md); a Redis target ignores it.
        buckets: Option<u32>,
    },
    /// `skus` SKUs with `units_per_sku` each; each request picks a SKU with Zipf skew `skew`.
    Zipf {
        /// SKUs.
        skus: u64,
        /// Units in stock per SKU.
        units_per_sku: u64,
        /// Zipf exponent (0 = uniform, 1 = classic Zipf).
        skew: f64,
    },
    /// Carts of 1 to `lines_max` distinct SKUs, each picked with Zipf skew `skew` over
    /// `skus`, one unit a line; then, as in `Checkout`, think, confirm or cancel, or abandon.
    Cart {
        /// SKUs.
        skus: u64,
        /// Units in stock per SKU.
        units_per_sku: u64,
        /// Zipf exponent of the SKU draws.
        skew: f64,
        /// The most lines of one cart.
        lines_max: usize,
        /// How many distinct buyers the carts come from (a store's customers); `None`: a new
        /// buyer for every cart. The server keeps what each buyer bought of each SKU (for
        /// limits), so this population bounds that memory and an endless one does not.
        buyers: Option<u64>,
        /// The chance a held cart is paid.
        confirm_probability: f64,
        /// The chance a held cart is abandoned (left to expire).
        abandon_fraction: f64,
        /// How long a buyer thinks before paying, in ms.
        think_ms: u64,
    },
    /// Reserve, think, then confirm with probability `confirm_probability`, else cancel; a
    /// fraction `abandon_fraction` of holds is left to expire.
    Checkout {
        /// SKUs (spread uniformly).
        skus: u64,
        /// Units in stock per SKU.
        units_per_sku: u64,
        /// The chance a held reservation is paid.
        confirm_probability: f64,
        /// The chance a held reservation is abandoned (neither confirmed nor cancelled).
        abandon_fraction: f64,
        /// How long a buyer thinks before paying, in ms.
        think_ms: u64,
    },
}

/// One SKU a run sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkuSetup {
    /// The SKU id.
    pub sku: u64,
    /// Units in stock.
    pub units: u64,
    /// The per-buyer limit, if any.
    pub buyer_limit: Option<u32>,
    /// flashstock: the buckets to spread it over, if any.
    pub buckets: Option<u32>,
}

/// One reserve a buyer sends: one line, or a cart of several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveOp {
    /// The buyer.
    pub buyer: u64,
    /// What is held: one line for a plain reserve.
    pub lines: Lines,
    /// Whether it is sent as a cart (the cart scenario's carts of one line too).
    pub cart: bool,
    /// The hold's time to live.
    pub ttl_ms: u64,
}

impl ReserveOp {
    /// A plain reserve of `qty` units of `sku`.
    pub fn one(buyer: u64, sku: u64, qty: u32, ttl_ms: u64) -> ReserveOp {
        let lines = Lines::numbered([(SkuId(sku), qty)]).expect("one line");
        ReserveOp { buyer, lines, cart: false, ttl_ms }
    }

    /// Its lines as (SKU, units).
    pub fn units(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.lines.as_slice().iter().map(|line| (line.sku.0, line.qty))
    }
}

/// What a buyer does with a held reservation (checkout only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Pays: confirm.
    Confirm,
    /// Gives up: cancel.
    Cancel,
    /// Walks away: the hold expires.
    Abandon,
}

impl Scenario {
    /// The scenario's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::FlashSale { .. } => "flash-sale",
            Scenario::Zipf { .. } => "zipf",
            Scenario::Checkout { .. } => "checkout",
            Scenario::Cart { .. } => "cart",
        }
    }

    /// The SKUs to set up, numbered from `base`.
    pub fn skus(&self, base: u64) -> Vec<SkuSetup> {
        match *self {
            Scenario::FlashSale { units, buyer_limit, buckets, .. } => {
                vec![SkuSetup { sku: base, units, buyer_limit, buckets }]
            }
            Scenario::Zipf { skus, units_per_sku, .. }
            | Scenario::Cart { skus, units_per_sku, .. }
            | Scenario::Checkout { skus, units_per_sku, .. } => (0..skus)
                .map(|i| SkuSetup {
                    sku: base + i,
                    units: units_per_sku,
                    buyer_limit: None,
                    buckets: None,
                })
                .collect(),
        }
    }

    /// How many requests a run without a duration sends.
    pub fn default_requests(&self) -> u64 {
        match *self {
            Scenario::FlashSale { buyers, .. } => buyers,
            Scenario::Zipf { .. } | Scenario::Checkout { .. } | Scenario::Cart { .. } => 100_000,
        }
    }

    /// Whether a hold may be settled (checkout) or is kept until the run ends.
    pub fn settles(&self) -> bool {
        matches!(self, Scenario::Checkout { .. } | Scenario::Cart { .. })
    }

    /// What to do with a held reservation.
    pub fn settle(&self, rng: &mut Rng) -> Settle {
        let (Scenario::Checkout { confirm_probability, abandon_fraction, .. }
        | Scenario::Cart { confirm_probability, abandon_fraction, .. }) = *self
        else {
            return Settle::Abandon;
        };
        let draw = rng.unit();
        if draw < abandon_fraction {
            Settle::Abandon
        } else if rng.unit() < confirm_probability {
            Settle::Confirm
        } else {
            Settle::Cancel
        }
    }

    /// How long a buyer thinks before settling.
    pub fn think_ms(&self) -> u64 {
        match *self {
            Scenario::Checkout { think_ms, .. } | Scenario::Cart { think_ms, .. } => think_ms,
            _ => 0,
        }
    }
}

/// Draws the requests of a scenario: the n-th request of the run (n counts from 0).
#[derive(Clone, Debug)]
pub struct Workload {
    scenario: Scenario,
    base: u64,
    ttl_ms: u64,
    /// Zipf: the cumulative distribution over SKU ranks.
    cdf: Vec<f64>,
}

impl Workload {
    /// The workload of `scenario` on the SKUs numbered from `base`, holds lasting `ttl_ms`.
    pub fn new(scenario: Scenario, base: u64, ttl_ms: u64) -> Workload {
        let cdf = match scenario {
            Scenario::Zipf { skus, skew, .. } | Scenario::Cart { skus, skew, .. } => {
                let weights: Vec<f64> =
                    (1..=skus).map(|rank| 1.0 / (rank as f64).powf(skew)).collect();
                let total: f64 = weights.iter().sum();
                let mut running = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        running += w / total;
                        running
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Workload { scenario, base, ttl_ms, cdf }
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The n-th reserve.
    pub fn reserve(&self, n: u64, rng: &mut Rng) -> ReserveOp {
        let sku = match self.scenario {
            Scenario::FlashSale { .. } => self.base,
            Scenario::Zipf { .. } => self.zipf_sku(rng),
            Scenario::Checkout { skus, .. } => self.base + rng.next_u64() % skus,
            Scenario::Cart { lines_max, buyers, .. } => return self.cart(lines_max, buyers, rng),
        };
        let buyer = match self.scenario {
            // Each flash-sale buyer tries once (a run longer than the crowd cycles through it).
            Scenario::FlashSale { buyers, .. } => n % buyers.max(1),
            _ => rng.next_u64() >> 1,
        };
        ReserveOp::one(buyer, sku, 1, self.ttl_ms)
    }

    fn zipf_sku(&self, rng: &mut Rng) -> u64 {
        let draw = rng.unit();
        let rank = self.cdf.partition_point(|&c| c < draw).min(self.cdf.len() - 1);
        self.base + rank as u64
    }

    /// A cart of 1 to `lines_max` distinct Zipf-drawn SKUs, one unit each (a draw that
    /// repeats a SKU already in the cart is dropped, so hot SKUs make carts a little shorter).
    fn cart(&self, lines_max: usize, buyers: Option<u64>, rng: &mut Rng) -> ReserveOp {
        let wanted = 1 + (rng.next_u64() % lines_max.clamp(1, CART_LINES_MAX) as u64) as usize;
        let mut skus: Vec<u64> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 2 {
            let sku = self.zipf_sku(rng);
            if !skus.contains(&sku) {
                skus.push(sku);
            }
            if skus.len() == wanted {
                break;
            }
        }
        let lines = Lines::numbered(skus.into_iter().map(|sku| (SkuId(sku), 1))).expect("<= 16");
        let buyer = match buyers {
            Some(buyers) => rng.next_u64() % buyers.max(1),
            None => rng.next_u64() >> 1,
        };
        ReserveOp { buyer, lines, cart: true, ttl_ms: self.ttl_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_skus_and_stays_in_range() {
        let workload =
            Workload::new(Scenario::Zipf { skus: 100, units_per_sku: 1, skew: 1.0 }, 1_000, 60_000);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u32; 100];
        for n in 0..100_000 {
            let op = workload.reserve(n, &mut rng);
            counts[(op.lines.as_slice()[0].sku.0 - 1_000) as usize] += 1;
        }
        // Rank 1 gets about 1/H(100) = 19% of draws; rank 100 about 0.19%.
        assert!((17_000..21_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[99] < 500 && counts[0] > 8 * counts[9], "{counts:?}");
    }

    #[test]
    fn checkout_settles_in_the_asked_proportions() {
        let scenario = Scenario::Checkout {
            skus: 1,
            units_per_sku: 1,
            confirm_probability: 0.75,
            abandon_fraction: 0.2,
            think_ms: 0,
        };
        let mut rng = Rng::new(1);
        let (mut confirm, mut cancel, mut abandon) = (0, 0, 0);
        for _ in 0..100_000 {
            match scenario.settle(&mut rng) {
                Settle::Confirm => confirm += 1,
                Settle::Cancel => cancel += 1,
                Settle::Abandon => abandon += 1,
            }
        }
        assert!((19_000..21_000).contains(&abandon), "{abandon}");
        assert!((58_000..62_000).contains(&confirm), "{confirm}");
        assert!((19_000..21_000).contains(&cancel), "{cancel}");
    }
}
