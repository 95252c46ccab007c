//! `iotrace compare`: one row per recorded strategy, costs per request side by side.
//!
//! A row joins a trace's [`Summary`] with the load generator's figures for the same run
//! (requests, latency). Per-request costs are the program's own: what iotrace's layer thread
//! spent inside it (`Summary::instrumentation`) is subtracted and shown in its own field. Recording and driving the servers is the CLI's job; this module only
//! turns results into the table and its JSON form.

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::analysis::Summary;
use crate::report;

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

/// A syscall's count per request.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallShare {
    pub name: String,
    pub per_request: f64,
}

/// One strategy's costs. The JSON keys are `iotrace compare --json`'s schema.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub strategy: String,
    pub requests: u64,
    pub errors: u64,
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub voluntary_per_request: f64,
    pub involuntary_per_request: f64,
    pub syscalls_per_request: f64,
    pub top_syscalls: Vec<SyscallShare>,
    /// CPU per request of the program, less iotrace's layer thread (reported separately).
    pub cpu_us_per_request: f64,
    /// CPU per request that iotrace's layer thread spent inside the program.
    pub instrumentation_cpu_us_per_request: f64,
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

/// Build a row. Without load figures, requests are the program's `request` spans, if any.
pub fn row(
    strategy: &str,
    summary: &Summary,
    load: Option<&LoadFigures>,
    trace: &Path,
) -> CompareRow {
    let requests = load
        .map(|l| l.requests)
        .or_else(|| summary.spans.as_ref().map(|s| s.requests))
        .unwrap_or(0);
    let per = |n: f64| {
        if requests > 0 {
            n / requests as f64
        } else {
            0.0
        }
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
        Some(crate::analysis::ExitJson::Code(0)) => None,
        Some(crate::analysis::ExitJson::Signal(s)) if Some(s) == summary.forwarded_signal => None,
        _ => Some(format!("the server {}", report::exit_words(summary))),
    });
    CompareRow {
        strategy: strategy.to_owned(),
        requests,
        errors: load.map_or(0, |l| l.errors),
        req_per_s: load.map_or(0.0, |l| l.req_per_s),
        p50_us: load.map_or(0.0, |l| l.p50_us),
        p99_us: load.map_or(0.0, |l| l.p99_us),
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
            .map(|s| format!("{} {:.2}", s.name, s.per_request))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>8.3} {:>8.3} {:>7.2} {:>8.1} {:>9} {:>7}  {}",
            r.strategy,
            r.requests,
            r.errors,
            r.req_per_s,
            r.p50_us,
            r.p99_us,
            r.voluntary_per_request,
            r.involuntary_per_request,
            r.syscalls_per_request,
            r.cpu_us_per_request,
            report::bytes(r.peak_rss_bytes),
            r.threads,
            top
        );
    }
    for r in rows {
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

/// `{"rows": [...]}`.
pub fn json(rows: &[CompareRow]) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        rows: &'a [CompareRow],
    }
    serde_json::to_string_pretty(&Doc { rows }).unwrap_or_default()
}
