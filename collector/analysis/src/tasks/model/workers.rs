//! The threads that poll tasks: what each remembers of its last polls, which task it was
//! polling at a moment (who released a lock), and what held the runtime's workers while a
//! task waited for one (a scheduling delay).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as FxMap;

use super::super::kernel::Kernel;
use super::super::TaskKey;
use super::{intern, Model};

/// Finished polls remembered per worker thread, to see what held it during a long delay.
pub(super) const RECENT_POLLS: usize = 64;

/// A finished poll, as a worker remembers it.
#[derive(Clone, Copy)]
pub(super) struct Recent {
    pub(super) start: u64,
    pub(super) end: u64,
    /// The task's holder label.
    pub(super) label: u32,
    pub(super) task: TaskKey,
    /// On CPU for a long poll's time or more.
    pub(super) long: bool,
}

/// A thread that polls tasks: its process and its last polls.
#[derive(Default)]
pub(super) struct Worker {
    pub(super) pid: u32,
    /// It polled a task that is not meant to block: one of the runtime's workers (a
    /// blocking-pool thread polls only `kind=blocking` tasks).
    pub(super) runtime: bool,
    pub(super) recent: VecDeque<Recent>,
    /// The poll it is in (not a host's): its start and the task's label.
    pub(super) current: Option<(u64, u32)>,
    /// The task it polled last, and when that poll ended.
    pub(super) last: Option<(TaskKey, u64)>,
}

/// The task (its holder label) thread `tid` was polling at `t`, from what the model keeps
/// of its polls: its current poll or one of its recent ones.
pub(super) fn polled_at(workers: &FxMap<u32, Worker>, tid: u32, t: u64) -> Option<u32> {
    let w = workers.get(&tid)?;
    if let Some(r) = w.recent.iter().rev().find(|r| r.start <= t && t <= r.end) {
        return (r.label != u32::MAX).then_some(r.label);
    }
    // Still in the poll it is in now, if that began before `t`.
    w.current
        .filter(|&(start, _)| start <= t)
        .map(|(_, label)| label)
}

impl Model {
    /// What the runtime's worker threads of `pid` did between `from` and `to`: (holder
    /// label, ns in its polls, of which the worker was blocked, of which it was in polls on
    /// CPU for a long poll's time), worker ns in no poll, how many workers, and the ns each
    /// task's polls held a worker.
    #[allow(clippy::type_complexity)]
    pub(super) fn held(
        &mut self,
        pid: u32,
        from: u64,
        to: u64,
        kernel: &Kernel,
    ) -> (Vec<(u32, u64, u64, u64)>, u64, u32, Vec<(TaskKey, u64)>) {
        let mut out: Vec<(u32, u64, u64, u64)> = Vec::new();
        let mut behind: Vec<(TaskKey, u64)> = Vec::new();
        let mut unheld = 0u64;
        let mut workers = 0u32;
        // Stretches as long as the blocked threshold, as for blocked polls (a short futex wait
        // or a page read is not a poll holding its worker), and only their part in the window
        // (a poll blocked for 14 ms of which the delay saw 1.5 ms counts 1.5).
        let blocked = |tid: u32, a: u64, b: u64| kernel.long_blocked_within(tid, a, b);
        let mut add =
            |label: u32, ns: u64, bl: u64, long: u64| match out.iter_mut().find(|e| e.0 == label) {
                Some(e) => {
                    e.1 = e.1.saturating_add(ns);
                    e.2 = e.2.saturating_add(bl);
                    e.3 = e.3.saturating_add(long);
                }
                None => out.push((label, ns, bl, long)),
            };
        let mut hold = |task: TaskKey, ns: u64| match behind.iter_mut().find(|e| e.0 == task) {
            Some(e) => e.1 = e.1.saturating_add(ns),
            None => behind.push((task, ns)),
        };
        let long_ns = self.diag.long_poll_ns;
        // Blocking-pool threads poll only tasks meant to block; they are not the workers a
        // task waits for.
        for (&tid, w) in self
            .workers
            .iter()
            .filter(|(_, w)| w.pid == pid && w.runtime)
        {
            workers += 1;
            let mut in_polls = 0u64;
            for r in &w.recent {
                let (a, b) = (r.start.max(from), r.end.min(to));
                if b > a {
                    in_polls = in_polls.saturating_add(b - a);
                    let long = if r.long { b - a } else { 0 };
                    let bl = blocked(tid, a, b);
                    add(r.label, b - a, bl, long);
                    // Only culprits list the tasks that waited behind them.
                    if bl > 0 || long > 0 {
                        hold(r.task, b - a);
                    }
                }
            }
            let current = self.in_poll(tid);
            if let Some((key, task)) = current.and_then(|k| Some((k, self.tasks.get(&k)?))) {
                let a = task.poll_start.max(from);
                if to > a {
                    in_polls = in_polls.saturating_add(to - a);
                    // On CPU for a long poll's time needs at least that long in the poll.
                    let cpu = match task.cum0 {
                        Some(c0) if to - task.poll_start >= long_ns => {
                            kernel.cum_at(tid, to).map_or(0, |c1| c1.since(&c0).running)
                        }
                        _ => 0,
                    };
                    let long = if cpu >= long_ns { to - a } else { 0 };
                    let label = task.label.unwrap_or(u32::MAX);
                    let bl = blocked(tid, a, to);
                    add(label, to - a, bl, long);
                    if bl > 0 || long > 0 {
                        hold(key, to - a);
                    }
                }
            }
            unheld = unheld.saturating_add((to - from).saturating_sub(in_polls));
        }
        // Polls of tasks not named yet.
        if out.iter().any(|e| e.0 == u32::MAX) {
            let unknown = intern(
                &mut self.strings,
                &mut self.string_ids,
                "tasks not named yet".to_owned(),
            );
            for e in out.iter_mut().filter(|e| e.0 == u32::MAX) {
                e.0 = unknown;
            }
        }
        (out, unheld, workers, behind)
    }
}
