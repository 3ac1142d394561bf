//! `/metrics` in the OpenMetrics text format, through `prometheus-client`.
//! The counters stay where the delivery path keeps them (each handler's
//! atomics and the host's [`Stats`]), so a message costs no more than it did;
//! a collector reads them at each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::dispatch::stats::Stats;
use crate::runtime::metrics::{BUCKETS, HandlerMetrics};
use crate::runtime::registry::{HandlerSlot, Registry};

/// The content type of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Name, help, and how to read one per-handler counter or gauge. A
/// counter's name is given without `_total`, which the format appends.
type PerHandler = (&'static str, MetricType, &'static str, fn(&HandlerSlot) -> u64);

const PER_HANDLER: [PerHandler; 9] = [
    ("switchyard_messages_handled", MetricType::Counter, "Messages acked after the handler returned ok.", |s| {
        s.metrics.handled.load(Ordering::Relaxed)
    }),
    ("switchyard_messages_retried", MetricType::Counter, "Retries scheduled.", |s| {
        s.metrics.retried.load(Ordering::Relaxed)
    }),
    ("switchyard_messages_dead_lettered", MetricType::Counter, "Messages dead-lettered.", |s| {
        s.metrics.dead_lettered.load(Ordering::Relaxed)
    }),
    ("switchyard_messages_in_flight", MetricType::Gauge, "Invocations running now.", |s| {
        s.metrics.in_flight.load(Ordering::Relaxed)
    }),
    (
        "switchyard_handler_fuel_consumed",
        MetricType::Counter,
        "WebAssembly fuel consumed, for handlers with a fuel limit.",
        |s| s.metrics.fuel.load(Ordering::Relaxed),
    ),
    (
        "switchyard_log_lines_dropped",
        MetricType::Counter,
        "Handler log lines dropped past the tenant's max_log_bytes for one message.",
        |s| s.metrics.log_lines_dropped.load(Ordering::Relaxed),
    ),
    (
        "switchyard_http_requests",
        MetricType::Counter,
        "HTTP requests handlers sent through the http capability, redirects included.",
        |s| s.metrics.http_requests.load(Ordering::Relaxed),
    ),
    (
        "switchyard_instances_reused",
        MetricType::Counter,
        "Invocations that ran in a reused instance (routes with `instances.reuse`) instead of a fresh one.",
        |s| s.metrics.instances_reused.load(Ordering::Relaxed),
    ),
    (
        "switchyard_handler_live_version",
        MetricType::Gauge,
        "The version number of the handler that new deliveries run.",
        |s| u64::from(s.live().number),
    ),
];

/// Reads the host's counters at each scrape.
struct Host {
    registry: Arc<Registry>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("handlers", &self.registry.slots().count()).finish()
    }
}

/// One handler's latency histogram, as the encoder takes it.
#[derive(Debug)]
struct Latency<'a>(&'a HandlerMetrics);

impl EncodeMetric for Latency<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.bucket_counts();
        // The last count is past every bound: the +Inf bucket.
        let bounds = BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.total_time().as_secs_f64(),
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for Host {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let slots: Vec<_> = self.registry.slots().collect();
        let labels = |tenant: &str, handler: &str| [("tenant", tenant.to_string()), ("handler", handler.to_string())];
        for (name, kind, help, read) in PER_HANDLER {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for slot in &slots {
                let labels = labels(&slot.tenant, &slot.handler);
                encode_value(kind, read(slot), family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "switchyard_handler_duration_seconds",
            "Wall time of one invocation, instantiation included.",
            None,
            MetricType::Histogram,
        )?;
        for slot in &slots {
            let labels = labels(&slot.tenant, &slot.handler);
            Latency(&slot.metrics).encode(family.encode_family(&labels)?)?;
        }
        let totals = self.stats.snapshot();
        let host: [(&str, MetricType, &str, u64); 2] = [
            (
                "switchyard_messages_received",
                MetricType::Counter,
                "Deliveries received from every source.",
                totals.received,
            ),
            (
                "switchyard_messages_pending",
                MetricType::Gauge,
                "Deliveries received and not yet settled, those waiting to retry included.",
                totals.pending,
            ),
        ];
        for (name, kind, help, value) in host {
            encode_value(kind, value, encoder.encode_descriptor(name, help, None, kind)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "switchyard_source_messages_lost",
            "Messages an at-most-once source (core NATS) dropped before the host got them.",
            None,
            MetricType::Counter,
        )?;
        for (source, lost) in self.stats.lost_by_source() {
            ConstCounter::new(lost).encode(family.encode_family(&[("source", source)])?)?;
        }
        Ok(())
    }
}

/// One counter or gauge sample.
fn encode_value(
    kind: MetricType,
    value: u64,
    metric: prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Gauge => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric),
        _ => ConstCounter::new(value).encode(metric),
    }
}

/// Every metric of the host, in the OpenMetrics text format.
pub fn render(registry: &Arc<Registry>, stats: &Arc<Stats>) -> String {
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register_collector(Box::new(Host { registry: registry.clone(), stats: stats.clone() }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &metrics) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct One(HandlerMetrics);

    impl Collector for One {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor("d_seconds", "help", None, MetricType::Histogram)?;
            Latency(&self.0).encode(family.encode_family(&[("handler", "say \"hi\"")])?)
        }
    }

    #[test]
    fn a_latency_histogram_is_cumulative_with_its_labels_escaped() {
        let m = HandlerMetrics::default();
        m.observe(Duration::from_micros(50));
        m.observe(Duration::from_millis(3));
        m.observe(Duration::from_secs(9));
        let mut metrics = prometheus_client::registry::Registry::default();
        metrics.register_collector(Box::new(One(m)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics).unwrap();
        let labels = r#"handler="say \"hi\"""#;
        for line in [
            format!("d_seconds_bucket{{le=\"0.0001\",{labels}}} 1"),
            format!("d_seconds_bucket{{le=\"0.005\",{labels}}} 2"),
            format!("d_seconds_bucket{{le=\"5.0\",{labels}}} 2"),
            format!("d_seconds_bucket{{le=\"+Inf\",{labels}}} 3"),
            format!("d_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
