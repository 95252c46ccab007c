//! `iotrace timeline`: one self-contained HTML page (no network at all) with a track per thread
//! and per task, colored by state, that zooms and pans and tells on hover what a stretch was.
//!
//! The trace is read once through the analysis ([`crate::tasks`]) with a sink that keeps every
//! interval ([`Collected`], shared with [`crate::export`]); the page is `timeline.html` with the
//! data inlined as JSON. The page draws on a canvas and, when a track has more intervals than
//! pixels in view, colors each pixel column by the state that filled most of it (prefix sums
//! per state), so it stays smooth with millions of intervals.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::analysis::{Summarizer, Summary};
use crate::format::{FormatError, Record, TraceReader};
use crate::tasks::{
    Sink, StackId, TaskInterval, TaskKey, TaskOptions, TaskPhase, ThreadInterval, ThreadState,
};

mod page;

/// Why a timeline or export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Format(#[from] FormatError),
    // The OS error is part of the message and deliberately not a source (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print it twice.
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("the window {from_ns} ns..{to_ns} ns is empty or outside the recording")]
    Window { from_ns: u64, to_ns: u64 },
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    pub tasks: TaskOptions,
    /// Only this part of the recording, in ns since it started (`None`: from the start / to
    /// the end).
    pub from_ns: Option<u64>,
    pub to_ns: Option<u64>,
    /// Most intervals drawn; past it, runs of short stretches are merged (0: no limit).
    pub max_intervals: u64,
}

/// Default [`TimelineOptions::max_intervals`]: what a browser draws and holds comfortably.
pub const DEFAULT_MAX_INTERVALS: u64 = 2_000_000;

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions {
            tasks: TaskOptions::default(),
            from_ns: None,
            to_ns: None,
            max_intervals: DEFAULT_MAX_INTERVALS,
        }
    }
}

/// States as the page and the export name them; the index is the state's code.
pub const STATES: [&str; 7] = [
    "running",
    "runnable",
    "blocked",
    "poll",
    "poll (blocked)",
    "scheduled",
    "idle",
];
pub(crate) const RUNNING: u8 = 0;
pub(crate) const RUNNABLE: u8 = 1;
pub(crate) const BLOCKED: u8 = 2;
pub(crate) const POLL: u8 = 3;
pub(crate) const POLL_BLOCKED: u8 = 4;
pub(crate) const SCHEDULED: u8 = 5;
pub(crate) const IDLE: u8 = 6;

/// A thread's stretch in one state (times absolute).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadIv {
    pub start: u64,
    pub end: u64,
    pub state: u8,
    pub syscall: u16,
    pub stack: Option<StackId>,
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
}

/// A task's stretch in one phase; the poll fields are zero for other phases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskIv {
    pub start: u64,
    pub end: u64,
    pub state: u8,
    pub tid: u32,
    pub syscall: u16,
    pub on_cpu: u64,
    pub preempted: u64,
    pub blocked: u64,
    pub counted: u64,
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
}

trait Span {
    fn start(&self) -> u64;
    fn end(&self) -> u64;
    fn set_start(&mut self, t: u64);
}
impl Span for ThreadIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn set_start(&mut self, t: u64) {
        self.start = t;
    }
}
impl Span for TaskIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn set_start(&mut self, t: u64) {
        self.start = t;
    }
}

/// Sorts a track and trims overlaps, so each track is a sequence of disjoint stretches.
fn normalize<T: Span>(v: &mut Vec<T>) {
    v.sort_by_key(|i| (i.start(), i.end()));
    let mut last_end = 0;
    v.retain_mut(|i| {
        if i.start() < last_end {
            i.set_start(last_end);
        }
        if i.end() <= i.start() {
            return false;
        }
        last_end = i.end();
        true
    });
}

/// Every interval of a trace, by track, plus /proc counters; filled during one pass.
#[derive(Debug, Default)]
pub struct Collected {
    pub(crate) start_ns: u64,
    pub(crate) window: Option<(u64, u64)>,
    rel_window: (Option<u64>, Option<u64>),
    pub(crate) threads: HashMap<u32, (u32, Vec<ThreadIv>)>,
    pub(crate) tasks: HashMap<TaskKey, Vec<TaskIv>>,
    /// (time, pid, rss bytes, threads) from /proc samples.
    pub(crate) counters: Vec<(u64, u32, u64, u32)>,
    pub(crate) intervals: u64,
}

impl Collected {
    fn clip(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let (lo, hi) = self.window.unwrap_or((0, u64::MAX));
        let (s, e) = (start.max(lo), end.min(hi));
        (e > s).then_some((s, e))
    }

    fn record(&mut self, record: &Record) {
        match record {
            Record::Header(h) => {
                self.start_ns = h.start_ns;
                let (from, to) = self.rel_window;
                if from.is_some() || to.is_some() {
                    self.window = Some((
                        h.start_ns.saturating_add(from.unwrap_or(0)),
                        h.start_ns.saturating_add(to.unwrap_or(u64::MAX / 4)),
                    ));
                }
            }
            Record::ProcSample(s) if self.clip(s.time_ns, s.time_ns + 1).is_some() => {
                for p in &s.processes {
                    self.counters
                        .push((s.time_ns, p.pid, p.rss_bytes, p.threads));
                }
            }
            _ => {}
        }
    }

    /// Sorts every track, drops tasks the analysis did not confirm, and returns the summary.
    fn settle(&mut self, summary: &Summary) {
        for (_, v) in self.threads.values_mut() {
            normalize(v);
        }
        let known: HashSet<TaskKey> = summary
            .tasks
            .iter()
            .map(|t| TaskKey {
                pid: t.pid,
                span: t.id,
            })
            .collect();
        self.tasks.retain(|k, _| known.contains(k));
        // Tasks meant to block (spawn_blocking, tokio's worker threads) are not shown as
        // blocking their worker.
        for t in summary.tasks.iter().filter(|t| t.kind == "blocking") {
            let key = TaskKey {
                pid: t.pid,
                span: t.id,
            };
            for iv in self.tasks.get_mut(&key).into_iter().flatten() {
                if iv.state == POLL_BLOCKED {
                    iv.state = POLL;
                }
            }
        }
        for v in self.tasks.values_mut() {
            normalize(v);
        }
        self.counters.sort_by_key(|c| (c.1, c.0));
    }
}

impl Sink for Collected {
    fn thread_interval(&mut self, iv: &ThreadInterval) {
        let Some((start, end)) = self.clip(iv.start, iv.end) else {
            return;
        };
        let (state, syscall, stack) = match iv.state {
            ThreadState::Running => (RUNNING, 0, None),
            ThreadState::Runnable => (RUNNABLE, 0, None),
            ThreadState::Blocked { syscall, stack } => (BLOCKED, syscall, stack),
        };
        self.intervals += 1;
        self.threads
            .entry(iv.tid)
            .or_insert_with(|| (iv.pid, Vec::new()))
            .1
            .push(ThreadIv {
                start,
                end,
                state,
                syscall,
                stack,
                merged: 0,
            });
    }

    fn task_interval(&mut self, iv: &TaskInterval) {
        let Some((start, end)) = self.clip(iv.start, iv.end) else {
            return;
        };
        let mut t = TaskIv {
            start,
            end,
            state: IDLE,
            tid: 0,
            syscall: crate::format::Switch::NO_SYSCALL,
            on_cpu: 0,
            preempted: 0,
            blocked: 0,
            counted: 0,
            merged: 0,
        };
        match iv.phase {
            TaskPhase::Scheduled => t.state = SCHEDULED,
            TaskPhase::Idle => t.state = IDLE,
            TaskPhase::Poll(p) => {
                t.state = if p.stretches > 0 { POLL_BLOCKED } else { POLL };
                t.tid = p.tid;
                t.syscall = p.syscall.unwrap_or(crate::format::Switch::NO_SYSCALL);
                t.on_cpu = p.on_cpu_ns;
                t.preempted = p.preempted_ns;
                t.blocked = p.blocked_ns;
                t.counted = p.blocked_counted_ns;
            }
        }
        self.intervals += 1;
        self.tasks.entry(iv.task).or_default().push(t);
    }
}

/// Reads a trace once: its summary and every interval (within the window).
pub fn collect(
    trace: &Path,
    opts: &TimelineOptions,
) -> Result<(Summary, Collected), TimelineError> {
    if let (Some(from), Some(to)) = (opts.from_ns, opts.to_ns) {
        if to <= from {
            return Err(TimelineError::Window {
                from_ns: from,
                to_ns: to,
            });
        }
    }
    let mut reader = TraceReader::open(trace)?;
    let mut summarizer = Summarizer::with_options(opts.tasks.clone());
    let mut col = Collected {
        rel_window: (opts.from_ns, opts.to_ns),
        ..Collected::default()
    };
    for record in reader.by_ref() {
        col.record(&record);
        summarizer.add_to(&record, &mut col);
    }
    let stop = reader.stop().map(|s| s.to_string());
    let mut summary = summarizer.finish_to(stop, &mut col);
    crate::tasks::naming::name_warning_stacks(trace, &mut summary.warnings);
    col.settle(&summary);
    Ok((summary, col))
}

/// What [`write_timeline`] wrote.
#[derive(Debug, Clone, Default)]
pub struct TimelineOutcome {
    pub threads: usize,
    pub tasks: usize,
    /// Intervals collected, and drawn (fewer when short ones were merged to fit the limit).
    pub intervals: u64,
    pub drawn: u64,
    pub bytes: u64,
    /// Set when the trace is damaged or unfinished (see [`Summary::truncated`]).
    pub truncated: Option<String>,
}

/// Most distinct off-CPU stacks named for the page (those with the most blocked time).
const MAX_NAMED_STACKS: usize = 2000;

/// Names the stacks of the blocked stretches the page shows, when the trace has them.
fn name_blocked_stacks(trace: &Path, col: &Collected) -> page::StackNames {
    let mut time: HashMap<StackId, u64> = HashMap::new();
    for (_, ivs) in col.threads.values() {
        for iv in ivs
            .iter()
            .filter(|iv| iv.state == BLOCKED && iv.merged <= 1)
        {
            if let Some(s) = iv.stack {
                *time.entry(s).or_insert(0) += iv.end - iv.start;
            }
        }
    }
    let mut ids: Vec<(StackId, u64)> = time.into_iter().collect();
    ids.sort_by_key(|&(s, t)| (std::cmp::Reverse(t), s));
    ids.truncate(MAX_NAMED_STACKS);
    let ids: Vec<StackId> = ids.into_iter().map(|(s, _)| s).collect();
    if ids.is_empty() {
        return page::StackNames::new();
    }
    crate::tasks::naming::stack_names(trace, &ids).unwrap_or_default()
}

/// Reads `trace` and writes its timeline page to `out`.
pub fn write_timeline(
    trace: &Path,
    out: &Path,
    opts: &TimelineOptions,
) -> Result<TimelineOutcome, TimelineError> {
    let (summary, mut col) = collect(trace, opts)?;
    let collected = col.intervals;
    let drawn = page::coarsen(&mut col, opts.max_intervals);
    let write_err = |error| TimelineError::Write {
        path: out.to_owned(),
        error,
    };
    let names = name_blocked_stacks(trace, &col);
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut w = page::Counting::new(io::BufWriter::new(file));
    let (threads, tasks) = page::write(&summary, &col, &names, &mut w).map_err(write_err)?;
    w.flush().map_err(write_err)?;
    Ok(TimelineOutcome {
        threads,
        tasks,
        intervals: collected,
        drawn,
        bytes: w.bytes(),
        truncated: summary.truncated.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_are_sorted_and_disjoint() {
        let iv = |start, end| ThreadIv {
            start,
            end,
            state: RUNNING,
            syscall: 0,
            stack: None,
            merged: 0,
        };
        let mut v = vec![iv(10, 20), iv(0, 12), iv(15, 18), iv(30, 40)];
        normalize(&mut v);
        let spans: Vec<(u64, u64)> = v.iter().map(|i| (i.start, i.end)).collect();
        assert_eq!(spans, [(0, 12), (12, 20), (30, 40)]);
    }
}
