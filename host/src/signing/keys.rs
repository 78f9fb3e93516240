//! Ed25519 keys: generating and storing them, naming them by key id, and the
//! set of publishers a node trusts.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
    spki::der::pem::LineEnding,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// File name of the private key `keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "wasmtwin.key";
/// File name of the public key `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "wasmtwin.pub";

/// A short public identifier of a key: the first 12 bytes of
/// HMAC-SHA256(key = public key, message = "key_id"), the same id wasmsign2
/// attaches by default, so both tools name a key alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 12]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(b"key_id");
        let tag = mac.finalize().into_bytes();
        let mut id = [0u8; 12];
        id.copy_from_slice(&tag[..12]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Generates a key pair from the operating system's random source.
pub fn generate() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `dir` as `wasmtwin.key` (PKCS#8 PEM, mode 0600) and
/// `wasmtwin.pub` (SubjectPublicKeyInfo PEM). Refuses to replace existing
/// files unless `force`.
pub fn write_pair(dir: &Path, key: &SigningKey, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    if !force {
        for path in [&private, &public] {
            if path.exists() {
                bail!(
                    "{} already exists; pass --force to replace it",
                    path.display()
                );
            }
        }
    }
    // PKCS#8 v1 (RFC 8410), without the optional public key: the form
    // OpenSSL and most tools read (the v2 form with the public key is
    // refused by OpenSSL 3).
    let keypair = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private_pem = keypair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    write_file(&private, private_pem.as_bytes(), 0o600)?;
    write_file(&public, public_pem.as_bytes(), 0o644)?;
    Ok((private, public))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        // `mode` applies only when the file is created; tighten a replaced one.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Reads a private key from a PKCS#8 PEM file.
pub fn read_private(path: &Path) -> anyhow::Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM: {e}",
            path.display()
        )
    })
}

/// Reads a public key: SubjectPublicKeyInfo PEM or DER, or the raw 32
/// bytes, optionally behind wasmsign2's 0x01 type byte.
pub fn read_public(path: &Path) -> anyhow::Result<VerifyingKey> {
    let bytes = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    parse_public(&bytes).with_context(|| format!("{} is not an Ed25519 public key", path.display()))
}

fn parse_public(bytes: &[u8]) -> anyhow::Result<VerifyingKey> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.contains("-----BEGIN")
    {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| anyhow::anyhow!("bad PEM: {e}"));
    }
    let raw = match bytes {
        [0x01, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        der => {
            return VerifyingKey::from_public_key_der(der)
                .map_err(|e| anyhow::anyhow!("bad DER: {e}"));
        }
    };
    let raw: &[u8; 32] = raw.try_into().expect("length checked above");
    VerifyingKey::from_bytes(raw).map_err(|e| anyhow::anyhow!("not a valid curve point: {e}"))
}

/// A public key a node trusts, and where it came from.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: VerifyingKey,
    /// Its id.
    pub id: KeyId,
    /// The file it was read from, named in messages.
    pub source: PathBuf,
}

/// The publishers whose components a node runs.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    keys: Vec<TrustedKey>,
}

impl TrustSet {
    /// Loads a public key file, or every `*.pub` and `*.pem` file of a
    /// directory. A directory with no key is an error: it would trust no one
    /// while looking configured.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut set = Self::default();
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading trust directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pub" | "pem")))
                .collect();
            entries.sort();
            for entry in entries {
                set.add(read_public(&entry)?, entry);
            }
            if set.keys.is_empty() {
                bail!(
                    "trust directory {} holds no *.pub or *.pem key",
                    path.display()
                );
            }
        } else {
            set.add(read_public(path)?, path.to_path_buf());
        }
        Ok(set)
    }

    /// Trusts `key`, read from `source`.
    pub fn add(&mut self, key: VerifyingKey, source: PathBuf) {
        let id = KeyId::of(&key);
        if !self.keys.iter().any(|k| k.id == id) {
            self.keys.push(TrustedKey { key, id, source });
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }
}
