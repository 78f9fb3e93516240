//! The control plane's tamper-evident event history: an append-only,
//! hash-chained, periodically signed record of what it observed, decided
//! and did, and of every management call.
//!
//! # What is stored
//! Each [`Record`] sits in the redb table `events` (key: its `seq`, value:
//! its JSON, UTF-8). Its JSON has exactly these members, every one always
//! present (absent options are `null`):
//! `seq` (from 1), `at` (RFC 3339 UTC, milliseconds), `kind`, `twin`,
//! `node`, `actor`, `summary`, `data`, `prev` and `hash`.
//!
//! # The chain
//! `prev` is the `hash` of the record before (64 zeros for record 1), and
//! `hash` is the lowercase hex SHA-256 of the record's *canonical
//! encoding*: the record's JSON object **without** its `hash` member,
//! written
//! - with no whitespace at all;
//! - with the members of every object (the record's and those nested in
//!   `data`) sorted by key, comparing keys as UTF-8 bytes (= code points);
//! - strings escaped as serde_json escapes them: `\"`, `\\`, `\b`, `\f`,
//!   `\n`, `\r`, `\t`, other control characters as `\u00xx` (lowercase
//!   hex), everything else (including non-ASCII) as its UTF-8 bytes;
//! - integers in decimal; non-integer numbers in serde_json's shortest
//!   round-trip form (records the control plane writes hold integers).
//!
//! For records without fractional numbers this is byte for byte Python's
//! `json.dumps(record, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False).encode()`, so an auditor can check a history
//! exported as JSON lines with:
//! ```text
//! import hashlib, json
//! prev = "0" * 64
//! for line in open("events.jsonl"):
//!     r = json.loads(line); h = r.pop("hash")
//!     assert r["prev"] == prev and hashlib.sha256(json.dumps(r, sort_keys=True,
//!         separators=(",", ":"), ensure_ascii=False).encode()).hexdigest() == h
//!     prev = h
//! ```
//! The encoding is written here by hand rather than left to serde_json's
//! map order, which a `preserve_order` feature turned on anywhere in the
//! build would silently change.
//!
//! # Seals
//! Every `seal_every` records, and whenever [`History::seal_now`] is called
//! (the control plane does on a timer and at shutdown), the history appends
//! a record of kind `seal` whose `data` is
//! `{"head": <hash of the record before it>, "keyId": <the signing key's
//! id, as `wasmtwin keygen` prints it>, "signature": <hex Ed25519
//! signature over the 32 bytes of the head hash (not its hex)>}`.
//! A seal is itself chained, so it also covers the records before it.
//!
//! # What verification catches, and what it cannot
//! An edited record (its hash no longer matches, or its hash was recomputed
//! and the next record no longer links to it), a removed or reordered one,
//! and a forged seal are each named by sequence number. Records after the
//! last seal are reported as unsealed: whoever can write the database could
//! rewrite them consistently. Cutting records off the end leaves a valid
//! shorter chain; only a head seen elsewhere (a webhook receiver, an
//! earlier verification, [`History::verify`]'s in-memory head) reveals it,
//! which is what [`verify_db`]'s `expect` is for.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::signing::KeyId;

/// seq → the record's JSON.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records a live follower may fall behind by before it misses some (it
/// then reads them back with [`History::records`]).
const FOLLOW_BUFFER: usize = 1024;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// Something the control plane saw (a node's report, a twin's
    /// entanglement).
    Observation,
    /// What it decided to do, and why.
    Decision,
    /// What it did, and how that went.
    Action,
    /// A notification it sent.
    Notification,
    /// A management call (apply, delete, migrate…) and who made it.
    Management,
    /// A finding of the security agent.
    Finding,
    /// A signature over the chain so far.
    Seal,
}

impl Kind {
    /// Its name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Observation => "observation",
            Kind::Decision => "decision",
            Kind::Action => "action",
            Kind::Notification => "notification",
            Kind::Management => "management",
            Kind::Finding => "finding",
            Kind::Seal => "seal",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of the history, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Its position, from 1, without gaps.
    pub seq: u64,
    /// When it was appended: RFC 3339, UTC, milliseconds.
    pub at: String,
    /// What it is about.
    pub kind: Kind,
    /// The twin it concerns.
    pub twin: Option<String>,
    /// The node it concerns.
    pub node: Option<String>,
    /// Who made the management call.
    pub actor: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The details: inputs, reason, outcome.
    pub data: Value,
    /// The hash of the record before ([`GENESIS`] for the first).
    pub prev: String,
    /// Hex SHA-256 of its canonical encoding (see the module doc).
    pub hash: String,
}

impl Record {
    /// The hash its contents call for (whatever `hash` says).
    pub fn compute_hash(&self) -> String {
        match serde_json::to_value(self) {
            Ok(value) => hash_of(&value),
            // A Record is plain data with string keys: it always converts.
            Err(_) => String::new(),
        }
    }
}

/// What to append: a record without the parts the history fills in.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// What it is about (not [`Kind::Seal`]: the history makes those).
    pub kind: Kind,
    /// The twin it concerns.
    pub twin: Option<String>,
    /// The node it concerns.
    pub node: Option<String>,
    /// Who made the management call.
    pub actor: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The details.
    pub data: Value,
}

impl Entry {
    /// An entry of `kind` saying `summary`, with no details yet.
    pub fn new(kind: Kind, summary: impl Into<String>) -> Self {
        Self {
            kind,
            twin: None,
            node: None,
            actor: None,
            summary: summary.into(),
            data: Value::Null,
        }
    }

    /// About twin `name`.
    pub fn twin(mut self, name: impl Into<String>) -> Self {
        self.twin = Some(name.into());
        self
    }

    /// About node `name`.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// Made by `who`.
    pub fn actor(mut self, who: impl Into<String>) -> Self {
        self.actor = Some(who.into());
        self
    }

    /// With these details.
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// The end of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last record's seq (0 when empty).
    pub seq: u64,
    /// Its hash ([`GENESIS`] when empty).
    pub hash: String,
}

struct State {
    head: Head,
    /// Records appended since the last seal.
    since_seal: usize,
}

/// The history, over the control plane's database.
pub struct History {
    db: Arc<Database>,
    signer: SigningKey,
    key_id: KeyId,
    seal_every: usize,
    /// Held across each append's transaction: appends are serialized, and
    /// followers receive records in order.
    state: Mutex<State>,
    follow: broadcast::Sender<Record>,
}

impl History {
    /// Opens the history in `db` (creating its table), continuing the chain
    /// where it ends. Seals with `signer` every `seal_every` records (never
    /// by count with 0).
    pub fn open(db: Arc<Database>, signer: SigningKey, seal_every: usize) -> anyhow::Result<Self> {
        let tx = db.begin_write()?;
        let (head, since_seal) = {
            let table = tx.open_table(EVENTS)?;
            let mut head = Head {
                seq: 0,
                hash: GENESIS.to_string(),
            };
            let mut since_seal = 0;
            // Walk back to the last seal to know how far the next one is.
            for entry in table.iter()?.rev() {
                let (seq, bytes) = entry?;
                let record: Record = serde_json::from_slice(bytes.value())
                    .with_context(|| format!("event record {} is malformed", seq.value()))?;
                if head.seq == 0 {
                    head = Head {
                        seq: record.seq,
                        hash: record.hash.clone(),
                    };
                }
                if record.kind == Kind::Seal {
                    break;
                }
                since_seal += 1;
            }
            (head, since_seal)
        };
        tx.commit()?;
        let key_id = KeyId::of(&signer.verifying_key());
        Ok(Self {
            db,
            signer,
            key_id,
            seal_every,
            state: Mutex::new(State { head, since_seal }),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
        })
    }

    /// Appends `entry`; the record is on disk when this returns. Appends a
    /// seal after it, in the same transaction, when one is due. Blocks on
    /// the disk: call it from a blocking context.
    pub fn append(&self, entry: Entry) -> anyhow::Result<Record> {
        anyhow::ensure!(
            entry.kind != Kind::Seal,
            "seal records are made by the history itself"
        );
        let mut state = self.lock();
        let record = chain(&state.head, entry);
        let seal = (self.seal_every > 0 && state.since_seal + 1 >= self.seal_every).then(|| {
            self.seal_after(&Head {
                seq: record.seq,
                hash: record.hash.clone(),
            })
        });
        let mut written = vec![record.clone()];
        written.extend(seal);
        self.write(&written)?;
        state.since_seal = if written.len() > 1 {
            0
        } else {
            state.since_seal + 1
        };
        self.advance(&mut state, written);
        Ok(record)
    }

    /// Seals the chain now, unless it is empty or already ends with a seal.
    pub fn seal_now(&self) -> anyhow::Result<Option<Record>> {
        let mut state = self.lock();
        if state.head.seq == 0 || state.since_seal == 0 {
            return Ok(None);
        }
        let seal = self.seal_after(&state.head);
        self.write(std::slice::from_ref(&seal))?;
        state.since_seal = 0;
        self.advance(&mut state, vec![seal.clone()]);
        Ok(Some(seal))
    }

    /// Records after `after_seq`, oldest first, at most `limit`; with
    /// `twin`, only those about that twin (which leaves out seals).
    pub fn records(
        &self,
        after_seq: u64,
        twin: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Record>> {
        let read = self.db.begin_read()?;
        let table = match read.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        for entry in table.range(after_seq.saturating_add(1)..)? {
            let (seq, bytes) = entry?;
            let record: Record = serde_json::from_slice(bytes.value())
                .with_context(|| format!("event record {} is malformed", seq.value()))?;
            if twin.is_none_or(|t| record.twin.as_deref() == Some(t)) {
                records.push(record);
                if records.len() >= limit {
                    break;
                }
            }
        }
        Ok(records)
    }

    /// Every record appended from now on, in order. A follower that falls
    /// more than 1024 records behind gets `Lagged` and reads the gap back
    /// with [`History::records`].
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.follow.subscribe()
    }

    /// The end of the chain.
    pub fn head(&self) -> Head {
        self.lock().head.clone()
    }

    /// The key seals are checked against.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signer.verifying_key()
    }

    /// Verifies the stored chain against this history's key, expecting it
    /// to reach the head this process appended (so a cut-off end shows).
    pub fn verify(&self) -> anyhow::Result<Result<Verified, Tamper>> {
        let head = self.head();
        verify_db(&self.db, &self.verifying_key(), Some(&head))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it left the head as it was before the
        // failed append (it only advances after a commit): still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seal record to follow `head`.
    fn seal_after(&self, head: &Head) -> Record {
        let bytes: [u8; 32] = hex::decode(&head.hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            // Hashes of records this process chained are always 32 bytes;
            // a malformed head read back from disk gets sealed as zeros,
            // which verification then reports.
            .unwrap_or([0; 32]);
        let signature = self.signer.sign(&bytes);
        chain(
            head,
            Entry::new(Kind::Seal, format!("sealed records through {}", head.seq)).data(
                serde_json::json!({
                    "head": head.hash,
                    "keyId": self.key_id.to_string(),
                    "signature": hex::encode(signature.to_bytes()),
                }),
            ),
        )
    }

    /// Writes `records` in one durable transaction.
    fn write(&self, records: &[Record]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut table = tx.open_table(EVENTS)?;
            for record in records {
                let json = serde_json::to_vec(record)?;
                table.insert(record.seq, json.as_slice())?;
            }
        }
        tx.commit().context("writing the event history")?;
        Ok(())
    }

    fn advance(&self, state: &mut State, written: Vec<Record>) {
        for record in written {
            state.head = Head {
                seq: record.seq,
                hash: record.hash.clone(),
            };
            // No follower is not an error.
            let _ = self.follow.send(record);
        }
    }
}

/// The record that follows `head` with `entry`'s contents, hashed.
fn chain(head: &Head, entry: Entry) -> Record {
    let mut record = Record {
        seq: head.seq + 1,
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        kind: entry.kind,
        twin: entry.twin,
        node: entry.node,
        actor: entry.actor,
        summary: entry.summary,
        data: entry.data,
        prev: head.hash.clone(),
        hash: String::new(),
    };
    record.hash = record.compute_hash();
    record
}

/// The hash of a record's JSON object: of its canonical encoding without
/// its `hash` member.
fn hash_of(record: &Value) -> String {
    let mut bytes = Vec::with_capacity(512);
    match record {
        Value::Object(members) => {
            let without: serde_json::Map<String, Value> = members
                .iter()
                .filter(|(k, _)| k.as_str() != "hash")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            canonical(&Value::Object(without), &mut bytes);
        }
        other => canonical(other, &mut bytes),
    }
    hex::encode(Sha256::digest(&bytes))
}

/// Writes `value` in the canonical encoding of the module doc.
pub fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        // Null, booleans and numbers print alike in any order.
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping, which the module doc describes.
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => unreachable!("a str always serializes"),
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked (seals included).
    pub records: u64,
    /// Seals among them, all with valid signatures.
    pub seals: u64,
    /// Records after the last seal: linked, but signed by no one yet.
    pub unsealed_tail: u64,
    /// The end of the chain.
    pub head: Head,
}

/// The first sign of tampering: which record, and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// The record it concerns (for removals, the first one missing).
    pub seq: u64,
    /// What happened to it.
    pub reason: Reason,
}

/// What was done to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its hash does not match its contents.
    Edited,
    /// Its hash matches its contents, but the next record links to another
    /// hash: it was edited and its hash recomputed.
    Rehashed {
        /// The record that links elsewhere.
        next: u64,
    },
    /// It and the records through `through` are missing.
    Removed {
        /// The last missing one.
        through: u64,
    },
    /// Its place holds record `found`.
    Reordered {
        /// The record in its place.
        found: u64,
    },
    /// The history ends before it, at `last`, though the chain was known to
    /// reach `expected`.
    Truncated {
        /// The last record present (0 if none).
        last: u64,
        /// The last record known to exist.
        expected: u64,
    },
    /// It is a seal whose signature or head does not hold.
    ForgedSeal(String),
    /// It cannot be read as a record.
    Malformed(String),
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.reason {
            Reason::Edited => write!(
                f,
                "record {seq} was edited: its hash does not match its contents"
            ),
            Reason::Rehashed { next } => write!(
                f,
                "record {seq} was edited: its hash was recomputed, and record {next} links to a different one"
            ),
            Reason::Removed { through } if *through == seq => {
                write!(
                    f,
                    "record {seq} was removed: the chain skips from {} to {}",
                    seq - 1,
                    seq + 1
                )
            }
            Reason::Removed { through } => write!(
                f,
                "records {seq} to {through} were removed: the chain skips from {} to {}",
                seq - 1,
                through + 1
            ),
            Reason::Reordered { found } => write!(
                f,
                "record {seq} was reordered: record {found} stands in its place"
            ),
            Reason::Truncated { last, expected } => write!(
                f,
                "record {seq} was removed: the history ends at record {last}, but record {expected} was known to exist"
            ),
            Reason::ForgedSeal(why) => write!(f, "record {seq} is a forged seal: {why}"),
            Reason::Malformed(why) => write!(f, "record {seq} is malformed: {why}"),
        }
    }
}

impl std::error::Error for Tamper {}

/// Checks a chain one record at a time.
struct Checker<'k> {
    key: &'k VerifyingKey,
    key_id: String,
    head: Head,
    records: u64,
    seals: u64,
    since_seal: u64,
}

impl<'k> Checker<'k> {
    fn new(key: &'k VerifyingKey) -> Self {
        Self {
            key,
            key_id: KeyId::of(key).to_string(),
            head: Head {
                seq: 0,
                hash: GENESIS.to_string(),
            },
            records: 0,
            seals: 0,
            since_seal: 0,
        }
    }

    /// Checks `record` (its JSON, `value`), found at position `at`.
    fn check(&mut self, at: u64, value: &Value) -> Result<(), Tamper> {
        let tamper = |seq, reason| Err(Tamper { seq, reason });
        let stated = value
            .get("hash")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if hash_of(value) != stated {
            return tamper(at, Reason::Edited);
        }
        let record: Record = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => return tamper(at, Reason::Malformed(e.to_string())),
        };
        if record.seq != at {
            return tamper(at, Reason::Reordered { found: record.seq });
        }
        let expected = self.head.seq + 1;
        if at > expected {
            return tamper(expected, Reason::Removed { through: at - 1 });
        }
        if at < expected {
            // Only from a list: a record out of order or twice.
            return tamper(expected, Reason::Reordered { found: at });
        }
        if record.prev != self.head.hash {
            // Both hashes match their contents, so the record before was
            // rewritten wholesale (or this one was, with a made-up link).
            return if self.head.seq == 0 {
                tamper(at, Reason::Edited)
            } else {
                tamper(self.head.seq, Reason::Rehashed { next: at })
            };
        }
        if record.kind == Kind::Seal {
            self.check_seal(&record)?;
            self.seals += 1;
            self.since_seal = 0;
        } else {
            self.since_seal += 1;
        }
        self.records += 1;
        self.head = Head {
            seq: record.seq,
            hash: record.hash,
        };
        Ok(())
    }

    fn check_seal(&self, seal: &Record) -> Result<(), Tamper> {
        let forged = |why: String| {
            Err(Tamper {
                seq: seal.seq,
                reason: Reason::ForgedSeal(why),
            })
        };
        let field = |name| seal.data.get(name).and_then(Value::as_str);
        let (Some(head), Some(key_id), Some(signature)) =
            (field("head"), field("keyId"), field("signature"))
        else {
            return forged("it lacks its head, keyId or signature".into());
        };
        if head != seal.prev {
            return forged(format!(
                "it signs head {head}, not the record before it ({})",
                seal.prev
            ));
        }
        if key_id != self.key_id {
            return forged(format!(
                "it names key {key_id}, not the key it is checked against ({})",
                self.key_id
            ));
        }
        let Some(head) = hex::decode(head).ok().filter(|h| h.len() == 32) else {
            return forged("its head is not a SHA-256 in hex".into());
        };
        let Some(signature) = hex::decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
        else {
            return forged("its signature is not 64 bytes in hex".into());
        };
        if self.key.verify(&head, &signature).is_err() {
            return forged(format!("its signature does not verify with key {key_id}"));
        }
        Ok(())
    }

    fn finish(self, expect: Option<&Head>) -> Result<Verified, Tamper> {
        if let Some(expect) = expect {
            if self.head.seq < expect.seq {
                return Err(Tamper {
                    seq: self.head.seq + 1,
                    reason: Reason::Truncated {
                        last: self.head.seq,
                        expected: expect.seq,
                    },
                });
            }
            // Past the expected head the chain may have grown; at it, it
            // must be the same.
            if self.head.seq == expect.seq && self.head.hash != expect.hash {
                return Err(Tamper {
                    seq: self.head.seq,
                    reason: Reason::Edited,
                });
            }
        }
        Ok(Verified {
            records: self.records,
            seals: self.seals,
            unsealed_tail: self.since_seal,
            head: self.head,
        })
    }
}

/// Verifies the history stored in `db` against `key`. With `expect` (a
/// head seen before), a history ending before it is reported truncated.
/// The outer error is the database failing to read; the inner one is
/// tampering.
pub fn verify_db(
    db: &Database,
    key: &VerifyingKey,
    expect: Option<&Head>,
) -> anyhow::Result<Result<Verified, Tamper>> {
    let read = db.begin_read()?;
    let mut checker = Checker::new(key);
    let table = match read.open_table(EVENTS) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(table) = table {
        for entry in table.iter()? {
            let (seq, bytes) = entry?;
            let seq = seq.value();
            let value: Value = match serde_json::from_slice(bytes.value()) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Err(Tamper {
                        seq,
                        reason: Reason::Malformed(e.to_string()),
                    }));
                }
            };
            if let Err(tamper) = checker.check(seq, &value) {
                return Ok(Err(tamper));
            }
        }
    }
    Ok(checker.finish(expect))
}

/// Verifies records in the order given (an export, a follower's copy)
/// against `key`; see [`verify_db`] for `expect`.
pub fn verify_records(
    records: impl IntoIterator<Item = Record>,
    key: &VerifyingKey,
    expect: Option<&Head>,
) -> Result<Verified, Tamper> {
    let mut checker = Checker::new(key);
    let mut records = records.into_iter().peekable();
    while let Some(record) = records.next() {
        let expected = checker.head.seq + 1;
        // Without table keys, a record's place is the one it claims, unless
        // it jumps ahead and the next one falls in the gap: then the two
        // were swapped rather than records removed.
        let at = match records.peek() {
            Some(next) if record.seq > expected && next.seq < record.seq => expected,
            _ => record.seq,
        };
        let value = serde_json::to_value(&record).map_err(|e| Tamper {
            seq: record.seq,
            reason: Reason::Malformed(e.to_string()),
        })?;
        checker.check(at, &value)?;
    }
    checker.finish(expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: Arc<Database>,
        key: SigningKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = Arc::new(Database::create(dir.path().join("control.redb")).expect("a db"));
        Fixture {
            _dir: dir,
            db,
            key: SigningKey::from_bytes(&[7; 32]),
        }
    }

    /// A history of `n` observations, sealed every `every`.
    fn filled(f: &Fixture, n: usize, every: usize) -> History {
        let history = History::open(f.db.clone(), f.key.clone(), every).expect("open");
        for i in 0..n {
            history
                .append(
                    Entry::new(Kind::Observation, format!("update {i}"))
                        .twin(if i % 2 == 0 { "pump" } else { "valve" })
                        .data(serde_json::json!({ "i": i, "nested": { "z": 1, "a": [1, "x"] } })),
                )
                .expect("append");
        }
        history
    }

    fn raw(f: &Fixture, seq: u64) -> Value {
        let read = f.db.begin_read().expect("read");
        let table = read.open_table(EVENTS).expect("table");
        let bytes = table.get(seq).expect("get").expect("present");
        serde_json::from_slice(bytes.value()).expect("json")
    }

    fn put(f: &Fixture, seq: u64, value: &Value) {
        let tx = f.db.begin_write().expect("write");
        {
            let mut table = tx.open_table(EVENTS).expect("table");
            let bytes = serde_json::to_vec(value).expect("json");
            table.insert(seq, bytes.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }

    fn remove(f: &Fixture, seqs: impl IntoIterator<Item = u64>) {
        let tx = f.db.begin_write().expect("write");
        {
            let mut table = tx.open_table(EVENTS).expect("table");
            for seq in seqs {
                table.remove(seq).expect("remove");
            }
        }
        tx.commit().expect("commit");
    }

    fn check(f: &Fixture, expect: Option<&Head>) -> Result<Verified, Tamper> {
        verify_db(&f.db, &f.key.verifying_key(), expect).expect("readable")
    }

    /// Measures are floats: the hash a record was written with must be the
    /// one it verifies with after a trip through its stored JSON. Without
    /// serde_json's `float_roundtrip`, parsing is off by one unit in the
    /// last place for some values, and an honest history failed to verify.
    #[test]
    fn records_full_of_floats_verify_after_their_trip_through_json() {
        let f = fixture();
        let history = History::open(f.db.clone(), f.key.clone(), 0).expect("open");
        for i in 1..200u32 {
            let floats: Vec<f64> = (1..50u32)
                .map(|j| f64::from(i * 7919 + j * 104_729) / f64::from(j * 31 + 7) * 1e-3)
                .collect();
            history
                .append(Entry::new(Kind::Observation, "floats").data(serde_json::json!(floats)))
                .expect("append");
        }
        let verified = check(&f, None).expect("an honest history verifies");
        assert_eq!(verified.records, 199);
    }

    #[test]
    fn a_clean_history_verifies_with_its_seals_and_unsealed_tail() {
        let f = fixture();
        // 10 entries, a seal after every 4: seals at 5 and 10, then 2 more.
        let history = filled(&f, 10, 4);
        let verified = history.verify().expect("readable").expect("clean");
        assert_eq!(verified.records, 12);
        assert_eq!(verified.seals, 2);
        assert_eq!(verified.unsealed_tail, 2);
        assert_eq!(raw(&f, 5)["kind"], "seal");
        assert_eq!(raw(&f, 1)["prev"], GENESIS);
        assert_eq!(raw(&f, 2)["prev"], raw(&f, 1)["hash"]);
        // A seal now covers the tail; a second one has nothing to add.
        let seal = history.seal_now().expect("seal").expect("a seal");
        assert_eq!(seal.seq, 13);
        assert_eq!(seal.data["head"], raw(&f, 12)["hash"]);
        assert!(history.seal_now().expect("seal").is_none());
        let verified = history.verify().expect("readable").expect("clean");
        assert_eq!((verified.seals, verified.unsealed_tail), (3, 0));
        // The same records, as a list, verify alike.
        let all = history.records(0, None, usize::MAX).expect("records");
        let listed = verify_records(all, &f.key.verifying_key(), None).expect("clean");
        assert_eq!(listed, verified);
    }

    #[test]
    fn the_hash_is_sha256_of_the_sorted_compact_json_without_hash() {
        let f = fixture();
        let history = filled(&f, 1, 0);
        let record = raw(&f, 1);
        // Written out independently of the code under test.
        let expected_text = format!(
            concat!(
                r#"{{"actor":null,"at":"{}","data":{{"i":0,"nested":{{"a":[1,"x"],"z":1}}}},"#,
                r#""kind":"observation","node":null,"prev":"{}","seq":1,"summary":"update 0","twin":"pump"}}"#
            ),
            record["at"].as_str().expect("at"),
            GENESIS
        );
        assert_eq!(
            record["hash"].as_str().expect("hash"),
            hex::encode(Sha256::digest(expected_text.as_bytes()))
        );
        let at = record["at"].as_str().expect("at");
        assert!(at.ends_with('Z') && at.len() == "2024-01-01T00:00:00.000Z".len());
        drop(history);
    }

    #[test]
    fn the_hash_matches_pythons_json_dumps_with_sorted_keys() {
        // The hash Python printed for this record with
        // json.dumps(r, sort_keys=True, separators=(",", ":"),
        // ensure_ascii=False): escapes, non-ASCII, nesting, a u64.
        let record = Record {
            seq: 3,
            at: "2025-01-01T00:00:00.000Z".into(),
            kind: Kind::Management,
            twin: Some("pump-\u{fc}".into()),
            node: None,
            actor: Some("ops@example".into()),
            summary: "\u{fc}n\u{ef}code \u{2028} line".into(),
            data: serde_json::json!({
                "s": "\u{e9}\n\t\u{1}\u{7f}\"\\/",
                "n": -5,
                "b": true,
                "arr": [null, { "y": 1, "x": 2 }],
                "Z": 0,
                "a": u64::MAX,
            }),
            prev: "ab".repeat(32),
            hash: String::new(),
        };
        assert_eq!(
            record.compute_hash(),
            "c6e70c7756b2998228991afc5fc06ecdaf1ae7f7e072a994b49b15580784cce9"
        );
    }

    #[test]
    fn reopening_continues_the_chain_and_the_seal_count() {
        let f = fixture();
        let history = filled(&f, 3, 4);
        let head = history.head();
        drop(history);
        let history = History::open(f.db.clone(), f.key.clone(), 4).expect("reopen");
        assert_eq!(history.head(), head);
        let next = history
            .append(Entry::new(Kind::Management, "apply pump").actor("ops"))
            .expect("append");
        assert_eq!((next.seq, next.prev.as_str()), (4, head.hash.as_str()));
        // The 4th record since the last seal brings a seal.
        assert_eq!(raw(&f, 5)["kind"], "seal");
        history.verify().expect("readable").expect("clean");
    }

    #[test]
    fn an_edited_field_names_its_record() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        let mut record = raw(&f, 7);
        record["summary"] = "nothing happened".into();
        put(&f, 7, &record);
        let tamper = history.verify().expect("readable").expect_err("tampered");
        assert_eq!(
            tamper,
            Tamper {
                seq: 7,
                reason: Reason::Edited
            }
        );
        assert_eq!(
            tamper.to_string(),
            "record 7 was edited: its hash does not match its contents"
        );
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_is_caught_by_the_next_link() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        let mut record: Record = serde_json::from_value(raw(&f, 3)).expect("record");
        record.data = serde_json::json!({ "i": 999 });
        record.hash = record.compute_hash();
        put(&f, 3, &serde_json::to_value(&record).expect("json"));
        let tamper = history.verify().expect("readable").expect_err("tampered");
        assert_eq!(tamper.seq, 3);
        assert_eq!(tamper.reason, Reason::Rehashed { next: 4 });
        assert!(tamper.to_string().starts_with("record 3 was edited"));
    }

    #[test]
    fn an_added_member_counts_as_an_edit() {
        let f = fixture();
        let _history = filled(&f, 3, 0);
        let mut record = raw(&f, 2);
        record["note"] = "added later".into();
        put(&f, 2, &record);
        assert_eq!(check(&f, None).expect_err("tampered").seq, 2);
    }

    #[test]
    fn a_removed_record_names_its_seq() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        remove(&f, [6]);
        let tamper = history.verify().expect("readable").expect_err("tampered");
        assert_eq!(
            tamper,
            Tamper {
                seq: 6,
                reason: Reason::Removed { through: 6 }
            }
        );
        assert_eq!(
            tamper.to_string(),
            "record 6 was removed: the chain skips from 5 to 7"
        );
        remove(&f, [7, 8]);
        let tamper = check(&f, None).expect_err("tampered");
        assert_eq!(tamper.reason, Reason::Removed { through: 8 });
        assert_eq!(
            tamper.to_string(),
            "records 6 to 8 were removed: the chain skips from 5 to 9"
        );
    }

    #[test]
    fn swapped_records_are_reordered() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        let (a, b) = (raw(&f, 3), raw(&f, 4));
        put(&f, 3, &b);
        put(&f, 4, &a);
        let tamper = history.verify().expect("readable").expect_err("tampered");
        assert_eq!(
            tamper,
            Tamper {
                seq: 3,
                reason: Reason::Reordered { found: 4 }
            }
        );
        assert_eq!(
            tamper.to_string(),
            "record 3 was reordered: record 4 stands in its place"
        );
        // In a list (no table keys), the swap reads alike.
        let mut list: Vec<Record> = (1..=12)
            .map(|s| serde_json::from_value(raw(&f, s)).expect("record"))
            .collect();
        let tamper = verify_records(list.clone(), &f.key.verifying_key(), None).expect_err("swap");
        assert_eq!(tamper.seq, 3);
        assert_eq!(tamper.reason, Reason::Reordered { found: 4 });
        // And a record missing from a list is removed, not reordered.
        list.swap(2, 3);
        list.remove(2);
        let tamper = verify_records(list, &f.key.verifying_key(), None).expect_err("gap");
        assert_eq!(tamper.reason, Reason::Removed { through: 3 });
    }

    #[test]
    fn a_corrupted_seal_signature_is_forged() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        let mut seal: Record = serde_json::from_value(raw(&f, 5)).expect("seal");
        assert_eq!(seal.kind, Kind::Seal);
        let mut signature =
            hex::decode(seal.data["signature"].as_str().expect("sig")).expect("hex");
        signature[0] ^= 1;
        seal.data["signature"] = hex::encode(signature).into();
        // Rehashed, so the chain itself still holds: only the signature
        // gives it away.
        seal.hash = seal.compute_hash();
        put(&f, 5, &serde_json::to_value(&seal).expect("json"));
        let mut next: Record = serde_json::from_value(raw(&f, 6)).expect("next");
        next.prev = seal.hash.clone();
        next.hash = next.compute_hash();
        put(&f, 6, &serde_json::to_value(&next).expect("json"));
        let tamper = check(&f, None).expect_err("forged");
        assert_eq!(tamper.seq, 5);
        assert!(matches!(tamper.reason, Reason::ForgedSeal(_)), "{tamper}");
        assert!(
            tamper.to_string().contains("signature does not verify"),
            "{tamper}"
        );
        drop(history);
    }

    #[test]
    fn a_seal_by_another_key_is_forged() {
        let f = fixture();
        let _history = filled(&f, 4, 4);
        let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let tamper = verify_db(&f.db, &other, None)
            .expect("readable")
            .expect_err("wrong key");
        assert_eq!(tamper.seq, 5);
        assert!(tamper.to_string().contains("names key"), "{tamper}");
    }

    #[test]
    fn a_truncated_history_is_caught_against_a_known_head() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        remove(&f, [10, 11, 12]);
        // On its own, the shorter chain is consistent…
        let verified = check(&f, None).expect("consistent");
        assert_eq!(verified.records, 9);
        // …but not against the head this process wrote.
        let tamper = history.verify().expect("readable").expect_err("truncated");
        assert_eq!(
            tamper,
            Tamper {
                seq: 10,
                reason: Reason::Truncated {
                    last: 9,
                    expected: 12
                }
            }
        );
        assert_eq!(
            tamper.to_string(),
            "record 10 was removed: the history ends at record 9, but record 12 was known to exist"
        );
    }

    #[test]
    fn records_filters_by_twin_and_pages() {
        let f = fixture();
        let history = filled(&f, 10, 4);
        let pump = history.records(0, Some("pump"), 100).expect("records");
        assert_eq!(pump.len(), 5);
        assert!(pump.iter().all(|r| r.twin.as_deref() == Some("pump")));
        let page = history.records(3, None, 2).expect("records");
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(history.records(12, None, 10).expect("records").is_empty());
    }

    #[test]
    fn followers_see_records_and_seals_in_order() {
        let f = fixture();
        let history = History::open(f.db.clone(), f.key.clone(), 2).expect("open");
        let mut follower = history.subscribe();
        for i in 0..2 {
            history
                .append(Entry::new(Kind::Decision, format!("decision {i}")))
                .expect("append");
        }
        let seen: Vec<(u64, Kind)> = (0..3)
            .map(|_| follower.try_recv().expect("a record"))
            .map(|r| (r.seq, r.kind))
            .collect();
        assert_eq!(
            seen,
            [(1, Kind::Decision), (2, Kind::Decision), (3, Kind::Seal)]
        );
    }

    #[test]
    fn appending_a_seal_is_refused() {
        let f = fixture();
        let history = History::open(f.db.clone(), f.key.clone(), 0).expect("open");
        assert!(history.append(Entry::new(Kind::Seal, "fake")).is_err());
        assert_eq!(history.head().seq, 0);
    }
}
