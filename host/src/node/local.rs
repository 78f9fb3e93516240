//! The directories a node loads component files from on a client's behalf
//! (`--component-dir`). Each is opened once as a capability
//! (`cap_std::fs::Dir`) and a spec's path is opened through it, so `..`,
//! absolute paths elsewhere and symbolic links out of it are refused; only
//! regular files up to [`COMPONENT_MAX`] are read. A client with the token
//! can therefore not probe the node's file system, nor hang an apply on a
//! FIFO or read `/dev/zero` without end.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cap_std::fs::Dir;

/// The largest component file a node reads.
pub const COMPONENT_MAX: u64 = 64 << 20;

/// The directories local component references may name.
pub struct ComponentDirs {
    /// Each directory: the paths that name it (as given, made absolute,
    /// and canonical, which differ when a symbolic link leads to it), and
    /// its capability.
    dirs: Vec<([PathBuf; 2], Dir)>,
}

impl ComponentDirs {
    /// Opens `paths`, which must be directories.
    pub fn open(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let dirs = paths
            .iter()
            .map(|path| {
                let canonical = path
                    .canonicalize()
                    .with_context(|| format!("component directory {}", path.display()))?;
                let given = std::path::absolute(path)
                    .with_context(|| format!("component directory {}", path.display()))?;
                let dir = Dir::open_ambient_dir(&canonical, cap_std::ambient_authority())
                    .with_context(|| format!("opening component directory {}", path.display()))?;
                Ok(([given, canonical], dir))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { dirs })
    }

    /// Reads the component file `reference` names: a path inside one of
    /// the directories, absolute or relative to the node's working
    /// directory (as any path a user types).
    pub fn read(&self, reference: &str) -> anyhow::Result<Vec<u8>> {
        if self.dirs.is_empty() {
            bail!(
                "{reference} is a local path, and this node loads no component files \
                 (start it with --component-dir DIR, or publish the component to a registry)"
            );
        }
        let path = std::env::current_dir()
            .context("the node's working directory")?
            .join(reference);
        for (roots, dir) in &self.dirs {
            // The rest of the path is opened through the capability, which
            // refuses any `..` or link that would leave it.
            let Some(inside) = roots.iter().find_map(|root| path.strip_prefix(root).ok()) else {
                continue;
            };
            // Looked at before it is opened: opening a FIFO would wait for
            // a writer.
            let metadata = dir
                .metadata(inside)
                .with_context(|| format!("reading {reference}"))?;
            if !metadata.is_file() {
                bail!("{reference} is not a regular file");
            }
            if metadata.len() > COMPONENT_MAX {
                bail!(
                    "{reference} has {} bytes, more than the {COMPONENT_MAX} a component may have",
                    metadata.len()
                );
            }
            let mut bytes = Vec::new();
            dir.open(inside)
                .with_context(|| format!("reading {reference}"))?
                .take(COMPONENT_MAX + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {reference}"))?;
            if bytes.len() as u64 > COMPONENT_MAX {
                bail!("{reference} grew past {COMPONENT_MAX} bytes while being read");
            }
            return Ok(bytes);
        }
        let allowed: Vec<String> = self
            .dirs
            .iter()
            .map(|([given, _], _)| given.display().to_string())
            .collect();
        bail!(
            "{reference} is not inside a directory this node loads components from ({})",
            allowed.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defect_10_only_regular_files_inside_the_component_dirs_are_read() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("m.wasm"), b"component").unwrap();
        std::fs::write(root.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), allowed.join("link")).unwrap();
        let fifo = allowed.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let dirs = ComponentDirs::open(std::slice::from_ref(&allowed)).unwrap();
        let canonical = allowed.canonicalize().unwrap();
        assert_eq!(
            dirs.read(canonical.join("m.wasm").to_str().unwrap())
                .unwrap(),
            b"component"
        );
        let inside = |rest: &str| format!("{}/{rest}", canonical.display());
        for (reference, why) in [
            (inside("../secret"), ""),
            (inside("link"), ""),
            // Relative paths are the working directory's, not the dir's.
            ("m.wasm".to_string(), "not inside"),
            (
                root.path().join("secret").display().to_string(),
                "not inside",
            ),
            ("/dev/zero".to_string(), "not inside"),
            (
                fifo.canonicalize().unwrap().display().to_string(),
                "not a regular file",
            ),
            (inside("fifo"), "not a regular file"),
        ] {
            let err = dirs.read(&reference).expect_err(&reference);
            assert!(format!("{err:#}").contains(why), "{reference}: {err:#}");
        }
        let none = ComponentDirs::open(&[]).unwrap();
        let err = none.read("m.wasm").unwrap_err();
        assert!(err.to_string().contains("--component-dir"), "{err}");
    }

    /// A directory given through a symbolic link (a symlinked checkout, or
    /// macOS's `/tmp`) serves the paths a user types under that link: only
    /// its canonical path did, so every such reference was refused.
    #[test]
    fn defect_18_a_component_dir_reached_through_a_link_serves_paths_under_the_link() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("m.wasm"), b"component").unwrap();
        std::fs::write(root.path().join("secret"), b"secret").unwrap();
        let alias = root.path().join("alias");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let dirs = ComponentDirs::open(std::slice::from_ref(&alias)).unwrap();
        for path in [
            alias.join("m.wasm"),
            real.canonicalize().unwrap().join("m.wasm"),
        ] {
            let reference = path.to_str().unwrap();
            assert_eq!(dirs.read(reference).expect(reference), b"component");
        }
        let escape = format!("{}/../secret", alias.display());
        assert!(dirs.read(&escape).is_err(), "{escape} was read");
    }
}
