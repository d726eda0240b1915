//! Readiness as a set of named checks. A process registers each check as failing with the
//! reason ("recovering", "not listening yet"), and sets it as it starts, serves and stops; a
//! probe is a check computed when asked (the log's health, say). Ready means every check
//! passes.

use std::sync::{Arc, RwLock};

/// A check computed when readiness is asked.
pub type Probe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One named check's definition.
#[derive(Clone)]
enum Source {
    State(Result<(), String>),
    Probe(Probe),
}

/// One named check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Its name (`recovery`, `wal`, `quic`, `shutdown`, `stream`, `database`).
    pub name: &'static str,
    /// Passing, or why not.
    pub result: Result<(), String>,
}

/// A process's readiness checks.
#[derive(Default)]
pub struct Health {
    checks: RwLock<Vec<(&'static str, Source)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("checks", &self.checks()).finish()
    }
}

impl Health {
    /// A set with no checks: ready.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Sets (or adds) the check `name`.
    pub fn set(&self, name: &'static str, result: Result<(), String>) {
        self.put(name, Source::State(result));
    }

    /// Makes `name` a check computed by `probe` whenever readiness is asked.
    pub fn probe(&self, name: &'static str, probe: Probe) {
        self.put(name, Source::Probe(probe));
    }

    fn put(&self, name: &'static str, source: Source) {
        let mut checks = self.checks.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match checks.iter_mut().find(|(known, _)| *known == name) {
            Some(entry) => entry.1 = source,
            None => checks.push((name, source)),
        }
    }

    /// Every check, in the order they were first set.
    pub fn checks(&self) -> Vec<Check> {
        let checks = self.checks.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let evaluate = |(name, source): &(&'static str, Source)| Check {
            name,
            result: match source {
                Source::State(result) => result.clone(),
                Source::Probe(probe) => probe(),
            },
        };
        checks.iter().map(evaluate).collect()
    }

    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.checks().iter().all(|check| check.result.is_ok())
    }
}
