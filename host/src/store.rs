//! The node's durable memory: twin specs, checkpoints, the journal of
//! messages applied since each twin's last checkpoint, and property
//! history, in one embedded `redb` database in the node's data directory.
//!
//! Why redb: pure Rust (no C toolchain on edge targets), one file,
//! ACID transactions with crash safety by copy-on-write B-trees, ordered
//! tuple keys for time-range scans, and actively maintained.
//!
//! All writes go through one writer thread that groups whatever is waiting
//! into one transaction and one `fsync` (group commit), then runs each
//! write's completion. Twins acknowledge their MQTT messages in those
//! completions, so an acknowledged message is on disk: after a crash a twin
//! resumes from its checkpoint plus its journal, and the broker redelivers
//! the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::runtime::Update;

/// name → spec JSON.
const SPECS: TableDefinition<&str, &str> = TableDefinition::new("specs");
/// name → checkpoint bundle.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// (name, seq) → the updates of a message applied after the checkpoint, JSON.
const JOURNAL: TableDefinition<(&str, u64), &str> = TableDefinition::new("journal");
/// (name, PT timestamp ms, seq) → the properties the message changed, JSON.
const HISTORY: TableDefinition<(&str, u64, u64), &str> = TableDefinition::new("history");
/// name → rows in HISTORY.
const HISTORY_ROWS: TableDefinition<&str, u64> = TableDefinition::new("history_rows");
/// name → the API of the node a twin moved to.
const MOVED: TableDefinition<&str, &str> = TableDefinition::new("moved");
/// name → the twin's entanglement window as its node stopped (encoded),
/// taken back when the node starts again.
const WINDOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("windows");
/// name → when its handover began, ms since the Unix epoch: the twin was
/// stopped for a move whose end this node has not recorded (its bundle may
/// run on the target).
const LEAVING: TableDefinition<&str, u64> = TableDefinition::new("leaving");
/// (name, key) → a message received on the node's shared broker session
/// for the twin and not yet applied (encoded by the node's inbox): kept
/// here before the broker's acknowledgement, removed in the transaction
/// that journals it.
const INBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inbox");

/// Called once a write is on disk (or failed).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One change to the store.
pub enum Op {
    /// Remember a twin's spec (replacing any earlier one).
    Spec { name: String, json: String },
    /// Forget everything about a twin.
    Forget { name: String },
    /// A twin is about to arrive from another node: clear what an earlier
    /// attempt left, but keep any moved marker until it has arrived.
    Arriving { name: String },
    /// A message applied: journal it and record the changes it made.
    Applied {
        name: String,
        seq: u64,
        ts_ms: u64,
        updates: Vec<Update>,
        changes: BTreeMap<String, Value>,
    },
    /// A new checkpoint; the journal up to `through_seq` is no longer needed.
    /// (Encoded by the writer thread, off the twin's update path.)
    Checkpoint {
        name: String,
        checkpoint: Arc<Checkpoint>,
        through_seq: Option<u64>,
    },
    /// Add history rows brought from another node.
    ImportHistory { name: String, rows: Vec<HistoryRow> },
    /// The twin now lives on the node at `to`; forget everything else.
    Moved { name: String, to: String },
    /// Drop history older than `before_ms` and beyond `max_rows`.
    Prune {
        name: String,
        before_ms: u64,
        max_rows: u64,
    },
    /// Keep a twin's entanglement window (encoded) as its node stops.
    Window { name: String, window: Vec<u8> },
    /// Drop every window kept: they were taken back.
    ClearWindows,
    /// A twin's handover began: until its move ends here ([`Op::Stayed`],
    /// or [`Op::Moved`]), the node does not start it again on its own.
    Leaving { name: String, since_ms: u64 },
    /// A twin's handover ended without it leaving: it runs here again.
    Stayed { name: String },
    /// A message for a twin, received on the node's shared session, kept
    /// until the twin has applied it ([`Op::Taken`]); `key` orders a
    /// twin's messages.
    Inbox {
        name: Arc<str>,
        key: u64,
        message: Vec<u8>,
    },
    /// The twin applied (or dropped) the message kept under `key`.
    Taken { name: String, key: u64 },
    /// Drop every message kept for a twin: it was deleted.
    ClearInbox { name: String },
}

/// One point of a property's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// When the PT observed it, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The PT's sequence number.
    pub seq: u64,
    /// The property's new value.
    pub value: Value,
}

/// One applied message's changes, as history keeps them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    /// When the PT produced the message, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The properties it changed, with their values.
    pub changes: BTreeMap<String, Value>,
}

/// Where a history row sits: rows are ordered by the PT's timestamp, then
/// its sequence number. Written `TS:SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryMark {
    /// The row's PT timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The row's sequence number.
    pub seq: u64,
}

impl std::fmt::Display for HistoryMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ts_ms, self.seq)
    }
}

impl std::str::FromStr for HistoryMark {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ts, seq) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not a history mark (TS:SEQ)"))?;
        let number = |part: &str| {
            part.parse::<u64>()
                .map_err(|_| format!("`{s}` is not a history mark (TS:SEQ, both whole numbers)"))
        };
        Ok(Self {
            ts_ms: number(ts)?,
            seq: number(seq)?,
        })
    }
}

impl<'de> serde::Deserialize<'de> for HistoryMark {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One twin's history rows after a mark, from one snapshot of the store:
/// read as often as needed (a bundle measures its history section, then
/// writes it), always the same rows.
pub struct HistorySnapshot {
    read: redb::ReadTransaction,
    name: String,
    after: Option<HistoryMark>,
}

impl HistorySnapshot {
    /// The rows, oldest first (for a bundle small enough to hold).
    pub fn rows(&self) -> anyhow::Result<Vec<HistoryRow>> {
        let mut rows = Vec::new();
        self.each(|mark, changes| {
            rows.push(HistoryRow {
                ts_ms: mark.ts_ms,
                seq: mark.seq,
                changes: serde_json::from_str(changes).context("a history row is malformed")?,
            });
            Ok(true)
        })?;
        Ok(rows)
    }

    /// The rows, oldest first, as JSON lines (each a [`HistoryRow`])
    /// handed to `sink` in chunks of about 64 KiB; stops early when `sink`
    /// answers false. Returns the mark of the last row handed over. Rows
    /// are never all in memory at once, so any history can be copied so.
    pub fn lines(
        &self,
        mut sink: impl FnMut(Vec<u8>) -> bool,
    ) -> anyhow::Result<Option<HistoryMark>> {
        const CHUNK: usize = 64 * 1024;
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        let mut last = None;
        let mut open = true;
        self.each(|mark, changes| {
            // The stored changes are already JSON: no parse and re-encode.
            chunk.extend_from_slice(
                format!(
                    "{{\"tsMs\":{},\"seq\":{},\"changes\":{changes}}}\n",
                    mark.ts_ms, mark.seq
                )
                .as_bytes(),
            );
            last = Some(mark);
            if chunk.len() >= CHUNK {
                open = sink(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK + 1024),
                ));
            }
            Ok(open)
        })?;
        if open && !chunk.is_empty() {
            sink(chunk);
        }
        Ok(last)
    }

    /// Calls `row` with each row, oldest first, until it answers false.
    fn each(
        &self,
        mut row: impl FnMut(HistoryMark, &str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        use std::ops::Bound;
        let Some(table) = open_read(&self.read, HISTORY)? else {
            return Ok(());
        };
        let name = self.name.as_str();
        let start = match self.after {
            Some(m) => Bound::Excluded((name, m.ts_ms, m.seq)),
            None => Bound::Included((name, 0, 0)),
        };
        for entry in table.range((start, Bound::Included((name, u64::MAX, u64::MAX))))? {
            let (key, changes) = entry?;
            let (_, ts_ms, seq) = key.value();
            if !row(HistoryMark { ts_ms, seq }, changes.value())? {
                break;
            }
        }
        Ok(())
    }
}

/// What a twin left behind: enough to resume it.
pub struct Saved {
    /// The spec, as JSON.
    pub spec: String,
    /// The last checkpoint, if one was taken.
    pub checkpoint: Option<Vec<u8>>,
    /// Messages applied after that checkpoint, in order.
    pub journal: Vec<Vec<Update>>,
}

/// Handle to the store; cheap to clone. When the last handle goes, the
/// writer finishes what is queued and the database is closed.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writes: Option<std_mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

type Write = (Vec<Op>, Option<Done>);

impl Drop for Inner {
    fn drop(&mut self) {
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Writes grouped into one transaction at most.
const GROUP_MAX: usize = 4096;

/// The most memory the database keeps of its file (redb's default is
/// 1 GiB): it keeps every page it wrote, and a node's twins write a few
/// KiB each, which grew a node of 100,000 sleeping twins by hundreds of
/// MiB. Half of it may hold a transaction's writes; the twins' state is
/// read from memory, and a restart reads the store once, through the
/// kernel's page cache.
const CACHE_BYTES: usize = 64 << 20;

impl Store {
    /// The database, for what keeps tables of its own in the node's store
    /// (the audit history of a node that runs alone).
    pub fn database(&self) -> Arc<Database> {
        self.inner.db.clone()
    }

    /// Opens (or creates) the store at `dir/wasmtwin.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join("wasmtwin.redb");
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .with_context(|| format!("opening the node's store {}", path.display()))?;
        let db = Arc::new(db);
        let (writes, queue) = std_mpsc::channel();
        let for_writer = db.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&for_writer, &queue))
            .context("starting the store's writer")?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                writes: Some(writes),
                writer: Some(writer),
            }),
        })
    }

    /// Queues `ops` to be written in one transaction; `done` runs once they
    /// are durable.
    pub fn write(&self, ops: Vec<Op>, done: Option<Done>) {
        let Some(writes) = &self.inner.writes else {
            return;
        };
        if let Err(std_mpsc::SendError((_, Some(done)))) = writes.send((ops, done)) {
            done(Err("the store is closed".into()));
        }
    }

    /// Writes `ops` and waits until they are durable (blocking the thread:
    /// from async code, use [`Store::written`]).
    pub fn write_now(&self, ops: Vec<Op>) -> anyhow::Result<()> {
        let (tx, rx) = std_mpsc::channel();
        self.write(ops, Some(Box::new(move |r| drop(tx.send(r)))));
        outcome(rx.recv().ok())
    }

    /// Queues `ops` at once (behind what was queued before, ahead of what
    /// comes after); ready once they are durable. Holds no thread while the
    /// disk syncs, and may be awaited later, the write meanwhile under way.
    pub fn written(&self, ops: Vec<Op>) -> impl Future<Output = anyhow::Result<()>> + Send + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(ops, Some(Box::new(move |r| drop(tx.send(r)))));
        async move { outcome(rx.await.ok()) }
    }

    /// Waits until every write queued before is durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.write_now(Vec::new())
    }

    /// Every twin the store knows, with what is needed to resume it.
    pub fn saved(&self) -> anyhow::Result<Vec<(String, Saved)>> {
        let read = self.inner.db.begin_read()?;
        let Some(specs) = open_read(&read, SPECS)? else {
            return Ok(Vec::new());
        };
        let checkpoints = open_read(&read, CHECKPOINTS)?;
        let journal = open_read(&read, JOURNAL)?;
        let mut saved = Vec::new();
        for entry in specs.iter()? {
            let (name, spec) = entry?;
            let name = name.value().to_string();
            let checkpoint = match &checkpoints {
                Some(t) => t.get(name.as_str())?.map(|b| b.value().to_vec()),
                None => None,
            };
            let mut messages = Vec::new();
            if let Some(t) = &journal {
                for entry in t.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))? {
                    let (_, updates) = entry?;
                    messages.push(
                        serde_json::from_str(updates.value())
                            .with_context(|| format!("twin `{name}`'s journal is malformed"))?,
                    );
                }
            }
            saved.push((
                name,
                Saved {
                    spec: spec.value().to_string(),
                    checkpoint,
                    journal: messages,
                },
            ));
        }
        Ok(saved)
    }

    /// A twin's history rows after `after` (all of them without), as they
    /// are now; reading them later sees none written since.
    pub fn history_snapshot(
        &self,
        name: &str,
        after: Option<HistoryMark>,
    ) -> anyhow::Result<HistorySnapshot> {
        Ok(HistorySnapshot {
            read: self.inner.db.begin_read()?,
            name: name.to_string(),
            after,
        })
    }

    /// The entanglement windows kept as the node last stopped, by twin.
    pub fn windows(&self) -> anyhow::Result<HashMap<String, Vec<u8>>> {
        Ok(self.by_name(WINDOWS, <[u8]>::to_vec)?.into_iter().collect())
    }

    /// The twins whose handover began and has not ended here, and when it
    /// began (ms since the Unix epoch).
    pub fn leaving(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(self.by_name(LEAVING, |since| since)?.into_iter().collect())
    }

    /// Up to `limit` messages kept for twin `name` under keys from `from`
    /// on, in order.
    pub fn inbox(
        &self,
        name: &str,
        from: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let read = self.inner.db.begin_read()?;
        let Some(table) = open_read(&read, INBOX)? else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        for entry in table.range((name, from)..=(name, u64::MAX))?.take(limit) {
            let (key, message) = entry?;
            kept.push((key.value().1, message.value().to_vec()));
        }
        Ok(kept)
    }

    /// What the inbox holds as the node starts: the largest key of any
    /// message kept (0 when none is), so that keys given after it keep each
    /// twin's messages in order across restarts; and the twins it holds
    /// messages for. One look per such twin, not per message.
    pub fn inbox_summary(&self) -> anyhow::Result<(u64, HashSet<String>)> {
        let read = self.inner.db.begin_read()?;
        let mut twins = HashSet::new();
        let Some(table) = open_read(&read, INBOX)? else {
            return Ok((0, twins));
        };
        let mut last = 0;
        let mut next = table.first()?.map(|(key, _)| key.value().0.to_string());
        while let Some(name) = next {
            let own = (name.as_str(), 0)..=(name.as_str(), u64::MAX);
            if let Some(entry) = table.range(own)?.next_back() {
                last = last.max(entry?.0.value().1);
            }
            let after = (Bound::Excluded((name.as_str(), u64::MAX)), Bound::Unbounded);
            next = match table.range::<(&str, u64)>(after)?.next() {
                Some(entry) => Some(entry?.0.value().0.to_string()),
                None => None,
            };
            twins.insert(name);
        }
        Ok((last, twins))
    }

    /// The twins that moved away, and where to.
    pub fn moved(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.by_name(MOVED, str::to_string)
    }

    /// Every row of a table keyed by twin name, its value owned by `own`.
    fn by_name<V: redb::Value + 'static, T>(
        &self,
        table: TableDefinition<&str, V>,
        own: impl Fn(V::SelfType<'_>) -> T,
    ) -> anyhow::Result<Vec<(String, T)>> {
        let read = self.inner.db.begin_read()?;
        let Some(table) = open_read(&read, table)? else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            rows.push((name.value().to_string(), own(value.value())));
        }
        Ok(rows)
    }

    /// A property's history between `from_ms` and `to_ms` (inclusive), at
    /// most `limit` points: the oldest, oldest first, or with
    /// `newest_first` the newest, newest first.
    pub fn history(
        &self,
        name: &str,
        property: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
        newest_first: bool,
    ) -> anyhow::Result<Vec<Point>> {
        let read = self.inner.db.begin_read()?;
        let Some(table) = open_read(&read, HISTORY)? else {
            return Ok(Vec::new());
        };
        let mut points = Vec::new();
        let range = table.range((name, from_ms, 0)..=(name, to_ms, u64::MAX))?;
        let rows: Box<dyn Iterator<Item = _>> = if newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for entry in rows {
            let (key, changes) = entry?;
            let (_, ts_ms, seq) = key.value();
            let mut changes: serde_json::Map<String, Value> =
                serde_json::from_str(changes.value()).context("a history row is malformed")?;
            if let Some(value) = changes.remove(property) {
                points.push(Point { ts_ms, seq, value });
                if points.len() >= limit {
                    break;
                }
            }
        }
        Ok(points)
    }
}

/// What a write's `done` was told, if it was.
fn outcome(told: Option<Result<(), String>>) -> anyhow::Result<()> {
    told.ok_or_else(|| anyhow::anyhow!("the store's writer stopped"))?
        .map_err(|e| anyhow::anyhow!(e))
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> anyhow::Result<Option<redb::ReadOnlyTable<K, V>>> {
    match read.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_loop(db: &Database, queue: &std_mpsc::Receiver<Write>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        // A group of empty writes (flushes) needs no transaction: the
        // groups before it are already committed.
        let result = if group.iter().all(|(ops, _)| ops.is_empty()) {
            Ok(())
        } else {
            commit(db, group.iter().flat_map(|(ops, _)| ops)).map_err(|e| {
                tracing::error!("the node's store could not write: {e:#}");
                format!("{e:#}")
            })
        };
        for (_, done) in group {
            if let Some(done) = done {
                done(result.clone());
            }
        }
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

/// Removes everything the store holds of twin `n` but its moved marker.
fn forget(
    n: &str,
    specs: &mut Table<&str, &str>,
    checkpoints: &mut Table<&str, &[u8]>,
    journal: &mut Table<(&str, u64), &str>,
    history: &mut Table<(&str, u64, u64), &str>,
    rows: &mut Table<&str, u64>,
    windows: &mut Table<&str, &[u8]>,
) -> anyhow::Result<()> {
    specs.remove(n)?;
    checkpoints.remove(n)?;
    rows.remove(n)?;
    windows.remove(n)?;
    journal.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)?;
    history.retain_in((n, 0, 0)..=(n, u64::MAX, u64::MAX), |_, _| false)?;
    Ok(())
}

fn commit<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> anyhow::Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut specs = tx.open_table(SPECS)?;
        let mut checkpoints = tx.open_table(CHECKPOINTS)?;
        let mut journal = tx.open_table(JOURNAL)?;
        let mut history = tx.open_table(HISTORY)?;
        let mut rows = tx.open_table(HISTORY_ROWS)?;
        let mut moved = tx.open_table(MOVED)?;
        let mut windows = tx.open_table(WINDOWS)?;
        let mut leaving = tx.open_table(LEAVING)?;
        let mut inbox = tx.open_table(INBOX)?;
        for op in ops {
            match op {
                Op::Spec { name, json } => {
                    specs.insert(name.as_str(), json.as_str())?;
                    moved.remove(name.as_str())?;
                }
                Op::Forget { name } | Op::Moved { name, .. } | Op::Arriving { name } => {
                    let n = name.as_str();
                    forget(
                        n,
                        &mut specs,
                        &mut checkpoints,
                        &mut journal,
                        &mut history,
                        &mut rows,
                        &mut windows,
                    )?;
                    leaving.remove(n)?;
                    // A moved twin leaves its new address behind.
                    match op {
                        Op::Moved { to, .. } => moved.insert(n, to.as_str())?,
                        Op::Arriving { .. } => None,
                        _ => moved.remove(n)?,
                    };
                    // What waited for a twin that moved went to its new
                    // node too, and one arriving starts on what its new
                    // node receives. A twin started anew here (replaced,
                    // restored) keeps what waits for it, as it would keep
                    // its own broker session's backlog: deleting a twin
                    // clears it ([`Op::ClearInbox`]).
                    if !matches!(op, Op::Forget { .. }) {
                        inbox.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)?;
                    }
                }
                Op::ImportHistory {
                    name,
                    rows: imported,
                } => {
                    let n = name.as_str();
                    let mut count = rows.get(n)?.map(|c| c.value()).unwrap_or(0);
                    for row in imported {
                        let json = serde_json::to_string(&row.changes)?;
                        if history
                            .insert((n, row.ts_ms, row.seq), json.as_str())?
                            .is_none()
                        {
                            count += 1;
                        }
                    }
                    rows.insert(n, count)?;
                }
                Op::Applied {
                    name,
                    seq,
                    ts_ms,
                    updates,
                    changes,
                } => {
                    let n = name.as_str();
                    journal.insert((n, *seq), serde_json::to_string(updates)?.as_str())?;
                    if !changes.is_empty() {
                        let fresh = history
                            .insert((n, *ts_ms, *seq), serde_json::to_string(changes)?.as_str())?
                            .is_none();
                        if fresh {
                            let count = rows.get(n)?.map(|c| c.value()).unwrap_or(0);
                            rows.insert(n, count + 1)?;
                        }
                    }
                }
                Op::Checkpoint {
                    name,
                    checkpoint,
                    through_seq,
                } => {
                    let n = name.as_str();
                    checkpoints.insert(n, checkpoint.to_bytes()?.as_slice())?;
                    if let Some(through) = *through_seq {
                        journal.retain_in((n, 0)..=(n, through), |_, _| false)?;
                    }
                }
                Op::Prune {
                    name,
                    before_ms,
                    max_rows,
                } => {
                    let n = name.as_str();
                    let count = rows.get(n)?.map(|c| c.value()).unwrap_or(0);
                    let mut excess = count.saturating_sub(*max_rows);
                    // Oldest first, stopping at the first row to keep: rows
                    // are keyed by timestamp, so this reads only what goes.
                    let mut gone = Vec::new();
                    for entry in history.range((n, 0, 0)..=(n, u64::MAX, u64::MAX))? {
                        let (key, _) = entry?;
                        let (_, ts, seq) = key.value();
                        if excess == 0 && ts >= *before_ms {
                            break;
                        }
                        excess = excess.saturating_sub(1);
                        gone.push((ts, seq));
                    }
                    for (ts, seq) in &gone {
                        history.remove((n, *ts, *seq))?;
                    }
                    rows.insert(n, count.saturating_sub(gone.len() as u64))?;
                }
                Op::Window { name, window } => {
                    windows.insert(name.as_str(), window.as_slice())?;
                }
                Op::ClearWindows => {
                    windows.retain(|_, _| false)?;
                }
                Op::Leaving { name, since_ms } => {
                    leaving.insert(name.as_str(), since_ms)?;
                }
                Op::Stayed { name } => {
                    leaving.remove(name.as_str())?;
                }
                Op::Inbox { name, key, message } => {
                    inbox.insert((&**name, *key), message.as_slice())?;
                }
                Op::Taken { name, key } => {
                    inbox.remove((name.as_str(), *key))?;
                }
                Op::ClearInbox { name } => {
                    let n = name.as_str();
                    inbox.retain_in((n, 0)..=(n, u64::MAX), |_, _| false)?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelInfo;
    use crate::digest::Digest;
    use serde_json::json;

    fn sample_checkpoint() -> Checkpoint {
        Checkpoint {
            twin: "a".into(),
            created_ms: 1,
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
                component: Digest::of(b"m"),
                state_version: 1,
            },
            sections: vec![("guest".into(), b"{}".to_vec())],
        }
    }

    fn applied(name: &str, seq: u64, ts_ms: u64, value: f64) -> Op {
        Op::Applied {
            name: name.into(),
            seq,
            ts_ms,
            updates: vec![Update {
                seq,
                ts_ms,
                property: "t".into(),
                value: json!(value),
            }],
            changes: [("t".to_string(), json!(value))].into(),
        }
    }

    #[test]
    fn specs_checkpoints_and_journal_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_now(vec![Op::Spec {
                    name: "a".into(),
                    json: "{}".into(),
                }])
                .unwrap();
            let ops = (1..=5)
                .map(|s| applied("a", s, 1000 + s, s as f64))
                .collect();
            store.write_now(ops).unwrap();
            store
                .write_now(vec![Op::Checkpoint {
                    name: "a".into(),
                    checkpoint: Arc::new(sample_checkpoint()),
                    through_seq: Some(3),
                }])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let saved = store.saved().unwrap();
        assert_eq!(saved.len(), 1);
        let (name, a) = &saved[0];
        assert_eq!(name, "a");
        let checkpoint = Checkpoint::read_from(a.checkpoint.as_deref().unwrap()).unwrap();
        assert_eq!(checkpoint, sample_checkpoint());
        let seqs: Vec<u64> = a.journal.iter().map(|m| m[0].seq).collect();
        assert_eq!(seqs, [4, 5], "only what came after the checkpoint");
    }

    #[test]
    fn the_inbox_summary_names_each_twin_once_and_the_largest_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.inbox_summary().unwrap(), (0, HashSet::new()));
        let kept = |name: &str, key| Op::Inbox {
            name: name.into(),
            key,
            message: vec![1, 2, 3],
        };
        // A name that prefixes another, and the largest key not the last row.
        let ops = vec![
            kept("a", 3),
            kept("a", 9),
            kept("a\0", 1),
            kept("ab", 2),
            kept("b", 5),
            kept("b", 7),
        ];
        store.write_now(ops).unwrap();
        store
            .write_now(vec![Op::ClearInbox { name: "b".into() }])
            .unwrap();
        let twins = ["a", "a\0", "ab"].map(String::from).into();
        assert_eq!(store.inbox_summary().unwrap(), (9, twins));
    }

    #[test]
    fn history_is_ranged_filtered_and_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = (1..=10)
            .map(|s| applied("a", s, 1000 * s, s as f64))
            .collect();
        store.write_now(ops).unwrap();
        store.write_now(vec![applied("b", 1, 5000, 99.0)]).unwrap();
        let points = store.history("a", "t", 3000, 5000, 100, false).unwrap();
        let seqs: Vec<u64> = points.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(points[0].value, json!(3.0));
        assert!(
            store
                .history("a", "other", 0, u64::MAX, 100, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .history("a", "t", 0, u64::MAX, 2, false)
                .unwrap()
                .len(),
            2
        );
        let newest = store.history("a", "t", 0, u64::MAX, 2, true).unwrap();
        let oldest_first = store.history("a", "t", 0, u64::MAX, 100, false).unwrap();
        assert_eq!(
            newest.iter().map(|p| p.seq).collect::<Vec<_>>(),
            oldest_first
                .iter()
                .rev()
                .take(2)
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            "the newest points, newest first"
        );

        store
            .write_now(vec![Op::Prune {
                name: "a".into(),
                before_ms: 2500,
                max_rows: 6,
            }])
            .unwrap();
        let left: Vec<u64> = store
            .history("a", "t", 0, u64::MAX, 100, false)
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect();
        assert_eq!(left, [5, 6, 7, 8, 9, 10]);
        assert_eq!(
            store
                .history("b", "t", 0, u64::MAX, 100, false)
                .unwrap()
                .len(),
            1
        );

        store
            .write_now(vec![Op::Forget { name: "a".into() }])
            .unwrap();
        assert!(
            store
                .history("a", "t", 0, u64::MAX, 100, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .history("b", "t", 0, u64::MAX, 100, false)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn windows_are_kept_until_taken_back_or_their_twin_goes() {
        let dir = tempfile::tempdir().unwrap();
        let window = |name: &str, bytes: &[u8]| Op::Window {
            name: name.into(),
            window: bytes.to_vec(),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_now(vec![
                    window("a", b"1"),
                    window("b", b"2"),
                    window("c", b"3"),
                ])
                .unwrap();
            store
                .write_now(vec![Op::Forget { name: "b".into() }])
                .unwrap();
            store
                .write_now(vec![Op::Moved {
                    name: "c".into(),
                    to: "http://elsewhere".into(),
                }])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let kept = store.windows().unwrap();
        assert_eq!(kept, HashMap::from([("a".to_string(), b"1".to_vec())]));
        store.write_now(vec![Op::ClearWindows]).unwrap();
        assert!(store.windows().unwrap().is_empty());
    }

    #[test]
    fn a_handover_is_remembered_until_its_move_ends() {
        let dir = tempfile::tempdir().unwrap();
        let leaving = |name: &str| Op::Leaving {
            name: name.into(),
            since_ms: 7,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_now(vec![leaving("a"), leaving("b"), leaving("c"), leaving("d")])
                .unwrap();
            store
                .write_now(vec![
                    Op::Stayed { name: "b".into() },
                    Op::Forget { name: "c".into() },
                    Op::Moved {
                        name: "d".into(),
                        to: "http://elsewhere".into(),
                    },
                ])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.leaving().unwrap(),
            HashMap::from([("a".to_string(), 7)])
        );
    }
}
