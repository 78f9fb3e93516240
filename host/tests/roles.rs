//! Tokens with roles (`--tokens FILE`, `wasmtwin token`): a node refuses a
//! call without a valid token with 401 and one beyond the token's role or
//! twins with 403 naming why; tokens are added and revoked while it runs,
//! and a broken file changes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Site, machine_spec};
use wasmtwin_tests::cli::{arg, ok, run};
use wasmtwin_tests::node::{Api, wait_for};

const WASMTWIN: &str = env!("CARGO_BIN_EXE_wasmtwin");

/// `wasmtwin token create`: the new token.
fn create(file: &Path, name: &str, role: &str, twins: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--file",
        arg(file),
        "--name",
        name,
        "--role",
        role,
    ];
    for twin in twins {
        args.extend(["--twin", twin]);
    }
    ok(run(WASMTWIN, &args, &[])).trim().to_string()
}

#[test]
fn tokens_carry_roles_and_twins_and_change_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    let admin = create(&file, "deployer", "admin", &[]);
    let reader = create(&file, "dashboard", "reader", &[]);
    let line = create(&file, "line-1", "operator", &["press-1"]);
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        !stored.contains(&admin) && !stored.contains(&reader),
        "a token stored in clear"
    );

    let site = Site::start(&["--tokens", arg(&file)]);
    let as_ = |token: &str| Api::new(site.node.api.base.clone(), token);
    let (admin, reader, line) = (as_(&admin), as_(&reader), as_(&line));

    assert_eq!(as_("not-a-token-0123456789").get("/v1/twins").0, 401);
    assert_eq!(
        Api::new(site.node.api.base.clone(), "").get("/v1/twins").0,
        401
    );
    for name in ["press-1", "press-2"] {
        let (status, body) = admin.put(&format!("/v1/twins/{name}"), &machine_spec(name));
        assert_eq!(status, 200, "{body}");
    }

    // A reader reads, and nothing more.
    assert_eq!(reader.get("/v1/twins").0, 200);
    assert_eq!(reader.get("/v1/twins/press-1/td").0, 200);
    let (status, body) = reader.post("/v1/twins/press-1/actions/reset", "");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("has role reader") && body.contains("needs operator"),
        "{body}"
    );
    let (status, body) = reader.delete("/v1/twins/press-2");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs admin"), "{body}");
    let (status, _) = reader.get("/v1/twins/press-1/checkpoint");
    assert_eq!(status, 403, "a reader took a twin's whole state");

    // An operator limited to press-1 acts on press-1 alone.
    let (status, body) = line.post("/v1/twins/press-1/actions/reset", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = line.post("/v1/twins/press-2/actions/reset", "");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("limited to twins press-1, not press-2"),
        "{body}"
    );
    assert_eq!(
        line.get("/v1/twins").0,
        403,
        "a scoped token listed every twin"
    );
    assert_eq!(
        line.put("/v1/twins/press-1", &machine_spec("press-1")).0,
        403
    );

    // Revoked and added while the node runs.
    ok(run(
        WASMTWIN,
        &[
            "token",
            "revoke",
            "--file",
            arg(&file),
            "--name",
            "dashboard",
        ],
        &[],
    ));
    let fresh = as_(&create(&file, "dashboard-2", "reader", &[]));
    wait_for(
        || reader.get("/v1/twins/press-1").0 == 401 && fresh.get("/v1/twins/press-1").0 == 200,
        "the revoked token to be refused and the new one taken",
    );
    let listed = ok(run(WASMTWIN, &["token", "list", "--file", arg(&file)], &[]));
    assert!(
        listed.contains("line-1\tOperator\tpress-1") && !listed.contains("dashboard\t"),
        "{listed}"
    );

    // A file that no longer parses changes nothing.
    std::fs::write(&file, "tokens: [{name: x, sha256: nothex, role: admin}]\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fresh.get("/v1/twins/press-1").0, 200);
    assert_eq!(admin.get("/v1/twins/press-1").0, 200);
}

#[test]
fn a_bad_token_file_or_name_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    create(&file, "ci", "admin", &[]);
    let before = std::fs::read_to_string(&file).unwrap();
    let refused = run(
        WASMTWIN,
        &[
            "token",
            "create",
            "--file",
            arg(&file),
            "--name",
            "ci",
            "--role",
            "reader",
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already in"));
    let refused = run(
        WASMTWIN,
        &[
            "token",
            "create",
            "--file",
            arg(&file),
            "--name",
            "x",
            "--role",
            "reader",
            "--twin",
            "Not_A_Twin",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a twin name"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    std::fs::write(&file, "tokens: [{name: a, sha256: abc, role: admin}]\n").unwrap();
    let started = run(
        WASMTWIN,
        &[
            "host",
            "--tokens",
            arg(&file),
            "--allow-unsigned",
            "--http",
            "127.0.0.1:0",
            "--data",
            arg(dir.path()),
        ],
        &[],
    );
    assert!(!started.status.success());
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(said.contains("sha256 must be 64 hex digits"), "{said}");
}

#[test]
fn a_node_alone_records_each_management_call_with_its_caller_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    let admin = create(&file, "deployer", "admin", &[]);
    let line = create(&file, "line-1", "operator", &[]);
    let reader = create(&file, "dashboard", "reader", &[]);
    let mut site = Site::start(&["--tokens", arg(&file)]);
    let as_ = |token: &str| Api::new(site.node.api.base.clone(), token);
    let (admin, line, reader) = (as_(&admin), as_(&line), as_(&reader));

    assert_eq!(
        admin.put("/v1/twins/press-1", &machine_spec("press-1")).0,
        200
    );
    assert_eq!(admin.put("/v1/twins/press-2", "not: [a spec").0, 422);
    assert_eq!(line.post("/v1/twins/press-1/actions/reset", "").0, 200);
    assert_eq!(reader.delete("/v1/twins/press-1").0, 403);
    assert_eq!(admin.delete("/v1/twins/press-1").0, 204);

    let events = reader.json("/v1/events");
    let calls: Vec<(String, String, String, u64)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "management")
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["data"]["method"].as_str().unwrap_or_default().to_string(),
                e["twin"].as_str().unwrap_or_default().to_string(),
                e["data"]["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let call = |actor: &str, method: &str, twin: &str, status: u64| {
        (
            actor.to_string(),
            method.to_string(),
            twin.to_string(),
            status,
        )
    };
    // Who, what and the result; not the action, nor the call refused
    // before it reached the node.
    assert_eq!(
        calls,
        vec![
            call("token deployer", "PUT", "press-1", 200),
            call("token deployer", "PUT", "press-2", 422),
            call("token deployer", "DELETE", "press-1", 204),
        ],
        "{events}"
    );

    // The chain holds once the node has stopped.
    let _ = site.node.child.kill();
    let _ = site.node.child.wait();
    let data = site.data.join("node");
    let verified = ok(run(
        WASMTWIN,
        &["events", "verify", "--data", arg(&data)],
        &[],
    ));
    assert!(
        verified.contains("the event history is intact: 3 records"),
        "{verified}"
    );
}
