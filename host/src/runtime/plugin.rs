//! Loading a handler component: validation, the on-disk cache of compiled
//! code keyed by content digest, and the pre-instantiated `HandlerPre`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::state::HostState;
use crate::contract::bindings::HandlerPre;

/// A handler component that could not be loaded. Each case names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read handler {path}: {source}")]
    Read {
        /// The .wasm file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error("handler {path} is not a WebAssembly file: it does not start with the `\\0asm` magic")]
    NotWasm {
        /// The .wasm file.
        path: PathBuf,
    },
    /// A core module, where a component is needed.
    #[error(
        "handler {path} is a core WebAssembly module, not a component: build it for wasm32-wasip2, \
         or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// The .wasm file.
        path: PathBuf,
    },
    /// The component did not validate or compile.
    #[error("handler {path} is not a valid component: {reason}")]
    Invalid {
        /// The .wasm file.
        path: PathBuf,
        /// What the validator said.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error("handler {path} cannot be linked: {reason}")]
    Link {
        /// The .wasm file.
        path: PathBuf,
        /// Which import is missing or has the wrong type.
        reason: String,
    },
    /// The component does not export `handle` as the contract defines it.
    #[error("handler {path} does not export the switchyard:handler world: {reason}")]
    WrongWorld {
        /// The .wasm file.
        path: PathBuf,
        /// What is missing or mistyped.
        reason: String,
    },
}

/// A loaded handler: compiled, linked and ready to instantiate per message.
pub struct Plugin {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The SHA-256 of the .wasm, in hex; names its compiled-code cache entry.
    pub digest: String,
    /// Whether the compiled code came from the cache rather than a compile.
    pub cached: bool,
    pub(crate) pre: HandlerPre<HostState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// The component-model layer field: a component's 8-byte preamble is
/// `\0asm`, then version 0x0d, then layer 0x01.
const COMPONENT_LAYER: [u8; 2] = [0x01, 0x00];

pub(crate) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    cache_dir: Option<&Path>,
    path: &Path,
) -> Result<Plugin, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    load_bytes(engine, linker, cache_dir, path, &bytes)
}

pub(crate) fn load_bytes(
    engine: &Engine,
    linker: &Linker<HostState>,
    cache_dir: Option<&Path>,
    path: &Path,
    bytes: &[u8],
) -> Result<Plugin, LoadError> {
    let path = path.to_path_buf();
    if bytes.get(..4) != Some(b"\0asm") {
        return Err(LoadError::NotWasm { path });
    }
    if bytes.get(6..8) != Some(&COMPONENT_LAYER[..]) {
        return Err(LoadError::CoreModule { path });
    }
    let digest = digest(bytes);
    let cache_file = cache_dir.map(|dir| dir.join(format!("{digest}-{}.cwasm", engine_tag(engine))));

    let (component, cached) = match cache_file.as_deref().and_then(|f| from_cache(engine, f)) {
        Some(component) => (component, true),
        None => {
            let component = Component::new(engine, bytes)
                .map_err(|e| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") })?;
            if let Some(file) = &cache_file {
                store_in_cache(&component, file);
            }
            (component, false)
        }
    };

    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link { path: path.clone(), reason: format!("{e:#}") })?;
    let pre = HandlerPre::new(instance_pre)
        .map_err(|e| LoadError::WrongWorld { path: path.clone(), reason: format!("{e:#}") })?;
    tracing::debug!(handler = %path.display(), %digest, cached, "handler loaded");
    Ok(Plugin { path, digest, cached, pre })
}

/// The content digest of a .wasm: SHA-256, in hex.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Compiled code is only valid for the engine settings and wasmtime build
/// that produced it, so they are part of the cache key.
fn engine_tag(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn from_cache(engine: &Engine, file: &Path) -> Option<Component> {
    if !file.exists() {
        return None;
    }
    // SAFETY: the cache directory holds only files this host serialized from
    // components it compiled itself, named by the digest of their source and
    // the engine's compatibility hash. wasmtime checks the header and engine
    // settings again on load and refuses a mismatch.
    match unsafe { Component::deserialize_file(engine, file) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "compiled-code cache entry unusable; compiling again");
            None
        }
    }
}

fn store_in_cache(component: &Component, file: &Path) {
    let write = || -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Write then rename, so a crash never leaves a half-written entry.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %file.display(), error = %e, "cannot write compiled-code cache entry");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
