//! The process's one Prometheus recorder.
//!
//! Every histogram is exported as a Prometheus histogram with explicit buckets (not a
//! summary), so that percentiles can be aggregated across servers and over time. Samples wait
//! in the exporter's buckets until the next scrape or upkeep; upkeep runs every
//! [`UPKEEP_INTERVAL_MS`], so a server nobody scrapes holds at most that long's samples.

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ObserveError;

/// Buckets of every `_seconds` histogram: 50 µs (a sync of this machine's disk is ~230 µs) to
/// 10 s (a snapshot of hundreds of MB).
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of histograms that count things (jobs per shard step, records per sync): powers of
/// two up to a shard step's most, 4,096.
pub const COUNT_BUCKETS: [f64; 13] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// How often recorded histogram samples are folded into their buckets when nobody scrapes.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs flashstock's Prometheus recorder as the process's metrics recorder, once; later
/// calls (several servers in one test process) get the same handle. Metrics recorded before
/// the first call are lost: install before building what records.
pub fn install() -> Result<PrometheusHandle, ObserveError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let exporter =
        |err: metrics_exporter_prometheus::BuildError| ObserveError::Exporter(err.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(exporter)?
        .set_buckets(&COUNT_BUCKETS)
        .map_err(exporter)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| ObserveError::RecorderTaken)?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(UPKEEP_INTERVAL_MS));
            upkeep.run_upkeep();
        })
        .expect("spawning the metrics upkeep thread");
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Sets `flashstock_build_info{component, version} 1`: which build of which part is running,
/// for dashboards to join on and for an operator checking a rollout.
pub fn build_info(component: &'static str, version: &'static str) {
    metrics::describe_gauge!(
        "flashstock_build_info",
        "Always 1; its labels say which component and version is running."
    );
    metrics::gauge!("flashstock_build_info", "component" => component, "version" => version)
        .set(1.0);
}
