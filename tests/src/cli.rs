//! Running the `wasmtwin` binary in tests, in an environment that nothing of
//! the machine's user leaks into (trust, registry credentials, docker
//! configuration, log level).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `bin` with `args`, plus the variables in `env`.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("WASMTWIN_LOG", "warn")
        .env_remove("WASMTWIN_TRUST")
        .env_remove("WASMTWIN_REGISTRY_USERNAME")
        .env_remove("WASMTWIN_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", "/nonexistent");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running wasmtwin")
}

/// Asserts the command succeeded; returns its standard output.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "wasmtwin failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the command failed; returns its standard error.
pub fn refused(output: Output) -> String {
    assert!(
        !output.status.success(),
        "expected a refusal, got: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
