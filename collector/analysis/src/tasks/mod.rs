//! The state model of `docs/DESIGN.md`: where threads block and where tasks yield, computed in one
//! streaming pass over a trace.
//!
//! - **Threads** (from context-switch records): `running`, `runnable` (preempted, or new and
//!   not yet on a CPU) and `blocked` in the syscall the thread last entered (and, when the trace
//!   has off-CPU stacks, with a stack).
//! - **Tasks** (from span events): `polling`, split by the worker thread's kernel state during the
//!   poll into on-CPU, preempted and *blocked-in-poll*; `scheduled` (spawned or woken, waiting for
//!   a worker); `idle` (returned Pending, waiting for a wake); `done`.
//!
//! # Which spans are tasks
//! - tokio's task spans (`runtime.spawn`, emitted when tokio is built with `--cfg tokio_unstable`
//!   and feature `tracing`); each poll is one enter/exit of the span, and tokio's waker events
//!   say when the task was woken. `kind=blocking` tasks (spawn_blocking, the runtime's worker
//!   threads) are meant to block and are never warned about.
//! - **Any span with a field named `iotrace.task`** (the mark-as-task convention): each enter/exit
//!   is one poll (a run slice), the field's value names the task, a `task.id` field is its id,
//!   and `iotrace.blocking = true` marks a task that is meant to block:
//!   `tracing::trace_span!("conn", iotrace.task = "conn", task.id = n)`. Without waker events the
//!   time between its polls is `idle`.
//!
//! # Streaming with bounded memory
//! Records of different CPUs, and span batches of different threads, are not ordered with
//! respect to each other, and a thread holds its span records while it sleeps. Kernel events are
//! reordered behind a watermark from drain markers; span events behind one that trails the newest
//! span time by a few seconds. Each thread keeps a short history of cumulative counters so a poll
//! can be measured against it whenever its events arrive. Memory grows with threads, open tasks
//! and the event rate, not with the length of the recording; past [`rows::MAX_ROWS`] tasks are
//! counted but not listed.
//!
//! Renderers (timeline, export) see every interval through a [`Sink`].

pub mod diagnosis;
mod evidence;
mod hist;
pub mod identity;
mod kernel;
mod model;
pub mod naming;
mod reorder;
pub mod rows;
mod rules;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_diagnoses;

use std::collections::HashMap;

use serde::Serialize;

pub use diagnosis::{Diagnosis, DiagnosisOptions};
pub use identity::TaskInfo;
pub use rows::{Delay, Holder, TaskRow, TaskTotals, WakerRow, Warning, WokenBy, YieldSiteRow};

use crate::summary::syscall_name;
use identity::{Class, WakerOp};
use iotrace_trace::Record;
use iotrace_wire::{SpanBatch, SpanEvent};
use model::SpanEv;

/// Default shortest blocked stretch inside a poll that counts as blocking the worker.
pub const DEFAULT_BLOCKED_THRESHOLD_NS: u64 = 100_000;
/// Span events wait this long behind the newest one, for other threads' batches to arrive.
const SPAN_LAG_NS: u64 = 2_000_000_000;
/// ... but never more than this behind the kernel's watermark.
const FORCE_LAG_NS: u64 = 10_000_000_000;
/// Most span events held for reordering before the oldest are released anyway.
const MAX_SPAN_QUEUE: usize = 1 << 22;

/// Default share of a task's poll time spent blocked above which it is warned about.
pub const DEFAULT_WARN_SHARE: f64 = 0.05;
/// Default wake→poll delay past which the workers' polls meanwhile are looked at, and a task's
/// p99 past which it gets a `scheduling_delay` warning.
pub const DEFAULT_SCHED_DELAY_NS: u64 = 1_000_000;

/// How the task analysis decides.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Shortest voluntary off-CPU stretch inside a poll that makes the poll "blocked".
    pub blocked_threshold_ns: u64,
    /// A task is warned about when its blocked stretches add up to at least this share of its
    /// time in polls (0..=1). Rare short waits (a contended lock once in thousands of polls)
    /// stay below it; a task that sleeps or does blocking I/O in its polls does not.
    pub warn_share: f64,
    /// A wake→poll delay at least this long makes the analysis ask what held the workers;
    /// a task whose p99 delay reaches it, mostly behind polls that blocked, is warned about.
    pub sched_delay_ns: u64,
    /// The diagnoses' thresholds.
    pub diagnosis: DiagnosisOptions,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            blocked_threshold_ns: DEFAULT_BLOCKED_THRESHOLD_NS,
            warn_share: DEFAULT_WARN_SHARE,
            sched_delay_ns: DEFAULT_SCHED_DELAY_NS,
            diagnosis: DiagnosisOptions::default(),
        }
    }
}

/// An off-CPU stack, as an index into the trace's stack table. Recordings without off-CPU
/// stacks have none; the field is there so the stack a thread blocked in can be shown with it.
pub type StackId = u32;

/// A task: its span, which is unique within its process for the whole recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TaskKey {
    pub pid: u32,
    pub span: u64,
}

/// A thread's kernel state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    Running,
    /// Preempted (or new), waiting for a CPU.
    Runnable,
    /// Switched out voluntarily; `syscall` is the one it last entered
    /// ([`iotrace_trace::Switch::NO_SYSCALL`] when unknown).
    Blocked {
        syscall: u16,
        stack: Option<StackId>,
    },
}

/// Who ended a blocked stretch: the waker's tid, and whether an interrupt in that thread's
/// time did.
pub type WakerRef = (u32, bool);

/// One stretch of one thread in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadInterval {
    pub pid: u32,
    pub tid: u32,
    pub start: u64,
    pub end: u64,
    pub state: ThreadState,
    /// For a blocked stretch: who ended it, when the trace has the wakeup.
    pub waker: Option<WakerRef>,
}

/// One poll of a task and what its worker thread did meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// The worker thread.
    pub tid: u32,
    pub start: u64,
    pub end: u64,
    pub on_cpu_ns: u64,
    pub preempted_ns: u64,
    /// All voluntary off-CPU time inside the poll.
    pub blocked_ns: u64,
    /// Of that, stretches at least the threshold long: the poll blocked its worker.
    pub blocked_counted_ns: u64,
    pub stretches: u32,
    /// The syscall of most of the counted time.
    pub syscall: Option<u16>,
    pub stack: Option<StackId>,
    /// False when the worker's kernel states were not known (no perf, lost records).
    pub measured: bool,
}

/// Where a task's future returned Pending: the stack at which its leaf future stored the
/// task's waker (tokio's `waker.clone`, with the frame-pointer stack the layer took there) and
/// the user's spans entered at that moment. Both `None`: not known (no `waker.clone` in the
/// poll and none before it, or a program without the layer's yield sites).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct YieldSite {
    /// Node of the trace's stack tree (innermost frame: in the layer).
    pub stack: Option<StackId>,
    /// The spans entered below the task's own, outermost first (`a > b`): an index into
    /// [`TaskReport::span_chains`].
    pub spans: Option<u32>,
}

impl YieldSite {
    pub fn is_known(&self) -> bool {
        self.stack.is_some() || self.spans.is_some()
    }
}

/// Who woke a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeSource {
    /// Another task's poll (or the task's own: a yield).
    Task(TaskKey),
    /// A runtime thread outside any poll: the I/O or timer driver, or a finished task's
    /// harness (`after`: the task that thread polled last). Which one its stack says.
    Driver {
        tid: u32,
        stack: Option<StackId>,
        after: Option<TaskKey>,
    },
    /// A thread that never polled a task (outside the runtime).
    Thread { tid: u32, stack: Option<StackId> },
}

/// A wake that a poll followed: from the waker, at `woken`, to the task's poll at `polled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeEdge {
    pub task: TaskKey,
    pub woken: u64,
    pub polled: u64,
    /// The thread the wake ran on.
    pub waker_tid: u32,
    pub by: WakeSource,
}

/// What a task was doing during a [`TaskInterval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    /// Spawned (`None`) or woken, waiting for a worker.
    Scheduled(Option<WakeSource>),
    /// Returned Pending at this site, waiting for a wake.
    Idle(YieldSite),
    Poll(Poll),
}

/// One stretch of one task in one phase. A task's intervals may reach a sink out of order, and
/// intervals of spans that turn out not to be tasks may too: keep those in
/// [`TaskReport::tasks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInterval {
    pub task: TaskKey,
    pub start: u64,
    pub end: u64,
    pub phase: TaskPhase,
}

/// Receives every interval the analysis finds (timeline, export).
pub trait Sink {
    fn thread_interval(&mut self, _iv: &ThreadInterval) {}
    fn task_interval(&mut self, _iv: &TaskInterval) {}
    /// A wake and the poll it led to (told when the poll starts).
    fn wake(&mut self, _w: &WakeEdge) {}
}

/// A sink that keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSink;
impl Sink for NoSink {}

/// Blocked time of a thread in one syscall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockedBy {
    pub syscall: String,
    pub ns: u64,
    /// Voluntary switch-outs in it.
    pub count: u64,
}

/// A thread, or an interrupt in its time, that ended another thread's blocked stretches
/// (`threads[].woken_by[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ThreadWaker {
    /// `thread`: the thread itself woke it (a mutex unlock, a pipe or socket write, a signal);
    /// `interrupt`: an interrupt did, in that thread's time (a timer, the network, a disk).
    pub kind: &'static str,
    pub tid: u32,
    pub name: String,
    /// Blocked stretches it ended, and their time.
    pub count: u64,
    pub ns: u64,
}

/// Wakers listed per thread.
pub const MAX_THREAD_WAKER_ROWS: usize = 5;

/// One thread's kernel-state totals.
#[derive(Debug, Clone, Default)]
pub struct ThreadStates {
    pub tid: u32,
    pub pid: u32,
    pub on_cpu_ns: u64,
    pub runnable_ns: u64,
    pub blocked_ns: u64,
    /// By syscall, most blocked time first.
    pub blocked: Vec<BlockedBy>,
    /// Who ended its blocked stretches, most blocked time first (at most
    /// [`MAX_THREAD_WAKER_ROWS`]; empty when the trace has no wakeups).
    pub woken_by: Vec<ThreadWaker>,
    /// Blocked time whose waker is not in the trace.
    pub woken_unknown_ns: u64,
}

/// The result of the task analysis.
#[derive(Debug, Clone, Default)]
pub struct TaskReport {
    pub tasks: Vec<TaskRow>,
    pub warnings: Vec<Warning>,
    /// The classic async bugs found, culprits first (see [`diagnosis`]).
    pub diagnoses: Vec<Diagnosis>,
    pub totals: TaskTotals,
    pub threads: Vec<ThreadStates>,
    /// Whether the trace had any span events.
    pub saw_spans: bool,
    /// The span chains [`YieldSite::spans`] indexes.
    pub span_chains: Vec<String>,
}

/// Folds trace records, in file order, into thread and task states.
pub struct TaskAnalyzer {
    opts: TaskOptions,
    kernel: kernel::Kernel,
    spans: reorder::Reorder<(u32, SpanEv)>,
    model: model::Model,
    classes: identity::Classes,
    results: rows::Results,
    names: HashMap<u32, String>,
    max_span: u64,
    last: u64,
    end: Option<u64>,
    saw_spans: bool,
}

impl Default for TaskAnalyzer {
    fn default() -> Self {
        Self::new(TaskOptions::default())
    }
}

impl TaskAnalyzer {
    pub fn new(opts: TaskOptions) -> Self {
        let warn_share = opts.warn_share;
        let sched_delay_ns = opts.sched_delay_ns;
        let lone_block_ns = opts
            .blocked_threshold_ns
            .saturating_mul(rows::LONE_BLOCK_FACTOR);
        let model = model::Model::new(sched_delay_ns, opts.diagnosis.clone());
        let diag = opts.diagnosis.clone();
        TaskAnalyzer {
            kernel: kernel::Kernel::new(opts.blocked_threshold_ns),
            opts,
            spans: reorder::Reorder::default(),
            model,
            classes: identity::Classes::default(),
            results: rows::Results {
                warn_share,
                lone_block_ns,
                delay_threshold_ns: sched_delay_ns,
                diag,
                ..rows::Results::default()
            },
            names: HashMap::new(),
            max_span: 0,
            last: 0,
            end: None,
            saw_spans: false,
        }
    }

    /// Thread names seen so far (comm), by tid.
    pub fn names(&self) -> &HashMap<u32, String> {
        &self.names
    }

    fn saw(&mut self, t: u64) {
        self.last = self.last.max(t);
    }

    pub fn add(&mut self, record: &Record, sink: &mut dyn Sink) {
        match record {
            Record::Header(h) => {
                self.results.start_ns = h.start_ns;
                self.saw(h.start_ns);
            }
            Record::Comm(c) => {
                self.saw(c.time_ns);
                self.names.insert(c.tid, c.name.clone());
                if c.exec {
                    self.kernel.exec(c.time_ns, c.pid, c.tid);
                }
            }
            Record::Fork(f) => {
                self.saw(f.time_ns);
                if let Some(parent) = self.names.get(&f.ptid).cloned() {
                    self.names.entry(f.tid).or_insert(parent);
                }
                self.kernel.fork(f.time_ns, f.pid, f.tid);
            }
            Record::Exit(e) => {
                self.saw(e.time_ns);
                self.kernel.exit(e.time_ns, e.tid);
            }
            Record::Switches(batch) => {
                let last = batch
                    .switches
                    .iter()
                    .fold(batch.base_ns, |t, s| t.wrapping_add(s.delta_ns));
                self.kernel.switches(batch);
                self.saw(last);
            }
            Record::Samples(batch) => self.kernel.samples(batch),
            Record::Wakeups(batch) => self.kernel.wakeups(batch),
            Record::ThreadCounts(c) => {
                self.saw(c.time_ns);
                self.kernel.marker(c.time_ns);
            }
            Record::ProcSample(s) => {
                self.saw(s.time_ns);
                self.kernel.marker(s.time_ns);
                for t in &s.threads {
                    self.names.entry(t.tid).or_insert_with(|| t.name.clone());
                }
            }
            Record::End(e) => {
                self.saw(e.time_ns);
                self.end = Some(e.time_ns);
            }
            Record::Spans(batch) => self.add_spans(batch),
            _ => {}
        }
        self.pump(sink);
    }

    fn add_spans(&mut self, batch: &SpanBatch) {
        let (pid, tid) = (batch.pid, batch.tid);
        let mut newest = 0;
        let mut run = Vec::with_capacity(batch.events.len());
        let mut events = batch.events.iter().peekable();
        while let Some(event) = events.next() {
            let Some(time) = event.time() else {
                if let SpanEvent::Callsite(c) = event {
                    self.classes.insert((pid, c.id), identity::classify(c));
                    if c.kind == iotrace_wire::CallsiteKind::Span {
                        self.model
                            .callsite_names
                            .insert((pid, c.id), c.name.clone());
                    }
                }
                continue;
            };
            newest = newest.max(time);
            let ev = match event {
                SpanEvent::NewSpan {
                    span,
                    callsite,
                    fields,
                    parent,
                    ..
                } => match self.classes.get(&(pid, *callsite)) {
                    Some(Class::Task(cs)) => SpanEv::NewTask {
                        span: *span,
                        info: Box::new(identity::task_info(cs, fields)),
                    },
                    Some(_) => SpanEv::NewOther {
                        span: *span,
                        callsite: *callsite,
                        parent: *parent,
                    },
                    None => SpanEv::NewUnresolved {
                        span: *span,
                        callsite: *callsite,
                        parent: *parent,
                        fields: fields.clone(),
                    },
                },
                SpanEvent::Enter { span, .. } => SpanEv::Enter { tid, span: *span },
                SpanEvent::Exit { span, .. } => SpanEv::Exit { tid, span: *span },
                SpanEvent::Close { span, .. } => SpanEv::Close { span: *span },
                SpanEvent::Event {
                    callsite,
                    fields,
                    span: ctx,
                    ..
                } => {
                    // The stack the layer took at it, in the trace's stack tree.
                    let stack = match events.peek() {
                        Some(SpanEvent::At { stack, .. }) => {
                            let s = u32::try_from(*stack).ok();
                            events.next();
                            s
                        }
                        _ => None,
                    };
                    match identity::waker_event(self.classes.get(&(pid, *callsite)), fields) {
                        Some((WakerOp::Wake { by_val }, span)) => SpanEv::Wake {
                            span,
                            tid,
                            stack,
                            by_val,
                        },
                        Some((WakerOp::Drop, span)) => SpanEv::WakerDrop { span },
                        Some((WakerOp::Clone, span)) => SpanEv::Register {
                            span,
                            tid,
                            ctx: *ctx,
                            stack,
                        },
                        None => continue,
                    }
                }
                _ => continue,
            };
            run.push((time, (pid, ev)));
        }
        self.spans.push_run(run);
        if newest > 0 {
            self.saw_spans = true;
            self.max_span = self.max_span.max(newest);
            if tid != 0 {
                self.kernel.span_seen(tid, newest);
            }
            self.saw(newest);
        }
    }

    /// Releases what the watermarks allow.
    fn pump(&mut self, sink: &mut dyn Sink) {
        self.kernel.release(sink);
        let kwm = self.kernel.watermark;
        let w = self
            .max_span
            .saturating_sub(SPAN_LAG_NS)
            .max(kwm.saturating_sub(FORCE_LAG_NS))
            .min(kwm);
        self.kernel.span_released = self.kernel.span_released.max(w);
        while let Some((t, (pid, ev))) = self.spans.pop_until(w) {
            self.apply(pid, t, ev, sink);
        }
        while self.spans.len() > MAX_SPAN_QUEUE {
            if let Some((t, (pid, ev))) = self.spans.pop() {
                self.apply(pid, t, ev, sink);
            }
        }
    }

    fn apply(&mut self, pid: u32, t: u64, ev: SpanEv, sink: &mut dyn Sink) {
        let mut out = model::Out {
            sink,
            results: &mut self.results,
        };
        self.model
            .apply(pid, t, ev, &self.kernel, &self.classes, &mut out);
    }

    /// Ends the pass: everything still open ends at the recording's end.
    pub fn finish(mut self, sink: &mut dyn Sink) -> TaskReport {
        let end = self.end.unwrap_or(self.last);
        self.kernel.finish(end, sink);
        while let Some((t, (pid, ev))) = self.spans.pop() {
            self.apply(pid, t, ev, sink);
        }
        let mut out = model::Out {
            sink,
            results: &mut self.results,
        };
        self.model.finish(end, &self.kernel, &mut out);
        let mut threads: Vec<ThreadStates> = self
            .kernel
            .totals()
            .map(|(tid, t)| {
                let mut blocked: Vec<BlockedBy> = t
                    .blocked
                    .iter()
                    .map(|(&nr, &(ns, count))| BlockedBy {
                        syscall: syscall_name(nr),
                        ns,
                        count,
                    })
                    .collect();
                blocked.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.syscall.cmp(&b.syscall)));
                let mut woken_by: Vec<ThreadWaker> = t
                    .woken
                    .iter()
                    .map(|&((waker, irq), count, ns)| ThreadWaker {
                        kind: if irq { "interrupt" } else { "thread" },
                        tid: waker,
                        name: self.names.get(&waker).cloned().unwrap_or_default(),
                        count,
                        ns,
                    })
                    .collect();
                woken_by.sort_by_key(|w| std::cmp::Reverse(w.ns));
                let listed: u64 = woken_by
                    .iter()
                    .take(MAX_THREAD_WAKER_ROWS)
                    .map(|w| w.ns)
                    .sum();
                let all: u64 = woken_by.iter().map(|w| w.ns).sum();
                woken_by.truncate(MAX_THREAD_WAKER_ROWS);
                ThreadStates {
                    tid,
                    pid: t.pid,
                    on_cpu_ns: t.on_cpu_ns,
                    runnable_ns: t.runnable_ns,
                    blocked_ns: t.blocked_ns,
                    blocked,
                    woken_by,
                    woken_unknown_ns: if self.kernel.saw_wakeups {
                        t.woken_unknown_ns.saturating_add(all - listed)
                    } else {
                        0
                    },
                }
            })
            .collect();
        threads.sort_by_key(|t| (t.pid, t.tid));
        let kernel_view = self.kernel.saw_switches;
        let late = self.spans.late() + self.model.late + self.kernel.late_events();
        let ends = rules::Ends {
            peaks: &self.model.pool,
            strings: &self.model.strings,
            names: &self.names,
            wakeups: self.kernel.saw_wakeups,
            drops: &self.model.saw_drops,
            clones: &self.model.saw_clones,
        };
        let (tasks, warnings, diagnoses, mut totals) = self.results.finish(&self.opts, &ends);
        totals.kernel_view = kernel_view;
        totals.late_events = late;
        TaskReport {
            tasks,
            warnings,
            diagnoses,
            totals,
            threads,
            saw_spans: self.saw_spans,
            span_chains: std::mem::take(&mut self.model.strings),
        }
    }
}
