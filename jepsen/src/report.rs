//! `index.html`: a self-contained report of one run. Latency of every client
//! operation over time (coloured by outcome), throughput per second, nemesis
//! intervals shaded on both, the counts, and the checker's details.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::history::{Event, EventType, Process};
use crate::Results;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 50.0;
/// Most points drawn in the latency plot (the rest are sampled out).
const POINTS_MAX: usize = 20_000;

struct Sample {
    at_s: f64,
    latency_ms: f64,
    kind: EventType,
}

fn samples(events: &[Event]) -> Vec<Sample> {
    let mut open: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut samples = Vec::new();
    for event in events {
        let Process::Client(process) = event.process else { continue };
        if event.kind == EventType::Invoke {
            open.insert(process, event);
        } else if let Some(invoke) = open.remove(&process) {
            samples.push(Sample {
                at_s: invoke.time as f64 / 1e9,
                latency_ms: event.time.saturating_sub(invoke.time) as f64 / 1e6,
                kind: event.kind,
            });
        }
    }
    samples
}

/// Fault intervals: from a fault's start to the end of its heal.
fn nemesis_intervals(events: &[Event]) -> Vec<(f64, f64, String)> {
    let heals: Vec<&str> = crate::ALL_FAULTS.iter().map(|fault| fault.heal_name()).collect();
    let mut intervals = Vec::new();
    let mut current: Option<(f64, String)> = None;
    for event in events.iter().filter(|e| matches!(e.process, Process::Nemesis(_))) {
        let at = event.time as f64 / 1e9;
        if event.kind == EventType::Invoke && !heals.contains(&event.f.as_str()) {
            current = Some((at, event.f.clone()));
        } else if event.kind == EventType::Info && heals.contains(&event.f.as_str()) {
            if let Some((start, name)) = current.take() {
                intervals.push((start, at, name));
            }
        }
    }
    intervals
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn colour(kind: EventType) -> &'static str {
    match kind {
        EventType::Ok => "#2a9d2a",
        EventType::Fail => "#d62728",
        EventType::Info => "#ff9f1c",
        EventType::Invoke => "#888",
    }
}

fn shading(out: &mut String, intervals: &[(f64, f64, String)], x: &dyn Fn(f64) -> f64) {
    for (start, end, name) in intervals {
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{MARGIN}" width="{:.1}" height="{HEIGHT}" fill="#999" opacity="0.2"><title>{}</title></rect>"##,
            x(*start),
            (x(*end) - x(*start)).max(1.0),
            escape(name)
        );
    }
}

fn axes(out: &mut String, duration_s: f64, y_label: &str) {
    let _ = write!(
        out,
        r#"<line x1="{MARGIN}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{b}" stroke="black"/><text x="{r}" y="{t}" text-anchor="end" font-size="12">{duration_s:.0} s</text><text x="5" y="{MARGIN}" font-size="12">{y_label}</text>"#,
        b = MARGIN + HEIGHT,
        r = MARGIN + WIDTH,
        t = MARGIN + HEIGHT + 16.0,
    );
}

fn svg_open() -> String {
    format!(
        r#"<svg width="{}" height="{}" xmlns="http://www.w3.org/2000/svg">"#,
        WIDTH + 2.0 * MARGIN,
        HEIGHT + 2.0 * MARGIN
    )
}

fn latency_plot(samples: &[Sample], intervals: &[(f64, f64, String)], duration_s: f64) -> String {
    let max_ms = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max);
    // Log scale from 0.1 ms to the maximum.
    let y = |ms: f64| {
        let span = (max_ms / 0.1).log10().max(1.0);
        MARGIN + HEIGHT - ((ms.max(0.1) / 0.1).log10() / span) * HEIGHT
    };
    let x = |s: f64| MARGIN + s / duration_s.max(1e-9) * WIDTH;
    let mut out = svg_open();
    shading(&mut out, intervals, &x);
    let step = samples.len().div_ceil(POINTS_MAX).max(1);
    for sample in samples.iter().step_by(step) {
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{}"/>"#,
            x(sample.at_s),
            y(sample.latency_ms),
            colour(sample.kind)
        );
    }
    axes(&mut out, duration_s, &format!("latency (log, max {max_ms:.0} ms)"));
    out.push_str("</svg>");
    out
}

fn throughput_plot(samples: &[Sample], intervals: &[(f64, f64, String)], duration_s: f64) -> String {
    let seconds = duration_s.ceil().max(1.0) as usize;
    let mut per_second = vec![0u64; seconds + 1];
    for sample in samples.iter().filter(|s| s.kind == EventType::Ok) {
        per_second[(sample.at_s as usize).min(seconds)] += 1;
    }
    let max = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    let x = |s: f64| MARGIN + s / duration_s.max(1e-9) * WIDTH;
    let mut out = svg_open();
    shading(&mut out, intervals, &x);
    let points: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(second, count)| {
            format!("{:.1},{:.1}", x(second as f64 + 0.5), MARGIN + HEIGHT - *count as f64 / max * HEIGHT)
        })
        .collect();
    let _ = write!(out, r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##, points.join(" "));
    axes(&mut out, duration_s, &format!("ok ops/s (max {max:.0})"));
    out.push_str("</svg>");
    out
}

/// Render the report.
pub fn render(results: &Results, events: &[Event]) -> String {
    let samples = samples(events);
    let intervals = nemesis_intervals(events);
    let duration_s = events.last().map_or(1.0, |e| e.time as f64 / 1e9).max(1.0);
    let mut counts = String::new();
    for (f, c) in &results.counts {
        let _ =
            write!(counts, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", escape(f), c.ok, c.fail, c.info);
    }
    let details = serde_json::to_string_pretty(&results.details).unwrap_or_default();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>docklock-jepsen {workload} seed {seed}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} pre{{background:#f4f4f4;padding:1em;max-height:30em;overflow:auto}}</style></head>
<body><h1>{workload}: <span style="color:{verdict_colour}">{verdict:?}</span></h1>
<p>seed {seed} · checker {check:.2} s · {operations} client operations · shaded: faults (hover for the name)</p>
<h2>Latency over time</h2><p>green ok · red fail · orange info (unknown outcome)</p>{latency}
<h2>Throughput</h2>{throughput}
<h2>Counts</h2><table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>{counts}</table>
<h2>Checker details</h2><pre>{details}</pre></body></html>"#,
        workload = results.workload,
        seed = results.seed,
        verdict = results.verdict,
        verdict_colour = if results.verdict == crate::Verdict::Valid { "#2a9d2a" } else { "#d62728" },
        check = results.check_seconds,
        operations = samples.len(),
        latency = latency_plot(&samples, &intervals, duration_s),
        throughput = throughput_plot(&samples, &intervals, duration_s),
        details = escape(&details),
    )
}
