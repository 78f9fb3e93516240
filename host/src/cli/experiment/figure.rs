//! The figure of an experiment: a reproduction of the paper's Figure 3, which
//! follows a digital twin's timeliness, reliability, entanglement (ODTE), CPU
//! and placement over time through phases of injected faults.
//!
//! [`draw`] renders the same scene twice, once into a PNG and once into an SVG,
//! with `plotters`. Text is laid out with `ab_glyph`, which needs a TrueType
//! font registered at runtime: [`load_font`] finds one on the system (no font is
//! embedded, and fontconfig is not needed).
//!
//! Layout, top to bottom: the title, a legend row, a header band (phase names
//! and the labels of the control plane's actions), then five panels sharing the
//! time axis: timeliness, reliability, ODTE, CPU and the node strip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// One second of a run, as the recorder sampled it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Timeliness over the window: median, ms (None: no update in the window).
    pub p50_ms: Option<f64>,
    /// Timeliness over the window: 99th percentile, ms (None: no update in the window).
    pub p99_ms: Option<f64>,
    /// Received over expected updates in the window, [0, 1].
    pub reliability: f64,
    /// Overall entanglement (ODTE), [0, 1].
    pub odte: f64,
    /// Cores the twin used recently.
    pub cpu_cores: f64,
    /// Its CPU share in cores (None: unlimited).
    pub share_cores: Option<f64>,
    /// The node it runs on (e.g. "edge", "cloud"); None while it runs nowhere.
    pub node: Option<String>,
}

/// A phase of the experiment.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Name written at the top of the figure, e.g. "phase 1: network".
    pub name: String,
    /// Start, seconds since the run started.
    pub start_s: f64,
    /// End, seconds since the run started.
    pub end_s: f64,
    /// false for baseline phases
    pub fault: bool,
}

/// What the control plane did, at a time.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Seconds since the run started.
    pub t_s: f64,
    /// What kind of action it was (sets the color).
    pub kind: MarkKind,
    /// short text, e.g. "migrate edge→cloud", "scale 200m→1000m", "notify: 0.50/s"
    pub label: String,
}

/// The kinds of actions of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// The twin moved to another node.
    Migrate,
    /// The twin's CPU share changed.
    Scale,
    /// Someone (e.g. the operator) was notified.
    Notify,
    /// Anything else.
    Other,
}

/// One run of the experiment.
#[derive(Debug, Clone)]
pub struct Run {
    /// e.g. "with the control plane" / "observing only"
    pub label: String,
    /// The samples, in time order.
    pub samples: Vec<Sample>,
    /// The control plane's actions, in any order.
    pub marks: Vec<Mark>,
}

/// The requirements, drawn as thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Highest acceptable p99 timeliness, ms.
    pub timeliness_ms: f64,
    /// Lowest acceptable reliability, [0, 1].
    pub reliability: f64,
    /// Lowest acceptable ODTE, [0, 1].
    pub odte: f64,
}

// ---------------------------------------------------------------------------
// Fonts

/// The family name the figure asks plotters for.
const FONT: &str = "sans-serif";

/// Well-known places of a sans font, tried first and in this order.
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Where to look for any `*.ttf` when none of the candidates exists.
const FONT_DIR: &str = "/usr/share/fonts";
/// How deep the fallback walk goes below [`FONT_DIR`].
const FONT_WALK_DEPTH: usize = 4;
/// How many directory entries the fallback walk looks at, at most, so that a
/// huge font tree cannot stall the figure.
const FONT_WALK_BUDGET: usize = 20_000;

/// Finds a TrueType sans font on the system and registers it with plotters as
/// "sans-serif". Runs once per process; later calls return the first outcome.
pub fn load_font() -> Result<()> {
    // The error is kept as text: anyhow::Error is not Clone, and every caller
    // should see the same message.
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            find_and_register_font(&FONT_CANDIDATES, Path::new(FONT_DIR))
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Tries `candidates`, then any `*.ttf` under `dir` (walked only if no
/// candidate works); registers the first file that parses as a font.
fn find_and_register_font(candidates: &[&str], dir: &Path) -> Result<()> {
    let mut unusable = Vec::new();
    let known = candidates.iter().map(PathBuf::from);
    let walked = std::iter::once_with(|| walk_for_ttf(dir)).flatten();
    for path in known.chain(walked) {
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // absent or unreadable: try the next one
        };
        // plotters keeps fonts in a process-wide table that borrows them for
        // the rest of the process, so it wants `'static` bytes. Leaking one
        // font file is fine: load_font runs this once per process (OnceLock).
        // A file that fails to parse is leaked too; that takes a corrupt
        // *.ttf, and costs at most its size, once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
            return Ok(());
        }
        unusable.push(path.display().to_string());
    }
    let mut dirs: Vec<String> = candidates
        .iter()
        .filter_map(|p| Path::new(p).parent())
        .map(|d| d.display().to_string())
        .collect();
    dirs.dedup();
    let unusable = if unusable.is_empty() {
        String::new()
    } else {
        format!(" (found but could not parse: {})", unusable.join(", "))
    };
    bail!(
        "no TrueType font to draw the figure with: looked in {} and for any *.ttf up to \
         {FONT_WALK_DEPTH} levels under {}{unusable}; install one, e.g. \
         `apt install fonts-dejavu-core`",
        dirs.join(", "),
        dir.display(),
    )
}

/// Every `*.ttf` under `root`, at most [`FONT_WALK_DEPTH`] levels down, sans
/// regular faces first (a bold, italic or monospace face still beats no text).
fn walk_for_ttf(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![(root.to_path_buf(), 0)];
    let mut budget = FONT_WALK_BUDGET;
    // `depth`: how far below `root` a directory is; its files are one deeper.
    'walk: while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // unreadable directory: skip it
        };
        for entry in entries.flatten() {
            if budget == 0 {
                break 'walk;
            }
            budget -= 1;
            let path = entry.path();
            if path.is_dir() {
                if depth + 2 <= FONT_WALK_DEPTH {
                    pending.push((path, depth + 1));
                }
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
            {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let styled = ["bold", "italic", "oblique", "mono", "condensed", "light"]
            .iter()
            .any(|s| name.contains(s));
        (!name.contains("sans"), styled, p.clone())
    });
    found
}

// ---------------------------------------------------------------------------
// Look

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1100;

// Horizontal layout, px, shared by every panel so that their time axes line up.
const MARGIN_LEFT: u32 = 10;
const Y_AREA: u32 = 104;
const MARGIN_RIGHT: u32 = 36;

// Vertical layout: fixed heights, px. The four data panels share the rest.
const TITLE_H: u32 = 44;
const LEGEND_H: u32 = 28;
const PHASE_NAMES_H: u32 = 36;
const MARK_ROW_H: u32 = 16;
const MAX_MARK_ROWS: usize = 3;
const STRIP_ROW_H: u32 = 32;
const X_AXIS_H: u32 = 46;
const PANEL_GAP: u32 = 10;
/// Shares of the remaining height: timeliness, reliability, ODTE, CPU.
const PANEL_WEIGHTS: [f64; 4] = [0.34, 0.2, 0.2, 0.26];

const TEXT: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(110, 110, 110);
/// The subject run (e.g. with the control plane).
const SUBJECT: RGBColor = RGBColor(28, 99, 190);
/// The second run (e.g. observing only), lighter so the subject stays in front.
const SECOND: RGBColor = RGBColor(150, 150, 150);
const THRESHOLD: RGBColor = RGBColor(205, 30, 30);
/// Tints of the fault phases, one after the other.
const PHASE_TINTS: [RGBColor; 4] = [
    RGBColor(253, 228, 205),
    RGBColor(218, 232, 250),
    RGBColor(228, 242, 208),
    RGBColor(238, 224, 246),
];
/// Colors of the nodes, in the order they first appear.
const NODE_COLORS: [RGBColor; 6] = [
    RGBColor(102, 194, 165),
    RGBColor(141, 160, 203),
    RGBColor(252, 141, 98),
    RGBColor(231, 138, 195),
    RGBColor(166, 216, 84),
    RGBColor(255, 217, 47),
];

fn mark_color(kind: MarkKind) -> RGBColor {
    match kind {
        MarkKind::Migrate => RGBColor(128, 50, 180),
        MarkKind::Scale => RGBColor(210, 100, 0),
        MarkKind::Notify => RGBColor(0, 130, 100),
        MarkKind::Other => RGBColor(90, 90, 90),
    }
}

fn mark_kind_name(kind: MarkKind) -> &'static str {
    match kind {
        MarkKind::Migrate => "migrate",
        MarkKind::Scale => "scale",
        MarkKind::Notify => "notify",
        MarkKind::Other => "other action",
    }
}

/// `c` blended toward white by `amount` in [0, 1]: an opaque lighter color
/// (alpha would let the phase tints show through the node bands).
fn lighten(c: RGBColor, amount: f64) -> RGBColor {
    let mix = |v: u8| (f64::from(v) + (255.0 - f64::from(v)) * amount).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

fn text_style(size: u32, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FONT, size).into_font().color(&color).pos(Pos::new(h, v))
}

// ---------------------------------------------------------------------------
// Entry point

/// Draws `runs` (one or two; the first is the subject, e.g. with the control plane,
/// the second the baseline) over `phases` into `png` and `svg`.
///
/// The parent directories of `png` and `svg` are created if needed. Fails if no
/// font can be found (see [`load_font`]), if `runs` is empty or holds more than
/// two runs, or if a file cannot be written.
pub fn draw(
    title: &str,
    phases: &[Phase],
    runs: &[Run],
    thresholds: Thresholds,
    png: &Path,
    svg: &Path,
) -> Result<()> {
    load_font()?;
    if runs.is_empty() || runs.len() > 2 {
        bail!("the figure draws one or two runs, got {}", runs.len());
    }
    let scene = Scene::new(title, phases, runs, thresholds);
    for path in [png, svg] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    {
        let root = BitMapBackend::new(png, (WIDTH, HEIGHT)).into_drawing_area();
        scene.render(&root)?;
        root.present()
            .with_context(|| format!("writing {}", png.display()))?;
    }
    let root = SVGBackend::new(svg, (WIDTH, HEIGHT)).into_drawing_area();
    scene.render(&root)?;
    root.present()
        .with_context(|| format!("writing {}", svg.display()))?;
    Ok(())
}

/// What the figure shows, with the axis ranges worked out once for both files.
struct Scene<'a> {
    title: &'a str,
    phases: &'a [Phase],
    runs: &'a [Run],
    thresholds: Thresholds,
    /// The time axis, s.
    t0: f64,
    t1: f64,
    /// The sampling interval, s: how long a sample lasts, and how long a
    /// silence must be to break a line.
    dt: f64,
    /// The timeliness axis (log), ms.
    ms_lo: f64,
    ms_hi: f64,
    /// The top of the CPU axis, cores.
    cpu_hi: f64,
    /// Every node name, in the order of first appearance (sets its color).
    nodes: Vec<String>,
}

/// The top of the [0, 1] axes: a little headroom so that 1.0 is not on the frame.
const UNIT_HI: f64 = 1.05;

impl<'a> Scene<'a> {
    fn new(title: &'a str, phases: &'a [Phase], runs: &'a [Run], thresholds: Thresholds) -> Self {
        let samples = || runs.iter().flat_map(|r| r.samples.iter());

        // The sampling interval: the median step of the first run that has two
        // samples; 1 s if none has.
        let dt = runs
            .iter()
            .find_map(|r| {
                let mut steps: Vec<f64> = r
                    .samples
                    .windows(2)
                    .map(|w| w[1].t_s - w[0].t_s)
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .collect();
                steps.sort_by(f64::total_cmp);
                steps.get(steps.len() / 2).copied()
            })
            .unwrap_or(1.0);

        let starts = phases
            .iter()
            .map(|p| p.start_s)
            .chain(samples().map(|s| s.t_s));
        let ends = phases
            .iter()
            .map(|p| p.end_s)
            .chain(samples().map(|s| s.t_s + dt));
        let t0 = starts
            .filter(|t| t.is_finite())
            .fold(f64::INFINITY, f64::min);
        let t1 = ends
            .filter(|t| t.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        let (t0, t1) = if t0.is_finite() && t1 > t0 {
            (t0, t1)
        } else {
            (0.0, 1.0) // nothing to place in time: an empty axis
        };

        let ms = || {
            samples()
                .flat_map(|s| [s.p50_ms, s.p99_ms])
                .flatten()
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        // 1 ms at the bottom unless something is faster; 1.5× the peak on top,
        // so that a 15 ms baseline and a 300 ms peak both get room.
        let fastest = ms().fold(f64::INFINITY, f64::min);
        let ms_lo = if fastest < 1.0 {
            10f64.powf(fastest.log10().floor()).max(0.01)
        } else {
            1.0
        };
        let slowest = ms()
            .chain(
                [thresholds.timeliness_ms]
                    .into_iter()
                    .filter(|v| v.is_finite()),
            )
            .fold(0.0, f64::max);
        let ms_hi = (slowest * 1.5).max(ms_lo * 10.0);

        let cpu_peak = samples()
            .flat_map(|s| [Some(s.cpu_cores), s.share_cores])
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let cpu_hi = if cpu_peak > 0.0 { cpu_peak * 1.2 } else { 1.0 };

        let mut nodes: Vec<String> = Vec::new();
        for node in samples().filter_map(|s| s.node.as_ref()) {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }

        Scene {
            title,
            phases,
            runs,
            thresholds,
            t0,
            t1,
            dt,
            ms_lo,
            ms_hi,
            cpu_hi,
            nodes,
        }
    }

    /// The pixel column of time `t`, computed as plotters maps the time axis of
    /// every panel (they all share [`MARGIN_LEFT`], [`Y_AREA`], [`MARGIN_RIGHT`]).
    fn px(&self, t: f64) -> i32 {
        let (left, right) = plot_columns();
        let frac = (t - self.t0) / (self.t1 - self.t0);
        left + (f64::from(right - left) * frac + 1e-3).floor() as i32
    }

    /// The height of the phase names in the header: a thin band without phases.
    fn names_h(&self) -> u32 {
        if self.phases.is_empty() {
            8
        } else {
            PHASE_NAMES_H
        }
    }

    fn node_color(&self, node: &str) -> RGBColor {
        let i = self.nodes.iter().position(|n| n == node).unwrap_or(0);
        NODE_COLORS[i % NODE_COLORS.len()]
    }

    /// The tint of each phase: None for a baseline phase.
    fn phase_tints(&self) -> impl Iterator<Item = (&Phase, Option<RGBColor>)> {
        let mut faults = 0;
        self.phases.iter().map(move |p| {
            if p.fault {
                faults += 1;
                (p, Some(PHASE_TINTS[(faults - 1) % PHASE_TINTS.len()]))
            } else {
                (p, None)
            }
        })
    }

    /// The runs in drawing order: the second first, so the subject ends on top.
    fn runs_back_to_front(&self) -> impl Iterator<Item = (usize, &Run)> {
        self.runs.iter().enumerate().rev()
    }

    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let labels = self.place_mark_labels(root)?;
        let rows = labels.iter().map(|l| l.row + 1).max().unwrap_or(0) as u32;
        let header_h = self.names_h() + rows * MARK_ROW_H + if rows > 0 { 4 } else { 0 };
        let strip_h = PANEL_GAP + STRIP_ROW_H * self.runs.len() as u32 + X_AXIS_H;
        let fixed = TITLE_H + LEGEND_H + header_h + strip_h;
        let rest = f64::from(HEIGHT.saturating_sub(fixed));

        // Breakpoints, top to bottom.
        let mut y = TITLE_H + LEGEND_H;
        let mut breaks = vec![TITLE_H, y];
        y += header_h;
        breaks.push(y);
        for w in PANEL_WEIGHTS {
            y += (rest * w).round() as u32;
            breaks.push(y);
        }
        let areas = root.split_by_breakpoints([] as [u32; 0], &breaks);
        let [title, legend, header, p_ms, p_rel, p_odte, p_cpu, p_node] = areas.as_slice() else {
            bail!("internal: the figure's layout has {} areas", areas.len());
        };

        let style = text_style(22, TEXT, HPos::Center, VPos::Center);
        if let Some(text) = fit_line(root, self.title, &style, WIDTH as i32 - 40)? {
            title.draw_text(&text, &style, (WIDTH as i32 / 2, TITLE_H as i32 / 2 + 2))?;
        }
        self.draw_legend(legend)?;
        self.draw_header(header, &labels)?;
        self.draw_timeliness(root, p_ms)?;
        self.draw_unit_panel(
            root,
            p_rel,
            "reliability",
            self.thresholds.reliability,
            |s| s.reliability,
        )?;
        self.draw_unit_panel(
            root,
            p_odte,
            "ODTE (entanglement)",
            self.thresholds.odte,
            |s| s.odte,
        )?;
        self.draw_cpu(root, p_cpu)?;
        self.draw_nodes(root, p_node)?;
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Legend and header

    /// One row: the runs, the requirement line, and the kinds of actions present.
    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let style = text_style(14, TEXT, HPos::Left, VPos::Center);
        let yc = LEGEND_H as i32 / 2;
        let mut x = plot_columns().0;
        let mut item = |sample: &dyn Fn(i32) -> Result<()>, text: &str| -> Result<()> {
            sample(x)?;
            area.draw_text(text, &style, (x + 34, yc))?;
            let (w, _) = area.estimate_text_size(text, &style)?;
            x += 34 + w as i32 + 26;
            Ok(())
        };
        for (i, run) in self.runs.iter().enumerate() {
            let color = run_color(i);
            item(
                &|x| {
                    area.draw(&PathElement::new(
                        vec![(x, yc), (x + 26, yc)],
                        color.stroke_width(if i == 0 { 3 } else { 2 }),
                    ))?;
                    Ok(())
                },
                &run.label,
            )?;
        }
        item(
            &|x| {
                for e in
                    DashedLineSeries::new([(x, yc), (x + 26, yc)], 6, 4, THRESHOLD.stroke_width(2))
                {
                    area.draw(&e)?;
                }
                Ok(())
            },
            "requirement",
        )?;
        for kind in [
            MarkKind::Migrate,
            MarkKind::Scale,
            MarkKind::Notify,
            MarkKind::Other,
        ] {
            if self
                .runs
                .iter()
                .any(|r| r.marks.iter().any(|m| m.kind == kind))
            {
                item(
                    &|x| {
                        area.draw(&PathElement::new(
                            vec![(x + 13, yc - 9), (x + 13, yc + 9)],
                            mark_color(kind).stroke_width(2),
                        ))?;
                        Ok(())
                    },
                    mark_kind_name(kind),
                )?;
            }
        }
        Ok(())
    }

    /// Places the labels of the subject run's marks in up to [`MAX_MARK_ROWS`]
    /// rows under the phase names so that no two overlap, and no label sits on
    /// another mark's connector. The second run's marks get no label (they are
    /// drawn faint and dashed).
    fn place_mark_labels<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PlacedLabel>>
    where
        DB::ErrorType: 'static,
    {
        let style = text_style(12, TEXT, HPos::Left, VPos::Center);
        let (left, right) = plot_columns();
        let mut marks: Vec<&Mark> = self.runs[0]
            .marks
            .iter()
            .filter(|m| (self.t0..=self.t1).contains(&m.t_s))
            .collect();
        marks.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));

        // Per row: the spans taken by text, and the columns crossed by the
        // connectors of labels in rows above.
        let mut texts: Vec<Vec<(i32, i32)>> = vec![Vec::new(); MAX_MARK_ROWS];
        let mut lines: Vec<Vec<i32>> = vec![Vec::new(); MAX_MARK_ROWS];
        let mut placed = Vec::new();
        for mark in marks {
            let x = self.px(mark.t_s);
            let (w, _) = area.estimate_text_size(&mark.label, &style)?;
            let w = w as i32;
            // Right of the line if it fits, else left of it.
            let (a, b) = if x + 4 + w <= right || x - 4 - w < left {
                (x + 4, x + 4 + w)
            } else {
                (x - 4 - w, x - 4)
            };
            let free = |row: usize| {
                let pad = 8;
                texts[row].iter().all(|&(c, d)| b + pad < c || d + pad < a)
                    && lines[row].iter().all(|&l| l < a - 3 || l > b + 3)
                    && (row + 1..MAX_MARK_ROWS)
                        .all(|r| texts[r].iter().all(|&(c, d)| x < c - 3 || x > d + 3))
            };
            // The first free row. With none free (many actions close together)
            // the label is left out rather than drawn over another: the
            // action's line and color still show it.
            let Some(row) = (0..MAX_MARK_ROWS).find(|&r| free(r)) else {
                continue;
            };
            texts[row].push((a, b));
            for l in lines.iter_mut().skip(row + 1) {
                l.push(x);
            }
            placed.push(PlacedLabel {
                x,
                left: a,
                row,
                kind: mark.kind,
                text: mark.label.clone(),
            });
        }
        Ok(placed)
    }

    /// The phase names over tinted tabs, then the action labels with their
    /// connectors down to the first panel.
    fn draw_header<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        labels: &[PlacedLabel],
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (_, h) = area.dim_in_pixel();
        let h = h as i32;
        for (phase, tint) in self.phase_tints() {
            let (a, b) = (self.px(phase.start_s), self.px(phase.end_s));
            if let Some(tint) = tint {
                area.draw(&Rectangle::new([(a, 2), (b, h)], tint.filled()))?;
            }
            let color = if phase.fault { TEXT } else { MUTED };
            let style = text_style(13, color, HPos::Center, VPos::Top);
            let lines = fit_lines(area, &phase.name, &style, b - a - 6)?;
            for (i, line) in lines.iter().enumerate() {
                area.draw_text(line, &style, ((a + b) / 2, 5 + 15 * i as i32))?;
            }
        }
        for label in labels {
            let color = mark_color(label.kind);
            let yc = (self.names_h() + MARK_ROW_H * label.row as u32 + MARK_ROW_H / 2) as i32;
            area.draw(&PathElement::new(
                vec![(label.x, yc - 6), (label.x, h)],
                color.stroke_width(2),
            ))?;
            area.draw_text(
                &label.text,
                &text_style(12, color, HPos::Left, VPos::Center),
                (label.left, yc),
            )?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Panels

    /// Timeliness on a log axis: p99 solid, p50 thin and dashed.
    fn draw_timeliness<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (lo, hi) = (self.ms_lo, self.ms_hi);
        let y = (lo..hi)
            .log_scale()
            .with_key_points(log_ticks(lo, hi, &[1.0, 2.0, 5.0]))
            .with_light_points(log_ticks(lo, hi, &[3.0, 4.0, 6.0, 7.0, 8.0, 9.0]));
        let mut chart = self.panel(area, y, 0, false)?;
        let fmt = |v: &f64| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        self.backdrop(&mut chart, (lo, hi), Some(("timeliness, ms (log)", &fmt)))?;
        let thr = self.thresholds.timeliness_ms;
        self.threshold_line(&mut chart, thr)?;
        for (i, run) in self.runs_back_to_front() {
            let color = run_color(i);
            let clamp = |v: f64| v.clamp(lo, hi);
            let p50 = gap_split(&run.samples, self.dt, |s| s.p50_ms.map(clamp));
            self.lines(&mut chart, &p50, color.stroke_width(1), true)?;
            let p99 = gap_split(&run.samples, self.dt, |s| s.p99_ms.map(clamp));
            let width = if i == 0 { 3 } else { 2 };
            self.lines(&mut chart, &p99, color.stroke_width(width), false)?;
        }
        let label = format!("requirement: p99 ≤ {thr:.0} ms");
        let values = |s: &Sample| [s.p50_ms, s.p99_ms].map(|v| v.map(|v| v.clamp(lo, hi)));
        self.threshold_label(&chart, root, thr, &label, true, &values)?;
        panel_key(root, &chart, &[("p99", false), ("p50", true)])
    }

    /// A panel of a value in [0, 1] (reliability, ODTE) with its requirement.
    fn draw_unit_panel<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        area: &DrawingArea<DB, Shift>,
        name: &str,
        requirement: f64,
        value: impl Fn(&Sample) -> f64,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let mut chart = self.panel(area, 0.0..UNIT_HI, PANEL_GAP, false)?;
        self.backdrop(
            &mut chart,
            (0.0, UNIT_HI),
            Some((name, &|v| format!("{v:.1}"))),
        )?;
        self.threshold_line(&mut chart, requirement)?;
        for (i, run) in self.runs_back_to_front() {
            let segments = gap_split(&run.samples, self.dt, |s| {
                Some(value(s))
                    .filter(|v| v.is_finite())
                    .map(|v| v.clamp(0.0, UNIT_HI))
            });
            let width = if i == 0 { 3 } else { 2 };
            self.lines(
                &mut chart,
                &segments,
                run_color(i).stroke_width(width),
                false,
            )?;
        }
        let label = format!("requirement: ≥ {requirement:.2}");
        let values = |s: &Sample| [Some(value(s).clamp(0.0, UNIT_HI)), None];
        self.threshold_label(&chart, root, requirement, &label, false, &values)
    }

    /// CPU used (line) and the share (dashed step line), in cores.
    fn draw_cpu<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let hi = self.cpu_hi;
        let mut chart = self.panel(area, 0.0..hi, PANEL_GAP, false)?;
        let fmt = |v: &f64| {
            if hi < 0.5 {
                format!("{v:.2}")
            } else {
                format!("{v:.1}")
            }
        };
        self.backdrop(&mut chart, (0.0, hi), Some(("CPU, cores", &fmt)))?;
        for (i, run) in self.runs_back_to_front() {
            let color = run_color(i);
            let share = gap_split(&run.samples, self.dt, |s| {
                s.share_cores.filter(|v| v.is_finite())
            });
            // A share holds until the next sample: draw it as steps.
            let steps: Vec<Vec<(f64, f64)>> = share
                .iter()
                .map(|seg| {
                    let mut pts = Vec::with_capacity(seg.len() * 2);
                    for (k, &(t, v)) in seg.iter().enumerate() {
                        let next = seg.get(k + 1).map_or(t + self.dt, |p| p.0);
                        pts.push((t, v));
                        pts.push((next.min(self.t1), v));
                    }
                    pts
                })
                .collect();
            self.lines(&mut chart, &steps, color.stroke_width(2), true)?;
            let used = gap_split(&run.samples, self.dt, |s| {
                Some(s.cpu_cores).filter(|v| v.is_finite())
            });
            let width = if i == 0 { 3 } else { 2 };
            self.lines(&mut chart, &used, color.stroke_width(width), false)?;
        }
        panel_key(root, &chart, &[("used", false), ("share (limit)", true)])
    }

    /// Where the twin runs: one row per run, a colored band per node; the
    /// time axis is drawn under it.
    fn draw_nodes<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let rows = self.runs.len() as f64;
        let mut chart = self.panel(area, 0.0..rows, PANEL_GAP, true)?;
        // No y axis: the rows are named in the label area instead.
        self.backdrop(&mut chart, (0.0, rows), None)?;
        for (i, run) in self.runs.iter().enumerate() {
            // Row 0 (the subject) on top.
            let (y0, y1) = (rows - i as f64 - 0.85, rows - i as f64 - 0.15);
            for (a, b, node) in node_spans(&run.samples, self.dt, self.t1) {
                let base = self.node_color(node);
                let fill = if i == 0 { base } else { lighten(base, 0.5) };
                chart.draw_series([Rectangle::new([(a, y0), (b, y1)], fill.filled())])?;
                let (pa, pb) = (self.px(a), self.px(b));
                let yc = chart.backend_coord(&(a, (y0 + y1) / 2.0)).1;
                let ink = if i == 0 { TEXT } else { MUTED };
                let style = text_style(12, ink, HPos::Center, VPos::Center);
                if let Some(text) = fit_line(root, node, &style, pb - pa - 6)? {
                    root.draw_text(&text, &style, ((pa + pb) / 2, yc))?;
                }
            }
            // The run's name, left of its row.
            let style = text_style(12, run_color(i), HPos::Right, VPos::Center);
            let lines = fit_lines(root, &run.label, &style, Y_AREA as i32 - 12)?;
            let yc = chart.backend_coord(&(self.t0, (y0 + y1) / 2.0)).1;
            let top = yc - 7 * (lines.len() as i32 - 1);
            for (k, line) in lines.iter().enumerate() {
                let x = plot_columns().0 - 8;
                root.draw_text(line, &style, (x, top + 14 * k as i32))?;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // What every panel shares

    /// A panel over the shared time axis; only the bottom one shows it.
    fn panel<'b, DB: DrawingBackend, Y: AsRangedCoord<Value = f64>>(
        &self,
        area: &'b DrawingArea<DB, Shift>,
        y: Y,
        margin_top: u32,
        time_axis: bool,
    ) -> Result<Chart<'b, DB, Y::CoordDescType>>
    where
        DB::ErrorType: 'static,
    {
        Ok(ChartBuilder::on(area)
            .margin_left(MARGIN_LEFT)
            .margin_right(MARGIN_RIGHT)
            .margin_top(margin_top)
            .y_label_area_size(Y_AREA)
            .x_label_area_size(if time_axis { X_AXIS_H } else { 0 })
            .build_cartesian_2d(self.t0..self.t1, y)?)
    }

    /// Phase tints, the grid, the axes, and the marks' lines: everything
    /// under the data.
    fn backdrop<DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
        &self,
        chart: &mut Chart<'_, DB, Y>,
        (lo, hi): (f64, f64),
        y_axis: Option<YAxis<'_>>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        chart.draw_series(self.phase_tints().filter_map(|(p, tint)| {
            tint.map(|c| Rectangle::new([(p.start_s, lo), (p.end_s, hi)], c.filled()))
        }))?;
        let x_fmt = |t: &f64| format!("{t:.0}");
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(16)
            .x_label_formatter(&x_fmt)
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.05))
            .max_light_lines(1)
            .axis_style(BLACK.mix(0.6))
            .label_style((FONT, 13).into_font().color(&TEXT))
            .axis_desc_style((FONT, 14).into_font().color(&TEXT))
            .x_desc("time since the start of the run, s");
        match y_axis {
            Some((desc, fmt)) => mesh.y_labels(6).y_label_formatter(fmt).y_desc(desc),
            None => mesh.disable_y_mesh().disable_y_axis(),
        };
        mesh.draw()?;
        // A light frame: the mesh only draws the left and bottom axes.
        chart.draw_series([Rectangle::new(
            [(self.t0, lo), (self.t1, hi)],
            BLACK.mix(0.3),
        )])?;
        for (i, run) in self.runs_back_to_front() {
            let in_range = |m: &&Mark| (self.t0..=self.t1).contains(&m.t_s);
            for mark in run.marks.iter().filter(in_range) {
                let color = mark_color(mark.kind);
                let pts = [(mark.t_s, lo), (mark.t_s, hi)];
                if i == 0 {
                    chart.draw_series(LineSeries::new(pts, color.mix(0.85).stroke_width(2)))?;
                } else {
                    let style = color.mix(0.45).stroke_width(1);
                    chart.draw_series(DashedLineSeries::new(pts, 5, 4, style))?;
                }
            }
        }
        Ok(())
    }

    /// A requirement: a red dashed line across the panel, under the data.
    fn threshold_line<DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
        &self,
        chart: &mut Chart<'_, DB, Y>,
        value: f64,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        if value.is_finite() {
            chart.draw_series(DashedLineSeries::new(
                [(self.t0, value), (self.t1, value)],
                8,
                5,
                THRESHOLD.stroke_width(2),
            ))?;
        }
        Ok(())
    }

    /// The text of a requirement at the right end of its line, on the side
    /// of violations (`prefer_above` for a ceiling) unless the data drawn by
    /// `values` crosses it there and leaves the other side freer.
    #[allow(clippy::too_many_arguments)] // each says where and what to write
    fn threshold_label<DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
        &self,
        chart: &Chart<'_, DB, Y>,
        root: &DrawingArea<DB, Shift>,
        value: f64,
        text: &str,
        prefer_above: bool,
        values: &dyn Fn(&Sample) -> [Option<f64>; 2],
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        if !value.is_finite() {
            return Ok(()); // no such requirement
        }
        let style = text_style(12, THRESHOLD, HPos::Right, VPos::Top);
        let (w, h) = root.estimate_text_size(text, &style)?;
        let (w, h) = (w as i32, h as i32);
        let (x, y) = chart.backend_coord(&(self.t1, value));
        let x = x - 8;
        let top_of = |above: bool| if above { y - 5 - h } else { y + 6 };
        // How many drawn points would sit under the text on one side.
        let hits = |above: bool| {
            let top = top_of(above);
            self.runs
                .iter()
                .flat_map(|r| r.samples.iter())
                .flat_map(|s| values(s).into_iter().flatten().map(move |v| (s.t_s, v)))
                .filter(|&(t, v)| {
                    let (px, py) = chart.backend_coord(&(t, v));
                    (x - w - 4..=x + 4).contains(&px) && (top - 3..=top + h + 2).contains(&py)
                })
                .count()
        };
        let above = if hits(prefer_above) > hits(!prefer_above) {
            !prefer_above
        } else {
            prefer_above
        };
        let top = top_of(above);
        // A white box under the text keeps it readable over lines and tints.
        root.draw(&Rectangle::new(
            [(x - w - 4, top - 3), (x + 4, top + h + 2)],
            WHITE.mix(0.85).filled(),
        ))?;
        root.draw_text(text, &style, (x, top))?;
        Ok(())
    }

    /// Draws line segments: solid or dashed; a segment of a single point
    /// (a value between two gaps) as a dot, so that it stays visible.
    fn lines<DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
        &self,
        chart: &mut Chart<'_, DB, Y>,
        segments: &[Vec<(f64, f64)>],
        style: ShapeStyle,
        dashed: bool,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        for seg in segments {
            match seg.as_slice() {
                [] => {}
                [p] => {
                    chart.draw_series([Circle::new(*p, style.stroke_width + 1, style.filled())])?;
                }
                _ if dashed => {
                    chart.draw_series(DashedLineSeries::new(seg.iter().copied(), 6, 4, style))?;
                }
                _ => {
                    chart.draw_series(LineSeries::new(seg.iter().copied(), style))?;
                }
            }
        }
        Ok(())
    }
}

type Chart<'b, DB, Y> = ChartContext<'b, DB, Cartesian2d<RangedCoordf64, Y>>;

/// A panel's y axis: its description and how its tick labels read.
type YAxis<'f> = (&'f str, &'f dyn Fn(&f64) -> String);

/// A mark's label, placed in the header.
#[derive(Debug)]
struct PlacedLabel {
    /// The mark's column, px.
    x: i32,
    /// Where the text starts, px.
    left: i32,
    /// The row under the phase names, 0 first.
    row: usize,
    kind: MarkKind,
    text: String,
}

fn run_color(i: usize) -> RGBColor {
    if i == 0 { SUBJECT } else { SECOND }
}

/// The first and last pixel columns of every panel's plotting area (plotters
/// maps an axis onto its area's pixels minus the last one).
fn plot_columns() -> (i32, i32) {
    (
        (MARGIN_LEFT + Y_AREA) as i32,
        (WIDTH - MARGIN_RIGHT) as i32 - 1,
    )
}

/// A small key in the upper left of a panel telling what the solid and the
/// dashed lines are.
fn panel_key<DB: DrawingBackend, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart<'_, DB, Y>,
    items: &[(&str, bool)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let style = text_style(12, TEXT, HPos::Left, VPos::Center);
    let mut widths = Vec::with_capacity(items.len());
    for (text, _) in items {
        widths.push(root.estimate_text_size(text, &style)?.0 as i32);
    }
    let total: i32 = widths.iter().map(|w| w + 30 + 14).sum::<i32>() - 14;
    let (x0, y0) = (xs.start + 8, ys.start + 6);
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + total + 12, y0 + 20)],
        WHITE.mix(0.85).filled(),
    ))?;
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + total + 12, y0 + 20)],
        BLACK.mix(0.2),
    ))?;
    let (mut x, yc) = (x0 + 6, y0 + 10);
    for ((text, dashed), w) in items.iter().zip(widths) {
        let pts = [(x, yc), (x + 24, yc)];
        let style = TEXT.stroke_width(2);
        if *dashed {
            for e in DashedLineSeries::new(pts, 5, 3, style) {
                root.draw(&e)?;
            }
        } else {
            root.draw(&PathElement::new(pts, style))?;
        }
        root.draw_text(
            text,
            &text_style(12, TEXT, HPos::Left, VPos::Center),
            (x + 30, yc),
        )?;
        x += 30 + w + 14;
    }
    Ok(())
}

/// Splits a run's values into stretches of consecutive samples, so that a gap
/// (a None, or samples missing for more than 2.5 intervals) stays blank
/// instead of being drawn as zero or bridged by a straight line.
fn gap_split(
    samples: &[Sample],
    dt: f64,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut last_t = f64::NEG_INFINITY;
    for s in samples {
        let v = value(s).filter(|v| v.is_finite());
        if (v.is_none() || s.t_s - last_t > 2.5 * dt) && !current.is_empty() {
            segments.push(std::mem::take(&mut current));
        }
        if let Some(v) = v {
            current.push((s.t_s, v));
        }
        last_t = s.t_s;
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// The stretches of time a run spent on each node: (start, end, node). A
/// sample lasts until the next one (or `dt` for the last), at most until `t_end`.
fn node_spans(samples: &[Sample], dt: f64, t_end: f64) -> Vec<(f64, f64, &str)> {
    let mut spans: Vec<(f64, f64, &str)> = Vec::new();
    for (k, s) in samples.iter().enumerate() {
        let end = samples
            .get(k + 1)
            .map_or(s.t_s + dt, |n| n.t_s.min(s.t_s + 2.5 * dt))
            .min(t_end);
        let Some(node) = s.node.as_deref() else {
            continue; // runs nowhere: leave the strip blank
        };
        match spans.last_mut() {
            Some(last) if last.2 == node && (s.t_s - last.1).abs() < 1e-9 => last.1 = end,
            _ => spans.push((s.t_s, end, node)),
        }
    }
    spans
}

/// The values m·10^k (m in `mantissas`) within [lo, hi]: the ticks of a log axis.
fn log_ticks(lo: f64, hi: f64, mantissas: &[f64]) -> Vec<f64> {
    let mut ticks = Vec::new();
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for k in first..=last {
        for m in mantissas {
            let v = m * 10f64.powi(k);
            if v >= lo * (1.0 - 1e-9) && v <= hi {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// `text` on at most two lines of at most `max_w` px: whole if it fits, else
/// split after a ": " or between words, and cut with "…" if still too long.
/// Empty if not even "…" fits.
fn fit_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max_w: i32,
) -> Result<Vec<String>>
where
    DB::ErrorType: 'static,
{
    let width = |s: &str| -> Result<i32> { Ok(area.estimate_text_size(s, style)?.0 as i32) };
    if width(text)? <= max_w {
        return Ok(vec![text.to_string()]);
    }
    let (first, second) = match text.split_once(": ") {
        Some((a, b)) => (format!("{a}:"), b.to_string()),
        None => {
            // The longest run of words that fits on the first line.
            let words: Vec<&str> = text.split_whitespace().collect();
            let mut n = words.len().min(1);
            while n < words.len() && width(&words[..=n].join(" "))? <= max_w {
                n += 1;
            }
            (words[..n].join(" "), words[n..].join(" "))
        }
    };
    let mut lines = Vec::new();
    for line in [first, second].into_iter().filter(|l| !l.is_empty()) {
        match truncate_to(&line, max_w, &width)? {
            Some(cut) => lines.push(cut),
            None => return Ok(Vec::new()), // half a name would mislead
        }
    }
    Ok(lines)
}

/// `text` on one line of at most `max_w` px, cut with "…" if needed; None if
/// not even "…" fits.
fn fit_line<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max_w: i32,
) -> Result<Option<String>>
where
    DB::ErrorType: 'static,
{
    let width = |s: &str| -> Result<i32> { Ok(area.estimate_text_size(s, style)?.0 as i32) };
    truncate_to(text, max_w, &width)
}

/// `line` cut at the end with "…" until it is at most `max_w` px; None if not
/// even "…" fits.
fn truncate_to(
    line: &str,
    max_w: i32,
    width: &dyn Fn(&str) -> Result<i32>,
) -> Result<Option<String>> {
    if width(line)? <= max_w {
        return Ok(Some(line.to_string()));
    }
    let chars: Vec<char> = line.chars().collect();
    for n in (1..chars.len()).rev() {
        let cut: String = chars[..n].iter().collect::<String>() + "…";
        if width(&cut)? <= max_w {
            return Ok(Some(cut));
        }
    }
    Ok((width("…")? <= max_w).then(|| "…".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test's files.
    fn out_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("figure-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // leftovers of an earlier run, if any
        std::fs::create_dir_all(&dir).expect("create the test directory");
        dir
    }

    fn phases() -> Vec<Phase> {
        [
            "baseline",
            "phase 1: network",
            "baseline",
            "phase 2: primes",
        ]
        .iter()
        .enumerate()
        .map(|(i, name)| Phase {
            name: name.to_string(),
            start_s: 30.0 * i as f64,
            end_s: 30.0 * (i + 1) as f64,
            fault: i % 2 == 1,
        })
        .collect()
    }

    /// One sample a second until `until`, with gaps and nodes to exercise the drawing.
    fn run(label: &str, until: u32, marks: Vec<Mark>) -> Run {
        let samples = (0..until)
            .map(|i| {
                let t = f64::from(i);
                let broken = (30.0..60.0).contains(&t);
                Sample {
                    t_s: t,
                    p50_ms: (i % 17 != 5).then_some(if broken { 150.0 } else { 9.0 }),
                    p99_ms: (i % 17 != 5).then_some(if broken { 300.0 } else { 15.0 }),
                    reliability: if broken { 0.8 } else { 1.0 },
                    odte: if broken { 0.3 } else { 0.97 },
                    cpu_cores: 0.1,
                    share_cores: (i < 70).then_some(0.2),
                    node: match i {
                        0..34 => Some("edge".to_string()),
                        34..36 => None,
                        _ => Some("cloud".to_string()),
                    },
                }
            })
            .collect();
        Run {
            label: label.to_string(),
            samples,
            marks,
        }
    }

    fn mark(t_s: f64, kind: MarkKind, label: &str) -> Mark {
        Mark {
            t_s,
            kind,
            label: label.to_string(),
        }
    }

    const THRESHOLDS: Thresholds = Thresholds {
        timeliness_ms: 100.0,
        reliability: 0.9,
        odte: 0.9,
    };

    /// Draws and checks the PNG is a real, non-trivial image; returns the SVG.
    fn draw_and_check(test: &str, phases: &[Phase], runs: &[Run]) -> String {
        let dir = out_dir(test);
        let (png, svg) = (dir.join("figure.png"), dir.join("figure.svg"));
        draw("test figure", phases, runs, THRESHOLDS, &png, &svg).expect("draw");
        let bytes = std::fs::read(&png).expect("read the PNG");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(bytes.len() > 20_000, "PNG too small: {} bytes", bytes.len());
        let svg = std::fs::read_to_string(&svg).expect("read the SVG");
        let _ = std::fs::remove_dir_all(&dir); // best effort: it is a temp dir
        svg
    }

    #[test]
    fn draws_two_runs_with_names_and_labels() {
        let marks = vec![
            mark(34.0, MarkKind::Migrate, "migrate edge→cloud"),
            mark(35.0, MarkKind::Scale, "scale 200m→1000m"),
            mark(36.0, MarkKind::Notify, "notify: 0.50/s"),
        ];
        let runs = [
            run("with the control plane", 120, marks),
            run(
                "observing only",
                120,
                vec![mark(50.0, MarkKind::Other, "restart")],
            ),
        ];
        let svg = draw_and_check("two-runs", &phases(), &runs);
        for text in [
            "phase 1: network",
            "phase 2: primes",
            "baseline",
            "with the control plane",
            "observing only",
            "migrate edge→cloud",
            "notify: 0.50/s",
        ] {
            assert!(svg.contains(text), "the SVG lacks {text:?}");
        }
    }

    #[test]
    fn draws_an_empty_run() {
        let runs = [Run {
            label: "nothing recorded".to_string(),
            samples: Vec::new(),
            marks: Vec::new(),
        }];
        let svg = draw_and_check("empty", &phases(), &runs);
        assert!(svg.contains("nothing recorded"));
        assert!(svg.contains("phase 1: network"));
    }

    #[test]
    fn draws_a_single_short_run_without_phases() {
        // Shorter than any phase plan, no phases at all, no marks.
        draw_and_check("short", &[], &[run("alone", 45, Vec::new())]);
    }

    #[test]
    fn refuses_no_run_and_three_runs() {
        let dir = out_dir("refuse");
        let (png, svg) = (dir.join("a.png"), dir.join("a.svg"));
        assert!(draw("t", &phases(), &[], THRESHOLDS, &png, &svg).is_err());
        let three = [
            run("a", 5, vec![]),
            run("b", 5, vec![]),
            run("c", 5, vec![]),
        ];
        assert!(draw("t", &phases(), &three, THRESHOLDS, &png, &svg).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn close_mark_labels_are_staggered_never_overlapped() {
        load_font().expect("a font");
        let marks = vec![
            mark(10.0, MarkKind::Migrate, "migrate edge→cloud"),
            mark(11.0, MarkKind::Scale, "scale 200m→1000m"),
            mark(12.0, MarkKind::Notify, "notify: device sends 0.50/s"),
            mark(13.0, MarkKind::Scale, "no room left"),
            mark(14.0, MarkKind::Scale, "no room either"),
            mark(119.0, MarkKind::Other, "at the right end"),
        ];
        let runs = [run("r", 120, marks)];
        let phases = phases();
        let scene = Scene::new("t", &phases, &runs, THRESHOLDS);
        let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let labels = scene.place_mark_labels(&root).expect("place");
        // Three rows for the first three; the next two find no room and are
        // left out (their lines still show); the last one is far enough.
        let texts: Vec<&str> = labels.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "migrate edge→cloud",
                "scale 200m→1000m",
                "notify: device sends 0.50/s",
                "at the right end"
            ]
        );
        let style = text_style(12, TEXT, HPos::Left, VPos::Center);
        let span = |l: &PlacedLabel| {
            let w = root.estimate_text_size(&l.text, &style).expect("measure").0 as i32;
            (l.left, l.left + w)
        };
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                let ((a0, a1), (b0, b1)) = (span(a), span(b));
                assert!(a.row != b.row || a1 < b0 || b1 < a0, "{a:?} overlaps {b:?}");
            }
            let (_, right) = plot_columns();
            assert!(span(a).1 <= right, "{a:?} leaves the plot");
        }
    }

    #[test]
    fn header_columns_match_the_panels() {
        load_font().expect("a font");
        let phases = phases();
        let runs = [run("r", 100, Vec::new())];
        let scene = Scene::new("t", &phases, &runs, THRESHOLDS);
        let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let (_, lower) = root.split_vertically(300);
        let chart = scene.panel(&lower, 0.0..1.0, 5, false).expect("panel");
        for t in [0.0, 12.5, 33.0, 60.0, 119.9, 120.0] {
            assert_eq!(scene.px(t), chart.backend_coord(&(t, 0.5)).0, "at t = {t}");
        }
    }

    #[test]
    fn missing_font_says_where_it_looked() {
        let err = find_and_register_font(
            &["/nonexistent/fonts/a/Sans.ttf"],
            Path::new("/nonexistent"),
        )
        .expect_err("no font there");
        let msg = format!("{err:#}");
        assert!(msg.contains("/nonexistent/fonts/a"), "{msg}");
        assert!(msg.contains("apt install fonts-dejavu-core"), "{msg}");
    }

    #[test]
    fn font_walk_is_bounded_and_prefers_sans() {
        let root = Path::new(FONT_DIR);
        let found = walk_for_ttf(root);
        for path in &found {
            let depth = path
                .strip_prefix(root)
                .expect("under the root")
                .components()
                .count();
            assert!(depth <= FONT_WALK_DEPTH, "{} is too deep", path.display());
        }
        if let Some(first) = found.first().and_then(|p| p.file_name()) {
            let any_sans = found
                .iter()
                .any(|p| p.to_string_lossy().to_lowercase().contains("sans"));
            assert!(!any_sans || first.to_string_lossy().to_lowercase().contains("sans"));
        }
    }

    #[test]
    fn gaps_split_lines() {
        let r = run("r", 40, Vec::new());
        // p99 is None at i = 5, 22 and 39.
        let segs = gap_split(&r.samples, 1.0, |s| s.p99_ms);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs.iter().map(Vec::len).sum::<usize>(), 37);
        // A silence of more than 2.5 intervals splits too.
        let mut sparse = r.samples[..3].to_vec();
        sparse.extend(r.samples[10..12].iter().cloned());
        assert_eq!(gap_split(&sparse, 1.0, |s| Some(s.reliability)).len(), 2);
    }
}
