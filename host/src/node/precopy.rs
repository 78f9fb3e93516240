//! Pre-copy of a migrating twin's guest snapshot.
//!
//! Before the handover, the target receives a snapshot of the twin taken
//! while it still runs: the *base*. The handover's bundle then carries,
//! instead of the whole new snapshot, only what differs from the base: the
//! bytes between the first and the last that changed (the rest is taken
//! from the base at the target). A model's state is often mostly stable
//! (parameters, tables, buffers) around a few counters that move, so the
//! pause carries a few bytes where it carried megabytes.
//!
//! The delta names its base by digest: a target holding another base (or
//! none) refuses it, and the migration falls back as any failed handover
//! does (the twin resumes on its source).
//!
//! Better still, the target restores the base into an instance while the
//! twin still runs on the source, and the handover carries no snapshot at
//! all: only the messages the source applied since the base, which the
//! target replays on it (as a node replays its journal after a crash).
//! The pause then no longer grows with the state. The target checks that
//! the replay reaches the source's host-side state (last sequence number,
//! count, properties); anything that changed the guest otherwise (an
//! action, a reconfiguration) makes the handover carry the delta instead.
//!
//! The twin's entanglement window goes ahead with the snapshot, and the
//! bundle carries only the samples recorded since (see
//! [`Window::since`]): at 1,000 updates a second a full window is 30,000
//! samples. What goes ahead is a checkpoint of three sections, `guest`,
//! `twin` and `entanglement`, checked like any bundle.

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

use crate::checkpoint::{Checkpoint, ENTANGLEMENT_SECTION, GUEST_SECTION, TWIN_SECTION};
use crate::runtime::Update;
use crate::twin::entanglement::{Mark, Window};

/// The bundle section that carries a delta in place of the guest snapshot.
pub const GUEST_DELTA_SECTION: &str = "guest-delta";

/// The most messages a handover replays on the base sent ahead. A source
/// keeps no more (past it, a move that never came or a slow one, the
/// handover carries the snapshot's changes instead), and a target refuses
/// more, which would hold the twin's pause for as long as they took.
pub const REPLAY_MAX: usize = 4096;

/// The bundle section that carries, in place of the guest snapshot, the
/// messages to replay on the base: its digest, then the messages as JSON
/// (each the updates it carried).
pub const GUEST_REPLAY_SECTION: &str = "guest-replay";

/// Digest (BLAKE3) length, then the prefix and suffix lengths (u64 LE).
const HEADER: usize = 32 + 8 + 8;

/// A snapshot both sides of a migration hold, by its digest.
pub struct Base {
    digest: blake3::Hash,
    bytes: Bytes,
}

impl Base {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            digest: blake3::hash(&bytes),
            bytes,
        }
    }

    /// The digest, as the conductor passes it between the nodes.
    pub fn digest_hex(&self) -> String {
        self.digest.to_hex().to_string()
    }

    /// Whether the conductor's `digest` names this base.
    pub fn is(&self, digest: &str) -> bool {
        self.digest.to_hex().as_str() == digest
    }

    fn digest(&self) -> &[u8; 32] {
        self.digest.as_bytes()
    }

    /// What `new` differs by from this base: its digest, how many bytes
    /// of the base start it and end it, and the bytes between.
    pub fn delta(&self, new: &[u8]) -> Vec<u8> {
        let base = &self.bytes[..];
        let prefix = common_prefix(base, new);
        // Sought past the prefix, so that the two cannot overlap.
        let suffix = common_suffix(&base[prefix..], &new[prefix..]);
        let middle = &new[prefix..new.len() - suffix];
        let mut delta = Vec::with_capacity(HEADER + middle.len());
        delta.extend_from_slice(self.digest.as_bytes());
        delta.extend_from_slice(&(prefix as u64).to_le_bytes());
        delta.extend_from_slice(&(suffix as u64).to_le_bytes());
        delta.extend_from_slice(middle);
        delta
    }

    /// The snapshot `delta` (from [`Base::delta`]) describes against this
    /// base. Refuses a delta of another base, or one that does not fit it.
    pub fn apply(&self, delta: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rest = self.past_digest(delta, HEADER, "the guest delta")?;
        let (lengths, middle) = rest.split_at(16);
        let length = |at: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&lengths[at..at + 8]);
            usize::try_from(u64::from_le_bytes(le)).unwrap_or(usize::MAX)
        };
        let (prefix, suffix) = (length(0), length(8));
        let base = &self.bytes[..];
        if prefix
            .checked_add(suffix)
            .is_none_or(|kept| kept > base.len())
        {
            bail!(
                "the guest delta keeps {prefix} + {suffix} bytes of a {}-byte snapshot",
                base.len()
            );
        }
        let mut new = Vec::with_capacity(prefix + middle.len() + suffix);
        new.extend_from_slice(&base[..prefix]);
        new.extend_from_slice(middle);
        new.extend_from_slice(&base[base.len() - suffix..]);
        Ok(new)
    }

    /// What follows the digest that starts `body` (`what`, whose header
    /// is `header` bytes), once that digest is checked to be this base's.
    fn past_digest<'a>(
        &self,
        body: &'a [u8],
        header: usize,
        what: &str,
    ) -> anyhow::Result<&'a [u8]> {
        ensure!(
            body.len() >= header,
            "{what} is {} bytes, shorter than its {header}-byte header",
            body.len()
        );
        let (digest, rest) = body.split_at(32);
        if digest != self.digest.as_bytes() {
            bail!(
                "{what} is against snapshot {}, but this node holds {}",
                hex::encode(digest),
                self.digest.to_hex()
            );
        }
        Ok(rest)
    }

    /// `checkpoint` with its guest snapshot replaced by its delta from
    /// this base.
    pub fn shrink(&self, mut checkpoint: Checkpoint) -> Checkpoint {
        for (section, body) in &mut checkpoint.sections {
            if section == GUEST_SECTION {
                let whole = body.len();
                *body = self.delta(body);
                *section = GUEST_DELTA_SECTION.to_string();
                tracing::debug!(twin = %checkpoint.twin, whole, delta = body.len(), "guest snapshot handed over as its changes");
            }
        }
        checkpoint
    }
}

/// What the source keeps of what it sent ahead: the snapshot, and where
/// the twin's window stood.
pub struct Sent {
    base: Base,
    mark: Option<Mark>,
}

impl Sent {
    /// What goes ahead of `checkpoint` (a running twin's) and of its
    /// `window`, taken at `mark`: what the source keeps, and the bytes to
    /// send.
    pub fn new(
        checkpoint: Checkpoint,
        window: Option<(Window, Mark)>,
    ) -> anyhow::Result<(Self, Vec<u8>)> {
        let mut checkpoint = checkpoint;
        let guest = checkpoint
            .take(GUEST_SECTION)
            .context("the twin's checkpoint has no guest snapshot")?;
        let twin = checkpoint
            .take(TWIN_SECTION)
            .context("the twin's checkpoint has no twin state")?;
        let mut ahead = Checkpoint {
            sections: vec![(GUEST_SECTION.into(), guest), (TWIN_SECTION.into(), twin)],
            ..checkpoint
        };
        let mark = match window {
            Some((window, mark)) => {
                ahead
                    .sections
                    .push((ENTANGLEMENT_SECTION.into(), window.encode()?));
                Some(mark)
            }
            None => None,
        };
        let bytes = ahead.to_bytes()?;
        let (_, guest) = ahead.sections.swap_remove(0);
        let sent = Sent {
            base: Base::new(guest),
            mark,
        };
        Ok((sent, bytes))
    }

    /// Whether the conductor's `digest` names what was sent.
    pub fn is(&self, digest: &str) -> bool {
        self.base.is(digest)
    }

    /// `checkpoint`, for a target that holds what was sent: its guest
    /// snapshot as its delta.
    pub fn shrink(&self, checkpoint: Checkpoint) -> Checkpoint {
        self.base.shrink(checkpoint)
    }

    /// `host` (a checkpoint without a guest snapshot), for a target that
    /// holds what was sent restored: with the `messages` applied since.
    pub fn replay(
        &self,
        mut host: Checkpoint,
        messages: &[Vec<Update>],
    ) -> anyhow::Result<Checkpoint> {
        let mut body = self.base.digest().to_vec();
        serde_json::to_writer(&mut body, messages).context("encoding the messages to replay")?;
        tracing::debug!(twin = %host.twin, messages = messages.len(), bytes = body.len(), "guest handed over as the messages since its base");
        host.sections.push((GUEST_REPLAY_SECTION.into(), body));
        Ok(host)
    }

    /// `window`, taken at `now`, for a target that holds what was sent:
    /// its samples since (a copy of it whole, should they not follow on).
    pub fn window_since(&self, window: &Window, now: Mark) -> Window {
        self.mark
            .and_then(|then| window.since(now, then, *self.base.digest()))
            .unwrap_or_else(|| window.clone())
    }
}

/// What a target holds of what was sent ahead of a twin's handover.
pub struct Held {
    base: Base,
    window: Option<Window>,
    /// The base as a checkpoint (guest snapshot and twin state): what the
    /// target restores ahead, and its first recovery point after a replay.
    checkpoint: Arc<Checkpoint>,
}

impl Held {
    /// Reads what the source sent ahead (see [`Sent::new`]), checking it
    /// whole, for twin `name`.
    pub fn read(name: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        let mut ahead = Checkpoint::read_from(bytes)?;
        ensure!(
            ahead.twin == name,
            "the snapshot sent ahead is of twin `{}`, not `{name}`",
            ahead.twin
        );
        ensure!(
            ahead.section(GUEST_SECTION).is_some(),
            "the snapshot sent ahead has no guest section"
        );
        let window = ahead
            .take(ENTANGLEMENT_SECTION)
            .map(|bytes| Window::decode(&bytes))
            .transpose()
            .context("the entanglement window sent ahead is malformed")?
            .map(|window| window.whole(None))
            .transpose()?;
        let checkpoint = Arc::new(ahead);
        Ok(Held {
            // The checkpoint's own bytes, not a copy: a target holds the
            // base until the handover, beside the instance restored from it.
            base: Base::new(Bytes::from_owner(GuestOf(checkpoint.clone()))),
            window,
            checkpoint,
        })
    }

    /// The base as a checkpoint, to restore ahead of the handover.
    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.checkpoint
    }

    /// The messages a `guest-replay` section carries, once its base is
    /// checked to be the one held.
    pub fn replayed(&self, section: &[u8]) -> anyhow::Result<Vec<Vec<Update>>> {
        let messages = self
            .base
            .past_digest(section, 32, "the section of messages to replay")?;
        let messages: Vec<Vec<Update>> =
            serde_json::from_slice(messages).context("the messages to replay are malformed")?;
        ensure!(
            messages.len() <= REPLAY_MAX,
            "the bundle carries {} messages to replay, more than the {REPLAY_MAX} a handover may",
            messages.len()
        );
        Ok(messages)
    }

    /// The digest of the snapshot held, as the conductor passes it on.
    pub fn digest_hex(&self) -> String {
        self.base.digest_hex()
    }
}

/// The guest snapshot of a checkpoint that has one, as bytes shared with it.
struct GuestOf(Arc<Checkpoint>);

impl AsRef<[u8]> for GuestOf {
    fn as_ref(&self) -> &[u8] {
        self.0.section(GUEST_SECTION).unwrap_or_default()
    }
}

/// `window` whole again, if it came as its samples since one sent ahead
/// to `held`.
pub fn whole_window(window: Window, held: Option<&Held>) -> anyhow::Result<Window> {
    let ahead = held.and_then(|held| Some((held.base.digest(), held.window.as_ref()?)));
    window.whole(ahead)
}

/// `checkpoint` with its guest snapshot whole again, if it came as a delta
/// from `base`. A checkpoint with both, or with two deltas, is refused.
pub fn whole(mut checkpoint: Checkpoint, held: Option<&Held>) -> anyhow::Result<Checkpoint> {
    let count = |name: &str| {
        checkpoint
            .sections
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    };
    match (count(GUEST_SECTION), count(GUEST_DELTA_SECTION)) {
        (_, 0) => return Ok(checkpoint),
        (0, 1) => {}
        (guests, deltas) => bail!(
            "the bundle carries {guests} guest snapshot(s) and {deltas} delta(s); \
             it may carry one or the other"
        ),
    }
    let base = &held
        .context(
            "the bundle carries the guest snapshot's changes from one sent ahead, \
             but none was sent here",
        )?
        .base;
    for (section, body) in &mut checkpoint.sections {
        if section == GUEST_DELTA_SECTION {
            *body = base.apply(body)?;
            *section = GUEST_SECTION.to_string();
        }
    }
    Ok(checkpoint)
}

/// How many bytes `a` and `b` share from their start.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    common_run(
        a.len().min(b.len()),
        |at, len| a[at..at + len] == b[at..at + len],
        |i| a[i] == b[i],
    )
}

/// How many bytes `a` and `b` share at their end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let (ea, eb) = (a.len(), b.len());
    common_run(
        ea.min(eb),
        |at, len| a[ea - at - len..ea - at] == b[eb - at - len..eb - at],
        |i| a[ea - 1 - i] == b[eb - 1 - i],
    )
}

/// The length of the run, out of `n`, over which `same_block(at, len)`
/// and then `same_byte(i)` hold: compared a 4 KiB block at a time (a
/// memcmp), then byte by byte in the block that differs.
fn common_run(
    n: usize,
    same_block: impl Fn(usize, usize) -> bool,
    same_byte: impl Fn(usize) -> bool,
) -> usize {
    const BLOCK: usize = 4096;
    let mut at = 0;
    while at + BLOCK <= n && same_block(at, BLOCK) {
        at += BLOCK;
    }
    while at < n && same_byte(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Requirements;
    use crate::twin::entanglement::{Entanglement, Timing};

    /// A few MiB of bytes that differ from one another.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn every_kind_of_change_comes_back_whole() {
        let base = noise(3 * 4096 + 17, 1);
        let mut grown = base.clone();
        grown.splice(100..100, noise(5000, 2));
        let mut shrunk = base.clone();
        shrunk.drain(4000..9000);
        let mut both_ends = base.clone();
        both_ends[0] ^= 1;
        *both_ends.last_mut().unwrap() ^= 1;
        let mut repeated = base.clone();
        repeated.extend_from_slice(&base);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("same", base.clone()),
            ("empty", Vec::new()),
            ("grown inside", grown),
            ("shrunk inside", shrunk),
            ("changed at both ends", both_ends),
            ("repeated", repeated),
            ("a prefix of it", base[..5000].to_vec()),
            ("a suffix of it", base[5000..].to_vec()),
            ("unrelated", noise(7000, 3)),
        ];
        let held = Base::new(base.clone());
        for (what, new) in cases {
            let delta = held.delta(&new);
            assert_eq!(held.apply(&delta).unwrap(), new, "{what}");
        }
        // And from an empty base.
        let empty = Base::new(Vec::new());
        assert_eq!(empty.apply(&empty.delta(&base)).unwrap(), base);
    }

    #[test]
    fn a_small_change_to_a_large_snapshot_makes_a_small_delta() {
        let mut base = b"{\"updates\":99,\"ballast\":\"".to_vec();
        base.extend(std::iter::repeat_n(b'x', 1 << 20));
        base.extend_from_slice(b"\"}");
        let new = String::from_utf8(base.clone())
            .unwrap()
            .replacen("99", "100", 1)
            .into_bytes();
        let delta = Base::new(base).delta(&new);
        assert!(delta.len() < HEADER + 16, "{} bytes", delta.len());
    }

    /// What a target holds of `base`, sent with no window.
    fn held(base: Base) -> Held {
        Held {
            base,
            window: None,
            checkpoint: Arc::new(checkpoint(&[])),
        }
    }

    fn checkpoint(sections: &[(&str, &[u8])]) -> Checkpoint {
        Checkpoint {
            twin: "p".into(),
            created_ms: 1,
            model: crate::checkpoint::ModelInfo {
                name: "prime".into(),
                version: "0.1.0".into(),
                component: crate::digest::Digest::of(b"component"),
                state_version: 1,
            },
            sections: sections
                .iter()
                .map(|(name, body)| (name.to_string(), body.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_checkpoint_shrunk_against_a_base_comes_back_whole_only_with_it() {
        let base = Base::new(noise(50_000, 7));
        let mut state = base.bytes.to_vec();
        state[10] ^= 1;
        let taken = checkpoint(&[(GUEST_SECTION, &state), ("twin", b"{}")]);
        let shrunk = base.shrink(taken.clone());
        assert_eq!(shrunk.sections[0].0, GUEST_DELTA_SECTION);
        assert!(shrunk.sections[0].1.len() < HEADER + 8);
        let held = held(base);
        assert_eq!(whole(shrunk.clone(), Some(&held)).unwrap(), taken);
        // A whole checkpoint needs no base.
        assert_eq!(whole(taken.clone(), None).unwrap(), taken);

        let e = whole(shrunk, None).unwrap_err().to_string();
        assert!(e.contains("none was sent here"), "{e}");
    }

    #[test]
    fn a_checkpoint_with_a_snapshot_and_a_delta_or_two_deltas_is_refused() {
        let base = Base::new(noise(1000, 8));
        let delta = base.delta(&noise(1000, 9));
        let held = held(base);
        for sections in [
            vec![
                (GUEST_SECTION, &b"{}"[..]),
                (GUEST_DELTA_SECTION, &delta[..]),
            ],
            vec![
                (GUEST_DELTA_SECTION, &delta[..]),
                (GUEST_DELTA_SECTION, &delta[..]),
            ],
        ] {
            let e = whole(checkpoint(&sections), Some(&held))
                .unwrap_err()
                .to_string();
            assert!(e.contains("it may carry one or the other"), "{e}");
        }
    }

    #[test]
    fn a_delta_of_another_base_or_that_does_not_fit_is_refused() {
        let base = Base::new(noise(10_000, 4));
        let other = Base::new(noise(10_000, 5));
        let delta = other.delta(&noise(10_000, 6));
        let e = base.apply(&delta).unwrap_err().to_string();
        assert!(e.contains("is against snapshot"), "{e}");

        let e = base.apply(&delta[..HEADER - 1]).unwrap_err().to_string();
        assert!(e.contains("shorter than its"), "{e}");

        for (prefix, suffix) in [(10_001u64, 0u64), (5_000, 5_001), (u64::MAX, 1)] {
            let mut bad = base.digest.as_bytes().to_vec();
            bad.extend_from_slice(&prefix.to_le_bytes());
            bad.extend_from_slice(&suffix.to_le_bytes());
            let e = base.apply(&bad).unwrap_err().to_string();
            assert!(e.contains("bytes of a 10000-byte snapshot"), "{e}");
        }
    }

    /// A twin's measuring, fed `n` updates a millisecond apart from `from`
    /// (sequence numbers and times in ms).
    fn feed(e: &mut Entanglement, from: u64, n: u64) {
        for seq in from..from + n {
            let at = T0 + seq * 1000;
            let timing = Timing {
                received_us: at + 100,
                started_us: at + 200,
            };
            e.record(seq, at / 1000, timing, at + 300);
        }
    }

    const T0: u64 = 1_700_000_000_000_000;

    #[test]
    fn the_window_sent_ahead_leaves_only_the_samples_since_in_the_bundle() {
        // A one-second window holding 800 samples goes ahead.
        let requirements = Requirements {
            window_seconds: 1,
            ..Default::default()
        };
        let mut e = Entanglement::new(requirements, T0);
        feed(&mut e, 1, 800);
        let taken = checkpoint(&[(GUEST_SECTION, &noise(4000, 1)), ("twin", b"{}")]);
        let ahead = (e.leave(T0 + 801_000), e.mark());
        let (sent, bytes) = Sent::new(taken.clone(), Some(ahead)).unwrap();
        let held = Held::read("p", &bytes).unwrap();
        assert!(sent.is(&held.digest_hex()));

        // 100 more arrive, and pruning drops the first 100 from the front.
        feed(&mut e, 801, 100);
        e.evaluate(T0 + 1_100_500);
        let now = (e.leave(T0 + 1_101_000), e.mark());
        let window = now.0.clone();
        let shrunk = sent.shrink(taken.clone());
        let partial = sent.window_since(&now.0, now.1);
        // Round trip through the bundle's encoding, then rebuilt.
        let partial = Window::decode(&partial.encode().unwrap()).unwrap();
        assert!(partial.encode().unwrap().len() * 4 < window.encode().unwrap().len());
        assert_eq!(whole_window(partial.clone(), Some(&held)).unwrap(), window);
        assert_eq!(whole(shrunk, Some(&held)).unwrap(), taken);

        // Without what was sent ahead, or against another snapshot, it
        // is refused.
        let e1 = whole_window(partial.clone(), None).unwrap_err().to_string();
        assert!(e1.contains("none was sent here"), "{e1}");
        let other = Sent::new(
            checkpoint(&[(GUEST_SECTION, &noise(4000, 2)), ("twin", b"{}")]),
            Some((window.clone(), e.mark())),
        )
        .unwrap();
        let other = Held::read("p", &other.1).unwrap();
        let e2 = whole_window(partial, Some(&other)).unwrap_err().to_string();
        assert!(e2.contains("is against snapshot"), "{e2}");
    }

    #[test]
    fn a_window_of_another_measuring_or_all_new_goes_whole() {
        let mut e = Entanglement::new(Default::default(), T0);
        feed(&mut e, 1, 10);
        let taken = checkpoint(&[(GUEST_SECTION, b"{}"), ("twin", b"{}")]);
        let (sent, _) = Sent::new(taken.clone(), Some((e.leave(T0), e.mark()))).unwrap();
        // Another measuring of the twin (it was restarted since).
        let mut again = Entanglement::new(Default::default(), T0);
        feed(&mut again, 1, 20);
        let now = again.leave(T0);
        assert_eq!(sent.window_since(&now, again.mark()), now);
        // Every sample of the window is new: the whole window goes.
        let one = Requirements {
            window_seconds: 1,
            ..Default::default()
        };
        let mut e = Entanglement::new(one, T0);
        feed(&mut e, 1, 10);
        let (sent, _) = Sent::new(taken.clone(), Some((e.leave(T0), e.mark()))).unwrap();
        feed(&mut e, 5000, 10);
        e.evaluate(T0 + 5_010_000);
        let now = e.leave(T0 + 5_010_000);
        assert_eq!(sent.window_since(&now, e.mark()), now);
    }

    #[test]
    fn what_goes_ahead_is_checked_and_names_its_twin() {
        let taken = checkpoint(&[(GUEST_SECTION, b"{}"), ("twin", b"{}")]);
        let (_, bytes) = Sent::new(taken, None).unwrap();
        let e = Held::read("q", &bytes).err().unwrap().to_string();
        assert!(e.contains("is of twin `p`, not `q`"), "{e}");
        let e = Held::read("p", &bytes[..bytes.len() - 1]).err().unwrap();
        assert!(format!("{e:#}").contains("checksum"), "{e:#}");
        let e = Held::read("p", b"a snapshot").err().unwrap();
        assert!(
            format!("{e:#}").contains("not a wasmtwin checkpoint"),
            "{e:#}"
        );
        let e = Sent::new(checkpoint(&[("twin", b"{}")]), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no guest snapshot"), "{e}");
        let e = Sent::new(checkpoint(&[(GUEST_SECTION, b"{}")]), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no twin state"), "{e}");
    }

    /// What goes ahead, sent and held: the guest snapshot and twin state
    /// of a checkpoint whose snapshot is `guest`.
    fn sent_and_held(guest: &[u8]) -> (Sent, Held) {
        let taken = checkpoint(&[(GUEST_SECTION, guest), ("twin", b"{\"updatesApplied\":3}")]);
        let (sent, bytes) = Sent::new(taken.clone(), None).unwrap();
        let held = Held::read("p", &bytes).unwrap();
        assert_eq!(held.checkpoint().as_ref(), &taken);
        (sent, held)
    }

    #[test]
    fn a_target_holds_the_base_once() {
        let (_, held) = sent_and_held(&noise(1 << 20, 3));
        let guest = held.checkpoint().section(GUEST_SECTION).unwrap();
        // The delta's base is the checkpoint's own snapshot, not a copy.
        assert_eq!(held.base.bytes.as_ptr(), guest.as_ptr());
        assert_eq!(held.base.bytes.len(), guest.len());
    }

    fn message(seq: u64) -> Vec<Update> {
        vec![Update {
            seq,
            ts_ms: 1_700_000_000_000 + seq,
            property: "temperature".into(),
            value: serde_json::json!(20.5 + seq as f64),
        }]
    }

    #[test]
    fn the_messages_to_replay_reach_only_the_base_they_follow() {
        let (sent, held) = sent_and_held(&noise(5000, 1));
        let messages: Vec<_> = (4..9).map(message).collect();
        let host = checkpoint(&[("twin", b"{}")]);
        let bundled = sent.replay(host.clone(), &messages).unwrap();
        let section = bundled.section(GUEST_REPLAY_SECTION).unwrap();
        // A few bytes a message, whatever the size of the state.
        assert!(
            section.len() < 32 + 100 * messages.len(),
            "{}",
            section.len()
        );
        assert_eq!(held.replayed(section).unwrap(), messages);

        let (_, other) = sent_and_held(&noise(5000, 2));
        let e = other.replayed(section).unwrap_err().to_string();
        assert!(e.contains("is against snapshot"), "{e}");
        let e = held.replayed(&section[..31]).unwrap_err().to_string();
        assert!(e.contains("shorter than its 32-byte header"), "{e}");
        let mut cut = section.to_vec();
        cut.pop();
        let e = held.replayed(&cut).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
        let many = vec![message(10); REPLAY_MAX + 1];
        let bundled = sent.replay(checkpoint(&[]), &many).unwrap();
        let section = bundled.section(GUEST_REPLAY_SECTION).unwrap();
        let e = held.replayed(section).unwrap_err().to_string();
        assert!(e.contains("more than the 4096"), "{e}");
    }
}
