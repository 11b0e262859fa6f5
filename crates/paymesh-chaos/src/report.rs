//! A chaos run's report: what the run did and what the checkers found, for a
//! machine (`report.json`), for a reader (`report.md`) and as a picture
//! (`timeline.svg`: throughput and latency over time with every fault window
//! shaded, so a dip or a spike can be matched with its cause at a glance).
//!
//! Everything here is computed from the [`History`] and its [`Verdict`]; the
//! report adds no judgement of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use paymesh_harness::check::{CheckerVerdict, Verdict};
use paymesh_harness::history::{FilesRead, History, LocalityScan, Op, Outcome, Request, TransferState};

/// The report's machine-readable file.
pub const JSON_FILE: &str = "report.json";
/// The report's Markdown file.
pub const MARKDOWN_FILE: &str = "report.md";
/// The report's picture.
pub const TIMELINE_FILE: &str = "timeline.svg";

/// Where [`write()`] put the report's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportPaths {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `timeline.svg`.
    pub timeline: PathBuf,
}

/// Writes `report.json`, `report.md` and `timeline.svg` into `dir`, creating
/// it if needed.
pub fn write(dir: &Path, history: &History, verdict: &Verdict) -> anyhow::Result<ReportPaths> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the report directory {}", dir.display()))?;
    let summary = summarize(history, verdict);
    let paths =
        ReportPaths { json: dir.join(JSON_FILE), markdown: dir.join(MARKDOWN_FILE), timeline: dir.join(TIMELINE_FILE) };
    let json = serde_json::to_string_pretty(&summary).context("encoding the report")?;
    let files =
        [(&paths.json, json + "\n"), (&paths.markdown, markdown(&summary)?), (&paths.timeline, timeline_svg(history)?)];
    for (path, text) in files {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(paths)
}

/// One line with the run's counts and verdict, for a terminal.
pub fn summary_line(history: &History, verdict: &Verdict) -> String {
    summarize(history, verdict).line()
}

/// The counts of a run and its verdict: what `report.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The seed of the schedule and the workload.
    pub seed: u64,
    /// Where the mesh ran (`docker`, `process`, `sim`).
    pub backend: String,
    /// How long the workload ran, ms.
    pub duration_ms: u64,
    /// Requests attempted, by kind (every kind of [`Request::KINDS`] listed).
    pub ops_attempted: BTreeMap<&'static str, u64>,
    /// What became of the CreateTransfer requests.
    pub create_transfer: CreateTransferCounts,
    /// Latency of the acknowledged CreateTransfer requests, ms; `None` if none
    /// was acknowledged.
    pub create_transfer_latency_ms: Option<Latency>,
    /// Transfers each region held after healing, by state.
    pub transfers: BTreeMap<String, RegionTransfers>,
    /// Faults injected, by nemesis.
    pub faults: BTreeMap<String, NemesisFaults>,
    /// How long after the last heal every transfer was final, ms; `None` if
    /// not observed or never.
    pub resolved_after_heal_ms: Option<u64>,
    /// What each fault cost the corridors it touched and the others.
    pub blast_radius: Vec<crate::blast::BlastRadius>,
    /// What the scan of the nodes' files for other regions' payer data read
    /// and found; `None` if the run made none (the simulation has no files).
    pub data_locality: Option<LocalitySummary>,
    /// What each checker found.
    pub checkers: Vec<CheckerVerdict>,
    /// Violations of all checkers together.
    pub violations: usize,
    /// Whether every invariant held.
    pub passed: bool,
}

/// The scan of every node's files for other regions' payer markers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalitySummary {
    /// Files read, in all regions.
    pub files: u64,
    /// Bytes read, in all regions.
    pub bytes: u64,
    /// Occurrences of another region's marker in a region's files (each a
    /// violation of `data_locality`, counted by file there).
    pub hits: u64,
    /// Files holding another region's marker.
    pub files_with_hits: usize,
    /// Files or places that could not be read or reached.
    pub not_scanned: usize,
    /// How long the scan took, ms.
    pub elapsed_ms: u64,
    /// By region.
    pub regions: BTreeMap<String, RegionLocality>,
}

/// The scan of one region's files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegionLocality {
    /// The marker its payers carry.
    pub marker: String,
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Files and bytes read by node (and of the region's own files).
    pub nodes: BTreeMap<String, FilesRead>,
    /// Occurrences of its own marker in its files.
    pub own_markers: u64,
    /// Occurrences of other regions' markers in its files.
    pub other_markers: u64,
}

fn locality_summary(scan: &LocalityScan) -> LocalitySummary {
    let mut regions: BTreeMap<String, RegionLocality> = scan
        .regions
        .iter()
        .map(|(region, read)| {
            let summary = RegionLocality {
                marker: scan.markers.get(region).cloned().unwrap_or_default(),
                files: read.files(),
                bytes: read.bytes(),
                nodes: read.nodes.clone(),
                own_markers: read.own_markers,
                other_markers: 0,
            };
            (region.clone(), summary)
        })
        .collect();
    for found in &scan.found {
        regions.entry(found.region.clone()).or_default().other_markers += found.count;
    }
    LocalitySummary {
        files: scan.files(),
        bytes: scan.bytes(),
        hits: scan.hits(),
        files_with_hits: scan.found.iter().map(|f| &f.path).collect::<BTreeSet<_>>().len(),
        not_scanned: scan.not_scanned.len(),
        elapsed_ms: scan.elapsed_ms,
        regions,
    }
}

/// What became of the CreateTransfer requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CreateTransferCounts {
    /// Sent.
    pub attempted: u64,
    /// Answered `Ok`.
    pub acknowledged: u64,
    /// Refused: no effect.
    pub failed: u64,
    /// Not answered: effect unknown.
    pub unknown: u64,
}

/// A latency distribution, ms (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// The median.
    pub p50: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The slowest.
    pub max: u64,
}

/// The transfers one region held after healing, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegionTransfers {
    /// Committed (as origin or payee).
    pub committed: u64,
    /// Aborted (as origin or payee).
    pub aborted: u64,
    /// In any other state.
    pub not_final: u64,
}

/// The faults of one nemesis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NemesisFaults {
    /// Injected.
    pub count: u64,
    /// After which the mesh was live again within the bound.
    pub recovered: u64,
    /// After which it was not.
    pub not_recovered: u64,
    /// The time from heal to live again of the recovered ones, ms.
    pub recovery_ms: Option<Spread>,
}

/// Smallest, median (the lower one of an even count) and largest of some
/// durations, ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: u64,
    /// Median.
    pub median: u64,
    /// Largest.
    pub max: u64,
}

impl Spread {
    /// The spread of `values`; `None` if empty.
    fn of(mut values: Vec<u64>) -> Option<Self> {
        values.sort_unstable();
        Some(Spread { min: *values.first()?, median: percentile(&values, 500)?, max: *values.last()? })
    }
}

/// The nearest-rank percentile `permille`/1000 of `sorted`; `None` if empty.
pub(crate) fn percentile(sorted: &[u64], permille: u64) -> Option<u64> {
    let rank = (sorted.len() as u64 * permille).div_ceil(1000).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

fn latency_ms(op: &Op) -> u64 {
    op.completed_ms.saturating_sub(op.invoked_ms)
}

/// Counts everything the report shows.
pub fn summarize(history: &History, verdict: &Verdict) -> Summary {
    let mut ops_attempted: BTreeMap<&'static str, u64> = Request::KINDS.iter().map(|k| (*k, 0)).collect();
    let mut create_transfer = CreateTransferCounts::default();
    let mut latencies = Vec::new();
    for op in &history.ops {
        *ops_attempted.entry(op.request.kind()).or_default() += 1;
        if let Request::CreateTransfer { .. } = op.request {
            create_transfer.attempted += 1;
            match op.outcome {
                Outcome::Ok => {
                    create_transfer.acknowledged += 1;
                    latencies.push(latency_ms(op));
                }
                Outcome::Failed { .. } => create_transfer.failed += 1,
                Outcome::Unknown { .. } => create_transfer.unknown += 1,
            }
        }
    }
    latencies.sort_unstable();
    let create_transfer_latency_ms = match (percentile(&latencies, 500), percentile(&latencies, 990)) {
        (Some(p50), Some(p99)) => Some(Latency { p50, p99, max: latencies.last().copied().unwrap_or(p99) }),
        _ => None,
    };

    let mut transfers = BTreeMap::new();
    if let Some(observation) = &history.observation {
        for (region, held) in &observation.regions {
            let counts: &mut RegionTransfers = transfers.entry(region.clone()).or_default();
            for transfer in &held.transfers {
                match transfer.state {
                    TransferState::Committed => counts.committed += 1,
                    TransferState::Aborted => counts.aborted += 1,
                    _ => counts.not_final += 1,
                }
            }
        }
    }

    let mut recoveries: BTreeMap<String, (NemesisFaults, Vec<u64>)> = BTreeMap::new();
    for fault in &history.faults {
        let (counts, times) = recoveries.entry(fault.nemesis.clone()).or_default();
        counts.count += 1;
        match fault.recovered_after_ms {
            Some(ms) => {
                counts.recovered += 1;
                times.push(ms);
            }
            None => counts.not_recovered += 1,
        }
    }
    let faults = recoveries
        .into_iter()
        .map(|(nemesis, (counts, times))| (nemesis, NemesisFaults { recovery_ms: Spread::of(times), ..counts }))
        .collect();

    let resolved_after_heal_ms =
        history.observation.as_ref().and_then(|o| o.resolved_ms.map(|resolved| resolved.saturating_sub(o.healed_ms)));

    Summary {
        seed: history.seed,
        backend: history.backend.clone(),
        duration_ms: history.duration_ms,
        ops_attempted,
        create_transfer,
        create_transfer_latency_ms,
        transfers,
        faults,
        resolved_after_heal_ms,
        blast_radius: crate::blast::blast_radius(history),
        data_locality: history.locality.as_ref().map(locality_summary),
        checkers: verdict.checkers.clone(),
        violations: verdict.violations(),
        passed: verdict.passed(),
    }
}

impl Summary {
    /// One line with the counts and the verdict.
    pub fn line(&self) -> String {
        let c = &self.create_transfer;
        let faults: u64 = self.faults.values().map(|f| f.count).sum();
        let committed: u64 = self.transfers.values().map(|t| t.committed).sum();
        let aborted: u64 = self.transfers.values().map(|t| t.aborted).sum();
        let verdict = if self.passed {
            "every invariant held".to_owned()
        } else {
            let broken: Vec<String> = self
                .checkers
                .iter()
                .filter(|c| c.violations > 0)
                .map(|c| format!("{} {}", c.name, c.violations))
                .collect();
            format!("{} violations ({})", self.violations, broken.join(", "))
        };
        let scanned = self.data_locality.as_ref().map_or_else(String::new, |l| {
            format!(", {} files ({} bytes) scanned for other regions' payer data", l.files, l.bytes)
        });
        format!(
            "seed {} ({}, {} ms): {} CreateTransfer ({} acknowledged, {} failed, {} unknown), {} records committed and \
             {} aborted, {} faults{}; {}",
            self.seed,
            self.backend,
            self.duration_ms,
            c.attempted,
            c.acknowledged,
            c.failed,
            c.unknown,
            committed,
            aborted,
            faults,
            scanned,
            verdict
        )
    }
}

/// Text fit for one cell of a Markdown table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| v.to_string())
}

/// The report as Markdown.
fn markdown(summary: &Summary) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    writeln!(out, "# Chaos run, seed {}\n", summary.seed)?;
    let status = if summary.passed {
        "**Passed**: every invariant held.".to_owned()
    } else {
        format!("**FAILED**: {} violations.", summary.violations)
    };
    writeln!(out, "Backend `{}`, workload {} ms. {status}\n", cell(&summary.backend), summary.duration_ms)?;
    writeln!(out, "Throughput and latency over time, faults shaded: [{TIMELINE_FILE}]({TIMELINE_FILE})\n")?;
    writeln!(out, "![Throughput and latency over time, faults shaded]({TIMELINE_FILE})\n")?;

    writeln!(out, "## Requests\n\n| Request | Attempted |\n| --- | ---: |")?;
    for (kind, count) in &summary.ops_attempted {
        writeln!(out, "| {kind} | {count} |")?;
    }
    let c = &summary.create_transfer;
    writeln!(
        out,
        "\n## CreateTransfer\n\n| Attempted | Acknowledged | Failed | Unknown |\n| ---: | ---: | ---: | ---: |"
    )?;
    writeln!(out, "| {} | {} | {} | {} |\n", c.attempted, c.acknowledged, c.failed, c.unknown)?;
    match summary.create_transfer_latency_ms {
        Some(l) => {
            writeln!(out, "Latency of the acknowledged ones: p50 {} ms, p99 {} ms, max {} ms.", l.p50, l.p99, l.max)?
        }
        None => writeln!(out, "None was acknowledged.")?,
    }

    writeln!(
        out,
        "\n## Transfers held after healing\n\n\
         | Region | Committed | Aborted | Not final |\n| --- | ---: | ---: | ---: |"
    )?;
    for (region, t) in &summary.transfers {
        writeln!(out, "| {} | {} | {} | {} |", cell(region), t.committed, t.aborted, t.not_final)?;
    }
    writeln!(
        out,
        "\nEvery transfer final {} after the last heal.",
        summary.resolved_after_heal_ms.map_or_else(|| "never observed".to_owned(), |ms| format!("{ms} ms"))
    )?;

    writeln!(
        out,
        "\n## Faults\n\n| Nemesis | Injected | Recovered | Not recovered \
         | Recovery min (ms) | median (ms) | max (ms) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for (nemesis, f) in &summary.faults {
        let spread = f.recovery_ms;
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(nemesis),
            f.count,
            f.recovered,
            f.not_recovered,
            or_dash(spread.map(|s| s.min)),
            or_dash(spread.map(|s| s.median)),
            or_dash(spread.map(|s| s.max))
        )?;
    }

    writeln!(
        out,
        "\n## Blast radius\n\nFor each fault, the acknowledged CreateTransfer rate and p99 of the corridors \
         (payer's region -> payee's region) that need what it hit (touched) and of the others (untouched), in the \
         {} s before it -> during it.\n",
        crate::blast::BASELINE_MS / 1000
    )?;
    out.push_str(&crate::blast::table(&summary.blast_radius));
    writeln!(out, "\nThe targets: how many of the faults each applies to met it, and those that did not.\n")?;
    out.push_str(&crate::blast::targets_table(&crate::blast::targets(&summary.blast_radius)));

    match &summary.data_locality {
        Some(l) => {
            writeln!(
                out,
                "\n## Data locality\n\nEvery file of every node of every region, read once the mesh had stopped and \
                 searched for each region's payer marker: {} files, {} bytes in {} ms; {} occurrences of another \
                 region's marker in {} files; {} not scanned.\n",
                l.files, l.bytes, l.elapsed_ms, l.hits, l.files_with_hits, l.not_scanned
            )?;
            writeln!(
                out,
                "| Region | Marker | Files | Bytes | Own marker seen | Other regions' markers |\n\
                 | --- | --- | ---: | ---: | ---: | ---: |"
            )?;
            for (region, r) in &l.regions {
                writeln!(
                    out,
                    "| {} | `{}` | {} | {} | {} | {} |",
                    cell(region),
                    cell(&r.marker),
                    r.files,
                    r.bytes,
                    r.own_markers,
                    r.other_markers
                )?;
            }
        }
        None => writeln!(out, "\n## Data locality\n\nNo scan of the nodes' files was recorded.")?,
    }

    writeln!(out, "\n## Checkers\n\n| Checker | Invariant | Violations |\n| --- | --- | ---: |")?;
    for checker in &summary.checkers {
        writeln!(out, "| {} | {} | {} |", checker.name, cell(checker.description), checker.violations)?;
    }
    writeln!(out, "| **total** | | **{}** |", summary.violations)?;
    for checker in summary.checkers.iter().filter(|c| c.violations > 0) {
        writeln!(
            out,
            "\n### {} ({} violations, first {} shown)\n",
            checker.name,
            checker.violations,
            checker.details.len()
        )?;
        for violation in &checker.details {
            writeln!(out, "* {}", cell(&violation.detail))?;
        }
    }
    Ok(out)
}

/// One second of the run as the picture shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Second {
    /// CreateTransfer requests acknowledged in this second.
    acknowledged: u64,
    /// Their median latency, ms.
    p50_ms: Option<u64>,
    /// Their 99th percentile latency, ms.
    p99_ms: Option<u64>,
}

/// When the picture ends: the end of the workload, of the last request or of
/// the last fault, whichever is last; at least one second.
fn end_ms(history: &History) -> u64 {
    let last_op = history.ops.iter().map(|op| op.completed_ms).max().unwrap_or(0);
    let last_fault = history.faults.iter().map(|f| f.end_ms.max(f.start_ms)).max().unwrap_or(0);
    history.duration_ms.max(last_op).max(last_fault).max(1000)
}

/// Acknowledged CreateTransfer requests and their latency, per second of
/// completion.
fn per_second(history: &History) -> Vec<Second> {
    let seconds = usize::try_from(end_ms(history).div_ceil(1000)).unwrap_or(usize::MAX);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for op in history.ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        if let Request::CreateTransfer { .. } = op.request {
            let second = usize::try_from(op.completed_ms / 1000).unwrap_or(usize::MAX);
            if let Some(bucket) = latencies.get_mut(second) {
                bucket.push(latency_ms(op));
            }
        }
    }
    latencies
        .into_iter()
        .map(|mut bucket| {
            bucket.sort_unstable();
            Second {
                acknowledged: bucket.len() as u64,
                p50_ms: percentile(&bucket, 500),
                p99_ms: percentile(&bucket, 990),
            }
        })
        .collect()
}

/// Text fit for SVG content or an attribute value.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A round step (1, 2 or 5 times a power of ten) dividing `0..=max` into
/// about `ticks` parts.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let factor = if normalized <= 1.0 {
        1.0
    } else if normalized <= 2.0 {
        2.0
    } else if normalized <= 5.0 {
        5.0
    } else {
        10.0
    };
    factor * magnitude
}

/// The ticks `0, step, 2·step, …` up to `max`.
fn ticks(max: f64, step: f64) -> impl Iterator<Item = f64> {
    let count = (max / step + 1e-9).floor() as u64;
    (0..=count).map(move |i| i as f64 * step)
}

/// A tick's label: whole numbers when the step is, else one decimal.
fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The colours of the fault windows, one per nemesis in name order.
const FAULT_COLOURS: [&str; 8] =
    ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8"];
const THROUGHPUT_COLOUR: &str = "#1f77b4";
const P50_COLOUR: &str = "#2ca02c";
const P99_COLOUR: &str = "#d62728";

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const THROUGHPUT_TOP: f64 = 50.0;
const LATENCY_TOP: f64 = 310.0;
const PANEL_HEIGHT: f64 = 200.0;

/// The picture: acknowledged CreateTransfer per second above, their p50 and
/// p99 latency per second (log scale) below, every fault window shaded
/// across both in its nemesis's colour.
fn timeline_svg(history: &History) -> Result<String, std::fmt::Error> {
    let seconds = per_second(history);
    let end_s = end_ms(history) as f64 / 1000.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |t_s: f64| LEFT + t_s.clamp(0.0, end_s) / end_s * plot_width;

    let mut out = String::new();
    write!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}""#)?;
    writeln!(out, r#" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#)?;
    writeln!(out, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#)?;
    writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Chaos run, seed {} ({}): {} faults</text>"#,
        WIDTH / 2.0,
        history.seed,
        xml_escape(&history.backend),
        history.faults.len()
    )?;

    // Fault windows first, under the lines.
    let kinds: BTreeSet<&str> = history.faults.iter().map(|f| f.nemesis.as_str()).collect();
    let colour_of = |nemesis: &str| {
        let index = kinds.iter().position(|k| *k == nemesis).unwrap_or(0);
        FAULT_COLOURS[index % FAULT_COLOURS.len()]
    };
    for fault in &history.faults {
        let x0 = x(fault.start_ms as f64 / 1000.0);
        let x1 = x(fault.end_ms.max(fault.start_ms) as f64 / 1000.0);
        let (width, height) = ((x1 - x0).max(1.0), LATENCY_TOP + PANEL_HEIGHT - THROUGHPUT_TOP);
        let (nemesis, target, colour) =
            (xml_escape(&fault.nemesis), xml_escape(&fault.target), colour_of(&fault.nemesis));
        let recovered =
            fault.recovered_after_ms.map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms after the heal"));
        write!(out, r#"<rect class="fault" data-nemesis="{nemesis}" x="{x0:.1}" y="{THROUGHPUT_TOP}""#)?;
        write!(out, r#" width="{width:.1}" height="{height}" fill="{colour}" fill-opacity="0.25">"#)?;
        write!(out, "<title>{nemesis} {target} from {} ms to {} ms", fault.start_ms, fault.end_ms)?;
        writeln!(out, ", recovered {recovered}</title></rect>")?;
    }

    // The time axis, under each panel.
    let x_step = nice_step(end_s, 10.0);
    for top in [THROUGHPUT_TOP, LATENCY_TOP] {
        let bottom = top + PANEL_HEIGHT;
        writeln!(out, r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#333"/>"##, WIDTH - RIGHT)?;
        writeln!(out, r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##)?;
        for t in ticks(end_s, x_step) {
            let tx = x(t);
            writeln!(out, r##"<line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{}" stroke="#333"/>"##, bottom + 5.0)?;
            writeln!(
                out,
                r#"<text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"#,
                bottom + 18.0,
                tick_label(t, x_step)
            )?;
        }
    }
    let axis_label_y = LATENCY_TOP + PANEL_HEIGHT + 38.0;
    writeln!(
        out,
        r#"<text x="{}" y="{axis_label_y}" text-anchor="middle">time since the run started (s)</text>"#,
        LEFT + plot_width / 2.0
    )?;

    // Throughput.
    let max_acknowledged = seconds.iter().map(|s| s.acknowledged).max().unwrap_or(0).max(1) as f64;
    let y_step = nice_step(max_acknowledged, 5.0);
    let y_max = (max_acknowledged / y_step).ceil() * y_step;
    let y_throughput = |v: f64| THROUGHPUT_TOP + PANEL_HEIGHT - v / y_max * PANEL_HEIGHT;
    for v in ticks(y_max, y_step) {
        let y = y_throughput(v);
        writeln!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, WIDTH - RIGHT)?;
        writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, y_step)
        )?;
    }
    axis_title(&mut out, THROUGHPUT_TOP, "acknowledged CreateTransfer / s")?;
    let points: Vec<Option<(f64, f64)>> = seconds
        .iter()
        .enumerate()
        .map(|(i, s)| Some((x(i as f64 + 0.5), y_throughput(s.acknowledged as f64))))
        .collect();
    path(&mut out, &points, THROUGHPUT_COLOUR, "throughput")?;

    // Latency, log scale from 1 ms up to the decade above the slowest p99.
    let max_latency = seconds.iter().filter_map(|s| s.p99_ms).max().unwrap_or(1).max(1) as f64;
    let decades = max_latency.log10().ceil().max(1.0);
    let y_latency = |ms: u64| LATENCY_TOP + PANEL_HEIGHT - (ms.max(1) as f64).log10() / decades * PANEL_HEIGHT;
    let mut decade = 1u64;
    for _ in 0..=(decades as u32) {
        let y = y_latency(decade);
        writeln!(out, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, WIDTH - RIGHT)?;
        writeln!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{decade}</text>"#, LEFT - 6.0, y + 4.0)?;
        decade = decade.saturating_mul(10);
    }
    axis_title(&mut out, LATENCY_TOP, "CreateTransfer latency (ms, log)")?;
    for (colour, class, is_p99) in [(P50_COLOUR, "p50", false), (P99_COLOUR, "p99", true)] {
        let points: Vec<Option<(f64, f64)>> = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ms = if is_p99 { s.p99_ms } else { s.p50_ms };
                ms.map(|ms| (x(i as f64 + 0.5), y_latency(ms)))
            })
            .collect();
        path(&mut out, &points, colour, class)?;
    }

    // The legend: the lines, then one swatch per nemesis.
    let series = [(THROUGHPUT_COLOUR, "acknowledged / s"), (P50_COLOUR, "latency p50"), (P99_COLOUR, "latency p99")];
    let legend_y = HEIGHT - 50.0;
    for (i, (colour, label)) in series.iter().enumerate() {
        let lx = LEFT + i as f64 * 150.0;
        let (line_end, text_x, text_y) = (lx + 24.0, lx + 30.0, legend_y + 4.0);
        write!(out, r#"<line x1="{lx}" y1="{legend_y}" x2="{line_end}" y2="{legend_y}" stroke="{colour}""#)?;
        writeln!(out, r#" stroke-width="2"/><text x="{text_x}" y="{text_y}">{label}</text>"#)?;
    }
    for (i, kind) in kinds.iter().enumerate() {
        let lx = LEFT + (i % 6) as f64 * 130.0;
        let ly = legend_y + 20.0 + (i / 6) as f64 * 18.0;
        let (swatch_y, text_x, text_y, colour) = (ly - 5.0, lx + 30.0, ly + 4.0, colour_of(kind));
        write!(out, r#"<rect class="legend" x="{lx}" y="{swatch_y}" width="24" height="10" fill="{colour}""#)?;
        writeln!(out, r#" fill-opacity="0.25"/><text x="{text_x}" y="{text_y}">{}</text>"#, xml_escape(kind))?;
    }
    writeln!(out, "</svg>")?;
    Ok(out)
}

/// The title of a panel's vertical axis, along it.
fn axis_title(out: &mut String, top: f64, title: &str) -> std::fmt::Result {
    let (tx, ty) = (18.0, top + PANEL_HEIGHT / 2.0);
    writeln!(out, r#"<text x="{tx}" y="{ty}" text-anchor="middle" transform="rotate(-90 {tx} {ty})">{title}</text>"#)
}

/// A line through `points`, broken where a point is missing.
fn path(out: &mut String, points: &[Option<(f64, f64)>], colour: &str, class: &str) -> std::fmt::Result {
    let mut d = String::new();
    let mut pen_down = false;
    for point in points {
        match point {
            Some((px, py)) => {
                write!(d, "{}{px:.1} {py:.1} ", if pen_down { "L" } else { "M" })?;
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if d.is_empty() {
        return Ok(());
    }
    writeln!(out, r#"<path class="{class}" d="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#, d.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paymesh_harness::check::{self, fixtures};

    fn json_of(paths: &ReportPaths) -> serde_json::Value {
        let text = std::fs::read_to_string(&paths.json).expect("report.json written");
        serde_json::from_str(&text).expect("report.json is JSON")
    }

    #[test]
    fn the_json_report_counts_the_run() {
        let history = fixtures::good_history();
        let verdict = check::check_all(&history);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = write(&dir.path().join("run"), &history, &verdict).expect("the report is written");
        let json = json_of(&paths);

        assert_eq!(json["seed"], 42);
        assert_eq!(json["backend"], "sim");
        assert_eq!(json["duration_ms"], 8000);
        assert_eq!(json["ops_attempted"]["create_transfer"], 6);
        assert_eq!(json["ops_attempted"]["get_transfer"], 1);
        assert_eq!(json["ops_attempted"]["get_position"], 1);
        assert_eq!(json["ops_attempted"]["events"], 2);
        let created = &json["create_transfer"];
        assert_eq!(
            [&created["attempted"], &created["acknowledged"], &created["failed"], &created["unknown"]],
            [6, 3, 1, 2]
        );
        // Acknowledged latencies 30, 100 and 100 ms.
        assert_eq!(json["create_transfer_latency_ms"]["p50"], 100);
        assert_eq!(json["create_transfer_latency_ms"]["max"], 100);
        assert_eq!(json["transfers"]["us-west"]["committed"], 2);
        assert_eq!(json["transfers"]["us-west"]["aborted"], 2);
        assert_eq!(json["transfers"]["cn-east"]["committed"], 1);
        assert_eq!(json["transfers"]["cn-east"]["aborted"], 1);
        assert_eq!(json["transfers"]["cn-east"]["not_final"], 0);
        let kill = &json["faults"]["kill"];
        assert_eq!(kill["count"], 2);
        assert_eq!(
            [&kill["recovery_ms"]["min"], &kill["recovery_ms"]["median"], &kill["recovery_ms"]["max"]],
            [400, 400, 600]
        );
        assert_eq!(json["faults"]["cut-region"]["recovery_ms"]["median"], 900);
        assert_eq!(json["resolved_after_heal_ms"], 500);
        assert_eq!(json["violations"], 0);
        assert_eq!(json["passed"], true);
        assert_eq!(json["checkers"].as_array().map(Vec::len), Some(check::all().len()));
    }

    #[test]
    fn a_failed_run_reports_its_violations() {
        let mut history = fixtures::good_history();
        fixtures::region_mut(&mut history, fixtures::CN).replicas[0].digest = "ff".to_owned();
        history.faults.push(fixtures::fault("pause", "cn-east/3", 7100, 7200, None));
        let verdict = check::check_all(&history);
        assert_eq!(verdict.violations(), 1);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = write(dir.path(), &history, &verdict).expect("the report is written");

        let json = json_of(&paths);
        assert_eq!(json["violations"], 1);
        assert_eq!(json["passed"], false);
        assert_eq!(json["faults"]["pause"]["not_recovered"], 1);
        assert!(json["faults"]["pause"]["recovery_ms"].is_null());
        let replicas = json["checkers"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "replicas"));
        assert_eq!(replicas.map(|c| c["violations"].clone()), Some(serde_json::json!(1)));

        let markdown = std::fs::read_to_string(&paths.markdown).expect("report.md written");
        assert!(markdown.contains("**FAILED**: 1 violations."), "{markdown}");
        assert!(markdown.contains("### replicas (1 violations"), "{markdown}");
        assert!(markdown.contains("the replicas of cn-east disagree"), "{markdown}");
        assert!(markdown.contains("[timeline.svg](timeline.svg)"), "{markdown}");
        assert!(markdown.contains("| pause | 1 | 0 | 1 | – | – | – |"), "{markdown}");
        assert!(markdown.contains("| kill | 2 | 2 | 0 | 400 | 400 | 600 |"), "{markdown}");

        let line = summary_line(&history, &verdict);
        assert!(line.contains("6 CreateTransfer (3 acknowledged, 1 failed, 2 unknown)"), "{line}");
        assert!(line.contains("4 faults; 1 violations (replicas 1)"), "{line}");
    }

    /// Whether every tag of `svg` is closed in order (a small well-formedness
    /// check: no XML parser needed for our own output).
    fn tags_balance(svg: &str) -> bool {
        let mut open = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let Some(end) = rest[start..].find('>') else { return false };
            let tag = &rest[start + 1..start + end];
            rest = &rest[start + end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if open.pop() != Some(name.trim().to_owned()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
        open.is_empty() && !rest.contains('>')
    }

    #[test]
    fn the_timeline_is_well_formed_with_one_shaded_window_per_fault() {
        let mut history = fixtures::good_history();
        history.faults.push(fixtures::fault("wan", "us-west<->cn-east", 2000, 2500, Some(10)));
        let svg = timeline_svg(&history).expect("rendered");
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(tags_balance(&svg), "{svg}");
        assert_eq!(svg.matches(r#"class="fault""#).count(), history.faults.len());
        // One legend swatch per nemesis kind: kill, cut-region, wan.
        assert_eq!(svg.matches(r#"class="legend""#).count(), 3);
        assert!(svg.contains("us-west&lt;-&gt;cn-east") && !svg.contains("<->"), "{svg}");
        for label in ["time since the run started (s)", "acknowledged CreateTransfer / s", "latency (ms, log)"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(svg.contains(r#"class="throughput""#) && svg.contains(r#"class="p99""#), "{svg}");
        // The kill windows share a colour, the others have their own.
        let colour = |nemesis: &str| {
            let at = svg.find(&format!(r#"data-nemesis="{nemesis}""#)).expect("a window");
            let fill = svg[at..].find("fill=\"").expect("a fill") + at + 6;
            svg[fill..fill + 7].to_owned()
        };
        assert_ne!(colour("kill"), colour("wan"));
        assert_ne!(colour("kill"), colour("cut-region"));
    }

    #[test]
    fn per_second_counts_acknowledged_requests_and_their_percentiles() {
        let mut history = fixtures::good_history();
        history.ops.clear();
        let request = |key: &str| {
            fixtures::create(
                key,
                (fixtures::SHOP, fixtures::US),
                fixtures::usd("1"),
                fixtures::usd("1"),
                Some(("t", TransferState::Committed)),
            )
        };
        // Second 2: latencies 1..=100 ms, acknowledged; second 3: one refused.
        for latency in 1..=100 {
            history.ops.push(fixtures::op(0, 2500 - latency, 2500, request("k"), Outcome::Ok));
        }
        history.ops.push(Op {
            outcome: Outcome::Failed { reason: "INVALID_ARGUMENT".to_owned() },
            ..fixtures::op(0, 3000, 3100, request("k2"), Outcome::Ok)
        });
        let seconds = per_second(&history);
        assert_eq!(seconds.len(), 8);
        assert_eq!(seconds[2], Second { acknowledged: 100, p50_ms: Some(50), p99_ms: Some(99) });
        assert_eq!(seconds[3], Second::default());
        assert_eq!(seconds.iter().map(|s| s.acknowledged).sum::<u64>(), 100);
    }

    #[test]
    fn the_data_locality_scan_is_reported_with_its_figures() {
        use paymesh_harness::history::{LocalityScan, MarkerFound, RegionScan};
        let mut history = fixtures::good_history();
        history.backend = "process".to_owned();
        let mut scan = LocalityScan {
            markers: paymesh_harness::locality::markers(&[fixtures::US, fixtures::CN]),
            elapsed_ms: 12,
            ..LocalityScan::default()
        };
        for (region, own) in [(fixtures::US, 40), (fixtures::CN, 7)] {
            let mut read = RegionScan { own_markers: own, ..RegionScan::default() };
            for node in 1..=3u64 {
                read.nodes.insert(node.to_string(), FilesRead { files: 5, bytes: 1000 * node });
            }
            scan.regions.insert(region.to_owned(), read);
        }
        scan.found.push(MarkerFound {
            region: fixtures::CN.to_owned(),
            node: "3".to_owned(),
            path: "/m/cn-east/node-3.log".to_owned(),
            marker_region: fixtures::US.to_owned(),
            count: 2,
            offsets: vec![10, 99],
        });
        history.locality = Some(scan);
        let verdict = check::check_all(&history);
        assert_eq!(verdict.checker("data_locality").map(|c| c.violations), Some(1));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let paths = write(dir.path(), &history, &verdict).expect("the report is written");

        let json = json_of(&paths);
        let locality = &json["data_locality"];
        assert_eq!([&locality["files"], &locality["bytes"], &locality["hits"]], [30, 12_000, 2]);
        assert_eq!(locality["regions"]["cn-east"]["other_markers"], 2);
        assert_eq!(locality["regions"]["us-west"]["own_markers"], 40);
        assert_eq!(locality["regions"]["us-west"]["marker"], "PIIMARK-us-west-");
        let markdown = std::fs::read_to_string(&paths.markdown).expect("report.md written");
        assert!(markdown.contains("30 files, 12000 bytes in 12 ms; 2 occurrences"), "{markdown}");
        assert!(markdown.contains("| cn-east | `PIIMARK-cn-east-` | 15 | 6000 | 7 | 2 |"), "{markdown}");
        assert!(markdown.contains("/m/cn-east/node-3.log holds us-west's payer marker"), "{markdown}");
        let line = summary_line(&history, &verdict);
        assert!(line.contains("30 files (12000 bytes) scanned"), "{line}");
    }

    #[test]
    fn an_unobserved_run_still_reports() {
        let mut history = fixtures::good_history();
        history.observation = None;
        history.faults.clear();
        let verdict = check::check_all(&history);
        let summary = summarize(&history, &verdict);
        assert!(summary.transfers.is_empty());
        assert_eq!(summary.resolved_after_heal_ms, None);
        assert_eq!(summary.violations, 1);
        let svg = timeline_svg(&history).expect("rendered");
        assert!(tags_balance(&svg));
        assert_eq!(svg.matches(r#"class="fault""#).count(), 0);
    }

    #[test]
    fn nearest_rank_percentiles_and_spreads() {
        assert_eq!(percentile(&[], 500), None);
        assert_eq!(percentile(&[7], 990), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 500), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 990), Some(4));
        assert_eq!(Spread::of(vec![9, 1, 5]), Some(Spread { min: 1, median: 5, max: 9 }));
        assert_eq!(Spread::of(Vec::new()), None);
    }
}
