//! Keys, signatures and their enforcement, through the command line, and
//! interoperability with wasmsign2 in both directions.

use std::path::{Path, PathBuf};
use std::process::Output;

use wasmtwin_tests::cli::{arg, ok, refused};

use wasmtwin_tests::{plugin, write_updates};

fn wasmtwin(args: &[&str]) -> Output {
    wasmtwin_tests::cli::run(env!("CARGO_BIN_EXE_wasmtwin"), args, &[])
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key pair in `name/`.
    fn keys(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.path(name);
        ok(wasmtwin(&["keygen", "--out", arg(&dir)]));
        (dir.join("wasmtwin.key"), dir.join("wasmtwin.pub"))
    }

    /// `prime`, signed with `key`.
    fn signed_prime(&self, key: &Path, name: &str) -> PathBuf {
        let out = self.path(name);
        let prime = plugin("prime");
        ok(wasmtwin(&[
            "sign",
            arg(&prime),
            "--key",
            arg(key),
            "--out",
            arg(&out),
            "--name",
            "prime",
            "--version",
            "0.1.0",
            "--publisher",
            "Acme Motors",
        ]));
        out
    }
}

#[test]
fn keygen_sign_verify() {
    let f = Fixture::new();
    let (private, public) = f.keys("acme");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private key mode");
    }
    assert!(
        std::fs::read_to_string(&private)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let err = refused(wasmtwin(&["keygen", "--out", arg(&f.path("acme"))]));
    assert!(err.contains("--force"), "{err}");
    ok(wasmtwin(&[
        "keygen",
        "--out",
        arg(&f.path("acme")),
        "--force",
    ]));
    let public_pem = std::fs::read_to_string(&public).unwrap();
    assert_ne!(public_pem, "", "keygen --force wrote a public key");

    let signed = f.signed_prime(&private, "prime.signed.wasm");
    let out = ok(wasmtwin(&["verify", arg(&signed), "--trust", arg(&public)]));
    assert!(out.contains("publisher: Acme Motors"), "{out}");
    assert!(out.contains("key id:"), "{out}");
    assert!(out.contains("digest:    sha256:"), "{out}");

    // A directory of keys works as a trust set too.
    let out = ok(wasmtwin(&[
        "verify",
        arg(&signed),
        "--trust",
        arg(&f.path("acme")),
    ]));
    assert!(out.contains("prime 0.1.0"), "{out}");
}

#[test]
fn every_refusal_names_its_reason_in_verify_and_run() {
    let f = Fixture::new();
    let (private, public) = f.keys("acme");
    let (_, stranger) = f.keys("stranger");
    let signed = f.signed_prime(&private, "prime.signed.wasm");
    let updates = write_updates(f.dir.path(), "u.jsonl", 1..=2);

    // Signed and trusted: runs.
    ok(wasmtwin(&[
        "run",
        arg(&signed),
        "--updates",
        arg(&updates),
        "--trust",
        arg(&public),
    ]));

    // One byte of code flipped.
    let mut bytes = std::fs::read(&signed).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x01;
    let tampered = f.path("tampered.wasm");
    std::fs::write(&tampered, &bytes).unwrap();
    assert!(
        refused(wasmtwin(&[
            "verify",
            arg(&tampered),
            "--trust",
            arg(&public)
        ]))
        .contains("tampered")
    );
    assert!(
        refused(wasmtwin(&[
            "run",
            arg(&tampered),
            "--updates",
            arg(&updates),
            "--trust",
            arg(&public)
        ]))
        .contains("tampered")
    );

    // Unsigned.
    let unsigned = plugin("prime");
    assert!(
        refused(wasmtwin(&[
            "verify",
            arg(&unsigned),
            "--trust",
            arg(&public)
        ]))
        .contains("unsigned")
    );
    let err = refused(wasmtwin(&[
        "run",
        arg(&unsigned),
        "--updates",
        arg(&updates),
        "--trust",
        arg(&public),
    ]));
    assert!(err.contains("unsigned"), "{err}");
    let err = refused(wasmtwin(&[
        "run",
        arg(&unsigned),
        "--updates",
        arg(&updates),
    ]));
    assert!(err.contains("no trust configured"), "{err}");
    // ...unless explicitly allowed, loudly.
    let out = wasmtwin(&[
        "run",
        arg(&unsigned),
        "--updates",
        arg(&updates),
        "--allow-unsigned",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNNING UNVERIFIED CODE"));

    // Signed by a key nobody trusts.
    assert!(
        refused(wasmtwin(&[
            "verify",
            arg(&signed),
            "--trust",
            arg(&stranger)
        ]))
        .contains("untrusted")
    );
    assert!(
        refused(wasmtwin(&[
            "run",
            arg(&signed),
            "--updates",
            arg(&updates),
            "--trust",
            arg(&stranger)
        ]))
        .contains("untrusted")
    );

    // A signature section that is garbage.
    let mut malformed = std::fs::read(&signed).unwrap();
    // The signature section starts right after the 8-byte preamble: id,
    // length, name ("signature"), then its payload; break its version byte.
    let name_at = malformed
        .windows(9)
        .position(|w| w == b"signature")
        .unwrap();
    malformed[name_at + 9] = 0x7f;
    let malformed_path = f.path("malformed.wasm");
    std::fs::write(&malformed_path, &malformed).unwrap();
    assert!(
        refused(wasmtwin(&[
            "verify",
            arg(&malformed_path),
            "--trust",
            arg(&public)
        ]))
        .contains("malformed")
    );

    // Bad inputs to the tools themselves.
    let err = refused(wasmtwin(&[
        "verify",
        arg(&signed),
        "--trust",
        arg(&updates),
    ]));
    assert!(err.contains("not an Ed25519 public key"), "{err}");
    let err = refused(wasmtwin(&[
        "sign",
        arg(&unsigned),
        "--key",
        arg(&public),
        "--out",
        arg(&f.path("x.wasm")),
    ]));
    assert!(err.contains("not an Ed25519 private key"), "{err}");
    assert!(!f.path("x.wasm").exists());
}

#[test]
fn an_operator_counter_signs_a_publisher_release() {
    let f = Fixture::new();
    let (publisher_key, publisher) = f.keys("publisher");
    let (operator_key, operator) = f.keys("operator");
    let released = f.signed_prime(&publisher_key, "release.wasm");
    let both = f.path("both.wasm");
    ok(wasmtwin(&[
        "sign",
        arg(&released),
        "--key",
        arg(&operator_key),
        "--out",
        arg(&both),
    ]));
    // Either key alone verifies it, and the publisher's metadata survives.
    for trust in [&publisher, &operator] {
        let out = ok(wasmtwin(&["verify", arg(&both), "--trust", arg(trust)]));
        assert!(out.contains("publisher: Acme Motors"), "{out}");
    }
    let err = refused(wasmtwin(&[
        "sign",
        arg(&both),
        "--key",
        arg(&operator_key),
        "--out",
        arg(&f.path("thrice.wasm")),
    ]));
    assert!(err.contains("already signed by key"), "{err}");
}

#[test]
fn wasmsign2_verifies_what_we_sign() {
    let f = Fixture::new();
    let (private, public) = f.keys("acme");
    let signed = f.signed_prime(&private, "prime.signed.wasm");
    let pk = wasmsign2::PublicKey::from_pem(&std::fs::read_to_string(&public).unwrap()).unwrap();
    let mut reader = std::io::BufReader::new(std::fs::File::open(&signed).unwrap());
    pk.verify(&mut reader, None)
        .expect("wasmsign2 accepts our signature");

    // And refuses it once tampered, like we do.
    let mut bytes = std::fs::read(&signed).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x01;
    assert!(pk.verify(&mut &bytes[..], None).is_err());
}

#[test]
fn we_verify_what_wasmsign2_signs() {
    let f = Fixture::new();
    let pair = wasmsign2::KeyPair::generate();
    let public = f.path("theirs.pem");
    std::fs::write(&public, pair.pk.to_pem()).unwrap();
    let key_id = pair.pk.clone().attach_default_key_id().key_id().cloned();
    let module = wasmsign2::Module::deserialize_from_file(plugin("prime")).unwrap();
    let signed = pair.sk.sign(module, key_id.as_ref()).unwrap();
    let path = f.path("theirs.wasm");
    signed.serialize_to_file(&path).unwrap();

    let out = ok(wasmtwin(&["verify", arg(&path), "--trust", arg(&public)]));
    // wasmsign2's default key id is ours: the same key is named alike.
    let their_id = key_id.map(hex::encode).unwrap();
    assert!(out.contains(&format!("key id:    {their_id}")), "{out}");
    let updates = write_updates(f.dir.path(), "u.jsonl", 1..=2);
    ok(wasmtwin(&[
        "run",
        arg(&path),
        "--updates",
        arg(&updates),
        "--trust",
        arg(&public),
    ]));
}

/// The conversion docs/signing.md gives for the wasmsign2 command line.
#[test]
fn a_wasmtwin_key_converts_for_the_wasmsign2_command_line() {
    let f = Fixture::new();
    let (private, public) = f.keys("acme");
    let (raw_key, raw_pub) = (f.path("wasmsign2.key"), f.path("wasmsign2.pub"));
    let script = format!(
        "( printf '\\201'; openssl pkey -in {key} -outform DER | tail -c 32
           openssl pkey -in {key} -pubout -outform DER | tail -c 32 ) > {raw_key}
         ( printf '\\001'; openssl pkey -in {key} -pubout -outform DER | tail -c 32 ) > {raw_pub}",
        key = arg(&private),
        raw_key = arg(&raw_key),
        raw_pub = arg(&raw_pub),
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("running sh");
    assert!(
        status.success(),
        "the conversion failed (is openssl installed?)"
    );
    let sk = wasmsign2::SecretKey::from_file(&raw_key).expect("wasmsign2 reads the secret key");
    let pk = wasmsign2::PublicKey::from_file(&raw_pub).expect("wasmsign2 reads the public key");
    let module = wasmsign2::Module::deserialize_from_file(plugin("prime")).unwrap();
    let key_id = pk.clone().attach_default_key_id().key_id().cloned();
    let signed = sk.sign(module, key_id.as_ref()).unwrap();
    let path = f.path("signed-by-wasmsign2.wasm");
    signed.serialize_to_file(&path).unwrap();
    ok(wasmtwin(&["verify", arg(&path), "--trust", arg(&public)]));
}
