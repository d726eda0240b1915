//! What a run leaves behind: a summary table, an `.hgrm` percentile file, SVG plots (the
//! latency percentile spectrum; throughput and p99 over time) and a JSON result.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::json;

use crate::audit::Audit;
use crate::run::{RunResult, TimelinePoint};
use crate::target::LoadError;

/// A finished run and its audit, ready to report.
#[derive(Debug)]
pub struct Report<'a> {
    /// `flashstock` or `redis`.
    pub target: &'a str,
    /// What the target is and how it persists.
    pub target_detail: &'a str,
    /// The scenario's name.
    pub scenario: &'a str,
    /// The run's figures.
    pub result: &'a RunResult,
    /// Its audit.
    pub audit: &'a Audit,
    /// The settings, for the JSON.
    pub settings: serde_json::Value,
}

/// Latency percentiles, in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 5] {
    [
        ("p50", h.value_at_quantile(0.50)),
        ("p90", h.value_at_quantile(0.90)),
        ("p99", h.value_at_quantile(0.99)),
        ("p999", h.value_at_quantile(0.999)),
        ("max", h.max()),
    ]
}

impl Report<'_> {
    /// Requests per second over the measured period.
    pub fn ops_per_s(&self) -> f64 {
        self.result.ops_total as f64 / self.result.elapsed_s
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let r = self.result;
        let _ = writeln!(out, "target    {} — {}", self.target, self.target_detail);
        let _ = writeln!(out, "scenario  {}", self.scenario);
        let _ = writeln!(
            out,
            "requests  {} in {:.2} s = {:.0} req/s (warm-up excluded)",
            r.ops_total,
            r.elapsed_s,
            self.ops_per_s()
        );
        let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "outcomes  {}", outcomes.join(", "));
        let latency: Vec<String> = percentiles(&r.latency_us)
            .iter()
            .map(|(name, us)| format!("{name} {:.3} ms", *us as f64 / 1000.0))
            .collect();
        let _ = writeln!(out, "latency   {}", latency.join(", "));
        let a = self.audit;
        let _ = writeln!(
            out,
            "stock     total {}, available {}, reserved {}, sold {}; this run saw reserved {}, \
             confirmed {}, cancelled {}, unanswered {}",
            a.totals.total,
            a.totals.available,
            a.totals.reserved,
            a.totals.sold,
            a.acked.reserved,
            a.acked.confirmed,
            a.acked.cancelled,
            a.acked.unknown
        );
        for check in &a.checks {
            let verdict = if check.passed { "ok" } else { "FAILED" };
            let _ = writeln!(out, "  {:<24} {verdict} {}", check.name, check.detail);
        }
        let _ = writeln!(out, "audit     {}", if a.passed { "PASS" } else { "FAIL" });
        out
    }

    /// The machine-readable result.
    pub fn json(&self) -> serde_json::Value {
        let r = self.result;
        let latency: serde_json::Map<String, serde_json::Value> =
            percentiles(&r.latency_us).iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let checks: serde_json::Map<String, serde_json::Value> = self
            .audit
            .checks
            .iter()
            .map(|c| (c.name.to_owned(), json!({"passed": c.passed, "detail": c.detail})))
            .collect();
        let t = &self.audit.totals;
        let a = &self.audit.acked;
        json!({
            "target": self.target,
            "target_detail": self.target_detail,
            "scenario": self.scenario,
            "ops_total": r.ops_total,
            "ops_per_s": self.ops_per_s(),
            "elapsed_s": r.elapsed_s,
            "outcomes": r.outcomes,
            "latency_us": latency,
            "timeline_bucket_ms": r.timeline_bucket_ms,
            "timeline": r.timeline.iter().map(|p| json!({"start_s": p.start_s, "ops_per_s": p.ops_per_s, "p99_us": p.p99_us})).collect::<Vec<_>>(),
            "audit": {
                "passed": self.audit.passed,
                "checks": checks,
                "server": {"total": t.total, "available": t.available, "reserved": t.reserved, "sold": t.sold},
                "acknowledged": {"reserved": a.reserved, "confirmed": a.confirmed, "cancelled": a.cancelled, "unanswered": a.unknown},
            },
            "settings": self.settings,
        })
    }

    /// Writes the JSON result to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadError> {
        let text = serde_json::to_string_pretty(&self.json()).expect("JSON values serialise");
        write(path, text.as_bytes())
    }

    /// Writes `<prefix>.hgrm`, `<prefix>-latency.svg` and `<prefix>-timeline.svg`.
    pub fn write_files(&self, prefix: &Path) -> Result<(), LoadError> {
        write(&with_suffix(prefix, ".hgrm"), hgrm(&self.result.latency_us).as_bytes())?;
        let spectrum = with_suffix(prefix, "-latency.svg");
        plot_spectrum(&self.result.latency_us, &spectrum, self.target)
            .map_err(|detail| LoadError::File { path: spectrum.clone(), detail })?;
        let timeline = with_suffix(prefix, "-timeline.svg");
        plot_timeline(self.result, &timeline, self.target)
            .map_err(|detail| LoadError::File { path: timeline.clone(), detail })?;
        Ok(())
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|err| LoadError::File { path: dir.to_path_buf(), detail: err.to_string() })?;
    }
    std::fs::write(path, bytes)
        .map_err(|err| LoadError::File { path: path.to_path_buf(), detail: err.to_string() })
}

/// HdrHistogram's percentile distribution text (values in milliseconds), the format its
/// plotter and wrk2 use.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0;
    for v in h.iter_quantiles(1) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { String::new() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {inverse}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

fn plot_spectrum(h: &Histogram<u64>, path: &Path, target: &str) -> Result<(), String> {
    // x: "nines" (-log10(1 - q)): 1 = p90, 2 = p99, 3 = p99.9.
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(2)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| (-(1.0 - v.quantile_iterated_to()).log10(), v.value_iterated_to() as f64 / 1000.0))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0f64, f64::max).min(6.0);
    let y_max = (h.max() as f64 / 1000.0).max(0.001) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{target}: latency by percentile"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-x))))
        .draw()
        .map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(points, &BLUE)).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn plot_timeline(result: &RunResult, path: &Path, target: &str) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(300);
    let (timeline, width_s) = (&result.timeline, result.timeline_bucket_ms as f64 / 1e3);
    let seconds = (timeline.len() as f64 * width_s).max(width_s);
    let ops_max = timeline.iter().map(|p| p.ops_per_s).fold(1.0, f64::max) * 1.1;
    let p99_max = timeline.iter().map(|p| p.p99_us).max().unwrap_or(1).max(1) as f64 / 1e3 * 1.1;
    let middle = |p: &TimelinePoint| p.start_s + width_s / 2.0;
    let ops: Vec<(f64, f64)> = timeline.iter().map(|p| (middle(p), p.ops_per_s)).collect();
    line_chart(&top, &format!("{target}: requests/s"), seconds, ops_max, ops, &BLUE)?;
    let p99: Vec<(f64, f64)> =
        timeline.iter().map(|p| (middle(p), p.p99_us as f64 / 1e3)).collect();
    let caption = format!("{target}: p99 latency (ms) per {} ms", result.timeline_bucket_ms);
    line_chart(&bottom, &caption, seconds, p99_max, p99, &RED)?;
    root.present().map_err(|e| e.to_string())
}

/// One line over seconds `0..seconds`, values `0..y_max`, on `area`.
fn line_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    seconds: f64,
    y_max: f64,
    points: Vec<(f64, f64)>,
    color: &RGBColor,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("s").draw().map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(points, color)).map_err(|e| e.to_string())?;
    Ok(())
}
