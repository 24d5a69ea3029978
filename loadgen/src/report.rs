//! What a run measured: HDR histograms of latency per operation (p50, p90, p99, p99.9, max),
//! achieved against scheduled rate, errors by class, the same over time (series of fixed-width
//! time buckets), and SLO verdicts; as a human summary or a versioned JSON document, beside
//! the floor run's when there is one. A refused or dropped request is an error of its class,
//! never a success. Owns no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Version of the JSON report (2 added `series`, `distribution` and `floor`).
pub const REPORT_VERSION: u32 = 2;
/// Largest latency recorded exactly, in microseconds (larger ones saturate here): 1 hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Time buckets a schedule is cut into (a longer schedule gets wider buckets).
const SERIES_BUCKETS: usize = 120;
/// Narrowest time bucket, in seconds: enough requests in each for its p99 at a low rate.
const SERIES_BUCKET_MIN_SECS: f64 = 0.5;
/// Most buckets a series holds. A run that outlasts them (late answers, a closed-loop run, which
/// does not keep to the schedule) has its buckets merged in pairs, doubling their width, so the
/// whole run stays spread over the plot rather than piling into a last bucket.
const SERIES_BUCKETS_MAX: usize = 2 * SERIES_BUCKETS;
/// Largest latency a series bucket resolves, in microseconds (larger saturate): 60 s.
const SERIES_LATENCY_MAX_US: u64 = 60_000_000;
/// Quantiles of each operation's distribution in the JSON report (and its HTML plot).
pub const DISTRIBUTION_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// Service-level objectives that make the exit status non-zero.
#[derive(Clone, Debug, Default)]
pub struct Slo {
    /// Largest acceptable p99s: for one operation (`Some("lookup")`), or for every operation
    /// (`None`). A per-operation limit lets a run hold reads to 1 ms while writes, which wait
    /// for an fsync, get a budget of their own.
    pub max_p99: Vec<(Option<String>, Duration)>,
    /// Largest acceptable share of failed requests (0.01 = 1 %).
    pub max_error_rate: Option<f64>,
    /// Largest acceptable p99 as a multiple of the floor run's, for one operation or every
    /// one; a report without a floor run breaks it.
    pub max_p99_over_floor: Vec<(Option<String>, f64)>,
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
    series: Series,
    /// The same schedule played against the floor server (`--floor`).
    pub floor: Option<Box<Report>>,
}

/// A run over time: per bucket of `width_secs`, the requests scheduled to start in it, the
/// answers that came back in it, and, by scheduled start, each operation's latencies and each
/// error class's count.
#[derive(Debug)]
struct Series {
    width_secs: f64,
    scheduled: Vec<u64>,
    answered: Vec<u64>,
    latency: BTreeMap<&'static str, Vec<Option<Histogram<u32>>>>,
    errors: BTreeMap<String, Vec<u64>>,
}

impl Series {
    fn new(span_secs: f64) -> Self {
        Self {
            width_secs: (span_secs / SERIES_BUCKETS as f64).max(SERIES_BUCKET_MIN_SECS),
            scheduled: Vec::new(),
            answered: Vec::new(),
            latency: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// The bucket of `at_secs`, widening every bucket first if the series would not hold it.
    fn bucket(&mut self, at_secs: f64) -> usize {
        if !at_secs.is_finite() {
            return SERIES_BUCKETS_MAX - 1;
        }
        loop {
            let b = (at_secs.max(0.0) / self.width_secs) as usize;
            if b < SERIES_BUCKETS_MAX {
                return b;
            }
            self.coarsen();
        }
    }

    /// Doubles the bucket width: each pair of buckets becomes one (counts added, latency
    /// histograms merged).
    fn coarsen(&mut self) {
        fn pairs(v: &mut Vec<u64>) {
            *v = v.chunks(2).map(|p| p.iter().sum()).collect();
        }
        self.width_secs *= 2.0;
        pairs(&mut self.scheduled);
        pairs(&mut self.answered);
        for v in self.errors.values_mut() {
            pairs(v);
        }
        for v in self.latency.values_mut() {
            let old = std::mem::take(v);
            let mut it = old.into_iter();
            while let Some(a) = it.next() {
                let merged = match (a, it.next().flatten()) {
                    (Some(mut a), Some(b)) => {
                        // Both histograms have the same bounds, so adding cannot fail.
                        let _ = a.add(&b);
                        Some(a)
                    }
                    (a, b) => a.or(b),
                };
                v.push(merged);
            }
        }
    }

    fn count(v: &mut Vec<u64>, b: usize) {
        if v.len() <= b {
            v.resize(b + 1, 0);
        }
        v[b] += 1;
    }

    fn record(&mut self, op: &'static str, at_secs: f64, latency: Duration, error: Option<&str>) {
        // The later time first: if it widens the buckets, the earlier one is placed after.
        let done = self.bucket(at_secs + latency.as_secs_f64());
        let b = self.bucket(at_secs);
        Self::count(&mut self.answered, done);
        match error {
            Some(class) => {
                if !self.errors.contains_key(class) {
                    self.errors.insert(class.to_owned(), Vec::new());
                }
                if let Some(v) = self.errors.get_mut(class) {
                    Self::count(v, b);
                }
            }
            None => {
                let v = self.latency.entry(op).or_default();
                if v.len() <= b {
                    v.resize_with(b + 1, || None);
                }
                let h = v[b].get_or_insert_with(|| {
                    Histogram::new_with_bounds(1, SERIES_LATENCY_MAX_US, 2)
                        .expect("valid histogram bounds")
                });
                let us = (latency.as_micros() as u64).clamp(1, SERIES_LATENCY_MAX_US);
                let _ = h.record(us);
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let per_bucket = |v: &[Option<Histogram<u32>>], q: f64| -> Vec<serde_json::Value> {
            v.iter()
                .map(|h| match h {
                    Some(h) if !h.is_empty() => json!(h.value_at_quantile(q)),
                    _ => serde_json::Value::Null,
                })
                .collect()
        };
        let ops: serde_json::Map<String, serde_json::Value> = self
            .latency
            .iter()
            .map(|(op, v)| {
                let count: Vec<u64> = v
                    .iter()
                    .map(|h| h.as_ref().map_or(0, |h| h.len()))
                    .collect();
                (
                    (*op).to_owned(),
                    json!({
                        "count": count,
                        "p50_us": per_bucket(v, 0.5),
                        "p99_us": per_bucket(v, 0.99),
                    }),
                )
            })
            .collect();
        json!({
            "bucket_secs": self.width_secs,
            "scheduled": self.scheduled,
            "answered": self.answered,
            "ops": ops,
            "errors": self.errors,
        })
    }
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
            series: Series::new(scheduled_secs),
            floor: None,
        }
    }

    /// Counts a request scheduled to start `at_secs` into the run, for the scheduled rate
    /// over time.
    pub fn scheduled_at(&mut self, at_secs: f64) {
        let b = self.series.bucket(at_secs);
        Series::count(&mut self.series.scheduled, b);
    }

    /// Records one request: when it was due (open loop) or sent (closed loop), in seconds from
    /// the start of the run, its latency from then, and, if it failed, its error class.
    pub fn record(
        &mut self,
        op: &'static str,
        at_secs: f64,
        latency: Duration,
        error: Option<String>,
    ) {
        self.series.record(op, at_secs, latency, error.as_deref());
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
        at_secs: f64,
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
        self.record(op, at_secs, latency, error);
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
        let over = self.p99_over_floor();
        for (op, max) in &slo.max_p99_over_floor {
            if self.floor.is_none() {
                v.push("no floor run to compare the p99s with".into());
                break;
            }
            let checked: Vec<(&str, f64)> = match op {
                None => over.iter().map(|(o, r)| (*o, *r)).collect(),
                Some(op) => match over.get(op.as_str()) {
                    Some(r) => vec![(op.as_str(), *r)],
                    None => {
                        v.push(format!(
                            "{op}: not answered by both runs, so no ratio to hold"
                        ));
                        continue;
                    }
                },
            };
            for (op, r) in checked {
                if r > *max {
                    v.push(format!(
                        "{op} p99 is {r:.2}× the floor's, over the limit {max}×"
                    ));
                }
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
        if let Some(f) = &self.floor {
            s.push_str(&format!(
                "floor (the same schedule, the same QUIC setup, no engine): {} ok, {} failed; \
                 achieved {:.0}/s; {} terminals connected in {:.2} s\n",
                f.ok(),
                f.failed(),
                (f.ok() + f.failed()) as f64 / f.elapsed_secs.max(1e-9),
                f.terminals,
                f.connect_secs
            ));
            s.push_str(
                "op            engine p50  floor p50  engine p99  floor p99  p99 engine/floor\n",
            );
            let ratios = self.p99_over_floor();
            for (op, h) in &self.per_op {
                let (Some(fh), Some(ratio)) = (f.per_op.get(op), ratios.get(op)) else {
                    s.push_str(&format!("{op:<12} (no floor answers)\n"));
                    continue;
                };
                s.push_str(&format!(
                    "{op:<12} {:>11} {:>10} {:>11} {:>10} {ratio:>17.2}\n",
                    h.value_at_quantile(0.5),
                    fh.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    fh.value_at_quantile(0.99),
                ));
            }
            for (class, n) in &f.errors {
                s.push_str(&format!("floor error {class}: {n}\n"));
            }
        }
        s
    }

    /// Each operation's p99 divided by the floor run's (operations both answered).
    pub fn p99_over_floor(&self) -> BTreeMap<&'static str, f64> {
        let Some(f) = &self.floor else {
            return BTreeMap::new();
        };
        self.per_op
            .iter()
            .filter_map(|(op, h)| {
                let fh = f.per_op.get(op)?;
                Some((
                    *op,
                    h.value_at_quantile(0.99) as f64 / fh.value_at_quantile(0.99).max(1) as f64,
                ))
            })
            .collect()
    }

    /// The JSON document (`"version": 2`).
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
            "distribution": distribution_json(&self.per_op),
            "series": self.series.json(),
            "floor": self.floor.as_ref().map(|f| f.json()),
            "p99_over_floor": self.p99_over_floor(),
        })
    }
}

/// Each operation's count and percentiles, as JSON.
fn ops_json(
    per_op: &BTreeMap<&'static str, Histogram<u64>>,
) -> serde_json::Map<String, serde_json::Value> {
    by_op(per_op, |h| {
        json!({
            "count": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
        })
    })
}

/// Each operation's latency at [`DISTRIBUTION_QUANTILES`], as `[quantile, µs]` pairs.
fn distribution_json(
    per_op: &BTreeMap<&'static str, Histogram<u64>>,
) -> serde_json::Map<String, serde_json::Value> {
    by_op(per_op, |h| {
        DISTRIBUTION_QUANTILES
            .iter()
            .map(|q| json!([q, h.value_at_quantile(*q)]))
            .collect()
    })
}

/// A JSON object with `f` of each operation's histogram, keyed by operation.
fn by_op(
    per_op: &BTreeMap<&'static str, Histogram<u64>>,
    f: impl Fn(&Histogram<u64>) -> serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    per_op
        .iter()
        .map(|(op, h)| ((*op).to_owned(), f(h)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("open", 300, 1.0);
        for i in 0..100 {
            r.record("lookup", 0.0, Duration::from_micros(100 + i), None);
            r.record("link", 0.0, Duration::from_micros(2_000 + i), None);
        }
        r.record(
            "lookup",
            0.0,
            Duration::from_micros(50),
            Some("BUSY".into()),
        );
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
            ..Slo::default()
        });
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("link p99"), "{all:?}");
        let reads = Slo {
            max_p99: vec![(Some("lookup".into()), ms), (Some("link".into()), 3 * ms)],
            max_error_rate: Some(0.01),
            ..Slo::default()
        };
        assert!(
            r.violations(&reads).is_empty(),
            "{:?}",
            r.violations(&reads)
        );
        let tight = Slo {
            max_p99: vec![(Some("lookup".into()), Duration::from_micros(150))],
            max_error_rate: Some(0.001),
            ..Slo::default()
        };
        let broken = r.violations(&tight);
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[1].starts_with("error rate 0.0050"), "{broken:?}");
        let missing = r.violations(&Slo {
            max_p99: vec![(Some("card-lookup".into()), ms)],
            max_error_rate: None,
            ..Slo::default()
        });
        assert_eq!(missing.len(), 1, "{missing:?}");
    }

    /// With several servers, each has its own latencies and failures, and the whole holds
    /// them all.
    #[test]
    fn a_run_over_several_servers_reports_each() {
        let mut r = Report::new("open", 30, 1.0);
        for i in 0..10 {
            r.record_at("a:1", "lookup", 0.0, Duration::from_micros(100 + i), None);
            r.record_at("b:2", "lookup", 0.0, Duration::from_micros(900 + i), None);
        }
        r.record_at(
            "b:2",
            "lookup",
            0.0,
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

    /// Over time: a slow second half shows in its buckets' p99 and not in the first half's,
    /// errors land in the bucket of their scheduled start, answers in the bucket they came
    /// back in, and the floor's figures sit beside the engine's.
    /// A closed-loop run that lasts far longer than its schedule widens its buckets instead
    /// of piling everything past the schedule's end into one bucket.
    #[test]
    fn a_run_longer_than_its_schedule_is_spread_over_wider_buckets() {
        // A 1 s schedule (buckets of 0.5 s), played closed loop over 300 s: 10 answers a second.
        let mut r = Report::new("closed", 3000, 1.0);
        for i in 0..3000u64 {
            let at = i as f64 / 10.0;
            let slow = at >= 150.0;
            let latency = Duration::from_micros(if slow { 20_000 } else { 200 });
            let error = (i % 100 == 0).then(|| "BUSY".to_owned());
            r.record("lookup", at, latency, error);
        }
        let j = r.json();
        let series = &j["series"];
        // 0.5 s → 1 s → 2 s: 300 s in 150 buckets, under the 240 a series holds.
        assert_eq!(series["bucket_secs"], 2.0);
        let answered: Vec<u64> = series["answered"]
            .as_array()
            .expect("answered")
            .iter()
            .map(|v| v.as_u64().expect("count"))
            .collect();
        assert_eq!(answered.len(), 150);
        assert_eq!(
            answered.iter().sum::<u64>(),
            3000,
            "every answer counted once"
        );
        assert!(
            answered.iter().all(|&n| n == 20),
            "20 answers in every 2 s bucket: {answered:?}"
        );
        let p99 = &series["ops"]["lookup"]["p99_us"];
        assert!(p99[10].as_u64().expect("early") < 300);
        assert!(p99[100].as_u64().expect("late") >= 19_000);
        let count: u64 = series["ops"]["lookup"]["count"]
            .as_array()
            .expect("count")
            .iter()
            .map(|v| v.as_u64().expect("n"))
            .sum();
        assert_eq!(count, 2970, "merged histograms keep every latency");
        let busy: u64 = series["errors"]["BUSY"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|v| v.as_u64().expect("n"))
            .sum();
        assert_eq!(busy, 30);
        assert_eq!(
            series["errors"]["BUSY"][5], 1,
            "the error sent at 10 s is in bucket 5 (10-12 s)"
        );
    }

    #[test]
    fn the_series_shows_when_a_run_slowed_and_failed() {
        // 60 s scheduled: buckets of 0.5 s; a request every 10 ms.
        let mut r = Report::new("open", 6000, 60.0);
        for i in 0..6000u64 {
            let at = i as f64 / 100.0;
            r.scheduled_at(at);
            let slow = at >= 30.0;
            let latency = Duration::from_micros(if slow { 20_000 } else { 200 });
            let error = (slow && i % 10 == 0).then(|| "BUSY".to_owned());
            r.record("lookup", at, latency, error);
        }
        let j = r.json();
        let series = &j["series"];
        assert_eq!(series["bucket_secs"], 0.5);
        assert_eq!(series["scheduled"][0], 50);
        let p99 = &series["ops"]["lookup"]["p99_us"];
        let (early, late) = (
            p99[10].as_u64().expect("early"),
            p99[100].as_u64().expect("late"),
        );
        assert!(early < 300 && late >= 19_000, "{early} {late}");
        assert_eq!(series["errors"]["BUSY"][10], 0);
        assert_eq!(series["errors"]["BUSY"][100], 5);
        // Every answer is counted once, in the bucket it came back in.
        let answered: u64 = series["answered"]
            .as_array()
            .expect("answered")
            .iter()
            .map(|v| v.as_u64().expect("count"))
            .sum();
        assert_eq!(answered, 6000);
        let dist = &j["distribution"]["lookup"];
        assert_eq!(
            dist.as_array().map(Vec::len),
            Some(DISTRIBUTION_QUANTILES.len())
        );
        assert!(dist[3][1].as_u64() < Some(300) && dist[13][1].as_u64() >= Some(19_000));

        let over = |limit: Vec<(Option<String>, f64)>| Slo {
            max_p99_over_floor: limit,
            ..Slo::default()
        };
        let none = r.violations(&over(vec![(None, 1.2)]));
        assert_eq!(
            none,
            vec!["no floor run to compare the p99s with".to_owned()]
        );
        let mut floor = Report::new("open", 6000, 60.0);
        for i in 0..6000u64 {
            floor.record("lookup", i as f64 / 100.0, Duration::from_micros(150), None);
        }
        r.floor = Some(Box::new(floor));
        let ratio = r.p99_over_floor()["lookup"];
        assert!(ratio > 100.0, "{ratio}");
        let broken = r.violations(&over(vec![(Some("lookup".into()), 1.2)]));
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(broken[0].starts_with("lookup p99 is "), "{broken:?}");
        assert!(r.violations(&over(vec![(None, 1000.0)])).is_empty());
        let missing = r.violations(&over(vec![(Some("link".into()), 1.2)]));
        assert!(
            missing[0].starts_with("link: not answered by both runs"),
            "{missing:?}"
        );
        let h = r.human();
        assert!(
            h.contains("floor (the same schedule") && h.contains("engine/floor"),
            "{h}"
        );
        assert_eq!(r.json()["floor"]["ops"]["lookup"]["count"], 6000);
    }
}
