//! The idle flamegraph (`--kind idle`): the time each task spent idle (returned Pending,
//! waiting for a wake), under the task, by where it yielded.
//!
//! One pass over the trace runs the task model ([`TaskAnalyzer`]), whose idle stretches are
//! summed per (task, yield site) as they come, and folds the trace's stack tree alongside; the
//! distinct yield-site stacks are then named once. A site's stack was taken where the leaf
//! future stored the task's waker, so it runs from the worker's loop down into the waker's
//! clone: it is cut to the frames between the task's own future and the await (see
//! [`site_frames`]). A stretch whose site has only its span chain gets `span: NAME` frames; one
//! whose site is not known gets [`UNKNOWN_SITE`], so unknown idle time stays in the picture.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{FlamegraphError, Folded, IdleStats, LeftOut, Options, WakeStats};
use iotrace_analysis::stacks::{Need, StackFold};
use iotrace_analysis::summary::shell_join;
use iotrace_analysis::symbolize::{self, FrameKey, SymbolStats};
use iotrace_analysis::tasks::{
    Sink, StackId, TaskAnalyzer, TaskInterval, TaskKey, TaskPhase, TaskReport, TaskRow, YieldSite,
};
use iotrace_trace::{Record, TraceReader};

/// The leaf of idle time whose yield site is not known.
pub const UNKNOWN_SITE: &str = "[unknown yield site]";
/// The root of idle time of tasks the report does not list (past its row limit).
pub(super) const UNLISTED: &str = "[tasks not listed]";

/// Frames that poll a task's future: the yield site's frames start inside the innermost.
const POLLERS: &[&str] = &[
    "tokio::runtime::task::core::Core<",
    "tokio::runtime::task::harness::",
    "tokio::runtime::park::CachedParkThread::block_on",
    "tokio::runtime::scheduler::current_thread::CoreGuard::block_on",
];

/// The layer's, tracing's and the waker's own frames at the inner end of a yield-site stack.
pub(super) const WAKER_MACHINERY: &[&str] = &[
    "iotrace_layer",
    "tracing",
    "tokio::runtime::task::waker",
    "core::task::wake::Waker",
];

/// The span that tokio wraps a task's future in: the frame just inside the poller.
const TASK_SPAN_WRAPPER: &str = "tracing::instrument::Instrumented<";

/// A function name without the `<`, `&` and `mut ` of a trait impl's self type.
pub(super) fn bare(name: &str) -> &str {
    name.trim_start_matches(['<', '&', ' '])
        .trim_start_matches("mut ")
}

/// The frames of a yield site, outermost first, from its stack's frames innermost first:
/// those inside the innermost frame that polls the task (tokio's `Core::poll`, the harness,
/// `block_on`) and the span wrapper tokio puts around the task's future, down to the future
/// that stored the waker, without the waker's clone, tracing's dispatch and the layer under
/// it. A stack without a poller frame (cut short, or another runtime) keeps its outer frames.
pub fn site_frames(innermost_first: &[String]) -> Vec<&str> {
    let names: Vec<&str> = innermost_first.iter().map(String::as_str).collect();
    let inner = names
        .iter()
        .position(|n| {
            let b = bare(n);
            !WAKER_MACHINERY.iter().any(|m| b.starts_with(m))
        })
        .unwrap_or(names.len());
    let mut outer = names[inner..]
        .iter()
        .position(|n| {
            let b = bare(n);
            POLLERS.iter().any(|p| b.starts_with(p))
        })
        .map_or(names.len(), |p| inner + p);
    if outer < names.len() && outer > inner && bare(names[outer - 1]).starts_with(TASK_SPAN_WRAPPER)
    {
        outer -= 1;
    }
    let mut frames: Vec<&str> = names[inner..outer].to_vec();
    if frames.is_empty() {
        // Nothing between the poller and the waker: the runtime's own frames say more than none.
        frames = names[inner..].to_vec();
    }
    frames.reverse();
    frames
}

/// The root frame of a task, as the async flamegraph labels it: `task NAME` (`blocking …`,
/// `block_on …` for those kinds), or `task DIR/FILE:LINE` of its spawn location when it has
/// no name of its own (tokio's `task ID`, or the function name of a blocking task).
pub fn task_frame(row: &TaskRow) -> String {
    let prefix = match row.kind.as_str() {
        "blocking" => "blocking",
        "block_on" => "block_on",
        _ => "task",
    };
    let mut name = row.name.as_str();
    if let Some(id) = row.task_id {
        if let Some(rest) = name.strip_suffix(&format!(" {id}")) {
            name = rest;
        }
    }
    let own_name = !name.is_empty() && name != row.kind && prefix == "task";
    match &row.location {
        Some(loc) if !own_name => format!("{prefix} {}", short_location(loc)),
        _ if own_name => format!("{prefix} {name}"),
        _ if row.name.starts_with(prefix) => row.name.clone(),
        _ => format!("{prefix} {}", row.name),
    }
}

/// `dir/file.rs:LINE` of `path/to/dir/file.rs:LINE[:COL]`.
fn short_location(loc: &str) -> String {
    let mut parts = loc.rsplitn(3, ':');
    let (mut file, mut line) = (loc, None);
    let last = parts.next().unwrap_or("");
    if let Some(before) = parts.next() {
        if last.bytes().all(|b| b.is_ascii_digit()) && !last.is_empty() {
            if before.bytes().all(|b| b.is_ascii_digit()) && !before.is_empty() {
                file = parts.next().unwrap_or("");
                line = Some(before);
            } else {
                file = &loc[..loc.len() - last.len() - 1];
                line = Some(last);
            }
        }
    }
    let mut short: Vec<&str> = file.rsplit('/').take(2).collect();
    short.reverse();
    let mut out = short.join("/");
    if let Some(l) = line {
        out.push(':');
        out.push_str(l);
    }
    out
}

/// ns and stretches (or wakes) per key, clipped to the `--from/--to` window: what a task
/// pass keeps for the idle graph (by task and yield site) or the wake graph (by waker and
/// woken task).
pub(super) struct WindowSums<K> {
    /// `[from, to)` in absolute ns, once the trace's start is known (set by [`task_pass`]).
    from: u64,
    to: u64,
    pub sums: HashMap<K, (u64, u64)>,
}

impl<K> Default for WindowSums<K> {
    fn default() -> Self {
        WindowSums {
            from: 0,
            to: u64::MAX,
            sums: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> WindowSums<K> {
    /// Adds what of `[start, end)` lies in the window, if anything.
    pub fn add(&mut self, key: K, start: u64, end: u64) {
        let ns = end.min(self.to).saturating_sub(start.max(self.from));
        if ns > 0 {
            let e = self.sums.entry(key).or_default();
            e.0 += ns;
            e.1 += 1;
        }
    }
}

impl Sink for WindowSums<(TaskKey, YieldSite)> {
    fn task_interval(&mut self, iv: &TaskInterval) {
        if let TaskPhase::Idle(site) = iv.phase {
            self.add((iv.task, site), iv.start, iv.end);
        }
    }
}

/// Frame names of a stack, innermost first (` at file:line` when DWARF has it), as
/// `iotrace_analysis::tasks::naming::names_in` names them, and the symbol statistics.
pub(super) fn name_stacks(
    fold: &mut StackFold,
    ids: &[StackId],
) -> (HashMap<StackId, Vec<String>>, SymbolStats) {
    let keys: HashMap<StackId, Vec<FrameKey>> = ids
        .iter()
        .map(|&id| (id, fold.stacks.frame_keys(id).map(|(k, _)| k).collect()))
        .collect();
    let need: HashSet<FrameKey> = keys.values().flatten().copied().collect();
    // The layer takes user-space frame-pointer stacks only: no kernel symbols needed.
    let (symbols, stats) = symbolize::symbolize(fold, need, None);
    let strings = &fold.strings;
    let named = keys
        .into_iter()
        .map(|(id, frames)| {
            let mut names = Vec::new();
            for key in frames {
                // Innermost first: the functions inlined at the frame, then its own.
                for (name, at, _) in symbols.frames(key).into_iter().rev() {
                    let mut text = name.map_or("[unknown]", |s| strings.get(s)).to_owned();
                    if let Some(at) = at {
                        text.push_str(" at ");
                        text.push_str(strings.get(at));
                    }
                    names.push(text);
                }
            }
            (id, names)
        })
        .collect();
    (named, stats)
}

/// What one pass of the task model over a trace gives the idle and wake graphs.
pub(super) struct TaskPass {
    /// The trace's stack tree and mappings, for naming the sites' and wakers' stacks.
    pub fold: StackFold,
    pub report: TaskReport,
    pub command: String,
    pub truncated: Option<String>,
}

/// Runs the task model over `path` into `sink`, folding the stack tree alongside; the sink
/// gets the `--from/--to` window in absolute ns once the header gives the start.
pub(super) fn task_pass<K>(
    path: &Path,
    opts: &Options,
    sink: &mut WindowSums<K>,
) -> Result<TaskPass, FlamegraphError>
where
    WindowSums<K>: Sink,
{
    let mut reader = TraceReader::open(path)?;
    let mut fold = StackFold::with(Need {
        on_cpu: false,
        off_cpu: false,
        contexts: false,
    });
    let mut analyzer = TaskAnalyzer::default();
    let mut command = String::new();
    for record in reader.by_ref() {
        if let Record::Header(h) = &record {
            command = shell_join(&h.command);
            sink.from = opts.from_ns.map_or(0, |f| h.start_ns.saturating_add(f));
            sink.to = opts
                .to_ns
                .map_or(u64::MAX, |t| h.start_ns.saturating_add(t));
        }
        analyzer.add(&record, sink);
        fold.add(&record, &mut |_, _| {});
    }
    fold.finish(&mut |_, _| {});
    let report = analyzer.finish(sink);
    let truncated = reader.stop().map(|s| s.to_string());
    Ok(TaskPass {
        fold,
        report,
        command,
        truncated,
    })
}

impl TaskPass {
    /// The graph's folded lines from ns per line (see [`us_lines`]), or the error that says
    /// why there are none (`empty`, given the task report).
    pub(super) fn folded(
        self,
        merged: HashMap<String, u64>,
        symbols: SymbolStats,
        empty: impl FnOnce(&TaskReport) -> String,
        idle: Option<IdleStats>,
        wake: Option<WakeStats>,
    ) -> Result<Folded, FlamegraphError> {
        let lines = us_lines(merged);
        if lines.is_empty() {
            return Err(FlamegraphError::Empty(empty(&self.report)));
        }
        Ok(Folded {
            lines,
            unit: "µs",
            command: self.command,
            stack_bytes: 0,
            fold: self.fold.stats.clone(),
            symbols,
            truncated: self.truncated,
            left_out: LeftOut::default(),
            idle,
            wake,
        })
    }
}

/// The sorted, distinct stack ids among `ids`, named (see [`name_stacks`]).
pub(super) fn name_distinct(
    fold: &mut StackFold,
    ids: impl Iterator<Item = StackId>,
) -> (HashMap<StackId, Vec<String>>, SymbolStats) {
    let mut ids: Vec<StackId> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    name_stacks(fold, &ids)
}

/// Folded lines from ns per line: in µs, the lines under 1 µs left out, sorted.
pub(super) fn us_lines(merged: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut lines: Vec<(String, u64)> = merged
        .into_iter()
        .map(|(s, ns)| (s, ns / 1000))
        .filter(|l| l.1 > 0)
        .collect();
    lines.sort_unstable();
    lines
}

/// The root frames of the report's tasks, made once each.
pub(super) struct TaskLabels<'r> {
    rows: HashMap<TaskKey, &'r TaskRow>,
    /// The report left tasks out (past its row limit).
    unlisted: bool,
    made: HashMap<TaskKey, String>,
}

impl<'r> TaskLabels<'r> {
    pub(super) fn new(report: &'r TaskReport) -> Self {
        let rows = report
            .tasks
            .iter()
            .map(|r| {
                let key = TaskKey {
                    pid: r.pid,
                    span: r.id,
                };
                (key, r)
            })
            .collect();
        TaskLabels {
            rows,
            unlisted: report.totals.omitted > 0,
            made: HashMap::new(),
        }
    }

    /// A listed task's frame, [`UNLISTED`] for a task past the report's rows, and `None` for
    /// a span that turned out not to be a task.
    pub(super) fn get(&mut self, task: TaskKey) -> Option<String> {
        match self.rows.get(&task) {
            Some(row) => Some(
                self.made
                    .entry(task)
                    .or_insert_with(|| task_frame(row))
                    .clone(),
            ),
            None if self.unlisted => Some(UNLISTED.to_owned()),
            None => None,
        }
    }

    /// Whether `task` (whose frame is `label`) is one `--task WANT` asks for: by its frame,
    /// its name or its spawn place.
    pub(super) fn matches(&self, task: TaskKey, label: &str, want: Option<&str>) -> bool {
        let Some(want) = want else { return true };
        label.contains(want)
            || self.rows.get(&task).is_some_and(|r| {
                r.name.contains(want) || r.location.as_ref().is_some_and(|l| l.contains(want))
            })
    }
}

/// Folded lines of the idle flamegraph, in µs.
pub(super) fn fold_idle(path: &Path, opts: &Options) -> Result<Folded, FlamegraphError> {
    let mut sums = WindowSums::<(TaskKey, YieldSite)>::default();
    let mut pass = task_pass(path, opts, &mut sums)?;
    let mut labels = TaskLabels::new(&pass.report);
    let mut drawn: HashSet<TaskKey> = HashSet::new();
    let mut kept: Vec<(String, YieldSite, u64, u64)> = Vec::new();
    for (&(task, site), &(ns, n)) in &sums.sums {
        let Some(label) = labels.get(task) else {
            continue;
        };
        if !labels.matches(task, &label, opts.task.as_deref()) {
            continue;
        }
        drawn.insert(task);
        kept.push((label, site, ns, n));
    }

    let (names, symbols) = name_distinct(&mut pass.fold, kept.iter().filter_map(|k| k.1.stack));
    let mut stats = IdleStats {
        tasks: drawn.len() as u64,
        ..IdleStats::default()
    };
    let mut merged: HashMap<String, u64> = HashMap::new();
    for (label, site, ns, n) in kept {
        stats.stretches += n;
        stats.idle_ns += ns;
        let mut line = label;
        let frames = site.stack.and_then(|id| names.get(&id));
        let frames = frames.map(|f| site_frames(f)).unwrap_or_default();
        let known = match (frames.is_empty(), site.spans) {
            (false, _) => {
                for f in frames {
                    line.push(';');
                    line.push_str(f);
                }
                true
            }
            (_, Some(chain)) => match pass.report.span_chains.get(chain as usize) {
                Some(chain) => {
                    for span in chain.split(" > ") {
                        line.push_str(";span: ");
                        line.push_str(span);
                    }
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !known {
            stats.unknown_ns += ns;
            line.push(';');
            line.push_str(UNKNOWN_SITE);
        }
        *merged.entry(line).or_insert(0) += ns;
    }
    let never_idle = sums.sums.is_empty();
    pass.folded(
        merged,
        symbols,
        |report| {
            empty_reason(
                path,
                opts,
                report,
                never_idle,
                (
                    "no task was ever idle (returned Pending to wait for a wake)",
                    "no idle time of tasks matches the filters (--task, --from/--to)",
                ),
            )
        },
        Some(stats),
        None,
    )
}

/// Why a trace has no tasks to draw, if it has none.
pub(super) fn no_tasks(report: &TaskReport) -> Option<&'static str> {
    if !report.saw_spans {
        Some(
            "no tasks: the trace has no span events (the program does not install iotrace's \
             tracing layer, or was recorded by an older iotrace)",
        )
    } else if report.tasks.is_empty() {
        Some(
            "no tasks among the program's spans (tokio's task spans need `--cfg tokio_unstable` \
             and tokio's `tracing` feature; any span with an `iotrace.task` field is a task too)",
        )
    } else {
        None
    }
}

/// Why a task graph of `path` is empty: no tasks; none in the graph's sense (`never`, said
/// by `never_why`) with no time window; else the filters (`filtered_why`).
pub(super) fn empty_reason(
    path: &Path,
    opts: &Options,
    report: &TaskReport,
    never: bool,
    (never_why, filtered_why): (&str, &str),
) -> String {
    let why = if let Some(why) = no_tasks(report) {
        why
    } else if never && opts.from_ns.is_none() && opts.to_ns.is_none() {
        never_why
    } else {
        filtered_why
    };
    format!("{}: {why}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sleeper's yield-site stack of `yields` (tokio 1.54), innermost first.
    const SLEEPER: &[&str] = &[
        "<iotrace_layer::layer::IotraceLayer as tracing_subscriber::layer::Layer<S>>::on_event at layer/src/layer.rs:304",
        "<tracing_subscriber::layer::layered::Layered<L,S> as tracing_core::subscriber::Subscriber>::event",
        "tracing_core::dispatcher::Dispatch::event",
        "tracing_core::event::Event::dispatch",
        "tokio::runtime::task::waker::clone_waker::{{closure}} at tracing-0.1.44/src/macros.rs:905",
        "tokio::runtime::task::waker::clone_waker at tokio-1.54.1/src/runtime/task/waker.rs:51",
        "<core::task::wake::Waker as core::clone::Clone>::clone at library/core/src/task/wake.rs:619",
        "<&core::task::wake::Waker as tokio::sync::task::atomic_waker::WakerRef>::into_waker",
        "tokio::sync::task::atomic_waker::AtomicWaker::register_by_ref",
        "tokio::runtime::time::entry::StateCell::poll",
        "<tokio::time::sleep::Sleep as core::future::future::Future>::poll at tokio-1.54.1/src/time/sleep.rs:457",
        "yields::sleeper::{{closure}} at instrumented-demos/src/bin/yields.rs:22",
        "<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll",
        "tokio::runtime::task::core::Core<T,S>::poll::{{closure}} at tokio-1.54.1/src/runtime/task/core.rs:380",
        "tokio::loom::std::unsafe_cell::UnsafeCell<T>::with_mut (inlined)",
        "tokio::runtime::task::core::Core<T,S>::poll",
        "tokio::runtime::task::harness::poll_future",
        "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
        "tokio::runtime::scheduler::multi_thread::worker::Launch::launch::{{closure}}",
        "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
        "<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll",
        "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
        "tokio::runtime::task::core::Core<T,S>::poll",
        "std::thread::lifecycle::spawn_unchecked::{{closure}}::{{closure}}",
    ];

    fn owned(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_yield_site_runs_from_the_tasks_future_to_the_future_that_stored_the_waker() {
        let stack = owned(SLEEPER);
        let frames = site_frames(&stack);
        assert_eq!(
            frames,
            [
                "yields::sleeper::{{closure}} at instrumented-demos/src/bin/yields.rs:22",
                "<tokio::time::sleep::Sleep as core::future::future::Future>::poll at tokio-1.54.1/src/time/sleep.rs:457",
                "tokio::runtime::time::entry::StateCell::poll",
                "tokio::sync::task::atomic_waker::AtomicWaker::register_by_ref",
            ]
        );
    }

    #[test]
    fn a_stack_without_a_poller_keeps_its_outer_frames_and_a_bare_one_its_runtime_frames() {
        let cut_short = owned(&SLEEPER[..12]);
        let frames = site_frames(&cut_short);
        assert_eq!(frames.len(), 4);
        assert!(frames[0].starts_with("yields::sleeper"));
        // Only machinery and the poller: the poller's frames rather than nothing.
        let bare = owned(&[SLEEPER[5], SLEEPER[13], SLEEPER[15]]);
        assert_eq!(site_frames(&bare).len(), 2);
        assert!(site_frames(&owned(&SLEEPER[..3])).is_empty());
    }

    fn row(name: &str, kind: &str, location: Option<&str>, task_id: Option<u64>) -> TaskRow {
        // Built field by field: the row has fields private to the analysis.
        let mut row = TaskRow::default();
        row.name = name.to_owned();
        row.kind = kind.to_owned();
        row.location = location.map(str::to_owned);
        row.task_id = task_id;
        row
    }

    #[test]
    fn tasks_are_labelled_as_the_async_graph_labels_them() {
        let at = Some("instrumented-demos/src/bin/yields.rs:99:14");
        assert_eq!(
            task_frame(&row("sleeper", "task", at, Some(3))),
            "task sleeper"
        );
        assert_eq!(
            task_frame(&row("task 7", "task", at, Some(7))),
            "task bin/yields.rs:99"
        );
        assert_eq!(
            task_frame(&row("conn 3", "task", None, Some(3))),
            "task conn"
        );
        assert_eq!(
            task_frame(&row(
                "Launch::launch",
                "blocking",
                Some("/r/tokio-1.54.1/src/runtime/scheduler/multi_thread/worker.rs:515:13"),
                None
            )),
            "blocking multi_thread/worker.rs:515"
        );
        assert_eq!(
            task_frame(&row(
                "block_on 1",
                "block_on",
                Some("src/main.rs:70"),
                Some(1)
            )),
            "block_on src/main.rs:70"
        );
        assert_eq!(task_frame(&row("task 7", "task", None, Some(7))), "task 7");
    }
}
