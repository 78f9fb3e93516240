//! A twin as W3C WoT consumers use it (defect 15): every property the TD
//! advertises reads (`null` until the model sets it), property reads honour
//! the application's requirements, and each event and each property has
//! its own Server-Sent Events stream, authenticated by header or by the
//! `access_token` query parameter. The last test runs Eclipse Thingweb
//! node-wot itself (tests/wot/consume.mjs) against a node.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Site, TOKEN, created, machine_spec};
use serde_json::{Value, json};
use wasmtwin_tests::node::wait_for;

/// A telemetry message of the machine's device.
fn telemetry(seq: u64, fields: Value) -> Vec<u8> {
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut message = json!({ "seq": seq, "ts_ms": ts_ms });
    if let (Some(message), Some(fields)) = (message.as_object_mut(), fields.as_object()) {
        message.extend(fields.clone());
    }
    serde_json::to_vec(&message).unwrap()
}

/// A node with a machine twin `motor` fed from `dev/motor`, commanding it
/// on `dev/motor/commands`.
fn motor() -> Site {
    let site = Site::start(&[]);
    let spec = machine_spec("motor").replace(
        "    topics: [dev/motor]\n",
        "    topics: [dev/motor]\n    commandTopic: dev/motor/commands\n",
    );
    assert!(spec.contains("commandTopic"), "{spec}");
    created(&site, "motor", &spec);
    site
}

/// Opens an event stream at `path` (with `token` as a bearer header, or
/// in `?access_token=` when `in_query`): status and, on 200, the response.
fn open(
    site: &Site,
    path: &str,
    token: &str,
    in_query: bool,
) -> (u16, reqwest::blocking::Response) {
    let api = &site.node.api;
    let request = if in_query {
        api.http
            .get(format!("{}{path}?access_token={token}", api.base))
    } else {
        api.http
            .get(format!("{}{path}", api.base))
            .bearer_auth(token)
    };
    let response = request
        .timeout(Duration::from_secs(20))
        .send()
        .expect("opening the stream");
    (response.status().as_u16(), response)
}

/// The first `n` messages of an SSE stream: (event name or "" when
/// unnamed, data as JSON).
fn messages(response: reqwest::blocking::Response, n: usize) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let (mut name, mut data) = (String::new(), None);
    for line in BufReader::new(response).lines() {
        let line = line.expect("reading the event stream");
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(text) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(text).expect("JSON data"));
        } else if line.is_empty()
            && let Some(data) = data.take()
        {
            found.push((std::mem::take(&mut name), data));
            if found.len() == n {
                break;
            }
        }
    }
    found
}

#[test]
fn defect_15_a_described_property_reads_null_until_set_and_an_unknown_one_is_not_found() {
    let site = motor();
    let api = &site.node.api;
    // Nothing applied yet: every property the TD advertises still reads.
    let td = api.json("/v1/twins/motor/td");
    let properties = td["properties"].as_object().unwrap();
    assert!(properties.contains_key("health"), "{td}");
    for name in properties.keys() {
        let (status, body) = api.get(&format!("/v1/twins/motor/properties/{name}"));
        assert_eq!((status, body.as_str()), (200, "null"), "{name}");
    }
    let (status, body) = api.get("/v1/twins/motor/properties/colour");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("describes no property `colour`"), "{body}");
    assert_eq!(api.get("/v1/twins/nobody/properties/rpm").0, 404);

    site.publish("dev/motor", &[telemetry(1, json!({ "temperature": 60.5 }))]);
    wait_for(
        || api.get("/v1/twins/motor/properties/temperature").1 == "60.5",
        "the temperature",
    );
    assert_eq!(api.get("/v1/twins/motor/properties/rpm").1, "null");
}

#[test]
fn defect_15_property_reads_honour_max_age_and_min_reliability() {
    let site = motor();
    let api = &site.node.api;
    // A property with no value cannot be fresh.
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=60000");
    assert_eq!(status, 412, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reasons"], json!(["`temperature` has no value yet"]));
    assert_eq!(answer["property"], "temperature");

    site.publish("dev/motor", &[telemetry(1, json!({ "temperature": 70.0 }))]);
    wait_for(
        || api.get("/v1/twins/motor/properties/temperature").1 == "70.0",
        "the temperature",
    );
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=60000");
    assert_eq!((status, body.as_str()), (200, "70.0"));
    // Only the property read counts: rpm has no value, temperature is fresh.
    let (status, _) = api.get("/v1/twins/motor?max_age_ms=60000");
    assert_eq!(status, 200, "the twin has values for what it was sent");
    std::thread::sleep(Duration::from_millis(50));
    let (status, body) = api.get("/v1/twins/motor/properties/temperature?max_age_ms=1");
    assert_eq!(status, 412, "{body}");
    assert!(body.contains("older than 1 ms: temperature"), "{body}");

    let (status, body) = api.get("/v1/twins/motor/properties/temperature?min_reliability=1.5");
    assert_eq!(status, 412, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let reasons = answer["reasons"].as_array().unwrap();
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("below the 1.5 asked for"),
        "{answer}"
    );
    // The twin read gives the same reason, from the same check.
    let (status, body) = api.get("/v1/twins/motor?min_reliability=1.5");
    assert_eq!(status, 412, "{body}");
    let twin: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(twin["reasons"], answer["reasons"]);
    assert_eq!(twin["twin"]["name"], "motor");
    let (status, _) = api.get("/v1/twins/motor/properties/temperature?min_reliability=0");
    assert_eq!(status, 200);
    assert_eq!(
        api.get("/v1/twins/motor/properties/temperature?max_age_ms=soon")
            .0,
        400
    );
}

#[test]
fn defect_15_each_event_and_each_property_has_its_own_stream_of_unnamed_messages() {
    let site = motor();
    // Streams of what the model does not describe are not found.
    assert_eq!(
        open(&site, "/v1/twins/motor/events/exploded", TOKEN, false).0,
        404
    );
    assert_eq!(
        open(
            &site,
            "/v1/twins/motor/properties/colour/observe",
            TOKEN,
            false
        )
        .0,
        404
    );
    // The forms the TD gives are the streams.
    let td = site.node.api.json("/v1/twins/motor/td");
    let event_form = &td["events"]["health_changed"]["forms"][0];
    assert_eq!(event_form["href"], "events/health_changed");
    assert_eq!(event_form["subprotocol"], "sse");
    assert_eq!(event_form["contentType"], "application/json");
    let temperature = &td["properties"]["temperature"];
    assert_eq!(temperature["observable"], true);
    let observe_form = &temperature["forms"][1];
    assert_eq!(observe_form["href"], "properties/temperature/observe");
    assert_eq!(
        observe_form["op"],
        json!(["observeproperty", "unobserveproperty"])
    );

    let (status, events) = open(&site, "/v1/twins/motor/events/health_changed", TOKEN, false);
    assert_eq!(status, 200);
    let (status, temperatures) = open(
        &site,
        "/v1/twins/motor/properties/temperature/observe",
        TOKEN,
        false,
    );
    assert_eq!(status, 200);
    // The whole change stream is as it was: named events.
    let (status, everything) = open(&site, "/v1/twins/motor/stream", TOKEN, false);
    assert_eq!(status, 200);

    site.publish(
        "dev/motor",
        &[
            telemetry(1, json!({ "rpm": 1500.0 })),
            telemetry(2, json!({ "temperature": 95.0 })),
            telemetry(3, json!({ "temperature": 50.0 })),
        ],
    );
    let events = messages(events, 2);
    assert_eq!(events[0].0, "", "unnamed: {events:?}");
    assert_eq!(events[0].1["from"], "ok");
    assert_eq!(events[0].1["to"], "alarm");
    assert_eq!(events[1].1["to"], "ok");
    // Only the observed property's changes, as bare values.
    let temperatures = messages(temperatures, 2);
    assert_eq!(
        temperatures,
        vec![(String::new(), json!(95.0)), (String::new(), json!(50.0))]
    );
    let everything = messages(everything, 3);
    let names: Vec<&str> = everything.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["change", "change", "health_changed"]);
}

#[test]
fn defect_15_event_streams_take_the_token_in_the_query_and_nothing_else_does() {
    let site = motor();
    for path in [
        "/v1/twins/motor/events/health_changed",
        "/v1/twins/motor/properties/temperature/observe",
        "/v1/twins/motor/stream",
    ] {
        assert_eq!(open(&site, path, TOKEN, true).0, 200, "{path}");
        assert_eq!(open(&site, path, "wrong-token", true).0, 401, "{path}");
        let (status, _) = open(&site, path, "", false);
        assert_eq!(status, 401, "{path}");
    }
    // Everything else wants the header: a token in a URL is for streams only.
    let (status, _) = open(&site, "/v1/twins/motor/properties/temperature", TOKEN, true);
    assert_eq!(status, 401);
    let (status, _) = open(&site, "/v1/twins/motor", TOKEN, true);
    assert_eq!(status, 401);
    // The TD says so: header by default, query on the streams' forms.
    let td = site.node.api.json("/v1/twins/motor/td");
    assert_eq!(td["security"], json!(["bearer_sc"]));
    assert_eq!(
        td["securityDefinitions"]["bearer_query_sc"],
        json!({ "scheme": "bearer", "in": "query", "name": "access_token" })
    );
    assert_eq!(
        td["events"]["health_changed"]["forms"][0]["security"],
        json!(["bearer_query_sc"])
    );
    assert!(
        td["properties"]["temperature"]["forms"][0]["security"].is_null(),
        "reads use the TD's default (header)"
    );
}

/// The node-wot consumer's folder.
fn consumer_dir() -> PathBuf {
    wasmtwin_tests::workspace_root().join("tests/wot")
}

/// Installs the consumer's pinned packages (node-wot) unless present.
fn install_consumer() {
    let dir = consumer_dir();
    if dir.join("node_modules/@node-wot/binding-http").is_dir() {
        return;
    }
    let verb = if dir.join("package-lock.json").is_file() {
        "ci"
    } else {
        "install"
    };
    let status = Command::new("npm")
        .args([verb, "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("running npm (install node and npm)");
    assert!(status.success(), "npm {verb} in {}", dir.display());
}

#[test]
#[ignore = "interoperability: needs node and npm (run by .ci/run)"]
fn defect_15_node_wot_consumes_a_twin_reads_invokes_subscribes_and_observes() {
    install_consumer();
    let site = motor();
    let td_url = format!("{}/v1/twins/motor/td", site.node.api.base);
    let mut consumer = Command::new("node")
        .arg(consumer_dir().join("consume.mjs"))
        .args([&td_url, "--timeout-ms", "20000"])
        .env("WASMTWIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running node");
    // Its standard error says when it has subscribed; keep the rest to
    // show if it fails.
    let stderr = consumer.stderr.take().expect("the consumer's stderr");
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) if line == "wot: subscribed" => break,
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = consumer.kill();
                let output = consumer.wait_with_output().expect("the consumer's output");
                panic!(
                    "node-wot never subscribed; stderr: {}\nstdout: {}",
                    log.join("\n"),
                    String::from_utf8_lossy(&output.stdout)
                );
            }
        }
    }
    // Overheating raises `health_changed` and changes the temperature.
    site.publish("dev/motor", &[telemetry(1, json!({ "temperature": 95.0 }))]);
    let output = consumer.wait_with_output().expect("the consumer's output");
    log.extend(said.try_iter());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the summary is not JSON ({e}): {stdout}\nstderr: {}",
            log.join("\n")
        )
    });
    assert!(
        output.status.success() && summary["ok"] == true,
        "{summary:#}\nstderr: {}",
        log.join("\n")
    );
    // readAllProperties: every property, null where the model had set none.
    let properties = &summary["properties"];
    for name in [
        "temperature",
        "vibration",
        "rpm",
        "running",
        "health",
        "alarms",
    ] {
        assert_eq!(properties[name], Value::Null, "{name}: {summary}");
    }
    // The action took its input by its schema, and answered by its output.
    assert_eq!(summary["action"]["name"], "set_speed");
    // (Numbers compare as f64: JavaScript writes 1200.0 as 1200.)
    let result = &summary["action"]["output"]["result"];
    assert_eq!(result["accepted"], true, "{summary}");
    assert_eq!(result["rpm"].as_f64(), Some(1200.0), "{summary}");
    assert_eq!(
        summary["action"]["output"]["commands"][0]["name"],
        "set_speed"
    );
    assert_eq!(summary["event"]["name"], "health_changed");
    assert_eq!(summary["event"]["data"]["to"], "alarm", "{summary}");
    assert_eq!(summary["observed"]["name"], "temperature");
    assert_eq!(
        summary["observed"]["value"].as_f64(),
        Some(95.0),
        "{summary}"
    );
}
