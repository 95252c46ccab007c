//! The wake flamegraph (`--kind wake`): the delay from each wake of a task to the poll it led
//! to, under the waker, with the woken task as the leaf.
//!
//! One pass over the trace runs the task model ([`TaskAnalyzer`]), whose wake edges are summed
//! per (waker, woken task) as they come, and folds the trace's stack tree alongside; the
//! distinct waker stacks are then named once. A line runs from the kind of waker
//! ([`ROOTS`]), through the waker's stack (a driver or a thread outside the runtime: outermost
//! first, without the layer, tracing and the waker's own frames at its inner end) or the label
//! of the waking task, to `→ task NAME`, the woken task.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::idle::{
    bare, empty_reason, name_distinct, task_pass, TaskLabels, WindowSums, WAKER_MACHINERY,
};
use super::{FlamegraphError, Folded, Options, WakeStats};
use iotrace_analysis::tasks::naming::driver_kind;
use iotrace_analysis::tasks::{Sink, StackId, TaskKey, WakeEdge, WakeSource};

/// The root frames, by kind of waker: `io`, `timer` and `task` (a finished task's harness)
/// for the driver wakes `driver_kind` recognises, then another task's poll, a thread outside
/// the runtime, and a runtime thread whose stack says nothing more.
pub const ROOTS: [(&str, &str); 6] = [
    ("io", "woken by the I/O driver"),
    ("timer", "woken by the timer"),
    ("task", "woken by a task"),
    ("poll", "woken by a task"),
    ("thread", "woken by a thread"),
    ("unknown", "woken by a runtime thread"),
];

/// The prefix of the leaf frame, the woken task.
pub const WOKEN: &str = "→ ";

/// A task key that names no listed task (the waking task of a `Task` wake).
const UNKNOWN_TASK: &str = "[unknown task]";

fn root(kind: &str) -> &'static str {
    ROOTS
        .iter()
        .find(|r| r.0 == kind)
        .map_or("woken by a runtime thread", |r| r.1)
}

/// Who woke, as far as the graph tells wakers apart: threads' ids are left out, so the sums
/// are bounded by the distinct waker stacks and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Waker {
    Task(TaskKey),
    Driver(Option<StackId>),
    Thread(Option<StackId>),
}

impl Waker {
    fn stack(self) -> Option<StackId> {
        match self {
            Waker::Task(_) => None,
            Waker::Driver(s) | Waker::Thread(s) => s,
        }
    }
}

/// Wake→poll delays per (waker, woken task), within the window.
impl Sink for WindowSums<(Waker, TaskKey)> {
    fn wake(&mut self, w: &WakeEdge) {
        let by = match w.by {
            WakeSource::Task(k) => Waker::Task(k),
            WakeSource::Driver { stack, .. } => Waker::Driver(stack),
            WakeSource::Thread { stack, .. } => Waker::Thread(stack),
        };
        self.add((by, w.task), w.woken, w.polled);
    }
}

/// The frames of a waker's stack, outermost first, from its frames innermost first: all of
/// them but the layer's, tracing's and the waker's own at the inner end.
pub fn waker_frames(innermost_first: &[String]) -> Vec<&str> {
    let inner = innermost_first
        .iter()
        .position(|n| {
            let b = bare(n);
            !WAKER_MACHINERY.iter().any(|m| b.starts_with(m))
        })
        .unwrap_or(innermost_first.len());
    innermost_first[inner..]
        .iter()
        .rev()
        .map(String::as_str)
        .collect()
}

/// Folded lines of the wake flamegraph, in µs.
pub(super) fn fold_wake(path: &Path, opts: &Options) -> Result<Folded, FlamegraphError> {
    let mut sums = WindowSums::<(Waker, TaskKey)>::default();
    let mut pass = task_pass(path, opts, &mut sums)?;
    let mut labels = TaskLabels::new(&pass.report);
    let mut drawn: HashSet<TaskKey> = HashSet::new();
    // (waker, its task's label for a task's wake, the woken task's label, ns, wakes)
    let mut kept: Vec<(Waker, Option<String>, String, u64, u64)> = Vec::new();
    for (&(by, task), &(ns, n)) in &sums.sums {
        // Spans that turned out not to be tasks, or tasks past the report's rows.
        let Some(woken) = labels.get(task) else {
            continue;
        };
        if !labels.matches(task, &woken, opts.task.as_deref()) {
            continue;
        }
        let waking = match by {
            Waker::Task(k) => Some(labels.get(k).unwrap_or_else(|| UNKNOWN_TASK.to_owned())),
            _ => None,
        };
        drawn.insert(task);
        kept.push((by, waking, woken, ns, n));
    }

    let (names, symbols) = name_distinct(&mut pass.fold, kept.iter().filter_map(|k| k.0.stack()));
    let mut stats = WakeStats {
        tasks: drawn.len() as u64,
        ..WakeStats::default()
    };
    let mut merged: HashMap<String, u64> = HashMap::new();
    for (by, waking, woken, ns, n) in kept {
        stats.wakes += n;
        stats.delay_ns += ns;
        let frames = by.stack().and_then(|id| names.get(&id));
        let kind = match by {
            Waker::Task(_) => "poll",
            Waker::Thread(_) => "thread",
            Waker::Driver(_) => {
                frames.map_or("unknown", |f| driver_kind(f.iter().map(|s| s.as_str())))
            }
        };
        let mut line = root(kind).to_owned();
        if let Some(waking) = waking {
            line.push(';');
            line.push_str(&waking);
        }
        for f in frames.map(|f| waker_frames(f)).unwrap_or_default() {
            line.push(';');
            line.push_str(f);
        }
        line.push(';');
        line.push_str(WOKEN);
        line.push_str(&woken);
        *merged.entry(line).or_insert(0) += ns;
    }
    let never_woken = sums.sums.is_empty();
    pass.folded(
        merged,
        symbols,
        |report| {
            empty_reason(
                path,
                opts,
                report,
                never_woken,
                (
                    "no task was woken and then polled (the trace has no waker events of its tasks)",
                    "no wake of tasks matches the filters (--task, --from/--to)",
                ),
            )
        },
        None,
        Some(stats),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// A timer wake's stack (tokio 1.54), innermost first, cut short.
    const TIMER: &[&str] = &[
        "<iotrace_layer::layer::IotraceLayer as tracing_subscriber::layer::Layer<S>>::on_event",
        "tracing_core::event::Event::dispatch",
        "tokio::runtime::task::waker::wake_by_val at tokio-1.54.1/src/runtime/task/waker.rs:104",
        "core::task::wake::Waker::wake",
        "tokio::runtime::time::entry::StateCell::fire",
        "tokio::runtime::time::Driver::park_internal",
        "tokio::runtime::scheduler::multi_thread::worker::Context::park",
    ];

    #[test]
    fn a_waker_stack_runs_outermost_first_without_the_waker_machinery() {
        let stack = owned(TIMER);
        assert_eq!(
            waker_frames(&stack),
            [
                "tokio::runtime::scheduler::multi_thread::worker::Context::park",
                "tokio::runtime::time::Driver::park_internal",
                "tokio::runtime::time::entry::StateCell::fire",
            ]
        );
        assert_eq!(driver_kind(stack.iter().map(String::as_str)), "timer");
        assert!(waker_frames(&owned(&TIMER[..4])).is_empty());
    }

    #[test]
    fn each_kind_of_waker_has_its_root() {
        assert_eq!(root("io"), "woken by the I/O driver");
        assert_eq!(root("timer"), "woken by the timer");
        assert_eq!(root("poll"), "woken by a task");
        assert_eq!(root("thread"), "woken by a thread");
        assert_eq!(root("unknown"), "woken by a runtime thread");
    }
}
