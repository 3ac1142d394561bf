//! The `switchyard` command: run a host, invoke a handler once, check a
//! config, or benchmark dispatch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use switchyard::capabilities::{Capabilities, backends};
use switchyard::config::{Config, Limits};
use switchyard::runtime::bindings::Message;
use switchyard::runtime::{InvokeContext, Outcome, Runtime, RuntimeOptions};
use switchyard::{Host, dispatch};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Runs broker messages through sandboxed WebAssembly handlers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: consume from the configured sources until they end or
    /// SIGTERM/SIGINT, printing a progress line every second.
    Run {
        /// The config file.
        config: PathBuf,
    },
    /// Run one handler on one message with the embedded backends, and print
    /// the outcome and every effect it requested.
    Invoke {
        /// The handler component (.wasm).
        wasm: PathBuf,
        /// The message's topic.
        #[arg(long, default_value = "test")]
        topic: String,
        /// The payload, as text (usually JSON).
        #[arg(long, default_value = "")]
        payload: String,
        /// The message key.
        #[arg(long)]
        key: Option<String>,
        /// A header, as name=value; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The attempt number the handler sees.
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Where the embedded backends keep their data; a fresh temporary
        /// directory if not given.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// SQL run on the embedded database first, such as a CREATE TABLE; repeatable.
        #[arg(long)]
        init_sql: Vec<String>,
        /// Wall-time limit in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = 64)]
        memory_mib: u64,
    },
    /// Check a config: parse it, and load and validate every handler.
    Check {
        /// The config file.
        config: PathBuf,
    },
    /// Deploy, list and roll back handler versions on a running host.
    Plugins {
        /// The admin API of the running host.
        #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
        admin: String,
        /// The admin token; defaults to $SWITCHYARD_TOKEN.
        #[arg(long, env = "SWITCHYARD_TOKEN", global = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: PluginsAction,
    },
    /// Query a search index of a config's search backend.
    Search {
        /// The config file.
        config: PathBuf,
        /// The index.
        index: String,
        /// The query: terms, "phrases", field:term.
        query: String,
        /// The most hits to show.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Create a handler project in rust, python, js or c that builds and
    /// passes `switchyard invoke` as it comes.
    New {
        /// The language: rust, python, js or c.
        #[arg(value_parser = str::parse::<switchyard::scaffold::Language>)]
        language: switchyard::scaffold::Language,
        /// The handler's name, which is also its directory.
        name: String,
        /// Where to create the directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Benchmarks, each run side by side in one run.
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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

#[derive(Subcommand)]
enum PluginsAction {
    /// Validate a .wasm on the host and make it the live version.
    Deploy {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// The component.
        wasm: PathBuf,
    },
    /// List every handler, or one handler's versions.
    List {
        /// The tenant.
        tenant: Option<String>,
        /// The handler.
        handler: Option<String>,
    },
    /// Make the previous version live again, or `--version N`.
    Rollback {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// The version to go back to.
        #[arg(long)]
        version: Option<u32>,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("header {s:?} is not name=value"))?;
    Ok((name.to_string(), value.to_string()))
}

/// Each message allocates and frees its store, buffers and futures across
/// the runtime's threads; mimalloc's per-thread heaps take about a tenth of
/// the host's CPU time off glibc's allocator on the broker benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,switchyard=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch_command(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch_command(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Run { config } => run(&config).await,
        Command::Invoke { wasm, topic, payload, key, headers, attempt, data_dir, init_sql, timeout_ms, memory_mib } => {
            let message = Message {
                id: "invoke-1".into(),
                source: "invoke".into(),
                topic,
                key,
                headers,
                payload: payload.into_bytes(),
                attempt,
                reply_to: None,
                timestamp_ms: None,
            };
            let limits = Limits { memory_mib, timeout_ms, fuel: None };
            invoke(&wasm, message, data_dir, init_sql, limits).await
        }
        Command::Check { config } => check(&config),
        Command::Plugins { admin, token, action } => plugins(&admin, token.as_deref(), action).await,
        Command::New { language, name, dir } => {
            let project = switchyard::scaffold::create(language, &name, &dir)?;
            println!("created {}", project.dir.display());
            println!("build:  cd {} && {}", project.dir.display(), project.build);
            println!(
                "try:    switchyard invoke {} --payload '{{\"id\": \"1\"}}'",
                project.dir.join(&project.wasm).display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Search { config, index, query, limit } => {
            let config = Config::load(&config)?;
            let search = backends::open_search(&config).context("cannot open the search backend")?;
            let hits = search.query(&index, &query, limit).await.context("search failed")?;
            for hit in &hits {
                println!("{:>8.3}  {}  {}", hit.score, hit.id, hit.document);
            }
            eprintln!("{} hits", hits.len());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench { what } => {
            let default = BenchWhat::Dispatch {
                plugin: PathBuf::from("plugins/dist/noop.wasm"),
                messages: 100_000,
                languages: false,
                language_messages: 2000,
            };
            bench(what.unwrap_or(default)).await
        }
    }
}

async fn bench_languages(messages: u32) -> anyhow::Result<()> {
    let handlers: Vec<(String, PathBuf)> = [("rust", ""), ("c", "_c"), ("javascript", "_js"), ("python", "_py")]
        .iter()
        .map(|(label, suffix)| (label.to_string(), PathBuf::from(format!("plugins/dist/cache_update{suffix}.wasm"))))
        .collect();
    let reports = switchyard::bench::languages(&handlers, messages).await?;
    let rust = reports.first().map(|r| r.per_message_ns).unwrap_or(1.0).max(0.001);
    println!();
    println!("cache-update in each language: {messages} messages each, fresh instance per message");
    println!(
        "  {:<11} {:>9} {:>12} {:>12} {:>12} {:>16} {:>9} {:>13}",
        "language", "size", "first load", "cached load", "per message", "of which inst.", "vs rust", "faults/msg"
    );
    for r in &reports {
        println!(
            "  {:<11} {:>7.1}MB {:>10.0}ms {:>10.1}ms {:>10.1}µs {:>14.1}µs {:>8.1}x {:>13.1}",
            r.label,
            r.bytes as f64 / 1e6,
            r.first_load.as_secs_f64() * 1e3,
            r.cached_load.as_secs_f64() * 1e3,
            r.per_message_ns / 1e3,
            r.instantiate_ns / 1e3,
            r.per_message_ns / rust,
            r.faults_per_message
        );
    }
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(path)?;
    let host = Host::build(&config).await?.with_progress(true);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        signal.cancel();
    });
    tracing::info!(config = %path.display(), "switchyard running");
    let summary = host.run(shutdown).await;
    tracing::info!(
        handled = summary.handled,
        retried = summary.retried,
        dead_lettered = summary.dead_lettered,
        "switchyard stopped"
    );
    Ok(std::process::ExitCode::SUCCESS)
}

async fn invoke(
    wasm: &Path,
    message: Message,
    data_dir: Option<PathBuf>,
    init_sql: Vec<String>,
    limits: Limits,
) -> anyhow::Result<std::process::ExitCode> {
    let temp;
    let data_dir = match data_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let mut config = Config::parse(Path::new("<invoke>"), "").context("empty config")?;
    config.data_dir = data_dir.clone();
    config.backends.db = switchyard::config::DbBackendConfig::Sqlite { path: None, init: init_sql };
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(data_dir.join("compiled")),
        max_memory_mib: limits.memory_mib,
        ..RuntimeOptions::default()
    })?;
    let plugin = runtime.load(wasm)?;
    let backends = Arc::new(backends::open(&config).await.context("cannot open the embedded backends")?);
    let ctx = InvokeContext {
        caps: Arc::new(Capabilities::unrestricted(backends)),
        limits,
        tenant: "invoke".into(),
        handler: wasm.display().to_string().into(),
        record_effects: true,
    };
    let invocation = runtime.invoke(&plugin, &message, &ctx).await;
    let outcome = match &invocation.outcome {
        Outcome::Ok => serde_json::json!({ "outcome": "ok" }),
        Outcome::Retry { delay, reason } => {
            serde_json::json!({ "outcome": "retry", "delay_ms": delay.as_millis() as u64, "reason": reason })
        }
        Outcome::Reject(reason) => serde_json::json!({ "outcome": "reject", "reason": reason }),
        Outcome::Failed(f) => serde_json::json!({ "outcome": invocation.outcome.kind(), "reason": f.to_string() }),
    };
    let report = serde_json::json!({
        "handler": wasm.display().to_string(),
        "digest": plugin.digest,
        "result": outcome,
        "effects": invocation.effects,
        "data_dir": data_dir.display().to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if invocation.outcome == Outcome::Ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}

async fn bench(what: BenchWhat) -> anyhow::Result<std::process::ExitCode> {
    match what {
        BenchWhat::Dispatch { plugin, messages, languages, language_messages } => {
            let r = switchyard::bench::dispatch(&plugin, messages).await?;
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
            if languages {
                bench_languages(language_messages).await?;
            }
        }
        BenchWhat::Effects { redis_url, postgres_url, mysql_url, ops, single_ops, concurrency } => {
            let some = |url: String| (!url.is_empty()).then_some(url);
            let options = switchyard::bench_effects::EffectsOptions {
                redis_url: some(redis_url),
                postgres_url: some(postgres_url),
                mysql_url: some(mysql_url),
                ops,
                single_ops,
                concurrency,
            };
            let results = switchyard::bench_effects::effects(&options).await?;
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
            let options = switchyard::bench_brokers::BrokersOptions {
                nats_url: some(nats_url),
                amqp_url: some(amqp_url),
                redis_url,
                plugin,
                messages,
                payload_bytes,
                concurrency,
            };
            let reports = switchyard::bench_brokers::brokers(&options).await?;
            println!(
                "brokers benchmark: {messages} messages of about {payload_bytes} bytes per side, broker -> Redis SET -> ack, {concurrency} in flight"
            );
            println!("  {:<16} {:>16} {:>16} {:>18}", "broker", "switchyard", "native Rust", "switchyard/native");
            for r in &reports {
                println!(
                    "  {:<16} {:>10.0} msg/s {:>10.0} msg/s {:>18.2}",
                    r.broker,
                    r.switchyard.rate,
                    r.native.rate,
                    r.ratio()
                );
            }
            for r in &reports {
                println!(
                    "  {}: switchyard {:.2} s, native {:.2} s; {} and {} keys checked in Redis",
                    r.broker,
                    r.switchyard.elapsed.as_secs_f64(),
                    r.native.elapsed.as_secs_f64(),
                    r.switchyard.keys_found,
                    r.native.keys_found
                );
            }
        }
        BenchWhat::Density { plugin, tenants, distinct } => {
            let r = switchyard::bench::density(&plugin, tenants, distinct).await?;
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
            let r = switchyard::bench::isolation(&good, &hostile, messages, &attacks, rounds).await?;
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

async fn plugins(admin: &str, token: Option<&str>, action: PluginsAction) -> anyhow::Result<std::process::ExitCode> {
    use switchyard::admin::client::request;
    let response = match action {
        PluginsAction::Deploy { tenant, handler, wasm } => {
            let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            request(admin, "PUT", &format!("/v1/handlers/{tenant}/{handler}"), token, &bytes).await?
        }
        PluginsAction::List { tenant: Some(t), handler: Some(h) } => {
            request(admin, "GET", &format!("/v1/handlers/{t}/{h}/versions"), token, b"").await?
        }
        PluginsAction::List { .. } => request(admin, "GET", "/v1/handlers", token, b"").await?,
        PluginsAction::Rollback { tenant, handler, version } => {
            let body = version.map(|v| serde_json::json!({ "version": v }).to_string()).unwrap_or_default();
            request(admin, "POST", &format!("/v1/handlers/{tenant}/{handler}/rollback"), token, body.as_bytes()).await?
        }
    };
    match serde_json::from_str::<serde_json::Value>(&response.body) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) => println!("{}", response.body),
    }
    if response.status >= 300 {
        bail!("the admin API answered {}", response.status);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn check(path: &Path) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::load(path)?;
    let runtime = Runtime::new(dispatch::runtime_options(&config))?;
    let registry = dispatch::load_handlers(&config, &Arc::new(runtime))?;
    if config.routes.is_empty() {
        bail!("{}: no routes: no message would reach a handler", path.display());
    }
    println!(
        "{}: ok: {} sources, {} handlers loaded, {} routes",
        path.display(),
        config.sources.len(),
        registry.slots().count(),
        config.routes.len()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
