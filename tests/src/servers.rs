//! Real servers for interoperability tests, started on 127.0.0.1 for the
//! length of a test and stopped when dropped. They come from Debian's
//! packages, which `.ci/run` installs; a missing one fails the test with the
//! package to install.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

fn require(program: &str, package: &str) -> PathBuf {
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
