//! The audit at the end of every run: the target's counts against each other and against
//! what this run saw acknowledged.
//!
//! Per SKU of the run:
//! - no oversell: `sold + reserved <= total`;
//! - conservation: `available + reserved + sold == total`;
//! - sold equals the units this run saw confirmed (plus at most the units of requests that
//!   failed without an answer, which may or may not have applied);
//! - held plus sold is what this run saw reserved minus what it saw cancelled, less what
//!   expired: exactly, when nothing can have expired yet; at most, otherwise.

use std::collections::BTreeMap;

use crate::run::Acked;
use crate::target::SkuCounts;

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it held for every SKU.
    pub passed: bool,
    /// The first SKU it failed for, with the figures compared.
    pub detail: String,
}

/// The audit of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// Every check held.
    pub passed: bool,
    /// Each check.
    pub checks: Vec<Check>,
    /// Sums over the run's SKUs: the target's counts...
    pub totals: SkuCounts,
    /// ...and what this run saw acknowledged.
    pub acked: Acked,
}

/// Audits `counts` against `acked`. `expiry_possible` says whether holds may have lapsed
/// before the counts were read (then held units may be fewer than acknowledged ones).
pub fn audit(counts: &[SkuCounts], acked: &BTreeMap<u64, Acked>, expiry_possible: bool) -> Audit {
    let mut checks = vec![
        check("no_oversell"),
        check("conservation"),
        check("sold_equals_confirmed"),
        check("held_matches_reserved"),
    ];
    let mut totals = SkuCounts::default();
    let mut acked_total = Acked::default();
    for c in counts {
        let a = acked.get(&c.sku).copied().unwrap_or_default();
        totals.total += c.total;
        totals.available += c.available;
        totals.reserved += c.reserved;
        totals.sold += c.sold;
        acked_total.reserved += a.reserved;
        acked_total.confirmed += a.confirmed;
        acked_total.cancelled += a.cancelled;
        acked_total.unknown += a.unknown;
        let taken = c.sold.checked_add(c.reserved);
        fail_if(&mut checks[0], taken.is_none_or(|t| t > c.total), || {
            format!("sku {}: sold {} + reserved {} > total {}", c.sku, c.sold, c.reserved, c.total)
        });
        let sum = c.available.checked_add(c.reserved).and_then(|s| s.checked_add(c.sold));
        fail_if(&mut checks[1], sum != Some(c.total), || {
            format!(
                "sku {}: available {} + reserved {} + sold {} != total {}",
                c.sku, c.available, c.reserved, c.sold, c.total
            )
        });
        let sold_ok = c.sold >= a.confirmed && c.sold <= a.confirmed + a.unknown;
        fail_if(&mut checks[2], !sold_ok, || {
            format!(
                "sku {}: sold {} but {} confirmed (+{} unknown)",
                c.sku, c.sold, a.confirmed, a.unknown
            )
        });
        let expected = a.reserved.saturating_sub(a.cancelled);
        let held = c.reserved.saturating_add(c.sold);
        let held_ok = if expiry_possible {
            held <= expected + a.unknown
        } else {
            held >= expected && held <= expected + a.unknown
        };
        fail_if(&mut checks[3], !held_ok, || {
            format!(
                "sku {}: reserved {} + sold {} vs {} reserved - {} cancelled (+{} unknown{})",
                c.sku,
                c.reserved,
                c.sold,
                a.reserved,
                a.cancelled,
                a.unknown,
                if expiry_possible { ", some may have expired" } else { "" }
            )
        });
    }
    let passed = checks.iter().all(|c| c.passed);
    Audit { passed, checks, totals, acked: acked_total }
}

impl Audit {
    /// Adds a check made elsewhere (the order database's rows).
    pub fn add(&mut self, check: Check) {
        self.passed &= check.passed;
        self.checks.push(check);
    }
}

fn check(name: &'static str) -> Check {
    Check { name, passed: true, detail: String::new() }
}

fn fail_if(check: &mut Check, failed: bool, detail: impl FnOnce() -> String) {
    if failed && check.passed {
        check.passed = false;
        check.detail = detail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(total: u64, available: u64, reserved: u64, sold: u64) -> SkuCounts {
        SkuCounts { sku: 7, total, available, reserved, sold }
    }

    fn acked(reserved: u64, confirmed: u64, cancelled: u64) -> BTreeMap<u64, Acked> {
        BTreeMap::from([(7, Acked { reserved, confirmed, cancelled, unknown: 0 })])
    }

    #[test]
    fn a_consistent_run_passes_and_every_kind_of_damage_fails() {
        assert!(audit(&[sku(10, 2, 3, 5)], &acked(9, 5, 1), false).passed);
        let failed = |counts, acked, expiry| {
            let audit = audit(&[counts], &acked, expiry);
            assert!(!audit.passed);
            audit.checks.into_iter().filter(|c| !c.passed).map(|c| c.name).collect::<Vec<_>>()
        };
        // An oversold SKU: more sold than it ever had.
        assert!(failed(sku(10, 0, 3, 8), acked(11, 8, 0), false).contains(&"no_oversell"));
        assert_eq!(failed(sku(10, 3, 3, 5), acked(9, 5, 1), false), ["conservation"]);
        assert!(failed(sku(10, 2, 3, 5), acked(9, 4, 1), false).contains(&"sold_equals_confirmed"));
        assert_eq!(failed(sku(10, 3, 2, 5), acked(9, 5, 1), false), ["held_matches_reserved"]);
        // Fewer held than acknowledged is fine only when holds may have expired.
        assert!(audit(&[sku(10, 3, 2, 5)], &acked(9, 5, 1), true).passed);
    }
}
