//! Where a guest's standard output and error go: each complete line to the
//! host's log, tagged with the twin, and the last lines kept so that a panic
//! message can be quoted in the error that reports the trap.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of recent output kept for error messages.
const TAIL_MAX: usize = 2048;
/// Longest line forwarded to the log.
const LINE_MAX: usize = 4096;

#[derive(Default)]
struct Buffers {
    /// Text since the last newline, not yet logged.
    partial: String,
    /// The most recent output, complete lines included.
    tail: String,
}

/// A guest's output sink. Cheap to clone; clones share the buffers.
#[derive(Clone)]
pub struct GuestOutput {
    twin: Arc<str>,
    buffers: Arc<Mutex<Buffers>>,
}

impl GuestOutput {
    /// A sink for `twin`'s output.
    pub fn new(twin: Arc<str>) -> Self {
        Self {
            twin,
            buffers: Arc::default(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let Ok(mut buffers) = self.buffers.lock() else {
            return;
        };
        buffers.tail.push_str(&text);
        if buffers.tail.len() > TAIL_MAX {
            let mut cut = buffers.tail.len() - TAIL_MAX;
            while !buffers.tail.is_char_boundary(cut) {
                cut += 1;
            }
            buffers.tail.drain(..cut);
        }
        buffers.partial.push_str(&text);
        while let Some(end) = buffers.partial.find('\n') {
            let line: String = buffers.partial.drain(..=end).collect();
            let line = line.trim_end();
            if !line.is_empty() {
                let shown = &line[..line.floor_char_boundary(LINE_MAX)];
                tracing::warn!(twin = &*self.twin, "guest output: {shown}");
            }
        }
        if buffers.partial.len() > LINE_MAX {
            buffers.partial.clear();
        }
    }

    /// The last non-empty lines the guest wrote, joined, and forgets them;
    /// `None` if it wrote nothing since the last call.
    pub fn take_last_words(&self) -> Option<String> {
        let mut buffers = self.buffers.lock().ok()?;
        let tail = std::mem::take(&mut buffers.tail);
        let words: Vec<&str> = tail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        let start = words.len().saturating_sub(2);
        let joined = words[start..].join(" / ");
        (!joined.is_empty()).then_some(joined)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; we link WASIp2 alone.
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(LINE_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_words() {
        let out = GuestOutput::new("t".into());
        out.push(b"thread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(
            out.take_last_words().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:3:5: / boom")
        );
        assert_eq!(out.take_last_words(), None);
    }
}
