//! `iotrace compare`: one row per recorded strategy, costs per request side by side.
//!
//! A row joins a trace's [`Summary`] with the load generator's figures for the same run
//! (requests, latency). Per-request costs are the program's own: what iotrace's layer thread
//! spent inside it (`Summary::instrumentation`) is subtracted and shown in its own field. Recording and driving the servers is the CLI's job; this module only
//! turns results into the table and its JSON form.

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report;
use iotrace_analysis::summary::Summary;

/// What the load generator measured for one run (stored beside a trace as `TRACE.load.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadFigures {
    pub requests: u64,
    pub errors: u64,
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    #[serde(default)]
    pub connections: usize,
}

/// A syscall's count in the trace (less iotrace's layer thread) and per request.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallShare {
    pub name: String,
    pub count: u64,
    /// `None` (JSON `null`) when the row has no requests to divide by.
    pub per_request: Option<f64>,
}

/// One strategy's costs. The JSON keys are `iotrace compare --json`'s schema.
///
/// A figure that was not measured is `None` (JSON `null`, `n/a` in the table), never 0: a trace
/// recorded without the load generator has no errors, rate or latency, and one with no
/// requests at all (no load figures and no `request` spans) has no per-request figures.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub strategy: String,
    /// From the load generator, or else the program's `request` spans.
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    pub req_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub voluntary_per_request: Option<f64>,
    pub involuntary_per_request: Option<f64>,
    pub syscalls_per_request: Option<f64>,
    pub top_syscalls: Vec<SyscallShare>,
    /// CPU per request of the program, less iotrace's layer thread (reported separately).
    pub cpu_us_per_request: Option<f64>,
    /// CPU per request that iotrace's layer thread spent inside the program.
    pub instrumentation_cpu_us_per_request: Option<f64>,
    pub peak_rss_bytes: u64,
    pub threads: u32,
    pub trace: String,
    pub lost_events: u64,
    /// Set when the trace was damaged or the child did not end cleanly.
    pub problem: Option<String>,
}

/// The load figures stored beside `trace`, if any.
pub fn load_sidecar(trace: &Path) -> Option<LoadFigures> {
    let text = std::fs::read_to_string(sidecar_path(trace)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where a trace's load figures are kept.
pub fn sidecar_path(trace: &Path) -> std::path::PathBuf {
    let mut name = trace.as_os_str().to_owned();
    name.push(".load.json");
    name.into()
}

/// Build a row. Without load figures, requests are the program's `request` spans, if it made
/// any; with neither, requests and every per-request figure are `None`.
pub fn row(
    strategy: &str,
    summary: &Summary,
    load: Option<&LoadFigures>,
    trace: &Path,
) -> CompareRow {
    let requests = load.map(|l| l.requests).or_else(|| {
        summary
            .spans
            .as_ref()
            .map(|s| s.requests)
            .filter(|&n| n > 0)
    });
    let per = |n: f64| match requests {
        Some(r) if r > 0 => Some(n / r as f64),
        _ => None,
    };
    // The strategy's own costs: the totals less what iotrace's layer thread spent.
    let own = summary.instrumentation.clone().unwrap_or_default();
    let mut syscalls = summary.syscalls.clone();
    for s in &mut syscalls {
        if let Some(i) = own.syscalls.iter().find(|i| i.name == s.name) {
            s.count = s.count.saturating_sub(i.count);
        }
    }
    syscalls.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    let problem = summary.truncated.clone().or_else(|| match summary.exit {
        Some(iotrace_analysis::summary::ExitJson::Code(0)) => None,
        Some(iotrace_analysis::summary::ExitJson::Signal(s))
            if Some(s) == summary.forwarded_signal =>
        {
            None
        }
        _ => Some(format!("the server {}", report::exit_words(summary))),
    });
    CompareRow {
        strategy: strategy.to_owned(),
        requests,
        errors: load.map(|l| l.errors),
        req_per_s: load.map(|l| l.req_per_s),
        p50_us: load.map(|l| l.p50_us),
        p99_us: load.map(|l| l.p99_us),
        voluntary_per_request: per(summary
            .context_switches
            .voluntary
            .saturating_sub(own.voluntary) as f64),
        involuntary_per_request: per(summary
            .context_switches
            .involuntary
            .saturating_sub(own.involuntary) as f64),
        syscalls_per_request: per(summary.syscalls_total.saturating_sub(own.syscalls_total) as f64),
        top_syscalls: syscalls
            .iter()
            .take(3)
            .map(|s| SyscallShare {
                name: s.name.clone(),
                count: s.count,
                per_request: per(s.count as f64),
            })
            .collect(),
        cpu_us_per_request: per(summary.on_cpu_ns.saturating_sub(own.on_cpu_ns) as f64 / 1000.0),
        instrumentation_cpu_us_per_request: per(own.on_cpu_ns as f64 / 1000.0),
        peak_rss_bytes: summary.peak_rss_bytes,
        threads: summary.peak_threads,
        trace: trace.display().to_string(),
        lost_events: summary.lost_events,
        problem,
    }
}

/// The table for people: numbers first, aligned; the top syscalls last, as wide as they need.
pub fn table(rows: &[CompareRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>7}  top syscalls per request",
        "strategy",
        "requests",
        "errors",
        "req/s",
        "p50 µs",
        "p99 µs",
        "vol/req",
        "invol/rq",
        "sys/req",
        "CPU µs/r",
        "peak RSS",
        "threads",
    );
    for r in rows {
        let top = r
            .top_syscalls
            .iter()
            .map(|s| match s.per_request {
                Some(per) => format!("{} {per:.2}", s.name),
                None => format!("{} ({} in all)", s.name, s.count),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>7}  {}",
            r.strategy,
            or_na(r.requests.map(|n| n.to_string())),
            or_na(r.errors.map(|n| n.to_string())),
            fixed(r.req_per_s, 0),
            fixed(r.p50_us, 0),
            fixed(r.p99_us, 0),
            fixed(r.voluntary_per_request, 3),
            fixed(r.involuntary_per_request, 3),
            fixed(r.syscalls_per_request, 2),
            fixed(r.cpu_us_per_request, 1),
            report::bytes(r.peak_rss_bytes),
            r.threads,
            top
        );
    }
    for r in rows {
        if r.requests.is_none() {
            let _ = writeln!(
                out,
                "note: {}: no load results ({}) and no request spans: per-request figures are n/a",
                r.strategy,
                sidecar_path(Path::new(&r.trace)).display()
            );
        } else if r.req_per_s.is_none() {
            let _ = writeln!(
                out,
                "note: {}: requests are the program's request spans; no load results ({}), so errors, req/s and latency are n/a",
                r.strategy,
                sidecar_path(Path::new(&r.trace)).display()
            );
        }
        if let Some(p) = &r.problem {
            let _ = writeln!(out, "note: {}: {p}", r.strategy);
        }
        if r.lost_events > 0 {
            let _ = writeln!(
                out,
                "note: {}: {} events were lost",
                r.strategy, r.lost_events
            );
        }
    }
    out
}

fn or_na(v: Option<String>) -> String {
    v.unwrap_or_else(|| "n/a".to_owned())
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    or_na(v.map(|x| format!("{x:.decimals$}")))
}

/// `{"rows": [...]}`.
pub fn json(rows: &[CompareRow]) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        rows: &'a [CompareRow],
    }
    serde_json::to_string_pretty(&Doc { rows }).unwrap_or_default()
}
