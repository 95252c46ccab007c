//! The task and thread-state sections of the text report: where each thread spent its time
//! off-CPU, a table of tasks, and one warning per task that blocked its worker.

use std::fmt::Write;

use crate::report::{duration, head};
use iotrace_analysis::summary::Summary;

/// Rows of the task table; the rest are in `--json`.
const TASK_ROWS: usize = 20;
/// Warning lines; the rest are in `--json`.
const WARNING_LINES: usize = 10;
const THREAD_ROWS: usize = 40;

/// Keeps the end of `s` (the informative part of a path), at most `n` characters.
fn tail(s: &str, n: usize) -> String {
    let len = s.chars().count();
    if len <= n {
        s.to_owned()
    } else {
        std::iter::once('…')
            .chain(s.chars().skip(len - n + 1))
            .collect()
    }
}

/// Per-thread kernel states: on-CPU, runnable, blocked by syscall.
pub fn thread_states(s: &Summary) -> String {
    let mut out = String::new();
    let measured = s
        .task_summary
        .as_ref()
        .map_or(s.capabilities.perf, |t| t.kernel_view);
    if !measured || s.threads.is_empty() {
        return out;
    }
    let _ = writeln!(out, " thread states (from switch records):");
    let _ = writeln!(
        out,
        " {:>8}  {:<16} {:>11} {:>11} {:>11}  blocked in (switch-outs)",
        "tid", "name", "on-CPU", "runnable", "blocked"
    );
    for t in s.threads.iter().take(THREAD_ROWS) {
        let by: Vec<String> = t
            .blocked
            .iter()
            .take(3)
            .map(|b| format!("{} {} ({})", b.syscall, duration(b.ns), b.count))
            .collect();
        let _ = writeln!(
            out,
            " {:>8}  {:<16} {:>11} {:>11} {:>11}  {}",
            t.tid,
            head(&t.name, 16),
            duration(t.on_cpu_ns),
            duration(t.runnable_ns),
            duration(t.blocked_ns),
            by.join(", ")
        );
    }
    if s.threads.len() > THREAD_ROWS {
        let _ = writeln!(out, " … and {} more threads", s.threads.len() - THREAD_ROWS);
    }
    let _ = writeln!(out);
    out
}

/// The task table and the blocked-in-poll warnings.
pub fn tasks(s: &Summary) -> String {
    let mut out = String::new();
    let Some(tot) = &s.task_summary else {
        return out;
    };
    if tot.tasks == 0 {
        return out;
    }
    let blocking = s.tasks.iter().filter(|t| t.kind == "blocking").count();
    let _ = write!(
        out,
        " tasks: {} ({} meant to block), {} polls",
        tot.tasks, blocking, tot.polls
    );
    if let (Some(p50), Some(p99)) = (tot.scheduled_p50_ns, tot.scheduled_p99_ns) {
        let _ = write!(
            out,
            "; wake→poll p50 {}, p99 {}",
            duration(p50),
            duration(p99)
        );
    }
    let _ = writeln!(out);
    if !tot.kernel_view {
        let _ = writeln!(
            out,
            " (no switch records: polls are not split into on-CPU, preempted and blocked)"
        );
    }
    let _ = writeln!(
        out,
        " {:>6}  {:<16} {:<30} {:>7} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "id", "task", "spawned at", "polls", "busy", "scheduled", "idle", "blocked", "in polls"
    );
    let mut rows: Vec<&iotrace_analysis::tasks::TaskRow> = s.tasks.iter().collect();
    // Tasks that may block wrongly first, worst first; tasks meant to block last.
    rows.sort_by_key(|r| {
        (
            r.kind == "blocking",
            std::cmp::Reverse((r.blocked_in_poll_ns, r.busy_ns)),
        )
    });
    for r in rows.iter().take(TASK_ROWS) {
        let _ = writeln!(
            out,
            " {:>6}  {:<16} {:<30} {:>7} {:>11} {:>11} {:>11} {:>11} {:>8}",
            r.id,
            head(&r.name, 16),
            tail(r.location.as_deref().unwrap_or("?"), 30),
            r.polls,
            duration(r.busy_ns),
            duration(r.scheduled_ns),
            duration(r.idle_ns),
            duration(r.blocked_in_poll_ns),
            r.blocked_polls
        );
    }
    let hidden = rows.len().saturating_sub(TASK_ROWS) as u64 + tot.omitted;
    if hidden > 0 {
        let _ = writeln!(out, " … and {hidden} more tasks (listed in --json)");
    }
    let _ = writeln!(out);
    if !s.warnings.is_empty() {
        let _ = writeln!(
            out,
            " WARNING: {} task(s) blocked their worker thread inside polls (off-CPU ≥ {} at a time, ≥ {}% of the task's poll time, in 2+ polls or once ≥ 10× that):",
            tot.warned_tasks,
            duration(tot.blocked_threshold_ns),
            tot.warn_share * 100.0
        );
        // Many tasks spawned at the same place (a handler per connection) are one finding.
        let mut groups: Vec<(&str, u64, u64, u64, &str)> = Vec::new();
        for w in &s.warnings {
            let loc = w.location.as_deref().unwrap_or("?");
            match groups.iter_mut().find(|g| g.0 == loc) {
                Some(g) => {
                    g.1 += 1;
                    g.2 += w.polls;
                    g.3 += w.blocked_ns;
                }
                None => groups.push((loc, 1, w.polls, w.blocked_ns, &w.syscall)),
            }
        }
        for (loc, tasks, polls, ns, syscall) in groups.iter().filter(|g| g.1 > 1) {
            let _ = writeln!(
                out,
                "   {tasks} tasks spawned at {loc} blocked their workers in {polls} polls, {} in all, mostly in {syscall}; the worst:",
                duration(*ns)
            );
        }
        let lines = if groups.iter().any(|g| g.1 > 1) {
            WARNING_LINES / 2
        } else {
            WARNING_LINES
        };
        for w in s.warnings.iter().take(lines) {
            let _ = writeln!(out, "   {}", crate::warning::message(w));
        }
        let more = s.warnings.len().saturating_sub(lines) as u64 + tot.warnings_omitted;
        if more > 0 {
            let _ = writeln!(out, "   … and {more} more (see --json)");
        }
        let _ = writeln!(out);
    }
    out
}
