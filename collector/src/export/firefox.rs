//! `iotrace export --format firefox`: the trace in the Firefox Profiler's processed format
//! (profiler.firefox.com, "Load a profile from file"), written with samply's
//! `fxprof-processed-profile`.
//!
//! - One process per traced process and one thread per traced thread, named as in the report.
//! - Samples: every on-CPU sample (its CPU delta is the sampling period), and for every
//!   off-CPU stretch, samples with the stack the thread slept in and no CPU, weighted by the
//!   sampling intervals it slept through (fractions carried per thread). The call tree thus
//!   weighs wall time, and the CPU graph shows when the thread ran. Frames are named as in the
//!   flamegraphs (the same fold and symbolizer).
//! - Markers: `blocked` stretches (switched out voluntarily for at least the blocked
//!   threshold, with their syscall), `poll` / `poll (blocked)` for each poll of a task on its
//!   worker thread (with the task's name, location, on-CPU and blocked time), and each stretch
//!   a span was entered on a thread (named by the span; task spans are shown as polls).
//!
//! Two passes over the trace: the first collects the distinct stacks and names their frames
//! (as the flamegraphs do), the second adds samples and markers to the profile as they come.
//! Only the profile itself, which is the output, grows with the trace.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use fxprof_processed_profile::{
    CategoryColor, CategoryHandle, CpuDelta, FrameFlags, FrameInfo, MarkerFieldFlags,
    MarkerFieldFormat, MarkerTiming, ProcessHandle, Profile, ReferenceTimestamp, SamplingInterval,
    StackHandle, StaticSchemaMarker, StaticSchemaMarkerField, StringHandle, ThreadHandle,
    Timestamp,
};

use super::common::{absolute, no_samples, window, Counting, ExportError, FormatOutcome};
use crate::analysis::{syscall_name, Summarizer, INSTRUMENTATION_THREAD};
use crate::flamegraph::{native_frames, need_frames, stack_pass, thread_name, NamedFrame};
use crate::format::{Record, Switch, TraceReader};
use crate::intake::{CallsiteKind, SpanBatch, SpanEvent};
use crate::stacks::{Need, StackFold, StackItem};
use crate::symbolize::{self, Symbols};
use crate::tasks::identity::{self, Class};
use crate::tasks::{Sink, TaskInterval, TaskKey, TaskPhase, ThreadInterval, ThreadState};
use crate::timeline::TimelineOptions;

struct BlockedMarker {
    name: StringHandle,
    category: CategoryHandle,
    syscall: StringHandle,
}

impl StaticSchemaMarker for BlockedMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-blocked";
    const DESCRIPTION: Option<&'static str> =
        Some("The thread was switched out voluntarily (off CPU), in this syscall");
    const CHART_LABEL: Option<&'static str> = Some("{marker.data.syscall}");
    const TABLE_LABEL: Option<&'static str> = Some("blocked in {marker.data.syscall}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[StaticSchemaMarkerField {
        key: "syscall",
        label: "Syscall",
        format: MarkerFieldFormat::String,
        flags: MarkerFieldFlags::SEARCHABLE,
    }];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, _: u32) -> StringHandle {
        self.syscall
    }
    fn number_field_value(&self, _: u32) -> f64 {
        0.0
    }
}

#[derive(Clone, Copy)]
struct PollMarker {
    name: StringHandle,
    category: CategoryHandle,
    task: StringHandle,
    location: StringHandle,
    on_cpu_ms: f64,
    blocked_ms: f64,
}

impl StaticSchemaMarker for PollMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-poll";
    const DESCRIPTION: Option<&'static str> = Some(
        "A poll of an async task on this worker thread; `poll (blocked)` when it blocked the thread",
    );
    const CHART_LABEL: Option<&'static str> = Some("{marker.data.task}");
    const TABLE_LABEL: Option<&'static str> = Some("{marker.name} {marker.data.task}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[
        StaticSchemaMarkerField {
            key: "task",
            label: "Task",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "location",
            label: "Spawned at",
            format: MarkerFieldFormat::String,
            flags: MarkerFieldFlags::SEARCHABLE,
        },
        StaticSchemaMarkerField {
            key: "onCpu",
            label: "On CPU",
            format: MarkerFieldFormat::Milliseconds,
            flags: MarkerFieldFlags::empty(),
        },
        StaticSchemaMarkerField {
            key: "blocked",
            label: "Blocked (off CPU)",
            format: MarkerFieldFormat::Milliseconds,
            flags: MarkerFieldFlags::empty(),
        },
    ];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, i: u32) -> StringHandle {
        if i == 0 {
            self.task
        } else {
            self.location
        }
    }
    fn number_field_value(&self, i: u32) -> f64 {
        if i == 2 {
            self.on_cpu_ms
        } else {
            self.blocked_ms
        }
    }
}

struct SpanMarker {
    name: StringHandle,
    category: CategoryHandle,
    target: StringHandle,
}

impl StaticSchemaMarker for SpanMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "iotrace-span";
    const DESCRIPTION: Option<&'static str> =
        Some("A tracing span entered on this thread (from the program's iotrace layer)");
    const CHART_LABEL: Option<&'static str> = Some("{marker.name}");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[StaticSchemaMarkerField {
        key: "target",
        label: "Target",
        format: MarkerFieldFormat::String,
        flags: MarkerFieldFlags::SEARCHABLE,
    }];

    fn name(&self, _: &mut Profile) -> StringHandle {
        self.name
    }
    fn category(&self, _: &mut Profile) -> CategoryHandle {
        self.category
    }
    fn string_field_value(&self, _: u32) -> StringHandle {
        self.target
    }
    fn number_field_value(&self, _: u32) -> f64 {
        0.0
    }
}

/// A poll whose task was not named yet: (worker tid, start, end, marker without names).
type PendingPoll = (u32, u64, u64, PollMarker);

/// A stretch on a thread: (tid, start, end).
type Stretch = (u32, u64, u64);

/// The second pass: samples and markers into the profile.
struct Builder<'a> {
    profile: Profile,
    /// The first pass's fold, for thread names and frame names.
    names: &'a StackFold,
    symbols: &'a Symbols,
    start_ns: u64,
    window: (u64, u64),
    period_ns: u64,
    blocked_min_ns: u64,
    processes: HashMap<u32, ProcessHandle>,
    threads: HashMap<u32, Option<ThreadHandle>>,
    stacks: HashMap<(u32, u32), Option<StackHandle>>,
    /// Off-CPU ns not yet a whole sampling interval, per thread.
    carry: HashMap<u32, u64>,
    frames: Vec<NamedFrame<'a>>,
    other: CategoryHandle,
    kernel: CategoryHandle,
    blocked: CategoryHandle,
    task_category: CategoryHandle,
    span_category: CategoryHandle,
    /// Task names and locations, from their spans' creation.
    tasks: HashMap<TaskKey, (StringHandle, StringHandle)>,
    pending_polls: HashMap<TaskKey, Vec<PendingPoll>>,
    /// Span callsites: (pid, callsite) → (name, target), `None` for task callsites.
    callsites: HashMap<(u32, u64), Option<(StringHandle, StringHandle)>>,
    /// Open spans' names.
    spans: HashMap<(u32, u64), Option<(StringHandle, StringHandle)>>,
    entered: HashMap<(u32, u32, u64), u64>,
    /// Span stretches whose span's creation was not seen yet.
    pending_spans: HashMap<(u32, u64), Vec<Stretch>>,
    samples: u64,
    own_left_out: u64,
}

impl<'a> Builder<'a> {
    fn ts(&self, t: u64) -> Timestamp {
        Timestamp::from_nanos_since_reference(t.saturating_sub(self.start_ns))
    }

    fn clip(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let (s, e) = (start.max(self.window.0), end.min(self.window.1));
        (e > s).then_some((s, e))
    }

    /// The profile's thread for `tid`, made on first use (`None` for iotrace's own thread).
    fn thread(&mut self, tid: u32, pid_hint: u32) -> Option<ThreadHandle> {
        if let Some(&t) = self.threads.get(&tid) {
            return t;
        }
        let (pid, name) = match self.names.threads.get(tid) {
            Some((pid, name)) => (pid, self.names.strings.get(name).to_owned()),
            None => (pid_hint, String::new()),
        };
        let handle = if name == INSTRUMENTATION_THREAD {
            None
        } else {
            let process = match self.processes.get(&pid) {
                Some(&p) => p,
                None => {
                    let pname = self
                        .names
                        .threads
                        .get(pid)
                        .map(|(_, n)| self.names.strings.get(n).to_owned())
                        .unwrap_or_else(|| format!("pid {pid}"));
                    let p = self
                        .profile
                        .add_process(&pname, pid, self.ts(self.start_ns));
                    self.processes.insert(pid, p);
                    p
                }
            };
            let t = self
                .profile
                .add_thread(process, tid, self.ts(self.start_ns), tid == pid);
            let shown = if name.is_empty() {
                format!("tid {tid}")
            } else {
                name
            };
            self.profile.set_thread_name(t, &shown);
            Some(t)
        };
        self.threads.insert(tid, handle);
        handle
    }

    fn stack(&mut self, thread: ThreadHandle, tid: u32, stack: u32) -> Option<StackHandle> {
        if let Some(&s) = self.stacks.get(&(tid, stack)) {
            return s;
        }
        native_frames(self.names, self.symbols, stack, None, &mut self.frames);
        let mut parent = None;
        for f in &self.frames {
            let category = if f.kernel { self.kernel } else { self.other };
            let name = self.profile.intern_string(f.name);
            let frame = self.profile.intern_frame(
                thread,
                FrameInfo {
                    frame: fxprof_processed_profile::Frame::Label(name),
                    category_pair: category.into(),
                    flags: FrameFlags::empty(),
                },
            );
            parent = Some(self.profile.intern_stack(thread, parent, frame));
        }
        self.stacks.insert((tid, stack), parent);
        parent
    }

    fn item(&mut self, fold: &StackFold, item: StackItem) {
        let pid = fold.threads.get(item.tid).map_or(0, |t| t.0);
        let Some(thread) = self.thread(item.tid, pid) else {
            self.own_left_out += 1;
            return;
        };
        match item.off_cpu {
            None => {
                if item.time_ns < self.window.0 || item.time_ns >= self.window.1 {
                    return;
                }
                let stack = self.stack(thread, item.tid, item.stack);
                let ts = self.ts(item.time_ns);
                self.profile
                    .add_sample(thread, ts, stack, CpuDelta::from_nanos(self.period_ns), 1);
                self.samples += 1;
            }
            Some(off) => {
                let end = item.time_ns.saturating_add(off.duration_ns);
                let Some((start, end)) = self.clip(item.time_ns, end) else {
                    return;
                };
                let carry = self.carry.entry(item.tid).or_insert(0);
                let total = *carry + (end - start);
                let weight = total / self.period_ns;
                *carry = total % self.period_ns;
                if weight == 0 {
                    return;
                }
                let stack = self.stack(thread, item.tid, item.stack);
                let ts = self.ts(start);
                let weight = i32::try_from(weight).unwrap_or(i32::MAX);
                self.profile
                    .add_sample(thread, ts, stack, CpuDelta::ZERO, weight);
                self.samples += 1;
            }
        }
    }

    fn span_batch(&mut self, batch: &SpanBatch) {
        let pid = batch.pid;
        for event in &batch.events {
            match event {
                SpanEvent::Callsite(c) if c.kind == CallsiteKind::Span => {
                    let names = match identity::classify(c) {
                        Class::Task(_) => None,
                        _ => Some((
                            self.profile.intern_string(&c.name),
                            self.profile.intern_string(&c.target),
                        )),
                    };
                    self.callsites.insert((pid, c.id), names);
                }
                SpanEvent::NewSpan { span, callsite, .. } => {
                    let names = self.callsites.get(&(pid, *callsite)).copied();
                    match names {
                        Some(Some(n)) => {
                            self.spans.insert((pid, *span), Some(n));
                            for (tid, s, e) in
                                self.pending_spans.remove(&(pid, *span)).unwrap_or_default()
                            {
                                self.span_marker(tid, s, e, n);
                            }
                        }
                        Some(None) => {
                            self.spans.insert((pid, *span), None);
                            self.pending_spans.remove(&(pid, *span));
                        }
                        None => {}
                    }
                }
                SpanEvent::Enter { time, span } => {
                    self.entered.insert((pid, batch.tid, *span), *time);
                }
                SpanEvent::Exit { time, span } => {
                    let Some(start) = self.entered.remove(&(pid, batch.tid, *span)) else {
                        continue;
                    };
                    match self.spans.get(&(pid, *span)) {
                        Some(Some(n)) => {
                            let n = *n;
                            self.span_marker(batch.tid, start, *time, n);
                        }
                        Some(None) => {}
                        None => self
                            .pending_spans
                            .entry((pid, *span))
                            .or_default()
                            .push((batch.tid, start, *time)),
                    }
                }
                SpanEvent::Close { span, .. } => {
                    self.spans.remove(&(pid, *span));
                }
                _ => {}
            }
        }
    }

    fn span_marker(&mut self, tid: u32, start: u64, end: u64, names: (StringHandle, StringHandle)) {
        let Some((s, e)) = self.clip(start, end) else {
            return;
        };
        let Some(thread) = self.thread(tid, 0) else {
            return;
        };
        let timing = MarkerTiming::Interval(self.ts(s), self.ts(e));
        let marker = SpanMarker {
            name: names.0,
            category: self.span_category,
            target: names.1,
        };
        self.profile.add_marker(thread, timing, marker);
    }

    fn poll_marker(&mut self, tid: u32, start: u64, end: u64, m: PollMarker) {
        let Some(thread) = self.thread(tid, 0) else {
            return;
        };
        let timing = MarkerTiming::Interval(self.ts(start), self.ts(end));
        self.profile.add_marker(thread, timing, m);
    }
}

/// The analysis's intervals, as markers.
struct Markers<'b, 'a> {
    b: &'b mut Builder<'a>,
}

impl Sink for Markers<'_, '_> {
    fn thread_interval(&mut self, iv: &ThreadInterval) {
        let ThreadState::Blocked { syscall, .. } = iv.state else {
            return;
        };
        let b = &mut *self.b;
        if iv.end.saturating_sub(iv.start) < b.blocked_min_ns {
            return;
        }
        let Some((s, e)) = b.clip(iv.start, iv.end) else {
            return;
        };
        let Some(thread) = b.thread(iv.tid, iv.pid) else {
            return;
        };
        let sc = if syscall == Switch::NO_SYSCALL {
            "unknown".to_owned()
        } else {
            syscall_name(syscall)
        };
        let marker = BlockedMarker {
            name: b.profile.intern_string("blocked"),
            category: b.blocked,
            syscall: b.profile.intern_string(&sc),
        };
        let timing = MarkerTiming::Interval(b.ts(s), b.ts(e));
        b.profile.add_marker(thread, timing, marker);
    }

    fn task_interval(&mut self, iv: &TaskInterval) {
        let TaskPhase::Poll(p) = iv.phase else {
            return;
        };
        let b = &mut *self.b;
        let Some((s, e)) = b.clip(iv.start, iv.end) else {
            return;
        };
        let name = if p.stretches > 0 {
            "poll (blocked)"
        } else {
            "poll"
        };
        let empty = b.profile.intern_string("");
        let mut m = PollMarker {
            name: b.profile.intern_string(name),
            category: b.task_category,
            task: empty,
            location: empty,
            on_cpu_ms: p.on_cpu_ns as f64 / 1e6,
            blocked_ms: p.blocked_ns as f64 / 1e6,
        };
        match b.tasks.get(&iv.task) {
            Some(&(task, location)) => {
                m.task = task;
                m.location = location;
                b.poll_marker(p.tid, s, e, m);
            }
            None => b
                .pending_polls
                .entry(iv.task)
                .or_default()
                .push((p.tid, s, e, m)),
        }
    }
}

/// Reads `trace` and writes its Firefox Profiler profile to `out`.
pub fn export(
    trace: &Path,
    out: &Path,
    opts: &TimelineOptions,
) -> Result<FormatOutcome, ExportError> {
    let rel = window(opts)?;
    let need = Need {
        on_cpu: true,
        off_cpu: true,
        contexts: false,
    };
    // First pass: the distinct stacks, named once each.
    let mut stacks: HashSet<u32> = HashSet::new();
    let mut own = 0;
    let mut pass = stack_pass(trace, need, &mut |fold, item| {
        let name = thread_name(fold, item.tid);
        if fold.strings.get(name) == INSTRUMENTATION_THREAD {
            own += 1;
        } else {
            stacks.insert(item.stack);
        }
    })?;
    if stacks.is_empty() {
        return Err(ExportError::Empty(no_samples(trace, &pass.fold, own)));
    }
    let mut frames = HashSet::new();
    for &s in &stacks {
        need_frames(&pass.fold.stacks, s, &mut frames);
    }
    drop(stacks);
    let (symbols, _) = symbolize::symbolize(&mut pass.fold, frames, pass.kernel.as_ref());
    let period_ns = 1_000_000_000 / pass.fold.frequency_hz.max(1);
    let start_unix = Duration::from_nanos(pass.start_unix_ns);
    let mut profile = Profile::new(
        &pass.command,
        ReferenceTimestamp::from_duration_since_unix_epoch(start_unix),
        SamplingInterval::from_nanos(period_ns),
    );
    profile.set_product(&format!("iotrace: {}", pass.command));
    profile.set_os_name("Linux");
    profile.set_symbolicated(true);
    let kernel = profile.add_category("Kernel", CategoryColor::Orange);
    let blocked = profile.add_category("Blocked", CategoryColor::Red);
    let task_category = profile.add_category("Task", CategoryColor::Blue);
    let span_category = profile.add_category("Span", CategoryColor::Green);
    let other = profile.add_category("User", CategoryColor::Yellow);
    let start_ns = pass.fold.start_ns;
    let mut b = Builder {
        profile,
        names: &pass.fold,
        symbols: &symbols,
        start_ns,
        window: absolute(start_ns, rel),
        period_ns: period_ns.max(1),
        blocked_min_ns: opts.tasks.blocked_threshold_ns,
        processes: HashMap::new(),
        threads: HashMap::new(),
        stacks: HashMap::new(),
        carry: HashMap::new(),
        frames: Vec::new(),
        other,
        kernel,
        blocked,
        task_category,
        span_category,
        tasks: HashMap::new(),
        pending_polls: HashMap::new(),
        callsites: HashMap::new(),
        spans: HashMap::new(),
        entered: HashMap::new(),
        pending_spans: HashMap::new(),
        samples: 0,
        own_left_out: 0,
    };

    // Second pass: samples, markers.
    let mut reader = TraceReader::open(trace)?;
    let mut fold = StackFold::with(need);
    let mut summarizer = Summarizer::with_options(opts.tasks.clone());
    let mut task_callsites: HashMap<(u32, u64), Class> = HashMap::new();
    for record in reader.by_ref() {
        if let Record::Spans(batch) = &record {
            for e in &batch.events {
                if let SpanEvent::Callsite(c) = e {
                    if let c2 @ Class::Task(_) = identity::classify(c) {
                        task_callsites.insert((batch.pid, c.id), c2);
                    }
                }
            }
            b.span_batch(batch);
            name_tasks(&mut b, batch, &task_callsites);
        }
        fold.add(&record, &mut |f, item| b.item(f, item));
        summarizer.add_to(&record, &mut Markers { b: &mut b });
    }
    fold.finish(&mut |f, item| b.item(f, item));
    let stop = reader.stop().map(|s| s.to_string());
    let summary = summarizer.finish_to(stop.clone(), &mut Markers { b: &mut b });
    // Polls of tasks whose span's creation never came: named from the report, when it has
    // them as tasks.
    let pending = std::mem::take(&mut b.pending_polls);
    for row in &summary.tasks {
        let key = TaskKey {
            pid: row.pid,
            span: row.id,
        };
        if let Some(polls) = pending.get(&key) {
            let task = b.profile.intern_string(&row.name);
            let location = b
                .profile
                .intern_string(row.location.as_deref().unwrap_or(""));
            for &(tid, s, e, mut m) in polls {
                m.task = task;
                m.location = location;
                b.poll_marker(tid, s, e, m);
            }
        }
    }
    let samples = b.samples;
    let own_left_out = b.own_left_out;
    let profile = b.profile;

    let write_err = |error| ExportError::Write {
        path: out.to_owned(),
        error,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut w = Counting {
        w: io::BufWriter::new(file),
        bytes: 0,
    };
    serde_json::to_writer(&mut w, &profile).map_err(|e| write_err(io::Error::other(e)))?;
    w.flush().map_err(write_err)?;
    Ok(FormatOutcome {
        items: samples,
        bytes: w.bytes,
        truncated: stop,
        notes: (own_left_out > 0)
            .then(|| {
                format!(
                    "{own_left_out} stacks of iotrace's own thread (iotrace-flush) are not in it"
                )
            })
            .into_iter()
            .collect(),
    })
}

/// Names the tasks a batch creates (tasks are spans of task callsites).
fn name_tasks(b: &mut Builder, batch: &SpanBatch, task_callsites: &HashMap<(u32, u64), Class>) {
    for e in &batch.events {
        let SpanEvent::NewSpan {
            span,
            callsite,
            fields,
            ..
        } = e
        else {
            continue;
        };
        let Some(Class::Task(cs)) = task_callsites.get(&(batch.pid, *callsite)) else {
            continue;
        };
        let key = TaskKey {
            pid: batch.pid,
            span: *span,
        };
        let info = identity::task_info(cs, fields);
        let name = b.profile.intern_string(&info.name);
        let location = b
            .profile
            .intern_string(info.location.as_deref().unwrap_or(""));
        b.tasks.insert(key, (name, location));
        for (tid, s, e, mut m) in b.pending_polls.remove(&key).unwrap_or_default() {
            m.task = name;
            m.location = location;
            b.poll_marker(tid, s, e, m);
        }
    }
}
