//! The DT repository: the twin specs users applied (their desired state),
//! what the control plane has decided for each (where it placed it, the CPU
//! share it granted, a model it rolled back from), the operator's domain
//! trust levels, and the latest checkpoint of each twin shipped from its
//! node.
//!
//! Specs, placements and trust levels live in one redb database in the
//! control plane's data directory (each change one durable transaction, as
//! on a node; the event history shares the file); checkpoints are files
//! beside it, replaced atomically (written aside, synced, renamed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::spec::{ComponentRef, TwinSpec};

const TWINS: TableDefinition<&str, &str> = TableDefinition::new("twins");
const DOMAINS: TableDefinition<&str, u32> = TableDefinition::new("domains");

/// A twin as the control plane keeps it: what the user asked for and what
/// the control plane did about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    /// The spec as applied.
    pub spec: TwinSpec,
    /// Bumped by every apply that changed the spec.
    pub generation: u64,
    /// What the control plane decided.
    #[serde(default)]
    pub status: Placed,
}

/// The control plane's own decisions about a twin, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placed {
    /// The node it should run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A CPU share granted by scaling, in millicores, replacing the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// The model it was rolled back to after the spec's model failed; the
    /// spec's model is not tried again until a new one is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override: Option<ComponentRef>,
    /// The digest of the model component the control plane verified and
    /// placed; the security agent expects the node to run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    /// A spec the node refused, by its digest, and why: not retried until
    /// the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<(String, String)>,
}

impl Desired {
    /// The spec the twin's node should run: the user's, with the share the
    /// control plane granted and the model it rolled back to.
    pub fn effective(&self) -> TwinSpec {
        let mut spec = self.spec.clone();
        if let Some(millis) = self.status.cpu_millis {
            spec.spec.resources.cpu = Some(format!("{millis}m"));
        }
        if let Some(model) = &self.status.model_override {
            spec.spec.model.component = model.clone();
        }
        spec
    }
}

/// The control plane's durable state.
pub struct Repository {
    db: Arc<Database>,
    checkpoints: PathBuf,
}

impl Repository {
    /// Opens (or creates) the repository in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let checkpoints = dir.join("checkpoints");
        std::fs::create_dir_all(&checkpoints)
            .with_context(|| format!("creating {}", checkpoints.display()))?;
        let path = dir.join("control.redb");
        let db = Database::create(&path)
            .with_context(|| format!("opening the control plane's store {}", path.display()))?;
        Ok(Self {
            db: Arc::new(db),
            checkpoints,
        })
    }

    /// The database, shared with the event history.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Every twin.
    pub fn twins(&self) -> anyhow::Result<BTreeMap<String, Desired>> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(TWINS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut twins = BTreeMap::new();
        for row in table.iter()? {
            let (name, json) = row?;
            let desired: Desired = serde_json::from_str(json.value())
                .with_context(|| format!("reading twin `{}` from the store", name.value()))?;
            twins.insert(name.value().to_string(), desired);
        }
        Ok(twins)
    }

    /// Writes a twin, durably.
    pub fn put(&self, desired: &Desired) -> anyhow::Result<()> {
        let json = serde_json::to_string(desired)?;
        let write = self.db.begin_write()?;
        write
            .open_table(TWINS)?
            .insert(desired.spec.name(), json.as_str())?;
        write.commit()?;
        Ok(())
    }

    /// Forgets a twin and its checkpoint.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let write = self.db.begin_write()?;
        write.open_table(TWINS)?.remove(name)?;
        write.commit()?;
        match std::fs::remove_file(self.checkpoint_path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The operator's trust level of every domain.
    pub fn domains(&self) -> anyhow::Result<BTreeMap<String, u32>> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(DOMAINS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut domains = BTreeMap::new();
        for row in table.iter()? {
            let (name, trust) = row?;
            domains.insert(name.value().to_string(), trust.value());
        }
        Ok(domains)
    }

    /// Sets a domain's trust level, durably.
    pub fn set_domain(&self, name: &str, trust: u32) -> anyhow::Result<()> {
        let write = self.db.begin_write()?;
        write.open_table(DOMAINS)?.insert(name, trust)?;
        write.commit()?;
        Ok(())
    }

    fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.checkpoints.join(format!("{name}.bundle"))
    }

    /// Keeps `bundle` as twin `name`'s latest checkpoint: written beside
    /// the old one, synced, then renamed over it, so a crash leaves one
    /// whole bundle or the other.
    pub fn keep_checkpoint(&self, name: &str, bundle: &[u8]) -> anyhow::Result<()> {
        let path = self.checkpoint_path(name);
        let aside = path.with_extension("partial");
        let mut file = std::fs::File::create(&aside)
            .with_context(|| format!("writing {}", aside.display()))?;
        file.write_all(bundle)?;
        file.sync_all()?;
        std::fs::rename(&aside, &path)
            .with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// Moves twin `name`'s latest checkpoint aside, to
    /// `checkpoints/retired/NAME.bundle` (replacing an older one), where
    /// forgetting the twin leaves it; its path, if there was one.
    pub fn retire_checkpoint(&self, name: &str) -> anyhow::Result<Option<PathBuf>> {
        let retired = self.checkpoints.join("retired");
        std::fs::create_dir_all(&retired)
            .with_context(|| format!("creating {}", retired.display()))?;
        let to = retired.join(format!("{name}.bundle"));
        match std::fs::rename(self.checkpoint_path(name), &to) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("keeping {}", to.display())),
        }
    }

    /// Twin `name`'s latest checkpoint, if one was shipped.
    pub fn checkpoint(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(self.checkpoint_path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading a checkpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_domains_and_checkpoints_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::spec::minimal();
        {
            let repo = Repository::open(dir.path()).unwrap();
            let mut desired = Desired {
                spec: spec.clone(),
                generation: 1,
                status: Placed::default(),
            };
            desired.status.node = Some("edge-1".into());
            desired.status.cpu_millis = Some(300);
            repo.put(&desired).unwrap();
            repo.set_domain("plant-a", 3).unwrap();
            repo.keep_checkpoint("p", b"first").unwrap();
            repo.keep_checkpoint("p", b"second").unwrap();
        }
        let repo = Repository::open(dir.path()).unwrap();
        let twins = repo.twins().unwrap();
        assert_eq!(twins["p"].status.node.as_deref(), Some("edge-1"));
        assert_eq!(
            twins["p"].effective().spec.resources.cpu.as_deref(),
            Some("300m")
        );
        assert_eq!(repo.domains().unwrap()["plant-a"], 3);
        assert_eq!(repo.checkpoint("p").unwrap().unwrap(), b"second");
        let kept = repo.retire_checkpoint("p").unwrap().unwrap();
        assert_eq!(std::fs::read(kept).unwrap(), b"second");
        assert_eq!(repo.checkpoint("p").unwrap(), None);
        assert_eq!(repo.retire_checkpoint("p").unwrap(), None);
        repo.keep_checkpoint("p", b"third").unwrap();
        repo.remove("p").unwrap();
        assert!(repo.twins().unwrap().is_empty());
        assert_eq!(repo.checkpoint("p").unwrap(), None);
    }
}
