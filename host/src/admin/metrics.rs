//! Per-handler metrics, labelled by tenant and handler, in the Prometheus
//! text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::runtime::metrics::{BUCKETS, HandlerMetrics};

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Render the metrics of every (tenant, handler) in the Prometheus text format.
pub fn render<'a>(handlers: impl Iterator<Item = (&'a str, &'a str, &'a HandlerMetrics)> + Clone) -> String {
    let mut out = String::new();
    // Name, type, help, and how to read it from a handler's metrics.
    type Counter = (&'static str, &'static str, &'static str, fn(&HandlerMetrics) -> u64);
    let counters: [Counter; 8] = [
        ("switchyard_messages_handled_total", "counter", "Messages acked after the handler returned ok.", |m| {
            m.handled.load(Ordering::Relaxed)
        }),
        ("switchyard_messages_retried_total", "counter", "Retries scheduled.", |m| m.retried.load(Ordering::Relaxed)),
        ("switchyard_messages_dead_lettered_total", "counter", "Messages dead-lettered.", |m| {
            m.dead_lettered.load(Ordering::Relaxed)
        }),
        ("switchyard_messages_in_flight", "gauge", "Invocations running now.", |m| m.in_flight.load(Ordering::Relaxed)),
        (
            "switchyard_handler_fuel_consumed_total",
            "counter",
            "WebAssembly fuel consumed, for handlers with a fuel limit.",
            |m| m.fuel.load(Ordering::Relaxed),
        ),
        (
            "switchyard_log_lines_dropped_total",
            "counter",
            "Handler log lines dropped past the tenant's max_log_bytes for one message.",
            |m| m.log_lines_dropped.load(Ordering::Relaxed),
        ),
        (
            "switchyard_http_requests_total",
            "counter",
            "HTTP requests handlers sent through the http capability, redirects included.",
            |m| m.http_requests.load(Ordering::Relaxed),
        ),
        (
            "switchyard_instances_reused_total",
            "counter",
            "Invocations that ran in a reused instance (routes with `instances.reuse`) instead of a fresh one.",
            |m| m.instances_reused.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (tenant, handler, m) in handlers.clone() {
            let _ = writeln!(out, "{name}{{tenant=\"{}\",handler=\"{}\"}} {}", escape(tenant), escape(handler), get(m));
        }
    }
    let name = "switchyard_handler_duration_seconds";
    let _ =
        writeln!(out, "# HELP {name} Wall time of one invocation, instantiation included.\n# TYPE {name} histogram");
    for (tenant, handler, m) in handlers {
        let labels = format!("tenant=\"{}\",handler=\"{}\"", escape(tenant), escape(handler));
        let counts = m.bucket_counts();
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts.last().copied().unwrap_or_default();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", m.total_time().as_secs_f64());
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    out
}

/// The messages each at-most-once source lost.
pub fn render_sources(lost: &[(String, u64)]) -> String {
    let name = "switchyard_source_messages_lost_total";
    let mut out = format!(
        "# HELP {name} Messages an at-most-once source (core NATS) dropped before the host got them.\n# TYPE {name} counter\n"
    );
    for (source, count) in lost {
        let _ = writeln!(out, "{name}{{source=\"{}\"}} {count}", escape(source));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = HandlerMetrics::default();
        m.handled.fetch_add(3, Ordering::Relaxed);
        m.observe(Duration::from_micros(50));
        m.observe(Duration::from_millis(3));
        m.observe(Duration::from_secs(9));
        let text = render([("shop", "say \"hi\"", &m)].into_iter());
        assert!(
            text.contains("switchyard_messages_handled_total{tenant=\"shop\",handler=\"say \\\"hi\\\"\"} 3"),
            "{text}"
        );
        assert!(text.contains("le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("le=\"5\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("switchyard_handler_duration_seconds_count{tenant=\"shop\",handler=\"say \\\"hi\\\"\"} 3")
        );
    }
}
