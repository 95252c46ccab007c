//! Every thread's and task's stretches through time, kept from one pass of the analysis
//! ([`crate::tasks`]) by a sink ([`Collected`]) that stores them compactly by track, spilling to a
//! temporary file past a memory budget (`store.rs`), and, in the same pass, the stack tree that
//! names the blocked stretches' stacks. The timeline page and the exports (`iotrace-render`)
//! read them back one track at a time.

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
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
}

/// A task's stretch in one phase; the poll fields are zero for other phases.
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
    /// How many stretches this one stands for, when short ones were merged (0: itself).
    pub merged: u32,
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
        }
    }
    fn decode(dec: &mut Dec, start: u64, end: u64) -> Self {
        let state = dec.byte();
        let (syscall, stack) = if state == BLOCKED {
            let sc = dec.uint() as u16;
            let st = dec.uint();
            (sc, st.checked_sub(1).map(|s| s as StackId))
        } else {
            (0, None)
        };
        ThreadIv {
            start,
            end,
            state,
            syscall,
            stack,
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
        }
    }
    fn decode(dec: &mut Dec, start: u64, end: u64) -> Self {
        let state = dec.byte();
        let mut t = TaskIv {
            start,
            end,
            state,
            tid: 0,
            syscall: iotrace_trace::Switch::NO_SYSCALL,
            on_cpu: 0,
            preempted: 0,
            blocked: 0,
            counted: 0,
            merged: 0,
        };
        if state == POLL || state == POLL_BLOCKED {
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
                merged: 0,
            },
        );
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
            syscall: iotrace_trace::Switch::NO_SYSCALL,
            on_cpu: 0,
            preempted: 0,
            blocked: 0,
            counted: 0,
            merged: 0,
        };
        match iv.phase {
            TaskPhase::Scheduled(_) => t.state = SCHEDULED,
            TaskPhase::Idle(_) => t.state = IDLE,
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

/// The off-CPU stacks with the most blocked time, at most [`MAX_NAMED_STACKS`], heaviest first.
pub fn heaviest_stacks<S: std::hash::BuildHasher>(
    time: &std::collections::HashMap<StackId, u64, S>,
) -> Vec<StackId> {
    let mut ids: Vec<(StackId, u64)> = time.iter().map(|(&s, &t)| (s, t)).collect();
    ids.sort_by_key(|&(s, t)| (std::cmp::Reverse(t), s));
    ids.truncate(MAX_NAMED_STACKS);
    ids.into_iter().map(|(s, _)| s).collect()
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
