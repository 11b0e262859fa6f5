//! Memory over time, for soak runs: every few seconds each node's resident
//! memory, the part of it history's engine holds (its block cache and write
//! buffers, both bounded) and the bytes of its history on disk, written
//! beside the report as CSV and as an SVG plot.
//!
//! A region's hot state is bounded by the work in flight and finished work
//! goes to history on disk, so under a steady load a node's resident memory
//! should level off after warm-up while its history grows with the
//! transfers; the plot shows whether it does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::paymesh::PaymeshTarget;

/// One node at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    /// The node.
    pub node: u64,
    /// Its resident memory, MiB.
    pub rss_mib: f64,
    /// The bytes of its history directory, MiB.
    pub history_mib: f64,
    /// The memory its history engine holds, MiB (`None`: the node did not
    /// say in time).
    pub engine_mib: Option<f64>,
}

/// Samples the target's nodes every `every` until stopped.
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Start sampling `target` every `every`.
    pub fn start(target: Arc<PaymeshTarget>, every: Duration) -> Sampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            loop {
                let t_s = started.elapsed().as_secs_f64();
                let history = target.history_bytes();
                let engine = target.engine_bytes().await;
                let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
                for (node, kib) in target.resident_kib() {
                    let bytes = history.iter().find(|(id, _)| *id == node).map_or(0, |(_, b)| *b);
                    samples.push(Sample {
                        t_s,
                        node,
                        rss_mib: kib as f64 / 1024.0,
                        history_mib: mib(bytes),
                        engine_mib: engine.iter().find(|(id, _)| *id == node).map(|(_, b)| mib(*b)),
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stop and return the samples.
    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// The bytes of every file under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Write `samples` as `<stem>.memory.csv` and `<stem>.memory.svg` beside
/// `report`; the paths written.
pub fn write(report: &Path, samples: &[Sample]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let stem = report.with_extension("");
    let csv = stem.with_extension("memory.csv");
    let svg = stem.with_extension("memory.svg");
    let mut text = String::from("t_s,node,rss_mib,history_mib,engine_mib\n");
    for s in samples {
        let engine = s.engine_mib.map_or_else(String::new, |mib| format!("{mib:.1}"));
        text.push_str(&format!("{:.1},{},{:.1},{:.1},{engine}\n", s.t_s, s.node, s.rss_mib, s.history_mib));
    }
    std::fs::write(&csv, text).with_context(|| format!("writing {}", csv.display()))?;
    plot(&svg, samples).with_context(|| format!("drawing {}", svg.display()))?;
    Ok((csv, svg))
}

fn plot(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let t_max = samples.iter().map(|s| s.t_s).fold(1.0, f64::max);
    let y_max = samples.iter().map(|s| s.rss_mib.max(s.history_mib)).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("paymesh soak: resident memory, history's engine and history on disk per node", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("seconds").y_desc("MiB").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut nodes: Vec<u64> = samples.iter().map(|s| s.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for (n, node) in nodes.iter().enumerate() {
        let colour = Palette99::pick(n).to_rgba();
        let of = |f: fn(&Sample) -> f64| samples.iter().filter(|s| s.node == *node).map(move |s| (s.t_s, f(s)));
        chart
            .draw_series(LineSeries::new(of(|s| s.rss_mib), colour.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("node {node} resident"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(of(|s| s.history_mib), colour.stroke_width(1)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("node {node} history on disk"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(1)));
        let engine = samples.iter().filter(|s| s.node == *node).filter_map(|s| Some((s.t_s, s.engine_mib?)));
        chart
            .draw_series(engine.map(|point| Circle::new(point, 2, colour.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("node {node} history engine (cache, write buffers)"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 2, colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_as_csv_and_a_plot() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("soak.json");
        let samples: Vec<Sample> = (0..10)
            .flat_map(|t| {
                (1..=3u32).map(move |node| Sample {
                    t_s: f64::from(t) * 5.0,
                    node: u64::from(node),
                    rss_mib: 300.0 + f64::from(node),
                    history_mib: f64::from(t) * 10.0,
                    engine_mib: (t != 4).then_some(40.0 + f64::from(node)),
                })
            })
            .collect();
        let (csv, svg) = write(&report, &samples).unwrap();
        let csv = std::fs::read_to_string(csv).unwrap();
        assert_eq!(csv.lines().count(), 31);
        assert!(csv.starts_with("t_s,node,rss_mib,history_mib,engine_mib\n"));
        assert!(csv.contains("\n45.0,3,303.0,90.0,43.0\n"));
        assert!(csv.contains("\n20.0,1,301.0,40.0,\n"), "a node that did not say leaves the column empty");
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("node 2 history on disk"));
        assert!(svg.contains("node 3 history engine"));
        assert_eq!(
            dir_bytes(dir.path()),
            std::fs::metadata(dir.path().join("soak.memory.csv")).unwrap().len()
                + std::fs::metadata(dir.path().join("soak.memory.svg")).unwrap().len()
        );
    }
}
