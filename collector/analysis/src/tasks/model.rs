//! The task half of the state model: each task (a span that [`identity`](super::identity)
//! recognises) moves through `scheduled` (spawned or woken, waiting for a worker), `polling`
//! (one enter/exit of its span, split by the worker thread's kernel state into on-CPU,
//! preempted and blocked), `idle` (returned Pending, waiting to be woken) and `done`.
//!
//! Span events arrive here in time order (see [`super::TaskAnalyzer`]). A span's creation may
//! arrive long after its polls (a thread holds its records while it sleeps), so spans whose
//! creation is not known yet are followed as possible tasks and decided when it arrives.

use super::hist::LogHist;
use super::identity::{self, TaskInfo};
use super::kernel::{Cum, Kernel};
use super::rows::Results;
use super::{Poll, Sink, StackId, TaskInterval, TaskKey, TaskPhase};
use iotrace_wire::FieldValue;
use rustc_hash::{FxHashMap as FxMap, FxHashSet as FxSet};

/// Most closed spans kept while their creation record is still to come.
const MAX_ORPHANS: usize = 100_000;

/// A span event, reduced to what the task model needs.
#[derive(Debug)]
pub(crate) enum SpanEv {
    NewTask {
        span: u64,
        info: Box<TaskInfo>,
    },
    NewOther {
        span: u64,
    },
    /// Created at a callsite whose definition had not arrived yet.
    NewUnresolved {
        span: u64,
        callsite: u64,
        fields: Vec<FieldValue>,
    },
    Enter {
        tid: u32,
        span: u64,
    },
    Exit {
        tid: u32,
        span: u64,
    },
    Close {
        span: u64,
    },
    Wake {
        span: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unknown,
    Scheduled,
    Idle,
    Polling,
    Done,
}

/// Everything counted for one task.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub polls: u64,
    pub busy_ns: u64,
    pub on_cpu_ns: u64,
    pub preempted_ns: u64,
    pub blocked_ns: u64,
    pub blocked_in_poll_ns: u64,
    pub blocked_polls: u64,
    pub longest_poll_ns: u64,
    pub scheduled_ns: u64,
    pub idle_ns: u64,
    pub wakes: u64,
    pub sched: LogHist,
    /// (syscall, counted blocked ns, polls) of blocked polls, by each poll's main syscall.
    pub syscalls: Vec<(u16, u64, u64)>,
    /// (worker tid, counted blocked ns, blocked polls).
    pub workers: Vec<(u32, u64, u64)>,
    pub stacks: Vec<(StackId, u64)>,
    pub unmeasured_polls: u64,
}

impl Stats {
    fn add_poll(&mut self, p: &Poll) {
        self.polls += 1;
        let d = p.end.saturating_sub(p.start);
        self.busy_ns = self.busy_ns.saturating_add(d);
        self.longest_poll_ns = self.longest_poll_ns.max(d);
        if !p.measured {
            self.unmeasured_polls += 1;
            return;
        }
        self.on_cpu_ns = self.on_cpu_ns.saturating_add(p.on_cpu_ns);
        self.preempted_ns = self.preempted_ns.saturating_add(p.preempted_ns);
        self.blocked_ns = self.blocked_ns.saturating_add(p.blocked_ns);
        if p.stretches > 0 {
            self.blocked_polls += 1;
            self.blocked_in_poll_ns = self.blocked_in_poll_ns.saturating_add(p.blocked_counted_ns);
            let sc = p.syscall.unwrap_or(iotrace_trace::Switch::NO_SYSCALL);
            bump(&mut self.syscalls, sc, p.blocked_counted_ns);
            bump(&mut self.workers, p.tid, p.blocked_counted_ns);
            if let Some(s) = p.stack {
                match self.stacks.iter_mut().find(|e| e.0 == s) {
                    Some(e) => e.1 = e.1.saturating_add(p.blocked_counted_ns),
                    None => self.stacks.push((s, p.blocked_counted_ns)),
                }
            }
        }
    }
}

fn bump<K: PartialEq + Copy>(v: &mut Vec<(K, u64, u64)>, k: K, ns: u64) {
    match v.iter_mut().find(|e| e.0 == k) {
        Some(e) => {
            e.1 = e.1.saturating_add(ns);
            e.2 += 1;
        }
        None => v.push((k, ns, 1)),
    }
}

#[derive(Debug)]
pub(crate) struct Task {
    pub info: Option<Box<TaskInfo>>,
    pub created: Option<u64>,
    pub closed: Option<u64>,
    phase: Phase,
    since: u64,
    depth: u32,
    poll_tid: u32,
    poll_start: u64,
    cum0: Option<Cum>,
    woken_in_poll: bool,
    /// A waker event named it: it is a tokio task even if its creation never arrives.
    pub woken: bool,
    /// The last poll, which is the drop of a tokio task if the span closes next.
    tentative: Option<Poll>,
    pub stats: Stats,
}

impl Task {
    fn new(phase: Phase, since: u64) -> Self {
        Task {
            info: None,
            created: None,
            closed: None,
            phase,
            since,
            depth: 0,
            poll_tid: 0,
            poll_start: 0,
            cum0: None,
            woken_in_poll: false,
            woken: false,
            tentative: None,
            stats: Stats::default(),
        }
    }
}

/// Where finished tasks and intervals go.
pub(crate) struct Out<'a> {
    pub sink: &'a mut dyn Sink,
    pub results: &'a mut Results,
}

/// All tasks being followed.
#[derive(Default)]
pub(crate) struct Model {
    tasks: FxMap<TaskKey, Task>,
    /// Open spans known not to be tasks.
    non_tasks: FxSet<TaskKey>,
    /// Closed spans whose creation (and so whether they are tasks) is still to come.
    orphans: FxMap<TaskKey, Task>,
    pub(crate) orphans_dropped: u64,
    /// Events earlier than their task's current state (arrived after the watermark).
    pub(crate) late: u64,
    pub(crate) sched: LogHist,
}

impl Model {
    pub(crate) fn apply(
        &mut self,
        pid: u32,
        t: u64,
        ev: SpanEv,
        kernel: &Kernel,
        classes: &identity::Classes,
        out: &mut Out<'_>,
    ) {
        match ev {
            SpanEv::NewUnresolved {
                span,
                callsite,
                fields,
            } => {
                let ev = match classes.get(&(pid, callsite)) {
                    Some(identity::Class::Task(cs)) => SpanEv::NewTask {
                        span,
                        info: Box::new(identity::task_info(cs, &fields)),
                    },
                    Some(_) => SpanEv::NewOther { span },
                    // Never defined: not something we can name; treat as a plain span.
                    None => SpanEv::NewOther { span },
                };
                self.apply(pid, t, ev, kernel, classes, out);
            }
            SpanEv::NewTask { span, info } => {
                let key = TaskKey { pid, span };
                if let Some(mut task) = self.orphans.remove(&key) {
                    task.info = Some(info);
                    task.created = Some(t);
                    self.finalize(key, task, out);
                } else if let Some(task) = self.tasks.get_mut(&key) {
                    task.info = Some(info);
                    task.created = Some(t);
                } else {
                    let mut task = Task::new(Phase::Scheduled, t);
                    task.info = Some(info);
                    task.created = Some(t);
                    self.tasks.insert(key, task);
                }
            }
            SpanEv::NewOther { span } => {
                let key = TaskKey { pid, span };
                if self.orphans.remove(&key).is_none() && self.tasks.remove(&key).is_none() {
                    self.non_tasks.insert(key);
                }
            }
            SpanEv::Enter { tid, span } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.contains(&key) || self.orphans.contains_key(&key) {
                    return;
                }
                let task = self
                    .tasks
                    .entry(key)
                    .or_insert_with(|| Task::new(Phase::Unknown, t));
                task.depth += 1;
                if task.depth > 1 {
                    return;
                }
                task.poll_tid = tid;
                task.poll_start = t;
                task.cum0 = kernel.cum_at(tid, t);
                task.woken_in_poll = false;
                if let Some(p) = task.tentative.take() {
                    task.stats.add_poll(&p);
                    out.sink.task_interval(&TaskInterval {
                        task: key,
                        start: p.start,
                        end: p.end,
                        phase: TaskPhase::Poll(p),
                    });
                }
                if t < task.since {
                    self.late += 1;
                    return;
                }
                if task.phase == Phase::Scheduled {
                    let d = t - task.since;
                    task.stats.sched.add(d);
                    self.sched.add(d);
                }
                set_phase(key, task, Phase::Polling, t, out.sink);
            }
            SpanEv::Exit { tid, span } => {
                let key = TaskKey { pid, span };
                let Some(task) = self.tasks.get_mut(&key) else {
                    return;
                };
                if task.depth == 0 {
                    return;
                }
                task.depth -= 1;
                if task.depth > 0 {
                    return;
                }
                let p = measure(kernel, tid, task.poll_start, t, task.cum0);
                task.tentative = Some(p);
                if task.phase != Phase::Polling || t < task.since {
                    self.late += 1;
                    return;
                }
                task.phase = if task.woken_in_poll {
                    Phase::Scheduled
                } else {
                    Phase::Idle
                };
                task.since = t;
            }
            SpanEv::Wake { span } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.contains(&key) || self.orphans.contains_key(&key) {
                    return;
                }
                let task = self
                    .tasks
                    .entry(key)
                    .or_insert_with(|| Task::new(Phase::Unknown, t));
                task.woken = true;
                task.stats.wakes += 1;
                match task.phase {
                    Phase::Polling => task.woken_in_poll = true,
                    Phase::Idle | Phase::Unknown if t >= task.since => {
                        set_phase(key, task, Phase::Scheduled, t, out.sink)
                    }
                    _ => {}
                }
            }
            SpanEv::Close { span } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.remove(&key) {
                    return;
                }
                let Some(mut task) = self.tasks.remove(&key) else {
                    return;
                };
                if t >= task.since {
                    set_phase(key, &mut task, Phase::Done, t, out.sink);
                }
                task.closed = Some(t);
                if task.info.is_some() {
                    self.finalize(key, task, out);
                } else if self.orphans.len() < MAX_ORPHANS {
                    self.orphans.insert(key, task);
                } else {
                    self.orphans_dropped += 1;
                }
            }
        }
    }

    /// A task whose identity and end are known: settle its last poll and hand it over.
    fn finalize(&mut self, key: TaskKey, mut task: Task, out: &mut Out<'_>) {
        if let Some(p) = task.tentative.take() {
            let is_drop = task.closed.is_some() && task.info.as_ref().is_some_and(|i| i.tokio);
            if !is_drop {
                task.stats.add_poll(&p);
                out.sink.task_interval(&TaskInterval {
                    task: key,
                    start: p.start,
                    end: p.end,
                    phase: TaskPhase::Poll(p),
                });
            }
        }
        out.results.add(key, task);
    }

    /// The end of the recording: every task still open ends at `end`.
    pub(crate) fn finish(&mut self, end: u64, kernel: &Kernel, out: &mut Out<'_>) {
        let mut open: Vec<(TaskKey, Task)> = self.tasks.drain().collect();
        open.sort_by_key(|(k, _)| *k);
        for (key, mut task) in open {
            if task.depth > 0 && end > task.poll_start {
                let p = measure(kernel, task.poll_tid, task.poll_start, end, task.cum0);
                if let Some(prev) = task.tentative.replace(p) {
                    task.stats.add_poll(&prev);
                    out.sink.task_interval(&TaskInterval {
                        task: key,
                        start: prev.start,
                        end: prev.end,
                        phase: TaskPhase::Poll(prev),
                    });
                }
            } else if end >= task.since && task.phase != Phase::Polling {
                set_phase(key, &mut task, Phase::Done, end, out.sink);
            }
            if task.info.is_some() || task.woken {
                self.finalize(key, task, out);
            }
        }
        let mut orphans: Vec<(TaskKey, Task)> = self.orphans.drain().collect();
        orphans.sort_by_key(|(k, _)| *k);
        for (key, task) in orphans {
            if task.woken {
                self.finalize(key, task, out);
            }
        }
    }
}

/// Ends the current scheduled/idle stretch at `t` (emitting it) and starts `phase`.
fn set_phase(key: TaskKey, task: &mut Task, phase: Phase, t: u64, sink: &mut dyn Sink) {
    let d = t.saturating_sub(task.since);
    let emitted = match task.phase {
        Phase::Scheduled => {
            task.stats.scheduled_ns = task.stats.scheduled_ns.saturating_add(d);
            Some(TaskPhase::Scheduled)
        }
        Phase::Idle => {
            task.stats.idle_ns = task.stats.idle_ns.saturating_add(d);
            Some(TaskPhase::Idle)
        }
        _ => None,
    };
    if let Some(p) = emitted {
        if d > 0 {
            sink.task_interval(&TaskInterval {
                task: key,
                start: task.since,
                end: t,
                phase: p,
            });
        }
    }
    task.phase = phase;
    task.since = t;
}

/// A poll's split by its worker's kernel state, from the worker's cumulative counters.
fn measure(kernel: &Kernel, tid: u32, start: u64, end: u64, cum0: Option<Cum>) -> Poll {
    let mut p = Poll {
        tid,
        start,
        end,
        on_cpu_ns: 0,
        preempted_ns: 0,
        blocked_ns: 0,
        blocked_counted_ns: 0,
        stretches: 0,
        syscall: None,
        stack: None,
        measured: false,
    };
    let (Some(a), Some(b)) = (cum0, kernel.cum_at(tid, end)) else {
        return p;
    };
    let d = b.since(&a);
    p.measured = true;
    p.on_cpu_ns = d.running;
    p.preempted_ns = d.runnable;
    p.blocked_ns = d.blocked;
    p.blocked_counted_ns = d.blocked_long;
    p.stretches = u32::try_from(d.long_stretches).unwrap_or(u32::MAX);
    if d.long_stretches > 0 {
        let mut by: Vec<(u16, Option<StackId>, u64)> = Vec::new();
        kernel.long_blocked(tid, start, end, |sc, stack, ns| {
            match by.iter_mut().find(|e| e.0 == sc) {
                Some(e) => {
                    e.2 = e.2.saturating_add(ns);
                    if e.1.is_none() {
                        e.1 = stack;
                    }
                }
                None => by.push((sc, stack, ns)),
            }
        });
        if let Some(&(sc, stack, _)) = by.iter().max_by_key(|e| e.2) {
            p.syscall = Some(sc);
            p.stack = stack;
        }
    }
    p
}
