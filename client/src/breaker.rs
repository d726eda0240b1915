//! A circuit breaker: after `failures_max` consecutive transport failures or timeouts, calls
//! fail fast with `CircuitOpen` for `open_ms`; then one probe call is let through, and its
//! success closes the circuit (its failure opens it again).
//!
//! A busy server (`Overloaded`) is not a failure here: it answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures so far.
    Closed {
        /// Failures in a row.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When a probe may go through.
        until: Instant,
    },
    /// One probe is in flight; other calls fail fast.
    HalfOpen,
}

/// The breaker. Cheap to consult on every call.
#[derive(Debug)]
pub struct Breaker {
    failures_max: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
    /// True while closed with no failures: the common case answers from one atomic load
    /// instead of a lock on every call.
    healthy: AtomicBool,
}

/// A call may not go through yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// How long until a probe may go through.
    pub retry_after: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures_max: u32, open_for: Duration) -> Breaker {
        Breaker {
            failures_max: failures_max.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where it stands now.
    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Whether a call may go through now; an open breaker past its time lets one probe through.
    pub fn allow(&self) -> Result<(), Refused> {
        if self.healthy.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::HalfOpen;
                    Ok(())
                } else {
                    Err(Refused { retry_after: until - now })
                }
            }
            BreakerState::HalfOpen => Err(Refused { retry_after: Duration::ZERO }),
        }
    }

    /// The server answered.
    pub fn succeeded(&self) {
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        *self.lock() = BreakerState::Closed { failures: 0 };
        self.healthy.store(true, Ordering::Release);
    }

    /// The transport failed or the call timed out.
    pub fn failed(&self) {
        let mut state = self.lock();
        self.healthy.store(false, Ordering::Release);
        let failures = match *state {
            BreakerState::Closed { failures } => failures + 1,
            BreakerState::Open { .. } | BreakerState::HalfOpen => self.failures_max,
        };
        *state = if failures >= self.failures_max {
            BreakerState::Open { until: Instant::now() + self.open_for }
        } else {
            BreakerState::Closed { failures }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_probe_closes_it() {
        let breaker = Breaker::new(3, Duration::from_millis(500));
        breaker.failed();
        breaker.failed();
        breaker.succeeded();
        breaker.failed();
        breaker.failed();
        assert!(breaker.allow().is_ok(), "two failures in a row: still closed");
        breaker.failed();
        let refused = breaker.allow().unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));

        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(breaker.allow().is_ok(), "one probe goes through");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allow().is_err(), "only one");
        breaker.failed();
        assert!(matches!(breaker.state(), BreakerState::Open { .. }), "a failed probe reopens");

        tokio::time::advance(Duration::from_millis(500)).await;
        breaker.allow().unwrap();
        breaker.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    }
}
