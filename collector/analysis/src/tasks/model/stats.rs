//! Everything counted for one task while the model follows it, and how each poll, idle
//! stretch, waker and holder adds to it.

use super::super::evidence::Evidence;
use super::super::hist::LogHist;
use super::super::{Poll, StackId, WakeSource, YieldSite};

/// Distinct yield sites kept per task; idle time at further ones counts as unknown.
const MAX_SITES: usize = 32;
/// Distinct wakers (tasks, threads, driver stacks) kept per task.
const MAX_WAKERS: usize = 32;
/// Distinct holders kept per task (what held the workers while it waited).
const MAX_HOLDERS: usize = 16;

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
    /// (site, idle ns, idle stretches); unknown sites under `YieldSite::default()`.
    pub sites: Vec<(YieldSite, u64, u64)>,
    /// Who scheduled each scheduled stretch that a wake began: (source, stretches). Driver
    /// and thread sources keep their stack; tasks by key.
    pub wakers: Vec<(WakeSource, u64)>,
    /// Scheduled stretches whose waker was not kept (past [`MAX_WAKERS`]).
    pub wakers_dropped: u64,
    /// Wake→poll delays at least the threshold long, and their total.
    pub delayed: u64,
    pub delayed_ns: u64,
    /// During those delays: (holder label, worker ns in its polls, of which blocked ns, of
    /// which in polls on CPU for a long poll's time, delays).
    pub holders: Vec<(u32, u64, u64, u64, u64)>,
    /// Worker time in those delays not inside any poll (the workers were elsewhere).
    pub unheld_ns: u64,
    /// Worker threads seen during those delays (most at once).
    pub workers_seen: u32,
    /// What the diagnoses need.
    pub ev: Evidence,
}

impl Stats {
    pub(super) fn add_idle(&mut self, site: YieldSite, ns: u64) {
        let at = match self.sites.iter().position(|e| e.0 == site) {
            Some(i) => i,
            None if self.sites.len() < MAX_SITES || !site.is_known() => {
                self.sites.push((site, 0, 0));
                self.sites.len() - 1
            }
            None => return self.add_idle(YieldSite::default(), ns),
        };
        let e = &mut self.sites[at];
        e.1 = e.1.saturating_add(ns);
        e.2 += 1;
    }

    pub(super) fn add_waker(&mut self, by: WakeSource) {
        // A driver wake is told apart by its stack (which names the driver); the thread, and
        // the task its thread polled last when the stack names it, do not matter.
        let by = match by {
            WakeSource::Driver {
                stack: Some(stack), ..
            } => WakeSource::Driver {
                tid: 0,
                stack: Some(stack),
                after: None,
            },
            WakeSource::Driver {
                stack: None, after, ..
            } => WakeSource::Driver {
                tid: 0,
                stack: None,
                after,
            },
            other => other,
        };
        match self.wakers.iter().position(|e| e.0 == by) {
            Some(i) => self.wakers[i].1 += 1,
            None if self.wakers.len() < MAX_WAKERS => self.wakers.push((by, 1)),
            None => self.wakers_dropped += 1,
        }
    }

    pub(super) fn add_holder(&mut self, label: u32, ns: u64, blocked: u64, long: u64) {
        match self.holders.iter().position(|e| e.0 == label) {
            Some(i) => {
                let e = &mut self.holders[i];
                e.1 = e.1.saturating_add(ns);
                e.2 = e.2.saturating_add(blocked);
                e.3 = e.3.saturating_add(long);
                e.4 += 1;
            }
            None if self.holders.len() < MAX_HOLDERS => {
                self.holders.push((label, ns, blocked, long, 1))
            }
            None => self.unheld_ns = self.unheld_ns.saturating_add(ns),
        }
    }
}

impl Stats {
    pub(crate) fn add_poll(&mut self, p: &Poll) {
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
            if self.ev.blocked_at.len() < super::super::diagnosis::MAX_MOMENTS {
                self.ev.blocked_at.push(p.start);
            }
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
