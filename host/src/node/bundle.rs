//! The bundle a node exports and imports: a twin's checkpoint with its
//! spec, entanglement window, history and, optionally, its components, as
//! sections of the checkpoint format.
//!
//! A history can be larger than a node should hold, so it streams both
//! ways: out of a store snapshot (a first pass measures its length for the
//! header, a second writes it), and in to a temporary
//! file (checked, then imported in batches).

use std::io::{BufRead, BufReader, Read, Seek, Write};

use anyhow::{Context, bail};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{
    ADAPTER_SECTION, Checkpoint, ENTANGLEMENT_SECTION, HISTORY_SECTION, MODEL_SECTION,
    SPEC_SECTION, StreamedSection,
};
use crate::spec::TwinSpec;
use crate::store::{HistoryRow, HistorySnapshot};
use crate::twin::entanglement::Window;

/// A history section longer than this is read into a temporary file.
const SPILL_OVER: u64 = 1 << 20;
/// Bytes per chunk of a bundle on its way out.
const CHUNK: usize = 64 * 1024;

/// What a checkpoint bundle holds beyond the twin's own checkpoint.
pub struct Bundle {
    /// The spec the twin ran under.
    pub spec: TwinSpec,
    /// Guest snapshot and host-side twin state.
    pub checkpoint: Checkpoint,
    /// Its history, oldest first.
    pub history: History,
    /// Its entanglement window, so its measures go on where it arrives.
    pub entanglement: Option<Window>,
    /// The model and adapter components, when the bundle carries them.
    pub components: Option<(Vec<u8>, Vec<u8>)>,
}

/// A bundle's history rows, wherever they are.
pub enum History {
    /// In memory.
    Rows(Vec<HistoryRow>),
    /// JSON lines in a temporary file, already checked.
    Spilled {
        /// The file, rewound.
        file: std::fs::File,
        /// How many rows it holds.
        rows: u64,
    },
    /// In the node's store, as of a snapshot.
    Store(HistorySnapshot),
}

impl History {
    /// How many rows, when known without reading them.
    pub fn rows(&self) -> Option<u64> {
        match self {
            History::Rows(rows) => Some(rows.len() as u64),
            History::Spilled { rows, .. } => Some(*rows),
            History::Store(_) => None,
        }
    }

    /// Hands the rows to `each` in batches of at most `size`, oldest first.
    pub fn batches(
        self,
        size: usize,
        mut each: impl FnMut(Vec<HistoryRow>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(size);
        let mut push = |row: HistoryRow, batch: &mut Vec<HistoryRow>| {
            batch.push(row);
            if batch.len() >= size {
                each(std::mem::replace(batch, Vec::with_capacity(size)))?;
            }
            anyhow::Ok(())
        };
        match self {
            History::Rows(rows) => {
                for row in rows {
                    push(row, &mut batch)?;
                }
            }
            History::Spilled { file, .. } => {
                for line in BufReader::new(file).lines() {
                    let line = line?;
                    if !line.is_empty() {
                        push(parse_row(line.as_bytes())?, &mut batch)?;
                    }
                }
            }
            // Only histories that came from elsewhere are imported.
            History::Store(_) => bail!("a history still in this node's store is not imported"),
        }
        if !batch.is_empty() {
            each(batch)?;
        }
        Ok(())
    }

    /// The rows as the history section holds them: its length, and how to
    /// write it.
    fn section<'a>(self) -> anyhow::Result<StreamedSection<'a>> {
        let len = match &self {
            History::Rows(rows) => {
                let mut measured = Measure::default();
                write_rows(rows, &mut measured)?;
                measured.len
            }
            History::Spilled { file, .. } => file.metadata()?.len(),
            History::Store(snapshot) => {
                let mut len = 0;
                snapshot.lines(|chunk| {
                    len += chunk.len() as u64;
                    true
                })?;
                len
            }
        };
        let write = move |w: &mut dyn Write| -> std::io::Result<()> {
            match self {
                History::Rows(rows) => write_rows(&rows, w),
                History::Spilled { mut file, .. } => std::io::copy(&mut file, w).map(drop),
                History::Store(snapshot) => {
                    let mut failed = None;
                    snapshot
                        .lines(|chunk| match w.write_all(&chunk) {
                            Ok(()) => true,
                            Err(e) => {
                                failed = Some(e);
                                false
                            }
                        })
                        .map_err(std::io::Error::other)?;
                    failed.map_or(Ok(()), Err)
                }
            }
        };
        Ok(StreamedSection {
            name: HISTORY_SECTION.into(),
            len,
            write: Box::new(write),
        })
    }
}

fn parse_row(line: &[u8]) -> anyhow::Result<HistoryRow> {
    serde_json::from_slice(line).context("the bundle's history is malformed")
}

fn write_rows(rows: &[HistoryRow], w: &mut dyn Write) -> std::io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *w, row)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// The length of what is written through it.
#[derive(Default)]
struct Measure {
    len: u64,
}

impl Write for Measure {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bundle on its way out: its length, then its bytes as they are written.
/// Should writing fail midway the chunks stop short, and the receiver's
/// checks refuse what came.
pub struct Outgoing {
    /// The bundle's length in bytes.
    pub len: u64,
    /// Its bytes, in order.
    pub chunks: mpsc::Receiver<Vec<u8>>,
}

/// Writes into a channel, a chunk at a time (from a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "nobody is reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl Bundle {
    /// Writes the bundle into `writer`, telling `ready` its length first.
    fn write(self, ready: impl FnOnce(u64), writer: impl Write) -> anyhow::Result<()> {
        let Bundle {
            spec,
            mut checkpoint,
            history,
            entanglement,
            components,
        } = self;
        let sections = &mut checkpoint.sections;
        sections.push((SPEC_SECTION.into(), serde_json::to_vec(&spec)?));
        if let Some(window) = &entanglement {
            sections.push((ENTANGLEMENT_SECTION.into(), window.encode()?));
        }
        if let Some((model, adapter)) = components {
            sections.push((MODEL_SECTION.into(), model));
            sections.push((ADAPTER_SECTION.into(), adapter));
        }
        let sealed = checkpoint.seal(vec![history.section()?])?;
        ready(sealed.size());
        sealed.write_to(writer)?;
        Ok(())
    }

    /// The bundle's bytes.
    pub fn to_bytes(self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.write(|_| (), &mut bytes)?;
        Ok(bytes)
    }

    /// The bundle's bytes as they are written, on a blocking thread: the
    /// length once known, then a few chunks ahead of the reader.
    pub async fn stream(self) -> anyhow::Result<Outgoing> {
        let (tx, chunks) = mpsc::channel(4);
        let (sized, len) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut sized = Some(sized);
            let writer = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let written = self.write(
                |len| {
                    if let Some(sized) = sized.take() {
                        let _ = sized.send(Ok(len));
                    }
                },
                writer,
            );
            match (written, sized) {
                (Err(e), Some(sized)) => {
                    let _ = sized.send(Err(e));
                }
                (Err(e), None) => tracing::warn!("a bundle was cut short: {e:#}"),
                _ => {}
            }
        });
        let len = len
            .await
            .map_err(|_| anyhow::anyhow!("the bundle writer stopped"))??;
        Ok(Outgoing { len, chunks })
    }

    /// Reads and checks a bundle (every checksum, the spec, the history),
    /// a large history into a temporary file.
    pub fn read(reader: impl Read) -> anyhow::Result<Self> {
        let (mut checkpoint, spilled) = Checkpoint::read_spilling(reader, |info| {
            info.name == HISTORY_SECTION && info.len > SPILL_OVER
        })?;
        let spec = checkpoint.take(SPEC_SECTION).context(
            "the bundle has no spec: it is a bare checkpoint (from `wasmtwin run`), not a twin's",
        )?;
        let spec = TwinSpec::parse(std::str::from_utf8(&spec).context("the bundle's spec")?)
            .context("the bundle's spec")?;
        let history = match (checkpoint.take(HISTORY_SECTION), spilled.into_iter().next()) {
            (_, Some((_, mut file))) => {
                // Checked whole before anything is imported.
                let mut rows = 0;
                for line in BufReader::new(&file).lines() {
                    let line = line?;
                    if !line.is_empty() {
                        parse_row(line.as_bytes())?;
                        rows += 1;
                    }
                }
                file.rewind()?;
                History::Spilled { file, rows }
            }
            (Some(lines), None) => History::Rows(
                lines
                    .split(|&b| b == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(parse_row)
                    .collect::<Result<_, _>>()?,
            ),
            (None, None) => History::Rows(Vec::new()),
        };
        let entanglement = checkpoint
            .take(ENTANGLEMENT_SECTION)
            .map(|bytes| Window::decode(&bytes))
            .transpose()
            .context("the bundle's entanglement window is malformed")?;
        let components = match (
            checkpoint.take(MODEL_SECTION),
            checkpoint.take(ADAPTER_SECTION),
        ) {
            (Some(model), Some(adapter)) => Some((model, adapter)),
            (None, None) => None,
            _ => bail!("the bundle carries only one of its two components"),
        };
        if checkpoint.twin != spec.name() {
            bail!(
                "the bundle's checkpoint is of twin `{}` but its spec names `{}`",
                checkpoint.twin,
                spec.name()
            );
        }
        Ok(Self {
            spec,
            checkpoint,
            history,
            entanglement,
            components,
        })
    }

    /// Reads and checks a bundle held in memory.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        Self::read(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelInfo;
    use crate::digest::Digest;

    fn bundle(rows: u64) -> Bundle {
        Bundle {
            spec: crate::spec::minimal(),
            checkpoint: Checkpoint {
                twin: "p".into(),
                created_ms: 1,
                model: ModelInfo {
                    name: "prime".into(),
                    version: "0.1.0".into(),
                    component: Digest::of(b"prime"),
                    state_version: 1,
                },
                sections: vec![("guest".into(), b"{}".to_vec())],
            },
            history: History::Rows(
                (1..=rows)
                    .map(|seq| HistoryRow {
                        ts_ms: 1_000 + seq,
                        seq,
                        changes: [("v".to_string(), serde_json::json!(seq))].into(),
                    })
                    .collect(),
            ),
            entanglement: None,
            components: None,
        }
    }

    fn seqs(history: History) -> Vec<u64> {
        let mut seqs = Vec::new();
        history
            .batches(1000, |rows| {
                assert!(rows.len() <= 1000);
                seqs.extend(rows.iter().map(|r| r.seq));
                Ok(())
            })
            .unwrap();
        seqs
    }

    #[test]
    fn a_small_history_is_read_into_memory() {
        let read = Bundle::from_bytes(&bundle(10).to_bytes().unwrap()).unwrap();
        assert!(matches!(read.history, History::Rows(_)));
        assert_eq!(seqs(read.history), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_large_history_goes_to_a_file_and_comes_back_whole() {
        // About 40 bytes a row: well over the spill threshold.
        let n = 2 * SPILL_OVER / 40;
        let bytes = bundle(n).to_bytes().unwrap();
        let read = Bundle::read(&bytes[..]).unwrap();
        assert!(matches!(read.history, History::Spilled { rows, .. } if rows == n));
        // Written out again from the file, it is the same bundle.
        let again = Bundle {
            checkpoint: read.checkpoint.clone(),
            spec: read.spec.clone(),
            history: read.history,
            entanglement: None,
            components: None,
        };
        let rewritten = again.to_bytes().unwrap();
        let reread = Bundle::read(&rewritten[..]).unwrap();
        assert_eq!(seqs(reread.history), (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn a_malformed_history_row_refuses_the_bundle() {
        let b = bundle(0);
        let mut checkpoint = b.checkpoint;
        checkpoint
            .sections
            .push((SPEC_SECTION.into(), serde_json::to_vec(&b.spec).unwrap()));
        checkpoint
            .sections
            .push((HISTORY_SECTION.into(), b"{\"tsMs\": 1}\n".to_vec()));
        let err = Bundle::from_bytes(&checkpoint.to_bytes().unwrap())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("history is malformed"),
            "{err:#}"
        );
    }
}
