//! A client of a node's HTTP API, and the live migration it drives between
//! two nodes (the steps are in [`crate::node`]'s mobility module; this is
//! the conductor, used by `wasmtwin migrate` and the benchmarks).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::TryStreamExt;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::spec::TwinSpec;

/// A node's answer other than success: the request reached it and it said
/// no (a client error means asking again the same way will not help).
#[derive(Debug, thiserror::Error)]
#[error("{base} answered {status}: {reason}")]
pub struct Refused {
    /// The node's API.
    pub base: String,
    /// Its status code.
    pub status: reqwest::StatusCode,
    /// Its reason.
    pub reason: String,
}

/// The environment variable naming a CA certificate file (PEM) that every
/// wasmtwin HTTP client trusts besides the system's roots: the CA of the
/// certificates nodes and control planes serve with `--tls-cert`.
pub const CA_ENV: &str = "WASMTWIN_CA";

/// The environment variables naming the certificate (PEM, its chain) and
/// private key (PEM) wasmtwin's clients present when a server asks for
/// one (mutual TLS: `--tls-client-ca` on nodes and control planes). A
/// node or control plane presents its own `--tls-cert` instead.
pub const CLIENT_CERT_ENV: &str = "WASMTWIN_CLIENT_CERT";
/// See [`CLIENT_CERT_ENV`].
pub const CLIENT_KEY_ENV: &str = "WASMTWIN_CLIENT_KEY";

/// The certificate this process presents, once settled.
static IDENTITY: std::sync::OnceLock<Option<reqwest::Identity>> = std::sync::OnceLock::new();

/// Makes this process's clients present `chain` (PEM certificates) and
/// `key` (PEM): a node's or control plane's own certificate, so that its
/// peers can tell it from anyone holding a token. Call before any client
/// is built; later calls change nothing.
pub fn present(chain: &[u8], key: &[u8]) -> anyhow::Result<()> {
    let _ = IDENTITY.set(Some(client_identity(chain, key)?));
    Ok(())
}

/// A client identity from a PEM certificate chain and its PEM key.
fn client_identity(chain: &[u8], key: &[u8]) -> anyhow::Result<reqwest::Identity> {
    let pem = [chain, b"\n", key].concat();
    reqwest::Identity::from_pem(&pem)
        .context("the certificate and key cannot be used as a client identity")
}

/// The identity of [`present`], else of [`CLIENT_CERT_ENV`] and
/// [`CLIENT_KEY_ENV`] (read once; files that cannot be used are logged,
/// and servers that ask for a certificate then refuse the calls).
fn identity() -> Option<&'static reqwest::Identity> {
    IDENTITY
        .get_or_init(|| {
            let cert = std::env::var_os(CLIENT_CERT_ENV)?;
            let Some(key) = std::env::var_os(CLIENT_KEY_ENV) else {
                tracing::error!("{CLIENT_CERT_ENV} is set but {CLIENT_KEY_ENV} is not");
                return None;
            };
            let read = |file: &std::ffi::OsStr| {
                std::fs::read(file).with_context(|| format!("reading {}", file.to_string_lossy()))
            };
            match read(&cert).and_then(|cert| client_identity(&cert, &read(&key)?)) {
                Ok(identity) => Some(identity),
                Err(e) => {
                    tracing::error!("{CLIENT_CERT_ENV}, {CLIENT_KEY_ENV}: {e:#}");
                    None
                }
            }
        })
        .as_ref()
}

/// An HTTP client builder that trusts the CA of [`CA_ENV`] too, and
/// presents this process's certificate if it has one ([`present`]). The
/// CA file is read once per process (clients are built per call); one
/// that cannot be read or holds no certificate is logged, and HTTPS calls
/// to servers it would have vouched for then fail verification.
pub fn http_builder() -> reqwest::ClientBuilder {
    static ROOTS: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let Some(file) = std::env::var_os(CA_ENV) else {
            return Vec::new();
        };
        let roots = std::fs::read(&file)
            .map_err(anyhow::Error::from)
            .and_then(|pem| Ok(reqwest::Certificate::from_pem_bundle(&pem)?));
        match roots {
            Ok(roots) if !roots.is_empty() => roots,
            Ok(_) => {
                tracing::error!("{CA_ENV}={}: no certificate in it", file.to_string_lossy());
                Vec::new()
            }
            Err(e) => {
                tracing::error!("{CA_ENV}={}: {e:#}", file.to_string_lossy());
                Vec::new()
            }
        }
    });
    let builder = roots
        .iter()
        .fold(reqwest::Client::builder(), |builder, root| {
            builder.add_root_certificate(root.clone())
        });
    match identity() {
        Some(identity) => builder.identity(identity.clone()),
        None => builder,
    }
}

/// A node's API and the token to call it with.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl NodeClient {
    /// The API at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http_builder()
                // A redirect is an answer here (the twin moved), not
                // something to follow with our token.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` on the node, authenticated.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        let mut traced = reqwest::header::HeaderMap::new();
        crate::telemetry::inject(&mut traced);
        if !traced.is_empty() {
            request = request.headers(traced);
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; a non-success answer becomes an error quoting the
    /// node's reason.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching the node at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(body);
        Err(Refused {
            base: self.base.clone(),
            status,
            reason: reason.trim().to_string(),
        }
        .into())
    }

    async fn json(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let response = self.send(self.request(method, path)).await?;
        response.json().await.context("reading the node's answer")
    }

    /// Downloads the body of `request` into `into` as it comes, drawing a
    /// progress bar on a terminal; the bytes written.
    async fn download(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        into: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let mut response = self.send(request).await?;
        let bar = crate::registry::progress_bar(what, response.content_length());
        while let Some(chunk) = response.chunk().await.context("receiving the bundle")? {
            into.write_all(&chunk).context("storing the bundle")?;
            bar.inc(chunk.len() as u64);
        }
        into.flush().context("storing the bundle")?;
        bar.finish_and_clear();
        Ok(bar.position())
    }

    /// Creates or updates a twin from `spec`; the node's answer.
    pub async fn apply(&self, spec: &TwinSpec, replace: bool) -> anyhow::Result<Value> {
        let path = format!("/v1/twins/{}?replace={replace}", spec.name());
        let request = self.request(reqwest::Method::PUT, &path).json(spec);
        self.send(request)
            .await?
            .json()
            .await
            .context("reading the node's answer")
    }

    /// Stops twin `name` and forgets it.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/twins/{name}");
        self.send(self.request(reqwest::Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// The spec twin `name` runs under.
    pub async fn spec(&self, name: &str) -> anyhow::Result<TwinSpec> {
        let value = self
            .json(reqwest::Method::GET, &format!("/v1/twins/{name}/spec"))
            .await?;
        TwinSpec::parse(&value.to_string()).map_err(Into::into)
    }

    /// A checkpoint bundle of twin `name`, which keeps running, written
    /// into `into` as it streams; its length.
    pub async fn checkpoint(
        &self,
        name: &str,
        with_components: bool,
        into: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let path = format!("/v1/twins/{name}/checkpoint?components={with_components}");
        self.download(
            self.request(reqwest::Method::GET, &path),
            "checkpoint",
            into,
        )
        .await
    }

    /// Starts twin `name` on the node from `bundle`; with `adopt`, first
    /// applying what the broker still holds in the session of that lost
    /// node.
    pub async fn restore(
        &self,
        name: &str,
        bundle: impl Into<reqwest::Body>,
        replace: bool,
        adopt: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut path = format!("/v1/twins/{name}/checkpoint?replace={replace}");
        if let Some(from) = adopt {
            path.push_str(&format!("&adopt={from}"));
        }
        let request = self
            .request(reqwest::Method::PUT, &path)
            .header(reqwest::header::CONTENT_TYPE, crate::api::BUNDLE_TYPE)
            .body(bundle);
        self.send(request).await.map(drop)
    }

    /// Starts twin `name` on the node from the bundle in `file`, streamed
    /// with a progress bar.
    pub async fn restore_file(
        &self,
        name: &str,
        file: std::fs::File,
        replace: bool,
    ) -> anyhow::Result<()> {
        let len = file.metadata().ok().map(|m| m.len());
        let bar = crate::registry::progress_bar("restoring", len);
        let counted = bar.clone();
        let chunks = futures_util::stream::try_unfold(
            tokio::fs::File::from_std(file),
            |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = vec![0u8; 64 * 1024];
                let n = file.read(&mut chunk).await?;
                chunk.truncate(n);
                Ok::<_, std::io::Error>((n > 0).then_some((chunk, file)))
            },
        )
        .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
        let restored = self
            .restore(name, reqwest::Body::wrap_stream(chunks), replace, None)
            .await;
        bar.finish_and_clear();
        restored
    }

    /// Hot-swaps twin `name`'s model to `reference` (or back, with `None`).
    pub async fn swap(
        &self,
        name: &str,
        reference: Option<(&str, Option<&str>)>,
    ) -> anyhow::Result<Value> {
        let body = match reference {
            Some((reference, digest)) => json!({ "ref": reference, "digest": digest }),
            None => json!({ "rollback": true }),
        };
        let request = self
            .request(reqwest::Method::POST, &format!("/v1/twins/{name}/swap"))
            .json(&body);
        self.send(request)
            .await?
            .json()
            .await
            .context("reading the swap report")
    }
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Size of the bundle handed over.
    pub bundle_bytes: usize,
    /// The first sequence number the target buffered (so the last the
    /// source applied is the one before), if the device sent any.
    pub first_buffered: Option<u64>,
    /// From the source starting its handover to the target running the
    /// twin: the longest updates could wait.
    pub pause: Duration,
    /// The whole move.
    pub total: Duration,
}

/// The body of `response` as the body of another request, relayed as it
/// comes, with a progress bar of it.
fn relay(response: reqwest::Response, what: &str) -> (reqwest::Body, ProgressBar) {
    let bar = crate::registry::progress_bar(what, response.content_length());
    let counted = bar.clone();
    let chunks = response
        .bytes_stream()
        .inspect_ok(move |chunk| counted.inc(chunk.len() as u64));
    (reqwest::Body::wrap_stream(chunks), bar)
}

/// Streams what `GET from_path` answers on `from` into `PUT to_path` on
/// `to`, as it comes, with a progress bar saying `what`; `to`'s answer.
async fn relay_between(
    (from, from_path): (&NodeClient, &str),
    (to, to_path): (&NodeClient, &str),
    what: &str,
) -> anyhow::Result<Value> {
    let source = from
        .send(from.request(reqwest::Method::GET, from_path))
        .await?;
    let (relayed, bar) = relay(source, what);
    let answer = to
        .send(to.request(reqwest::Method::PUT, to_path).body(relayed))
        .await;
    bar.finish_and_clear();
    answer?.json().await.context("reading the target's answer")
}

/// Streams twin `name`'s history from `from` to `to`, which is receiving
/// it; the mark of the last row copied, if there was any.
async fn copy_history(
    name: &str,
    from: &NodeClient,
    to: &NodeClient,
) -> anyhow::Result<Option<String>> {
    let answer = relay_between(
        (from, &format!("/v1/twins/{name}/history/rows")),
        (to, &format!("/v1/migrations/{name}/history")),
        "copying history",
    )
    .await?;
    Ok(answer["through"].as_str().map(String::from))
}

/// What the target holds of the state sent ahead of a handover.
struct Ahead {
    /// The snapshot's digest, as the target saw it.
    digest: String,
    /// Whether the target restored it, so that the handover may carry the
    /// messages to replay on it.
    restored: bool,
}

/// Sends the target a snapshot of twin `name` to hold ahead of the
/// handover, whose bundle then carries only what changed since. Should
/// this fail (a node of an earlier release, say), the handover carries the
/// whole snapshot.
async fn copy_base(name: &str, from: &NodeClient, to: &NodeClient) -> Option<Ahead> {
    let copied = relay_between(
        (from, &format!("/v1/twins/{name}/base")),
        (to, &format!("/v1/migrations/{name}/base")),
        "sending the state ahead",
    )
    .await
    .and_then(|answer| {
        let digest = answer["base"]
            .as_str()
            .map(String::from)
            .context("the target's answer names no snapshot")?;
        Ok(Ahead {
            digest,
            // A target of an earlier release does not say: it cannot.
            restored: answer["replay"].as_bool().unwrap_or(false),
        })
    });
    match copied {
        Ok(ahead) => Some(ahead),
        Err(e) => {
            tracing::warn!(twin = %name, "the handover will carry the whole state: sending it ahead failed: {e:#}");
            None
        }
    }
}

/// Moves twin `name` from node `from` to node `to`, live: the target
/// subscribes and buffers before the source stops and copies the twin's
/// history and a snapshot of its state while it still runs there; the
/// source applies everything up to the target's first buffered message and
/// hands over the rest, its state as the messages it applied since that
/// snapshot (which the target restored meanwhile, and replays them on);
/// the target goes on from its buffer. If a step fails, the twin stays (or
/// resumes) on the source and the error says which.
pub async fn migrate(name: &str, from: &NodeClient, to: &NodeClient) -> anyhow::Result<Migration> {
    migrate_observed(name, from, to, Precopy::Replay, async |_| {}).await
}

/// Whether a handover was refused because the twin is not the source's to
/// hand over: another move holds it (409: a handover is under way; 503:
/// one has stopped it), or it is not there (404, or moved: a redirect).
/// The source stopped nothing for this one.
fn held_elsewhere(e: &anyhow::Error) -> bool {
    use reqwest::StatusCode;
    e.downcast_ref::<Refused>().is_some_and(|r| {
        matches!(
            r.status,
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::NOT_FOUND
        ) || r.status.is_redirection()
    })
}

/// Whether a migration sends the twin's state ahead of the handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precopy {
    /// A snapshot goes ahead and the target restores it; the handover
    /// carries the messages applied since, which the target replays on it
    /// (or, if something else changed the guest meanwhile, the snapshot's
    /// changes): no snapshot and no restore inside the pause.
    Replay,
    /// A snapshot goes ahead, and the handover carries only the changes
    /// since: a shorter pause, for a second snapshot and transfer before it.
    State,
    /// The handover carries the whole state.
    Nothing,
}

/// A step of a live migration, reported as it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The target has verified and compiled the components, copied the
    /// history, and listens to the device; the twin still runs on the
    /// source.
    TargetReady,
    /// The source is stopping the twin and handing it over.
    HandingOver,
}

/// [`migrate`], awaiting `observe` at each [`Step`] (to report progress,
/// or to get ready for the twin's arrival).
pub async fn migrate_observed(
    name: &str,
    from: &NodeClient,
    to: &NodeClient,
    precopy: Precopy,
    mut observe: impl AsyncFnMut(Step),
) -> anyhow::Result<Migration> {
    let started = Instant::now();
    let spec = from.spec(name).await.context("reading the twin's spec")?;
    let spec_json = serde_json::to_string(&spec)?;
    let arriving = format!("/v1/migrations/{name}");
    // Any failure after the target was told: it forgets the arrival.
    let refuse_arrival = async || {
        let _ = withdraw_arrival(name, to).await;
    };
    to.send(to.request(reqwest::Method::PUT, &arriving).body(spec_json))
        .await
        .context("the target cannot host the twin; nothing changed")?;

    // The target listens to the device last, so that little of what it
    // buffers is what the source still applies.
    let copied = async {
        let copied = copy_history(name, from, to).await?;
        let base = match precopy {
            Precopy::Replay | Precopy::State => copy_base(name, from, to).await,
            Precopy::Nothing => None,
        };
        let listen = format!("{arriving}/session");
        to.send(to.request(reqwest::Method::POST, &listen)).await?;
        anyhow::Ok((copied, base))
    };
    let (copied, base) = match copied.await {
        Ok(copied) => copied,
        Err(e) => {
            refuse_arrival().await;
            return Err(e.context(format!(
                "getting the target ready failed; the twin stays on {}",
                from.base
            )));
        }
    };

    observe(Step::TargetReady).await;

    // Wait (about three update periods) for the target's buffer to start,
    // so the source knows where to stop.
    let rate = spec.spec.requirements.expected_rate_hz.max(0.1);
    let wait = Duration::from_secs_f64((3.0 / rate).clamp(0.05, 5.0));
    let waiting = Instant::now();
    let mut first_buffered = None;
    while waiting.elapsed() < wait {
        let answer = to.json(reqwest::Method::GET, &arriving).await;
        if let Some(seq) = answer.as_ref().ok().and_then(|v| v["firstSeq"].as_u64()) {
            first_buffered = Some(seq);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    observe(Step::HandingOver).await;
    let paused_at = Instant::now();
    let mut handover = from.request(reqwest::Method::POST, &format!("/v1/twins/{name}/handover"));
    if let Some(seq) = first_buffered {
        handover = handover.query(&[("until", seq.saturating_sub(1))]);
    }
    if let Some(mark) = &copied {
        handover = handover.query(&[("historyAfter", mark)]);
    }
    if let Some(ahead) = &base {
        handover = handover.query(&[("base", &ahead.digest)]);
        if ahead.restored && precopy == Precopy::Replay {
            handover = handover.query(&[("replay", true)]);
        }
    }
    let bundle = match from.send(handover).await {
        Ok(bundle) => bundle,
        Err(e) if held_elsewhere(&e) => {
            // Resuming it would end that other move: its twin would run on
            // its source, and land on its target too.
            refuse_arrival().await;
            return Err(e.context(format!(
                "{} did not hand the twin over: it is in another move, or not there",
                from.base
            )));
        }
        Err(e) => {
            // Had the source stopped the twin before failing, it resumes
            // (a twin still running there is left as it is).
            refuse_arrival().await;
            let _ = resume_on_source(name, from).await;
            return Err(e.context(format!(
                "the handover failed; the twin stays on {}",
                from.base
            )));
        }
    };
    // The bundle streams from the source to the target as it comes: no
    // second full transfer inside the pause.
    let (relayed, bar) = relay(bundle, "handing over");
    let accepted = to
        .send(
            to.request(reqwest::Method::POST, &arriving)
                .header(reqwest::header::CONTENT_TYPE, crate::api::BUNDLE_TYPE)
                .body(relayed),
        )
        .await;
    bar.finish_and_clear();
    let bundle_bytes = usize::try_from(bar.position()).unwrap_or(usize::MAX);
    if let Err(e) = accepted {
        match landing(name, to, &e).await {
            // Its answer was lost on the way; the twin runs there.
            Landing::Landed => tracing::warn!(
                twin = %name,
                "the target's answer to the handover was lost ({e:#}), but it says the twin runs there"
            ),
            Landing::Not => return Err(resume_after(e, name, from).await),
            Landing::Unknown(why) => {
                return Err(e.context(format!(
                    "the target's answer to the handover was lost, and it has not said since whether \
                     the twin landed ({why:#}). The twin stays stopped on {from}, so as not to run on \
                     both nodes. Once {to} answers, end the move with `wasmtwin migrate {name} \
                     --from {from} --to {to} --end`",
                    from = from.base,
                    to = to.base,
                )));
            }
        }
    }
    let pause = paused_at.elapsed();
    record_moved(name, from, to)
        .await
        .context("the twin runs on the target, but the source could not record the move")?;
    Ok(Migration {
        bundle_bytes,
        first_buffered,
        pause,
        total: started.elapsed(),
    })
}

/// Withdraws twin `name`'s arrival on `to`: it can no longer land there
/// (refused with 409 if it runs there already).
async fn withdraw_arrival(name: &str, to: &NodeClient) -> anyhow::Result<reqwest::Response> {
    to.send(to.request(reqwest::Method::DELETE, &format!("/v1/migrations/{name}")))
        .await
}

/// Resumes twin `name` on its source `from`; asked only of a twin whose
/// bundle the target never got, or whose arrival there is withdrawn: it
/// cannot land there too.
async fn resume_on_source(name: &str, from: &NodeClient) -> anyhow::Result<()> {
    let resume = format!("/v1/twins/{name}/resume?withdrawn=true");
    from.send(from.request(reqwest::Method::POST, &resume))
        .await
        .map(drop)
}

/// Records on `from` that twin `name` runs on `to` now.
async fn record_moved(name: &str, from: &NodeClient, to: &NodeClient) -> anyhow::Result<()> {
    let moved = from
        .request(reqwest::Method::POST, &format!("/v1/twins/{name}/moved"))
        .json(&json!({ "to": to.base }));
    from.send(moved).await.map(drop)
}

/// What the target's answer to a withdrawn arrival says: whether the twin
/// runs there (409), or does not and never will (a success, or 404); the
/// error if it said neither.
fn landed(answer: anyhow::Result<reqwest::Response>) -> anyhow::Result<bool> {
    match answer {
        Ok(_) => Ok(false),
        Err(e) => match e.downcast_ref::<Refused>().map(|r| r.status) {
            Some(reqwest::StatusCode::CONFLICT) => Ok(true),
            Some(reqwest::StatusCode::NOT_FOUND) => Ok(false),
            _ => Err(e),
        },
    }
}

/// Where a move ended by [`end_move`] left its twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It runs on the target; the source has recorded the move.
    OnTarget,
    /// It did not land, and now never will; it runs on the source.
    OnSource,
}

/// Ends a move of twin `name` from `from` to `to` whose conductor stopped
/// before the end, or which a lost answer left with the twin stopped on its
/// source: the arrival on `to` is withdrawn; if the target refuses, the
/// twin runs there and `from` records the move; else it resumes on `from`.
/// Nothing changes if the target does not say which.
pub async fn end_move(name: &str, from: &NodeClient, to: &NodeClient) -> anyhow::Result<Ended> {
    let landed = landed(withdraw_arrival(name, to).await).with_context(|| {
        format!(
            "{} did not say whether the twin runs there, so the move cannot end yet; nothing changed",
            to.base
        )
    })?;
    if landed {
        let recorded = record_moved(name, from, to).await;
        // A source that redirects has recorded the move already: the move
        // ended before (this command run twice, or its conductor finished).
        let ended_before = recorded
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<Refused>())
            .is_some_and(|r| r.status == reqwest::StatusCode::PERMANENT_REDIRECT);
        if !ended_before {
            recorded.with_context(|| {
                format!(
                    "the twin runs on {}, but {} could not record the move",
                    to.base, from.base
                )
            })?;
        }
        return Ok(Ended::OnTarget);
    }
    resume_on_source(name, from).await.with_context(|| {
        format!(
            "the arrival on {} is withdrawn, but the twin could not resume on {}",
            to.base, from.base
        )
    })?;
    Ok(Ended::OnSource)
}

/// Resumes on the source a twin that did not land on the target: the
/// migration's error, `failed`, with what became of the twin.
async fn resume_after(failed: anyhow::Error, name: &str, from: &NodeClient) -> anyhow::Error {
    match resume_on_source(name, from).await {
        Ok(_) => failed.context(format!(
            "the bundle did not reach the target or the target could not start the twin; it resumed on {}",
            from.base
        )),
        Err(r) => failed.context(format!(
            "the bundle did not reach the target or the target could not start the twin, and resuming it on {} failed too ({r:#})",
            from.base
        )),
    }
}

/// Whether a twin whose bundle was sent landed on the target.
enum Landing {
    Landed,
    /// Not, and it never will: its arrival is withdrawn.
    Not,
    /// The target has not said; the error says why.
    Unknown(anyhow::Error),
}

/// How long a conductor that lost the target's answer to a bundle asks
/// the target whether the twin landed, before it leaves the question to
/// its user.
const ASK_LANDING_WITHIN: Duration = Duration::from_secs(30);

/// After the bundle's `POST` to `to` failed with `failed`: whether the
/// twin landed anyway. A status is the target's word that it did not, and
/// a connection never made sent nothing. Any other failure may have lost
/// the answer after the twin landed (the connection cut, or the target
/// gone, once it had read the bundle), so the arrival is withdrawn: the
/// target refuses that if the twin runs there already, and the twin cannot
/// land after it. Resuming the twin on its source without asking could run
/// it on both nodes.
async fn landing(name: &str, to: &NodeClient, failed: &anyhow::Error) -> Landing {
    let withdraw = || withdraw_arrival(name, to);
    let never_sent = failed
        .chain()
        .filter_map(|cause| cause.downcast_ref::<reqwest::Error>())
        .any(reqwest::Error::is_connect);
    if failed.downcast_ref::<Refused>().is_some() || never_sent {
        let _ = withdraw().await;
        return Landing::Not;
    }
    let asking = Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        let why = match landed(withdraw().await) {
            Ok(true) => return Landing::Landed,
            Ok(false) => return Landing::Not,
            // Unreachable, or failing on its own: ask again.
            Err(e) => e,
        };
        if asking.elapsed() >= ASK_LANDING_WITHIN {
            return Landing::Unknown(why);
        }
        tracing::warn!(twin = %name, "asking the target whether the twin landed: {why:#}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
