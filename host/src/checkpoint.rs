//! The checkpoint bundle: everything needed to resume a twin elsewhere.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "WTWINCKP"                 8 bytes of magic
//! format version             u32 (this code writes 4)
//! header length              u32
//! header                     JSON: twin, model, component digest, state
//!                            version, and the list of sections with the
//!                            length of each
//! section bodies             in the order the header lists them
//! section digests            the BLAKE3 hash of each body, in the same order
//! trailer                    BLAKE3 of the header part and the digests
//! ```
//!
//! The JSON header makes a bundle self-describing (`head -c 4096` shows
//! what it is); the per-section digests say which part is damaged; the
//! trailer seals the header and the digests, so every byte is covered
//! while each body is hashed only once. The digests come after the bodies
//! so that a writer hashes each body as it writes it: the first byte goes
//! out at once instead of after a pass over the whole bundle, which was
//! a visible part of a migration's pause, and a reader hashes what it
//! reads as it reads it, so both passes overlap the transfer.
//!
//! Version 4 hashes with BLAKE3 where version 3, the same layout, used
//! SHA-256: both nodes of a migration hash every byte of the bundle inside
//! the twin's pause, and BLAKE3 does it several times faster on the same
//! core (the mobility bench's last table). Version 3 is still written on
//! request ([`Format::Sha256`]) and read, and so are versions 1 (digests in
//! the header, a trailer over the bodies too) and 2 (digests in the
//! header, a trailer over the header only), all SHA-256.

use std::io::{Read, Seek, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"WTWINCKP";
/// The format version this code writes unless told otherwise.
pub const FORMAT_VERSION: u32 = 4;
/// The first format: digests in the header, a trailer over the bodies too.
const FORMAT_VERSION_1: u32 = 1;
/// The second: digests in the header, a trailer over the header only.
const FORMAT_VERSION_2: u32 = 2;
/// The third: digests after the bodies, all SHA-256.
const FORMAT_VERSION_3: u32 = 3;
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
    #[error(
        "not a wasmtwin checkpoint (it does not start with `{}`)",
        String::from_utf8_lossy(MAGIC)
    )]
    NotACheckpoint,
    /// Written by a newer or unknown format.
    #[error(
        "checkpoint format version {0} is not supported (this wasmtwin reads versions 1 to {FORMAT_VERSION})"
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

/// A format this code writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Version 4, the default: BLAKE3 digests.
    #[default]
    Blake3,
    /// Version 3, the same layout with SHA-256 digests, which wasmtwin
    /// releases before version 4 read.
    Sha256,
}

impl Format {
    fn version(self) -> u32 {
        match self {
            Self::Blake3 => FORMAT_VERSION,
            Self::Sha256 => FORMAT_VERSION_3,
        }
    }
}

/// The hash behind a format version's digests and trailer.
#[derive(Clone)]
enum Checksum {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Checksum {
    fn of_version(version: u32) -> Self {
        if version >= FORMAT_VERSION {
            Self::Blake3(Box::default())
        } else {
            Self::Sha256(Sha256::new())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(hash) => hash.update(bytes),
            Self::Blake3(hash) => {
                hash.update(bytes);
            }
        }
    }

    fn finalize(self) -> [u8; DIGEST_LEN as usize] {
        match self {
            Self::Sha256(hash) => hash.finalize().into(),
            Self::Blake3(hash) => hash.finalize().into(),
        }
    }
}

/// One section as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionInfo {
    /// What the section holds.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256, in the header of versions 1 and 2 only (later
    /// versions write the digests after the bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
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
/// length is known ahead (from a first pass over its source), and `write`
/// produces exactly that many bytes.
pub struct StreamedSection<'a> {
    /// What the section holds.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Writes the body.
    pub write: WriteBody<'a>,
}

enum Body<'a> {
    Held(&'a [u8]),
    Streamed(StreamedSection<'a>),
}

/// A bundle whose header is written: its length is known, and writing it
/// holds no more in memory than its sections already were.
pub struct Sealed<'a> {
    version: u32,
    head: Vec<u8>,
    bodies: Vec<Body<'a>>,
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
        let digests = DIGEST_LEN * self.bodies.len() as u64;
        self.head.len() as u64 + bodies + digests + DIGEST_LEN
    }

    /// Writes it, hashing each body as it goes. A streamed section that
    /// produces other than its announced length fails the write (the
    /// bundle would not read back).
    pub fn write_to(self, mut writer: impl Write) -> Result<(), CheckpointError> {
        writer.write_all(&self.head)?;
        let mut digests = Vec::with_capacity(DIGEST_LEN as usize * self.bodies.len());
        for body in self.bodies {
            let mut hashing = Hashing {
                inner: &mut writer,
                written: 0,
                hash: Checksum::of_version(self.version),
            };
            match body {
                // In steps, each hashed while still in cache.
                Body::Held(bytes) => {
                    for step in bytes.chunks(STEP) {
                        hashing.write_all(step)?;
                    }
                }
                Body::Streamed(section) => {
                    (section.write)(&mut hashing)?;
                    if hashing.written != section.len {
                        return Err(CheckpointError::Io(std::io::Error::other(format!(
                            "section `{}` came out {} bytes long, not the {} announced",
                            section.name, hashing.written, section.len
                        ))));
                    }
                }
            }
            digests.extend_from_slice(&hashing.hash.finalize());
        }
        writer.write_all(&digests)?;
        let mut trailer = Checksum::of_version(self.version);
        trailer.update(&self.head);
        trailer.update(&digests);
        writer.write_all(&trailer.finalize())?;
        writer.flush()?;
        Ok(())
    }
}

/// Length of a digest (SHA-256 or BLAKE3) in bytes.
const DIGEST_LEN: u64 = 32;

/// Counts and hashes what is written through it.
struct Hashing<W> {
    inner: W,
    written: u64,
    hash: Checksum,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
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
    hash: Checksum,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), CheckpointError> {
        self.unhashed(buf, what)?;
        self.hash.update(&*buf);
        Ok(())
    }

    /// Reads without adding to the trailer's hash.
    fn unhashed(&mut self, buf: &mut [u8], what: &str) -> Result<(), CheckpointError> {
        read_exact(&mut self.inner, buf, what)
    }

    fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        let mut bytes = [0u8; 4];
        self.exact(&mut bytes, what)?;
        Ok(u32::from_le_bytes(bytes))
    }
}

/// Fills `buf`, or says that the bundle ends inside `what`.
fn read_exact(reader: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), CheckpointError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            CheckpointError::Truncated(format!("it ends inside {what}"))
        }
        _ => CheckpointError::Io(e),
    })
}

impl Checkpoint {
    /// The body of the section `name`, if present.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// Takes the body of the section `name` out, if present; the others
    /// keep their order.
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let at = self.sections.iter().position(|(n, _)| n == name)?;
        Some(self.sections.remove(at).1)
    }

    /// Writes the bundle.
    pub fn write_to(&self, writer: impl Write) -> Result<(), CheckpointError> {
        self.write_as(Format::default(), writer)
    }

    /// Writes the bundle in `format`.
    pub fn write_as(&self, format: Format, writer: impl Write) -> Result<(), CheckpointError> {
        self.seal_as(format, Vec::new())?.write_to(writer)
    }

    /// The bundle of these sections followed by `streamed` ones, ready to
    /// write: its header made, so its length is known before a byte goes
    /// out, and nothing hashed yet.
    pub fn seal<'a>(
        &'a self,
        streamed: Vec<StreamedSection<'a>>,
    ) -> Result<Sealed<'a>, CheckpointError> {
        self.seal_as(Format::default(), streamed)
    }

    fn seal_as<'a>(
        &'a self,
        format: Format,
        streamed: Vec<StreamedSection<'a>>,
    ) -> Result<Sealed<'a>, CheckpointError> {
        let mut sections: Vec<SectionInfo> = self
            .sections
            .iter()
            .map(|(name, body)| SectionInfo {
                name: name.clone(),
                len: body.len() as u64,
                digest: None,
            })
            .collect();
        sections.extend(streamed.iter().map(|s| SectionInfo {
            name: s.name.clone(),
            len: s.len,
            digest: None,
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
        head.extend_from_slice(&format.version().to_le_bytes());
        head.extend_from_slice(&header_len.to_le_bytes());
        head.extend_from_slice(&header);
        let mut bodies: Vec<Body<'a>> = self
            .sections
            .iter()
            .map(|(_, b)| Body::Held(b.as_slice()))
            .collect();
        bodies.extend(streamed.into_iter().map(Body::Streamed));
        Ok(Sealed {
            version: format.version(),
            head,
            bodies,
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
        let mut reader = reader;
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|_| CheckpointError::NotACheckpoint)?;
        if &magic != MAGIC {
            return Err(CheckpointError::NotACheckpoint);
        }
        let mut version = [0u8; 4];
        read_exact(&mut reader, &mut version, "the format version")?;
        let version = u32::from_le_bytes(version);
        if !(FORMAT_VERSION_1..=FORMAT_VERSION).contains(&version) {
            return Err(CheckpointError::UnsupportedVersion(version));
        }
        // The version says which hash seals the bytes before it too.
        let mut hash = Checksum::of_version(version);
        hash.update(&magic);
        hash.update(&version.to_le_bytes());
        let mut r = HashingReader {
            inner: reader,
            hash,
        };
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
        check_digests_declared(&header.sections, version)?;
        check_names_unique(&header.sections)?;
        check_declared(&header.sections, &spill)?;
        // Version 2 seals the header here; version 1 goes on over the
        // bodies, version 3 over the digests after them.
        let sealed = (version == FORMAT_VERSION_2).then(|| r.hash.clone().finalize());
        let mut sections = Vec::with_capacity(header.sections.len());
        let mut digests = Vec::with_capacity(header.sections.len());
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
            let mut digest = Checksum::of_version(version);
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
                if version == FORMAT_VERSION_1 {
                    r.exact(step, &what)?;
                } else {
                    r.unhashed(step, &what)?;
                }
                digest.update(&*step);
                if let Some(file) = &mut to_file {
                    file.write_all(&chunk[..n])?;
                }
                left -= n as u64;
            }
            digests.push(digest.finalize());
            match to_file {
                Some(file) => {
                    let mut file = file.into_inner().map_err(|e| e.into_error())?;
                    file.seek(std::io::SeekFrom::Start(0))?;
                    spilled.push((info.name.clone(), file));
                }
                None => sections.push((info.name.clone(), body)),
            }
        }
        for (info, actual) in header.sections.iter().zip(&digests) {
            let declared = match info.digest {
                Some(declared) => *declared.as_bytes(),
                None => {
                    let mut bytes = [0u8; DIGEST_LEN as usize];
                    r.exact(&mut bytes, "the section digests")?;
                    bytes
                }
            };
            if declared != *actual {
                return Err(CheckpointError::Corrupted(format!(
                    "section `{}` does not match its checksum",
                    info.name
                )));
            }
        }
        let expected = sealed.unwrap_or_else(|| r.hash.finalize());
        let mut trailer = [0u8; DIGEST_LEN as usize];
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

/// Refuses a header whose sections' digests are not where its version
/// keeps them: in the header before version 3, after the bodies from it.
fn check_digests_declared(sections: &[SectionInfo], version: u32) -> Result<(), CheckpointError> {
    let in_header = version < FORMAT_VERSION_3;
    match sections.iter().find(|s| s.digest.is_some() != in_header) {
        Some(section) if in_header => Err(CheckpointError::BadHeader(format!(
            "section `{}` has no digest, which a version {version} header must give",
            section.name
        ))),
        Some(section) => Err(CheckpointError::BadHeader(format!(
            "section `{}` has a digest in the header, where version {version} has none",
            section.name
        ))),
        None => Ok(()),
    }
}

/// Refuses a header that names a section twice: a reader looks a section
/// up by name, so one of the two would be silently ignored.
fn check_names_unique(sections: &[SectionInfo]) -> Result<(), CheckpointError> {
    let mut seen = std::collections::HashSet::with_capacity(sections.len());
    match sections.iter().find(|s| !seen.insert(s.name.as_str())) {
        Some(twice) => Err(CheckpointError::BadHeader(format!(
            "section `{}` appears more than once",
            twice.name
        ))),
        None => Ok(()),
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
    fn a_section_named_twice_is_refused() {
        let mut twice = sample();
        twice
            .sections
            .push((GUEST_SECTION.into(), b"{\"n\":2}".to_vec()));
        let bytes = twice.to_bytes().unwrap();
        match Checkpoint::read_from(&bytes[..]) {
            Err(CheckpointError::BadHeader(e)) => {
                assert!(e.contains("section `guest` appears more than once"), "{e}")
            }
            other => panic!("read {other:?}"),
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

    /// `checkpoint` as format version 1 or 2 wrote it: each section's
    /// digest in the header, the trailer over everything before it (1) or
    /// over the header part only (2).
    fn legacy(checkpoint: &Checkpoint, version: u32) -> Vec<u8> {
        let header = Header {
            twin: checkpoint.twin.clone(),
            created_ms: checkpoint.created_ms,
            model: checkpoint.model.clone(),
            sections: checkpoint
                .sections
                .iter()
                .map(|(name, body)| SectionInfo {
                    name: name.clone(),
                    len: body.len() as u64,
                    digest: Some(Digest::of(body)),
                })
                .collect(),
        };
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        let head = Sha256::digest(&bytes);
        for (_, body) in &checkpoint.sections {
            bytes.extend_from_slice(body);
        }
        let trailer = match version {
            FORMAT_VERSION_1 => Sha256::digest(&bytes),
            _ => head,
        };
        bytes.extend_from_slice(&trailer);
        bytes
    }

    #[test]
    fn reads_versions_1_and_2() {
        for version in [FORMAT_VERSION_1, FORMAT_VERSION_2] {
            let mut old = legacy(&sample(), version);
            assert_eq!(Checkpoint::read_from(&old[..]).unwrap(), sample());
            let last_body_byte = old.len() - 33;
            old[last_body_byte] ^= 1;
            let err = Checkpoint::read_from(&old[..]).unwrap_err();
            assert!(err.to_string().contains("section `twin`"), "{err}");
        }
    }

    /// Each version keeps the digests in one place: a header that gives
    /// them where its version has none (or not where it has) is refused,
    /// not half-checked.
    #[test]
    fn digests_must_be_where_the_version_keeps_them() {
        for later in [FORMAT_VERSION_3, FORMAT_VERSION] {
            let mut v2_as_later = legacy(&sample(), FORMAT_VERSION_2);
            v2_as_later[8..12].copy_from_slice(&later.to_le_bytes());
            let err = Checkpoint::read_from(&v2_as_later[..]).unwrap_err();
            assert!(
                err.to_string().contains("has a digest in the header"),
                "{err}"
            );
        }
        for format in [Format::Sha256, Format::Blake3] {
            let mut later_as_v2 = written_as(format);
            later_as_v2[8..12].copy_from_slice(&FORMAT_VERSION_2.to_le_bytes());
            let err = Checkpoint::read_from(&later_as_v2[..]).unwrap_err();
            assert!(err.to_string().contains("has no digest"), "{err}");
        }
    }

    fn written_as(format: Format) -> Vec<u8> {
        let mut bytes = Vec::new();
        sample().write_as(format, &mut bytes).unwrap();
        bytes
    }

    /// Version 4 is version 3's layout with BLAKE3 in place of SHA-256;
    /// both are written on request and read, and the version alone says
    /// which hash a reader checks.
    #[test]
    fn version_4_hashes_with_blake3_and_version_3_with_sha256() {
        let sample = sample();
        let guest = sample.section(GUEST_SECTION).unwrap();
        type Hash = fn(&[u8]) -> [u8; 32];
        let cases: [(Format, u32, Hash); 2] = [
            (Format::Blake3, 4, |b| blake3::hash(b).into()),
            (Format::Sha256, 3, |b| Sha256::digest(b).into()),
        ];
        for (format, version, hash) in cases {
            let bytes = written_as(format);
            assert_eq!(bytes[8..12], version.to_le_bytes());
            assert_eq!(Checkpoint::read_from(&bytes[..]).unwrap(), sample);
            // The guest's digest is the first of the two before the trailer.
            let digests = bytes.len() - 3 * 32;
            assert_eq!(bytes[digests..digests + 32], hash(guest), "{format:?}");
            let trailer = bytes.len() - 32;
            let head = bytes.len() - 3 * 32 - guest.len() - sample.sections[1].1.len();
            let mut sealed = bytes[..head].to_vec();
            sealed.extend_from_slice(&bytes[digests..trailer]);
            assert_eq!(bytes[trailer..], hash(&sealed), "{format:?}");
        }
        let mut v3_as_v4 = written_as(Format::Sha256);
        v3_as_v4[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let err = Checkpoint::read_from(&v3_as_v4[..]).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupted(_)), "{err}");
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        for format in [Format::Blake3, Format::Sha256] {
            let bytes = written_as(format);
            for i in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[i] ^= 0x01;
                assert!(
                    Checkpoint::read_from(&damaged[..]).is_err(),
                    "{format:?}: flip at byte {i} went unnoticed"
                );
            }
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
            err.to_string()
                .contains("not a wasmtwin checkpoint (it does not start with `WTWINCKP`)"),
            "{err}"
        );
        let err = Checkpoint::read_from(&bytes[..bytes.len() - 40]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut future = bytes.clone();
        future[8] = 9;
        let err = Checkpoint::read_from(&future[..]).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        let mut damaged = bytes.clone();
        // Before the trailer and the two sections' digests.
        let last_body_byte = bytes.len() - 3 * 32 - 1;
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
