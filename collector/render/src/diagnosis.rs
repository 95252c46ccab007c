//! A diagnosis as one line of text (what `iotrace report` lists first, the `message` of the
//! JSON report's `diagnoses[]`, what the timeline and the exports show), and the report's
//! "diagnoses" section.

use std::fmt::Write;

use iotrace_analysis::summary::Summary;
use iotrace_analysis::tasks::Diagnosis;

use crate::report::duration;

/// Diagnoses listed in the text report; the rest are counted (all are in `--json`).
const LINES: usize = 12;
/// Waiting tasks named per culprit.
const VICTIMS: usize = 3;

/// The diagnosis in one line: what is wrong, in which task, at which line of the program,
/// what it cost and the evidence.
pub fn message(d: &Diagnosis) -> String {
    let who = match (&d.location, d.tasks) {
        (Some(loc), n) if n > 1 => format!("{n} tasks `{}` ({loc})", d.task),
        (Some(loc), _) => format!("task `{}` ({loc})", d.task),
        (None, _) => format!("task `{}`", d.task),
    };
    let at = |line: &Option<String>| match line {
        Some(l) => format!(" at {l}"),
        None => String::new(),
    };
    let mut m = match d.kind {
        "long_poll" => {
            let lp = d.long_poll.clone().unwrap_or_default();
            format!(
                "{who} ran {} of {} polls on CPU for {} or more without an await (longest {}, {} in all){}",
                d.count,
                lp.polls,
                duration(lp.threshold_ns),
                duration(lp.longest_ns),
                duration(d.cost_ns),
                at(&d.line)
            )
        }
        "lock_contention" => {
            let l = d.lock.clone().unwrap_or_default();
            let mut m = format!(
                "{who} blocked {} waiting for a lock (futex) {} times in polls, {} in all{}",
                if d.tasks > 1 { "their workers" } else { "its worker" },
                l.waits,
                duration(l.wait_ns),
                at(&d.line)
            );
            match l.woken_by.first() {
                Some(h) => {
                    let task = h
                        .task
                        .as_deref()
                        .map_or("in no poll".to_owned(), |t| format!("polling {t}"));
                    let _ = write!(
                        m,
                        "; released by thread `{}` (tid {}) {task} {} times ({} of {} waits' wakers named)",
                        h.thread, h.tid, h.waits, l.named, l.waits
                    );
                }
                None if !l.wakeups_recorded => {
                    m.push_str("; who held it is not known (recorded with --no-wakeups)")
                }
                None => m.push_str("; who released it is not known"),
            }
            m
        }
        "held_across_await" => {
            let h = d.held.clone().unwrap_or_default();
            let waiters: Vec<String> = h
                .waiters
                .iter()
                .take(VICTIMS)
                .map(|v| format!("`{}` {}×", v.task, v.delays))
                .collect();
            format!(
                "{who} held a tokio lock while idle{}; tasks waited for it at {} meanwhile ({}), {} times, {} in all",
                at(&d.line),
                h.lock_line.as_deref().unwrap_or("the lock"),
                waiters.join(", "),
                d.count,
                duration(d.cost_ns)
            )
        }
        "self_wake" => {
            let w = d.self_wake.clone().unwrap_or_default();
            format!(
                "{who} woke itself {} of {} times ({:.0} polls/s, {} polls){}; {} in its polls and queued",
                w.self_wakes,
                w.wakes,
                w.polls_per_s,
                w.polls,
                at(&d.line),
                duration(d.cost_ns)
            )
        }
        "lost_waker" => format!(
            "{who} returned Pending with no waker kept anywhere: nothing can wake it; idle {} until its end",
            duration(d.cost_ns)
        ),
        "blocking_pool" => {
            let p = d.pool.clone().unwrap_or_default();
            let place = match &d.location {
                Some(loc) => format!(" spawned at {loc}"),
                None => String::new(),
            };
            format!(
                "{} of {} spawn_blocking jobs `{}`{place} waited for a pool thread (longest {}, {} in all); the pool ran at most {} of them at once",
                p.waited,
                p.jobs,
                d.task,
                duration(p.longest_wait_ns),
                duration(d.cost_ns),
                p.peak_threads
            )
        }
        "blocked_in_poll" => format!(
            "{who} blocked {} in {} polls, {} in all, {}{}",
            if d.tasks > 1 { "their workers" } else { "its worker" },
            d.count,
            duration(d.cost_ns),
            d.evidence,
            at(&d.line)
        ),
        "scheduling_delay" => {
            let worst = match &d.delay {
                Some(delay) => {
                    crate::warning::delay_message(&d.task, d.location.as_deref(), delay)
                }
                None => format!("{who} waited for a worker {} times", d.count),
            };
            if d.tasks > 1 {
                format!(
                    "{} tasks spawned there waited {} for a worker in all; the worst: {worst}",
                    d.tasks,
                    duration(d.cost_ns)
                )
            } else {
                worst
            }
        }
        _ => format!("{who}: {}", d.evidence),
    };
    if !d.delayed.is_empty() {
        let named: Vec<String> = d
            .delayed
            .iter()
            .take(VICTIMS)
            .map(|v| format!("{} {}", v.task, duration(v.waited_ns)))
            .collect();
        let _ = write!(m, "; meanwhile waiting for a worker: {}", named.join(", "));
    }
    m
}

/// The report's first section: one line per diagnosis (none: nothing).
pub fn section(s: &Summary) -> String {
    let mut out = String::new();
    if s.diagnoses.is_empty() {
        return out;
    }
    let _ = writeln!(out, " DIAGNOSES ({}):", s.diagnoses.len());
    for d in s.diagnoses.iter().take(LINES) {
        let _ = writeln!(out, "   {:<18} {}", d.kind, message(d));
    }
    let omitted = s.task_summary.as_ref().map_or(0, |t| t.diagnoses_omitted);
    let more = s.diagnoses.len().saturating_sub(LINES) as u64 + omitted;
    if more > 0 {
        let _ = writeln!(out, "   … and {more} more (see --json)");
    }
    let _ = writeln!(out);
    out
}
