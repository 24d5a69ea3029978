//! What a run measured: HDR histograms of latency per operation (p50, p90, p99, p99.9, max),
//! achieved against scheduled rate, errors by class, and SLO verdicts; as a human summary or a
//! versioned JSON document. A refused or dropped request is an error of its class, never a
//! success. Owns no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Version of the JSON report.
pub const REPORT_VERSION: u32 = 1;
/// Largest latency recorded exactly, in microseconds (larger ones saturate here): 1 hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Service-level objectives that make the exit status non-zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slo {
    /// Largest acceptable p99, over every operation.
    pub max_p99: Option<Duration>,
    /// Largest acceptable share of failed requests (0.01 = 1 %).
    pub max_error_rate: Option<f64>,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// `open` or `closed`.
    pub mode: &'static str,
    per_op: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// Requests in the schedule.
    pub scheduled: u64,
    /// Seconds the schedule spans (after the speed factor).
    pub scheduled_secs: f64,
    /// Seconds the run took.
    pub elapsed_secs: f64,
    /// Time until every terminal had connected.
    pub connect_secs: f64,
    /// Terminals connected.
    pub terminals: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

impl Report {
    /// An empty report.
    pub fn new(mode: &'static str, scheduled: u64, scheduled_secs: f64) -> Self {
        Self {
            mode,
            per_op: BTreeMap::new(),
            errors: BTreeMap::new(),
            scheduled,
            scheduled_secs,
            elapsed_secs: 0.0,
            connect_secs: 0.0,
            terminals: 0,
        }
    }

    /// Records one request: its latency (from its scheduled start in open loop) and, if it
    /// failed, its error class.
    pub fn record(&mut self, op: &'static str, latency: Duration, error: Option<String>) {
        match error {
            None => {
                let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
                let _ = self.per_op.entry(op).or_insert_with(histogram).record(us);
            }
            Some(class) => *self.errors.entry(class).or_insert(0) += 1,
        }
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.per_op.values().map(Histogram::len).sum()
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The share of requests that failed.
    pub fn error_rate(&self) -> f64 {
        let all = self.ok() + self.failed();
        if all == 0 {
            0.0
        } else {
            self.failed() as f64 / all as f64
        }
    }

    /// The highest p99 over all operations.
    pub fn worst_p99(&self) -> Duration {
        let us = self
            .per_op
            .values()
            .map(|h| h.value_at_quantile(0.99))
            .max()
            .unwrap_or(0);
        Duration::from_micros(us)
    }

    /// A percentile of one operation, in microseconds.
    pub fn percentile_us(&self, op: &str, q: f64) -> Option<u64> {
        self.per_op.get(op).map(|h| h.value_at_quantile(q))
    }

    /// The SLOs this run broke, each said plainly.
    pub fn violations(&self, slo: &Slo) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(max) = slo.max_p99
            && self.worst_p99() > max
        {
            v.push(format!(
                "p99 {:?} is over the limit {max:?}",
                self.worst_p99()
            ));
        }
        if let Some(max) = slo.max_error_rate
            && self.error_rate() > max
        {
            v.push(format!(
                "error rate {:.4} is over the limit {max:.4}",
                self.error_rate()
            ));
        }
        v
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = format!(
            "mykey-load {} loop: {} scheduled over {:.1} s; {} ok, {} failed in {:.1} s\n",
            self.mode,
            self.scheduled,
            self.scheduled_secs,
            self.ok(),
            self.failed(),
            self.elapsed_secs
        );
        s.push_str(&format!(
            "rate: scheduled {:.0}/s, achieved {:.0}/s; {} terminals connected in {:.2} s\n",
            self.scheduled as f64 / self.scheduled_secs.max(1e-9),
            (self.ok() + self.failed()) as f64 / self.elapsed_secs.max(1e-9),
            self.terminals,
            self.connect_secs
        ));
        s.push_str("op              count      p50      p90      p99    p99.9      max  (µs)\n");
        for (op, h) in &self.per_op {
            s.push_str(&format!(
                "{op:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
        for (class, n) in &self.errors {
            s.push_str(&format!("error {class}: {n}\n"));
        }
        s
    }

    /// The JSON document (`"version": 1`).
    pub fn json(&self) -> serde_json::Value {
        let ops: serde_json::Map<String, serde_json::Value> = self
            .per_op
            .iter()
            .map(|(op, h)| {
                (
                    (*op).to_owned(),
                    json!({
                        "count": h.len(),
                        "p50_us": h.value_at_quantile(0.5),
                        "p90_us": h.value_at_quantile(0.9),
                        "p99_us": h.value_at_quantile(0.99),
                        "p999_us": h.value_at_quantile(0.999),
                        "max_us": h.max(),
                    }),
                )
            })
            .collect();
        json!({
            "version": REPORT_VERSION,
            "mode": self.mode,
            "scheduled": self.scheduled,
            "scheduled_secs": self.scheduled_secs,
            "elapsed_secs": self.elapsed_secs,
            "ok": self.ok(),
            "failed": self.failed(),
            "error_rate": self.error_rate(),
            "scheduled_rate": self.scheduled as f64 / self.scheduled_secs.max(1e-9),
            "achieved_rate": (self.ok() + self.failed()) as f64 / self.elapsed_secs.max(1e-9),
            "terminals": self.terminals,
            "connect_secs": self.connect_secs,
            "ops": ops,
            "errors": self.errors,
        })
    }
}
