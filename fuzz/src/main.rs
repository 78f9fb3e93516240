//! `wasmtwin-fuzz`: runs each parser of outside input (see `targets`) on
//! mutated inputs, on the stable toolchain, and reports executions,
//! accepted inputs and findings: inputs that made it panic, kept in the
//! findings directory to be replayed (`--replay FILE`) and made into
//! regression tests. `fuzz/run.sh` runs every target 1,000,000 times.
//!
//! Without coverage feedback, the fuzzer grows its corpus by validity
//! instead: an input the parser accepted becomes a seed, so mutations
//! reach past the first check as often as they fail it.

mod mutate;
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sha2::{Digest, Sha256};

/// Fuzz wasmtwin's parsers of outside input.
#[derive(Parser)]
#[command(name = "wasmtwin-fuzz")]
struct Args {
    /// Targets to run: spec, bundle, history, signature, adapter [default:
    /// all].
    targets: Vec<String>,
    /// Executions per target.
    #[arg(long, default_value_t = 1_000_000)]
    execs: u64,
    /// The random seed (print it, to repeat a run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where inputs that make a target panic are written.
    #[arg(long, default_value = "fuzz/findings")]
    findings: PathBuf,
    /// Run one input (a finding) through the first target and exit.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
}

/// Inputs a target accepted, kept to mutate further.
const CORPUS_MAX: usize = 512;

fn main() -> ExitCode {
    let args = Args::parse();
    let names: Vec<String> = if args.targets.is_empty() {
        targets::NAMES.iter().map(|n| n.to_string()).collect()
    } else {
        args.targets.clone()
    };
    let mut targets = Vec::new();
    for name in &names {
        match targets::target(name) {
            Some(target) => targets.push(target),
            None => {
                eprintln!(
                    "error: no target `{name}`; there are {}",
                    targets::NAMES.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(file) = &args.replay {
        let input = match std::fs::read(file) {
            Ok(input) => input,
            Err(e) => {
                eprintln!("error: reading {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let accepted = (targets[0].check)(&input);
        println!("{}: accepted {accepted}", targets[0].name);
        return ExitCode::SUCCESS;
    }
    // Panics are findings, counted and kept: their messages would drown
    // the report.
    std::panic::set_hook(Box::new(|_| {}));
    println!("seed {}, {} executions per target", args.seed, args.execs);
    let mut findings = 0;
    for target in targets {
        findings += run(target, &args);
    }
    if findings > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `target` for `args.execs` executions; how many findings.
fn run(mut target: targets::Target, args: &Args) -> usize {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut corpus = target.seeds.clone();
    let (mut accepted, mut findings) = (0u64, 0usize);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for exec in 0..args.execs {
        let base = &corpus[rand::Rng::random_range(&mut rng, 0..corpus.len())];
        let input = mutate::mutate(&mut rng, base, &target.seeds, target.tokens);
        let began = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.check)(&input)));
        slowest = slowest.max(began.elapsed());
        match outcome {
            Ok(true) => {
                accepted += 1;
                if corpus.len() < CORPUS_MAX {
                    corpus.push(input);
                }
            }
            Ok(false) => {}
            Err(_) => {
                findings += 1;
                let file = keep(&args.findings, target.name, &input);
                println!(
                    "{}: execution {exec} panicked; input in {file}",
                    target.name
                );
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{:<9} {:>9} executions in {took:>6.1} s ({:>7.0}/s), {accepted} accepted, slowest {:.1} ms, {findings} findings",
        target.name,
        args.execs,
        args.execs as f64 / took,
        slowest.as_secs_f64() * 1e3
    );
    findings
}

/// Writes a finding under `dir`, named by its target and hash.
fn keep(dir: &Path, target: &str, input: &[u8]) -> String {
    let hash = hex(&Sha256::digest(input)[..8]);
    let file = dir.join(format!("{target}-{hash}.bin"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, input)) {
        eprintln!("warning: keeping the finding in {}: {e}", file.display());
    }
    file.display().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
