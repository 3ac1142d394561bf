//! The `switchyard` command: run a host, invoke a handler once, check a
//! config, or benchmark dispatch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
mod bench;
mod dev;
mod invoke;

use bench::BenchWhat;
use switchyard::config::{Config, Limits};
use switchyard::contract::Message;
use switchyard::runtime::Runtime;
use switchyard::wiring::{self, Host};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Runs broker messages through sandboxed WebAssembly handlers")]
struct Cli {
    /// How log lines are written to stderr: `text` for a person, or `json`,
    /// one object a line, for a log collector (`run` then prints no
    /// progress lines, only log events).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of the log on stderr.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Plain lines; coloured only at a terminal.
    Text,
    /// One JSON object a line, with the event's fields.
    Json,
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
    /// the outcome and every effect it requested; or, with `--replay`, every
    /// message of a file, compared with a golden file by `--expect`.
    Invoke {
        /// The handler component (.wasm).
        wasm: PathBuf,
        /// The message's topic.
        #[arg(long, default_value = "test")]
        topic: String,
        /// The payload, as text (usually JSON).
        #[arg(long, default_value = "", conflicts_with = "replay")]
        payload: String,
        /// The message key.
        #[arg(long, conflicts_with = "replay")]
        key: Option<String>,
        /// A header, as name=value; repeatable.
        #[arg(long = "header", value_parser = parse_header, conflicts_with = "replay")]
        headers: Vec<(String, String)>,
        /// A configuration variable the handler reads with `config.get`, as key=value; repeatable.
        #[arg(long = "config", value_parser = parse_header)]
        variables: Vec<(String, String)>,
        /// The attempt number the handler sees.
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Run every message of this file in order instead, one JSON object a
        /// line as the file source reads them (`topic`, `id`, `key`,
        /// `headers`, `payload`), and print one outcome line a message.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// With `--replay`: the golden file, one JSON object a line with a
        /// message's `id` and the fields its outcome must have (`outcome`,
        /// `reason`, `effects`, ...). Exits 1 naming every difference.
        #[arg(long, requires = "replay")]
        expect: Option<PathBuf>,
        /// With `--expect`: write the outcomes to the golden file instead of
        /// comparing them.
        #[arg(long, requires = "expect")]
        bless: bool,
        /// Where compiled code is cached between invokes; defaults to
        /// `$XDG_CACHE_HOME/switchyard/compiled` (`~/.cache/...`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Compile the handler even if the cache has it, and cache nothing.
        #[arg(long, conflicts_with = "cache_dir")]
        no_cache: bool,
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
    /// Work on a handler live: watch its sources, rebuild on every change,
    /// and deploy each build into a running host, printing each message's
    /// outcome. A failed build or a refused deploy leaves the last good
    /// version serving.
    Dev {
        /// The handler project (as `switchyard new` makes it, or any
        /// directory with `--build` and `--wasm`).
        dir: PathBuf,
        /// The host's config; without it, a host on the embedded backends
        /// that sends every line appended to `<dir>/messages.jsonl` to the handler.
        #[arg(long)]
        config: Option<PathBuf>,
        /// With `--config`: the tenant of the handler to deploy to.
        #[arg(long, requires = "config")]
        tenant: Option<String>,
        /// With `--config`: the handler to deploy to, when the config has several.
        #[arg(long, requires = "config")]
        handler: Option<String>,
        /// The build command, run in the project directory, instead of the language's.
        #[arg(long)]
        build: Option<String>,
        /// The component the build writes, relative to the project, instead of the language's.
        #[arg(long)]
        wasm: Option<PathBuf>,
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
    /// Describe the config file: its JSON Schema, or its reference in Markdown.
    Config {
        #[command(subcommand)]
        what: ConfigWhat,
    },
}

#[derive(Subcommand)]
enum ConfigWhat {
    /// Print the JSON Schema of a config file, for editors.
    Schema,
    /// Print the configuration reference in Markdown (docs/configuration.md).
    Reference,
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
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not name=value"))?;
    Ok((name.to_string(), value.to_string()))
}

/// Each message allocates and frees its store, buffers and futures across
/// the runtime's threads; mimalloc's per-thread heaps take about a tenth of
/// the host's CPU time off glibc's allocator on the broker benchmark.
/// The values the config took from the environment or from files. Every
/// log line and every error the binary writes has them replaced by `***`.
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Secrets shorter than this are not searched for: they would blank out
/// ordinary words.
const MIN_SECRET_LEN: usize = 4;

/// Load a config and keep its secrets out of everything printed from now on.
fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    if let Ok(mut secrets) = SECRETS.write() {
        for secret in &config.secrets {
            if secret.len() < MIN_SECRET_LEN {
                tracing::warn!(config = %path.display(), "a secret of fewer than 4 characters cannot be kept out of the logs");
            } else if !secrets.contains(secret) {
                secrets.push(secret.clone());
            }
        }
        // The longest first, so one that contains another is blanked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
    Ok(config)
}

/// `text` with every secret replaced by `***`.
fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(secrets) = SECRETS.read() else { return text.into() };
    let mut text = std::borrow::Cow::Borrowed(text);
    for secret in secrets.iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***").into();
        }
    }
    text
}

/// The log's writer: standard error, with secrets blanked. The formatter
/// writes each event in one call, so a secret is never split between two.
struct Redacting;

impl std::io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `dev` shows each message's outcome as it is settled.
    let default = match cli.command {
        Command::Dev { .. } => "warn,switchyard=info,switchyard::dispatch::delivery=debug,handler=info",
        _ => "warn,switchyard=info,handler=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Redacting);
    match cli.log_format {
        // Colour only for a person at a terminal, not in a log collector's file.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => log.json().with_current_span(true).with_span_list(true).init(),
    }
    let progress = cli.log_format == LogFormat::Text;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch_command(cli.command, progress)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run `command`; `progress` prints `run`'s progress lines.
async fn dispatch_command(command: Command, progress: bool) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Run { config } => run(&config, progress).await,
        Command::Invoke {
            wasm,
            topic,
            payload,
            key,
            headers,
            variables,
            attempt,
            replay,
            expect,
            bless,
            cache_dir,
            no_cache,
            data_dir,
            init_sql,
            timeout_ms,
            memory_mib,
        } => {
            let options = invoke::Options {
                data_dir,
                init_sql,
                limits: Limits { memory_mib, timeout_ms, fuel: None },
                variables,
                cache_dir: if no_cache { None } else { cache_dir.or_else(invoke::default_cache_dir) },
            };
            if let Some(file) = replay {
                let golden = match expect {
                    Some(path) if bless => invoke::Golden::Bless(path),
                    Some(path) => invoke::Golden::Compare(path),
                    None => invoke::Golden::None,
                };
                return invoke::replay(&wasm, &file, golden, options).await;
            }
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
            invoke::one(&wasm, message, options).await
        }
        Command::Dev { dir, config, tenant, handler, build, wasm } => {
            let config = config.as_deref().map(load_config).transpose()?;
            dev::run(dev::Args { dir, config, tenant, handler, build, wasm }).await
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
            let config = load_config(&config)?;
            let search = wiring::open_search(&config).context("cannot open the search backend")?;
            let hits = search.query(&index, &query, limit).await.context("search failed")?;
            for hit in &hits {
                println!("{:>8.3}  {}  {}", hit.score, hit.id, hit.document);
            }
            eprintln!("{} hits", hits.len());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Bench { what } => bench::run(what.unwrap_or_default()).await,
        Command::Config { what } => {
            let text = match what {
                ConfigWhat::Schema => serde_json::to_string_pretty(&switchyard::config::reference::schema())?,
                ConfigWhat::Reference => switchyard::config::reference::reference(),
            };
            println!("{}", text.trim_end());
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

async fn run(path: &Path, progress: bool) -> anyhow::Result<std::process::ExitCode> {
    let config = load_config(path)?;
    let host = Host::build(&config).await?.with_progress(progress);
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
    let config = load_config(path)?;
    let runtime = Runtime::new(wiring::runtime_options(&config))?;
    let registry = wiring::load_handlers(&config, &Arc::new(runtime))?;
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
