//! The payload of the `signature` custom section, as defined by the
//! WebAssembly tool-conventions signature format (and implemented by
//! wasmsign2): versions, then sets of hashes each with its signatures.

use super::wasm_binary::{read_bytes, read_u32, write_bytes, write_u32};

/// Specification version this code reads and writes.
pub const SPEC_VERSION: u32 = 0x01;
/// Content type of WebAssembly modules and components.
pub const CONTENT_TYPE: u32 = 0x01;
/// SHA-256.
pub const HASH_SHA256: u32 = 0x01;
/// Ed25519.
pub const ALG_ED25519: u8 = 0x01;
/// Domain separation string of the signed message.
pub const DOMAIN: &[u8] = b"wasmsig";

const MAX_SETS: usize = 64;
const MAX_HASHES: usize = 64;
const MAX_SIGNATURES: usize = 256;

/// One signature over a set of hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Identifies the public key; may be empty.
    pub key_id: Vec<u8>,
    /// The Ed25519 signature.
    pub signature: Vec<u8>,
}

/// Hashes of the content up to each delimiter, and who signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHashes {
    /// SHA-256 hashes, 32 bytes each.
    pub hashes: Vec<[u8; 32]>,
    /// Signatures over them.
    pub signatures: Vec<Signature>,
}

/// The whole section payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureData {
    /// Each signed set of hashes.
    pub sets: Vec<SignedHashes>,
}

/// The message an Ed25519 signature covers for `hashes`.
pub fn message(hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&[SPEC_VERSION as u8, CONTENT_TYPE as u8, HASH_SHA256 as u8]);
    for hash in hashes {
        msg.extend_from_slice(hash);
    }
    msg
}

impl SignatureData {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_u32(&mut out, SPEC_VERSION);
        write_u32(&mut out, CONTENT_TYPE);
        write_u32(&mut out, HASH_SHA256);
        write_u32(&mut out, self.sets.len() as u32);
        for set in &self.sets {
            let mut encoded = Vec::new();
            write_u32(&mut encoded, set.hashes.len() as u32);
            for hash in &set.hashes {
                encoded.extend_from_slice(hash);
            }
            write_u32(&mut encoded, set.signatures.len() as u32);
            for signature in &set.signatures {
                let mut sig = Vec::new();
                write_bytes(&mut sig, &signature.key_id);
                sig.push(ALG_ED25519);
                write_bytes(&mut sig, &signature.signature);
                write_bytes(&mut encoded, &sig);
            }
            write_bytes(&mut out, &encoded);
        }
        out
    }

    /// Decodes a payload; an error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut pos = 0;
        let version = read_u32(bytes, &mut pos)?;
        if version != SPEC_VERSION {
            return Err(format!("unsupported signature format version {version}"));
        }
        let content_type = read_u32(bytes, &mut pos)?;
        if content_type != CONTENT_TYPE {
            return Err(format!("unsupported content type {content_type}"));
        }
        let hash_fn = read_u32(bytes, &mut pos)?;
        if hash_fn != HASH_SHA256 {
            return Err(format!("unsupported hash function {hash_fn}"));
        }
        let count = read_u32(bytes, &mut pos)? as usize;
        if count > MAX_SETS {
            return Err(format!(
                "{count} hash sets is more than the {MAX_SETS} allowed"
            ));
        }
        let mut sets = Vec::with_capacity(count);
        for _ in 0..count {
            sets.push(decode_set(read_bytes(bytes, &mut pos)?)?);
        }
        if pos != bytes.len() {
            return Err("trailing bytes after the last signature".into());
        }
        Ok(Self { sets })
    }
}

fn decode_set(bytes: &[u8]) -> Result<SignedHashes, String> {
    let mut pos = 0;
    let count = read_u32(bytes, &mut pos)? as usize;
    if count == 0 || count > MAX_HASHES {
        return Err(format!("a set of {count} hashes is not allowed"));
    }
    let mut hashes = Vec::with_capacity(count);
    for _ in 0..count {
        let hash: [u8; 32] = bytes
            .get(pos..pos + 32)
            .and_then(|h| h.try_into().ok())
            .ok_or("a hash runs past the end of the data")?;
        hashes.push(hash);
        pos += 32;
    }
    let count = read_u32(bytes, &mut pos)? as usize;
    if count > MAX_SIGNATURES {
        return Err(format!(
            "{count} signatures is more than the {MAX_SIGNATURES} allowed"
        ));
    }
    let mut signatures = Vec::with_capacity(count);
    for _ in 0..count {
        let sig = read_bytes(bytes, &mut pos)?;
        let mut at = 0;
        let key_id = read_bytes(sig, &mut at)?.to_vec();
        let alg = *sig.get(at).ok_or("a signature lacks its algorithm")?;
        at += 1;
        if alg != ALG_ED25519 {
            return Err(format!("unsupported signature algorithm {alg}"));
        }
        let signature = read_bytes(sig, &mut at)?.to_vec();
        if at != sig.len() {
            return Err("trailing bytes inside a signature".into());
        }
        signatures.push(Signature { key_id, signature });
    }
    if pos != bytes.len() {
        return Err("trailing bytes after a hash set".into());
    }
    Ok(SignedHashes { hashes, signatures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let data = SignatureData {
            sets: vec![SignedHashes {
                hashes: vec![[7; 32]],
                signatures: vec![
                    Signature {
                        key_id: vec![1, 2, 3],
                        signature: vec![9; 64],
                    },
                    Signature {
                        key_id: vec![],
                        signature: vec![8; 64],
                    },
                ],
            }],
        };
        let bytes = data.encode();
        assert_eq!(SignatureData::decode(&bytes).unwrap(), data);
        assert!(SignatureData::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(
            SignatureData::decode(&wrong_version)
                .unwrap_err()
                .contains("version 2")
        );
    }
}
