//! An OpenTelemetry collector stand-in for the trace tests: an OTLP/HTTP
//! receiver (`tests/otlp/receiver.py`, on PyPI's `opentelemetry-proto`,
//! the protocol's own definitions) that keeps every span it receives.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::servers::require;

/// The receiver's PyPI packages, pinned so a release cannot change a run.
const PINS: &[&str] = &["opentelemetry-proto==1.45.2", "protobuf==7.36.2"];

/// The receiver, serving on 127.0.0.1 until dropped.
pub struct OtlpReceiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl OtlpReceiver {
    /// Starts the receiver, first making its Python environment if there
    /// is none (a virtualenv in the temporary directory, kept for the next
    /// run; PyPI is reached once).
    pub fn start() -> Self {
        let python = environment();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let port = match lines.next() {
            Some(Ok(line)) => line.trim().parse().expect("the receiver's port"),
            _ => panic!("the OTLP receiver exited before listening (its error is above)"),
        };
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span = serde_json::from_str(&line).expect("a span as JSON");
                kept.lock().unwrap().push(span);
            }
        });
        Self { child, port, spans }
    }

    /// The collector's base URL (`--otlp-endpoint`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtualenv's Python, with the pinned packages installed.
fn environment() -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("wasmtwin-otlp-venv");
    let python = dir.join("bin/python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import opentelemetry.proto, google.protobuf"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return python;
    }
    let python3 = require("python3", "python3-venv");
    let made = Command::new(python3)
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .expect("running python3 -m venv");
    assert!(
        made.success(),
        "python3 -m venv failed: apt-get install -y python3-venv (.ci/run does)"
    );
    let installed = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PINS)
        .status()
        .expect("running pip");
    assert!(
        installed.success(),
        "pip could not install {PINS:?} from PyPI"
    );
    python
}
