//! The node's in-process counters and latency histograms, exported at `/metrics` in the
//! OpenMetrics text format by `prometheus-client`, the Prometheus project's Rust client. One
//! set per node, made by `node::start` and shared by its services (no global: two nodes in one
//! process, as in the tests, count apart): they bump it where the event happens (listener,
//! C-STORE, worker, sender) and the status endpoint encodes it, with the gauges it reads from
//! the database. Counters start at zero with the node, as Prometheus expects; durable history
//! is in SQLite.
//!
//! Label values are enums (`InstanceOutcome`, `JobOutcome`, `DeliveryOutcome`, `Stage`), each
//! spelled once; every value of each is exported from the start, at zero.

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets: 10 ms to 30 min.
const BOUNDS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BOUNDS)
}

/// An enum of label values under one label name: its names, and its encoding as a label set.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident, $label:literal { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// The label value.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
                [($label, self.name())].encode(encoder)
            }
        }
    };
}

label_values!(
    /// How a C-STORE request was answered.
    InstanceOutcome, "outcome" { Stored => "stored", Refused => "refused" }
);
label_values!(
    /// How an analysis job ended.
    JobOutcome, "outcome" { Done => "done", Failed => "failed" }
);
label_values!(
    /// How a delivery attempt ended.
    DeliveryOutcome, "outcome" { Sent => "sent", Retry => "retry", Failed => "failed" }
);
label_values!(
    /// Stages of a job whose durations are recorded (the keys of a job's timings).
    Stage, "stage" {
        Load => "load",
        Resample => "resample",
        LungMask => "lung_mask",
        Segmentation => "segmentation",
        Detection => "detection",
        Classification => "classification",
        Results => "results",
        Total => "total",
    }
);

impl Stage {
    /// The stage of a timings key, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    pub associations_total: Counter,
    pub associations_active: Gauge,
    pub associations_rejected: Counter,
    pub association_seconds: Histogram,
    pub instances: Family<InstanceOutcome, Counter>,
    pub jobs: Family<JobOutcome, Counter>,
    pub stage_seconds: Family<Stage, Histogram, fn() -> Histogram>,
    pub sends: Family<DeliveryOutcome, Counter>,
    pub send_seconds: Histogram,
}

/// A family with a series for every label value, so each is exported (at zero) from the start.
fn family_of_all<S, M, C>(all: &[S], family: Family<S, M, C>) -> Family<S, M, C>
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for label in all {
        drop(family.get_or_create(label));
    }
    family
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series at zero.
    pub fn new() -> Self {
        Self {
            associations_total: Counter::default(),
            associations_active: Gauge::default(),
            associations_rejected: Counter::default(),
            association_seconds: latency_histogram(),
            instances: family_of_all(InstanceOutcome::ALL, Family::default()),
            jobs: family_of_all(JobOutcome::ALL, Family::default()),
            stage_seconds: family_of_all(
                Stage::ALL,
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            sends: family_of_all(DeliveryOutcome::ALL, Family::default()),
            send_seconds: latency_histogram(),
        }
    }

    pub fn instance(&self, outcome: InstanceOutcome) {
        self.instances.get_or_create(&outcome).inc();
    }

    pub fn job(&self, outcome: JobOutcome) {
        self.jobs.get_or_create(&outcome).inc();
    }

    pub fn send(&self, outcome: DeliveryOutcome) {
        self.sends.get_or_create(&outcome).inc();
    }

    /// Records the duration of a job stage.
    pub fn observe_stage(&self, stage: Stage, duration: Duration) {
        self.stage_seconds
            .get_or_create(&stage)
            .observe(duration.as_secs_f64());
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), plus the gauges `extra` computed by
    /// the caller from the database (queue depth, outbox...), each `(name, help, value)`, and
    /// the gauges `by_node`, each `(name, help, counts by node name)`, labelled `node`: with
    /// several nodes on one database, who holds what. Help texts are sentences without the
    /// final full stop, which the encoder adds.
    pub fn render(
        &self,
        extra: &[(&str, &str, f64)],
        by_node: &[(&str, &str, &BTreeMap<String, i64>)],
    ) -> String {
        let mut registry = Registry::default();
        // Clones share the values: the registry is a view, built per scrape.
        registry.register(
            "jnsc_associations",
            "Associations established",
            self.associations_total.clone(),
        );
        registry.register(
            "jnsc_associations_rejected",
            "Association requests rejected (access policy, limits, disk space)",
            self.associations_rejected.clone(),
        );
        registry.register(
            "jnsc_instances",
            "C-STORE requests answered, by outcome",
            self.instances.clone(),
        );
        registry.register(
            "jnsc_jobs",
            "Analysis jobs finished, by outcome",
            self.jobs.clone(),
        );
        registry.register(
            "jnsc_sends",
            "Result delivery attempts, by outcome",
            self.sends.clone(),
        );
        registry.register(
            "jnsc_associations_active",
            "Associations open now",
            self.associations_active.clone(),
        );
        for (name, help, value) in extra {
            registry.register(*name, *help, ConstGauge::new(*value));
        }
        for (name, help, counts) in by_node {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (node, count) in *counts {
                family
                    .get_or_create(&vec![("node".to_owned(), node.clone())])
                    .set(*count);
            }
            registry.register(*name, *help, family);
        }
        registry.register(
            "jnsc_association_seconds",
            "Duration of associations, establishment to end",
            self.association_seconds.clone(),
        );
        registry.register(
            "jnsc_stage_seconds",
            "Duration of each job stage",
            self.stage_seconds.clone(),
        );
        registry.register(
            "jnsc_send_seconds",
            "Duration of one delivery round to a destination",
            self.send_seconds.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_renders_with_its_documented_name_and_labels() {
        let m = Metrics::new();
        m.observe_stage(Stage::LungMask, Duration::from_millis(30));
        m.observe_stage(Stage::LungMask, Duration::from_secs(3));
        m.instance(InstanceOutcome::Stored);
        m.instance(InstanceOutcome::Stored);
        m.associations_total.inc();
        let running = BTreeMap::from([("worker-2".to_owned(), 3)]);
        let out = m.render(
            &[("jnsc_queue_depth", "Jobs waiting", 4.0)],
            &[("jnsc_jobs_held", "Running jobs by node", &running)],
        );
        for line in [
            "# TYPE jnsc_associations counter",
            "jnsc_associations_total 1",
            "jnsc_associations_rejected_total 0",
            "jnsc_instances_total{outcome=\"stored\"} 2",
            "jnsc_instances_total{outcome=\"refused\"} 0",
            "jnsc_jobs_total{outcome=\"failed\"} 0",
            "jnsc_sends_total{outcome=\"retry\"} 0",
            "jnsc_associations_active 0",
            "# HELP jnsc_queue_depth Jobs waiting.",
            "jnsc_queue_depth 4.0",
            "# TYPE jnsc_jobs_held gauge",
            "jnsc_jobs_held{node=\"worker-2\"} 3",
            "jnsc_stage_seconds_bucket{le=\"0.01\",stage=\"lung_mask\"} 0",
            "jnsc_stage_seconds_bucket{le=\"0.05\",stage=\"lung_mask\"} 1",
            "jnsc_stage_seconds_bucket{le=\"5.0\",stage=\"lung_mask\"} 2",
            "jnsc_stage_seconds_bucket{le=\"+Inf\",stage=\"lung_mask\"} 2",
            "jnsc_stage_seconds_sum{stage=\"lung_mask\"} 3.03",
            "jnsc_stage_seconds_count{stage=\"lung_mask\"} 2",
            "jnsc_stage_seconds_count{stage=\"results\"} 0",
            "jnsc_send_seconds_count 0",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
        }
    }

    #[test]
    fn stage_names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_name(stage.name()), Some(*stage));
        }
        assert_eq!(Stage::from_name("warp"), None);
    }
}
