//! `switchyard invoke`: the handler author's local loop. One message, or a
//! whole file of them with `--replay`, runs through a handler on the embedded
//! backends, and every effect it asked for is reported. `--expect` compares
//! the outcomes with a golden file, so the same command can sit in the
//! author's own CI. Compiled code is kept in a per-user cache, so only the
//! first invoke of a .wasm pays for compiling it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use switchyard::capabilities::context::Capabilities;
use switchyard::config::{Config, DbBackendConfig, Limits};
use switchyard::contract::Message;
use switchyard::runtime::{Invocation, InvokeContext, Outcome, Plugin, Runtime, RuntimeOptions};
use switchyard::sources::file::parse_line;
use switchyard::wiring;

/// What every invoke shares, from the command line.
pub struct Options {
    /// Where the embedded backends keep their data; a temporary directory if
    /// not given.
    pub data_dir: Option<PathBuf>,
    /// SQL run on the embedded database first.
    pub init_sql: Vec<String>,
    /// The handler's limits.
    pub limits: Limits,
    /// Variables the handler reads with `config.get`.
    pub variables: Vec<(String, String)>,
    /// The compiled-code cache; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

/// The per-user compiled-code cache: `$XDG_CACHE_HOME/switchyard/compiled`,
/// else `~/.cache/switchyard/compiled`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("switchyard").join("compiled"))
}

/// `dir`, created private to this user, if it is safe to load compiled code
/// from: the runtime maps cache entries in as machine code, so a directory
/// that others can write to is not used.
fn private_dir(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        tracing::warn!(cache = %dir.display(), error = %e, "cannot create the compiled-code cache; compiling without it");
        return None;
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.permissions().mode() & 0o022 == 0 => Some(dir.to_path_buf()),
        Ok(_) => {
            tracing::warn!(
                cache = %dir.display(),
                "the compiled-code cache is writable by other users, so its entries cannot be trusted; compiling without it"
            );
            None
        }
        Err(e) => {
            tracing::warn!(cache = %dir.display(), error = %e, "cannot read the compiled-code cache; compiling without it");
            None
        }
    }
}

/// A handler loaded next to a set of embedded backends, ready for messages.
struct Session {
    runtime: Runtime,
    plugin: Plugin,
    ctx: InvokeContext,
    data_dir: PathBuf,
    /// Removes the temporary data directory when the session ends.
    _temp: Option<tempfile::TempDir>,
}

impl Session {
    async fn open(wasm: &Path, options: Options) -> anyhow::Result<Self> {
        let (data_dir, temp) = match options.data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir().context("cannot create a temporary data directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let mut config = Config::parse(Path::new("<invoke>"), "").context("empty config")?;
        config.data_dir = data_dir.clone();
        config.backends.db = DbBackendConfig::Sqlite { path: None, init: options.init_sql };
        let runtime = Runtime::new(RuntimeOptions {
            cache_dir: options.cache_dir.as_deref().and_then(private_dir),
            max_memory_mib: options.limits.memory_mib,
            // One message at a time: a small pool, so reserving it costs
            // little of the start-up (a host's is sized for 1,000).
            max_instances: 16,
            ..RuntimeOptions::default()
        })?;
        let plugin = runtime.load(wasm)?;
        let backends = Arc::new(wiring::open_backends(&config).await.context("cannot open the embedded backends")?);
        let ctx = InvokeContext {
            caps: Arc::new(Capabilities::unrestricted(backends)),
            limits: options.limits,
            tenant: "invoke".into(),
            handler: wasm.display().to_string().into(),
            record_effects: true,
            variables: Arc::new(options.variables.into_iter().collect()),
            pool: None,
        };
        Ok(Self { runtime, plugin, ctx, data_dir, _temp: temp })
    }

    async fn run(&self, message: &Message) -> Invocation {
        self.runtime.invoke(&self.plugin, message, &self.ctx).await
    }
}

/// An invocation as the report shows it: the outcome, its reason or delay,
/// and the effects.
fn result(invocation: &Invocation) -> Value {
    let mut result = match &invocation.outcome {
        Outcome::Ok => json!({ "outcome": "ok" }),
        Outcome::Retry { delay, reason } => {
            json!({ "outcome": "retry", "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "reason": reason })
        }
        Outcome::Reject(reason) => json!({ "outcome": "reject", "reason": reason }),
        Outcome::Failed(f) => json!({ "outcome": invocation.outcome.kind(), "reason": f.to_string() }),
    };
    result["effects"] = json!(invocation.effects);
    result
}

/// Run one message and print the report; exits 2 unless the handler
/// returned ok.
pub async fn one(wasm: &Path, message: Message, options: Options) -> anyhow::Result<std::process::ExitCode> {
    let session = Session::open(wasm, options).await?;
    let invocation = session.run(&message).await;
    let mut result = result(&invocation);
    let effects = result.as_object_mut().and_then(|r| r.remove("effects")).unwrap_or_default();
    let report = json!({
        "handler": wasm.display().to_string(),
        "digest": session.plugin.digest,
        "compiled_from_cache": session.plugin.cached,
        "result": result,
        "effects": effects,
        "data_dir": session.data_dir.display().to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(exit(invocation.outcome == Outcome::Ok))
}

/// What `--replay` was asked to do with the outcomes.
pub enum Golden {
    /// Only print them.
    None,
    /// Compare them with this file's.
    Compare(PathBuf),
    /// Write them to this file, as the outcomes to expect from now on.
    Bless(PathBuf),
}

/// Run every message of `file` in order, on one set of embedded backends so
/// that each sees what the ones before it wrote, and print one line a
/// message. Publishes are recorded, not delivered.
pub async fn replay(
    wasm: &Path,
    file: &Path,
    golden: Golden,
    options: Options,
) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut messages = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let message =
            parse_line("replay", i as u64 + 1, line).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        messages.push(message);
    }
    let expected = match &golden {
        Golden::Compare(path) => Some(expectations(path)?),
        _ => None,
    };

    let session = Session::open(wasm, options).await?;
    let mut results = Vec::with_capacity(messages.len());
    let mut all_ok = true;
    for message in &messages {
        let invocation = session.run(message).await;
        all_ok &= invocation.outcome == Outcome::Ok;
        let mut line = json!({ "id": message.id, "topic": message.topic });
        if let (Some(line), Value::Object(result)) = (line.as_object_mut(), result(&invocation)) {
            line.extend(result);
        }
        println!("{line}");
        results.push(line);
    }

    match golden {
        Golden::None => Ok(exit(all_ok)),
        Golden::Bless(path) => {
            let lines: Vec<String> = results.iter().map(Value::to_string).collect();
            std::fs::write(&path, lines.join("\n") + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote the outcomes of {} messages to {}", results.len(), path.display());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Golden::Compare(path) => {
            let expected = expected.unwrap_or_default();
            let mismatches = compare(&results, &expected, &path);
            for mismatch in &mismatches {
                eprintln!("{mismatch}");
            }
            if mismatches.is_empty() {
                eprintln!("{} messages, every outcome as {} expects", results.len(), path.display());
                Ok(std::process::ExitCode::SUCCESS)
            } else {
                eprintln!("{} messages, {} not as {} expects", results.len(), mismatches.len(), path.display());
                Ok(std::process::ExitCode::FAILURE)
            }
        }
    }
}

fn exit(ok: bool) -> std::process::ExitCode {
    if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(2) }
}

/// The golden file: one JSON object a line, each with the `id` of a message
/// and the fields its outcome must have.
fn expectations(path: &Path) -> anyhow::Result<BTreeMap<String, serde_json::Map<String, Value>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut expected = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let Value::Object(mut fields) = serde_json::from_str(line).with_context(|| format!("{} is not JSON", at()))?
        else {
            bail!("{} is not a JSON object", at());
        };
        let Some(Value::String(id)) = fields.remove("id") else {
            bail!("{} has no \"id\" naming its message", at());
        };
        if expected.insert(id.clone(), fields).is_some() {
            bail!("{} expects message {id:?} a second time", at());
        }
    }
    Ok(expected)
}

/// Every way `results` differ from `expected`: a field an expectation names
/// with another value, a message it has no expectation for, or one it
/// expects that never came. Fields an expectation leaves out are not
/// compared, so a golden file can hold only the outcomes.
fn compare(results: &[Value], expected: &BTreeMap<String, serde_json::Map<String, Value>>, path: &Path) -> Vec<String> {
    let mut mismatches = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for result in results {
        let id = result["id"].as_str().unwrap_or_default();
        seen.insert(id);
        let Some(fields) = expected.get(id) else {
            mismatches.push(format!("message {id:?}: {} has no expectation for it", path.display()));
            continue;
        };
        for (field, want) in fields {
            let got = result.get(field).unwrap_or(&Value::Null);
            if got != want {
                mismatches.push(format!("message {id:?}: {field} expected {want}, got {got}"));
            }
        }
    }
    for id in expected.keys() {
        if !seen.contains(id.as_str()) {
            mismatches
                .push(format!("message {id:?}: {} expects it, but the replay has no such message", path.display()));
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn golden(lines: &[Value]) -> BTreeMap<String, serde_json::Map<String, Value>> {
        lines
            .iter()
            .map(|l| {
                let mut fields = l.as_object().unwrap().clone();
                let id = fields.remove("id").unwrap().as_str().unwrap().to_string();
                (id, fields)
            })
            .collect()
    }

    #[test]
    fn only_the_fields_an_expectation_names_are_compared() {
        let results = [
            json!({"id": "a", "topic": "t", "outcome": "ok", "effects": [{"effect": "cache-delete", "key": "k"}]}),
            json!({"id": "b", "topic": "t", "outcome": "reject", "reason": "bad", "effects": []}),
        ];
        let expected = golden(&[json!({"id": "a", "outcome": "ok"}), json!({"id": "b", "outcome": "reject"})]);
        assert!(compare(&results, &expected, Path::new("g.jsonl")).is_empty());
    }

    #[test]
    fn a_different_field_a_missing_and_an_unexpected_message_are_each_named() {
        let results =
            [json!({"id": "a", "outcome": "reject", "reason": "bad"}), json!({"id": "extra", "outcome": "ok"})];
        let expected = golden(&[json!({"id": "a", "outcome": "ok"}), json!({"id": "gone", "outcome": "ok"})]);
        let mismatches = compare(&results, &expected, Path::new("g.jsonl"));
        assert_eq!(
            mismatches,
            [
                r#"message "a": outcome expected "ok", got "reject""#,
                r#"message "extra": g.jsonl has no expectation for it"#,
                r#"message "gone": g.jsonl expects it, but the replay has no such message"#,
            ]
        );
    }

    #[test]
    fn a_cache_directory_others_can_write_to_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("a/b");
        assert_eq!(private_dir(&cache), Some(cache.clone()));
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_dir(&cache), None);
    }
}
