//! Signed components and the trust policy that decides what a node runs.
//!
//! Signatures follow the WebAssembly tool-conventions format (`Signatures.md`,
//! as implemented by wasmsign2): a `signature` custom section first in the
//! binary, holding Ed25519 signatures over the SHA-256 of everything after
//! it. Our metadata (name, version, publisher, time) is a custom section
//! inside the signed content. See `docs/signing.md`.

mod keys;
mod metadata;
mod signature_data;
mod wasm_binary;

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, Verifier};
use sha2::{Digest as _, Sha256};

pub use keys::{
    KeyId, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, TrustSet, TrustedKey, generate, read_private,
    read_public, write_pair,
};
pub use metadata::Metadata;

use crate::digest::Digest;
use signature_data::{Signature, SignatureData, SignedHashes};
use wasm_binary::{Binary, CUSTOM, custom_section};

/// Name of the section holding signatures.
const SIGNATURE_SECTION: &str = "signature";
/// Name of the sections that split the content into separately hashed parts.
const DELIMITER_SECTION: &str = "signature_delimiter";

/// Why a component does not verify. The texts are what `verify`, `run` and
/// every loader print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No signature section.
    #[error("unsigned: the component carries no signature")]
    Unsigned,
    /// The content does not match what was signed.
    #[error("tampered: the component's content does not match the hash its signatures cover")]
    Tampered,
    /// Validly signed, but by no key this node trusts.
    #[error("untrusted: signed by key {}, which is not in the trust set", join(.0))]
    Untrusted(Vec<String>),
    /// A trusted key's signature is not valid.
    #[error("bad signature: the signature by trusted key {0} does not verify")]
    BadSignature(KeyId),
    /// The signature section or the binary cannot be read.
    #[error("malformed signature: {0}")]
    Malformed(String),
}

fn join(ids: &[String]) -> String {
    if ids.is_empty() {
        "(no key id)".into()
    } else {
        ids.join(", ")
    }
}

/// A component that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The digest of the whole file.
    pub digest: Digest,
    /// The trusted keys whose signatures verified.
    pub signers: Vec<KeyId>,
    /// Every key id that signed, trusted or not.
    pub all_signers: Vec<String>,
    /// The signed metadata, if the signer added any.
    pub metadata: Option<Metadata>,
}

/// The SHA-256 hashes of the content after the signature section: one for
/// each part ending in a delimiter, and one for the tail if it does not end
/// in one. Each hash covers everything from the start of the content, so
/// the last one covers it all.
fn content_hashes(binary: &Binary<'_>, skip_first: bool) -> Vec<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut hashes = Vec::new();
    let mut open = false;
    for section in binary.sections.iter().skip(usize::from(skip_first)) {
        hasher.update(section.raw);
        open = true;
        if section.name == Some(DELIMITER_SECTION) {
            hashes.push(hasher.clone().finalize().into());
            open = false;
        }
    }
    if open || hashes.is_empty() {
        hashes.push(hasher.finalize().into());
    }
    hashes
}

fn signature_section<'a>(binary: &Binary<'a>) -> Result<Option<&'a [u8]>, VerifyError> {
    let position = binary
        .sections
        .iter()
        .position(|s| s.name == Some(SIGNATURE_SECTION));
    match position {
        None => Ok(None),
        Some(0) => Ok(Some(binary.sections[0].data)),
        Some(_) => Err(VerifyError::Malformed(
            "the signature section is not the first section".into(),
        )),
    }
}

fn read_metadata(binary: &Binary<'_>) -> Result<Option<Metadata>, String> {
    binary
        .sections
        .iter()
        .find(|s| s.name == Some(metadata::SECTION))
        .map(|s| {
            serde_json::from_slice(s.data)
                .map_err(|e| format!("the {} section is malformed: {e}", metadata::SECTION))
        })
        .transpose()
}

/// Signs `bytes` with `key`, returning the signed component.
///
/// An unsigned component gets `metadata` in its own section first. A
/// signed one is counter-signed: its content, publisher metadata included,
/// stays as it is, so the earlier signatures remain valid, and `metadata` is
/// ignored.
pub fn sign(bytes: &[u8], key: &SigningKey, metadata: &Metadata) -> anyhow::Result<Vec<u8>> {
    let binary = Binary::parse(bytes).map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    let existing = signature_section(&binary)?;
    let mut data = match existing {
        Some(payload) => SignatureData::decode(payload).map_err(VerifyError::Malformed)?,
        None => SignatureData::default(),
    };

    // The content to sign, in the shortest encoding of every section so
    // that other tools that re-encode sections compute the same hash.
    let mut content = Vec::with_capacity(bytes.len() + 256);
    for section in binary.sections.iter().skip(usize::from(existing.is_some())) {
        if existing.is_none() && section.name == Some(metadata::SECTION) {
            continue; // replaced below
        }
        if section.id == CUSTOM {
            content.extend(custom_section(
                section.name.unwrap_or_default(),
                section.data,
            ));
        } else {
            content.push(section.id);
            wasm_binary::write_bytes(&mut content, section.data);
        }
    }
    if existing.is_none() {
        let json = serde_json::to_vec(metadata)?;
        content.extend(custom_section(metadata::SECTION, &json));
    }

    let mut unsigned = binary.preamble.to_vec();
    unsigned.extend_from_slice(&content);
    let parsed =
        Binary::parse(&unsigned).map_err(|e| anyhow::anyhow!("re-encoding failed: {e}"))?;
    let hashes = content_hashes(&parsed, false);
    let key_id = KeyId::of(&key.verifying_key());
    let signature = Signature {
        key_id: key_id.0.to_vec(),
        signature: key
            .sign(&signature_data::message(&hashes))
            .to_bytes()
            .to_vec(),
    };
    match data.sets.iter_mut().find(|set| set.hashes == hashes) {
        Some(set) => {
            if set.signatures.iter().any(|s| s.key_id == signature.key_id) {
                anyhow::bail!("the component is already signed by key {key_id}");
            }
            set.signatures.push(signature);
        }
        None => data.sets.push(SignedHashes {
            hashes,
            signatures: vec![signature],
        }),
    }

    let mut out = binary.preamble.to_vec();
    out.extend(custom_section(SIGNATURE_SECTION, &data.encode()));
    out.extend_from_slice(&content);
    Ok(out)
}

/// Verifies `bytes` against `trust`: at least one signature by a trusted key
/// must cover the whole content as it is.
pub fn verify(bytes: &[u8], trust: &TrustSet) -> Result<Verified, VerifyError> {
    let binary = Binary::parse(bytes).map_err(VerifyError::Malformed)?;
    let payload = signature_section(&binary)?.ok_or(VerifyError::Unsigned)?;
    let data = SignatureData::decode(payload).map_err(VerifyError::Malformed)?;
    let hashes = content_hashes(&binary, true);
    let matching: Vec<&SignedHashes> = data
        .sets
        .iter()
        .filter(|set| set.hashes == hashes)
        .collect();
    if matching.is_empty() {
        return Err(VerifyError::Tampered);
    }
    let message = signature_data::message(&hashes);
    let mut signers = Vec::new();
    let mut all_signers = Vec::new();
    let mut failed_trusted = None;
    for signature in matching.iter().flat_map(|set| &set.signatures) {
        all_signers.push(hex::encode(&signature.key_id));
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&signature.signature) else {
            continue;
        };
        for trusted in trust.keys() {
            let named = signature.key_id == trusted.id.0;
            // A signature without a key id may belong to any trusted key.
            if !named && !signature.key_id.is_empty() {
                continue;
            }
            if trusted.key.verify(&message, &sig).is_ok() {
                if !signers.contains(&trusted.id) {
                    signers.push(trusted.id);
                }
            } else if named {
                failed_trusted = Some(trusted.id);
            }
        }
    }
    if signers.is_empty() {
        return Err(match failed_trusted {
            Some(id) => VerifyError::BadSignature(id),
            None => VerifyError::Untrusted(all_signers),
        });
    }
    let metadata = read_metadata(&binary).map_err(VerifyError::Malformed)?;
    Ok(Verified {
        digest: Digest::of(bytes),
        signers,
        all_signers,
        metadata,
    })
}

/// What a node does with the components it loads.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// Run only components that verify against these keys.
    Require(TrustSet),
    /// Run anything; verification is skipped (`--allow-unsigned`).
    AllowUnsigned,
}

impl TrustPolicy {
    /// Checks `bytes`, loaded from `origin`, before anything of it runs.
    ///
    /// Under [`TrustPolicy::AllowUnsigned`] nothing is refused, and every
    /// load logs a warning so an unverified node is never quiet about it.
    pub fn check(&self, bytes: &[u8], origin: &str) -> anyhow::Result<Option<Verified>> {
        match self {
            TrustPolicy::Require(trust) => {
                let verified = verify(bytes, trust)
                    .map_err(|e| anyhow::anyhow!("refusing to load {origin}: {e}"))?;
                tracing::info!(
                    component = origin,
                    digest = %verified.digest,
                    signers = ?verified.signers,
                    "signature verified"
                );
                Ok(Some(verified))
            }
            TrustPolicy::AllowUnsigned => {
                tracing::warn!(
                    component = origin,
                    "RUNNING UNVERIFIED CODE: signature checks are off (--allow-unsigned); \
                     do not do this outside development"
                );
                Ok(None)
            }
        }
    }

    /// Builds the policy from `--trust` and `--allow-unsigned`.
    pub fn from_args(trust: Option<&Path>, allow_unsigned: bool) -> anyhow::Result<Self> {
        match (trust, allow_unsigned) {
            (_, true) => Ok(TrustPolicy::AllowUnsigned),
            (Some(path), false) => Ok(TrustPolicy::Require(TrustSet::load(path)?)),
            (None, false) => anyhow::bail!(
                "no trust configured: pass --trust with a publisher's public key (or a directory of them), \
                 or --allow-unsigned to run unverified code"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        bytes.extend(custom_section("producers", b"x"));
        bytes.extend([1, 3, 0xaa, 0xbb, 0xcc]);
        bytes
    }

    fn meta() -> Metadata {
        Metadata {
            name: "t".into(),
            version: "1".into(),
            publisher: "acme".into(),
            signed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn trust(keys: &[&SigningKey]) -> TrustSet {
        let mut set = TrustSet::default();
        for key in keys {
            set.add(key.verifying_key(), "test".into());
        }
        set
    }

    #[test]
    fn signs_and_verifies() {
        let key = generate().unwrap();
        let signed = sign(&component(), &key, &meta()).unwrap();
        let verified = verify(&signed, &trust(&[&key])).unwrap();
        assert_eq!(verified.signers, vec![KeyId::of(&key.verifying_key())]);
        assert_eq!(verified.metadata, Some(meta()));
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let key = generate().unwrap();
        let other = generate().unwrap();
        assert_eq!(
            verify(&component(), &trust(&[&key])),
            Err(VerifyError::Unsigned)
        );
        let signed = sign(&component(), &key, &meta()).unwrap();
        assert!(matches!(
            verify(&signed, &trust(&[&other])),
            Err(VerifyError::Untrusted(_))
        ));

        // Any byte of the content.
        let signature_len = Binary::parse(&signed).unwrap().sections[0].raw.len();
        for i in 8 + signature_len..signed.len() {
            let mut tampered = signed.clone();
            tampered[i] ^= 0x01;
            let result = verify(&tampered, &trust(&[&key]));
            assert!(
                matches!(
                    result,
                    Err(VerifyError::Tampered | VerifyError::Malformed(_))
                ),
                "flip at {i}: {result:?}"
            );
        }
        // The last byte of the content is code, not structure: "tampered".
        let mut tampered = signed.clone();
        *tampered.last_mut().unwrap() ^= 0x01;
        assert_eq!(
            verify(&tampered, &trust(&[&key])),
            Err(VerifyError::Tampered)
        );

        // The signature bytes themselves.
        let mut forged = signed.clone();
        forged[8 + signature_len - 1] ^= 0x01;
        assert!(matches!(
            verify(&forged, &trust(&[&key])),
            Err(VerifyError::BadSignature(_))
        ));

        // A signature section that is not one.
        let mut garbage = b"\0asm\x0d\0\x01\0".to_vec();
        garbage.extend(custom_section("signature", b"\x07"));
        garbage.extend([1, 1, 0]);
        assert!(matches!(
            verify(&garbage, &trust(&[&key])),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn signatures_stack() {
        let publisher = generate().unwrap();
        let operator = generate().unwrap();
        let once = sign(&component(), &publisher, &meta()).unwrap();
        let twice = sign(&once, &operator, &meta()).unwrap();
        assert!(
            sign(&twice, &operator, &meta()).is_err(),
            "the same key twice"
        );
        assert_eq!(
            verify(&twice, &trust(&[&publisher])).unwrap().signers.len(),
            1
        );
        assert_eq!(
            verify(&twice, &trust(&[&operator])).unwrap().signers.len(),
            1
        );
        let both = verify(&twice, &trust(&[&publisher, &operator])).unwrap();
        assert_eq!(both.signers.len(), 2);
        assert_eq!(both.all_signers.len(), 2);
    }
}
