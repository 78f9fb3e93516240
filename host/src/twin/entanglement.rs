//! The context-awareness module: how well a twin renders its physical twin
//! for the application that declared its requirements, measured over a
//! sliding window.
//!
//! - *timeliness*: from the PT producing an update (its timestamp) to the
//!   twin having committed the state change, as percentiles, and the share
//!   of updates within the declared bound;
//! - *reliability*: updates received over updates expected, from the
//!   declared rate and from gaps in the sequence numbers (the lower of the
//!   two counts), capped at 1;
//! - *availability*: the share of the window the twin was running and bound
//!   to its PT;
//! - *ODTE* (overall DT entanglement): timeliness share × reliability ×
//!   availability.
//!
//! The module is pure: callers give it the times, so tests replay any
//! scenario exactly.

use std::collections::VecDeque;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::spec::Requirements;

/// Whether the twin meets its application's requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every requirement met.
    Entangled,
    /// A requirement missed, but the overall entanglement is still at or
    /// above its threshold.
    Degraded,
    /// The overall entanglement is below its threshold.
    Disentangled,
}

/// Timeliness percentiles over the window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The percentile the requirements bound.
    pub required: f64,
}

/// The measures at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Timeliness percentiles; `None` with no update in the window.
    pub timeliness_ms: Option<Percentiles>,
    /// Share of the window's updates within the timeliness bound.
    pub timeliness_share: f64,
    /// Received over expected, capped at 1.
    pub reliability: f64,
    /// Share of the window the twin was available.
    pub availability: f64,
    /// timeliness share × reliability × availability.
    pub odte: f64,
    /// Updates received in the window.
    pub updates_in_window: u64,
    /// Updates the declared rate and the sequence numbers say were sent.
    pub updates_expected: f64,
    /// The verdict.
    pub status: Status,
    /// Each requirement missed, in words.
    pub reasons: Vec<String>,
    /// Where the window's timeliness went, and how the PT's updates
    /// arrived: what the control plane diagnoses a broken requirement from.
    pub parts: Parts,
}

/// The parts of timeliness at the required percentile, and the arrivals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parts {
    /// PT timestamp → the node receiving the message: the network path
    /// (and the PT's clock offset), in ms; `None` with no update.
    pub transit_ms: Option<f64>,
    /// Receipt → the model starting on it: waiting behind earlier updates.
    pub queue_ms: Option<f64>,
    /// The model's call, including any pause for its CPU share.
    pub model_ms: Option<f64>,
    /// Updates per second the PT produces now (from its timestamps).
    pub rate_hz: f64,
    /// Sequence numbers missing between those received (device restarts
    /// apart): updates lost on the way.
    pub gaps: u64,
}

/// When an update was received and its model call started, µs since the
/// Unix epoch; with its commit time, they split its timeliness into parts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// The node received the message.
    pub received_us: u64,
    /// The model call started.
    pub started_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    committed_us: u64,
    seq: u64,
    timeliness_us: u64,
    /// Device restarts before this sample: sequence numbers compare only
    /// within one run of the device.
    #[serde(default)]
    run: u64,
    /// PT timestamp → receipt (zero in windows carried from older nodes).
    #[serde(default)]
    transit_us: u64,
    /// The model call.
    #[serde(default)]
    model_us: u64,
}

/// The device restarting its sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restart {
    /// When the twin applied the first update of the new run, µs.
    pub at_us: u64,
    /// The last sequence number of the run before.
    pub previous_seq: u64,
    /// The first of the new run.
    pub seq: u64,
}

/// The sliding-window measures of one twin.
pub struct Entanglement {
    requirements: Requirements,
    started_us: u64,
    samples: VecDeque<Sample>,
    /// Closed outages `(start, end)` and the open one, in µs.
    outages: VecDeque<(u64, u64)>,
    outage_since: Option<u64>,
    status: Option<Status>,
    /// Device restarts within the window, oldest first.
    restarts: VecDeque<Restart>,
    /// Device restarts seen in all.
    runs: u64,
    /// Which measuring this is, process-wide, and how many samples it has
    /// recorded (pruned or not): where a window sent ahead stood.
    measuring: u64,
    recorded: u64,
}

/// Numbers each measuring a process starts.
static MEASURINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Where a twin's measuring stood when its window was taken: the samples
/// recorded until then, and how many of them the window held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    measuring: u64,
    recorded: u64,
    held: usize,
}

const US_PER_MS: u64 = 1_000;

/// How many of the latest gaps between updates the PT's current rate is
/// taken from.
const RECENT_GAPS: usize = 8;

/// A window's measuring state, carried in a twin's bundle so that its
/// measures go on where they were on the node it moves to. Times are each
/// node's clock: synchronised nodes (NTP) keep the error to milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    started_us: u64,
    samples: Vec<Sample>,
    outages: Vec<(u64, u64)>,
    /// When the twin stopped being available: it left, or was already down.
    away_since_us: u64,
    status: Option<Status>,
    #[serde(default)]
    restarts: Vec<Restart>,
    #[serde(default)]
    runs: u64,
    /// Set when the window carries only the samples recorded since a
    /// window sent ahead of a migration, which the target holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<After>,
}

/// What a window carrying only its latest samples is the rest of: the
/// window sent ahead with the snapshot whose digest is `base`, less its
/// first `dropped` samples (pruned since), `kept` samples remaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct After {
    base: [u8; 32],
    dropped: u64,
    kept: u64,
}

/// The first byte of a window in its compact encoding. A window in JSON
/// (how nodes of earlier releases wrote it, still read) starts with `{`.
const COMPACT_V1: u8 = 1;

/// A window as bundles carry it: postcard (integers as varints), each
/// sample as its difference from the one before (a byte or two a field
/// where the JSON spelt out every number and name).
#[derive(Serialize, Deserialize)]
struct Compact {
    started_us: u64,
    outages: Vec<(u64, u64)>,
    away_since_us: u64,
    status: Option<Status>,
    restarts: Vec<Restart>,
    runs: u64,
    /// Committed time and sequence number as differences (signed: a
    /// window carried between nodes meets another clock, a device
    /// restarting its sequence), then timeliness, run as a difference,
    /// transit and model time.
    samples: Vec<(i64, i64, u64, u64, u64, u64)>,
    after: Option<After>,
}

impl Window {
    /// The window's bytes in a bundle.
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let mut previous = (0u64, 0u64, 0u64);
        let samples = self
            .samples
            .iter()
            .map(|s| {
                let (at, seq, run) = previous;
                previous = (s.committed_us, s.seq, s.run);
                (
                    s.committed_us.wrapping_sub(at) as i64,
                    s.seq.wrapping_sub(seq) as i64,
                    s.timeliness_us,
                    s.run.wrapping_sub(run),
                    s.transit_us,
                    s.model_us,
                )
            })
            .collect();
        let compact = Compact {
            started_us: self.started_us,
            outages: self.outages.clone(),
            away_since_us: self.away_since_us,
            status: self.status,
            restarts: self.restarts.clone(),
            runs: self.runs,
            samples,
            after: self.after,
        };
        Ok(postcard::to_extend(&compact, vec![COMPACT_V1])?)
    }

    /// A window from a bundle, in the compact encoding or in JSON.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Self> {
        match bytes.split_first() {
            Some((b'{', _)) => Ok(serde_json::from_slice(bytes)?),
            Some((&COMPACT_V1, rest)) => {
                let compact: Compact = postcard::from_bytes(rest)?;
                let mut previous = (0u64, 0u64, 0u64);
                let samples = compact
                    .samples
                    .into_iter()
                    .map(|(at, seq, timeliness_us, run, transit_us, model_us)| {
                        let sample = Sample {
                            committed_us: previous.0.wrapping_add(at as u64),
                            seq: previous.1.wrapping_add(seq as u64),
                            timeliness_us,
                            run: previous.2.wrapping_add(run),
                            transit_us,
                            model_us,
                        };
                        previous = (sample.committed_us, sample.seq, sample.run);
                        sample
                    })
                    .collect();
                Ok(Window {
                    started_us: compact.started_us,
                    samples,
                    outages: compact.outages,
                    away_since_us: compact.away_since_us,
                    status: compact.status,
                    restarts: compact.restarts,
                    runs: compact.runs,
                    after: compact.after,
                })
            }
            Some((other, _)) => anyhow::bail!("unknown window encoding {other}"),
            None => anyhow::bail!("the window is empty"),
        }
    }

    /// This window, taken at `now`, as the samples recorded since `then`,
    /// when the window taken at `then` went ahead with snapshot `base`:
    /// samples are only ever added at the back and pruned from the front,
    /// so the target rebuilds it exactly. `None` if `then` was another
    /// measuring's, or if the samples since fill the window.
    pub fn since(&self, now: Mark, then: Mark, base: [u8; 32]) -> Option<Window> {
        if now.measuring != then.measuring || now.held != self.samples.len() {
            return None;
        }
        let new = usize::try_from(now.recorded.checked_sub(then.recorded)?).ok()?;
        let kept = self.samples.len().checked_sub(new)?;
        let dropped = then.held.checked_sub(kept)?;
        if kept == 0 {
            return None;
        }
        Some(Window {
            samples: self.samples[kept..].to_vec(),
            after: Some(After {
                base,
                dropped: dropped as u64,
                kept: kept as u64,
            }),
            ..self.without_samples()
        })
    }

    /// The window whole again, if it came as its samples since the one
    /// sent ahead with snapshot `base` (which the node holds as `ahead`).
    /// Refuses one of another snapshot, or one that does not fit.
    pub fn whole(self, base: Option<(&[u8; 32], &Window)>) -> anyhow::Result<Window> {
        let Some(after) = self.after else {
            return Ok(self);
        };
        let Some((digest, ahead)) = base else {
            anyhow::bail!(
                "the entanglement window came as its samples since one sent ahead, \
                 but none was sent here"
            );
        };
        anyhow::ensure!(
            after.base == *digest,
            "the entanglement window is against snapshot {}, but this node holds {}",
            hex::encode(after.base),
            hex::encode(digest)
        );
        let fits = ahead.after.is_none()
            && after.dropped.checked_add(after.kept) == Some(ahead.samples.len() as u64);
        anyhow::ensure!(
            fits,
            "the entanglement window keeps {} of the {} samples sent ahead after dropping {}",
            after.kept,
            ahead.samples.len(),
            after.dropped
        );
        let mut samples = Vec::with_capacity(after.kept as usize + self.samples.len());
        samples.extend_from_slice(&ahead.samples[after.dropped as usize..]);
        samples.extend(self.samples);
        Ok(Window {
            samples,
            after: None,
            ..self
        })
    }

    /// Everything but the samples.
    fn without_samples(&self) -> Window {
        Window {
            started_us: self.started_us,
            samples: Vec::new(),
            outages: self.outages.clone(),
            away_since_us: self.away_since_us,
            status: self.status,
            restarts: self.restarts.clone(),
            runs: self.runs,
            after: None,
        }
    }
}

impl Entanglement {
    /// Starts measuring at `now_us` (µs since the Unix epoch).
    pub fn new(requirements: Requirements, now_us: u64) -> Self {
        Self {
            requirements,
            started_us: now_us,
            samples: VecDeque::new(),
            outages: VecDeque::new(),
            outage_since: None,
            status: None,
            restarts: VecDeque::new(),
            runs: 0,
            measuring: MEASURINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            recorded: 0,
        }
    }

    /// The window of a twin leaving at `now_us`.
    pub fn leave(&self, now_us: u64) -> Window {
        Window {
            started_us: self.started_us,
            samples: self.samples.iter().cloned().collect(),
            outages: self.outages.iter().copied().collect(),
            away_since_us: self.outage_since.unwrap_or(now_us),
            status: self.status,
            restarts: self.restarts.iter().copied().collect(),
            runs: self.runs,
            after: None,
        }
    }

    /// Where this measuring stands: with [`Entanglement::leave`] under the
    /// same lock, where the window it returns stood.
    pub fn mark(&self) -> Mark {
        Mark {
            measuring: self.measuring,
            recorded: self.recorded,
            held: self.samples.len(),
        }
    }

    /// Goes on measuring `window`, the twin back at `now_us`: the time it
    /// was away counts against its availability.
    pub fn resume(requirements: Requirements, window: Window, now_us: u64) -> Self {
        let mut outages = VecDeque::from(window.outages);
        outages.push_back((window.away_since_us.min(now_us), now_us));
        Self {
            requirements,
            started_us: window.started_us.min(now_us),
            samples: window.samples.into(),
            outages,
            outage_since: None,
            status: window.status,
            restarts: window.restarts.into(),
            runs: window.runs,
            measuring: MEASURINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            recorded: 0,
        }
    }

    /// Replaces the requirements (the spec changed); the window's samples
    /// stay.
    pub fn set_requirements(&mut self, requirements: Requirements) {
        self.requirements = requirements;
    }

    /// Records an update with sequence number `seq`, produced by the PT at
    /// `pt_ts_ms` and committed by the twin at `committed_us`. A PT clock
    /// ahead of ours counts as zero timeliness rather than negative.
    /// `timing` splits it into parts. Returns the update's timeliness in µs.
    pub fn record(&mut self, seq: u64, pt_ts_ms: u64, timing: Timing, committed_us: u64) -> u64 {
        let produced_us = pt_ts_ms.saturating_mul(US_PER_MS);
        let timeliness_us = committed_us.saturating_sub(produced_us);
        self.recorded += 1;
        self.samples.push_back(Sample {
            committed_us,
            seq,
            timeliness_us,
            run: self.runs,
            transit_us: timing.received_us.saturating_sub(produced_us),
            model_us: committed_us.saturating_sub(timing.started_us),
        });
        timeliness_us
    }

    /// Notes that the device restarted its sequence numbers: the update
    /// numbered `seq`, applied at `now_us`, follows `previous_seq`. Record
    /// that update after this. The restart is among the reasons while it
    /// is in the window.
    pub fn restarted(&mut self, previous_seq: u64, seq: u64, now_us: u64) {
        self.runs += 1;
        self.restarts.push_back(Restart {
            at_us: now_us,
            previous_seq,
            seq,
        });
    }

    /// Marks the twin available (running and bound) or not from `now_us`.
    pub fn set_available(&mut self, available: bool, now_us: u64) {
        match (available, self.outage_since) {
            (false, None) => self.outage_since = Some(now_us),
            (true, Some(since)) => {
                self.outages.push_back((since, now_us));
                self.outage_since = None;
            }
            _ => {}
        }
    }

    fn window_us(&self) -> u64 {
        u64::from(self.requirements.window_seconds) * 1_000_000
    }

    /// Evaluates the window ending at `now_us`. Also returns the previous
    /// status when it changed, so the caller can log the transition.
    pub fn evaluate(&mut self, now_us: u64) -> (Report, Option<Option<Status>>) {
        let window = self.window_us();
        let start = now_us.saturating_sub(window).max(self.started_us);
        while self.samples.front().is_some_and(|s| s.committed_us < start) {
            self.samples.pop_front();
        }
        while self.outages.front().is_some_and(|&(_, end)| end < start) {
            self.outages.pop_front();
        }
        while self.restarts.front().is_some_and(|r| r.at_us < start) {
            self.restarts.pop_front();
        }
        let span = now_us.saturating_sub(start);
        let report = self.measure(start, now_us, span);
        let changed = (self.status != Some(report.status)).then_some(self.status);
        self.status = Some(report.status);
        (report, changed)
    }

    fn measure(&self, start: u64, now: u64, span: u64) -> Report {
        let req = &self.requirements;
        let received = self.samples.len() as u64;
        let bound_us = req.timeliness.bound_ms.saturating_mul(US_PER_MS);

        let timeliness_ms = (received > 0).then(|| self.percentiles());
        let within = self
            .samples
            .iter()
            .filter(|s| s.timeliness_us <= bound_us)
            .count() as u64;
        let timeliness_share = if received == 0 {
            1.0
        } else {
            within as f64 / received as f64
        };

        // Expected from the declared rate over the time measured so far, and
        // from the span of sequence numbers seen; the larger expectation
        // (the lower reliability) wins. By rate, whole updates only: a
        // device on time delivers floor(rate × span) of them in any span,
        // and one more only if its phase allows. Fractions would judge it
        // lossy by that phase, most in a young window (1 of 1.12 expected
        // is 0.89 a second after the twin starts).
        let by_rate = (req.expected_rate_hz * span as f64 / 1e6).floor();
        let by_sequence = self.sequence_span() as f64;
        let expected = by_rate.max(by_sequence);
        let reliability = if expected < 1.0 {
            1.0
        } else {
            (received as f64 / expected).min(1.0)
        };

        let down: u64 = self
            .outages
            .iter()
            .copied()
            .chain(self.outage_since.map(|since| (since, now)))
            .map(|(s, e)| e.min(now).saturating_sub(s.max(start)))
            .sum();
        let availability = if span == 0 {
            1.0
        } else {
            1.0 - (down.min(span) as f64 / span as f64)
        };

        let odte = timeliness_share * reliability * availability;
        let mut reasons = Vec::new();
        if let Some(t) = &timeliness_ms
            && t.required > req.timeliness.bound_ms as f64
        {
            reasons.push(format!(
                "timeliness p{} is {:.1} ms, above the {} ms bound",
                req.timeliness.percentile, t.required, req.timeliness.bound_ms
            ));
        }
        if reliability < req.reliability {
            reasons.push(format!(
                "reliability is {reliability:.3} ({received} of {expected:.0} expected updates), below {}",
                req.reliability
            ));
        }
        if availability < req.availability {
            reasons.push(format!(
                "availability is {availability:.3}, below {}",
                req.availability
            ));
        }
        for restart in &self.restarts {
            reasons.push(format!(
                "the device restarted its sequence numbers {:.0} s ago (update {} after {})",
                now.saturating_sub(restart.at_us) as f64 / 1e6,
                restart.seq,
                restart.previous_seq
            ));
        }
        let status = if odte < req.odte {
            reasons.push(format!(
                "overall entanglement is {odte:.3}, below {}",
                req.odte
            ));
            Status::Disentangled
        } else if reasons.is_empty() {
            Status::Entangled
        } else {
            Status::Degraded
        };
        Report {
            timeliness_ms,
            timeliness_share,
            reliability,
            availability,
            odte,
            updates_in_window: received,
            updates_expected: expected,
            status,
            reasons,
            parts: self.parts(by_sequence),
        }
    }

    /// The rate the PT produces updates at now: one over the median gap
    /// between the production times of its last [`RECENT_GAPS`]
    /// consecutive updates. It follows a new rate within a few updates,
    /// and neither a burst of queued updates (it uses PT timestamps, not
    /// arrivals) nor an occasional loss moves it.
    fn rate_hz(&self) -> f64 {
        let produced = |s: &Sample| s.committed_us.saturating_sub(s.timeliness_us);
        let skip = self.samples.len().saturating_sub(RECENT_GAPS + 1);
        let recent = self.samples.iter().skip(skip);
        let mut gaps: Vec<u64> = recent
            .clone()
            .zip(recent.skip(1))
            .filter(|(a, b)| a.run == b.run)
            .map(|(a, b)| produced(b).saturating_sub(produced(a)))
            .collect();
        if gaps.is_empty() {
            return 0.0;
        }
        gaps.sort_unstable();
        let median = gaps[gaps.len() / 2];
        if median == 0 {
            0.0
        } else {
            1e6 / median as f64
        }
    }

    /// The parts of timeliness, each at the required percentile, the PT's
    /// current rate and the gaps in its sequence numbers.
    fn parts(&self, by_sequence: f64) -> Parts {
        let received = self.samples.len();
        let quantile = self.requirements.timeliness.percentile / 100.0;
        let at_quantile = |part: &dyn Fn(&Sample) -> u64| {
            let mut values: Vec<u64> = self.samples.iter().map(part).collect();
            values.sort_unstable();
            let rank = ((values.len() as f64 * quantile).ceil() as usize).clamp(1, values.len());
            values[rank - 1] as f64 / US_PER_MS as f64
        };
        let (transit_ms, queue_ms, model_ms) = if received == 0 {
            (None, None, None)
        } else {
            (
                Some(at_quantile(&|s| s.transit_us)),
                Some(at_quantile(&|s| {
                    s.timeliness_us
                        .saturating_sub(s.transit_us)
                        .saturating_sub(s.model_us)
                })),
                Some(at_quantile(&|s| s.model_us)),
            )
        };
        Parts {
            transit_ms,
            queue_ms,
            model_ms,
            rate_hz: self.rate_hz(),
            gaps: (by_sequence as u64).saturating_sub(received as u64),
        }
    }

    /// Updates the sequence numbers in the window say were sent: the span
    /// of each run of the device, added up.
    fn sequence_span(&self) -> u64 {
        let mut spans = std::collections::BTreeMap::<u64, (u64, u64)>::new();
        for sample in &self.samples {
            let span = spans.entry(sample.run).or_insert((sample.seq, sample.seq));
            span.0 = span.0.min(sample.seq);
            span.1 = span.1.max(sample.seq);
        }
        spans
            .values()
            .map(|(lo, hi)| (hi - lo).saturating_add(1))
            .fold(0, u64::saturating_add)
    }

    fn percentiles(&self) -> Percentiles {
        // Microseconds up to an hour, three significant digits: an
        // HDR histogram answers any percentile within 0.1 %.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant bounds are valid");
        for sample in &self.samples {
            histogram.saturating_record(sample.timeliness_us.max(1));
        }
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / US_PER_MS as f64;
        Percentiles {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            required: ms(self.requirements.timeliness.percentile / 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    /// Feeds `seconds` of a PT sending `rate` updates per second, each
    /// arriving `latency_ms` after it was produced, skipping those `lose`
    /// says were lost. Returns the last sequence number sent.
    fn feed(
        e: &mut Entanglement,
        from_s: u64,
        seconds: u64,
        rate: u64,
        latency_ms: u64,
        mut seq: u64,
        lose: impl Fn(u64) -> bool,
    ) -> u64 {
        for i in 0..seconds * rate {
            seq += 1;
            let produced = T0 + from_s * S + i * S / rate;
            if !lose(seq) {
                let committed = produced + latency_ms * 1000;
                // Half the latency on the way, the model's 1 ms last.
                let timing = Timing {
                    received_us: produced + latency_ms * 500,
                    started_us: committed - 1000,
                };
                e.record(seq, produced / 1000, timing, committed);
            }
        }
        seq
    }

    fn paper() -> Requirements {
        Requirements::default()
    }

    /// The control plane tells a slow network from a slow model by these.
    #[test]
    fn timeliness_is_split_into_transit_queue_and_model() {
        let mut e = Entanglement::new(paper(), T0);
        // 40 ms late: 20 on the way, 19 queued, 1 in the model; every
        // fifth update lost.
        feed(&mut e, 0, 30, 2, 40, 0, |seq| seq % 5 == 0);
        let (report, _) = e.evaluate(T0 + 30 * S);
        let parts = report.parts;
        assert_eq!(parts.transit_ms, Some(20.0), "{parts:?}");
        assert_eq!(parts.queue_ms, Some(19.0), "{parts:?}");
        assert_eq!(parts.model_ms, Some(1.0), "{parts:?}");
        // Two a second, whatever was lost on the way.
        assert!((parts.rate_hz - 2.0).abs() < 0.01, "{parts:?}");
        assert_eq!(parts.gaps, 11, "{parts:?}");
        let (empty, _) = Entanglement::new(paper(), T0).evaluate(T0 + S);
        assert_eq!(empty.parts.transit_ms, None);
    }

    #[test]
    fn a_window_comes_back_whole_from_its_compact_encoding_and_from_json() {
        let mut e = Entanglement::new(paper(), T0);
        let last = feed(&mut e, 0, 10, 1000, 3, 0, |seq| seq % 97 == 0);
        // The device restarts its sequence, and a sample committed by a
        // node whose clock is behind comes after a later one.
        e.restarted(last, 1, T0 + 10 * S);
        feed(&mut e, 10, 1, 1000, 3, 0, |_| false);
        let timing = Timing {
            received_us: T0,
            started_us: T0,
        };
        e.record(1001, T0 / 1000, timing, T0 + 5 * S);
        e.set_available(false, T0 + 11 * S);
        let window = e.leave(T0 + 12 * S);
        assert!(window.samples.len() > 10_000);

        let compact = window.encode().unwrap();
        assert_eq!(Window::decode(&compact).unwrap(), window);
        let json = serde_json::to_vec(&window).unwrap();
        assert_eq!(Window::decode(&json).unwrap(), window);
        // Each sample takes a few bytes where JSON spelt it out.
        assert!(
            compact.len() * 5 < json.len(),
            "{} bytes compact, {} in JSON",
            compact.len(),
            json.len()
        );

        for (bytes, error) in [
            (&b"\x07..."[..], "unknown window encoding 7"),
            (&b""[..], "the window is empty"),
            (&compact[..compact.len() / 2], ""),
        ] {
            let e = Window::decode(bytes).unwrap_err().to_string();
            assert!(e.contains(error), "{e}");
        }
    }

    #[test]
    fn a_moved_twin_keeps_its_window_and_counts_the_move_as_an_outage() {
        let mut e = Entanglement::new(paper(), T0);
        let last = feed(&mut e, 0, 60, 1, 13, 0, |_| false);
        let (before, _) = e.evaluate(T0 + 60 * S);
        // Six seconds away, carried as JSON like a bundle carries it.
        let carried = serde_json::to_string(&e.leave(T0 + 60 * S)).unwrap();
        let window: Window = serde_json::from_str(&carried).unwrap();
        let mut moved = Entanglement::resume(paper(), window, T0 + 66 * S);
        feed(&mut moved, 66, 1, 1, 13, last + 6, |_| false);
        let (after, changed) = moved.evaluate(T0 + 67 * S);
        assert_eq!(before.status, Status::Entangled);
        assert_eq!(
            changed,
            Some(Some(Status::Entangled)),
            "the status goes on from where it was, not from nothing: {after:?}"
        );
        // The 23 updates of 37…59 s it brought along, and the one since.
        assert_eq!(after.updates_in_window, 24, "{after:?}");
        assert!(
            (after.availability - 0.8).abs() < 0.01,
            "six of thirty seconds away: {after:?}"
        );
        // A fresh window would know nothing of the minute before.
        let mut fresh = Entanglement::new(paper(), T0 + 66 * S);
        feed(&mut fresh, 66, 1, 1, 13, last + 6, |_| false);
        assert_eq!(fresh.evaluate(T0 + 67 * S).0.updates_in_window, 1);
    }

    #[test]
    fn the_papers_baseline_is_entangled() {
        let mut e = Entanglement::new(paper(), T0);
        feed(&mut e, 0, 60, 1, 13, 0, |_| false);
        let (report, changed) = e.evaluate(T0 + 60 * S);
        assert_eq!(report.status, Status::Entangled, "{report:?}");
        assert_eq!(changed, Some(None));
        assert_eq!(report.updates_in_window, 30);
        assert!((report.reliability - 1.0).abs() < 0.05, "{report:?}");
        let t = report.timeliness_ms.unwrap();
        assert!((12.9..=13.1).contains(&t.p50), "{t:?}");
        assert!(report.odte > 0.9);
    }

    /// A device on time is entangled from the start, whatever its phase:
    /// a second after the twin started, a window expecting 1.12 updates of
    /// a device whose first came at 0.9 s used to report reliability 0.89.
    #[test]
    fn a_device_on_time_is_entangled_from_the_twin_s_start() {
        let mut e = Entanglement::new(paper(), T0);
        let mut next = 0;
        for tick in 1..=200 {
            let now = T0 + tick * S / 20;
            // One a second from 0.9 s, each committed 13 ms after.
            while T0 + 900_000 + next * S + 13_000 <= now {
                let produced = T0 + 900_000 + next * S;
                next += 1;
                let timing = Timing {
                    received_us: produced + 6_000,
                    started_us: produced + 12_000,
                };
                e.record(next, produced / 1000, timing, produced + 13_000);
            }
            let (report, _) = e.evaluate(now);
            assert_eq!(report.reliability, 1.0, "at {tick}/20 s: {report:?}");
            assert_eq!(
                report.status,
                Status::Entangled,
                "at {tick}/20 s: {report:?}"
            );
        }
        // Silence is still noticed: expected keeps growing, in whole updates.
        let (report, _) = e.evaluate(T0 + 30 * S);
        assert!(report.reliability < 0.5, "{report:?}");
        assert_eq!(report.status, Status::Disentangled);
    }

    #[test]
    fn a_lossy_slow_network_disentangles() {
        // Phase 1: 70 ms latency, 15 % loss (every seventh update lost).
        let mut e = Entanglement::new(paper(), T0);
        feed(&mut e, 0, 60, 1, 70, 0, |seq| seq % 7 == 0);
        let (report, _) = e.evaluate(T0 + 60 * S);
        assert!(report.reliability < 0.9, "{report:?}");
        assert_ne!(report.status, Status::Entangled);
        assert!(
            report.reasons.iter().any(|r| r.starts_with("reliability")),
            "{report:?}"
        );
    }

    #[test]
    fn a_pt_at_half_rate_is_noticed() {
        // Phase 3: the technician halves the rate; sequence numbers have no
        // gaps, so only the declared rate reveals it.
        let mut e = Entanglement::new(paper(), T0);
        let seq = feed(&mut e, 0, 30, 1, 13, 0, |_| false);
        assert_eq!(e.evaluate(T0 + 30 * S).0.status, Status::Entangled);
        let mut seq = seq;
        for i in 0..15 {
            seq += 1;
            let produced = T0 + 30 * S + i * 2 * S;
            e.record(seq, produced / 1000, Timing::default(), produced + 13_000);
        }
        let (report, changed) = e.evaluate(T0 + 60 * S);
        assert!((report.reliability - 0.5).abs() < 0.05, "{report:?}");
        assert_eq!(report.status, Status::Disentangled);
        assert_eq!(changed, Some(Some(Status::Entangled)));
    }

    #[test]
    fn slow_models_miss_the_timeliness_bound() {
        // Phase 2: 25k primes: every update takes 1.2 s to commit.
        let mut e = Entanglement::new(paper(), T0);
        feed(&mut e, 0, 40, 1, 1200, 0, |_| false);
        let (report, _) = e.evaluate(T0 + 41 * S);
        assert_eq!(report.timeliness_share, 0.0);
        assert_eq!(report.status, Status::Disentangled);
        assert!(
            report.reasons[0].contains("above the 1000 ms bound"),
            "{report:?}"
        );
    }

    #[test]
    fn outages_count_against_availability() {
        let mut e = Entanglement::new(paper(), T0);
        feed(&mut e, 0, 30, 1, 10, 0, |_| false);
        e.set_available(false, T0 + 24 * S);
        e.set_available(true, T0 + 27 * S);
        let (report, _) = e.evaluate(T0 + 30 * S);
        assert!((report.availability - 0.9).abs() < 0.001, "{report:?}");
        // An outage still open counts up to now.
        e.set_available(false, T0 + 40 * S);
        let (report, _) = e.evaluate(T0 + 45 * S);
        assert!(report.availability < 0.9, "{report:?}");
        assert!(report.reasons.iter().any(|r| r.starts_with("availability")));
    }

    #[test]
    fn defect_11_a_device_restart_is_a_reason_not_a_collapse_of_reliability() {
        let mut e = Entanglement::new(paper(), T0);
        // Ten updates a second: 1..=100, then the device restarts at 1.
        for seq in 1..=100u64 {
            e.record(
                seq,
                (T0 + seq * S / 10) / 1000,
                Timing::default(),
                T0 + seq * S / 10,
            );
        }
        e.restarted(100, 1, T0 + 101 * S / 10);
        for seq in 1..=100u64 {
            let at = T0 + (100 + seq) * S / 10;
            e.record(seq, at / 1000, Timing::default(), at);
        }
        let (report, _) = e.evaluate(T0 + 20 * S);
        assert!(report.reliability > 0.99, "{report:?}");
        assert!(
            report
                .reasons
                .iter()
                .any(|r| r.contains("restarted its sequence numbers")),
            "{report:?}"
        );
        // One wild number (2^64 - 1) does not overflow the span.
        e.record(
            u64::MAX,
            (T0 + 20 * S) / 1000,
            Timing::default(),
            T0 + 20 * S,
        );
        e.restarted(u64::MAX, 101, T0 + 20 * S + 1);
        e.record(
            101,
            (T0 + 20 * S) / 1000,
            Timing::default(),
            T0 + 20 * S + 2,
        );
        let (report, _) = e.evaluate(T0 + 21 * S);
        assert!(report.reliability > 0.0, "{report:?}");
    }

    #[test]
    fn a_pt_clock_ahead_of_ours_is_not_negative() {
        let mut e = Entanglement::new(paper(), T0);
        e.record(1, (T0 + 5 * S) / 1000, Timing::default(), T0 + S);
        let (report, _) = e.evaluate(T0 + 2 * S);
        assert_eq!(report.timeliness_share, 1.0);
        assert!(report.timeliness_ms.unwrap().p99 <= 0.01);
    }
}
