//! `wasmtwin experiment`: the seed paper's proof of concept (its Figure 3)
//! on this machine, in one command — twice, with the control plane acting
//! and with it only observing — and what it shows: a CSV per run, the
//! figure (PNG, SVG), a summary table, and checks that the platform
//! migrated, scaled and notified when the paper says it should and did
//! nothing else (the exit status).

mod figure;
mod plan;
mod recorder;
mod testbed;
mod verdict;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;
use wasmtwin::runtime::cpu::CpuShare;
use wasmtwin::runtime::{Limits, Runtime, Update};
use wasmtwin::signing::TrustSet;
use wasmtwin::twin::Twin;

use super::host::ConnectionLimits;
use super::local;
use plan::{Kind, Phase, Settings};
use recorder::{Event, Row};
use testbed::{Broker, RunConfig, Testbed};
use verdict::RunRecord;

/// Arguments of `wasmtwin experiment`.
#[derive(Debug, Args)]
#[command(after_help = "\
Phases, as in the paper: baseline; phase 1, network slowdown (the twin's link to the broker
at 70 ms ± 30 ms and 15 % loss, where baseline is 12.5 ms ± 7.5 ms); baseline; phase 2, the
twin reconfigured to 25K primes per update; baseline; phase 3, the device's rate halved;
baseline. Everything runs in this process but the broker (Mosquitto when installed, else the
embedded one); nothing is left running when it ends or is interrupted.

Writes to OUT: acting.csv and observing.csv (one row a second), acting-events.csv and
observing-events.csv (the control plane's event history), figure.png, figure.svg and
summary.md. Exits with 0 when the platform reacted as the paper says (migrate, scale, notify,
and nothing in baseline phases), 1 when not, 130 when interrupted.

Examples:
  wasmtwin experiment                      # 7 phases of 30 s, twice: about 8 minutes
  wasmtwin experiment --paper              # the paper's 30 s window, 120 s phases
  wasmtwin experiment --runs acting --phase-seconds 25")]
pub struct ExperimentArgs {
    /// Seconds each phase lasts [default: 30; 120 with --paper].
    #[arg(long, value_name = "S")]
    phase_seconds: Option<u64>,
    /// The requirements' sliding window, in seconds [default: 10; 30 with
    /// --paper, as in the paper].
    #[arg(long, value_name = "S")]
    window_seconds: Option<u32>,
    /// The paper's pacing: its 30-s window and phases of 120 s.
    #[arg(long)]
    paper: bool,
    /// The device's updates per second (the paper's: 1).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Which runs to make.
    #[arg(long, value_enum, default_value_t = Runs::Both)]
    runs: Runs,
    /// Where the results go (created if missing; earlier results there are
    /// replaced).
    #[arg(long, value_name = "DIR", default_value = "experiment")]
    out: PathBuf,
    #[command(flatten)]
    plugins: local::Plugins,
}

/// Which runs an experiment makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runs {
    /// With the control plane acting, then only observing.
    Both,
    /// With the control plane acting.
    Acting,
    /// With the control plane observing, not acting.
    Observing,
}

/// The run's parameters, checked.
struct Pacing {
    phase_seconds: u64,
    window_seconds: u32,
    rate_hz: f64,
}

impl ExperimentArgs {
    fn pacing(&self) -> anyhow::Result<Pacing> {
        let (phase_default, window_default) = if self.paper { (120, 30) } else { (30, 10) };
        let window_seconds = self.window_seconds.unwrap_or(window_default);
        let phase_seconds = self.phase_seconds.unwrap_or(phase_default);
        anyhow::ensure!(
            (5..=300).contains(&window_seconds),
            "--window-seconds must be between 5 and 300, got {window_seconds}"
        );
        // A phase must hold a detection (a few seconds, up to 8 updates
        // for a device's new rate), an action and a window to recover.
        let least = u64::from(window_seconds) + 12;
        anyhow::ensure!(
            (least..=3600).contains(&phase_seconds),
            "--phase-seconds must be between {least} (the window plus time to detect and act) \
             and 3600, got {phase_seconds}"
        );
        anyhow::ensure!(
            self.rate >= 0.5 && self.rate <= 50.0,
            "--rate must be between 0.5 and 50 updates per second, got {}",
            self.rate
        );
        Ok(Pacing {
            phase_seconds,
            window_seconds,
            rate_hz: self.rate,
        })
    }
}

/// Runs the experiment.
pub fn run(global: &super::GlobalArgs, args: ExperimentArgs) -> anyhow::Result<ExitCode> {
    let pacing = args.pacing()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Stores, keys and signed components live only as long as the run.
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut trust = TrustSet::default();
    let key = local::dev_key(&scratch.path().join("key"), &mut trust)?;
    let components = scratch.path().join("components");
    let publisher = "wasmtwin experiment (development key)";
    let model = args.plugins.sign("prime", &key, publisher, &components)?;
    let adapter = args
        .plugins
        .sign("json_adapter", &key, publisher, &components)?;
    let broker = Broker::start(scratch.path())?;
    let runtime = global.runtime()?;
    let shared = local::Shared {
        token: super::host::new_token()?,
        trust,
        component_dirs: vec![components],
        limits: ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        },
    };

    println!("wasmtwin experiment: the seed paper's Figure 3 on this machine");
    println!("  broker: {}", broker.describe());
    let fuel_per_cpu_second = wasmtwin::runtime::cpu::calibrate(&runtime)?;
    let cost_ms = measure_cost(&runtime, &model, fuel_per_cpu_second)?;
    let settings = Settings::choose(cost_ms);
    println!(
        "  the model costs {:.3} ms of CPU an update with 1K primes and {:.2} ms with 25K here; \
         the twin gets {}m of CPU, at which 25K primes take about {:.0} ms, against a \
         timeliness bound of {} ms at the 99th percentile",
        cost_ms.0,
        cost_ms.1,
        settings.share_millis,
        cost_ms.1 * 1000.0 / f64::from(settings.share_millis),
        settings.bound_ms
    );
    let phases = plan::schedule(pacing.phase_seconds);
    let runs: &[(&'static str, &'static str, bool)] = match args.runs {
        Runs::Both => &[
            ("acting", "with the control plane", false),
            ("observing", "observing only", true),
        ],
        Runs::Acting => &[("acting", "with the control plane", false)],
        Runs::Observing => &[("observing", "observing only", true)],
    };
    let mut records = Vec::new();
    let mut interrupted = false;
    for &(name, label, observe_only) in runs {
        let data = scratch.path().join(name);
        let config = RunConfig {
            data: &data,
            twin: &format!("prime-{name}"),
            model: &model,
            adapter: &adapter,
            rate_hz: pacing.rate_hz,
            window_seconds: pacing.window_seconds,
            settings,
            observe_only,
            fuel_per_cpu_second,
        };
        let io = tokio::runtime::Runtime::new().context("starting the I/O runtime")?;
        let mut record = RunRecord {
            name,
            label,
            observe_only,
            rows: Vec::new(),
            events: Vec::new(),
        };
        let outcome = io.block_on(async {
            tokio::select! {
                done = one_run(&runtime, &broker, &shared, &config, &phases, &mut record) => done.map(|()| true),
                _ = tokio::signal::ctrl_c() => Ok(false),
            }
        });
        // Everything the run started (nodes, twins, control plane, device,
        // servers) stops with its runtime.
        io.shutdown_timeout(Duration::from_secs(2));
        let finished = outcome.with_context(|| format!("the {name} run"))?;
        write_run(&args.out, &record, &phases)?;
        records.push(record);
        if !finished {
            interrupted = true;
            break;
        }
    }
    let memory = peak_memory(&broker);
    drop(broker);
    if interrupted {
        eprintln!(
            "interrupted: what was recorded is in {}; nothing is left running",
            args.out.display()
        );
        return Ok(ExitCode::from(130));
    }
    report(&args.out, &phases, &records, &pacing, &settings, memory)
}

/// Runs the phases once, recording into `record`.
async fn one_run(
    runtime: &Runtime,
    broker: &Broker,
    shared: &local::Shared,
    config: &RunConfig<'_>,
    phases: &[Phase],
    record: &mut RunRecord,
) -> anyhow::Result<()> {
    let mut testbed = Testbed::start(runtime, broker, shared, config).await?;
    let mut history = testbed.control.history().subscribe();
    settle(&testbed, config).await?;
    while history.try_recv().is_ok() {}

    let total = phases.last().map_or(0.0, |p| p.end_s);
    let progress = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_prefix(record.name);
    let start = Instant::now();
    let mut primes = plan::PRIMES_BASELINE;
    let mut rate = config.rate_hz;
    for (index, phase) in phases.iter().enumerate() {
        // On standard output, terminal or not (the bar shows only on one).
        progress.suspend(|| {
            println!(
                "[{}] {:>4.0} s  {}",
                record.name, phase.start_s, phase.title
            )
        });
        testbed.set_links(phase.kind, Kind::Baseline);
        if phase.kind.primes() != primes {
            primes = phase.kind.primes();
            testbed.set_primes(primes).await?;
        }
        if phase.kind.rate(config.rate_hz) != rate {
            rate = phase.kind.rate(config.rate_hz);
            testbed.set_rate(rate).await?;
        }
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(start + Duration::from_secs_f64(phase.start_s + 1.0)),
            Duration::from_secs(1),
        );
        loop {
            tick.tick().await;
            let t_s = start.elapsed().as_secs_f64();
            let row = Row::new(t_s, index, testbed.hosting());
            progress.set_position(t_s as u64);
            progress.set_message(format!(
                "{} · on {} · {}",
                phase.title,
                row.node.as_deref().unwrap_or("no node"),
                row.status_text()
            ));
            record.rows.push(row);
            loop {
                match history.try_recv() {
                    Ok(record_) => {
                        let t_s = start.elapsed().as_secs_f64();
                        record.events.push(Event {
                            t_s,
                            phase: phase_at(phases, t_s),
                            record: record_,
                        });
                    }
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::warn!("the recorder missed {n} history records")
                    }
                    Err(_) => break,
                }
            }
            if t_s + 0.5 >= phase.end_s {
                break;
            }
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// Waits for the twin to be entangled before the first phase, so that the
/// baseline starts from a full window (not recorded).
async fn settle(testbed: &Testbed, config: &RunConfig<'_>) -> anyhow::Result<()> {
    let wait = Duration::from_secs(u64::from(config.window_seconds) * 3 + 10);
    let deadline = Instant::now() + wait;
    loop {
        let hosting = testbed.hosting();
        let row = Row::new(0.0, 0, hosting);
        if row.entangled() && row.updates_applied >= u64::from(config.window_seconds) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the twin was not entangled within {} s of starting, before any fault \
             (on {}, status {:?}): is the machine very busy?",
            wait.as_secs(),
            row.node.as_deref().unwrap_or("no node"),
            row.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The phase at `t_s`.
fn phase_at(phases: &[Phase], t_s: f64) -> usize {
    phases
        .iter()
        .position(|p| t_s < p.end_s)
        .unwrap_or(phases.len().saturating_sub(1))
}

/// CPU-milliseconds one update costs with 1K and 25K primes, counted as
/// a CPU share counts them: the fuel burned at the node's calibrated
/// `fuel_per_cpu_second`, through an unlimited share. Wall time would not
/// do: on a busy machine it grows, the share chosen from it grows with it,
/// and phase 2 ends up barely broken, if at all; fuel is what the share
/// meters, so the pause it imposes is the one planned.
fn measure_cost(
    runtime: &Runtime,
    model: &Path,
    fuel_per_cpu_second: u64,
) -> anyhow::Result<(f64, f64)> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let component = runtime.load_model(&bytes)?;
    let guest = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("starting the guest runtime")?;
    let cost = |primes: u32, tries: u64| -> anyhow::Result<f64> {
        guest.block_on(async {
            let mut twin = Twin::create(
                runtime,
                &component,
                "cost",
                Limits::default(),
                &json!({ "primes": primes }),
            )
            .await?;
            let share = CpuShare::new(fuel_per_cpu_second, None);
            twin.set_cpu(share.clone());
            let mut least = f64::INFINITY;
            for seq in 1..=tries {
                let update = Update {
                    seq,
                    ts_ms: 0,
                    property: "value".into(),
                    value: json!(seq),
                };
                let before = share.used_seconds();
                twin.apply(&update).await?;
                least = least.min((share.used_seconds() - before) * 1000.0);
            }
            Ok(least)
        })
    };
    Ok((
        cost(plan::PRIMES_BASELINE, 20)?,
        cost(plan::PRIMES_PHASE_2, 5)?,
    ))
}

/// The largest resident memory of this process and of the broker, bytes.
fn peak_memory(broker: &Broker) -> (u64, Option<u64>) {
    let of = |pid: String| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let broker_pid = match broker {
        Broker::Mosquitto { child, .. } => Some(child.id().to_string()),
        Broker::Embedded { .. } => None,
    };
    (of("self".into()).unwrap_or(0), broker_pid.and_then(of))
}

/// Writes one run's CSV files.
fn write_run(out: &Path, record: &RunRecord, phases: &[Phase]) -> anyhow::Result<()> {
    let titles: Vec<String> = phases.iter().map(|p| p.title.clone()).collect();
    recorder::write_rows(
        &out.join(format!("{}.csv", record.name)),
        &record.rows,
        &titles,
    )?;
    recorder::write_events(
        &out.join(format!("{}-events.csv", record.name)),
        &record.events,
        &titles,
    )
}

/// Draws the figure, writes and prints the summary and the checks; the
/// exit status says whether every check held.
fn report(
    out: &Path,
    phases: &[Phase],
    records: &[RunRecord],
    pacing: &Pacing,
    settings: &Settings,
    (memory, broker_memory): (u64, Option<u64>),
) -> anyhow::Result<ExitCode> {
    let window = f64::from(pacing.window_seconds);
    let checks: Vec<verdict::Check> = records
        .iter()
        .flat_map(|r| verdict::check(phases, r, window, pacing.rate_hz))
        .collect();
    let lines: Vec<verdict::Line> = records
        .iter()
        .flat_map(|r| verdict::summarize(phases, r))
        .collect();
    let table = verdict::table(&lines);
    let title = format!(
        "wasmtwin: the paper's Figure 3, with and without the control plane \
         ({} s phases, {} s window)",
        pacing.phase_seconds, pacing.window_seconds
    );
    let figure_phases: Vec<figure::Phase> = phases
        .iter()
        .map(|p| figure::Phase {
            name: p.title.clone(),
            start_s: p.start_s,
            end_s: p.end_s,
            fault: p.kind != Kind::Baseline,
        })
        .collect();
    let runs: Vec<figure::Run> = records.iter().map(figure_run).collect();
    let thresholds = figure::Thresholds {
        timeliness_ms: settings.bound_ms as f64,
        reliability: 0.9,
        odte: 0.9,
    };
    let drawn = figure::draw(
        &title,
        &figure_phases,
        &runs,
        thresholds,
        &out.join("figure.png"),
        &out.join("figure.svg"),
    );
    let mut summary = format!(
        "# {title}\n\n\
         The model costs {:.3} ms of CPU an update with 1K primes and {:.2} ms with 25K on this \
         machine; the twin's CPU share is {}m and its timeliness bound {} ms at the 99th \
         percentile; reliability and ODTE at least 0.9; the device sends {} update(s)/s.\n\n{table}\n",
        settings.cost_ms.0,
        settings.cost_ms.1,
        settings.share_millis,
        settings.bound_ms,
        pacing.rate_hz
    );
    summary.push_str("## Checks\n\n");
    for check in &checks {
        summary.push_str(&format!(
            "- {} {}\n",
            if check.ok { "✓" } else { "✗" },
            check.what
        ));
    }
    summary.push_str(&format!(
        "\nPeak memory: {:.0} MiB (this process){}.\n",
        memory as f64 / 1048576.0,
        broker_memory.map_or(String::new(), |b| format!(
            " + {:.0} MiB (Mosquitto)",
            b as f64 / 1048576.0
        ))
    ));
    std::fs::write(out.join("summary.md"), &summary)
        .with_context(|| format!("writing {}", out.join("summary.md").display()))?;
    println!("\n{table}");
    for check in &checks {
        println!("{} {}", if check.ok { "✓" } else { "✗" }, check.what);
    }
    println!(
        "\npeak memory {:.0} MiB{}; results in {}",
        memory as f64 / 1048576.0,
        broker_memory.map_or(String::new(), |b| format!(
            " (+ {:.0} MiB Mosquitto)",
            b as f64 / 1048576.0
        )),
        out.display()
    );
    if let Err(e) = drawn {
        eprintln!("the figure was not drawn: {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A run as the figure draws it.
fn figure_run(record: &RunRecord) -> figure::Run {
    let samples = record
        .rows
        .iter()
        .map(|r| figure::Sample {
            t_s: r.t_s,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            reliability: r.reliability,
            odte: r.odte,
            cpu_cores: r.cpu_cores,
            share_cores: r.share_cores,
            node: r.node.clone(),
        })
        .collect();
    let marks = record
        .events
        .iter()
        .filter_map(|e| {
            let (kind, label) = e.reaction()?;
            Some(figure::Mark {
                t_s: e.t_s,
                kind,
                label,
            })
        })
        .collect();
    figure::Run {
        label: record.label.to_string(),
        samples,
        marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtwin::runtime::RuntimeConfig;

    /// Defect: the cost was wall time, so a busy machine (CI running other
    /// work) made the model look dearer, the share chosen from it larger,
    /// and phase 2 barely broke the bound (a p99 of 83 ms against 80),
    /// its scaling decided only once the phase had ended. Counted in fuel,
    /// the cost is the same however busy the machine, and in the units the
    /// share meters.
    #[test]
    fn the_models_cost_is_what_a_share_meters_however_busy_the_machine() {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let model = wasmtwin_tests::plugin("prime");
        let fuel = wasmtwin::runtime::cpu::calibrate(&runtime).unwrap();
        let (light, heavy) = measure_cost(&runtime, &model, fuel).unwrap();
        assert!(
            light > 0.0 && heavy > 10.0 * light,
            "{light} ms, {heavy} ms"
        );

        // Three threads spinning on two cores while it is measured again.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let busy = std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let cost = measure_cost(&runtime, &model, fuel);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            cost
        })
        .unwrap();
        assert!(
            (busy.1 / heavy - 1.0).abs() < 0.01,
            "25K primes cost {heavy} ms idle and {} ms busy",
            busy.1
        );

        // Twice the fuel a CPU-second: the same work is half the CPU-time.
        let (_, halved) = measure_cost(&runtime, &model, fuel * 2).unwrap();
        assert!(
            (heavy / halved - 2.0).abs() < 0.02,
            "{heavy} ms, {halved} ms"
        );
    }
}
