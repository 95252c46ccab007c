//! Every thread's and task's stretches through time, kept from one pass of the analysis
//! ([`crate::tasks`]) by a sink ([`Collected`]) that stores them compactly by track, spilling to a
//! temporary file past a memory budget (`store.rs`), and, in the same pass, the stack tree that
//! names the blocked stretches' and yield sites' stacks. The timeline page and the exports
//! (`iotrace-render`) read them back one track at a time. Wakes (who woke a task, and when the
//! poll that followed began) are kept beside them, in memory and bounded
//! ([`TimelineOptions::max_wakes`]).

use std::collections::HashSet;

use rustc_hash::FxHashMap;
use std::io;
use std::path::Path;

use crate::stacks::{Need, StackFold};
use crate::summary::{Summarizer, Summary};
use crate::symbolize::{self, KernelSymbols};
use crate::tasks::naming::StackNames;
use crate::tasks::{
    Sink, StackId, TaskInterval, TaskKey, TaskOptions, TaskPhase, ThreadInterval, ThreadState,
    WakeEdge,
};
use iotrace_trace::{FormatError, Record, TraceReader};

pub mod store;

use store::{Dec, Enc, Store};

/// Why the intervals could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum IntervalError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("keeping the intervals in a temporary file ($TMPDIR or /tmp): {0}")]
    Spill(io::Error),
    #[error("the window {from_ns} ns..{to_ns} ns is empty or outside the recording")]
    Window { from_ns: u64, to_ns: u64 },
}

/// What to collect (and, for the page, draw).
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    pub tasks: TaskOptions,
    /// Only this part of the recording, in ns since it started (`None`: from the start / to
    /// the end).
    pub from_ns: Option<u64>,
    pub to_ns: Option<u64>,
    /// Most intervals drawn; past it, runs of short stretches are merged (0: no limit).
    pub max_intervals: u64,
    /// Most wakes kept (0: no limit); past it, an even share of them is kept across the
    /// window and the rest counted ([`Collected::wakes_left_out`]).
    pub max_wakes: u64,
}

/// Default [`TimelineOptions::max_intervals`]: what a browser draws and holds comfortably.
pub const DEFAULT_MAX_INTERVALS: u64 = 2_000_000;
/// Default [`TimelineOptions::max_wakes`]: about 16 MiB held (80 bytes a wake), 5 MiB of page.
pub const DEFAULT_MAX_WAKES: u64 = 200_000;

impl Default for TimelineOptions {
    fn default() -> Self {
        TimelineOptions {
            tasks: TaskOptions::default(),
            from_ns: None,
            to_ns: None,
            max_intervals: DEFAULT_MAX_INTERVALS,
            max_wakes: DEFAULT_MAX_WAKES,
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
pub const RUNNING: u8 = 0;
pub const RUNNABLE: u8 = 1;
pub const BLOCKED: u8 = 2;
pub const POLL: u8 = 3;
pub const POLL_BLOCKED: u8 = 4;
pub const SCHEDULED: u8 = 5;
pub const IDLE: u8 = 6;

/// A thread's stretch in one state (times absolute).
#[derive(Debug, Clone, Copy)]
pub struct ThreadIv {
    pub start: u64,
    pub end: u64,
    pub state: u8,
    pub syscall: u16,
    pub stack: Option<StackId>,
    /// Who ended a blocked stretch: the waker's tid and whether an interrupt did.
    pub waker: Option<crate::tasks::WakerRef>,
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
}

/// A task's stretch in one phase; the poll fields are zero for other phases, the yield site's
/// `None` but for idle ones.
#[derive(Debug, Clone, Copy)]
pub struct TaskIv {
    pub start: u64,
    pub end: u64,
    pub state: u8,
    pub tid: u32,
    pub syscall: u16,
    pub on_cpu: u64,
    pub preempted: u64,
    pub blocked: u64,
    pub counted: u64,
    /// Where an idle stretch's task returned Pending ([`crate::tasks::YieldSite`]): its stack
    /// and its span chain (an index into [`Summary::span_chains`]).
    pub yield_stack: Option<StackId>,
    pub yield_spans: Option<u32>,
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
}

impl TaskIv {
    /// A stretch in `state` with nothing else known.
    pub fn new(start: u64, end: u64, state: u8) -> Self {
        TaskIv {
            start,
            end,
            state,
            tid: 0,
            syscall: iotrace_trace::Switch::NO_SYSCALL,
            on_cpu: 0,
            preempted: 0,
            blocked: 0,
            counted: 0,
            yield_stack: None,
            yield_spans: None,
            merged: 0,
        }
    }
}

/// An optional id as a varint: 0 for `None`.
fn opt_uint(v: Option<u32>) -> u64 {
    v.map_or(0, |s| u64::from(s) + 1)
}

fn uint_opt(v: u64) -> Option<u32> {
    v.checked_sub(1).and_then(|s| u32::try_from(s).ok())
}

/// A stretch as the store keeps it: start and end first, then what [`Stretch::encode`] adds.
pub trait Stretch: Sized {
    fn start(&self) -> u64;
    fn end(&self) -> u64;
    fn set_start(&mut self, t: u64);
    fn encode(&self, enc: &mut Enc);
    fn decode(dec: &mut Dec, start: u64, end: u64) -> Self;
}

impl Stretch for ThreadIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn set_start(&mut self, t: u64) {
        self.start = t;
    }
    fn encode(&self, enc: &mut Enc) {
        enc.byte(self.state);
        if self.state == BLOCKED {
            enc.uint(u64::from(self.syscall));
            enc.uint(self.stack.map_or(0, |s| u64::from(s) + 1));
            enc.uint(
                self.waker
                    .map_or(0, |(tid, irq)| (u64::from(tid) << 1 | u64::from(irq)) + 1),
            );
        }
    }
    fn decode(dec: &mut Dec, start: u64, end: u64) -> Self {
        let state = dec.byte();
        let (syscall, stack, waker) = if state == BLOCKED {
            let sc = dec.uint() as u16;
            let st = dec.uint();
            let wk = dec
                .uint()
                .checked_sub(1)
                .map(|w| ((w >> 1) as u32, w & 1 == 1));
            (sc, st.checked_sub(1).map(|s| s as StackId), wk)
        } else {
            (0, None, None)
        };
        ThreadIv {
            start,
            end,
            state,
            syscall,
            stack,
            waker,
            merged: 0,
        }
    }
}

impl Stretch for TaskIv {
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn set_start(&mut self, t: u64) {
        self.start = t;
    }
    fn encode(&self, enc: &mut Enc) {
        enc.byte(self.state);
        if self.state == POLL || self.state == POLL_BLOCKED {
            enc.uint(u64::from(self.tid));
            enc.uint(u64::from(self.syscall));
            enc.uint(self.on_cpu);
            enc.uint(self.preempted);
            enc.uint(self.blocked);
            enc.uint(self.counted);
        } else if self.state == IDLE {
            enc.uint(opt_uint(self.yield_stack));
            enc.uint(opt_uint(self.yield_spans));
        }
    }
    fn decode(dec: &mut Dec, start: u64, end: u64) -> Self {
        let state = dec.byte();
        let mut t = TaskIv::new(start, end, state);
        if state == IDLE {
            t.yield_stack = uint_opt(dec.uint());
            t.yield_spans = uint_opt(dec.uint());
        } else if state == POLL || state == POLL_BLOCKED {
            t.tid = dec.uint() as u32;
            t.syscall = dec.uint() as u16;
            t.on_cpu = dec.uint();
            t.preempted = dec.uint();
            t.blocked = dec.uint();
            t.counted = dec.uint();
        }
        t
    }
}

/// Sorts a track and trims overlaps, so each track is a sequence of disjoint stretches.
fn normalize<T: Stretch>(v: &mut Vec<T>) {
    v.sort_by_key(|i| (i.start(), i.end()));
    let mut last_end = 0;
    v.retain_mut(|i| trim(i, &mut last_end));
}

/// Trims a stretch that starts before `last_end` (the end of the one before it in time
/// order); false when nothing is left of it.
fn trim<T: Stretch>(i: &mut T, last_end: &mut u64) -> bool {
    if i.start() < *last_end {
        i.set_start(*last_end);
    }
    if i.end() <= i.start() {
        return false;
    }
    *last_end = i.end();
    true
}

/// One track's stretches in time order, disjoint: streamed from the store when they came in
/// order, else decoded whole and sorted.
pub enum Ivs<T> {
    Stream { dec: Dec, last_end: u64 },
    Sorted(std::vec::IntoIter<T>),
}

impl<T: Stretch> Ivs<T> {
    fn new(store: &Store, track: usize) -> io::Result<Self> {
        let (mut dec, sorted) = store.read(track)?;
        if sorted {
            return Ok(Ivs::Stream { dec, last_end: 0 });
        }
        let mut v = Vec::with_capacity(store.len(track) as usize);
        while let Some((s, e)) = dec.next_stretch() {
            v.push(T::decode(&mut dec, s, e));
        }
        normalize(&mut v);
        Ok(Ivs::Sorted(v.into_iter()))
    }
}

impl<T: Stretch> Iterator for Ivs<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            Ivs::Stream { dec, last_end } => loop {
                let (s, e) = dec.next_stretch()?;
                let mut iv = T::decode(dec, s, e);
                if trim(&mut iv, last_end) {
                    return Some(iv);
                }
            },
            Ivs::Sorted(it) => it.next(),
        }
    }
}

/// Every interval of a trace, by track, plus /proc counters; filled during one pass. The
/// stretches live in a [`Store`] (compact, spilled to a temporary file past a budget) and are
/// read back one track at a time.
#[derive(Debug, Default)]
pub struct Collected {
    pub start_ns: u64,
    pub window: Option<(u64, u64)>,
    rel_window: (Option<u64>, Option<u64>),
    store: Store,
    /// tid → (pid, track).
    pub threads: FxHashMap<u32, (u32, usize)>,
    pub tasks: FxHashMap<TaskKey, usize>,
    /// Tasks meant to block (spawn_blocking, tokio's worker threads): their polls are not
    /// shown as blocking their worker.
    blocking: HashSet<TaskKey>,
    /// First start and last end of any stretch.
    pub span: Option<(u64, u64)>,
    /// (time, pid, rss bytes, threads) from /proc samples.
    pub counters: Vec<(u64, u32, u64, u32)>,
    pub intervals: u64,
    /// The stack tree and mappings, built in the same pass when the caller names stacks.
    stacks: Option<Stacks>,
    /// Blocked time by off-CPU stack (gathered when `stacks` is), to name the heaviest.
    pub stack_time: FxHashMap<StackId, u64>,
    /// Each task track's latest stretches, held back and put in order before they are stored
    /// (the analysis emits a poll after the idle and scheduled stretches that follow it).
    pending: Vec<Vec<TaskIv>>,
    /// Idle time by yield-site stack (gathered when `stacks` is), to name the heaviest.
    pub idle_time: FxHashMap<StackId, u64>,
    /// Wakes whose two ends fall in the window, by when they woke once [`collect`] is done.
    wakes: Vec<WakeEdge>,
    /// Wakes seen in the window, and every how many one is kept (doubled each time `wakes`
    /// fills up, keeping every other one of those it holds).
    wakes_seen: u64,
    wake_stride: u64,
    max_wakes: u64,
}

/// Task stretches held back per track to put them in time order.
const REORDER: usize = 4;

/// What naming off-CPU stacks needs, gathered during the analysis pass.
struct Stacks {
    fold: StackFold,
    kernel: Option<std::thread::JoinHandle<Option<KernelSymbols>>>,
}

impl std::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stacks")
    }
}

impl Collected {
    fn clip(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let (lo, hi) = self.window.unwrap_or((0, u64::MAX));
        let (s, e) = (start.max(lo), end.min(hi));
        (e > s).then_some((s, e))
    }

    fn record(&mut self, record: &Record) {
        if let Some(st) = &mut self.stacks {
            if let Record::Sampling(s) = record {
                if s.kernel_stacks && st.kernel.is_none() && symbolize::same_boot(&s.boot_id) {
                    st.kernel = Some(KernelSymbols::spawn());
                }
            }
            st.fold.add(record, &mut |_, _| {});
        }
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

    /// Notes which tasks the analysis confirmed as blocking ones, and sorts the counters.
    fn settle(&mut self, summary: &Summary) -> Result<(), IntervalError> {
        for track in 0..self.pending.len() {
            for iv in std::mem::take(&mut self.pending[track]) {
                self.push(track, iv);
            }
        }
        if let Some(e) = self.store.take_error() {
            return Err(IntervalError::Spill(e));
        }
        self.blocking = summary
            .tasks
            .iter()
            .filter(|t| t.kind == "blocking")
            .map(|t| TaskKey {
                pid: t.pid,
                span: t.id,
            })
            .collect();
        self.counters.sort_by_key(|c| (c.1, c.0));
        self.wakes.sort_by_key(|w| (w.woken, w.polled));
        Ok(())
    }

    fn push<T: Stretch>(&mut self, track: usize, iv: T) {
        self.intervals += 1;
        let (s, e) = (iv.start(), iv.end());
        self.span = Some(match self.span {
            Some((a, b)) => (a.min(s), b.max(e)),
            None => (s, e),
        });
        self.store_iv(track, iv);
    }

    fn store_iv<T: Stretch>(&mut self, track: usize, iv: T) {
        self.store
            .push(track, iv.start(), iv.end(), |enc| iv.encode(enc));
    }

    /// A task stretch, through the track's reorder buffer.
    fn push_task(&mut self, track: usize, iv: TaskIv) {
        if self.pending.len() <= track {
            self.pending.resize_with(track + 1, Vec::new);
        }
        let buf = &mut self.pending[track];
        let key = (iv.start, iv.end);
        let at = buf.partition_point(|x| (x.start, x.end) <= key);
        buf.insert(at, iv);
        if buf.len() > REORDER {
            let first = buf.remove(0);
            self.push(track, first);
        }
    }

    /// Stretches pushed for a thread (before overlaps are trimmed).
    pub fn thread_len(&self, tid: u32) -> u64 {
        self.threads
            .get(&tid)
            .map_or(0, |&(_, t)| self.store.len(t))
    }

    pub fn task_len(&self, key: &TaskKey) -> u64 {
        self.tasks.get(key).map_or(0, |&t| self.store.len(t))
    }

    /// A thread's stretches, sorted and disjoint.
    pub fn thread_ivs(&self, tid: u32) -> io::Result<Ivs<ThreadIv>> {
        match self.threads.get(&tid) {
            Some(&(_, t)) => Ivs::new(&self.store, t),
            None => Ok(Ivs::Sorted(Vec::new().into_iter())),
        }
    }

    /// A task's stretches, sorted and disjoint; a blocking task's polls are plain polls.
    pub fn task_ivs(&self, key: &TaskKey) -> io::Result<impl Iterator<Item = TaskIv>> {
        let ivs = match self.tasks.get(key) {
            Some(&t) => Ivs::new(&self.store, t)?,
            None => Ivs::Sorted(Vec::new().into_iter()),
        };
        let blocking = self.blocking.contains(key);
        Ok(ivs.map(move |mut iv: TaskIv| {
            if blocking && iv.state == POLL_BLOCKED {
                iv.state = POLL;
            }
            iv
        }))
    }

    /// Bytes of stretches written to the temporary file.
    pub fn spilled_bytes(&self) -> u64 {
        self.store.spilled()
    }

    /// The wakes kept, by when they woke: each names the task, who woke it, on which thread, and
    /// when the poll that followed began.
    pub fn wakes(&self) -> &[WakeEdge] {
        &self.wakes
    }

    /// Wakes in the window that were not kept ([`TimelineOptions::max_wakes`]).
    pub fn wakes_left_out(&self) -> u64 {
        self.wakes_seen - self.wakes.len() as u64
    }

    fn keep_wake(&mut self, w: WakeEdge) {
        let seen = self.wakes_seen;
        self.wakes_seen += 1;
        if !seen.is_multiple_of(self.wake_stride.max(1)) {
            return;
        }
        if self.max_wakes > 0 && self.wakes.len() as u64 >= self.max_wakes {
            // Keep every other one: those whose number is a multiple of twice the stride.
            let mut i = 0;
            self.wakes.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.wake_stride = self.wake_stride.max(1) * 2;
            if !seen.is_multiple_of(self.wake_stride) {
                return;
            }
        }
        self.wakes.push(w);
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
        if let (Some(s), Some(_)) = (stack, &self.stacks) {
            *self.stack_time.entry(s).or_insert(0) += end - start;
        }
        let track = match self.threads.get(&iv.tid) {
            Some(&(_, t)) => t,
            None => {
                let t = self.store.track();
                self.threads.insert(iv.tid, (iv.pid, t));
                t
            }
        };
        self.push(
            track,
            ThreadIv {
                start,
                end,
                state,
                syscall,
                stack,
                waker: iv.waker,
                merged: 0,
            },
        );
    }

    fn task_interval(&mut self, iv: &TaskInterval) {
        let Some((start, end)) = self.clip(iv.start, iv.end) else {
            return;
        };
        let mut t = TaskIv::new(start, end, IDLE);
        match iv.phase {
            TaskPhase::Scheduled(_) => t.state = SCHEDULED,
            TaskPhase::Idle(site) => {
                t.yield_stack = site.stack;
                t.yield_spans = site.spans;
                if let (Some(s), Some(_)) = (site.stack, &self.stacks) {
                    *self.idle_time.entry(s).or_insert(0) += end - start;
                }
            }
            TaskPhase::Poll(p) => {
                t.state = if p.stretches > 0 { POLL_BLOCKED } else { POLL };
                t.tid = p.tid;
                t.syscall = p.syscall.unwrap_or(iotrace_trace::Switch::NO_SYSCALL);
                t.on_cpu = p.on_cpu_ns;
                t.preempted = p.preempted_ns;
                t.blocked = p.blocked_ns;
                t.counted = p.blocked_counted_ns;
            }
        }
        let track = match self.tasks.get(&iv.task) {
            Some(&t) => t,
            None => {
                let t = self.store.track();
                self.tasks.insert(iv.task, t);
                t
            }
        };
        self.push_task(track, t);
    }

    fn wake(&mut self, w: &WakeEdge) {
        let (lo, hi) = self.window.unwrap_or((0, u64::MAX));
        if w.woken >= lo && w.polled <= hi && w.woken <= w.polled {
            self.keep_wake(*w);
        }
    }
}

/// Reads a trace once: its summary and every interval (within the window). With
/// `stacks`, the same pass keeps what naming off-CPU stacks needs ([`Collected::name_stacks`]).
pub fn collect(
    trace: &Path,
    opts: &TimelineOptions,
    stacks: bool,
) -> Result<(Summary, Collected), IntervalError> {
    if let (Some(from), Some(to)) = (opts.from_ns, opts.to_ns) {
        if to <= from {
            return Err(IntervalError::Window {
                from_ns: from,
                to_ns: to,
            });
        }
    }
    let mut reader = TraceReader::open(trace)?;
    let mut summarizer = Summarizer::with_options(opts.tasks.clone());
    let mut col = Collected {
        rel_window: (opts.from_ns, opts.to_ns),
        max_wakes: opts.max_wakes,
        wake_stride: 1,
        stacks: stacks.then(|| Stacks {
            fold: StackFold::with(Need {
                on_cpu: false,
                off_cpu: false,
                contexts: false,
            }),
            kernel: None,
        }),
        ..Collected::default()
    };
    for record in reader.by_ref() {
        col.record(&record);
        summarizer.add_to(&record, &mut col);
    }
    let stop = reader.stop().map(|s| s.to_string());
    let summary = summarizer.finish_to(stop, &mut col);
    col.settle(&summary)?;
    Ok((summary, col))
}

impl Collected {
    /// Frame names of `ids`, from the stack tree built during [`collect`] (empty without it).
    pub fn name_stacks(&mut self, ids: &[StackId]) -> StackNames {
        let Some(mut st) = self.stacks.take() else {
            return StackNames::new();
        };
        st.fold.finish(&mut |_, _| {});
        let kernel = st.kernel.and_then(|k| k.join().ok().flatten());
        crate::tasks::naming::names_in(&mut st.fold, ids, kernel.as_ref())
    }
}

/// Most distinct off-CPU stacks named for the page (those with the most blocked time).
pub const MAX_NAMED_STACKS: usize = 2000;
/// Most distinct yield-site stacks named for the page and the exports (those with the most
/// idle time); idle stretches at others say which stack, unnamed.
pub const MAX_NAMED_YIELD_STACKS: usize = 500;

/// The off-CPU stacks with the most blocked time, at most [`MAX_NAMED_STACKS`], heaviest first.
pub fn heaviest_stacks<S: std::hash::BuildHasher>(
    time: &std::collections::HashMap<StackId, u64, S>,
) -> Vec<StackId> {
    heaviest(time, MAX_NAMED_STACKS)
}

/// The stacks with the most time, at most `max`, heaviest first.
pub fn heaviest<S: std::hash::BuildHasher>(
    time: &std::collections::HashMap<StackId, u64, S>,
    max: usize,
) -> Vec<StackId> {
    let mut ids: Vec<(StackId, u64)> = time.iter().map(|(&s, &t)| (s, t)).collect();
    ids.sort_by_key(|&(s, t)| (std::cmp::Reverse(t), s));
    ids.truncate(max);
    ids.into_iter().map(|(s, _)| s).collect()
}

/// An idle stretch's yield site in a line, as the report names its tasks' sites: the awaited
/// future, the program's function and its place, then the spans entered there
/// (`tokio::time::sleep::Sleep in app::tick at src/main.rs:40 (in span conn > read)`).
/// `None` when neither the stack nor the spans are known.
pub fn yield_site_line(
    names: &StackNames,
    chains: &[String],
    stack: Option<StackId>,
    spans: Option<u32>,
) -> Option<String> {
    let chain = spans.and_then(|i| chains.get(i as usize));
    let site = stack.map(|id| {
        names
            .get(&id)
            .and_then(|frames| crate::tasks::naming::site_line(frames))
            .unwrap_or_else(|| format!("stack {id} (not named)"))
    });
    match (site, chain) {
        (Some(site), Some(chain)) => Some(format!("{site} (in span {chain})")),
        (Some(site), None) => Some(site),
        (None, Some(chain)) => Some(format!("in span {chain}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
