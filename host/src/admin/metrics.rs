//! Per-handler metrics, labelled by tenant and handler, in the Prometheus
//! text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The counters of one handler.
#[derive(Debug, Default)]
pub struct HandlerMetrics {
    /// Messages acked.
    pub handled: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Invocations running now.
    pub in_flight: AtomicU64,
    /// Fuel consumed, for handlers with a fuel limit.
    pub fuel: AtomicU64,
    /// Invocation time, summed, in nanoseconds.
    time_ns: AtomicU64,
    /// Invocations, per latency bucket (the last is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl HandlerMetrics {
    /// Record one invocation's wall time.
    pub fn observe(&self, elapsed: Duration) {
        self.time_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations recorded.
    pub fn invocations(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Render the metrics of every (tenant, handler) in the Prometheus text format.
pub fn render<'a>(handlers: impl Iterator<Item = (&'a str, &'a str, &'a HandlerMetrics)> + Clone) -> String {
    let mut out = String::new();
    // Name, type, help, and how to read it from a handler's metrics.
    type Counter = (&'static str, &'static str, &'static str, fn(&HandlerMetrics) -> u64);
    let counters: [Counter; 5] = [
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
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += m.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += m.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", m.time_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
