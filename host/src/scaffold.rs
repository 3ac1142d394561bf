//! `switchyard new`: a new handler project in Rust, Python, JavaScript or C
//! that builds with the toolchains `plugins/languages.sh` installs and passes
//! `switchyard invoke` as it comes. The templates are compiled into the binary,
//! with the contract and the helper modules the example handlers use.

use std::path::{Path, PathBuf};

/// The WIT contract every project gets a copy of.
const WIT: &str = include_str!("../../wit/handler.wit");

/// A language `switchyard new` can start a project in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Rust with the `switchyard-sdk` helpers, built for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
    /// C, built with wit-bindgen c, zig and wasm-tools.
    C,
}

impl std::str::FromStr for Language {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rust" => Ok(Self::Rust),
            "python" | "py" => Ok(Self::Python),
            "js" | "javascript" => Ok(Self::Js),
            "c" => Ok(Self::C),
            other => Err(format!("unknown language {other:?}: choose rust, python, js or c")),
        }
    }
}

/// A project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a handler name.
    #[error("handler name {0:?} is not usable: use lowercase letters, digits and dashes, starting with a letter")]
    BadName(String),
    /// The directory is there already and not empty.
    #[error("cannot create handler project {0}: the directory exists and is not empty")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A project that was created, and how to build and try it.
#[derive(Debug)]
pub struct Project {
    /// Its directory.
    pub dir: PathBuf,
    /// The command that builds it, run in `dir`.
    pub build: &'static str,
    /// The component the build produces, relative to `dir`.
    pub wasm: PathBuf,
}

/// Create the project `name` in `parent/name`.
pub fn create(language: Language, name: &str, parent: &Path) -> Result<Project, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let dir = parent.join(name);
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::Exists(dir));
    }
    let crate_name = name.replace('-', "_");
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    let fill = |template: &str| {
        template.replace("{{name}}", name).replace("{{crate}}", &crate_name).replace("{{type}}", &type_name)
    };

    let (files, build, wasm): (Vec<(&str, String)>, &'static str, PathBuf) = match language {
        Language::Rust => (
            vec![
                ("Cargo.toml", fill(include_str!("../templates/rust/Cargo.toml.tmpl"))),
                ("src/lib.rs", fill(include_str!("../templates/rust/lib.rs"))),
                ("sdk/Cargo.toml", include_str!("../templates/rust/sdk.Cargo.toml.tmpl").to_string()),
                ("sdk/src/lib.rs", include_str!("../../plugins/sdk-rust/src/lib.rs").to_string()),
                ("sdk/wit/handler.wit", WIT.to_string()),
            ],
            "cargo build --target wasm32-wasip2 --release",
            Path::new("target/wasm32-wasip2/release").join(format!("{crate_name}.wasm")),
        ),
        Language::Python => (
            vec![
                ("app.py", fill(include_str!("../templates/python/app.py"))),
                (
                    "switchyard_helpers.py",
                    include_str!("../../plugins/cache-update-py/switchyard_helpers.py").to_string(),
                ),
                ("build.sh", fill(include_str!("../templates/python/build.sh"))),
                ("wit/handler.wit", WIT.to_string()),
            ],
            "./build.sh",
            PathBuf::from(format!("{crate_name}.wasm")),
        ),
        Language::Js => (
            vec![
                ("app.js", fill(include_str!("../templates/js/app.js"))),
                ("switchyard.js", include_str!("../../plugins/cache-update-js/switchyard.js").to_string()),
                ("build.sh", fill(include_str!("../templates/js/build.sh"))),
                ("wit/handler.wit", WIT.to_string()),
            ],
            "./build.sh",
            PathBuf::from(format!("{crate_name}.wasm")),
        ),
        Language::C => (
            vec![
                ("app.c", fill(include_str!("../templates/c/app.c"))),
                ("build.sh", fill(include_str!("../templates/c/build.sh"))),
                ("wit/handler.wit", WIT.to_string()),
            ],
            "./build.sh",
            PathBuf::from(format!("{crate_name}.wasm")),
        ),
    };

    for (file, text) in &files {
        let path = dir.join(file);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)?;
            if file.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        write().map_err(|source| ScaffoldError::Write { path: path.clone(), source })?;
    }
    Ok(Project { dir, build, wasm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_usable_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Caps", "1st", "with space", "trailing-", "dots.no"] {
            assert!(matches!(create(Language::C, bad, dir.path()), Err(ScaffoldError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn refuses_to_overwrite_a_project() {
        let dir = tempfile::tempdir().unwrap();
        create(Language::Python, "orders", dir.path()).unwrap();
        let again = create(Language::Python, "orders", dir.path()).unwrap_err();
        assert!(again.to_string().contains("exists and is not empty"), "{again}");
    }

    #[test]
    fn fills_in_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let project = create(Language::Rust, "order-audit", dir.path()).unwrap();
        let lib = std::fs::read_to_string(project.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("struct OrderAudit;") && lib.contains("\"order-audit:{id}\""), "{lib}");
        assert_eq!(project.wasm, Path::new("target/wasm32-wasip2/release/order_audit.wasm"));
        assert!(!lib.contains("{{"), "{lib}");
    }
}
