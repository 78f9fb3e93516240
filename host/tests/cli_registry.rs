//! `wasmtwin publish` and `pull`: through an OCI image-layout directory
//! (always), and against a real `docker-registry` with and without basic
//! auth (interoperability tests, run by `.ci/run` after it installs the
//! registry: `cargo test -- --ignored`).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use wasmtwin_tests::cli::{arg, ok, refused};

use base64::Engine as _;
use serde_json::Value;
use wasmtwin_tests::plugin;
use wasmtwin_tests::servers::{Registry, curl};

fn wasmtwin(args: &[&str], env: &[(&str, &str)]) -> Output {
    wasmtwin_tests::cli::run(env!("CARGO_BIN_EXE_wasmtwin"), args, env)
}

/// A key pair and `prime` signed with it.
fn signed_prime(dir: &Path) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys");
    ok(wasmtwin(&["keygen", "--out", arg(&keys)], &[]));
    let signed = dir.join("prime.wasm");
    ok(wasmtwin(
        &[
            "sign",
            arg(&plugin("prime")),
            "--key",
            arg(&keys.join("wasmtwin.key")),
            "--out",
            arg(&signed),
        ],
        &[],
    ));
    (signed, keys.join("wasmtwin.pub"))
}

/// Pulls `reference` to `dir/name`, trusting `public`, and checks the bytes
/// are those of `signed`.
fn pull_identical(
    reference: &str,
    dir: &Path,
    name: &str,
    public: &Path,
    signed: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) {
    let pulled = dir.join(name);
    let mut args = vec![
        "pull",
        reference,
        "-o",
        arg(&pulled),
        "--trust",
        arg(public),
    ];
    args.extend_from_slice(extra);
    ok(wasmtwin(&args, env));
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(signed).unwrap()
    );
    ok(wasmtwin(
        &["verify", arg(&pulled), "--trust", arg(public)],
        &[],
    ));
}

#[test]
fn a_layout_directory_round_trips_and_refuses_the_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let (signed, public) = signed_prime(dir.path());
    let store = dir.path().join("store");
    let reference = format!("file://{}:0.1.0", store.display());
    ok(wasmtwin(&["publish", arg(&signed), &reference], &[]));
    assert!(store.join("oci-layout").exists() && store.join("index.json").exists());

    pull_identical(
        &reference,
        dir.path(),
        "pulled.wasm",
        &public,
        &signed,
        &[],
        &[],
    );

    // Untrusted: refused, and nothing written.
    let stranger = dir.path().join("stranger");
    ok(wasmtwin(&["keygen", "--out", arg(&stranger)], &[]));
    let never = dir.path().join("never.wasm");
    let err = refused(wasmtwin(
        &[
            "pull",
            &reference,
            "-o",
            arg(&never),
            "--trust",
            arg(&stranger.join("wasmtwin.pub")),
        ],
        &[],
    ));
    assert!(err.contains("untrusted"), "{err}");
    assert!(!never.exists());

    // A damaged blob is caught by its digest.
    let index: Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "0.1.0"
    );
    let blobs = store.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&biggest, bytes).unwrap();
    let err = refused(wasmtwin(
        &[
            "pull",
            &reference,
            "-o",
            arg(&never),
            "--trust",
            arg(&public),
        ],
        &[],
    ));
    assert!(err.contains("digest"), "{err}");

    // Unknown tags and non-components are named.
    let err = refused(wasmtwin(
        &[
            "pull",
            &format!("file://{}:nope", store.display()),
            "-o",
            arg(&never),
            "--allow-unsigned",
        ],
        &[],
    ));
    assert!(err.contains("no tag `nope`"), "{err}");
    let err = refused(wasmtwin(&["publish", arg(&public), &reference], &[]));
    assert!(err.contains("not a WebAssembly component"), "{err}");
    let err = refused(wasmtwin(&["publish", arg(&signed), "prime:latest"], &[]));
    assert!(err.contains("must start with oci://"), "{err}");
}

#[test]
#[ignore = "interoperability: needs docker-registry and curl (run by .ci/run)"]
fn publish_and_pull_through_a_real_registry() {
    let registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (signed, public) = signed_prime(dir.path());
    let reference = format!("oci://{}/twins/prime:0.1.0", registry.address);
    let out = ok(wasmtwin(
        &["publish", arg(&signed), &reference, "--insecure"],
        &[],
    ));
    assert!(out.contains("manifest:  sha256:"), "{out}");

    pull_identical(
        &reference,
        dir.path(),
        "pulled.wasm",
        &public,
        &signed,
        &["--insecure"],
        &[],
    );

    // An independent client sees a Wasm OCI artifact.
    let manifest = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &registry.url("/v2/twins/prime/manifests/0.1.0"),
    ]);
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = curl(&[&registry.url(&format!("/v2/twins/prime/blobs/{digest}"))]);
    assert_eq!(blob, std::fs::read(&signed).unwrap());
    let config = curl(&[&registry.url(&format!(
        "/v2/twins/prime/blobs/{}",
        manifest["config"]["digest"].as_str().unwrap()
    ))]);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["architecture"], "wasm");
}

#[test]
#[ignore = "interoperability: needs docker-registry and apache2-utils (run by .ci/run)"]
fn a_registry_with_basic_auth_takes_credentials_from_the_environment() {
    let registry = Registry::start(Some(("acme", "s3cret")));
    let dir = tempfile::tempdir().unwrap();
    let (signed, public) = signed_prime(dir.path());
    let reference = format!("oci://{}/twins/prime:0.1.0", registry.address);

    let err = refused(wasmtwin(
        &["publish", arg(&signed), &reference, "--insecure"],
        &[],
    ));
    assert!(
        err.to_lowercase().contains("auth") || err.contains("401"),
        "{err}"
    );
    let wrong = [
        ("WASMTWIN_REGISTRY_USERNAME", "acme"),
        ("WASMTWIN_REGISTRY_PASSWORD", "guess"),
    ];
    refused(wasmtwin(
        &["publish", arg(&signed), &reference, "--insecure"],
        &wrong,
    ));

    let creds = [
        ("WASMTWIN_REGISTRY_USERNAME", "acme"),
        ("WASMTWIN_REGISTRY_PASSWORD", "s3cret"),
    ];
    ok(wasmtwin(
        &["publish", arg(&signed), &reference, "--insecure"],
        &creds,
    ));
    let pulled = dir.path().join("pulled.wasm");
    refused(wasmtwin(
        &[
            "pull",
            &reference,
            "-o",
            arg(&pulled),
            "--trust",
            arg(&public),
            "--insecure",
        ],
        &[],
    ));
    pull_identical(
        &reference,
        dir.path(),
        "pulled.wasm",
        &public,
        &signed,
        &["--insecure"],
        &creds,
    );

    // Credentials from a docker configuration work as well.
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode("acme:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{token}"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    pull_identical(
        &reference,
        dir.path(),
        "again.wasm",
        &public,
        &signed,
        &["--insecure"],
        &[("DOCKER_CONFIG", arg(&docker))],
    );
}

#[test]
#[ignore = "interoperability: needs docker-registry (run by .ci/run)"]
fn defect_14_a_node_pulls_components_from_a_plain_http_registry() {
    let registry = Registry::start(None);
    for name in ["machine", "json-adapter"] {
        let reference = format!("oci://{}/twins/{name}:0.1.0", registry.address);
        ok(wasmtwin(
            &["publish", arg(&plugin(name)), &reference, "--insecure"],
            &[],
        ));
    }
    let site = common::Site::start(&["--registry-insecure", &registry.address]);
    let spec = format!(
        r#"apiVersion: wasmtwin.dev/v1alpha1
kind: DigitalTwin
metadata:
  name: pulled
spec:
  model:
    ref: oci://{0}/twins/machine:0.1.0
  physical:
    topics: [dev/pulled]
    adapter:
      ref: oci://{0}/twins/json-adapter:0.1.0
"#,
        registry.address
    );
    let (status, body) = site.apply("pulled", &spec);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("created"), "{body}");
}
