//! A twin's movements: its checkpoint bundle out and in, live migration
//! between nodes, and hot-swap of its model.
//!
//! A migration is driven from outside (`wasmtwin migrate`) in steps that
//! each node takes on its own side, so that a failure at any step leaves
//! the twin running where it was:
//!
//! 1. target [`Node::receive`]: fetch, verify and compile the components;
//!    source [`Node::history_lines`] → target [`Node::import_history`]:
//!    the twin's history is copied, streamed, while it still runs, so the
//!    pause below carries only the rows written since; target
//!    [`Node::listen`]: open the twin's MQTT session, whose messages wait
//!    in the queue of a worker not yet started (last, so that few of them
//!    are ones the source still applies);
//! 2. target [`Node::first_buffered`]: the sequence number the buffer
//!    starts at, once a message came;
//! 3. source [`Node::handover`]: apply every message up to just before
//!    that, checkpoint, stop, and return the bundle;
//! 4. target [`Node::accept`]: restore the bundle and start the worker on
//!    the buffer, whose already-applied messages drop as duplicates;
//! 5. source [`Node::mark_moved`] (reads are redirected to the target), or,
//!    if step 4 failed, [`Node::resume_twin`] (the twin carries on from its
//!    handover checkpoint, and its session redelivers the rest).

use std::collections::hash_map::Entry;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::bundle::{Bundle, History, Outgoing};
use super::precopy::{self, Held, Sent};
use super::view::ChangeFeed;
use super::worker::{Handed, Handover, Job, Start, SwapJob, SwapReport};
use super::{Components, Node, NodeError, Origin, Prepared, Recovery, Session, lock, spec_op};
use crate::checkpoint::{Checkpoint, GUEST_SECTION};
use crate::physical::Subscribing;
use crate::runtime::AdapterInstance;
use crate::spec::{ComponentRef, TwinSpec};
use crate::store::{HistoryMark, HistoryRow, Op};
use crate::twin::entanglement::{Mark, Window};
use crate::twin::{Applied, Twin, TwinState};

/// Rows stored per write when a history is imported.
pub(crate) const IMPORT_BATCH: usize = 4096;

/// How long a handover may wait for the source to catch up with the
/// target's buffer.
const HANDOVER_WITHIN: Duration = Duration::from_secs(10);

/// A twin being handed over: its spec, and once its worker stopped, its
/// entanglement window (kept should the twin resume here).
pub(super) struct Leaving {
    spec: TwinSpec,
    window: Option<Window>,
    /// Its place in a shared session, once its worker has stopped: what
    /// comes for it is kept until its move ends, should it run here again.
    link: Option<crate::physical::Link>,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            link.close();
        }
    }
}

/// A twin arriving: its components compiled and, once it listens, its
/// session buffering.
pub(super) struct Incoming {
    spec: TwinSpec,
    components: Components,
    session: Option<Session>,
    /// Its change stream, open from the start so that applications can
    /// attach to a twin still arriving.
    changes: ChangeFeed,
    /// What was sent ahead: the snapshot the bundle's guest delta applies
    /// to, and the window its samples follow on.
    held: Option<Held>,
    /// That snapshot restored, for the bundle's messages to replay on.
    warm: Option<Twin>,
    /// When its move was announced here.
    announced: std::time::Instant,
}

/// A twin as it arrives from its bundle, before it runs.
struct Arrived {
    twin: Twin,
    /// What it recovers from here, should its instance fail.
    recovery: Recovery,
    window: Option<Window>,
}

impl Incoming {
    /// Closes its session, if it opened one; `forget` has the broker
    /// discard it too.
    fn close(self, node: &Node, forget: bool) {
        if let Some(session) = self.session {
            session.link.close();
            if forget {
                node.forget_session(&self.spec);
            }
        }
    }
}

impl Node {
    fn jobs(&self, name: &str) -> Result<tokio::sync::mpsc::Sender<Job>, NodeError> {
        lock(&self.twins)
            .get(name)
            .map(|h| h.jobs.clone())
            .ok_or_else(|| self.missing(name))
    }

    /// The error for a twin that is not here: moving, moved, or unknown.
    pub(super) fn missing(&self, name: &str) -> NodeError {
        if let Some(to) = self.moved(name) {
            NodeError::Moved(format!("{}/v1/twins/{name}", to.trim_end_matches('/')))
        } else if lock(&self.in_transit).contains_key(name) {
            NodeError::Moving(name.to_string())
        } else {
            NodeError::NotFound(name.to_string())
        }
    }

    /// Where a twin that moved away lives now.
    pub fn moved(&self, name: &str) -> Option<String> {
        lock(&self.moved).get(name).cloned()
    }

    /// Refuses to make twin `name` here while it is in a move, from this
    /// node or to it. It is then in neither node's list of twins: one made
    /// anew meanwhile would overwrite the stored state a failed move resumes
    /// from, or be replaced by the twin that lands and leave its worker
    /// running. Called under [`Node::exclusively`], as are the changes that
    /// start a move (an arrival, a handover's claim) and land one.
    pub(super) fn not_in_a_move(&self, name: &str) -> Result<(), NodeError> {
        if lock(&self.in_transit).contains_key(name) {
            return Err(NodeError::Conflict(format!(
                "twin `{name}` is being handed over to another node; try again once the move has \
                 ended (one whose conductor stopped ends with `POST /v1/twins/{name}/resume`, or \
                 `/moved` if it landed)"
            )));
        }
        if lock(&self.incoming).contains_key(name) {
            return Err(NodeError::Conflict(format!(
                "twin `{name}` is arriving here from another node; try again once it has arrived \
                 (one whose conductor stopped ends with `DELETE /v1/migrations/{name}`)"
            )));
        }
        Ok(())
    }

    /// The entanglement window of a twin here, as it leaves now, and
    /// where its measuring stands.
    pub(super) fn window(&self, name: &str) -> Option<(Window, Mark)> {
        let shared = lock(&self.twins).get(name)?.shared.clone();
        let shared = lock(&shared);
        let window = shared.entanglement.leave(crate::physical::now_us());
        Some((window, shared.entanglement.mark()))
    }

    /// The bundle of `checkpoint` and `window`, with the history rows
    /// after `history_after` (all of them without).
    fn bundle(
        &self,
        spec: TwinSpec,
        checkpoint: Checkpoint,
        window: Option<Window>,
        with_components: bool,
        history_after: Option<HistoryMark>,
    ) -> anyhow::Result<Bundle> {
        let components = if with_components {
            let model = &spec.spec.model;
            Some((
                self.fetch(&model.component, model.publisher_key.as_deref(), "model")?,
                self.fetch(&spec.spec.physical.adapter, None, "adapter")?,
            ))
        } else {
            None
        };
        // History rows are written behind the worker: wait for those of
        // every update the checkpoint holds.
        self.store.flush()?;
        let history = self.store.history_snapshot(spec.name(), history_after)?;
        Ok(Bundle {
            spec,
            checkpoint,
            history: History::Store(history),
            entanglement: window,
            components,
        })
    }

    /// A checkpoint of a running twin as it is between two updates, which
    /// keeps running.
    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, NodeError> {
        self.checkpoint_by(name, Job::Checkpoint).await
    }

    /// [`Node::checkpoint`], asked with the job `ask` makes.
    async fn checkpoint_by(
        &self,
        name: &str,
        ask: impl FnOnce(oneshot::Sender<Result<Checkpoint, String>>) -> Job,
    ) -> Result<Checkpoint, NodeError> {
        let jobs = self.jobs(name)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(ask(reply))
            .await
            .map_err(|_| self.missing(name))?;
        answer
            .await
            .map_err(|_| self.missing(name))?
            .map_err(NodeError::Refused)
    }

    /// A bundle of a running twin as it is between two updates, which keeps
    /// running; streamed, its history straight from the store.
    pub async fn export(
        self: &Arc<Self>,
        name: &str,
        with_components: bool,
    ) -> Result<Outgoing, NodeError> {
        let spec = self.spec(name)?;
        let checkpoint = self.checkpoint(name).await?;
        let window = self.window(name).map(|(window, _)| window);
        let node = self.clone();
        let bundle = tokio::task::spawn_blocking(move || {
            node.bundle(spec, checkpoint, window, with_components, None)
        })
        .await
        .map_err(|e| NodeError::Refused(e.to_string()))?
        .map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        stream(bundle).await
    }

    /// Starts twin `name` from a bundle of it. Its components (carried, or
    /// fetched as its spec says) must pass this node's trust policy before
    /// anything runs; a twin of that name already here is refused unless
    /// `replace`, and a bundle of another twin is refused before anything
    /// changes. With `adopt`, the name of the node the twin ran on before
    /// it was lost, what the broker still holds in that node's session is
    /// applied first (see the `adoption` module).
    pub fn restore_bundle(
        &self,
        name: &str,
        reader: impl Read,
        replace: bool,
        adopt: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut bundle = Bundle::read(reader)?;
        // A window that is only the rest of one sent ahead is whole only
        // on a migration's target.
        bundle.entanglement = bundle
            .entanglement
            .map(|window| precopy::whole_window(window, None))
            .transpose()
            .map_err(|e| NodeError::Refused(format!("{e:#}; nothing was changed")))?;
        if bundle.spec.name() != name {
            return Err(NodeError::Refused(format!(
                "the bundle is of twin `{}`, not `{name}`; nothing was changed",
                bundle.spec.name()
            ))
            .into());
        }
        self.exclusively(name, || self.restore_now(bundle, replace, adopt))
    }

    fn restore_now(
        &self,
        bundle: Bundle,
        replace: bool,
        adopt: Option<&str>,
    ) -> anyhow::Result<()> {
        let name = bundle.spec.name().to_string();
        self.not_in_a_move(&name)?;
        if !replace && lock(&self.twins).contains_key(&name) {
            return Err(NodeError::Conflict(format!(
                "twin `{name}` already runs here; restore with replace to overwrite it"
            ))
            .into());
        }
        let components = self.components(&bundle.spec, bundle.components)?;
        let twin = self.run_guest(self.make_twin(
            &bundle.spec,
            &components,
            Origin::Checkpoint(Arc::new(bundle.checkpoint)),
        ))?;
        self.stop(&name);
        // The spec goes last: should the node stop midway, no half-restored
        // twin resumes.
        self.store
            .write_now(vec![Op::Forget { name: name.clone() }])?;
        self.import(&name, bundle.history)?;
        self.store.write_now(vec![spec_op(&bundle.spec)?])?;
        let prepared = Prepared {
            components,
            twin: Start::Awake(twin),
            window: bundle.entanglement,
        };
        let hosted = match adopt {
            // A lost node's shared session holds every twin's backlog, not
            // this one's alone: not adopted (docs/broker-sessions.md).
            Some(from) if self.config.shared_session => {
                tracing::warn!(twin = %name, %from, "the node shares its broker session: what the lost node's session kept is not taken over");
                self.launch(&bundle.spec, prepared)?
            }
            Some(from) => {
                let session = self.connect_adopting(&bundle.spec, from)?;
                self.start(&bundle.spec, prepared, session, None)
            }
            None => self.launch(&bundle.spec, prepared)?,
        };
        lock(&self.twins).insert(name.clone(), hosted);
        lock(&self.moved).remove(&name);
        tracing::info!(twin = %name, adopted_from = adopt, "twin restored from a bundle");
        Ok(())
    }

    /// Stores history rows of twin `name`, a batch per write.
    fn import(&self, name: &str, history: History) -> anyhow::Result<()> {
        history.batches(IMPORT_BATCH, |rows| {
            self.store.write_now(vec![Op::ImportHistory {
                name: name.to_string(),
                rows,
            }])
        })
    }

    /// Source, step 3: applies messages up to `until`, checkpoints, stops
    /// the twin and returns its bundle, whose history holds only the rows
    /// after `history_after` (the target copied the rest ahead, see
    /// [`Node::history_lines`]). Requests meanwhile get "moving". If the
    /// twin cannot get there, it goes on here and the error says why.
    ///
    /// With `base`, the digest of what the target holds of [`Node::base`],
    /// the bundle carries the guest's changes since; with `replay` too (the
    /// target restored it), the messages applied since, when they alone
    /// changed the guest.
    pub async fn handover(
        self: &Arc<Self>,
        name: &str,
        until: Option<u64>,
        history_after: Option<HistoryMark>,
        base: Option<&str>,
        replay: bool,
    ) -> Result<Outgoing, NodeError> {
        let started = std::time::Instant::now();
        let jobs = self.jobs(name)?;
        let (reply, answer) = oneshot::channel();
        let leaving = Leaving {
            spec: self.spec(name)?,
            window: None,
            link: None,
        };
        // Off the async threads: it may wait for a change of the twin
        // under way (an apply compiling its components).
        let claimed = {
            let (node, name) = (self.clone(), name.to_string());
            tokio::task::spawn_blocking(move || node.claim_handover(&name, leaving)).await
        };
        let recorded = claimed.map_err(|e| NodeError::Refused(e.to_string()))??;
        // The target holds what was sent ahead: send only what changed since.
        let sent = lock(&self.bases)
            .remove(name)
            .filter(|sent| base.is_some_and(|digest| sent.is(digest)));
        let asked = jobs
            .send(Job::Handover(Box::new(Handover {
                until,
                deadline: std::time::Instant::now() + HANDOVER_WITHIN,
                replay: replay && sent.is_some(),
                reply,
            })))
            .await;
        let handed = match asked {
            Ok(()) => answer.await.map_err(|_| self.missing(name)),
            Err(_) => Err(self.missing(name)),
        };
        let handed = match handed {
            Ok(Ok(handed)) => handed,
            Ok(Err(e)) => {
                self.stays(name);
                return Err(NodeError::Refused(e));
            }
            Err(e) => {
                self.stays(name);
                return Err(e);
            }
        };
        let snapshot = started.elapsed();
        let window = self.window(name);
        // The bundle's window is its samples since what went ahead (or a
        // copy of it whole); the whole one stays here, should the twin
        // resume.
        let bundled = window.as_ref().map(|(window, mark)| match &sent {
            Some(sent) => sent.window_since(window, *mark),
            None => window.clone(),
        });
        if let Some(leaving) = lock(&self.in_transit).get_mut(name) {
            leaving.window = window.map(|(window, _)| window);
        }
        // The worker has stopped; take the twin down around it, and bundle
        // it once the store holds its history (both block: off the async
        // threads).
        let bundled = {
            let name = name.to_string();
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                let (spec, link) = node.stop_keeping_link(&name)?;
                if let Some(leaving) = lock(&node.in_transit).get_mut(&name) {
                    leaving.link = Some(link);
                } else {
                    link.close();
                }
                let checkpoint = match (handed, &sent) {
                    (Handed::Checkpoint(checkpoint), Some(sent)) => Ok(sent.shrink(checkpoint)),
                    (Handed::Checkpoint(checkpoint), None) => Ok(checkpoint),
                    (Handed::Replay { host, messages }, Some(sent)) => sent.replay(host, &messages),
                    // Asked only of a worker told that something was sent.
                    (Handed::Replay { .. }, None) => Err(anyhow::anyhow!(
                        "the twin handed over messages to replay, but nothing was sent ahead"
                    )),
                };
                super::free_later(sent);
                Some(checkpoint.and_then(|checkpoint| {
                    node.bundle(spec, checkpoint, bundled, false, history_after)
                }))
            })
            .await
            .ok()
            .flatten()
        };
        let Some(bundle) = bundled else {
            self.stays(name);
            return Err(NodeError::NotFound(name.to_string()));
        };
        let bundle = bundle.map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        // Nothing leaves before the handover is on record. (It stays in
        // the move, stopped: its conductor withdraws the arrival and
        // resumes it.)
        recorded.await.map_err(|e| {
            NodeError::Refused(format!(
                "cannot record the handover in the store, so the bundle was not sent: {e:#}"
            ))
        })?;
        let outgoing = stream(bundle).await?;
        // Both figures are inside the twin's pause; the bundle streams on.
        tracing::info!(twin = %name, ?snapshot, took = ?started.elapsed(), bytes = outgoing.len, "twin handing over");
        Ok(outgoing)
    }

    /// Records that twin `name` is being handed over. One handover at a
    /// time: a second would take the first's place at the worker, and its
    /// end, whichever it was, would clear the record of the move still
    /// under way (its window, and the session to discard once it lands).
    ///
    /// The record goes to the store too, and the future returned is ready
    /// once it is durable: the bundle must not leave before, or a node
    /// restarted once it had would start the twin again on its own, beside
    /// the one that landed (see [`Node::resume`]). The disk syncs while the
    /// worker checkpoints, not before: the twin's pause does not wait for it.
    fn claim_handover(
        &self,
        name: &str,
        leaving: Leaving,
    ) -> Result<impl Future<Output = anyhow::Result<()>> + use<>, NodeError> {
        self.exclusively(name, || {
            match lock(&self.in_transit).entry(name.to_string()) {
                Entry::Occupied(_) => {
                    return Err(NodeError::Conflict(format!(
                        "twin `{name}` is being handed over already"
                    )));
                }
                Entry::Vacant(vacant) => vacant.insert(leaving),
            };
            Ok(self.store.written(vec![Op::Leaving {
                name: name.to_string(),
                since_ms: crate::physical::now_us() / 1000,
            }]))
        })
    }

    /// Ends the handover of twin `name` here without the twin leaving: it
    /// runs here again, or is about to. What it records need not wait for
    /// the disk: until it is durable, a restart keeps the twin stopped, as
    /// for a move under way (safe, if slow), and the store writes in order,
    /// so no update the twin applies here is durable before it.
    fn stays(&self, name: &str) {
        if lock(&self.in_transit).remove(name).is_none() {
            return;
        }
        let record = Op::Stayed {
            name: name.to_string(),
        };
        let twin = name.to_string();
        self.store.write(
            vec![record],
            Some(Box::new(move |written| {
                if let Err(e) = written {
                    tracing::warn!(%twin, "cannot record in the store that its handover ended, so a restart keeps the twin stopped: {e}");
                }
            })),
        );
    }

    /// Source, step 5 when the target failed: the twin carries on here from
    /// its handover checkpoint. A twin stopped for its handover resumes
    /// only if `withdrawn`: its caller has withdrawn the arrival on the
    /// target, so that its bundle cannot land there too (a conductor does
    /// so first; a person ending a move by hand is told to).
    pub fn resume_twin(&self, name: &str, withdrawn: bool) -> anyhow::Result<()> {
        if lock(&self.twins).contains_key(name) {
            return Ok(());
        }
        // Not running and in a handover: stopped for it, and its bundle on
        // its way or gone.
        if !withdrawn && lock(&self.in_transit).contains_key(name) {
            return Err(NodeError::Conflict(format!(
                "twin `{name}` was stopped to be handed over, and its bundle may run on its \
                 target now. End the move with `wasmtwin migrate {name} --from <this node> --to \
                 <its target> --end`, or by hand: withdraw its arrival on the target first \
                 (`DELETE /v1/migrations/{name}` there); if that answers 204 or 404, resume it \
                 here with `POST /v1/twins/{name}/resume?withdrawn=true`; if 409, it runs there: \
                 record the move here with `POST /v1/twins/{name}/moved`"
            ))
            .into());
        }
        let saved = self
            .store
            .saved()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, saved)| saved)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let spec = TwinSpec::from_stored(&saved.spec)?;
        let mut prepared = self.prepare(&spec, Origin::Saved(saved))?;
        prepared.window = lock(&self.in_transit)
            .get(name)
            .and_then(|leaving| leaving.window.clone());
        let hosted = self.launch(&spec, prepared)?;
        lock(&self.twins).insert(name.to_string(), hosted);
        self.stays(name);
        tracing::info!(twin = %name, "twin resumed after a failed move");
        Ok(())
    }

    /// At start-up: twin `name` was being handed over when the node
    /// stopped, and its move has not ended here. Its bundle may run on the
    /// target by now, so it stays stopped, as during the move, until the
    /// move ends: `moved`, or a resume once its arrival is withdrawn.
    pub(super) fn still_leaving(
        &self,
        name: &str,
        spec: TwinSpec,
        window: Option<Window>,
        since_ms: u64,
    ) {
        tracing::warn!(
            twin = %name,
            since_ms,
            "the twin was being handed over to another node when this node stopped, and may run \
             there; it stays stopped here until its move ends (`wasmtwin migrate {name} --from \
             <this node> --to <its target> --end`)"
        );
        // Its place in a shared session, so that what comes meanwhile is
        // kept for it, as its own session at the broker would keep it.
        let link = self
            .config
            .shared_session
            .then(|| self.connect(&spec, Subscribing::InBackground));
        let link = match link.transpose() {
            Ok(session) => session.map(|session| session.link),
            Err(e) => {
                tracing::error!(twin = %name, "cannot keep what comes for the twin during its move: {e:#}");
                None
            }
        };
        lock(&self.in_transit).insert(name.to_string(), Leaving { spec, window, link });
    }

    /// The entanglement windows of the twins stopped for a handover.
    pub(super) fn leaving_windows(&self) -> Vec<(String, Window)> {
        lock(&self.in_transit)
            .iter()
            .filter_map(|(name, leaving)| Some((name.clone(), leaving.window.clone()?)))
            .collect()
    }

    /// Source, step 5: the twin lives at `to` now. Reads and actions are
    /// redirected there; this node forgets the rest, its broker session
    /// included.
    pub fn mark_moved(&self, name: &str, to: &str) -> anyhow::Result<()> {
        if lock(&self.twins).contains_key(name) {
            bail!("twin `{name}` still runs here; hand it over first");
        }
        self.store.write_now(vec![Op::Moved {
            name: name.to_string(),
            to: to.to_string(),
        }])?;
        lock(&self.moved).insert(name.to_string(), to.to_string());
        if let Some(leaving) = lock(&self.in_transit).remove(name) {
            self.forget_session(&leaving.spec);
        }
        tracing::info!(twin = %name, %to, "twin moved away");
        Ok(())
    }

    /// Whether twin `name` is on its way here.
    pub fn arriving(&self, name: &str) -> bool {
        lock(&self.incoming).contains_key(name)
    }

    /// The change stream of a twin still arriving.
    pub(super) fn subscribe_arriving(
        &self,
        name: &str,
    ) -> Option<tokio::sync::broadcast::Receiver<super::Change>> {
        lock(&self.incoming)
            .get(name)
            .map(|a| a.changes.subscribe())
    }

    /// Target, step 1: gets ready to receive twin `spec`: its components
    /// verified and compiled, its store cleared for the history to come.
    pub fn receive(&self, spec: TwinSpec) -> anyhow::Result<()> {
        spec.validate()?;
        let name = spec.name().to_string();
        self.exclusively(&name, || self.receive_now(&name, spec))
    }

    fn receive_now(&self, name: &str, spec: TwinSpec) -> anyhow::Result<()> {
        self.abandon_stale_arrival(name);
        // A second conductor moving the same twin here is refused: taking
        // the first one's place would leave that one's handover nowhere to
        // land.
        self.not_in_a_move(name)?;
        if lock(&self.twins).contains_key(name) {
            return Err(NodeError::Conflict(format!("twin `{name}` already runs here")).into());
        }
        let components = self.components(&spec, None)?;
        // The history copied ahead lands on a clean slate.
        self.store.write_now(vec![Op::Arriving {
            name: name.to_string(),
        }])?;
        let arriving = Incoming {
            spec,
            components,
            session: None,
            changes: ChangeFeed::default(),
            held: None,
            warm: None,
            announced: std::time::Instant::now(),
        };
        lock(&self.incoming).insert(name.to_string(), arriving);
        Ok(())
    }

    /// Forgets an arrival of twin `name` announced longer ago than the
    /// node's `arrival_timeout`: its conductor stopped before the end, and
    /// left it to refuse every later move here.
    fn abandon_stale_arrival(&self, name: &str) {
        let timeout = self.config.arrival_timeout;
        let stale = {
            let mut incoming = lock(&self.incoming);
            match incoming.get(name) {
                Some(arriving) if arriving.announced.elapsed() >= timeout => incoming.remove(name),
                _ => None,
            }
        };
        if let Some(stale) = stale {
            tracing::warn!(twin = %name, ?timeout, "a move of the twin here was announced and did not land within the arrival timeout; a new one replaces it");
            // Its broker session is the new arrival's too: closed, not
            // discarded.
            stale.close(self, false);
        }
    }

    /// Target, end of step 1: opens the arriving twin's MQTT session, whose
    /// messages wait for the twin to start. Again is a no-op.
    pub fn listen(&self, name: &str) -> anyhow::Result<()> {
        let spec = match lock(&self.incoming).get(name) {
            Some(arriving) if arriving.session.is_some() => return Ok(()),
            Some(arriving) => arriving.spec.clone(),
            None => return Err(NodeError::NotFound(format!("{name} (nothing is arriving)")).into()),
        };
        let mut session = self.connect(&spec, Subscribing::Confirmed)?;
        match lock(&self.incoming).get_mut(name) {
            Some(arriving) if arriving.session.is_none() => {
                session.changes = arriving.changes.clone();
                arriving.session = Some(session);
                Ok(())
            }
            // Refused or replaced meanwhile.
            _ => {
                session.link.close();
                Err(NodeError::NotFound(format!("{name} (nothing is arriving)")).into())
            }
        }
    }

    /// Source, step 1½: a running twin's history after `after`, as JSON
    /// lines in chunks (see [`crate::store::Store::history_lines`]), for
    /// the target to copy before the handover so that the pause carries
    /// only the rows written since.
    pub fn history_lines(
        &self,
        name: &str,
        after: Option<HistoryMark>,
        sink: impl FnMut(Vec<u8>) -> bool,
    ) -> anyhow::Result<Option<HistoryMark>> {
        if !lock(&self.twins).contains_key(name) {
            return Err(self.missing(name).into());
        }
        self.store.history_snapshot(name, after)?.lines(sink)
    }

    /// Source, step 1¾: a snapshot of a running twin (which keeps
    /// running) and its entanglement window, for the target to hold
    /// before the handover, whose bundle then carries only what changed
    /// since (see the `precopy` module). The node keeps what it sent until
    /// that handover, or until the twin stops.
    pub async fn base(&self, name: &str) -> Result<Bytes, NodeError> {
        let checkpoint = self.checkpoint_by(name, Job::Base).await?;
        let window = self.window(name);
        // Encoded and hashed off the async threads.
        let (sent, bytes) = tokio::task::spawn_blocking(move || Sent::new(checkpoint, window))
            .await
            .map_err(|e| NodeError::Refused(e.to_string()))?
            .map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        lock(&self.bases).insert(name.to_string(), sent);
        Ok(bytes.into())
    }

    /// Target, step 1¾: holds what was sent ahead of the handover, and
    /// restores it into an instance now, while the twin still runs on its
    /// source, so that the handover may carry only the messages to replay
    /// on it. Answers the digest of its snapshot, which the conductor
    /// passes to the source, and whether it was restored (if not, the
    /// handover carries the snapshot's changes).
    pub fn hold_base(&self, name: &str, bytes: Bytes) -> Result<(String, bool), NodeError> {
        let nothing = || NodeError::NotFound(format!("{name} (nothing is arriving)"));
        // Checked before reading what was sent (outside the lock, it may
        // be megabytes, and its restore takes a while), and again after,
        // when it is kept.
        let (spec, components) = lock(&self.incoming)
            .get(name)
            .map(|arriving| (arriving.spec.clone(), arriving.components.clone()))
            .ok_or_else(nothing)?;
        let held = Held::read(name, &bytes).map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        let digest = held.digest_hex();
        let origin = Origin::Checkpoint(held.checkpoint().clone());
        let warm = match self.run_guest(self.make_twin(&spec, &components, origin)) {
            Ok(twin) => Some(twin),
            Err(e) => {
                tracing::info!(twin = %name, "the handover will carry the state's changes, not messages to replay: the snapshot sent ahead does not restore here: {e:#}");
                None
            }
        };
        let restored = warm.is_some();
        let mut incoming = lock(&self.incoming);
        let arriving = incoming.get_mut(name).ok_or_else(nothing)?;
        arriving.held = Some(held);
        arriving.warm = warm;
        Ok((digest, restored))
    }

    /// Target, step 1½: stores history rows of a twin arriving.
    pub fn import_history(&self, name: &str, rows: Vec<HistoryRow>) -> anyhow::Result<()> {
        if !lock(&self.incoming).contains_key(name) {
            return Err(NodeError::NotFound(format!("{name} (nothing is arriving)")).into());
        }
        self.import(name, History::Rows(rows))
    }

    /// Target, step 2: the sequence number of the first message buffered,
    /// once one came.
    pub fn first_buffered(&self, name: &str) -> Result<Option<u64>, NodeError> {
        let (first, adapter, limits) = {
            let incoming = lock(&self.incoming);
            let arriving = incoming
                .get(name)
                .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
            let first = arriving
                .session
                .as_ref()
                .and_then(|session| session.first.get().cloned());
            (
                first,
                arriving.components.adapter.clone(),
                arriving.components.limits,
            )
        };
        let Some((topic, payload)) = first else {
            return Ok(None);
        };
        let refused = |e: String| NodeError::Refused(format!("decoding the first message: {e}"));
        let updates = self.run_guest(async {
            let mut decoder = AdapterInstance::new(&self.runtime, &adapter, name, limits)
                .await
                .map_err(|e| refused(format!("{e:#}")))?;
            decoder
                .decode(&topic, &payload)
                .await
                .map_err(|e| refused(e.to_string()))
        })?;
        Ok(updates.first().map(|u| u.seq))
    }

    /// Target, step 4: restores the bundle and starts the twin on what its
    /// session buffered.
    pub fn accept(&self, name: &str, reader: impl Read) -> anyhow::Result<()> {
        let bundle = Bundle::read(reader)?;
        // From the arrival's end to the twin's start, a spec applied here
        // would find neither.
        self.exclusively(name, || self.land(name, bundle))
    }

    fn land(&self, name: &str, bundle: Bundle) -> anyhow::Result<()> {
        // Timed from here: before, the bundle was still on its way.
        let started = std::time::Instant::now();
        let mut arriving = lock(&self.incoming)
            .remove(name)
            .ok_or_else(|| NodeError::NotFound(format!("{name} (nothing is arriving)")))?;
        let Some(session) = arriving.session.take() else {
            bail!("twin `{name}` is not listening to its device yet; nothing was started");
        };
        let restored = if bundle.spec == arriving.spec {
            self.arrived(&mut arriving, bundle.checkpoint, bundle.entanglement)
        } else {
            Err(anyhow::anyhow!(
                "the bundle's spec is not the one this node was told to receive"
            ))
        };
        let Arrived {
            twin,
            recovery,
            window,
        } = match restored {
            Ok(restored) => restored,
            Err(e) => {
                session.link.close();
                self.forget_session(&arriving.spec);
                return Err(e);
            }
        };
        // Its store was cleared when it started arriving and holds the
        // history copied ahead; the bundle brings the rest, normally a few
        // rows (a large history not copied ahead is stored first).
        let rows = match bundle.history {
            History::Rows(rows) => rows,
            history => {
                self.import(name, history)?;
                Vec::new()
            }
        };
        // Queued ahead of everything the worker will write (so of its MQTT
        // acknowledgements too), and awaited only once the worker runs. The
        // checkpoint received (or the base, and the messages replayed on
        // it, journalled) is the twin's first here: no second snapshot
        // delays its first update, and the store's writer encodes it.
        let (written, durable) = std::sync::mpsc::channel();
        let mut ops = vec![
            spec_op(&arriving.spec)?,
            Op::ImportHistory {
                name: name.to_string(),
                rows,
            },
            Op::Checkpoint {
                name: name.to_string(),
                checkpoint: recovery.checkpoint.clone(),
                through_seq: TwinState::of(&recovery.checkpoint)?.last_seq,
            },
        ];
        ops.extend(recovery.since.iter().filter_map(|updates| {
            let first = updates.first()?;
            Some(Op::Applied {
                name: name.to_string(),
                seq: first.seq,
                ts_ms: first.ts_ms,
                updates: updates.clone(),
                // Its history row came with the bundle.
                changes: Default::default(),
            })
        }));
        self.store.write(
            ops,
            Some(Box::new(move |result| {
                let _ = written.send(result);
            })),
        );
        let prepared = Prepared {
            components: arriving.components,
            twin: Start::Awake(twin),
            window,
        };
        let hosted = self.start(&arriving.spec, prepared, session, Some(recovery));
        lock(&self.twins).insert(name.to_string(), hosted);
        let left_for = lock(&self.moved).remove(name);
        tracing::info!(twin = %name, took = ?started.elapsed(), "twin arrived");
        // The source forgets the twin once this answers: answer only once
        // the twin is durable here. If it cannot be, it must not run here
        // while it resumes there.
        let stored = durable
            .recv()
            .unwrap_or_else(|_| Err("the store's writer stopped".into()));
        if let Err(e) = stored {
            if let Some(spec) = self.stop(name) {
                self.forget_session(&spec);
            }
            if let Some(to) = left_for {
                lock(&self.moved).insert(name.to_string(), to);
            }
            bail!("the twin started but could not be stored here ({e}); it was stopped");
        }
        Ok(())
    }

    /// The twin a migration's bundle brings: its checkpoint restored, its
    /// guest's changes applied to the snapshot sent ahead first, or the
    /// messages it carries replayed on that snapshot, restored ahead.
    fn arrived(
        &self,
        arriving: &mut Incoming,
        mut checkpoint: Checkpoint,
        window: Option<Window>,
    ) -> anyhow::Result<Arrived> {
        let window = window
            .map(|window| precopy::whole_window(window, arriving.held.as_ref()))
            .transpose()?;
        let (twin, recovery) = match checkpoint.take(precopy::GUEST_REPLAY_SECTION) {
            Some(section) => self.replayed(arriving, checkpoint, &section)?,
            None => {
                let checkpoint = Arc::new(precopy::whole(checkpoint, arriving.held.as_ref())?);
                let twin = self.run_guest(self.make_twin(
                    &arriving.spec,
                    &arriving.components,
                    Origin::Checkpoint(checkpoint.clone()),
                ))?;
                let since = Vec::new();
                (twin, Recovery { checkpoint, since })
            }
        };
        Ok(Arrived {
            twin,
            recovery,
            window,
        })
    }

    /// The twin restored ahead, with the messages of a `guest-replay`
    /// section replayed on it; refused unless that reaches the host-side
    /// state the source handed over (`host`), so that a model whose state
    /// is not a function of its updates alone fails the move rather than
    /// arrive different (the twin then resumes on its source).
    fn replayed(
        &self,
        arriving: &mut Incoming,
        host: Checkpoint,
        section: &[u8],
    ) -> anyhow::Result<(Twin, Recovery)> {
        ensure!(
            host.section(GUEST_SECTION).is_none()
                && host.section(precopy::GUEST_DELTA_SECTION).is_none(),
            "the bundle carries both messages to replay and the guest's state; it may carry one or the other"
        );
        let held = arriving.held.as_ref().context(
            "the bundle carries messages to replay on a snapshot sent ahead, but none was sent here",
        )?;
        let messages = held.replayed(section)?;
        let handed = TwinState::of(&host)?;
        let mut twin = arriving
            .warm
            .take()
            .context("the bundle carries messages to replay on the snapshot sent ahead, which did not restore here")?;
        let twin = self.run_guest(async move {
            for updates in &messages {
                let seq = updates.first().map_or(0, |u| u.seq);
                match twin.apply_message(updates).await {
                    Ok((Applied::Changed(_), _)) => {}
                    Ok((Applied::Duplicate { last_seq }, _)) => {
                        bail!("replaying message {seq}: the snapshot sent ahead has it already (it is at {last_seq})")
                    }
                    Err(e) => bail!("replaying message {seq}: {e}"),
                }
            }
            anyhow::Ok((twin, messages))
        });
        let (twin, messages) = twin?;
        let reached = twin.state();
        ensure!(
            *reached == handed,
            "replaying {} message(s) on the snapshot sent ahead reached update {:?} ({} applied), \
             not the source's update {:?} ({} applied) with the same properties",
            messages.len(),
            reached.last_seq,
            reached.updates_applied,
            handed.last_seq,
            handed.updates_applied
        );
        let recovery = Recovery {
            checkpoint: held.checkpoint().clone(),
            since: messages,
        };
        Ok((twin, recovery))
    }

    /// Target: forgets a twin that will not arrive after all; it can then
    /// never land here. One that landed already is not forgotten, and the
    /// answer says it runs here (409): a conductor that lost the landing's
    /// answer learns it here, and must not resume the twin on its source.
    /// A landing under way is waited for.
    pub fn refuse(&self, name: &str) -> Result<(), NodeError> {
        self.exclusively(name, || {
            if let Some(arriving) = lock(&self.incoming).remove(name) {
                arriving.close(self, true);
                Ok(())
            } else if lock(&self.twins).contains_key(name) {
                Err(NodeError::Conflict(format!(
                    "twin `{name}` has arrived and runs here"
                )))
            } else {
                Err(NodeError::NotFound(format!("{name} (nothing is arriving)")))
            }
        })
    }

    /// Hot-swaps a twin's model: the new component is fetched, verified,
    /// compiled and instantiated ahead; between two updates the old
    /// instance's state is restored into it. If the new model refuses the
    /// state, the old one keeps running and the error says why. `None`
    /// rolls back to the model before the last swap.
    pub async fn swap(
        self: &Arc<Self>,
        name: &str,
        to: Option<ComponentRef>,
    ) -> Result<SwapReport, NodeError> {
        let (jobs, spec, previous) = {
            let twins = lock(&self.twins);
            let hosted = twins.get(name).ok_or_else(|| self.missing(name))?;
            (
                hosted.jobs.clone(),
                hosted.spec.clone(),
                hosted.previous_model.clone(),
            )
        };
        let target = match to {
            Some(target) => target,
            None => previous.ok_or_else(|| {
                NodeError::Refused(format!(
                    "twin `{name}` has no earlier model to roll back to"
                ))
            })?,
        };
        let mut new_spec = spec.clone();
        new_spec.spec.model.component = target.clone();
        let components = {
            let node = self.clone();
            let new_spec = new_spec.clone();
            tokio::task::spawn_blocking(move || node.components(&new_spec, None))
                .await
                .map_err(|e| NodeError::Refused(e.to_string()))?
                .map_err(|e| NodeError::Refused(format!("{e:#}")))?
        };
        let (reply, answer) = oneshot::channel();
        jobs.send(Job::Swap(Box::new(SwapJob {
            model: components.model,
            reply,
        })))
        .await
        .map_err(|_| self.missing(name))?;
        let report = answer
            .await
            .map_err(|_| self.missing(name))?
            .map_err(NodeError::Refused)?;
        self.store
            .written(vec![
                spec_op(&new_spec).map_err(|e| NodeError::Refused(format!("{e:#}")))?,
            ])
            .await
            .map_err(|e| NodeError::Refused(format!("{e:#}")))?;
        if let Some(hosted) = lock(&self.twins).get_mut(name) {
            hosted.previous_model = Some(spec.spec.model.component.clone());
            hosted.spec = new_spec;
        }
        Ok(report)
    }
}

/// Starts streaming `bundle` out.
async fn stream(bundle: Bundle) -> Result<Outgoing, NodeError> {
    bundle
        .stream()
        .await
        .map_err(|e| NodeError::Refused(format!("{e:#}")))
}
