//! The checkpoint bundle: everything needed to resume a twin elsewhere.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "WTWINCKP"                 8 bytes of magic
//! format version             u32 (this code writes 2)
//! header length              u32
//! header                     JSON: twin, model, component digest, state
//!                            version, and the list of sections with the
//!                            length and SHA-256 of each
//! section bodies             in the order the header lists them
//! trailer                    SHA-256 of every byte before the bodies
//! ```
//!
//! The JSON header makes a bundle self-describing (`head -c 4096` shows
//! what it is); the per-section digests say which part is damaged; the
//! trailer seals the header, and with it those digests, so every byte is
//! covered while the bodies are hashed only once — they are most of a
//! bundle, and hashing them twice was a visible part of a migration's
//! pause. Version 1, whose trailer hashed the bodies again, is still read.

use std::io::{Read, Seek, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"WTWINCKP";
/// The format version this code writes.
pub const FORMAT_VERSION: u32 = 2;
/// The first format, whose trailer hashes the section bodies too.
const FORMAT_VERSION_1: u32 = 1;
/// Largest header accepted, so a corrupt length cannot exhaust memory.
const HEADER_MAX: u32 = 1 << 20;
/// Bodies are read in steps of this size.
const STEP: usize = 64 * 1024;
/// Most reserved up front for a section; a longer one grows as it is
/// read, so a lying length fails as truncation before it allocates.
const RESERVE_MAX: u64 = 64 << 20;
/// Most bytes of sections a reader holds in memory, all together: a guest
/// snapshot at a node's largest memory ceiling (1 GiB) and room for the
/// rest. A header that declares more is refused before a body is read.
pub const HELD_MAX: u64 = (1 << 30) + (256 << 20);
/// Most bytes of one section read into a temporary file (a history).
pub const SPILLED_MAX: u64 = 16 << 30;

/// The section holding the guest's own snapshot bytes.
pub const GUEST_SECTION: &str = "guest";
/// The section holding the host's view of the twin, as JSON.
pub const TWIN_SECTION: &str = "twin";
/// In bundles a node exports: the twin's spec, as JSON.
pub const SPEC_SECTION: &str = "spec";
/// In bundles a node exports: the twin's history, one JSON row per line.
pub const HISTORY_SECTION: &str = "history";
/// In bundles a node exports: the twin's entanglement window, as JSON.
pub const ENTANGLEMENT_SECTION: &str = "entanglement";
/// Optionally, the model component itself.
pub const MODEL_SECTION: &str = "model-component";
/// Optionally, the adapter component itself.
pub const ADAPTER_SECTION: &str = "adapter-component";

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The bytes do not start with the magic.
    #[error("not a wasmtwin checkpoint (it does not start with {MAGIC:?})")]
    NotACheckpoint,
    /// Written by a newer or unknown format.
    #[error(
        "checkpoint format version {0} is not supported (this wasmtwin reads versions 1 and {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// The bytes end early.
    #[error("checkpoint is truncated: {0}")]
    Truncated(String),
    /// The header is not what this format defines.
    #[error("checkpoint header is malformed: {0}")]
    BadHeader(String),
    /// A checksum does not match.
    #[error("checkpoint is corrupted: {0}")]
    Corrupted(String),
    /// The header declares more than a reader takes.
    #[error("checkpoint is too large: {0}")]
    TooLarge(String),
    /// Reading or writing failed.
    #[error("checkpoint I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The model a checkpoint was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's name (from `describe`).
    pub name: String,
    /// The model's release.
    pub version: String,
    /// Digest of the component that wrote the guest snapshot.
    pub component: Digest,
    /// Layout version of the guest snapshot.
    pub state_version: u32,
}

/// One section as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionInfo {
    /// What the section holds.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256.
    pub digest: Digest,
}

/// The self-describing header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The twin's name.
    pub twin: String,
    /// When the checkpoint was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The model that wrote the guest snapshot.
    pub model: ModelInfo,
    /// The sections that follow, in order.
    pub sections: Vec<SectionInfo>,
}

/// A checkpoint: the header and the section bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The twin's name.
    pub twin: String,
    /// When it was taken.
    pub created_ms: u64,
    /// The model that wrote the guest snapshot.
    pub model: ModelInfo,
    /// Named section bodies, in order.
    pub sections: Vec<(String, Vec<u8>)>,
}

/// Writes a streamed section's body.
pub type WriteBody<'a> = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'a>;

/// A section too large to hold in memory, written as the bundle is: its
/// length and digest are known ahead (from a first pass over its source),
/// and `write` produces exactly those bytes.
pub struct StreamedSection<'a> {
    /// What the section holds.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256.
    pub digest: Digest,
    /// Writes the body.
    pub write: WriteBody<'a>,
}

enum Body<'a> {
    Held(&'a [u8]),
    Streamed(StreamedSection<'a>),
}

/// A bundle whose header is sealed: its length is known, and writing it
/// holds no more in memory than its sections already were.
pub struct Sealed<'a> {
    head: Vec<u8>,
    bodies: Vec<Body<'a>>,
    trailer: [u8; 32],
}

impl Sealed<'_> {
    /// The bundle's length in bytes.
    pub fn size(&self) -> u64 {
        let bodies: u64 = self
            .bodies
            .iter()
            .map(|b| match b {
                Body::Held(bytes) => bytes.len() as u64,
                Body::Streamed(s) => s.len,
            })
            .sum();
        self.head.len() as u64 + bodies + self.trailer.len() as u64
    }

    /// Writes it. A streamed section that produces other than its
    /// announced length fails the write (the bundle would not read back).
    pub fn write_to(self, mut writer: impl Write) -> Result<(), CheckpointError> {
        writer.write_all(&self.head)?;
        for body in self.bodies {
            match body {
                Body::Held(bytes) => writer.write_all(bytes)?,
                Body::Streamed(section) => {
                    let mut counted = Counted {
                        inner: &mut writer,
                        written: 0,
                    };
                    (section.write)(&mut counted)?;
                    if counted.written != section.len {
                        return Err(CheckpointError::Io(std::io::Error::other(format!(
                            "section `{}` came out {} bytes long, not the {} announced",
                            section.name, counted.written, section.len
                        ))));
                    }
                }
            }
        }
        writer.write_all(&self.trailer)?;
        writer.flush()?;
        Ok(())
    }
}

/// Counts what is written through it.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), CheckpointError> {
        self.unhashed(buf, what)?;
        self.hash.update(&*buf);
        Ok(())
    }

    /// Reads without adding to the trailer's hash.
    fn unhashed(&mut self, buf: &mut [u8], what: &str) -> Result<(), CheckpointError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                CheckpointError::Truncated(format!("it ends inside {what}"))
            }
            _ => CheckpointError::Io(e),
        })
    }

    fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        let mut bytes = [0u8; 4];
        self.exact(&mut bytes, what)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

impl Checkpoint {
    /// The body of the section `name`, if present.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// Writes the bundle.
    pub fn write_to(&self, writer: impl Write) -> Result<(), CheckpointError> {
        self.seal(Vec::new())?.write_to(writer)
    }

    /// The bundle of these sections followed by `streamed` ones, ready to
    /// write: its header sealed, so its length is known before a byte goes
    /// out.
    pub fn seal<'a>(
        &'a self,
        streamed: Vec<StreamedSection<'a>>,
    ) -> Result<Sealed<'a>, CheckpointError> {
        let mut sections: Vec<SectionInfo> = self
            .sections
            .iter()
            .map(|(name, body)| SectionInfo {
                name: name.clone(),
                len: body.len() as u64,
                digest: Digest::of(body),
            })
            .collect();
        sections.extend(streamed.iter().map(|s| SectionInfo {
            name: s.name.clone(),
            len: s.len,
            digest: s.digest,
        }));
        let header = Header {
            twin: self.twin.clone(),
            created_ms: self.created_ms,
            model: self.model.clone(),
            sections,
        };
        let header = serde_json::to_vec_pretty(&header)
            .map_err(|e| CheckpointError::BadHeader(e.to_string()))?;
        let header_len = u32::try_from(header.len())
            .ok()
            .filter(|&n| n <= HEADER_MAX)
            .ok_or_else(|| {
                CheckpointError::BadHeader(format!("header of {} bytes is too large", header.len()))
            })?;
        let mut head = Vec::with_capacity(16 + header.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&header_len.to_le_bytes());
        head.extend_from_slice(&header);
        let trailer = Sha256::digest(&head).into();
        let mut bodies: Vec<Body<'a>> = self
            .sections
            .iter()
            .map(|(_, b)| Body::Held(b.as_slice()))
            .collect();
        bodies.extend(streamed.into_iter().map(Body::Streamed));
        Ok(Sealed {
            head,
            bodies,
            trailer,
        })
    }

    /// Writes the bundle into a byte vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads and checks a bundle: magic, version, header, every section's
    /// digest and the trailer. Anything off is refused with the reason.
    pub fn read_from(reader: impl Read) -> Result<Self, CheckpointError> {
        Self::read_spilling(reader, |_| false).map(|(checkpoint, _)| checkpoint)
    }

    /// Reads and checks a bundle like [`Checkpoint::read_from`], but the
    /// sections `spill` picks go to anonymous temporary files (rewound, in
    /// bundle order) instead of memory: a bundle's history can be larger
    /// than the node should hold.
    pub fn read_spilling(
        reader: impl Read,
        spill: impl Fn(&SectionInfo) -> bool,
    ) -> Result<(Self, Vec<(String, std::fs::File)>), CheckpointError> {
        let mut r = HashingReader {
            inner: reader,
            hash: Sha256::new(),
        };
        let mut magic = [0u8; 8];
        r.inner
            .read_exact(&mut magic)
            .map_err(|_| CheckpointError::NotACheckpoint)?;
        if &magic != MAGIC {
            return Err(CheckpointError::NotACheckpoint);
        }
        r.hash.update(magic);
        let version = r.u32("the format version")?;
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(CheckpointError::UnsupportedVersion(version));
        }
        let header_len = r.u32("the header length")?;
        if header_len > HEADER_MAX {
            return Err(CheckpointError::BadHeader(format!(
                "header length {header_len} is implausible"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        r.exact(&mut header, "the header")?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|e| CheckpointError::BadHeader(e.to_string()))?;
        check_declared(&header.sections, &spill)?;
        // Version 2 seals the header here; version 1 goes on over the bodies.
        let sealed = (version == FORMAT_VERSION).then(|| r.hash.clone().finalize());
        let mut sections = Vec::with_capacity(header.sections.len());
        let mut spilled = Vec::new();
        let mut chunk = vec![0u8; STEP];
        for info in &header.sections {
            // Read in steps, each hashed as it comes, while still in cache.
            let what = format!("section `{}`", info.name);
            let mut to_file = if spill(info) {
                Some(std::io::BufWriter::new(tempfile::tempfile()?))
            } else {
                None
            };
            let mut body = Vec::with_capacity(if to_file.is_some() {
                0
            } else {
                usize::try_from(info.len.min(RESERVE_MAX)).unwrap_or(0)
            });
            let mut digest = Sha256::new();
            let mut left = info.len;
            while left > 0 {
                let n = usize::try_from(left.min(STEP as u64)).unwrap_or(STEP);
                let step = match &to_file {
                    Some(_) => &mut chunk[..n],
                    None => {
                        let at = body.len();
                        body.resize(at + n, 0);
                        &mut body[at..]
                    }
                };
                if sealed.is_some() {
                    r.unhashed(step, &what)?;
                } else {
                    r.exact(step, &what)?;
                }
                digest.update(&*step);
                if let Some(file) = &mut to_file {
                    file.write_all(&chunk[..n])?;
                }
                left -= n as u64;
            }
            if Digest::from_hash(digest.finalize().into()) != info.digest {
                return Err(CheckpointError::Corrupted(format!(
                    "section `{}` does not match its checksum",
                    info.name
                )));
            }
            match to_file {
                Some(file) => {
                    let mut file = file.into_inner().map_err(|e| e.into_error())?;
                    file.seek(std::io::SeekFrom::Start(0))?;
                    spilled.push((info.name.clone(), file));
                }
                None => sections.push((info.name.clone(), body)),
            }
        }
        let expected = sealed.unwrap_or_else(|| r.hash.finalize());
        let mut trailer = [0u8; 32];
        r.inner
            .read_exact(&mut trailer)
            .map_err(|_| CheckpointError::Truncated("the final checksum is missing".into()))?;
        if trailer[..] != expected[..] {
            return Err(CheckpointError::Corrupted(
                "the final checksum does not match".into(),
            ));
        }
        let mut extra = [0u8; 1];
        if r.inner.read(&mut extra)? != 0 {
            return Err(CheckpointError::Corrupted(
                "there are bytes after the final checksum".into(),
            ));
        }
        let checkpoint = Checkpoint {
            twin: header.twin,
            created_ms: header.created_ms,
            model: header.model,
            sections,
        };
        Ok((checkpoint, spilled))
    }
}

/// Refuses a header whose sections, as declared, exceed what a reader
/// holds ([`HELD_MAX`] in memory in all, [`SPILLED_MAX`] per spilled
/// section), before a byte of them is read.
fn check_declared(
    sections: &[SectionInfo],
    spill: &impl Fn(&SectionInfo) -> bool,
) -> Result<(), CheckpointError> {
    let size = |n: u64| bytesize::ByteSize(n).display().iec().to_string();
    let mut held = 0u64;
    for section in sections {
        if spill(section) {
            if section.len > SPILLED_MAX {
                return Err(CheckpointError::TooLarge(format!(
                    "section `{}` declares {}, more than the {} allowed",
                    section.name,
                    size(section.len),
                    size(SPILLED_MAX)
                )));
            }
        } else {
            held = held.saturating_add(section.len);
        }
    }
    if held > HELD_MAX {
        return Err(CheckpointError::TooLarge(format!(
            "its sections declare {} to hold in memory, more than the {} allowed; nothing was read",
            size(held),
            size(HELD_MAX)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            twin: "pump-7".into(),
            created_ms: 1_700_000_000_000,
            model: ModelInfo {
                name: "prime".into(),
                version: "0.1.0".into(),
                component: Digest::of(b"component"),
                state_version: 1,
            },
            sections: vec![
                (GUEST_SECTION.into(), b"{\"n\":1}".to_vec()),
                (TWIN_SECTION.into(), b"{}".to_vec()),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(Checkpoint::read_from(&bytes[..]).unwrap(), sample());
    }

    #[test]
    fn a_streamed_section_is_sealed_ahead_and_can_be_spilled() {
        let body = b"row 1\nrow 2\n";
        let streamed = StreamedSection {
            name: "history".into(),
            len: body.len() as u64,
            digest: Digest::of(body),
            write: Box::new(|w| w.write_all(body)),
        };
        let checkpoint = sample();
        let sealed = checkpoint.seal(vec![streamed]).unwrap();
        let size = sealed.size();
        let mut bytes = Vec::new();
        sealed.write_to(&mut bytes).unwrap();
        assert_eq!(
            bytes.len() as u64,
            size,
            "the length announced is the length"
        );
        let (read, mut spilled) =
            Checkpoint::read_spilling(&bytes[..], |info| info.name == "history").unwrap();
        assert_eq!(read, sample());
        let mut text = String::new();
        spilled[0].1.read_to_string(&mut text).unwrap();
        assert_eq!(text.as_bytes(), body);
    }

    #[test]
    fn a_streamed_section_that_breaks_its_word_fails_the_write() {
        let streamed = StreamedSection {
            name: "history".into(),
            len: 5,
            digest: Digest::of(b"12345"),
            write: Box::new(|w| w.write_all(b"1234")),
        };
        let checkpoint = sample();
        let err = checkpoint
            .seal(vec![streamed])
            .unwrap()
            .write_to(Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("4 bytes long, not the 5"), "{err}");
    }

    #[test]
    fn reads_version_1() {
        // Version 1's trailer hashes the bodies too: rebuild one from a
        // version 2 bundle (same header and bodies).
        let v2 = sample().to_bytes().unwrap();
        let mut v1 = v2[..v2.len() - 32].to_vec();
        v1[8..12].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
        let trailer = Sha256::digest(&v1);
        v1.extend_from_slice(&trailer);
        assert_eq!(Checkpoint::read_from(&v1[..]).unwrap(), sample());
        let last_body_byte = v1.len() - 33;
        v1[last_body_byte] ^= 1;
        assert!(Checkpoint::read_from(&v1[..]).is_err());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample().to_bytes().unwrap();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(
                Checkpoint::read_from(&damaged[..]).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    /// A header that declares a 2 GB section is refused at once, not after
    /// reading (and holding) 2 GB.
    #[test]
    fn defect_07_declared_lengths_are_checked_before_reading() {
        let bytes = sample().to_bytes().unwrap();
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut header: Header = serde_json::from_slice(&bytes[16..16 + header_len]).unwrap();
        header.sections[0].len = 2_000_000_000;
        let header = serde_json::to_vec(&header).unwrap();
        let mut lying = bytes[..12].to_vec();
        lying.extend_from_slice(&(header.len() as u32).to_le_bytes());
        lying.extend_from_slice(&header);
        // Bodies that go on and on: the reader must not wait for them.
        let endless = std::io::Read::chain(&lying[..], std::io::repeat(7));
        let err = Checkpoint::read_from(endless).unwrap_err();
        assert!(
            matches!(err, CheckpointError::TooLarge(_)) && err.to_string().contains("1.2 GiB"),
            "{err}"
        );
    }

    #[test]
    fn says_why() {
        let bytes = sample().to_bytes().unwrap();
        let err = Checkpoint::read_from(&b"hello world, not a bundle"[..]).unwrap_err();
        assert!(
            err.to_string().contains("not a wasmtwin checkpoint"),
            "{err}"
        );
        let err = Checkpoint::read_from(&bytes[..bytes.len() - 40]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut future = bytes.clone();
        future[8] = 9;
        let err = Checkpoint::read_from(&future[..]).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        let mut damaged = bytes.clone();
        let last_body_byte = bytes.len() - 33;
        damaged[last_body_byte] ^= 0xff;
        let err = Checkpoint::read_from(&damaged[..]).unwrap_err();
        assert!(err.to_string().contains("section `twin`"), "{err}");
        let mut longer = bytes.clone();
        longer.push(0);
        let err = Checkpoint::read_from(&longer[..]).unwrap_err();
        assert!(
            err.to_string().contains("after the final checksum"),
            "{err}"
        );
    }
}
