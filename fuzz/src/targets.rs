//! The parsers of outside input a node has, each as a fuzz target with the
//! seeds its mutations start from and the words of its syntax:
//!
//! - `spec`: a twin spec, YAML or JSON (`PUT /v1/twins/{name}`, `apply`);
//! - `bundle`: a checkpoint bundle as it arrives (`PUT …/checkpoint`,
//!   migrations): the framing, checksums and every section;
//! - `history`: the history rows inside a bundle, sealed into a valid
//!   bundle so that the rows' parser is reached past the checksums;
//! - `signature`: a component's signature section and the module framing
//!   around it (every component a node loads);
//! - `adapter`: a PT message's topic and payload through the JSON adapter
//!   component, as the twin's MQTT session hands them over.
//!
//! A target's check returns whether the input was accepted; what matters
//! is that it returns at all: a panic is a finding.

use wasmtwin::checkpoint::{
    Checkpoint, ENTANGLEMENT_SECTION, GUEST_SECTION, HISTORY_SECTION, ModelInfo, SPEC_SECTION,
};
use wasmtwin::digest::Digest;
use wasmtwin::node::Bundle;
use wasmtwin::runtime::{AdapterComponent, AdapterInstance, Limits, Runtime, RuntimeConfig};
use wasmtwin::signing::{self, Metadata, TrustSet};
use wasmtwin::spec::{Ceilings, TwinSpec};
use wasmtwin::twin::entanglement::{Entanglement, Timing};
use wasmtwin_tests::wait;

/// A target's run of one input: whether the parser accepted it.
type Check = Box<dyn FnMut(&[u8]) -> bool>;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    pub tokens: &'static [&'static [u8]],
    pub check: Check,
}

/// The names of every target, in the order `all` runs them.
pub const NAMES: [&str; 5] = ["spec", "bundle", "history", "signature", "adapter"];

/// Target `name`.
pub fn target(name: &str) -> Option<Target> {
    Some(match name {
        "spec" => spec(),
        "bundle" => bundle(),
        "history" => history(),
        "signature" => signature(),
        "adapter" => adapter(),
        _ => return None,
    })
}

const EXAMPLE: &str = include_str!("../../deploy/examples/motor-7.yaml");

/// What YAML and JSON give meaning to, and values at types' edges.
const SYNTAX: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b":",
    b",",
    b"\n",
    b"\n  ",
    b"- ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!!str ",
    b"? ",
    b"|\n",
    b">-\n",
    b"~",
    b"null",
    b"true",
    b"-1",
    b"1e309",
    b"-0",
    b"NaN",
    b".inf",
    b"18446744073709551616",
    b"0x10",
    b"\\u0000",
    b"\xff\xfe",
    b"#",
    b"+",
    b"/",
    b"$",
    b"%YAML 1.2\n",
    b"---\n",
    b"...\n",
];

fn spec() -> Target {
    let parsed = TwinSpec::parse(EXAMPLE).expect("the example spec parses");
    let json = serde_json::to_vec(&parsed).expect("a spec serializes");
    Target {
        name: "spec",
        seeds: vec![EXAMPLE.as_bytes().to_vec(), json],
        tokens: SYNTAX,
        check: Box::new(|input| {
            TwinSpec::parse(&String::from_utf8_lossy(input))
                .is_ok_and(|spec| spec.check_ceilings(&Ceilings::default()).is_ok())
        }),
    }
}

/// A bundle of the example twin whose history is `history` (JSON lines,
/// as bundles carry it) and, if given, whose entanglement window is
/// `window` (as bundles carry it), sealed: every checksum right.
fn sealed(history: &[u8], window: Option<Vec<u8>>) -> Vec<u8> {
    let spec = TwinSpec::parse(EXAMPLE).expect("the example spec parses");
    let mut sections = vec![
        (
            GUEST_SECTION.into(),
            br#"{"temperature":21.5,"running":true}"#.to_vec(),
        ),
        (
            SPEC_SECTION.into(),
            serde_json::to_vec(&spec).expect("a spec encodes"),
        ),
        (HISTORY_SECTION.into(), history.to_vec()),
    ];
    sections.extend(window.map(|window| (ENTANGLEMENT_SECTION.into(), window)));
    Checkpoint {
        twin: "motor-7".into(),
        created_ms: 1_700_000_000_000,
        model: ModelInfo {
            name: "machine".into(),
            version: "0.1.0".into(),
            component: Digest::of(b"machine"),
            state_version: 1,
        },
        sections,
    }
    .to_bytes()
    .expect("a bundle of parts in memory is written")
}

/// A window of a few updates, in the encoding bundles carry.
fn window() -> Vec<u8> {
    let start_us = 1_700_000_000_000_000;
    let mut e = Entanglement::new(Default::default(), start_us);
    for seq in 1..=5u64 {
        let at = start_us + seq * 100_000;
        let timing = Timing {
            received_us: at + 300,
            started_us: at + 400,
        };
        e.record(seq, at / 1000, timing, at + 500);
    }
    e.leave(start_us + 1_000_000)
        .encode()
        .expect("a window encodes")
}

const ROWS: &[u8] = b"{\"tsMs\":1700000000001,\"seq\":1,\"changes\":{\"temperature\":21.5}}\n\
{\"tsMs\":1700000000002,\"seq\":2,\"changes\":{\"running\":true,\"rpm\":1200}}\n";

fn bundle() -> Target {
    Target {
        name: "bundle",
        seeds: vec![
            sealed(ROWS, None),
            sealed(b"", None),
            sealed(ROWS, Some(window())),
        ],
        tokens: &[
            b"\0\0\0\0",
            b"\xff\xff\xff\xff",
            b"history",
            b"spec",
            b"guest",
            b"entanglement",
        ],
        check: Box::new(|input| Bundle::from_bytes(input).is_ok()),
    }
}

fn history() -> Target {
    Target {
        name: "history",
        seeds: vec![ROWS.to_vec()],
        tokens: SYNTAX,
        check: Box::new(|rows| {
            Bundle::from_bytes(&sealed(rows, None)).is_ok_and(|bundle| {
                bundle
                    .history
                    .batches(64, |rows| {
                        std::hint::black_box(rows);
                        Ok(())
                    })
                    .is_ok()
            })
        }),
    }
}

fn signature() -> Target {
    let publisher = signing::generate().expect("a key");
    let operator = signing::generate().expect("a key");
    let metadata = Metadata {
        name: "fuzz".into(),
        version: "0.1.0".into(),
        publisher: "fuzz".into(),
        signed_at: "2026-01-01T00:00:00Z".into(),
    };
    // The smallest module with a custom section: small inputs, so that
    // time goes to the framing and the section, not to hashing.
    let module = b"\0asm\x01\0\0\0\0\x06\x04fuzzx".to_vec();
    let signed = signing::sign(&module, &publisher, &metadata).expect("signing");
    let countersigned = signing::sign(&signed, &operator, &metadata).expect("signing");
    let mut trust = TrustSet::default();
    trust.add(publisher.verifying_key(), "publisher.pub".into());
    Target {
        name: "signature",
        seeds: vec![signed, countersigned, module],
        tokens: &[
            b"signature",
            b"signature_delimiter",
            b"\0asm\x01\0\0\0",
            b"\x80\x80\x80\x80\x08",
        ],
        check: Box::new(move |input| signing::verify(input, &trust).is_ok()),
    }
}

/// The topic's length in the first byte, then the topic, then the payload.
fn message(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![topic.len() as u8];
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn adapter() -> Target {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .expect("a runtime");
    let component = runtime
        .load_adapter(&wasmtwin_tests::plugin_bytes("json-adapter"))
        .expect("the JSON adapter loads");
    let fresh = move |runtime: &Runtime, component: &AdapterComponent| {
        wait(AdapterInstance::new(
            runtime,
            component,
            "fuzz",
            Limits::default(),
        ))
        .expect("the JSON adapter instantiates")
    };
    let mut instance = fresh(&runtime, &component);
    Target {
        name: "adapter",
        seeds: vec![
            message(
                "plant/motor-7/telemetry",
                br#"{"seq":42,"ts_ms":1700000000000,"temperature":71.5,"vibration":0.02,"rpm":1480,"running":true}"#,
            ),
            message("dev/m1", br#"{"seq":1,"ts_ms":1,"x":{"nested":[1,2,3]}}"#),
        ],
        tokens: SYNTAX,
        check: Box::new(move |input| {
            if instance.is_poisoned() {
                instance = fresh(&runtime, &component);
            }
            let split = 1 + usize::from(input.first().copied().unwrap_or(0)).min(input.len().saturating_sub(1));
            let topic = String::from_utf8_lossy(input.get(1..split).unwrap_or_default());
            let payload = input.get(split..).unwrap_or_default();
            wait(instance.decode(&topic, payload)).is_ok()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted() {
        for name in NAMES {
            let mut target = target(name).unwrap();
            let seeds = target.seeds.clone();
            // The signature target's unsigned module is there to be
            // mutated into something signed-looking, not accepted.
            let expected = if name == "signature" {
                seeds.len() - 1
            } else {
                seeds.len()
            };
            let accepted = seeds.iter().filter(|s| (target.check)(s)).count();
            assert_eq!(accepted, expected, "{name}");
        }
    }
}
