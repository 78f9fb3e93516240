//! Roles: what a token may do, read from a token file (`--tokens FILE`)
//! that holds each token's SHA-256, never the token itself, with its role
//! and, optionally, the twins it is limited to. The file is read again
//! when it changes, so tokens are added, rotated and revoked without a
//! restart (`wasmtwin token create|revoke`); a file that no longer parses
//! changes nothing and is logged.
//!
//! Every route needs [`Role::Admin`] unless it is named here as a reader's
//! or an operator's: a route added later is closed until someone opens it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::Method;
use serde::{Deserialize, Serialize};

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Digital reads: twins, properties, history, streams, TDs; the
    /// control plane's nodes, twins and events.
    Reader,
    /// Also a twin's actions and model swaps.
    Operator,
    /// Everything: apply, delete, checkpoint, restore, migrate; heartbeats,
    /// cordons, domains.
    Admin,
}

impl Role {
    /// The role a call needs.
    pub fn needed(method: &Method, path: &str) -> Role {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let read = *method == Method::GET || *method == Method::HEAD;
        match parts[..] {
            ["v1", "twins", _, "actions", _] | ["v1", "twins", _, "swap"]
                if *method == Method::POST =>
            {
                Role::Operator
            }
            // A checkpoint, the rows it carries and the snapshot a migration
            // sends ahead are a twin's whole state: what an admin moves, not
            // what a reader reads.
            ["v1", "twins", _, "checkpoint" | "base"] | ["v1", "twins", _, "history", "rows"] => {
                Role::Admin
            }
            ["v1", "twins", ..] | ["v1", "nodes"] | ["v1", "domains"] | ["v1", "events"]
                if read =>
            {
                Role::Reader
            }
            _ => Role::Admin,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The twin a call is about, from its path; `None` for calls about many.
pub fn twin_of(path: &str) -> Option<&str> {
    let mut parts = path.trim_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("twins" | "migrations"), Some(name)) => Some(name),
        _ => None,
    }
}

/// One token's entry in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Who holds it: recorded as the caller in the event history.
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// What it may do.
    pub role: Role,
    /// The twins it is limited to; empty: all.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub twins: BTreeSet<String>,
}

impl Grant {
    /// Why this token may not make the call, if it may not.
    pub fn refuses(&self, method: &Method, path: &str) -> Option<String> {
        let needed = Role::needed(method, path);
        if self.role < needed {
            return Some(format!(
                "token `{}` has role {}; {method} {path} needs {}",
                self.name,
                self.role.name(),
                needed.name()
            ));
        }
        if self.twins.is_empty() {
            return None;
        }
        let listed = self.twins.iter().cloned().collect::<Vec<_>>().join(", ");
        match twin_of(path) {
            Some(twin) if self.twins.contains(twin) => None,
            Some(twin) => Some(format!(
                "token `{}` is limited to twins {listed}, not {twin}",
                self.name
            )),
            None => Some(format!(
                "token `{}` is limited to twins {listed}; {path} is about more",
                self.name
            )),
        }
    }
}

/// The token file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Every token.
    #[serde(default)]
    pub tokens: Vec<Grant>,
}

impl TokenFile {
    /// Reads and checks `file`: every hash 64 hex digits, names unique.
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?;
        let parsed: TokenFile = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing the token file {}", file.display()))?;
        let mut names = BTreeSet::new();
        for (i, grant) in parsed.tokens.iter().enumerate() {
            let hex =
                grant.sha256.len() == 64 && grant.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            anyhow::ensure!(
                hex,
                "{}: tokens[{i}].sha256 must be 64 hex digits",
                file.display()
            );
            anyhow::ensure!(
                names.insert(grant.name.as_str()),
                "{}: tokens[{i}].name `{}` is used twice",
                file.display(),
                grant.name
            );
        }
        Ok(parsed)
    }

    /// Writes the file: aside, then renamed over it, so a node reading it
    /// sees the old file or the new one.
    pub fn write(&self, file: &Path) -> anyhow::Result<()> {
        let text = format!(
            "# wasmtwin API tokens: SHA-256 of each, its role and the twins it is limited to.\n# Edit with `wasmtwin token create|revoke`; nodes read it again when it changes.\n{}",
            serde_yaml_ng::to_string(self)?
        );
        crate::runtime::write_atomically(file, text.as_bytes())
    }
}

/// Hex SHA-256 of a token.
pub fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The tokens a server accepts, kept current with their file.
pub struct Tokens {
    file: PathBuf,
    state: RwLock<(Option<SystemTime>, HashMap<String, Grant>)>,
}

impl Tokens {
    /// Reads `file`; an error if it cannot be read or is malformed.
    pub fn open(file: &Path) -> anyhow::Result<Arc<Self>> {
        let tokens = Arc::new(Self {
            file: file.to_path_buf(),
            state: RwLock::new((None, HashMap::new())),
        });
        tokens.reload()?;
        Ok(tokens)
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok()
    }

    /// Reads the file again if it changed since it was last read.
    fn reload(&self) -> anyhow::Result<bool> {
        let modified = self.modified();
        if modified.is_some() && self.state.read().map(|s| s.0 == modified).unwrap_or(false) {
            return Ok(false);
        }
        let read = TokenFile::read(&self.file)?;
        let grants = read
            .tokens
            .into_iter()
            .map(|g| (g.sha256.to_ascii_lowercase(), g))
            .collect();
        if let Ok(mut state) = self.state.write() {
            *state = (modified, grants);
        }
        Ok(true)
    }

    /// Keeps the tokens current: reads the file again every `every` when it
    /// changed. Runs until the process ends.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.reload() {
                Ok(true) => tracing::info!(file = %self.file.display(), "token file read again"),
                Ok(false) => {}
                Err(e) => tracing::error!("keeping the tokens as they were: {e:#}"),
            }
        }
    }

    /// The grant of `token`, if it is one of the file's.
    pub fn grant(&self, token: &str) -> Option<Grant> {
        self.state.read().ok()?.1.get(&hash(token)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the node's and the control plane's APIs, with the
    /// role it needs: a change to this table is a change to who may do
    /// what.
    #[test]
    fn every_route_needs_the_role_of_the_table() {
        use Role::*;
        let table: &[(&str, &str, Role)] = &[
            ("GET", "/v1/twins", Reader),
            ("GET", "/v1/twins/a", Reader),
            ("PUT", "/v1/twins/a", Admin),
            ("DELETE", "/v1/twins/a", Admin),
            ("GET", "/v1/twins/a/spec", Reader),
            ("GET", "/v1/twins/a/td", Reader),
            ("GET", "/v1/twins/a/properties/p", Reader),
            ("GET", "/v1/twins/a/history", Reader),
            ("POST", "/v1/twins/a/actions/stop", Operator),
            ("GET", "/v1/twins/a/stream", Reader),
            ("GET", "/v1/twins/a/events/e", Reader),
            ("GET", "/v1/twins/a/properties/p/observe", Reader),
            ("GET", "/v1/twins/a/checkpoint", Admin),
            ("PUT", "/v1/twins/a/checkpoint", Admin),
            ("POST", "/v1/twins/a/handover", Admin),
            ("GET", "/v1/twins/a/history/rows", Admin),
            ("GET", "/v1/twins/a/base", Admin),
            ("POST", "/v1/twins/a/resume", Admin),
            ("POST", "/v1/twins/a/moved", Admin),
            ("POST", "/v1/twins/a/swap", Operator),
            ("PUT", "/v1/migrations/a", Admin),
            ("GET", "/v1/migrations/a", Admin),
            ("POST", "/v1/migrations/a", Admin),
            ("DELETE", "/v1/migrations/a", Admin),
            ("PUT", "/v1/migrations/a/history", Admin),
            ("POST", "/v1/migrations/a/session", Admin),
            ("PUT", "/v1/migrations/a/base", Admin),
            // The control plane's.
            ("GET", "/v1/nodes", Reader),
            ("PUT", "/v1/nodes/n", Admin),
            ("PUT", "/v1/nodes/n/cordon", Admin),
            ("DELETE", "/v1/nodes/n/cordon", Admin),
            ("GET", "/v1/domains", Reader),
            ("PUT", "/v1/domains/d", Admin),
            ("GET", "/v1/events", Reader),
            // Not a route: closed.
            ("GET", "/v1/anything-new", Admin),
        ];
        for (method, path, role) in table {
            let method: Method = method.parse().unwrap();
            assert_eq!(Role::needed(&method, path), *role, "{method} {path}");
        }
    }

    #[test]
    fn a_token_is_refused_beyond_its_role_and_its_twins() {
        let grant = Grant {
            name: "line-1".into(),
            sha256: hash("x"),
            role: Role::Operator,
            twins: ["press-1".to_string()].into(),
        };
        assert_eq!(
            grant.refuses(&Method::POST, "/v1/twins/press-1/actions/stop"),
            None
        );
        assert_eq!(
            grant.refuses(&Method::GET, "/v1/twins/press-1/history"),
            None
        );
        let other = grant
            .refuses(&Method::POST, "/v1/twins/press-2/actions/stop")
            .unwrap();
        assert!(
            other.contains("limited to twins press-1, not press-2"),
            "{other}"
        );
        let many = grant.refuses(&Method::GET, "/v1/twins").unwrap();
        assert!(many.contains("is about more"), "{many}");
        let admin = grant.refuses(&Method::DELETE, "/v1/twins/press-1").unwrap();
        assert!(
            admin.contains("has role operator") && admin.contains("needs admin"),
            "{admin}"
        );
    }

    fn touch(file: &Path, at: SystemTime) {
        let opened = std::fs::File::options().write(true).open(file).unwrap();
        opened.set_modified(at).unwrap();
    }

    #[test]
    fn the_file_is_read_again_when_it_changes_and_a_broken_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.yaml");
        let grant = |name: &str, token: &str, role| Grant {
            name: name.into(),
            sha256: hash(token),
            role,
            twins: BTreeSet::new(),
        };
        TokenFile {
            tokens: vec![grant("a", "token-a-0123456789", Role::Reader)],
        }
        .write(&file)
        .unwrap();
        let tokens = Tokens::open(&file).unwrap();
        assert_eq!(
            tokens.grant("token-a-0123456789").unwrap().role,
            Role::Reader
        );
        assert!(tokens.grant("token-b-0123456789").is_none());
        TokenFile {
            tokens: vec![grant("b", "token-b-0123456789", Role::Admin)],
        }
        .write(&file)
        .unwrap();
        // A later modification time, whatever the file system's resolution.
        let later = SystemTime::now() + Duration::from_secs(2);
        touch(&file, later);
        assert!(tokens.reload().unwrap());
        assert!(tokens.grant("token-a-0123456789").is_none(), "revoked");
        assert_eq!(
            tokens.grant("token-b-0123456789").unwrap().role,
            Role::Admin
        );
        std::fs::write(&file, "tokens: [{name: c, sha256: nothex, role: admin}]").unwrap();
        let later = later + Duration::from_secs(2);
        touch(&file, later);
        let error = tokens.reload().unwrap_err().to_string();
        assert!(error.contains("sha256 must be 64 hex digits"), "{error}");
        assert!(
            tokens.grant("token-b-0123456789").is_some(),
            "a broken file changed the tokens"
        );
    }
}
