//! The layering rule of the design, checked on the source: the crate is built
//! in floors, every import points down, and no two files import each other,
//! directly or through others.
//!
//! Each file's `use crate::`, `use super::` and inline `crate::`/`super::`
//! paths are resolved to the file that defines the module they name, and
//! compared with the floor table below. A `mod x;` declaration is not an
//! import; a `pub use` re-export is. Unit-test modules at the end of a file
//! are left out, since they may reach anything they test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors from the ground up; a module may import only from its own
/// floor (without a circle) or from floors below.
const FLOORS: &[&[&str]] = &[
    &["contract"],
    &["config"],
    &["capabilities"],
    &["runtime"],
    &["sources"],
    &["dispatch"],
    &["admin"],
    &["wiring", "scaffold"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, by its path relative to `src`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src()).unwrap().to_path_buf());
        }
    }
}

/// The module path a file defines: `contract/db.rs` is `contract::db`,
/// `contract/mod.rs` is `contract`, `lib.rs` and `main.rs` are the root.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The file that defines `module`, if one does.
fn file_of(module: &[String], binary: bool) -> Option<PathBuf> {
    if module.is_empty() {
        return Some(PathBuf::from(if binary { "main.rs" } else { "lib.rs" }));
    }
    let base: PathBuf = module.iter().collect();
    let as_file = base.with_extension("rs");
    let as_dir = base.join("mod.rs");
    [as_file, as_dir].into_iter().find(|p| src().join(p).exists())
}

/// The source without comments, string literals and the trailing test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal, not a lifetime: skip it whole.
            '\'' if matches!(chars.clone().nth(1), Some('\'')) || chars.peek() == Some(&'\\') => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(expand)
        .map(|rest| if rest == "self" { prefix.to_string() } else { format!("{prefix}::{rest}") })
        .collect()
}

/// Every crate-relative path a file names: its `use` trees and inline paths.
fn paths(code: &str, root: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        let tree: String = after[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        if tree.starts_with(root) || tree.starts_with("super") || tree.starts_with("self") {
            found.extend(expand(&tree));
        }
    }
    for start in ["crate::", "super::", "switchyard::"] {
        let mut rest = code;
        while let Some(i) = rest.find(start) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            rest = &rest[i + start.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            found.push(path.trim_end_matches(':').to_string());
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The file a path resolves to, from `module` (the importing file's module).
fn resolve(path: &str, module: &[String], root: &str, binary: bool) -> Option<(PathBuf, bool)> {
    let mut segments = path.split("::").filter(|s| !s.is_empty());
    let first = segments.next()?;
    let (mut at, in_binary) = match first {
        f if f == root => (Vec::new(), binary && root == "crate"),
        "switchyard" => (Vec::new(), false),
        "super" => (module[..module.len().saturating_sub(1)].to_vec(), binary),
        "self" => (module.to_vec(), binary),
        _ => return None,
    };
    let mut rest: Vec<&str> = segments.collect();
    while rest.first() == Some(&"super") {
        rest.remove(0);
        at.pop();
    }
    let mut file = file_of(&at, in_binary)?;
    for segment in rest {
        at.push(segment.to_string());
        match file_of(&at, in_binary) {
            Some(f) => file = f,
            None => break,
        }
    }
    Some((file, in_binary))
}

fn floor(file: &Path) -> usize {
    let first = file.iter().next().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string());
    let first = first.unwrap_or_default();
    FLOORS.iter().position(|names| names.contains(&first.as_str())).unwrap_or(FLOORS.len())
}

#[test]
fn every_import_points_down_and_no_two_files_import_each_other() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    // (file, is in the binary) -> the files it imports.
    let mut edges: BTreeMap<(PathBuf, bool), BTreeSet<(PathBuf, bool)>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &all {
        let binary =
            ["main.rs", "invoke.rs", "dev.rs"].iter().any(|f| file == Path::new(f)) || file.starts_with("bench");
        let module = module_of(file);
        let text = std::fs::read_to_string(src().join(file)).unwrap();
        let code = code(&text);
        let node = (file.clone(), binary);
        let targets = edges.entry(node.clone()).or_default();
        for path in paths(&code, "crate") {
            let Some(target) = resolve(&path, &module, "crate", binary) else { continue };
            if target == node {
                continue;
            }
            if !binary && !target.1 && floor(&target.0) > floor(file) {
                upward.push(format!("{} imports {} ({path})", file.display(), target.0.display()));
            }
            targets.insert(target);
        }
    }
    assert!(upward.is_empty(), "imports that point up a floor:\n{}", upward.join("\n"));

    // Depth-first search for a circle.
    fn visit<'a>(
        node: &'a (PathBuf, bool),
        edges: &'a BTreeMap<(PathBuf, bool), BTreeSet<(PathBuf, bool)>>,
        path: &mut Vec<&'a (PathBuf, bool)>,
        done: &mut BTreeSet<&'a (PathBuf, bool)>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            return Some(path[i..].iter().chain([&node]).map(|n| n.0.display().to_string()).collect());
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, &edges, &mut Vec::new(), &mut BTreeSet::new()) {
            panic!("files that import each other: {}", circle.join(" -> "));
        }
        done.insert(node);
    }
}

#[test]
fn the_checker_reads_nested_use_trees_and_resolves_super() {
    let expanded = expand("crate::contract::{db::{DbBackend, InboxKey}, errors::BackendError as E, self}");
    assert_eq!(
        expanded,
        [
            "crate::contract::db::DbBackend",
            "crate::contract::db::InboxKey",
            "crate::contract::errors::BackendError",
            "crate::contract"
        ]
    );
    let module = module_of(Path::new("sources/nats/core.rs"));
    assert_eq!(module, ["sources", "nats", "core"]);
    let (file, _) = resolve("super::client::connect", &module, "crate", false).unwrap();
    assert_eq!(file, Path::new("sources/nats/client.rs"));
    let (file, _) = resolve("crate::contract::bindings::db::Value", &module, "crate", false).unwrap();
    assert_eq!(file, Path::new("contract/bindings.rs"));
    assert!(floor(Path::new("dispatch/route.rs")) > floor(Path::new("runtime/engine.rs")));
    let stripped = code("use crate::a::b; // use crate::c::d;\nlet s = \"crate::e::f\"; x::crate_y();");
    assert_eq!(paths(&stripped, "crate"), ["crate::a::b"]);
}
