//! The node's in-process counters and latency histograms, exported in the Prometheus text format
//! at `/metrics`. One static registry: the services bump it where the event happens (listener,
//! C-STORE, worker, sender) and the status endpoint reads it. Counters start at zero with the
//! process, as Prometheus expects; durable history is in SQLite.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
pub struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency buckets: 10 ms to 30 min.
const BOUNDS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0,
];

/// A latency histogram with fixed buckets.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` series with `labels` (may be empty).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Stages of a job whose durations are recorded.
pub const STAGES: [&str; 8] = [
    "load",
    "resample",
    "lung_mask",
    "segmentation",
    "detection",
    "classification",
    "results",
    "total",
];

/// Every metric of the node.
pub struct Metrics {
    pub associations_total: Counter,
    pub associations_active: Gauge,
    pub associations_rejected: Counter,
    pub association_seconds: Histogram,
    pub instances_stored: Counter,
    pub instances_refused: Counter,
    pub jobs_done: Counter,
    pub jobs_failed: Counter,
    /// One histogram per entry of `STAGES`.
    pub stage_seconds: [Histogram; STAGES.len()],
    pub sends_sent: Counter,
    pub sends_retried: Counter,
    pub sends_failed: Counter,
    pub send_seconds: Histogram,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    associations_total: Counter::new(),
    associations_active: Gauge::new(),
    associations_rejected: Counter::new(),
    association_seconds: Histogram::new(),
    instances_stored: Counter::new(),
    instances_refused: Counter::new(),
    jobs_done: Counter::new(),
    jobs_failed: Counter::new(),
    stage_seconds: [const { Histogram::new() }; STAGES.len()],
    sends_sent: Counter::new(),
    sends_retried: Counter::new(),
    sends_failed: Counter::new(),
    send_seconds: Histogram::new(),
};

impl Metrics {
    /// Records the duration of a job stage (unknown names are ignored).
    pub fn observe_stage(&self, stage: &str, duration: Duration) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.stage_seconds[i].observe(duration);
        }
    }

    /// The Prometheus text exposition (format 0.0.4), plus the gauges `extra` computed by the
    /// caller from the database (queue depth, outbox...), each `(name, help, value)`.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        type Series<'a> = Vec<(&'a str, u64)>;
        let counters: [(&str, &str, Series); 5] = [
            (
                "jnsc_associations_total",
                "Associations established.",
                vec![("", self.associations_total.get())],
            ),
            (
                "jnsc_associations_rejected_total",
                "Association requests rejected (access policy, limits, disk space).",
                vec![("", self.associations_rejected.get())],
            ),
            (
                "jnsc_instances_total",
                "C-STORE requests answered, by outcome.",
                vec![
                    ("outcome=\"stored\"", self.instances_stored.get()),
                    ("outcome=\"refused\"", self.instances_refused.get()),
                ],
            ),
            (
                "jnsc_jobs_total",
                "Analysis jobs finished, by outcome.",
                vec![
                    ("outcome=\"done\"", self.jobs_done.get()),
                    ("outcome=\"failed\"", self.jobs_failed.get()),
                ],
            ),
            (
                "jnsc_sends_total",
                "Result delivery attempts, by outcome.",
                vec![
                    ("outcome=\"sent\"", self.sends_sent.get()),
                    ("outcome=\"retry\"", self.sends_retried.get()),
                    ("outcome=\"failed\"", self.sends_failed.get()),
                ],
            ),
        ];
        for (name, help, series) in counters {
            header(&mut out, name, help, "counter");
            for (labels, value) in series {
                let braces = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                let _ = writeln!(out, "{name}{braces} {value}");
            }
        }
        let active = [(
            "jnsc_associations_active",
            "Associations open now.",
            self.associations_active.get() as f64,
        )];
        for (name, help, value) in active.iter().chain(extra) {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "jnsc_association_seconds",
            "Duration of associations, establishment to end.",
            "histogram",
        );
        self.association_seconds
            .write(&mut out, "jnsc_association_seconds", "");
        header(
            &mut out,
            "jnsc_stage_seconds",
            "Duration of each job stage.",
            "histogram",
        );
        for (stage, h) in STAGES.iter().zip(&self.stage_seconds) {
            h.write(
                &mut out,
                "jnsc_stage_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        header(
            &mut out,
            "jnsc_send_seconds",
            "Duration of one delivery round to a destination.",
            "histogram",
        );
        self.send_seconds.write(&mut out, "jnsc_send_seconds", "");
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_render_in_prometheus_format() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "stage=\"load\"");
        assert!(out.contains("x_seconds_bucket{stage=\"load\",le=\"0.01\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"load\",le=\"0.05\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"load\",le=\"5\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{stage=\"load\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_seconds_sum{stage=\"load\"} 3.03\n"));
        assert!(out.contains("x_seconds_count{stage=\"load\"} 2\n"));
    }
}
