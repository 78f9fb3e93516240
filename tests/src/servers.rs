//! Real servers for interoperability tests, started on 127.0.0.1 for the
//! length of a test and stopped when dropped. They come from Debian's
//! packages, which `.ci/run` installs; a missing one fails the test with the
//! package to install.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server a test starts, never one
/// this process handed out before.
///
/// It comes from below the kernel's ephemeral range, not from `bind(0)`:
/// a port from that range can be taken, between this call and the server's
/// own bind, as the local end of any outgoing connection (a node reaching
/// its broker, curl, a test's client), and the server then fails with
/// "address in use". Ports under the range are only ever given to a
/// socket that names them.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let (low, high) = below_ephemeral();
    let span = high - low;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each test process starts at its own place in the range, so two run
    // at once (a test and the binary it spawns) rarely try the same ports.
    let mut offset = next.unwrap_or((std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let port = low + offset;
        offset = (offset + 1) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}")
}

/// The ports tests take theirs from: the 8,192 just under the first port
/// the kernel gives to `bind(0)` and outgoing connections.
pub fn below_ephemeral() -> (u16, u16) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let high = first.max(8_192 + 1_024);
    (high - 8_192, high)
}

pub(crate) fn require(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{program}` is not installed: apt-get install -y {package} (.ci/run does)")
    })
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 20 s");
}

/// A `docker-registry` (CNCF distribution) serving on 127.0.0.1.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `credentials`, it demands HTTP basic auth
    /// from an htpasswd file made with Apache's `htpasswd -B`.
    pub fn start(credentials: Option<(&str, &str)>) -> Self {
        let registry = require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let auth = match credentials {
            Some((user, password)) => {
                let htpasswd = require("htpasswd", "apache2-utils");
                let file = dir.path().join("htpasswd");
                let status = Command::new(htpasswd)
                    .args(["-Bbc", file.to_str().expect("utf-8 path"), user, password])
                    .stderr(Stdio::null())
                    .status()
                    .expect("running htpasswd");
                assert!(status.success(), "htpasswd failed");
                format!(
                    "auth:\n  htpasswd:\n    realm: wasmtwin-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("writing the registry config");
        let mut child = Command::new(registry)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        wait_for_port(port, &mut child, "docker-registry");
        Self {
            child,
            address: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// An HTTP URL on the registry.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `curl` (an independent HTTP client) and returns its output.
pub fn curl(args: &[&str]) -> Vec<u8> {
    let curl = require("curl", "curl");
    let output = Command::new(curl)
        .args(["--silent", "--show-error", "--fail"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs a command that must succeed (certificate and password tools).
fn tool(program: &str, package: &str, args: &[&str]) {
    let output = Command::new(require(program, package))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Files for a TLS broker: a CA, and a server certificate for 127.0.0.1
/// that it signed (made with the `openssl` command).
pub struct TlsFiles {
    /// The CA's certificate, PEM.
    pub ca: PathBuf,
    /// The server's certificate, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a fresh CA and a certificate for 127.0.0.1 in `dir` (made if
    /// missing), good for a server and, as nodes use theirs, a client.
    pub fn make(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("making the certificates' directory");
        let path = |name: &str| dir.join(name);
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
        let (ca_key, ca, key, csr, cert, ext) = (
            path("ca.key"),
            path("ca.pem"),
            path("server.key"),
            path("server.csr"),
            path("server.pem"),
            path("server.ext"),
        );
        tool(
            "openssl",
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=wasmtwin test CA",
                "-keyout",
                &s(&ca_key),
                "-out",
                &s(&ca),
            ],
        );
        tool(
            "openssl",
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("writing the certificate extensions");
        tool(
            "openssl",
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&ca),
                "-CAkey",
                &s(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&ext),
                "-out",
                &s(&cert),
            ],
        );
        Self { ca, cert, key }
    }
}

/// A Mosquitto broker serving on 127.0.0.1.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    /// With TLS: the files, so clients can trust it.
    pub tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker open to anonymous clients.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// Starts a broker that speaks only TLS and wants `user`/`password`.
    pub fn start_secured(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password)), true)
    }

    fn start_with(login: Option<(&str, &str)>, tls: bool) -> Self {
        let mosquitto = require("mosquitto", "mosquitto");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "listener {port} 127.0.0.1\npersistence false\nlog_dest none\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
        );
        // Started as root, Mosquitto would switch to its own user, which
        // cannot read our temporary files.
        let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
        if uid.is_ok_and(|id| id == b"0\n") {
            config.push_str("user root\n");
        }
        match login {
            Some((user, password)) => {
                let file = dir.path().join("passwd");
                std::fs::write(&file, "").expect("creating the password file");
                tool(
                    "mosquitto_passwd",
                    "mosquitto",
                    &["-b", file.to_str().expect("utf-8 path"), user, password],
                );
                config.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => config.push_str("allow_anonymous true\n"),
        }
        let tls = tls.then(|| {
            let files = TlsFiles::make(dir.path());
            config.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            ));
            files
        });
        let file = dir.path().join("mosquitto.conf");
        std::fs::write(&file, config).expect("writing the Mosquitto config");
        let mut child = Command::new(mosquitto)
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        wait_for_port(port, &mut child, "mosquitto");
        Self {
            child,
            port,
            tls,
            dir,
        }
    }

    /// Arguments for `mosquitto_pub`/`mosquitto_sub` to reach this broker.
    pub fn client_args(&self, login: Option<(&str, &str)>) -> Vec<String> {
        let mut args = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(tls) = &self.tls {
            args.extend(["--cafile".into(), tls.ca.display().to_string()]);
        }
        if let Some((user, password)) = login {
            args.extend(["-u".into(), user.into(), "-P".into(), password.into()]);
        }
        args
    }

    /// A scratch directory that lives as long as the broker.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Mosquitto {
    /// Its process id, for benchmarks that account its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server scraping one target every second.
pub struct Prometheus {
    child: Child,
    /// Its HTTP port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`HOST:PORT`, path `/metrics`).
    pub fn start(target: &str) -> Self {
        let prometheus = require("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wasmtwin\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing the Prometheus config");
        let mut child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        wait_for_port(port, &mut child, "prometheus");
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{below_ephemeral, free_port};

    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..2000).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn free_port_stays_out_of_the_range_outgoing_connections_take() {
        // What `bind(0)` gives is from the ephemeral range, where the
        // local end of a connection another test opens may take it first.
        let (_, first_ephemeral) = below_ephemeral();
        for _ in 0..200 {
            let port = free_port();
            assert!(port < first_ephemeral, "{port} is in the ephemeral range");
        }
    }
}
