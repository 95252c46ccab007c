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
//!   a span was entered on a thread (named by the span; task spans are shown as polls); and
//!   each moment of a diagnosis, an instant named after its kind ([`markers`]).
//!
//! Two passes over the trace: the first collects the distinct stacks and names their frames
//! (as the flamegraphs do), the second adds samples and markers to the profile as they come.
//! Only the profile itself, which is the output, grows with the trace.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fxprof_processed_profile::{
    CategoryColor, CategoryHandle, CpuDelta, FrameFlags, FrameInfo, MarkerTiming, ProcessHandle,
    Profile, ReferenceTimestamp, SamplingInterval, StackHandle, StringHandle, ThreadHandle,
    Timestamp,
};

mod markers;

use markers::{BlockedMarker, PollMarker, SpanMarker};

use super::common::{absolute, no_samples, window, Counting, ExportError, FormatOutcome};
use crate::flamegraph::{native_frames, need_frames, stack_pass, thread_name, NamedFrame};
use iotrace_analysis::intervals::store::Store;
use iotrace_analysis::intervals::TimelineOptions;
use iotrace_analysis::stacks::{Need, StackFold, StackItem};
use iotrace_analysis::summary::{syscall_name, Summarizer, INSTRUMENTATION_THREAD};
use iotrace_analysis::symbolize::{self, Symbols};
use iotrace_analysis::tasks::identity::{self, Class};
use iotrace_analysis::tasks::{
    Sink, TaskInterval, TaskKey, TaskPhase, ThreadInterval, ThreadState,
};
use iotrace_trace::{Record, Switch, TraceReader};
use iotrace_wire::{CallsiteKind, SpanBatch, SpanEvent};

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
    markers: MarkerBuffer,
}

/// A marker's kind and fields, as kept until the pass ends.
#[derive(Clone, Copy)]
enum Pending {
    Blocked {
        syscall: StringHandle,
    },
    Poll(PollMarker),
    Span {
        name: StringHandle,
        target: StringHandle,
    },
}

/// The markers of the pass, held compactly (varints in the timeline's spillable store, with a
/// count per power-of-two duration) until it ends; then only the longest `max` go into the
/// profile, which is built in memory and would otherwise grow with every poll and span of the
/// recording.
struct MarkerBuffer {
    store: Store,
    tracks: HashMap<ThreadHandle, usize>,
    threads: Vec<ThreadHandle>,
    strings: Vec<StringHandle>,
    string_ids: HashMap<StringHandle, u64>,
    /// Markers by floor(log2(duration in ns)).
    by_log2: [u64; 65],
    max: usize,
}

impl MarkerBuffer {
    fn new(max: usize) -> Self {
        MarkerBuffer {
            store: Store::default(),
            tracks: HashMap::new(),
            threads: Vec::new(),
            strings: Vec::new(),
            string_ids: HashMap::new(),
            by_log2: [0; 65],
            max,
        }
    }

    fn string(&mut self, h: StringHandle) -> u64 {
        *self.string_ids.entry(h).or_insert_with(|| {
            self.strings.push(h);
            self.strings.len() as u64 - 1
        })
    }

    fn push(&mut self, thread: ThreadHandle, start: u64, end: u64, m: Pending) {
        let track = match self.tracks.get(&thread) {
            Some(&t) => t,
            None => {
                let t = self.store.track();
                self.tracks.insert(thread, t);
                self.threads.push(thread);
                t
            }
        };
        let dur = end.saturating_sub(start);
        self.by_log2[log2_bucket(dur)] += 1;
        let ids: [u64; 3] = match m {
            Pending::Blocked { syscall } => [self.string(syscall), 0, 0],
            Pending::Poll(p) => [
                self.string(p.name),
                self.string(p.task),
                self.string(p.location),
            ],
            Pending::Span { name, target } => [self.string(name), self.string(target), 0],
        };
        self.store.push(track, start, end, |enc| match m {
            Pending::Blocked { .. } => {
                enc.byte(0);
                enc.uint(ids[0]);
            }
            Pending::Poll(p) => {
                enc.byte(1);
                for id in ids {
                    enc.uint(id);
                }
                enc.uint((p.on_cpu_ms * 1e6) as u64);
                enc.uint((p.blocked_ms * 1e6) as u64);
            }
            Pending::Span { .. } => {
                enc.byte(2);
                enc.uint(ids[0]);
                enc.uint(ids[1]);
            }
        });
    }

    /// The shortest duration bucket kept so that at most `max` markers are: markers of
    /// `bucket ≥` it go in. Returns (bucket, markers left out).
    fn cut(&self) -> (usize, u64) {
        let mut kept = 0u64;
        for b in (0..self.by_log2.len()).rev() {
            if kept + self.by_log2[b] > self.max as u64 {
                let out: u64 = self.by_log2[..=b].iter().sum();
                return (b + 1, out);
            }
            kept += self.by_log2[b];
        }
        (0, 0)
    }
}

fn log2_bucket(ns: u64) -> usize {
    if ns == 0 {
        0
    } else {
        64 - ns.leading_zeros() as usize
    }
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
        let m = Pending::Span {
            name: names.0,
            target: names.1,
        };
        self.markers.push(thread, s, e, m);
    }

    fn poll_marker(&mut self, tid: u32, start: u64, end: u64, m: PollMarker) {
        let Some(thread) = self.thread(tid, 0) else {
            return;
        };
        self.markers.push(thread, start, end, Pending::Poll(m));
    }

    /// The longest buffered markers into the profile; returns those left out and the shortest
    /// duration kept (ns).
    fn add_markers(&mut self) -> Result<(u64, u64), io::Error> {
        let (cut, left_out) = self.markers.cut();
        let min_ns = match cut {
            0 => 0,
            c => 1u64.checked_shl(c as u32 - 1).unwrap_or(u64::MAX),
        };
        let blocked_name = self.profile.intern_string("blocked");
        for i in 0..self.markers.threads.len() {
            let thread = self.markers.threads[i];
            let track = self.markers.tracks[&thread];
            let (mut dec, _) = self.markers.store.read(track)?;
            while let Some((start, end)) = dec.next_stretch() {
                let kind = dec.byte();
                let mut id = || {
                    let i = dec.uint() as usize;
                    self.markers.strings.get(i).copied()
                };
                let pending = match kind {
                    0 => id().map(|syscall| Pending::Blocked { syscall }),
                    1 => match (id(), id(), id()) {
                        (Some(name), Some(task), Some(location)) => {
                            let on_cpu_ms = dec.uint() as f64 / 1e6;
                            let blocked_ms = dec.uint() as f64 / 1e6;
                            Some(Pending::Poll(PollMarker {
                                name,
                                category: self.task_category,
                                task,
                                location,
                                on_cpu_ms,
                                blocked_ms,
                            }))
                        }
                        _ => None,
                    },
                    _ => match (id(), id()) {
                        (Some(name), Some(target)) => Some(Pending::Span { name, target }),
                        _ => None,
                    },
                };
                let Some(pending) = pending else {
                    break;
                };
                if log2_bucket(end.saturating_sub(start)) < cut {
                    continue;
                }
                let timing = MarkerTiming::Interval(self.ts(start), self.ts(end));
                match pending {
                    Pending::Blocked { syscall } => {
                        let m = BlockedMarker {
                            name: blocked_name,
                            category: self.blocked,
                            syscall,
                        };
                        self.profile.add_marker(thread, timing, m);
                    }
                    Pending::Poll(m) => {
                        self.profile.add_marker(thread, timing, m);
                    }
                    Pending::Span { name, target } => {
                        let m = SpanMarker {
                            name,
                            category: self.span_category,
                            target,
                        };
                        self.profile.add_marker(thread, timing, m);
                    }
                }
            }
        }
        if let Some(e) = self.markers.store.take_error() {
            return Err(e);
        }
        Ok((left_out, min_ns))
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
        let syscall = b.profile.intern_string(&sc);
        b.markers.push(thread, s, e, Pending::Blocked { syscall });
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
    max_markers: usize,
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
        markers: MarkerBuffer::new(max_markers),
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
    let mut summary = summarizer.finish_to(stop.clone(), &mut Markers { b: &mut b });
    markers::diagnoses(
        &mut b,
        &mut fold,
        pass.kernel.as_ref(),
        &mut summary.diagnoses,
    );
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
    let write_err = |error| ExportError::Write {
        path: out.to_owned(),
        error,
    };
    let spill_err = |error| ExportError::Write {
        path: PathBuf::from("(the temporary file markers wait in)"),
        error,
    };
    let (left_out, min_ns) = b.add_markers().map_err(spill_err)?;
    let samples = b.samples;
    let own_left_out = b.own_left_out;
    let profile = b.profile;

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
            .chain((left_out > 0).then(|| {
                format!(
                    "left out {left_out} markers shorter than {} (the profile keeps the longest, at most --max-markers {max_markers}; samples are all in it)",
                    crate::report::duration(min_ns)
                )
            }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_keeps_the_longest_markers_within_the_budget() {
        let mut m = MarkerBuffer::new(3);
        // Two of 1 ms, two of 1 µs, one of 10 ns.
        for ns in [1_000_000, 1_000_000, 1_000, 1_000, 10] {
            m.by_log2[log2_bucket(ns)] += 1;
        }
        let (cut, out) = m.cut();
        assert_eq!(out, 3, "both 1 µs markers go with the 10 ns one");
        assert!(log2_bucket(1_000_000) >= cut && log2_bucket(1_000) < cut);
        m.max = 5;
        assert_eq!(m.cut(), (0, 0));
        m.max = 0;
        assert_eq!(m.cut().1, 5);
        // The longest possible duration still has a bucket.
        m.by_log2[log2_bucket(u64::MAX)] += 1;
        assert_eq!(m.cut(), (65, 6));
    }
}
