//! What the task model gathers, per task, for the diagnoses ([`super::diagnosis`]): long
//! polls and the stacks they ran, futex waits inside polls and who ended them, self-wakes,
//! the task's live wakers, waits at a lock whose holder was idle elsewhere, and a
//! `spawn_blocking` job's wait for a pool thread. Every list is bounded.

use super::{StackId, TaskKey};

/// Distinct stacks kept per task and kind of evidence.
const MAX_STACKS: usize = 16;
/// Distinct lock wakers kept per task.
const MAX_LOCK_WAKERS: usize = 16;
/// Distinct (waiter site, holder) pairs kept per task.
const MAX_HELD: usize = 8;

/// Who ended a futex wait: the waking thread, and the task it was polling then (its label
/// among holders, see `Model::label`), when it was in a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockWaker {
    pub tid: u32,
    pub task: Option<u32>,
}

/// A wait at one yield site that ended when a task that had been idle meanwhile woke it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub site: Option<StackId>,
    pub holder: TaskKey,
    pub holder_site: Option<StackId>,
    pub overlap_ns: u64,
    pub count: u64,
    pub at: Vec<u64>,
}

/// One task's evidence.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    pub long_polls: u64,
    pub long_cpu_ns: u64,
    pub longest_cpu_ns: u64,
    /// Starts of the long polls (the first [`super::diagnosis::MAX_MOMENTS`]).
    pub long_at: Vec<u64>,
    /// On-CPU stacks sampled in long polls: (stack, samples).
    pub long_stacks: Vec<(StackId, u64)>,
    pub futex_waits: u64,
    pub futex_ns: u64,
    /// Waits whose waker thread is known.
    pub futex_named: u64,
    pub futex_at: Vec<u64>,
    pub futex_stacks: Vec<(StackId, u64)>,
    /// (waker, waits, ns).
    pub futex_by: Vec<(LockWaker, u64, u64)>,
    pub futex_tids: Vec<(u32, u64)>,
    /// Wakes that ran inside its own poll, and where.
    pub self_wakes: u64,
    pub self_at: Vec<u64>,
    pub self_stacks: Vec<(StackId, u64)>,
    /// Wakers alive (stored somewhere): clones less drops and wakes by value.
    pub wakers: i64,
    pub clones: u64,
    /// It returned Pending with no live waker at this time and was not woken since.
    pub lost_since: Option<u64>,
    /// (since, idle ns, no waker ever cloned) of the first such idle stretch.
    pub lost: Option<(u64, u64, bool)>,
    /// Its last idle stretch: (start, end, site stack).
    pub last_idle: Option<(u64, u64, Option<StackId>)>,
    pub held: Vec<Held>,
    /// Starts of its long waits for a worker.
    pub delay_at: Vec<u64>,
    /// Starts of its polls that blocked their worker.
    pub blocked_at: Vec<u64>,
    /// Its wait for a thread from spawn to first poll (a `spawn_blocking` job): (spawn, ns).
    pub first_wait: Option<(u64, u64)>,
}

/// The entry of `v` that `is` picks, made with `new` if there is none and `v` has fewer
/// than `max` (`None`: full).
fn entry<T>(
    v: &mut Vec<T>,
    max: usize,
    is: impl Fn(&T) -> bool,
    new: impl FnOnce() -> T,
) -> Option<&mut T> {
    match v.iter().position(is) {
        Some(i) => Some(&mut v[i]),
        None if v.len() < max => {
            v.push(new());
            v.last_mut()
        }
        None => None,
    }
}

fn add_stack(v: &mut Vec<(StackId, u64)>, s: StackId, n: u64) {
    if let Some(e) = entry(v, MAX_STACKS, |e| e.0 == s, || (s, 0)) {
        e.1 = e.1.saturating_add(n);
    }
}

fn moment(v: &mut Vec<u64>, t: u64) {
    if v.len() < super::diagnosis::MAX_MOMENTS {
        v.push(t);
    }
}

/// The most weighty entry of a (stack, weight) list.
pub(crate) fn top_stack(v: &[(StackId, u64)]) -> Option<StackId> {
    v.iter().max_by_key(|e| e.1).map(|e| e.0)
}

impl Evidence {
    pub(crate) fn long_poll(&mut self, start: u64, on_cpu: u64, stacks: &[(StackId, u64)]) {
        self.long_polls += 1;
        self.long_cpu_ns = self.long_cpu_ns.saturating_add(on_cpu);
        self.longest_cpu_ns = self.longest_cpu_ns.max(on_cpu);
        moment(&mut self.long_at, start);
        for &(s, n) in stacks {
            add_stack(&mut self.long_stacks, s, n);
        }
    }

    pub(crate) fn futex_wait(
        &mut self,
        start: u64,
        ns: u64,
        tid: u32,
        stack: Option<StackId>,
        by: Option<LockWaker>,
    ) {
        self.futex_waits += 1;
        self.futex_ns = self.futex_ns.saturating_add(ns);
        moment(&mut self.futex_at, start);
        if let Some(s) = stack {
            add_stack(&mut self.futex_stacks, s, ns);
        }
        if let Some(e) = entry(
            &mut self.futex_tids,
            MAX_STACKS,
            |e| e.0 == tid,
            || (tid, 0),
        ) {
            e.1 = e.1.saturating_add(ns);
        }
        let Some(by) = by else { return };
        self.futex_named += 1;
        if let Some(e) = entry(
            &mut self.futex_by,
            MAX_LOCK_WAKERS,
            |e| e.0 == by,
            || (by, 0, 0),
        ) {
            e.1 += 1;
            e.2 = e.2.saturating_add(ns);
        }
    }

    pub(crate) fn self_wake(&mut self, t: u64, stack: Option<StackId>) {
        self.self_wakes += 1;
        moment(&mut self.self_at, t);
        if let Some(s) = stack {
            add_stack(&mut self.self_stacks, s, 1);
        }
    }

    /// A wait at `site` from `since` to `now` that task `holder` ended, when the holder's own
    /// last idle stretch (at `holder_site`) covered at least `share` of it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn woken_by_task(
        &mut self,
        since: u64,
        now: u64,
        site: Option<StackId>,
        holder: TaskKey,
        holder_idle: Option<(u64, u64, Option<StackId>)>,
        share: f64,
    ) {
        let Some((hs, he, holder_site)) = holder_idle else {
            return;
        };
        let wait = now.saturating_sub(since);
        let overlap = he.min(now).saturating_sub(hs.max(since));
        if wait == 0 || holder_site.is_none() || (overlap as f64) < share * wait as f64 {
            return;
        }
        let is = |h: &Held| h.site == site && h.holder == holder && h.holder_site == holder_site;
        let new = || Held {
            site,
            holder,
            holder_site,
            overlap_ns: 0,
            count: 0,
            at: Vec::new(),
        };
        if let Some(h) = entry(&mut self.held, MAX_HELD, is, new) {
            h.overlap_ns = h.overlap_ns.saturating_add(overlap);
            h.count += 1;
            moment(&mut h.at, since);
        }
    }

    /// The task returned Pending at `t`: with no live waker (and wakers counted), nothing
    /// can wake it.
    pub(crate) fn pending(&mut self, t: u64, counted: bool) {
        if counted && self.wakers <= 0 && self.lost.is_none() {
            self.lost_since = Some(t);
        }
    }

    /// An idle stretch from `since` ends at `t` (a wake, a poll, the task's end, the
    /// recording's end).
    pub(crate) fn idle_ends(&mut self, since: u64, t: u64, site: Option<StackId>) {
        self.last_idle = Some((since, t, site));
        if let Some(s) = self.lost_since.take() {
            let never = self.clones == 0;
            self.lost.get_or_insert((s, t.saturating_sub(s), never));
        }
    }

    /// A wake: the task was not lost after all.
    pub(crate) fn woken(&mut self) {
        self.lost_since = None;
    }
}
