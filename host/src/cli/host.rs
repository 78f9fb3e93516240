//! `wasmtwin host`: the long-running node, and the pieces `up` reuses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use wasmtwin::api::{self, Auth};
use wasmtwin::node::Node;
use wasmtwin::physical::BrokerAddress;
use wasmtwin::spec::Ceilings;
use wasmtwin::store::Store;

/// How the management and digital APIs are protected.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Bearer token the APIs require (also `WASMTWIN_TOKEN`).
    #[arg(long, env = "WASMTWIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Accept the tokens of this file instead, each with a role (reader,
    /// operator, admin) and maybe a set of twins; read again when it
    /// changes (`wasmtwin token create|revoke` edit it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "token_file"])]
    tokens: Option<PathBuf>,
    /// Serve the APIs without authentication (local development only).
    #[arg(long)]
    insecure_dev: bool,
}

impl AuthArgs {
    /// The configured authentication; a token is required unless
    /// `--insecure-dev`, or `generate` makes one.
    pub fn resolve(&self, generate: bool) -> anyhow::Result<Auth> {
        if self.insecure_dev {
            tracing::warn!(
                "THE API IS OPEN TO ANYONE WHO CAN REACH IT (--insecure-dev); never do this outside development"
            );
            return Ok(Auth::Open);
        }
        if let Some(file) = &self.tokens {
            return Ok(Auth::Tokens(wasmtwin::api::roles::Tokens::open(file)?));
        }
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?
                .trim()
                .to_string(),
            (None, None) if generate => new_token()?,
            (None, None) => anyhow::bail!(
                "no API token: pass --token, --token-file or WASMTWIN_TOKEN (or --insecure-dev)"
            ),
        };
        if token.len() < 16 {
            anyhow::bail!("the API token must be at least 16 characters");
        }
        Ok(Auth::Token(token))
    }
}

/// Keeps a token file's tokens current while the server runs.
pub fn watch_tokens(auth: &Auth) {
    if let Auth::Tokens(tokens) = auth {
        tokio::spawn(tokens.clone().watch(std::time::Duration::from_secs(2)));
    }
}

/// 32 random bytes in hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Reads a PEM file of CA certificates.
fn read_pem(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read(file).with_context(|| format!("reading the CA file {}", file.display()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        anyhow::bail!("{} is not a PEM file", file.display());
    }
    Ok(pem)
}

/// How the node logs in to its MQTT brokers.
#[derive(Debug, Args)]
pub struct MqttArgs {
    /// The MQTT broker twins use unless their spec names one
    /// (`mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS).
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: BrokerAddress,
    /// User name to log in to the broker with.
    #[arg(long, value_name = "NAME", env = "WASMTWIN_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// File holding the broker password (also `WASMTWIN_MQTT_PASSWORD`).
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that may sign the broker's TLS
    /// certificate [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    mqtt_ca: Option<PathBuf>,
}

impl MqttArgs {
    /// The broker address with its login and trust.
    pub fn resolve(&self) -> anyhow::Result<BrokerAddress> {
        let mut broker = self.mqtt.clone();
        if let Some(user) = &self.mqtt_username {
            let password = match &self.mqtt_password_file {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading the MQTT password file {}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => std::env::var("WASMTWIN_MQTT_PASSWORD").map_err(|_| {
                    anyhow::anyhow!(
                        "--mqtt-username needs a password: --mqtt-password-file or WASMTWIN_MQTT_PASSWORD"
                    )
                })?,
            };
            broker.credentials = Some((user.clone(), password));
        }
        if let Some(file) = &self.mqtt_ca {
            if !broker.tls {
                anyhow::bail!("--mqtt-ca needs an mqtts:// broker URL");
            }
            broker.ca_pem = Some(read_pem(file)?);
        }
        Ok(broker)
    }
}

/// Arguments of `wasmtwin host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Address of the HTTP APIs.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Where the node keeps its twins (specs, checkpoints, history); the
    /// twins found there are resumed at start.
    #[arg(long, value_name = "DIR", default_value = "wasmtwin-data")]
    data: PathBuf,
    /// The node's name, part of its MQTT client ids.
    #[arg(long, default_value = "node")]
    name: String,
    #[command(flatten)]
    trust: super::TrustArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// PT messages a twin may have waiting before its session stops reading.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Event streams (`/stream`, `/events/…`, `/properties/…/observe`) a
    /// twin may have open at once; more get 503.
    #[arg(long, default_value_t = wasmtwin::node::DEFAULT_MAX_SUBSCRIBERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_subscribers: usize,
    #[command(flatten)]
    inputs: InputArgs,
    /// Digital and management requests served at once; beyond this, history
    /// queries are shed first, then reads, then actions (503 + Retry-After).
    #[arg(long, default_value_t = DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
    #[command(flatten)]
    connections: ConnectionArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    ceilings: CeilingArgs,
    /// A directory local component paths in specs may name (repeat for
    /// more); without one, components come from registries only.
    #[arg(long = "component-dir", value_name = "DIR")]
    component_dirs: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    membership: MembershipArgs,
    /// The fuel one CPU-second burns on this machine, which turns twins'
    /// CPU shares (`spec.resources.cpu`) into fuel rates. Without it the
    /// node measures it as it starts (about 150 ms) and logs the figure;
    /// give it for reproducible shares across machines or runs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    fuel_per_cpu_second: Option<u64>,
    /// A twin with no message, action or other work for this long
    /// hibernates: its Wasm instances are dropped and its state kept as its
    /// last checkpoint, until the next message, action or swap wakes it
    /// (reads do not). Its entanglement is measured all along. A duration
    /// (`90s`, `5m`), or `never`.
    #[arg(long, value_name = "DURATION", value_parser = parse_hibernate_after,
          default_value_t = Hibernation(Some(wasmtwin::node::DEFAULT_HIBERNATE_AFTER)))]
    hibernate_after: Hibernation,
    /// Keep a sleeping twin's broker connection open. By default a sleeping
    /// twin that takes QoS 1 messages parks its session: it disconnects,
    /// the broker keeps what arrives for it, and one connection of the
    /// node (its doorbell) wakes it. Parked, a twin holds no socket and no
    /// MQTT client; waking it takes one more connection to the broker.
    #[arg(long)]
    keep_sessions_asleep: bool,
    /// How the node's twins hold their broker sessions: `twin`, a
    /// persistent session and connection of its own for each twin; or
    /// `node`, one shared session per broker for all of them, each
    /// message kept in the node's store (its inbox) before the broker's
    /// acknowledgement, until its twin applies it. See
    /// docs/broker-sessions.md. Changing it on a node that holds twins
    /// leaves what the broker kept in the other kind of session there.
    #[arg(long, value_enum, default_value = "twin", value_name = "KIND")]
    broker_session: BrokerSession,
    /// With `--broker-session node`: the most messages the node keeps for
    /// one twin that has not applied them yet (a twin far behind, or
    /// stuck); more are dropped and counted
    /// (`wasmtwin_node_inbox_dropped_total`), as a broker drops what a
    /// session's queue has no room for.
    #[arg(long, default_value_t = wasmtwin::node::DEFAULT_INBOX_MAX, value_name = "MESSAGES",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    inbox_max: usize,
    /// Twins of this node take turns on a few instances of each adapter
    /// component (eight per thread), each turn under the twin's own
    /// limits, instead of holding one each while awake: about 24 KiB less
    /// an awake twin. Share only adapters that keep nothing between
    /// calls, or what one twin's payload left would reach another's
    /// (docs/security.md).
    #[arg(long)]
    share_adapters: bool,
    /// How long a move of a twin to this node may stay announced and not
    /// landed before a new move of that twin here replaces it (its
    /// conductor stopped answering); until then a second move is refused.
    /// A duration (`90s`, `10m`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "10m")]
    arrival_timeout: Duration,
}

/// See `--broker-session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BrokerSession {
    /// One session per twin.
    Twin,
    /// One session per node and broker.
    Node,
}

/// `--hibernate-after`: a delay, or never.
#[derive(Debug, Clone, Copy)]
struct Hibernation(Option<Duration>);

impl std::fmt::Display for Hibernation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(delay) => write!(f, "{}", humantime::format_duration(delay)),
            None => f.write_str("never"),
        }
    }
}

fn parse_hibernate_after(text: &str) -> Result<Hibernation, String> {
    if text == "never" {
        return Ok(Hibernation(None));
    }
    match humantime::parse_duration(text) {
        Ok(delay) if delay.is_zero() => Err("must be above zero (or `never`)".into()),
        Ok(delay) => Ok(Hibernation(Some(delay))),
        Err(e) => Err(format!(
            "{e}: give a duration such as `90s` or `5m`, or `never`"
        )),
    }
}

/// Whether, and as what, the node joins a control plane.
#[derive(Debug, Args)]
pub struct MembershipArgs {
    /// A control plane to join (`wasmtwin control`): the node reports to it
    /// by heartbeat and takes twins from it.
    #[arg(long, value_name = "URL")]
    control: Option<String>,
    /// The token the control plane's API wants (also
    /// `WASMTWIN_CONTROL_TOKEN`) [default: this node's own token].
    #[arg(long, env = "WASMTWIN_CONTROL_TOKEN", hide_env_values = true)]
    control_token: Option<String>,
    /// Where on the continuum the node is.
    #[arg(long, value_parser = ["edge", "mec", "cloud"], default_value = "edge")]
    zone: String,
    /// Who runs the node: its trust domain (a plant, a provider, a region).
    #[arg(long, default_value = "default", value_parser = domain_name)]
    domain: String,
    /// Labels the control plane shows and may select on, `key=value`
    /// (repeat, or separate with commas).
    #[arg(long, value_name = "K=V", value_delimiter = ',', value_parser = label)]
    labels: Vec<(String, String)>,
    /// This node's API as the control plane should call it [default:
    /// http://ADDRESS of --http].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// Milliseconds between heartbeats.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    heartbeat_ms: u64,
}

fn domain_name(text: &str) -> Result<String, String> {
    if wasmtwin::spec::is_dns_label(text) {
        Ok(text.to_string())
    } else {
        Err("a domain is a DNS label: lower-case letters, digits and `-`".into())
    }
}

fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

impl MembershipArgs {
    /// The membership these flags ask for, if any; `http` is the node's
    /// API address, served over HTTPS if `https`, and `token` its own token.
    pub fn resolve(
        &self,
        http: SocketAddr,
        https: bool,
        token: Option<&str>,
    ) -> Option<wasmtwin::node::membership::Membership> {
        let scheme = if https { "https" } else { "http" };
        let control = self.control.clone()?;
        Some(wasmtwin::node::membership::Membership {
            control,
            token: self.control_token.clone().or(token.map(String::from)),
            zone: self.zone.clone(),
            domain: self.domain.clone(),
            labels: self.labels.iter().cloned().collect(),
            url: self
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{http}")),
            every: Duration::from_millis(self.heartbeat_ms),
        })
    }
}

/// How the node pulls `oci://` components. Credentials come from
/// WASMTWIN_REGISTRY_USERNAME and WASMTWIN_REGISTRY_PASSWORD, else the
/// docker configuration, as for `wasmtwin pull`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// A registry (`HOST[:PORT]`) to reach over plain HTTP (a local or test
    /// registry only; repeat for more).
    #[arg(long = "registry-insecure", value_name = "HOST[:PORT]")]
    insecure_hosts: Vec<String>,
    /// PEM file of a CA that may sign registries' certificates, besides
    /// the system's roots.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// The pull options these flags set.
    pub fn resolve(&self) -> anyhow::Result<wasmtwin::registry::Options> {
        let ca_pem = self.registry_ca.as_deref().map(read_pem).transpose()?;
        Ok(wasmtwin::registry::Options {
            insecure_hosts: self.insecure_hosts.clone(),
            ca_pem,
            ..Default::default()
        })
    }
}

/// The size limits on what clients send (413 or 400 beyond them).
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Largest twin spec accepted (`apply`, a migration's spec), e.g. `1MiB`.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = size)]
    max_spec_size: usize,
    /// Largest action input accepted.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = size)]
    max_action_size: usize,
    /// Largest checkpoint bundle or history copy accepted.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = size)]
    max_bundle_size: usize,
    /// Most points one history query may ask for.
    #[arg(long, value_name = "N", default_value_t = wasmtwin::input::InputLimits::default().history_points,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_history_points: usize,
}

impl InputArgs {
    fn resolve(&self) -> wasmtwin::input::InputLimits {
        wasmtwin::input::InputLimits {
            spec_bytes: self.max_spec_size,
            action_bytes: self.max_action_size,
            bundle_bytes: self.max_bundle_size,
            history_points: self.max_history_points,
        }
    }
}

/// A size such as `512KiB`, `1MiB` or `4096`, at least one byte.
pub(super) fn size(text: &str) -> Result<usize, String> {
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("`{text}` is not a size like 512KiB or 1MiB: {e}"))?
        .as_u64();
    match usize::try_from(bytes) {
        Ok(0) => Err("a size of 0 would refuse everything".into()),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err(format!("`{text}` is too large")),
    }
}

/// HTTPS on the APIs.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Serve the APIs over HTTPS with this certificate chain (PEM); clients
    /// trust its CA (wasmtwin's own: `WASMTWIN_CA`). This process's own
    /// calls to nodes and control planes present it as their client
    /// certificate (issue it for serverAuth and clientAuth).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: ask clients for a certificate signed by these CAs (PEM).
    /// The routes that move a twin's state in or out of a node, and
    /// heartbeats, then refuse a caller without one (403), token or not;
    /// other routes still take a token alone.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// How the APIs are served over TLS.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Clients are asked for certificates (`--tls-client-ca`).
    asks_peers: bool,
}

impl TlsArgs {
    /// The TLS these flags ask for, if any; this process's clients present
    /// the certificate from then on.
    pub fn resolve(&self) -> anyhow::Result<Option<Tls>> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, file: &Path| {
            std::fs::read(file).with_context(|| format!("reading {flag} {}", file.display()))
        };
        let certificates =
            |flag: &str, file: &Path, pem: &[u8]| -> anyhow::Result<Vec<CertificateDer>> {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!("reading the certificates in {flag} {}", file.display())
                    })?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "{flag} {}: no certificate in it",
                    file.display()
                );
                Ok(certs)
            };
        // Read once: served, and presented by this process's clients.
        let cert_pem = read("--tls-cert", cert)?;
        let chain = certificates("--tls-cert", cert, &cert_pem)?;
        let key_pem = read("--tls-key", key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("reading the private key in --tls-key {}", key.display()))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.tls_client_ca {
            None => builder.with_no_client_auth(),
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in certificates("--tls-client-ca", file, &read("--tls-client-ca", file)?)? {
                    roots.add(ca).with_context(|| {
                        format!(
                            "--tls-client-ca {}: a certificate is not a usable CA",
                            file.display()
                        )
                    })?;
                }
                // Asked for, not demanded: readers and dashboards still come
                // with a token alone; the routes that need a peer check.
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .allow_unauthenticated()
                    .build()
                    .context("--tls-client-ca")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, private).context(
            "--tls-cert and --tls-key: the key does not fit the certificate, or is not supported",
        )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        wasmtwin::client::present(&cert_pem, &key_pem)
            .context("--tls-cert and --tls-key as this process's client certificate")?;
        Ok(Some(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            asks_peers: self.tls_client_ca.is_some(),
        }))
    }
}

/// How many HTTP connections the node keeps, and for how long.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// HTTP connections open at once; beyond this, new connections are
    /// closed as soon as they are accepted.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Milliseconds a client may take to send a request's headers, and
    /// that a kept-alive connection may stay idle, before it is closed.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
}

impl ConnectionArgs {
    /// The limits these flags set.
    pub fn resolve(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
        }
    }
}

/// How the node treats HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed at once.
    pub max_connections: u32,
    /// How long a request's headers may take to arrive, counted from when
    /// the connection opened or its previous answer went out (so it is
    /// also the keep-alive idle timeout).
    pub header_timeout: Duration,
}

/// How long, after Ctrl-C or SIGTERM, requests in flight may take to
/// finish; a change stream never does.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The most any twin on the node may ask for; specs asking more are
/// refused with the field and the flag.
#[derive(Debug, Args)]
pub struct CeilingArgs {
    /// Largest `spec.resources.fuelPerUpdate` a twin may ask for.
    #[arg(long, value_name = "FUEL", default_value_t = Ceilings::default().limits.fuel_per_call)]
    max_fuel_per_update: u64,
    /// Largest `spec.resources.memory` a twin may ask for.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    max_memory: bytesize::ByteSize,
    /// Largest `spec.resources.deadlineMs`: no call into a twin runs longer,
    /// so stopping or deleting a twin never waits longer either.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    max_deadline_ms: u64,
    /// Largest `spec.physical.maxPayload` a twin may ask for.
    #[arg(long, value_name = "SIZE", default_value = "16MiB")]
    max_payload: bytesize::ByteSize,
}

impl CeilingArgs {
    /// The ceilings these flags set.
    pub fn resolve(&self) -> Ceilings {
        Ceilings {
            limits: wasmtwin::runtime::Limits {
                fuel_per_call: self.max_fuel_per_update,
                memory_bytes: self.max_memory.as_u64(),
                deadline: Duration::from_millis(self.max_deadline_ms),
            },
            payload_bytes: self.max_payload.as_u64(),
        }
    }
}

/// Requests in flight a node admits unless told otherwise.
pub const DEFAULT_MAX_REQUESTS: usize = 256;

/// Serves `node` on `http` until Ctrl-C or SIGTERM.
///
/// Each connection gets a header-read timeout (which is also its idle
/// timeout between requests) and takes one of `limits.max_connections`
/// places, so idle or slow clients cannot hold the node's file descriptors:
/// hyper's HTTP/1 connection builder, because `axum::serve` has neither.
pub async fn serve(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    auth: Auth,
    max_requests: usize,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    audit: Option<Arc<wasmtwin::control::history::History>>,
) -> anyhow::Result<()> {
    let evaluator = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            evaluator.evaluate_all();
        }
    });
    let app = api::router(node, auth, max_requests, audit);
    serve_router(app, listener, limits, tls).await
}

/// Serves `app` on `listener` until Ctrl-C or SIGTERM, with the
/// connection limits of [`serve`], over TLS with `tls`.
pub async fn serve_router(
    app: axum::Router,
    listener: std::net::TcpListener,
    limits: ConnectionLimits,
    tls: Option<Tls>,
) -> anyhow::Result<()> {
    let http = listener
        .local_addr()
        .context("the HTTP listener's address")?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .with_context(|| format!("listening on {http}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%http, scheme, "HTTP APIs listening");
    let app = app.layer(axum::middleware::from_fn(wasmtwin::telemetry::request_span));
    let places = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    // Dropped to tell every connection to finish its request and close.
    let (stop, stopping) = tokio::sync::watch::channel(());
    let stop_asked = stop_asked();
    tokio::pin!(stop_asked);
    let mut refused = 0u64;
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop_asked => break,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            // Closed at once rather than queued: a client learns now, and
            // the node holds no more descriptors than it allows.
            refused += 1;
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max = limits.max_connections,
                    refused,
                    "too many HTTP connections: closing new ones (--max-connections)"
                );
                warned = Some(std::time::Instant::now());
            }
            drop(tcp);
            continue;
        };
        // Small answers go out at once: with Nagle's algorithm and delayed
        // ACKs each request/response exchange could wait ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let stopping = stopping.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _place = place;
            match tls {
                None => {
                    let service = with_peer(app, false, false);
                    serve_connection(tcp, service, limits, stopping, remote).await
                }
                Some(tls) => {
                    // The handshake gets the time the headers would: a
                    // client that stalls it holds a place no longer.
                    let handshake = tls.acceptor.accept(tcp);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            // rustls hands over only certificates it verified.
                            let certified = stream.get_ref().1.peer_certificates().is_some();
                            let service = with_peer(app, tls.asks_peers, certified);
                            serve_connection(stream, service, limits, stopping, remote).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::info!("stopping");
    drop(listener);
    drop(stop);
    let all = places.acquire_many(limits.max_connections);
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!(
            "some HTTP connections were still busy {} s after the stop was asked; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

/// `app` for one connection, each request of which carries what the
/// connection proved of its client ([`api::peers::Peer`]).
fn with_peer(
    app: axum::Router,
    required: bool,
    certified: bool,
) -> TowerToHyperService<
    tower::util::MapRequest<
        axum::Router,
        impl FnMut(
            axum::http::Request<hyper::body::Incoming>,
        ) -> axum::http::Request<hyper::body::Incoming>
        + Clone,
    >,
> {
    let peer = api::peers::Peer {
        required,
        certified,
    };
    TowerToHyperService::new(tower::ServiceExt::map_request(
        app,
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer);
            request
        },
    ))
}

/// Serves one connection's requests until it closes or the server stops.
async fn serve_connection<IO, S>(
    io: IO,
    service: S,
    limits: ConnectionLimits,
    mut stopping: tokio::sync::watch::Receiver<()>,
    remote: std::net::SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = finished {
        tracing::debug!(%remote, "HTTP connection closed: {e}");
    }
}

/// After a failed `accept`: a connection the peer gave up on is nothing;
/// anything else (out of file descriptors…) is logged and waited out.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting an HTTP connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Binds the HTTP APIs' address, before anything else starts: a busy
/// address is reported at once, not after the node has announced itself.
pub fn listen(http: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(http).with_context(|| format!("listening on {http}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("listening on {http}"))?;
    Ok(listener)
}

/// Starts the twins the node's store remembers.
pub async fn resume(node: &Arc<Node>) -> anyhow::Result<()> {
    let resuming = node.clone();
    let resumed = tokio::task::spawn_blocking(move || resuming.resume())
        .await
        .context("resuming twins")??;
    if !resumed.is_empty() {
        tracing::info!(twins = resumed.len(), "resumed twins from the store");
    }
    Ok(())
}

/// Keeps the twins' entanglement windows as the node stops (see
/// [`Node::keep_windows`]); a failure is logged, and the windows start
/// anew.
pub async fn keep_windows(node: &Arc<Node>) {
    let keeping = node.clone();
    match tokio::task::spawn_blocking(move || keeping.keep_windows()).await {
        Ok(Ok(kept)) => tracing::info!(twins = kept, "kept the twins' entanglement windows"),
        Ok(Err(e)) => tracing::error!("keeping the twins' entanglement windows: {e:#}"),
        Err(e) => tracing::error!("keeping the twins' entanglement windows: {e}"),
    }
}

/// Resolves on Ctrl-C, or on SIGTERM: how Kubernetes, systemd and
/// `docker stop` ask a process to stop.
pub async fn stop_asked() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM, only for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Runs the node.
pub fn run(global: &super::GlobalArgs, args: HostArgs) -> anyhow::Result<ExitCode> {
    super::open_files::raise();
    let policy = args.trust.policy()?;
    let auth = args.auth.resolve(false)?;
    let tls = args.tls.resolve()?;
    let broker = args.mqtt.resolve()?;
    let listener = listen(args.http)?;
    let store = Store::open(&args.data)?;
    // A node under a control plane is audited there; alone, it keeps its
    // own history.
    let audit = match args.membership.control {
        Some(_) => None,
        None => Some(wasmtwin::control::node_history(&store, &args.data)?),
    };
    let runtime = global.runtime()?;
    let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
    io.block_on(async {
        let node = Arc::new(Node::new(
            wasmtwin::node::NodeConfig {
                name: args.name,
                broker,
                policy,
                queue_capacity: args.queue,
                ceilings: args.ceilings.resolve(),
                component_dirs: args.component_dirs,
                registry: args.registry.resolve()?,
                fuel_per_cpu_second: args.fuel_per_cpu_second,
                max_subscribers: args.max_subscribers,
                inputs: args.inputs.resolve(),
                hibernate_after: args.hibernate_after.0,
                broker_keeps_sessions: true,
                park_sessions_asleep: !args.keep_sessions_asleep,
                shared_session: args.broker_session == BrokerSession::Node,
                inbox_max: args.inbox_max,
                share_adapters: args.share_adapters,
                arrival_timeout: args.arrival_timeout,
            },
            runtime,
            store,
        )?);
        resume(&node).await?;
        let token = auth.token();
        let token = token.as_deref();
        watch_tokens(&auth);
        let bound = listener.local_addr().context("the HTTP listener's address")?;
        if let Some(membership) = args.membership.resolve(bound, tls.is_some(), token) {
            tracing::info!(control = %membership.control, zone = %membership.zone, domain = %membership.domain, "joining the control plane");
            tokio::spawn(wasmtwin::node::membership::run(node.clone(), membership));
        }
        serve(
            node.clone(),
            listener,
            auth,
            args.max_requests,
            args.connections.resolve(),
            tls,
            audit.clone(),
        )
        .await?;
        keep_windows(&node).await;
        anyhow::Ok(())
    })?;
    // The chain's head signed at shutdown, as the control plane does.
    if let Some(history) = audit
        && let Err(e) = history.seal_now()
    {
        tracing::error!("sealing the audit history: {e:#}");
    }
    Ok(ExitCode::SUCCESS)
}
