//! The kernel's view of each thread, from context-switch records: `running`, `runnable`
//! (preempted, or new and not yet on a CPU) and `blocked` (switched out voluntarily, in the
//! syscall it last entered). Switches of different CPUs are merged into time order behind a
//! watermark; each thread's state changes become [`ThreadInterval`]s, per-thread totals, and a
//! short history of cumulative counters that lets a poll ask "how long was my worker on-CPU,
//! preempted and blocked between t0 and t1".
//!
//! Without wake-up records, a blocked thread stays `blocked` until it is back on a CPU: the
//! wait for a CPU after its wake-up is counted as blocked time.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap as FxMap;

use super::reorder::Reorder;
use super::{Sink, StackId, ThreadInterval, ThreadState};
use iotrace_trace::Switch;

/// Most history entries kept per thread, whatever the horizon says.
const MAX_HISTORY: usize = 1 << 17;
/// Most kernel events held for reordering before the oldest are released anyway.
const MAX_QUEUE: usize = 1 << 22;
/// An off-CPU stack sample belongs to the voluntary switch-out this close to it.
const STACK_SLACK_NS: u64 = 1_000_000;

/// Cumulative per-thread counters since the thread was first seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cum {
    pub running: u64,
    pub runnable: u64,
    pub blocked: u64,
    /// Blocked time in stretches at least as long as the threshold.
    pub blocked_long: u64,
    /// How many such stretches.
    pub long_stretches: u64,
}

impl Cum {
    /// `self - earlier`, each counter saturating at 0.
    pub fn since(&self, earlier: &Cum) -> Cum {
        Cum {
            running: self.running.saturating_sub(earlier.running),
            runnable: self.runnable.saturating_sub(earlier.runnable),
            blocked: self.blocked.saturating_sub(earlier.blocked),
            blocked_long: self.blocked_long.saturating_sub(earlier.blocked_long),
            long_stretches: self.long_stretches.saturating_sub(earlier.long_stretches),
        }
    }

    /// Adds `d` ns spent in `state`; `done` says the stretch is complete (so it may count as a
    /// long blocked stretch).
    fn add(&mut self, state: ThreadState, d: u64, threshold: u64, done: bool) {
        match state {
            ThreadState::Running => self.running = self.running.saturating_add(d),
            ThreadState::Runnable => self.runnable = self.runnable.saturating_add(d),
            ThreadState::Blocked { .. } => {
                self.blocked = self.blocked.saturating_add(d);
                if done && d >= threshold {
                    self.blocked_long = self.blocked_long.saturating_add(d);
                    self.long_stretches += 1;
                }
            }
        }
    }
}

/// Per-thread totals over the whole recording.
#[derive(Debug, Clone, Default)]
pub struct ThreadTotals {
    pub pid: u32,
    pub on_cpu_ns: u64,
    pub runnable_ns: u64,
    pub blocked_ns: u64,
    /// syscall number → (blocked ns, stretches).
    pub blocked: HashMap<u16, (u64, u64)>,
    /// Who ended its blocked stretches, when the trace has the wakeup: (waker tid, by an
    /// interrupt) → (stretches, blocked ns); at most [`MAX_THREAD_WAKERS`].
    pub woken: Vec<((u32, bool), u64, u64)>,
    /// Blocked ns whose waker is not in the trace (another process, an idle CPU's interrupt,
    /// or past the list).
    pub woken_unknown_ns: u64,
}

/// Distinct wakers kept per thread.
const MAX_THREAD_WAKERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KState {
    /// Not seen switching yet.
    Unknown,
    In(ThreadState),
    Dead,
}

#[derive(Debug, Clone, Copy)]
struct Hist {
    start: u64,
    end: u64,
    state: ThreadState,
    before: Cum,
    /// For a blocked stretch: the wakeup that ended it, when the trace has wakeups.
    waker: Option<Waker>,
}

/// Who woke a blocked thread (`sched:sched_waking`): the thread current on the waking CPU
/// and whether it ran the wakeup from an interrupt (then the interrupt woke it, not that
/// thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waker {
    pub tid: u32,
    pub pid: u32,
    pub time: u64,
    pub irq: bool,
}

/// A wakeup this long before a voluntary switch-out ends the wait that switch-out begins.
const WAKE_SLACK_NS: u64 = 50_000;

/// On-CPU stack samples kept per thread (the long polls' stacks are looked up in them).
const MAX_ON_CPU: usize = 4096;

struct KThread {
    /// Entries dropped from the front of `hist` so far, and the absolute index of the entry
    /// the last lookup found: lookups mostly move forward in time, so the next one is near.
    popped: u64,
    hint: std::cell::Cell<u64>,
    pid: u32,
    state: KState,
    since: u64,
    /// Fork or exec time: the thread was runnable (fork) or running (exec) from then.
    born: Option<(u64, ThreadState)>,
    cum: Cum,
    hist: VecDeque<Hist>,
    totals: ThreadTotals,
    /// An off-CPU stack that came before its switch-out: (time, stack).
    pending_stack: Option<(u64, StackId)>,
    /// The wakeup of its current blocked stretch.
    waker: Option<Waker>,
    /// Its recent on-CPU samples: (time, stack).
    on_cpu: VecDeque<(u64, StackId)>,
}

impl KThread {
    fn new(pid: u32) -> Self {
        KThread {
            popped: 0,
            hint: std::cell::Cell::new(0),
            pid,
            state: KState::Unknown,
            since: 0,
            born: None,
            cum: Cum::default(),
            hist: VecDeque::new(),
            pending_stack: None,
            waker: None,
            on_cpu: VecDeque::new(),
            totals: ThreadTotals {
                pid,
                ..ThreadTotals::default()
            },
        }
    }
}

/// A kernel record, waiting for its turn in time order.
enum KEvent {
    Switch {
        pid: u32,
        tid: u32,
        flags: u8,
        syscall: u16,
    },
    Fork {
        pid: u32,
        tid: u32,
    },
    Exec {
        pid: u32,
        tid: u32,
    },
    Exit {
        tid: u32,
    },
    /// The stack of a voluntary switch-out (an off-CPU stack sample).
    OffStack {
        tid: u32,
        stack: StackId,
    },
    /// An on-CPU stack sample.
    OnStack {
        tid: u32,
        stack: StackId,
    },
    /// `waker` woke thread `wakee`.
    Wake {
        waker: Waker,
        wakee: u32,
    },
}

/// All threads' kernel states, fed in file order, released in time order.
pub(crate) struct Kernel {
    queue: Reorder<KEvent>,
    /// Times of the last three drain markers (ThreadCounts, ProcSample), newest first.
    markers: [u64; 3],
    /// Every kernel event at or before this time has been read.
    pub(crate) watermark: u64,
    threads: FxMap<u32, KThread>,
    threshold: u64,
    /// History a thread keeps: entries ending before its horizon are dropped.
    pub(crate) span_released: u64,
    span_seen: FxMap<u32, u64>,
    /// Switch sequences that made no sense (a lost record): in while running, out while off.
    pub(crate) anomalies: u64,
    pub(crate) saw_switches: bool,
    /// Whether the trace has the kernel's wakeups.
    pub(crate) saw_wakeups: bool,
    /// The futex syscall's number on this machine.
    futex: u16,
}

impl Kernel {
    pub(crate) fn new(threshold: u64) -> Self {
        Kernel {
            queue: Reorder::default(),
            markers: [0; 3],
            watermark: 0,
            threads: FxMap::default(),
            threshold,
            span_released: 0,
            span_seen: FxMap::default(),
            anomalies: 0,
            saw_switches: false,
            saw_wakeups: false,
            futex: syscalls::Sysno::futex as u16,
        }
    }

    /// One CPU's switches, in that CPU's order.
    pub(crate) fn switches(&mut self, batch: &iotrace_trace::Switches) {
        let mut time = batch.base_ns;
        let run: Vec<(u64, KEvent)> = batch
            .switches
            .iter()
            .map(|s| {
                time = time.wrapping_add(s.delta_ns);
                (
                    time,
                    KEvent::Switch {
                        pid: s.pid,
                        tid: s.tid,
                        flags: s.flags,
                        syscall: s.syscall,
                    },
                )
            })
            .collect();
        self.saw_switches |= !run.is_empty();
        self.queue.push_run(run);
    }

    /// One CPU's stack samples: the off-CPU ones name the stack of a voluntary switch-out, the
    /// on-CPU ones what a long poll ran.
    pub(crate) fn samples(&mut self, batch: &iotrace_trace::Samples) {
        let mut time = batch.base_ns;
        let run: Vec<(u64, KEvent)> = batch
            .samples
            .iter()
            .map(|s| {
                time = time.wrapping_add(s.delta_ns);
                let (tid, stack) = (s.tid, s.stack);
                match s.off_cpu {
                    Some(_) => (time, KEvent::OffStack { tid, stack }),
                    None => (time, KEvent::OnStack { tid, stack }),
                }
            })
            .collect();
        if !run.is_empty() {
            self.queue.push_run(run);
        }
    }

    /// One CPU's wakeups, in that CPU's order.
    pub(crate) fn wakeups(&mut self, batch: &iotrace_trace::Wakeups) {
        let mut time = batch.base_ns;
        let run: Vec<(u64, KEvent)> = batch
            .wakeups
            .iter()
            .map(|w| {
                time = time.wrapping_add(w.delta_ns);
                let irq = w.flags
                    & (iotrace_trace::Wakeup::HARDIRQ | iotrace_trace::Wakeup::SOFTIRQ)
                    != 0;
                let waker = Waker {
                    tid: w.waker_tid,
                    pid: w.waker_pid,
                    time,
                    irq,
                };
                (
                    time,
                    KEvent::Wake {
                        waker,
                        wakee: w.wakee_tid,
                    },
                )
            })
            .collect();
        self.saw_wakeups = true;
        if !run.is_empty() {
            self.queue.push_run(run);
        }
    }

    pub(crate) fn fork(&mut self, time: u64, pid: u32, tid: u32) {
        self.queue.push(time, KEvent::Fork { pid, tid });
    }

    pub(crate) fn exec(&mut self, time: u64, pid: u32, tid: u32) {
        self.queue.push(time, KEvent::Exec { pid, tid });
    }

    pub(crate) fn exit(&mut self, time: u64, tid: u32) {
        self.queue.push(time, KEvent::Exit { tid });
    }

    /// A record written after a complete drain of every CPU's ring. Once three have been
    /// read, every switch before the oldest of them has been read too.
    pub(crate) fn marker(&mut self, time: u64) {
        if time <= self.markers[0] {
            return;
        }
        self.markers = [time, self.markers[0], self.markers[1]];
        self.watermark = self.watermark.max(self.markers[2]);
    }

    /// The span events of `tid` received so far reach `time`: later ones are not earlier.
    pub(crate) fn span_seen(&mut self, tid: u32, time: u64) {
        let e = self.span_seen.entry(tid).or_insert(0);
        *e = (*e).max(time);
    }

    /// Applies every queued event up to the watermark.
    pub(crate) fn release(&mut self, sink: &mut dyn Sink) {
        while let Some((t, ev)) = self.queue.pop_until(self.watermark) {
            self.apply(t, ev, sink);
        }
        while self.queue.len() > MAX_QUEUE {
            if let Some((t, ev)) = self.queue.pop() {
                self.watermark = self.watermark.max(t);
                self.apply(t, ev, sink);
            }
        }
    }

    /// Applies everything queued and closes every thread's open stretch at `end`.
    pub(crate) fn finish(&mut self, end: u64, sink: &mut dyn Sink) {
        while let Some((t, ev)) = self.queue.pop() {
            self.apply(t, ev, sink);
        }
        self.watermark = self.watermark.max(end);
        let tids: Vec<u32> = self.threads.keys().copied().collect();
        for tid in tids {
            let Some(th) = self.threads.get(&tid) else {
                continue;
            };
            let (state, since) = match th.state {
                KState::In(s) => (s, th.since),
                KState::Unknown => match th.born {
                    Some((t, _)) if self.saw_switches => (ThreadState::Running, t),
                    _ => continue,
                },
                KState::Dead => continue,
            };
            if end > since {
                self.emit(tid, since, end, state, sink);
                if let Some(th) = self.threads.get_mut(&tid) {
                    th.since = end;
                }
            }
        }
    }

    pub(crate) fn late_events(&self) -> u64 {
        self.queue.late()
    }

    fn thread(&mut self, pid: u32, tid: u32) -> &mut KThread {
        self.threads.entry(tid).or_insert_with(|| KThread::new(pid))
    }

    fn apply(&mut self, t: u64, ev: KEvent, sink: &mut dyn Sink) {
        match ev {
            KEvent::Fork { pid, tid } => {
                // A reused tid continues the old entry's totals under the new pid.
                let th = self.thread(pid, tid);
                if th.state == KState::Dead {
                    th.state = KState::Unknown;
                    th.pid = pid;
                    th.totals.pid = pid;
                }
                if th.state == KState::Unknown {
                    th.born = Some((t, ThreadState::Runnable));
                    th.since = t;
                }
            }
            KEvent::Exec { pid, tid } => {
                let th = self.thread(pid, tid);
                if th.state == KState::Unknown {
                    th.born = Some((t, ThreadState::Running));
                    th.since = t;
                }
            }
            KEvent::OffStack { tid, stack } => {
                let Some(th) = self.threads.get_mut(&tid) else {
                    return;
                };
                match &mut th.state {
                    KState::In(ThreadState::Blocked {
                        stack: s @ None, ..
                    }) if t.abs_diff(th.since) <= STACK_SLACK_NS => *s = Some(stack),
                    _ => th.pending_stack = Some((t, stack)),
                }
            }
            KEvent::OnStack { tid, stack } => {
                let Some(th) = self.threads.get_mut(&tid) else {
                    return;
                };
                if th.on_cpu.len() >= MAX_ON_CPU {
                    th.on_cpu.pop_front();
                }
                th.on_cpu.push_back((t, stack));
            }
            KEvent::Wake { waker, wakee } => {
                let Some(th) = self.threads.get_mut(&wakee) else {
                    return;
                };
                // A wakeup may come a moment before the switch-out record of the wait it ends
                // (the waker ran on another CPU while this one was switching out): kept, it
                // belongs to the blocked stretch that follows within WAKE_SLACK_NS.
                if t >= th.since {
                    th.waker = Some(waker);
                }
            }
            KEvent::Exit { tid } => {
                let Some(th) = self.threads.get_mut(&tid) else {
                    return;
                };
                let (state, since, born) = (th.state, th.since, th.born);
                th.state = KState::Dead;
                th.since = t;
                match state {
                    KState::In(ThreadState::Running) => {
                        self.emit(tid, since, t, ThreadState::Running, sink)
                    }
                    KState::Unknown => {
                        if let Some((b, _)) = born {
                            self.emit(tid, b, t, ThreadState::Running, sink);
                        }
                    }
                    _ => {}
                }
            }
            KEvent::Switch {
                pid,
                tid,
                flags,
                syscall,
            } => {
                let out = flags & Switch::OUT != 0;
                let th = self.thread(pid, tid);
                let (state, since, born) = (th.state, th.since, th.born);
                if out {
                    let pending = self.thread(pid, tid).pending_stack.take();
                    let off = if flags & Switch::PREEMPT != 0 {
                        ThreadState::Runnable
                    } else {
                        ThreadState::Blocked {
                            syscall,
                            stack: pending
                                .filter(|&(pt, _)| pt.abs_diff(t) <= STACK_SLACK_NS)
                                .map(|(_, s)| s),
                        }
                    };
                    match state {
                        // The last switch-out after exit.
                        KState::Dead => return,
                        KState::In(ThreadState::Running) => {
                            self.emit(tid, since, t, ThreadState::Running, sink)
                        }
                        KState::Unknown => {
                            if let Some((b, _)) = born {
                                self.emit(tid, b, t, ThreadState::Running, sink);
                            }
                        }
                        KState::In(_) => self.anomalies += 1,
                    }
                    let th = self.thread(pid, tid);
                    th.state = KState::In(off);
                    th.since = t;
                } else {
                    match state {
                        KState::In(ThreadState::Running) => self.anomalies += 1,
                        KState::In(off) => self.emit(tid, since, t, off, sink),
                        KState::Unknown => {
                            if let Some((b, s)) = born {
                                self.emit(tid, b, t, s, sink);
                            }
                        }
                        KState::Dead => {}
                    }
                    let th = self.thread(pid, tid);
                    th.state = KState::In(ThreadState::Running);
                    th.since = t;
                }
            }
        }
    }

    fn emit(&mut self, tid: u32, start: u64, end: u64, state: ThreadState, sink: &mut dyn Sink) {
        if end <= start {
            return;
        }
        let threshold = self.threshold;
        let horizon = match self.span_seen.get(&tid) {
            Some(&seen) => seen.min(self.span_released),
            None => self.span_released,
        };
        let Some(th) = self.threads.get_mut(&tid) else {
            return;
        };
        let d = end - start;
        let before = th.cum;
        th.cum.add(state, d, threshold, true);
        let waker = match state {
            ThreadState::Blocked { .. } => th
                .waker
                .take()
                .filter(|w| w.time.saturating_add(WAKE_SLACK_NS) >= start && w.time <= end),
            _ => None,
        };
        let tot = &mut th.totals;
        match state {
            ThreadState::Running => tot.on_cpu_ns = tot.on_cpu_ns.saturating_add(d),
            ThreadState::Runnable => tot.runnable_ns = tot.runnable_ns.saturating_add(d),
            ThreadState::Blocked { syscall, .. } => {
                tot.blocked_ns = tot.blocked_ns.saturating_add(d);
                let e = tot.blocked.entry(syscall).or_insert((0, 0));
                e.0 = e.0.saturating_add(d);
                e.1 += 1;
                let by = waker.map(|w| (w.tid, w.irq));
                match by.and_then(|k| tot.woken.iter().position(|e| e.0 == k)) {
                    Some(i) => {
                        tot.woken[i].1 += 1;
                        tot.woken[i].2 = tot.woken[i].2.saturating_add(d);
                    }
                    None => match by {
                        Some(k) if tot.woken.len() < MAX_THREAD_WAKERS => tot.woken.push((k, 1, d)),
                        _ => tot.woken_unknown_ns = tot.woken_unknown_ns.saturating_add(d),
                    },
                }
            }
        }
        th.hist.push_back(Hist {
            start,
            end,
            state,
            before,
            waker,
        });
        while th.hist.len() > MAX_HISTORY || th.hist.front().is_some_and(|h| h.end < horizon) {
            th.hist.pop_front();
            th.popped += 1;
        }
        while th.on_cpu.front().is_some_and(|&(t, _)| t < horizon) {
            th.on_cpu.pop_front();
        }
        sink.thread_interval(&ThreadInterval {
            pid: th.pid,
            tid,
            start,
            end,
            state,
            waker: waker.map(|w| (w.tid, w.irq)),
        });
    }

    /// The thread's cumulative counters at `t`, if its history reaches back that far.
    pub(crate) fn cum_at(&self, tid: u32, t: u64) -> Option<Cum> {
        let th = self.threads.get(&tid)?;
        let threshold = self.threshold;
        let hist_end = th.hist.back().map_or(0, |h| h.end);
        if t >= th.since && t >= hist_end {
            let mut c = th.cum;
            let open = match th.state {
                KState::In(s) => Some(s),
                KState::Unknown => th.born.map(|_| ThreadState::Running),
                KState::Dead => None,
            };
            if let Some(s) = open {
                c.add(s, t - th.since, threshold, false);
            } else if th.state == KState::Unknown {
                return None;
            }
            return Some(c);
        }
        let i = find(th, t);
        if i == 0 {
            return None;
        }
        let h = th.hist[i - 1];
        let mut c = h.before;
        if t < h.end {
            c.add(h.state, t - h.start, threshold, false);
        } else {
            c.add(h.state, h.end - h.start, threshold, true);
        }
        Some(c)
    }

    /// The blocked stretches of `tid` that overlap `[t0, t1)`, in time order.
    fn blocked_overlapping(
        &self,
        tid: u32,
        t0: u64,
        t1: u64,
    ) -> impl Iterator<Item = (&Hist, u16, Option<StackId>)> {
        let hist = self.threads.get(&tid).map(|th| {
            let from = th.hist.partition_point(|h| h.end <= t0);
            th.hist.range(from..)
        });
        hist.into_iter()
            .flatten()
            .take_while(move |h| h.start < t1)
            .filter_map(|h| match h.state {
                ThreadState::Blocked { syscall, stack } => Some((h, syscall, stack)),
                _ => None,
            })
    }

    /// Calls `f(syscall, stack, ns)` for each long blocked stretch of `tid` inside `[t0, t1]`.
    pub(crate) fn long_blocked(
        &self,
        tid: u32,
        t0: u64,
        t1: u64,
        mut f: impl FnMut(u16, Option<StackId>, u64),
    ) {
        for (h, syscall, stack) in self.blocked_overlapping(tid, t0, t1) {
            let d = h.end - h.start;
            if d >= self.threshold && h.start >= t0 && h.end <= t1 {
                f(syscall, stack, d);
            }
        }
    }

    /// Blocked ns of `tid` inside `[t0, t1)`, in complete stretches at least the threshold
    /// long: a stretch that began before `t0` or ends after `t1` counts only its part inside.
    /// (A difference of [`Kernel::cum_at`]s would count the whole of a stretch that ends
    /// inside the window.)
    pub(crate) fn long_blocked_within(&self, tid: u32, t0: u64, t1: u64) -> u64 {
        self.blocked_overlapping(tid, t0, t1)
            .filter(|(h, _, _)| h.end - h.start >= self.threshold)
            .map(|(h, _, _)| h.end.min(t1).saturating_sub(h.start.max(t0)))
            .sum()
    }

    /// Calls `f(start, ns, stack, waker)` for each futex wait of `tid` (a blocked stretch of
    /// any length in `futex`) inside `[t0, t1]`.
    pub(crate) fn futex_waits(
        &self,
        tid: u32,
        t0: u64,
        t1: u64,
        mut f: impl FnMut(u64, u64, Option<StackId>, Option<Waker>),
    ) {
        for (h, syscall, stack) in self.blocked_overlapping(tid, t0, t1) {
            if syscall == self.futex && h.start >= t0 && h.end <= t1 {
                f(h.start, h.end - h.start, stack, h.waker);
            }
        }
    }

    /// The on-CPU stacks sampled on `tid` inside `[t0, t1]`, with their counts.
    pub(crate) fn samples_within(&self, tid: u32, t0: u64, t1: u64) -> Vec<(StackId, u64)> {
        let mut out: Vec<(StackId, u64)> = Vec::new();
        let Some(th) = self.threads.get(&tid) else {
            return out;
        };
        let from = th.on_cpu.partition_point(|&(t, _)| t < t0);
        for &(t, s) in th.on_cpu.range(from..) {
            if t > t1 {
                break;
            }
            match out.iter_mut().find(|e| e.0 == s) {
                Some(e) => e.1 += 1,
                None => out.push((s, 1)),
            }
        }
        out
    }

    /// Per-thread totals, by tid.
    pub(crate) fn totals(&self) -> impl Iterator<Item = (u32, &ThreadTotals)> {
        self.threads.iter().map(|(&tid, th)| (tid, &th.totals))
    }
}

/// The number of history entries that start at or before `t` (a `partition_point`), looked
/// for first just after the previous answer.
fn find(th: &KThread, t: u64) -> usize {
    let hist = &th.hist;
    let n = hist.len();
    let hint = th.hint.get().saturating_sub(th.popped) as usize;
    let mut i = hint.min(n);
    let found = if i > 0 && hist[i - 1].start > t {
        None
    } else {
        // Walk forward a few entries; most lookups end here.
        let mut steps = 0;
        while i < n && hist[i].start <= t && steps < 8 {
            i += 1;
            steps += 1;
        }
        (i == n || hist[i].start > t).then_some(i)
    };
    let i = found.unwrap_or_else(|| hist.partition_point(|h| h.start <= t));
    th.hint.set(th.popped + i as u64);
    i
}

#[cfg(test)]
mod tests;
