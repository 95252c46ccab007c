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
        // Who woke it most, when the trace says.
        let woke = match t.woken_by.first() {
            Some(w) if w.kind == "interrupt" => {
                format!("; woken most by an interrupt in {} ({})", w.name, w.tid)
            }
            Some(w) => format!("; woken most by {} ({})", w.name, w.tid),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            " {:>8}  {:<16} {:>11} {:>11} {:>11}  {}",
            t.tid,
            head(&t.name, 16),
            duration(t.on_cpu_ns),
            duration(t.runnable_ns),
            duration(t.blocked_ns),
            by.join(", ") + &woke
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
    out.push_str(&yields(s));
    let blocked: Vec<&iotrace_analysis::tasks::Warning> =
        s.warnings.iter().filter(|w| w.delay.is_none()).collect();
    let delayed: Vec<&iotrace_analysis::tasks::Warning> =
        s.warnings.iter().filter(|w| w.delay.is_some()).collect();
    if !blocked.is_empty() {
        let _ = writeln!(
            out,
            " WARNING: {} task(s) blocked their worker thread inside polls (off-CPU ≥ {} at a time, ≥ {}% of the task's poll time, in 2+ polls or once ≥ 10× that):",
            blocked.len(),
            duration(tot.blocked_threshold_ns),
            tot.warn_share * 100.0
        );
        // Many tasks spawned at the same place (a handler per connection) are one finding.
        let mut groups: Vec<(&str, u64, u64, u64, &str)> = Vec::new();
        for w in &blocked {
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
        for w in blocked.iter().take(lines) {
            let _ = writeln!(out, "   {}", crate::warning::message(w));
        }
        let more = blocked.len().saturating_sub(lines) as u64 + tot.warnings_omitted;
        if more > 0 {
            let _ = writeln!(out, "   … and {more} more (see --json)");
        }
        let _ = writeln!(out);
    }
    if !delayed.is_empty() {
        let threshold = delayed
            .first()
            .and_then(|w| w.delay.as_ref())
            .map_or(0, |d| d.threshold_ns);
        let _ = writeln!(
            out,
            " WARNING: {} task(s) waited for a worker (wake→poll p99 ≥ {}) while the workers were held by polls that blocked:",
            delayed.len(),
            duration(threshold)
        );
        let mut groups: Vec<(&str, u64, u64)> = Vec::new();
        for w in &delayed {
            let loc = w.location.as_deref().unwrap_or("?");
            let ns = w.delay.as_ref().map_or(0, |d| d.delayed_ns);
            match groups.iter_mut().find(|g| g.0 == loc) {
                Some(g) => {
                    g.1 += 1;
                    g.2 += ns;
                }
                None => groups.push((loc, 1, ns)),
            }
        }
        for (loc, tasks, ns) in groups.iter().filter(|g| g.1 > 1) {
            let _ = writeln!(
                out,
                "   {tasks} tasks spawned at {loc} waited {} in all; the worst:",
                duration(*ns)
            );
        }
        for w in delayed.iter().take(WARNING_LINES / 2) {
            let _ = writeln!(out, "   {}", crate::warning::message(w));
        }
        if delayed.len() > WARNING_LINES / 2 {
            let _ = writeln!(
                out,
                "   … and {} more (see --json)",
                delayed.len() - WARNING_LINES / 2
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// Task groups (by name and spawn place) shown in the yield-site section.
const YIELD_GROUPS: usize = 8;
/// Sites shown per group.
const YIELD_SITES: usize = 3;

/// Where tasks waited: per group of tasks spawned at one place (most idle time first), the
/// yield sites with the most idle time and who woke them.
fn yields(s: &Summary) -> String {
    let mut out = String::new();
    struct Group<'a> {
        name: &'a str,
        loc: &'a str,
        tasks: u64,
        idle: u64,
        unknown: u64,
        sites: Vec<(&'a str, u64, u64)>,
        woken: iotrace_analysis::tasks::WokenBy,
    }
    let mut groups: Vec<Group> = Vec::new();
    for t in s
        .tasks
        .iter()
        .filter(|t| t.kind != "blocking" && t.idle_ns > 0)
    {
        let loc = t.location.as_deref().unwrap_or("?");
        let at = match groups.iter().position(|g| g.loc == loc && g.name == t.name) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    name: &t.name,
                    loc,
                    tasks: 0,
                    idle: 0,
                    unknown: 0,
                    sites: Vec::new(),
                    woken: Default::default(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[at];
        g.tasks += 1;
        g.idle += t.idle_ns;
        g.unknown += t.yield_unknown_ns;
        for site in t.yield_sites.iter().filter(|y| y.site != "unknown") {
            match g.sites.iter_mut().find(|e| e.0 == site.site) {
                Some(e) => {
                    e.1 += site.idle_ns;
                    e.2 += site.count;
                }
                None => g.sites.push((&site.site, site.idle_ns, site.count)),
            }
        }
        let w = &t.woken_by;
        g.woken.io += w.io;
        g.woken.timer += w.timer;
        g.woken.task += w.task;
        g.woken.thread += w.thread;
        g.woken.unknown += w.unknown;
    }
    // Tasks of which nothing is known (no waker events: marked spans, a program without the
    // layer's yield sites) say nothing here.
    groups.retain(|g| {
        let w = &g.woken;
        !g.sites.is_empty() || w.io + w.timer + w.task + w.thread + w.unknown > 0
    });
    if groups.is_empty() {
        return out;
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.idle));
    let _ = writeln!(
        out,
        " where tasks wait (idle time by yield site; woken by):"
    );
    for g in groups.iter_mut().take(YIELD_GROUPS) {
        let who = if g.tasks == 1 {
            format!("`{}`", g.name)
        } else {
            format!("{} × `{}`", g.tasks, g.name)
        };
        let w = &g.woken;
        let _ = writeln!(
            out,
            "   {who} ({}): idle {}; woken by io {}, timer {}, task {}, thread {}, unknown {}",
            tail(g.loc, 40),
            duration(g.idle),
            w.io,
            w.timer,
            w.task,
            w.thread,
            w.unknown
        );
        g.sites.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (site, ns, n) in g.sites.iter().take(YIELD_SITES) {
            let _ = writeln!(
                out,
                "     {:>5.1}%  {:>11}  {:>7}×  {}",
                100.0 * *ns as f64 / g.idle.max(1) as f64,
                duration(*ns),
                n,
                site
            );
        }
        if g.unknown > 0 {
            let _ = writeln!(
                out,
                "     {:>5.1}%  {:>11}           unknown yield site",
                100.0 * g.unknown as f64 / g.idle.max(1) as f64,
                duration(g.unknown)
            );
        }
    }
    if groups.len() > YIELD_GROUPS {
        let _ = writeln!(
            out,
            "   … and {} more (tasks[].yield_sites in --json)",
            groups.len() - YIELD_GROUPS
        );
    }
    let _ = writeln!(out);
    out
}
