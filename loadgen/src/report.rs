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
#[derive(Clone, Debug, Default)]
pub struct Slo {
    /// Largest acceptable p99s: for one operation (`Some("lookup")`), or for every operation
    /// (`None`). A per-operation limit lets a run hold reads to 1 ms while writes, which wait
    /// for an fsync, get a budget of their own.
    pub max_p99: Vec<(Option<String>, Duration)>,
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
    /// With several servers: per server, per operation, and the server's failed requests.
    per_node: BTreeMap<String, (BTreeMap<&'static str, Histogram<u64>>, u64)>,
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
            per_node: BTreeMap::new(),
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

    /// As [`Report::record`], for a request sent to the server `node` of several: counted in
    /// the whole and in that server's own part.
    pub fn record_at(
        &mut self,
        node: &str,
        op: &'static str,
        latency: Duration,
        error: Option<String>,
    ) {
        let n = self.per_node.entry(node.to_owned()).or_default();
        if error.is_some() {
            n.1 += 1;
        } else {
            let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
            let _ = n.0.entry(op).or_insert_with(histogram).record(us);
        }
        self.record(op, latency, error);
    }

    /// The `q` quantile of `op` at the server `node`, in microseconds.
    pub fn node_percentile_us(&self, node: &str, op: &str, q: f64) -> Option<u64> {
        let h = self.per_node.get(node)?.0.get(op)?;
        (!h.is_empty()).then(|| h.value_at_quantile(q))
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

    /// A percentile of one operation, in microseconds.
    pub fn percentile_us(&self, op: &str, q: f64) -> Option<u64> {
        self.per_op.get(op).map(|h| h.value_at_quantile(q))
    }

    /// The SLOs this run broke, each said plainly. A limit on an operation the run never
    /// answered is broken too: a run in which every lookup failed must not pass a lookup SLO.
    pub fn violations(&self, slo: &Slo) -> Vec<String> {
        let mut v = Vec::new();
        for (op, max) in &slo.max_p99 {
            let max_us = max.as_micros() as u64;
            match op {
                None => {
                    for (op, h) in &self.per_op {
                        let p99 = h.value_at_quantile(0.99);
                        if p99 > max_us {
                            v.push(format!("{op} p99 {p99} µs is over the limit {max:?}"));
                        }
                    }
                }
                Some(op) => match self.percentile_us(op, 0.99) {
                    Some(p99) if p99 > max_us => {
                        v.push(format!("{op} p99 {p99} µs is over the limit {max:?}"));
                    }
                    Some(_) => {}
                    None => v.push(format!("{op}: no request answered, so no p99 to hold")),
                },
            }
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
        if self.per_node.len() > 1 {
            s.push_str("per server:\n");
            for (node, (ops, failed)) in &self.per_node {
                for (op, h) in ops {
                    s.push_str(&format!(
                        "  {node:<21} {op:<12} {:>9} p50 {:>7} p99 {:>7} (µs)\n",
                        h.len(),
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99),
                    ));
                }
                s.push_str(&format!("  {node:<21} failed {failed}\n"));
            }
        }
        s
    }

    /// The JSON document (`"version": 1`).
    pub fn json(&self) -> serde_json::Value {
        let ops = ops_json(&self.per_op);
        let per_node: serde_json::Map<String, serde_json::Value> = self
            .per_node
            .iter()
            .map(|(node, (ops, failed))| {
                (
                    node.clone(),
                    json!({"ops": ops_json(ops), "failed": failed}),
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
            "per_server": per_node,
        })
    }
}

/// Each operation's count and percentiles, as JSON.
fn ops_json(
    per_op: &BTreeMap<&'static str, Histogram<u64>>,
) -> serde_json::Map<String, serde_json::Value> {
    per_op
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("open", 300, 1.0);
        for i in 0..100 {
            r.record("lookup", Duration::from_micros(100 + i), None);
            r.record("link", Duration::from_micros(2_000 + i), None);
        }
        r.record("lookup", Duration::from_micros(50), Some("BUSY".into()));
        r
    }

    /// A limit for every operation catches the slow writes; a per-operation limit holds reads
    /// alone; an operation with no answer breaks its limit; the error rate counts refusals.
    #[test]
    fn slo_limits_apply_to_all_or_one_operation() {
        let r = report();
        let ms = Duration::from_millis(1);
        let all = r.violations(&Slo {
            max_p99: vec![(None, ms)],
            max_error_rate: None,
        });
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("link p99"), "{all:?}");
        let reads = Slo {
            max_p99: vec![(Some("lookup".into()), ms), (Some("link".into()), 3 * ms)],
            max_error_rate: Some(0.01),
        };
        assert!(
            r.violations(&reads).is_empty(),
            "{:?}",
            r.violations(&reads)
        );
        let tight = Slo {
            max_p99: vec![(Some("lookup".into()), Duration::from_micros(150))],
            max_error_rate: Some(0.001),
        };
        let broken = r.violations(&tight);
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[1].starts_with("error rate 0.0050"), "{broken:?}");
        let missing = r.violations(&Slo {
            max_p99: vec![(Some("card-lookup".into()), ms)],
            max_error_rate: None,
        });
        assert_eq!(missing.len(), 1, "{missing:?}");
    }

    /// With several servers, each has its own latencies and failures, and the whole holds
    /// them all.
    #[test]
    fn a_run_over_several_servers_reports_each() {
        let mut r = Report::new("open", 30, 1.0);
        for i in 0..10 {
            r.record_at("a:1", "lookup", Duration::from_micros(100 + i), None);
            r.record_at("b:2", "lookup", Duration::from_micros(900 + i), None);
        }
        r.record_at(
            "b:2",
            "lookup",
            Duration::from_micros(5),
            Some("NO_WRITER".into()),
        );
        assert_eq!((r.ok(), r.failed()), (20, 1));
        let (a, b) = (
            r.node_percentile_us("a:1", "lookup", 0.99).expect("a"),
            r.node_percentile_us("b:2", "lookup", 0.99).expect("b"),
        );
        assert!(a < 200 && b > 800, "{a} {b}");
        let p99 = r.percentile_us("lookup", 0.99).expect("whole");
        assert!(p99 > 800, "the whole holds the slow server: {p99}");
        let j = r.json();
        assert_eq!(j["per_server"]["a:1"]["ops"]["lookup"]["count"], 10);
        assert_eq!(j["per_server"]["b:2"]["failed"], 1);
        let h = r.human();
        assert!(
            h.contains("per server:") && h.contains("b:2") && h.contains("failed 1"),
            "{h}"
        );
    }
}
