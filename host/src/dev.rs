//! `switchyard dev <dir>`: edit a handler and see it live. It watches the
//! project's sources, rebuilds with the language's build line on every
//! change, and deploys each new build into a host it runs, through the same
//! validation as any deploy. A build that fails, or a build the host
//! refuses, leaves the version before it serving, and says why. Each
//! message's outcome is printed as it flows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use notify::{EventKind, RecursiveMode, Watcher};
use switchyard::config::Config;
use switchyard::runtime::registry::Registry;
use switchyard::wiring::Host;
use tokio_util::sync::CancellationToken;

/// Changes closer together than this are one change: an editor's save is
/// several writes and renames.
const SETTLE: Duration = Duration::from_millis(300);

/// What `switchyard dev` was asked to run.
pub struct Args {
    /// The handler project.
    pub dir: PathBuf,
    /// The host's config, already loaded; `None` runs the dev host.
    pub config: Option<Config>,
    /// The tenant of the handler to deploy to.
    pub tenant: Option<String>,
    /// The handler to deploy to.
    pub handler: Option<String>,
    /// The build command, instead of the language's.
    pub build: Option<String>,
    /// The component the build writes, instead of the language's.
    pub wasm: Option<PathBuf>,
}

/// A handler project: how to build it and where the build puts the component.
#[derive(Debug)]
struct Project {
    dir: PathBuf,
    name: String,
    build: String,
    wasm: PathBuf,
}

impl Project {
    /// Tell the language from the files: a `Cargo.toml` is Rust, a
    /// `build.sh` (as `switchyard new` writes for Python, JavaScript and C)
    /// builds `<name>.wasm`.
    fn detect(dir: &Path, build: Option<String>, wasm: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.canonicalize().with_context(|| format!("cannot open the handler project {}", dir.display()))?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "handler".into());
        let manifest = dir.join("Cargo.toml");
        let (default_build, default_wasm) = if manifest.exists() {
            let text =
                std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            let parsed: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not valid TOML", manifest.display()))?;
            let Some(package) = parsed.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) else {
                bail!("{} has no [package] name", manifest.display());
            };
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
            let wasm = target.join("wasm32-wasip2/release").join(format!("{}.wasm", package.replace('-', "_")));
            (Some("cargo build --target wasm32-wasip2 --release".to_string()), Some(wasm))
        } else if dir.join("build.sh").exists() {
            (Some("./build.sh".to_string()), Some(dir.join(format!("{}.wasm", name.replace('-', "_")))))
        } else {
            (None, None)
        };
        let Some(build) = build.or(default_build) else {
            bail!("{}: no Cargo.toml or build.sh to tell how to build it; give --build and --wasm", dir.display());
        };
        let Some(wasm) = wasm.map(|w| dir.join(w)).or(default_wasm) else {
            bail!("{}: give --wasm, the component `{build}` writes", dir.display());
        };
        Ok(Self { dir, name, build, wasm })
    }

    /// Run the build; on failure, its output.
    async fn build(&self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.build)
            .current_dir(&self.dir)
            .output()
            .await
            .map_err(|e| format!("cannot run `{}`: {e}", self.build))?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            return Err(format!("`{}` failed ({}):\n{}", self.build, out.status, text.trim_end()));
        }
        if !self.wasm.exists() {
            return Err(format!("`{}` succeeded but wrote no {}", self.build, self.wasm.display()));
        }
        eprintln!("dev: built {} in {:.1}s", self.wasm.display(), started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Whether a change to `path` calls for a rebuild: not build output,
    /// the dev host's own files, or version-control and cache directories.
    fn is_source(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else { return false };
        let skipped_dir = relative.components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c == "target" || c == "node_modules" || c == "__pycache__" || c.starts_with('.')
        });
        let output = matches!(path.extension().and_then(|e| e.to_str()), Some("wasm" | "jsonl" | "offset" | "tmp"));
        !skipped_dir && !output && path != self.wasm
    }

    /// The dev host: the embedded backends under `<dir>/.switchyard`, and
    /// every message appended to `<dir>/messages.jsonl` (one JSON object a
    /// line, as the file source reads them) going to the handler.
    fn dev_config(&self) -> anyhow::Result<Config> {
        let data = self.dir.join(".switchyard");
        let messages = self.dir.join("messages.jsonl");
        if !messages.exists() {
            std::fs::write(&messages, "").with_context(|| format!("cannot create {}", messages.display()))?;
        }
        let handler = handler_name(&self.name);
        let text = format!(
            "data_dir = {data:?}\n\
             [sources.dev]\ntype = \"file\"\npath = {messages:?}\nfollow = true\n\
             [tenants.dev.handlers.{handler}]\nwasm = {wasm:?}\n\
             [[routes]]\nsource = \"dev\"\ntopic = \"*\"\ntenant = \"dev\"\nhandler = \"{handler}\"\nmax_attempts = 1\n",
            data = data.display().to_string(),
            messages = messages.display().to_string(),
            wasm = self.wasm.display().to_string(),
        );
        Ok(Config::parse(&self.dir.join("<dev>"), &text)?)
    }
}

/// A handler name from a directory name: lowercase letters, digits and dashes.
fn handler_name(name: &str) -> String {
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if name.starts_with(|c: char| c.is_ascii_lowercase()) { name } else { format!("h-{name}") }
}

/// The one handler `args` names, or the config's only one.
fn pick_slot(registry: &Registry, tenant: Option<String>, handler: Option<String>) -> anyhow::Result<(String, String)> {
    let all: Vec<(String, String)> = registry.slots().map(|s| (s.tenant.to_string(), s.handler.to_string())).collect();
    let matching: Vec<&(String, String)> = all
        .iter()
        .filter(|(t, h)| tenant.as_ref().is_none_or(|want| want == t) && handler.as_ref().is_none_or(|want| want == h))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "the config has no handler {}/{}",
            tenant.as_deref().unwrap_or("*"),
            handler.as_deref().unwrap_or("*")
        ),
        many => {
            let names: Vec<String> = many.iter().map(|(t, h)| format!("{t}/{h}")).collect();
            bail!("the config has several handlers ({}); name one with --tenant and --handler", names.join(", "))
        }
    }
}

/// Build, run the host, and redeploy on every change until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let project = Project::detect(&args.dir, args.build, args.wasm)?;
    eprintln!("dev: watching {}; building with `{}`", project.dir.display(), project.build);

    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let content = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Data(_))
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    | EventKind::Modify(notify::event::ModifyKind::Any)
            );
            if content {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "file watch error"),
    })
    .context("cannot watch the handler project")?;
    watcher
        .watch(&project.dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", project.dir.display()))?;

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        signal.cancel();
    });

    // The first build: without it there is nothing to serve.
    while let Err(e) = project.build().await {
        eprintln!("dev: {e}\ndev: waiting for a change");
        if !next_change(&project, &mut changes, &shutdown).await {
            return Ok(std::process::ExitCode::SUCCESS);
        }
    }

    let config = match args.config {
        Some(config) => config,
        None => project.dev_config()?,
    };
    let host = Host::build(&config).await?;
    let registry = host.registry();
    let (tenant, handler) = pick_slot(&registry, args.tenant, args.handler)?;
    deploy(&registry, &tenant, &handler, &project).await;
    if config.sources.contains_key("dev") && config.sources.len() == 1 {
        eprintln!("dev: append messages to {} to send them", project.dir.join("messages.jsonl").display());
    }
    let running = tokio::spawn(host.run(shutdown.clone()));

    while next_change(&project, &mut changes, &shutdown).await {
        let live = registry.slot(&tenant, &handler).map_or(0, |s| s.live().number);
        match project.build().await {
            Ok(()) => deploy(&registry, &tenant, &handler, &project).await,
            Err(e) => eprintln!("dev: {e}\ndev: version {live} keeps serving"),
        }
    }
    drop(watcher);
    let summary = running.await.context("the host stopped abnormally")?;
    eprintln!(
        "dev: stopped: {} handled, {} retried, {} dead-lettered",
        summary.handled, summary.retried, summary.dead_lettered
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Wait for a change to a source file, and for the changes after it to
/// settle; false once `shutdown` is cancelled.
async fn next_change(
    project: &Project,
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    shutdown: &CancellationToken,
) -> bool {
    let first = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            path = changes.recv() => match path {
                Some(path) if project.is_source(&path) => break path,
                Some(_) => continue,
                None => return false,
            },
        }
    };
    // Let the editor finish, then take everything that came meanwhile.
    tokio::time::sleep(SETTLE).await;
    while changes.try_recv().is_ok() {}
    let shown = first.strip_prefix(&project.dir).unwrap_or(&first);
    eprintln!("dev: {} changed; rebuilding", shown.display());
    true
}

/// Deploy the build into `tenant`/`handler`, unless it is the live version.
async fn deploy(registry: &Arc<Registry>, tenant: &str, handler: &str, project: &Project) {
    let bytes = match std::fs::read(&project.wasm) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("dev: cannot read {}: {e}", project.wasm.display());
            return;
        }
    };
    let keeps = registry.slot(tenant, handler).map_or(0, |s| s.live().number);
    let (registry, t, h, origin) =
        (registry.clone(), tenant.to_string(), handler.to_string(), format!("dev: {}", project.wasm.display()));
    // Compiling can take seconds: off the async threads.
    match tokio::task::spawn_blocking(move || registry.deploy_changed(&t, &h, &bytes, &origin)).await {
        Ok(Ok(Some(info))) => eprintln!(
            "dev: deployed {tenant}/{handler} version {} ({})",
            info.version,
            info.digest.get(..12).unwrap_or(&info.digest)
        ),
        Ok(Ok(None)) => eprintln!("dev: {tenant}/{handler} is already running this build"),
        Ok(Err(e)) => eprintln!("dev: deploy refused: {e}\ndev: version {keeps} keeps serving"),
        Err(e) => eprintln!("dev: deploy failed: {e}\ndev: version {keeps} keeps serving"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_rust_project_builds_with_cargo_into_its_target_directory() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("order-audit");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("Cargo.toml"), "[package]\nname = \"order-audit\"\n").unwrap();
        let detected = Project::detect(&project, None, None).unwrap();
        assert_eq!(detected.build, "cargo build --target wasm32-wasip2 --release");
        assert!(detected.wasm.ends_with("wasm32-wasip2/release/order_audit.wasm"), "{}", detected.wasm.display());
    }

    #[test]
    fn a_project_without_a_build_line_is_refused_naming_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let e = Project::detect(dir.path(), None, None).unwrap_err().to_string();
        assert!(e.contains("no Cargo.toml or build.sh") && e.contains("--build"), "{e}");
        let given = Project::detect(dir.path(), Some("make".into()), Some("out/h.wasm".into())).unwrap();
        assert_eq!(given.wasm, dir.path().canonicalize().unwrap().join("out/h.wasm"));
    }

    #[test]
    fn build_output_and_the_dev_hosts_files_are_not_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.sh"), "").unwrap();
        let p = Project::detect(dir.path(), None, None).unwrap();
        assert!(p.is_source(&p.dir.join("app.py")));
        assert!(p.is_source(&p.dir.join("src/lib.rs")));
        for skipped in ["target/x.rs", ".switchyard/compiled/a", "messages.jsonl", "messages.jsonl.offset", "x.wasm"] {
            assert!(!p.is_source(&p.dir.join(skipped)), "{skipped}");
        }
        assert!(!p.is_source(Path::new("/elsewhere/app.py")));
    }
}
