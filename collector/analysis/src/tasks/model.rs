//! The task half of the state model: each task (a span that [`identity`](super::identity)
//! recognises) moves through `scheduled` (spawned or woken, waiting for a worker), `polling`
//! (one enter/exit of its span, split by the worker thread's kernel state into on-CPU,
//! preempted and blocked), `idle` (returned Pending, waiting to be woken) and `done`.
//!
//! Span events arrive here in time order (see [`super::TaskAnalyzer`]). A span's creation may
//! arrive long after its polls (a thread holds its records while it sleeps), so spans whose
//! creation is not known yet are followed as possible tasks and decided when it arrives.

mod stats;
mod workers;

pub(crate) use stats::Stats;
use workers::{polled_at, Recent, Worker, RECENT_POLLS};

use super::evidence::LockWaker;
use super::hist::LogHist;
use super::identity::{self, TaskInfo};
use super::kernel::{Cum, Kernel};
use super::rows::Results;
use super::{
    Poll, Sink, StackId, TaskInterval, TaskKey, TaskPhase, WakeEdge, WakeSource, YieldSite,
};
use iotrace_wire::FieldValue;
use rustc_hash::{FxHashMap as FxMap, FxHashSet as FxSet};

/// Most closed spans kept while their creation record is still to come.
const MAX_ORPHANS: usize = 100_000;
/// Open non-task spans followed for span chains; past it, new ones are not.
const MAX_OPEN_SPANS: usize = 1 << 20;
/// Deepest span chain named.
const MAX_CHAIN: usize = 16;

/// A span event, reduced to what the task model needs.
#[derive(Debug)]
pub(crate) enum SpanEv {
    NewTask {
        span: u64,
        info: Box<TaskInfo>,
    },
    NewOther {
        span: u64,
        callsite: u64,
        parent: Option<u64>,
    },
    /// Created at a callsite whose definition had not arrived yet.
    NewUnresolved {
        span: u64,
        callsite: u64,
        parent: Option<u64>,
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
    /// A waker event that wakes `span`, on thread `tid`, at `stack` (`by_val`: the waker
    /// is used up).
    Wake {
        span: u64,
        tid: u32,
        stack: Option<StackId>,
        by_val: bool,
    },
    /// `waker.drop` of a waker of `span`.
    WakerDrop {
        span: u64,
    },
    /// `waker.clone` of `span`'s waker on thread `tid`, inside span `ctx`, at `stack`.
    Register {
        span: u64,
        tid: u32,
        ctx: Option<u64>,
        stack: Option<StackId>,
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
    /// The last waker stored in the current poll.
    poll_site: Option<YieldSite>,
    /// Where the current (or last) idle stretch waits.
    idle_site: YieldSite,
    /// Who began the current scheduled stretch, and on which thread.
    woken_by: Option<(WakeSource, u32)>,
    /// The task's label among holders (name and spawn place), once it has polled.
    pub label: Option<u32>,
    /// A blocking task counted in its spawn place's pool use while it polls.
    pool: bool,
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
            poll_site: None,
            idle_site: YieldSite::default(),
            woken_by: None,
            label: None,
            pool: false,
            stats: Stats::default(),
        }
    }
}

/// Where finished tasks and intervals go.
pub(crate) struct Out<'a> {
    pub sink: &'a mut dyn Sink,
    pub results: &'a mut Results,
}

/// An open span that is not a task.
struct OpenSpan {
    callsite: u64,
    parent: Option<u64>,
    /// Its span chain once made, and the task it was made for.
    chain: Option<(u64, Option<u32>)>,
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
    /// Threads in a poll now: tid → the tasks being polled, outermost first. tokio's worker
    /// threads run inside a blocking task of their own (`Launch::launch`) whose "poll" hosts
    /// every other poll: a thread in no poll but that one is outside any poll.
    polling: FxMap<u32, Vec<TaskKey>>,
    /// Tasks inside whose polls other tasks were polled (the runtime's worker loops).
    hosts: FxSet<TaskKey>,
    workers: FxMap<u32, Worker>,
    /// Open spans that are not tasks, for span chains.
    spans: FxMap<TaskKey, OpenSpan>,
    /// Span callsite names by (pid, callsite).
    pub(crate) callsite_names: FxMap<(u32, u64), String>,
    /// Span chains and holder labels.
    pub(crate) strings: Vec<String>,
    string_ids: FxMap<String, u32>,
    pub(crate) delay_threshold_ns: u64,
    pub(crate) diag: super::DiagnosisOptions,
    /// Processes whose waker drops (and so live wakers) are recorded, and those whose
    /// `waker.clone`s are.
    pub(crate) saw_drops: FxSet<u32>,
    pub(crate) saw_clones: FxSet<u32>,
    /// Blocking tasks running now and at most, by (pid, holder label of their spawn place).
    pub(crate) pool: FxMap<(u32, u32), (u64, u64)>,
}

impl Model {
    pub(crate) fn new(delay_threshold_ns: u64, diag: super::DiagnosisOptions) -> Self {
        Model {
            delay_threshold_ns,
            diag,
            ..Model::default()
        }
    }

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
                parent,
                fields,
            } => {
                let ev = match classes.get(&(pid, callsite)) {
                    Some(identity::Class::Task(cs)) => SpanEv::NewTask {
                        span,
                        info: Box::new(identity::task_info(cs, &fields)),
                    },
                    Some(_) | None => SpanEv::NewOther {
                        span,
                        callsite,
                        parent,
                    },
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
            SpanEv::NewOther {
                span,
                callsite,
                parent,
            } => {
                let key = TaskKey { pid, span };
                if self.orphans.remove(&key).is_none() && self.tasks.remove(&key).is_none() {
                    self.non_tasks.insert(key);
                    if self.spans.len() < MAX_OPEN_SPANS {
                        self.spans.insert(
                            key,
                            OpenSpan {
                                callsite,
                                parent,
                                chain: None,
                            },
                        );
                    }
                }
            }
            SpanEv::Enter { tid, span } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.contains(&key) || self.orphans.contains_key(&key) {
                    return;
                }
                // A long wait for a worker: what held the workers meanwhile.
                let held = match self.tasks.get(&key) {
                    Some(task)
                        if task.depth == 0
                            && task.info.as_ref().is_none_or(|i| i.kind != "blocking")
                            && task.phase == Phase::Scheduled
                            && t >= task.since
                            && t - task.since >= self.delay_threshold_ns
                            && self.delay_threshold_ns > 0 =>
                    {
                        Some(self.held(pid, task.since, t, kernel))
                    }
                    _ => None,
                };
                let task = self
                    .tasks
                    .entry(key)
                    .or_insert_with(|| Task::new(Phase::Unknown, t));
                task.depth += 1;
                if task.depth > 1 {
                    return;
                }
                if task.label.is_none() {
                    // Tasks spawned at one place (a handler per connection) are one holder.
                    task.label = task
                        .info
                        .as_deref()
                        .map(|i| label_of(&mut self.strings, &mut self.string_ids, i));
                }
                if let Some((_, _, _, behind)) = &held {
                    let victim = task.label.unwrap_or(u32::MAX);
                    for &(holder, ns) in behind {
                        if holder != key && victim != u32::MAX {
                            out.results.behind(holder, victim, ns);
                        }
                    }
                }
                let blocking = task.info.as_ref().is_some_and(|i| i.kind == "blocking");
                task.pool = blocking && task.label.is_some();
                if let (true, Some(label)) = (task.pool, task.label) {
                    let e = self.pool.entry((pid, label)).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(e.0);
                }
                let stack = self.polling.entry(tid).or_default();
                if let Some(&outer) = stack.last() {
                    self.hosts.insert(outer);
                }
                stack.push(key);
                let worker = self.workers.entry(tid).or_default();
                worker.pid = pid;
                // block_on's thread polls only its own future: not a worker tasks wait for.
                worker.runtime |= task
                    .info
                    .as_ref()
                    .is_some_and(|i| i.kind == "task" || i.kind == "local");
                worker.current = task.label.map(|l| (t, l));
                task.poll_tid = tid;
                task.poll_start = t;
                task.cum0 = kernel.cum_at(tid, t);
                task.woken_in_poll = false;
                task.poll_site = None;
                if let Some((holders, unheld, workers, _)) = held {
                    task.stats.delayed += 1;
                    if task.stats.ev.delay_at.len() < super::diagnosis::MAX_MOMENTS {
                        task.stats.ev.delay_at.push(task.since);
                    }
                    task.stats.delayed_ns = task.stats.delayed_ns.saturating_add(t - task.since);
                    task.stats.unheld_ns = task.stats.unheld_ns.saturating_add(unheld);
                    task.stats.workers_seen = task.stats.workers_seen.max(workers);
                    for (label, ns, blocked, long) in holders {
                        task.stats.add_holder(label, ns, blocked, long);
                    }
                }
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
                    if task.stats.polls == 0 && task.woken_by.is_none() {
                        task.stats.ev.first_wait.get_or_insert((task.since, d));
                    }
                    task.stats.sched.add(d);
                    self.sched.add(d);
                    if let Some((by, waker_tid)) = task.woken_by {
                        task.stats.add_waker(by);
                        out.sink.wake(&WakeEdge {
                            task: key,
                            woken: task.since,
                            polled: t,
                            waker_tid,
                            by,
                        });
                    }
                }
                set_phase(key, task, Phase::Polling, t, out.sink);
                task.woken_by = None;
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
                let long = p.measured && p.on_cpu_ns >= self.diag.long_poll_ns;
                if long {
                    let stacks = kernel.samples_within(tid, p.start, p.end);
                    task.stats.ev.long_poll(p.start, p.on_cpu_ns, &stacks);
                }
                // No voluntary off-CPU time in the poll: no futex wait either.
                if p.measured
                    && p.blocked_ns > 0
                    && task.info.as_ref().is_some_and(|i| i.kind != "blocking")
                {
                    let workers = &self.workers;
                    let ev = &mut task.stats.ev;
                    kernel.futex_waits(tid, p.start, p.end, |start, ns, stack, waker| {
                        let by = waker.filter(|w| !w.irq && w.tid != tid).map(|w| LockWaker {
                            tid: w.tid,
                            task: polled_at(workers, w.tid, w.time),
                        });
                        ev.futex_wait(start, ns, tid, stack, by);
                    });
                }
                if let (true, Some(label)) = (task.pool, task.label) {
                    if let Some(e) = self.pool.get_mut(&(pid, label)) {
                        e.0 = e.0.saturating_sub(1);
                    }
                }
                if let Some(stack) = self.polling.get_mut(&tid) {
                    if let Some(i) = stack.iter().rposition(|&k| k == key) {
                        stack.remove(i);
                    }
                    if stack.is_empty() {
                        self.polling.remove(&tid);
                    }
                }
                if task.label.is_none() {
                    task.label = task
                        .info
                        .as_deref()
                        .map(|i| label_of(&mut self.strings, &mut self.string_ids, i));
                }
                if let Some(w) = self.workers.get_mut(&tid) {
                    if w.recent.len() >= RECENT_POLLS {
                        w.recent.pop_front();
                    }
                    w.recent.push_back(Recent {
                        start: task.poll_start,
                        end: t,
                        label: task.label.unwrap_or(u32::MAX),
                        task: key,
                        long,
                    });
                    w.last = Some((key, t));
                    w.current = None;
                }
                if task.phase != Phase::Polling || t < task.since {
                    self.late += 1;
                    return;
                }
                task.phase = if task.woken_in_poll {
                    Phase::Scheduled
                } else {
                    // No waker stored in this poll: the one stored before still stands.
                    if let Some(site) = task.poll_site.take() {
                        task.idle_site = site;
                    }
                    // Only a tokio task's wakers are counted (its waker events); whether the
                    // program's layer recorded their drops is known at the end.
                    let tokio_task = task
                        .info
                        .as_ref()
                        .is_some_and(|i| i.tokio && (i.kind == "task" || i.kind == "local"));
                    task.stats.ev.pending(t, tokio_task);
                    Phase::Idle
                };
                task.since = t;
            }
            SpanEv::Register {
                span,
                tid,
                ctx,
                stack,
            } => {
                let key = TaskKey { pid, span };
                self.saw_clones.insert(pid);
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.stats.ev.wakers += 1;
                    task.stats.ev.clones += 1;
                }
                let polled_here = self
                    .tasks
                    .get(&key)
                    .is_some_and(|task| task.phase == Phase::Polling && task.poll_tid == tid);
                if !polled_here {
                    return;
                }
                let spans = self.chain(pid, span, ctx);
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.poll_site = Some(YieldSite { stack, spans });
                }
            }
            SpanEv::WakerDrop { span } => {
                self.saw_drops.insert(pid);
                if let Some(task) = self.tasks.get_mut(&TaskKey { pid, span }) {
                    task.stats.ev.wakers -= 1;
                }
            }
            SpanEv::Wake {
                span,
                tid,
                stack,
                by_val,
            } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.contains(&key) || self.orphans.contains_key(&key) {
                    return;
                }
                // The waker task's last idle stretch, for a lock held across an await.
                let waker_task = self.in_poll(tid);
                let holder_idle = waker_task
                    .filter(|&k| k != key)
                    .and_then(|k| self.tasks.get(&k))
                    .and_then(|h| h.stats.ev.last_idle);
                let by = match (self.in_poll(tid), self.workers.get(&tid)) {
                    (Some(y), _) => WakeSource::Task(y),
                    (None, Some(w)) => WakeSource::Driver {
                        tid,
                        stack,
                        // A task's harness wakes its JoinHandle right after its last poll.
                        after: w
                            .last
                            .filter(|&(_, end)| t.saturating_sub(end) < HARNESS_SLACK_NS)
                            .map(|(k, _)| k),
                    },
                    (None, None) => WakeSource::Thread { tid, stack },
                };
                let task = self
                    .tasks
                    .entry(key)
                    .or_insert_with(|| Task::new(Phase::Unknown, t));
                task.woken = true;
                task.stats.wakes += 1;
                if by_val {
                    task.stats.ev.wakers -= 1;
                }
                task.stats.ev.woken();
                if waker_task == Some(key) && task.phase == Phase::Polling {
                    task.stats.ev.self_wake(t, stack);
                }
                if let (Some(holder), Phase::Idle) = (waker_task, task.phase) {
                    if holder != key && t >= task.since {
                        task.stats.ev.woken_by_task(
                            task.since,
                            t,
                            task.idle_site.stack,
                            holder,
                            holder_idle,
                            self.diag.held_share,
                        );
                    }
                }
                match task.phase {
                    Phase::Polling => {
                        task.woken_in_poll = true;
                        task.woken_by.get_or_insert((by, tid));
                    }
                    Phase::Idle | Phase::Unknown if t >= task.since => {
                        set_phase(key, task, Phase::Scheduled, t, out.sink);
                        task.woken_by = Some((by, tid));
                    }
                    _ => {}
                }
            }
            SpanEv::Close { span } => {
                let key = TaskKey { pid, span };
                if self.non_tasks.remove(&key) {
                    self.spans.remove(&key);
                    return;
                }
                let Some(mut task) = self.tasks.remove(&key) else {
                    return;
                };
                self.hosts.remove(&key);
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

/// A wake this soon after a thread's last poll, outside any poll, may be that task's harness
/// (a finished task waking its JoinHandle).
const HARNESS_SLACK_NS: u64 = 1_000_000;

/// A task's label among holders: the tasks spawned at one place are one.
fn label_of(strings: &mut Vec<String>, ids: &mut FxMap<String, u32>, info: &TaskInfo) -> u32 {
    let label = match &info.location {
        Some(loc) => format!("tasks spawned at {loc}"),
        None => format!("`{}`", info.name),
    };
    intern(strings, ids, label)
}

fn intern(strings: &mut Vec<String>, ids: &mut FxMap<String, u32>, s: String) -> u32 {
    if let Some(&id) = ids.get(&s) {
        return id;
    }
    let id = strings.len() as u32;
    strings.push(s.clone());
    ids.insert(s, id);
    id
}

impl Model {
    /// The task thread `tid` is polling now, unless that is only a worker loop's host task.
    fn in_poll(&self, tid: u32) -> Option<TaskKey> {
        let &key = self.polling.get(&tid)?.last()?;
        (!self.hosts.contains(&key)).then_some(key)
    }

    /// The spans entered below task `task`'s own at a moment whose innermost span is `ctx`,
    /// outermost first, as an interned chain (`None`: no span of the user's).
    /// The span chain from inside task `task` out to it, from span `ctx` (made once per
    /// open span: a task storing its waker many times in one span joins the names once).
    fn chain(&mut self, pid: u32, task: u64, ctx: Option<u64>) -> Option<u32> {
        let ctx_key = TaskKey { pid, span: ctx? };
        if let Some((t, chain)) = self.spans.get(&ctx_key).and_then(|s| s.chain) {
            if t == task {
                return chain;
            }
        }
        let chain = self.make_chain(pid, task, ctx);
        if let Some(s) = self.spans.get_mut(&ctx_key) {
            s.chain = Some((task, chain));
        }
        chain
    }

    fn make_chain(&mut self, pid: u32, task: u64, ctx: Option<u64>) -> Option<u32> {
        let mut names: Vec<&str> = Vec::new();
        let mut cur = ctx;
        while let Some(span) = cur {
            if span == task || names.len() >= MAX_CHAIN {
                break;
            }
            let Some(&OpenSpan {
                callsite, parent, ..
            }) = self.spans.get(&TaskKey { pid, span })
            else {
                break;
            };
            names.push(
                self.callsite_names
                    .get(&(pid, callsite))
                    .map_or("?", String::as_str),
            );
            cur = parent;
        }
        if names.is_empty() {
            return None;
        }
        names.reverse();
        let chain = names.join(" > ");
        Some(intern(&mut self.strings, &mut self.string_ids, chain))
    }
}

/// Ends the current scheduled/idle stretch at `t` (emitting it) and starts `phase`.
fn set_phase(key: TaskKey, task: &mut Task, phase: Phase, t: u64, sink: &mut dyn Sink) {
    let d = t.saturating_sub(task.since);
    let emitted = match task.phase {
        Phase::Scheduled => {
            task.stats.scheduled_ns = task.stats.scheduled_ns.saturating_add(d);
            Some(TaskPhase::Scheduled(task.woken_by.map(|w| w.0)))
        }
        Phase::Idle => {
            task.stats.idle_ns = task.stats.idle_ns.saturating_add(d);
            task.stats.add_idle(task.idle_site, d);
            task.stats.ev.idle_ends(task.since, t, task.idle_site.stack);
            Some(TaskPhase::Idle(task.idle_site))
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
