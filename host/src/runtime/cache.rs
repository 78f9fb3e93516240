//! Compiled components, kept by content digest in memory and on disk so a
//! component is compiled once per machine rather than once per twin or per
//! start.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::digest::Digest;

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache.
    Disk,
    /// Compiled from the Wasm bytes.
    Compiled,
}

/// The compiled-component cache of one engine.
pub struct ComponentCache {
    dir: Option<PathBuf>,
    /// Distinguishes artefacts of engines with different settings or
    /// versions, which cannot load each other's code.
    engine_tag: String,
    memory: Mutex<HashMap<Digest, Component>>,
}

impl ComponentCache {
    /// A cache for `engine`, persisting to `dir` if given.
    ///
    /// The directory holds native code that is loaded without validation,
    /// so it must be writable only by the user running the host; it is
    /// created with mode 0700.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(dir) = &dir {
            create_private_dir(dir)?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
            memory: Mutex::new(HashMap::new()),
        })
    }

    fn path_for(&self, digest: &Digest) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{}.cwasm", digest.hex(), self.engine_tag)))
    }

    /// The compiled form of `bytes`, whose digest is `digest`.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        if let Some(component) = self.lock().get(digest) {
            return Ok((component.clone(), CacheOutcome::Memory));
        }
        let path = self.path_for(digest);
        if let Some(path) = path.as_deref()
            && let Ok(compiled) = std::fs::read(path)
        {
            // Read into memory rather than mapped, so that a cache file
            // changed on disk later cannot pull pages from under running code.
            //
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name), in
            // a directory only this user can write. A file that is not valid
            // for this engine is refused by wasmtime's header checks.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => {
                    self.lock().insert(*digest, component.clone());
                    return Ok((component, CacheOutcome::Disk));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
        if let Some(path) = &path
            && let Err(e) =
                write_atomically(path, &component.serialize().map_err(anyhow::Error::from)?)
        {
            tracing::warn!(path = %path.display(), "cannot write the component cache: {e:#}");
        }
        self.lock().insert(*digest, component.clone());
        Ok((component, CacheOutcome::Compiled))
    }

    /// Forgets the components compiled in this process (the disk cache
    /// stays), so benchmarks can measure a load from disk.
    pub fn clear_memory(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Component>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating cache directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting cache directory {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` so that readers see either nothing or the whole file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
