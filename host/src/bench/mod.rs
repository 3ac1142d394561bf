//! The `switchyard bench` reports, each run side by side in one run with the
//! baseline it is measured against. They are part of the command, not of the
//! library's API.

mod brokers;
mod density;
mod dispatch;
mod effects;
mod isolation;
mod languages;
mod support;

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Batched effects against one call per message, side by side: Redis
    /// SET, SQL INSERT, search indexing. A service whose URL is empty is skipped.
    Effects {
        /// Redis.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// PostgreSQL.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
        postgres_url: String,
        /// MySQL or MariaDB.
        #[arg(long, default_value = "mysql://root@127.0.0.1:3306/test")]
        mysql_url: String,
        /// Operations per batched measurement.
        #[arg(long, default_value_t = 20_000)]
        ops: usize,
        /// Operations per one-call-per-message measurement.
        #[arg(long, default_value_t = 2_000)]
        single_ops: usize,
        /// Callers at once on the batched side.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// N product changes from a broker into Redis SETs, through the host with
    /// the cache-update handler and through a hand-written Rust consumer,
    /// side by side: NATS JetStream and RabbitMQ. A broker whose URL is empty is skipped.
    Brokers {
        /// Messages per side (each side gets its own fresh stream or queue).
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// NATS with JetStream.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// RabbitMQ.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Redis, where both sides write.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// The cache-update handler.
        #[arg(long, default_value = "plugins/dist/cache_update.wasm")]
        plugin: PathBuf,
        /// Approximate payload size in bytes.
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// Messages handled at once on each side (the route's concurrency);
        /// the pull batch and prefetch are twice this on both sides.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Cost per message on a fresh instance, against a native function (the default).
    Dispatch {
        /// The trivial handler to measure.
        #[arg(long, default_value = "plugins/dist/noop.wasm")]
        plugin: PathBuf,
        /// Messages per measurement.
        #[arg(long, default_value_t = 100_000)]
        messages: u32,
        /// Also run the cache-update handler in Rust, C, JavaScript and Python
        /// (from plugins/dist) side by side: load times, per-message cost, ratios.
        #[arg(long)]
        languages: bool,
        /// Messages per language in the --languages comparison.
        #[arg(long, default_value_t = 2000)]
        language_messages: u32,
    },
    /// Start time and memory of many tenants sharing one .wasm, and of many distinct handlers.
    Density {
        /// The handler every tenant runs.
        #[arg(long, default_value = "plugins/dist/noop.wasm")]
        plugin: PathBuf,
        /// Tenants sharing it.
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Distinct handlers.
        #[arg(long, default_value_t = 100)]
        distinct: usize,
    },
    /// A well-behaved tenant's throughput alone and under attack by a hostile tenant.
    Isolation {
        /// The well-behaved handler.
        #[arg(long, default_value = "plugins/dist/cache_update.wasm")]
        good: PathBuf,
        /// The hostile handler.
        #[arg(long, default_value = "plugins/dist/hostile.wasm")]
        hostile: PathBuf,
        /// Messages of the well-behaved tenant.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// The attacks, taken in turn (see plugins/hostile).
        #[arg(long, value_delimiter = ',', default_value = "loop,memory,recurse")]
        attacks: Vec<String>,
        /// Rounds, each alone then attacked; the median ratio is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

impl Default for BenchWhat {
    fn default() -> Self {
        BenchWhat::Dispatch {
            plugin: PathBuf::from("plugins/dist/noop.wasm"),
            messages: 100_000,
            languages: false,
            language_messages: 2000,
        }
    }
}

/// Run one report and print it.
pub async fn run(what: BenchWhat) -> anyhow::Result<std::process::ExitCode> {
    match what {
        BenchWhat::Dispatch { plugin, messages, languages, language_messages } => {
            let r = dispatch::dispatch(&plugin, messages).await?;
            println!("dispatch benchmark: {} messages each, trivial handler {}", r.messages, plugin.display());
            println!("  native Rust function          {:>10.1} ns/msg", r.native_ns);
            println!(
                "  switchyard, fresh instance    {:>10.1} ns/msg   ratio {:.0}x native",
                r.wasm_ns,
                r.wasm_ns / r.native_ns.max(0.001)
            );
            println!("    of which store + host state {:>10.1} ns/msg", r.store_ns);
            println!("    of which instantiate        {:>10.1} ns/msg", r.instantiate_ns - r.store_ns);
            println!("    of which call and limits    {:>10.1} ns/msg", r.wasm_ns - r.instantiate_ns);
            println!("  switchyard, all cores         {:>10.0} msg/s", r.parallel_rate);
            println!(
                "  switchyard, reuse {:<4}        {:>10.1} ns/msg   ratio {:.2} of fresh",
                dispatch::REUSE,
                r.reused_ns,
                r.reused_ns / r.wasm_ns.max(0.001)
            );
            if languages {
                bench_languages(language_messages).await?;
            }
        }
        BenchWhat::Effects { redis_url, postgres_url, mysql_url, ops, single_ops, concurrency } => {
            let some = |url: String| (!url.is_empty()).then_some(url);
            let options = effects::EffectsOptions {
                redis_url: some(redis_url),
                postgres_url: some(postgres_url),
                mysql_url: some(mysql_url),
                ops,
                single_ops,
                concurrency,
            };
            let results = effects::effects(&options).await?;
            println!("effects benchmark: {ops} batched operations, {single_ops} one by one");
            for comparison in &results {
                println!("{}", comparison.workload);
                for ((label, rate), ratio) in comparison.rates.iter().zip(comparison.ratios()) {
                    println!("  {label:<55} {rate:>10.0} /s   {ratio:>6.1}x");
                }
            }
        }
        BenchWhat::Brokers { messages, nats_url, amqp_url, redis_url, plugin, payload_bytes, concurrency } => {
            let some = |url: String| (!url.is_empty()).then_some(url);
            let options = brokers::BrokersOptions {
                nats_url: some(nats_url),
                amqp_url: some(amqp_url),
                redis_url,
                plugin,
                messages,
                payload_bytes,
                concurrency,
            };
            let reports = brokers::brokers(&options).await?;
            println!(
                "brokers benchmark: {messages} messages of about {payload_bytes} bytes per side, broker -> Redis SET -> ack, {concurrency} in flight"
            );
            println!(
                "  {:<16} {:>16} {:>16} {:>16} {:>14} {:>14}",
                "broker", "switchyard", "with reuse", "native Rust", "fresh/native", "reuse/native"
            );
            for r in &reports {
                let (fresh, reused) = r.ratios();
                println!(
                    "  {:<16} {:>10.0} msg/s {:>10.0} msg/s {:>10.0} msg/s {:>14.2} {:>14.2}",
                    r.broker, r.switchyard.rate, r.reused.rate, r.native.rate, fresh, reused
                );
            }
            for r in &reports {
                println!(
                    "  {}: {} messages; switchyard {:.2} s, with reuse {:.2} s, native {:.2} s; {}, {} and {} keys checked in Redis",
                    r.broker,
                    r.messages,
                    r.switchyard.elapsed.as_secs_f64(),
                    r.reused.elapsed.as_secs_f64(),
                    r.native.elapsed.as_secs_f64(),
                    r.switchyard.keys_found,
                    r.reused.keys_found,
                    r.native.keys_found
                );
            }
        }
        BenchWhat::Density { plugin, tenants, distinct } => {
            let r = density::density(&plugin, tenants, distinct).await?;
            println!("density benchmark ({}):", plugin.display());
            println!("  resident memory before loading      {:>8.1} MiB", r.baseline_rss_mib);
            println!(
                "  {} tenants sharing one .wasm: start {:.2} s (each run once), resident {:.1} MiB",
                r.tenants, r.tenants_start_s, r.tenants_rss_mib
            );
            println!(
                "  {} distinct handlers: start {:.2} s compiling, {:.2} s from the cache, resident {:.1} MiB",
                r.distinct, r.distinct_cold_s, r.distinct_warm_s, r.distinct_rss_mib
            );
        }
        BenchWhat::Isolation { good, hostile, messages, attacks, rounds } => {
            let r = isolation::isolation(&good, &hostile, messages, &attacks, rounds).await?;
            println!(
                "isolation benchmark: {} messages of a well-behaved tenant per run, {} attacks ({}) per attacked run",
                r.messages,
                r.attacks,
                attacks.join(", ")
            );
            println!("  round      alone msg/s   attacked msg/s   ratio");
            for (i, (alone, attacked)) in r.rounds.iter().enumerate() {
                println!("  {:>5}   {:>12.0}   {:>14.0}   {:>5.2}", i + 1, alone, attacked, attacked / alone.max(1e-9));
            }
            println!("  median ratio                              {:>5.2}", r.median_ratio());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn bench_languages(messages: u32) -> anyhow::Result<()> {
    let handlers: Vec<(String, PathBuf)> = [("rust", ""), ("c", "_c"), ("javascript", "_js"), ("python", "_py")]
        .iter()
        .map(|(label, suffix)| (label.to_string(), PathBuf::from(format!("plugins/dist/cache_update{suffix}.wasm"))))
        .collect();
    let reports = languages::languages(&handlers, messages).await?;
    let rust = reports.first().map(|r| r.per_message_ns).unwrap_or(1.0).max(0.001);
    println!();
    println!(
        "cache-update in each language: {messages} messages each, fresh instance per message, then reused up to {} times",
        dispatch::REUSE
    );
    println!(
        "  {:<11} {:>9} {:>12} {:>12} {:>12} {:>16} {:>9} {:>13} {:>12}",
        "language",
        "size",
        "first load",
        "cached load",
        "per message",
        "of which inst.",
        "vs rust",
        "faults/msg",
        "reused"
    );
    for r in &reports {
        println!(
            "  {:<11} {:>7.1}MB {:>10.0}ms {:>10.1}ms {:>10.1}µs {:>14.1}µs {:>8.1}x {:>13.1} {:>10.1}µs",
            r.label,
            r.bytes as f64 / 1e6,
            r.first_load.as_secs_f64() * 1e3,
            r.cached_load.as_secs_f64() * 1e3,
            r.per_message_ns / 1e3,
            r.instantiate_ns / 1e3,
            r.per_message_ns / rust,
            r.faults_per_message,
            r.reused_ns / 1e3
        );
    }
    Ok(())
}
