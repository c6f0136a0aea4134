//! The report's plots: figures against the swarm's size, drawn as SVG from the runs'
//! JSON reports (`nak-sim ... --json >> runs.jsonl`, then `nak-sim plot runs.jsonl`).
//!
//! Only runs whose host kept up are drawn (the others' timings mean nothing); of several
//! runs of one scenario at one size, the last in the input counts. Each chart puts the
//! issue's targets and the field's anchors beside the measured points as flat lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Report;

/// Why the plots could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: not a report: {source}")]
    Parse { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// Reads reports, one JSON object per line (blank lines skipped).
pub fn read_reports(path: &Path) -> Result<Vec<Report>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read { path: path.into(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| PlotError::Parse { path: path.into(), line: i + 1, source })
        })
        .collect()
}

/// One line of a chart: a name and its (nodes, value) points.
struct Series {
    name: &'static str,
    points: Vec<(f64, f64)>,
}

/// A flat reference line: a target or an anchor.
struct Mark {
    name: &'static str,
    y: f64,
}

/// One chart to draw.
struct Chart {
    file: &'static str,
    title: &'static str,
    y_label: &'static str,
    series: Vec<Series>,
    marks: Vec<Mark>,
}

/// The last kept-up run of `scenario` at each size, in order of size.
fn runs<'a>(reports: &'a [Report], scenario: &str) -> Vec<&'a Report> {
    let mut by_nodes = BTreeMap::new();
    for r in reports.iter().filter(|r| r.scenario == scenario && r.host_kept_up) {
        by_nodes.insert(r.nodes, r);
    }
    by_nodes.into_values().collect()
}

fn series(name: &'static str, runs: &[&Report], value: impl Fn(&Report) -> Option<f64>) -> Series {
    Series { name, points: runs.iter().filter_map(|r| Some((r.nodes as f64, value(r)?))).collect() }
}

/// A node's CPU in its own (swarm) time, percent of one core: what it would use on a
/// machine of its own.
fn cpu_per_node(r: &Report) -> Option<f64> {
    let host = r.host.as_ref()?;
    Some(host.cpu_cores * r.dilation / r.nodes as f64 * 100.0)
}

fn memory_per_node(r: &Report) -> Option<f64> {
    Some(r.memory_per_node_kib / 1024.0)
}

/// Draws every chart the reports have points for into `dir`; returns the files written.
pub fn draw(reports: &[Report], dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let dht = runs(reports, "dht");
    let churn = runs(reports, "churn");
    let charts = [
        Chart {
            file: "lookup.svg",
            title: "dht: provider lookup latency",
            y_label: "ms",
            series: vec![series("p50", &dht, |r| r.lookup_p50_ms), series("p95", &dht, |r| r.lookup_p95_ms)],
            marks: vec![
                Mark { name: "target p50 (300 ms)", y: 300.0 },
                Mark { name: "IPFS mean to first provider (620 ms)", y: 620.0 },
                Mark { name: "target p95 (1 s)", y: 1000.0 },
            ],
        },
        Chart {
            file: "sessions.svg",
            title: "churn: sessions completed",
            y_label: "% of started",
            series: vec![series("completed", &churn, |r| {
                let started = r.sessions_started.filter(|&s| s > 0)?;
                Some(r.sessions_completed? as f64 / started as f64 * 100.0)
            })],
            marks: vec![Mark { name: "target (99 %)", y: 99.0 }],
        },
        Chart {
            file: "recovery.svg",
            title: "churn: recovery, failure detected to next token",
            y_label: "ms",
            series: vec![series("p50", &churn, |r| r.recovery_p50_ms), series("p95", &churn, |r| r.recovery_p95_ms)],
            marks: vec![],
        },
        Chart {
            file: "balance.svg",
            title: "churn: balance quality once settled",
            y_label: "weakest block / best possible",
            series: vec![series("balance", &churn, |r| r.balance_quality)],
            marks: vec![Mark { name: "target (0.9)", y: 0.9 }],
        },
        Chart {
            file: "cpu.svg",
            title: "CPU per node, in the swarm's time",
            y_label: "% of one core",
            series: vec![series("dht", &dht, cpu_per_node), series("churn", &churn, cpu_per_node)],
            marks: vec![],
        },
        Chart {
            file: "memory.svg",
            title: "memory per node",
            y_label: "MiB",
            series: vec![series("dht", &dht, memory_per_node), series("churn", &churn, memory_per_node)],
            marks: vec![],
        },
    ];
    let mut written = Vec::new();
    for chart in charts.iter().filter(|c| c.series.iter().any(|s| !s.points.is_empty())) {
        let path = dir.join(chart.file);
        draw_chart(chart, &path).map_err(|message| PlotError::Draw { path: path.clone(), message })?;
        written.push(path);
    }
    Ok(written)
}

fn draw_chart(chart: &Chart, path: &Path) -> Result<(), String> {
    let points = chart.series.iter().flat_map(|s| &s.points);
    let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let y_max = points.map(|p| p.1).chain(chart.marks.iter().map(|m| m.y)).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut plot = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_max.max(f64::MIN_POSITIVE))
        .map_err(|e| e.to_string())?;
    plot.configure_mesh().x_desc("nodes").y_desc(chart.y_label).draw().map_err(|e| e.to_string())?;
    for (i, s) in chart.series.iter().filter(|s| !s.points.is_empty()).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        plot.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        plot.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| e.to_string())?;
    }
    for (i, m) in chart.marks.iter().enumerate() {
        let color = RGBColor(150, 150, 150).mix(1.0 - 0.25 * i as f64);
        plot.draw_series(LineSeries::new([(0.0, m.y), (x_max, m.y)], color.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label(m.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, nodes: usize, p50: f64, kept_up: bool) -> Report {
        Report {
            scenario: scenario.into(),
            nodes,
            dilation: 2.0,
            lookup_p50_ms: Some(p50),
            lookup_p95_ms: Some(p50 * 3.0),
            host_kept_up: kept_up,
            ..Default::default()
        }
    }

    #[test]
    fn void_runs_are_left_out_and_the_last_run_of_a_size_counts() {
        let reports = [
            report("dht", 200, 100.0, true),
            report("dht", 200, 120.0, true),
            report("dht", 50, 80.0, false),
            report("churn", 50, 1.0, true),
        ];
        let dht = runs(&reports, "dht");
        assert_eq!(dht.len(), 1);
        assert_eq!(dht[0].lookup_p50_ms, Some(120.0));
    }

    #[test]
    fn draws_the_charts_that_have_points_and_reads_back_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = [report("dht", 50, 80.0, true), report("dht", 200, 140.0, true)]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        let input = dir.path().join("runs.jsonl");
        std::fs::write(&input, lines.join("\n")).unwrap();
        let reports = read_reports(&input).unwrap();
        let written = draw(&reports, dir.path()).unwrap();
        // dht runs only: the lookup chart and memory (which has a dht line), no churn charts.
        let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["lookup.svg", "memory.svg"]);
        let svg = std::fs::read_to_string(dir.path().join("lookup.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("target p95 (1 s)"));
        std::fs::write(&input, "{not json").unwrap();
        assert!(matches!(read_reports(&input), Err(PlotError::Parse { line: 1, .. })));
    }
}
