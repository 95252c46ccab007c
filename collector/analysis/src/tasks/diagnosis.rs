//! Diagnoses: the classic async bugs, each named with the task and the program's line at
//! fault, the time it cost and the evidence (`diagnoses[]` of `iotrace report --json`, see
//! `collector/REPORT.md`). The task model gathers the evidence while it streams
//! ([`super::model`], [`super::evidence`]); [`super::rows`] turns each finished task's evidence
//! into diagnoses with the rules here; [`super::naming`] names their stacks, and
//! [`settle`] then drops what the names show not to apply.
//!
//! Each kind's rule has its thresholds in [`DiagnosisOptions`], with documented defaults.

use serde::Serialize;

use super::StackId;

/// The kinds, in the order the report lists them (culprits first, then symptoms).
pub const KINDS: [&str; 8] = [
    "blocked_in_poll",
    "long_poll",
    "lock_contention",
    "held_across_await",
    "self_wake",
    "lost_waker",
    "blocking_pool",
    "scheduling_delay",
];

/// Most moments kept per diagnosis (markers on the timeline and in the exports).
pub const MAX_MOMENTS: usize = 64;

/// Thresholds of the diagnoses.
#[derive(Debug, Clone)]
pub struct DiagnosisOptions {
    /// A poll on CPU at least this long is a `long_poll` (default 10 ms: a future that runs
    /// this long between awaits holds its worker from every other task queued there).
    pub long_poll_ns: u64,
    /// A task is `self_wake` when at least this share of its wakes are its own (default 0.5)
    /// ...
    pub self_wake_share: f64,
    /// ... and it woke itself at least this many times (default 1,000).
    pub self_wake_min: u64,
    /// A task idle with no live waker at least this long is a `lost_waker` (default 100 ms).
    pub lost_waker_ns: u64,
    /// A `spawn_blocking` job that waited at least this long for a pool thread counts
    /// towards `blocking_pool` (default 1 ms) ...
    pub blocking_wait_ns: u64,
    /// ... and the diagnosis needs at least this many such jobs spawned at one place
    /// (default 10).
    pub blocking_min_jobs: u64,
    /// Futex waits inside a task's polls make a `lock_contention` when they add up to at
    /// least this share of its poll time (default 0.05) and there are at least 2 of them.
    pub lock_share: f64,
    /// A tokio lock await is `held_across_await` when the task that held it was idle at
    /// another await for at least this share of the wait (default 0.5), at least twice.
    pub held_share: f64,
}

impl Default for DiagnosisOptions {
    fn default() -> Self {
        DiagnosisOptions {
            long_poll_ns: 10_000_000,
            self_wake_share: 0.5,
            self_wake_min: 1_000,
            lost_waker_ns: 100_000_000,
            blocking_wait_ns: 1_000_000,
            blocking_min_jobs: 10,
            lock_share: 0.05,
            held_share: 0.5,
        }
    }
}

/// One diagnosis: what is wrong, in which task, at which line, what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diagnosis {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// The task at fault (for `blocking_pool`, the jobs' name; for `scheduling_delay`, the
    /// task that waited), its row's `id` and `pid` in `tasks`.
    pub task: String,
    pub task_id: u64,
    pub pid: u32,
    /// Where that task was spawned.
    pub location: Option<String>,
    /// The program's line at fault (`function at file:line`) when the trace names it: the
    /// spin, the lock, the await under the lock, the future, the `spawn_blocking`.
    pub line: Option<String>,
    /// The stack behind `line`, innermost first, when there is one.
    pub stack: Option<Vec<String>>,
    /// How many tasks it names: the tasks spawned at one place are one diagnosis (its
    /// `task` and `task_id` are the costliest one's).
    pub tasks: u64,
    /// How many times it happened (polls, waits, wakes, jobs; see REPORT.md per kind).
    pub count: u64,
    /// What it cost, in the kind's own terms (see REPORT.md): time on CPU in long polls,
    /// waiting for the lock, waiting behind the holder, idle for ever, spent in self-woken
    /// polls, jobs' wait for a thread, blocked in polls, waiting for a worker.
    pub cost_ns: u64,
    /// When it happened: the start of the first [`MAX_MOMENTS`] instances, nanoseconds since
    /// the recording started.
    pub at_ns: Vec<u64>,
    /// The worker thread it happened on most (0 when none).
    pub tid: u32,
    /// The evidence, one sentence (the renderer adds it to the message).
    pub evidence: String,
    /// Kind-specific figures (null when not this kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_poll: Option<LongPoll>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockWaits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldAcross>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_wake: Option<SelfWake>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<BlockingPool>,
    /// Tasks that waited for a worker while this task held it (for the culprits).
    pub delayed: Vec<Victim>,
    /// For `scheduling_delay`: the delays and what held the workers (as in `warnings[]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<super::Delay>,
    #[serde(skip)]
    pub(crate) stack_id: Option<StackId>,
    #[serde(skip)]
    pub(crate) stack2_id: Option<StackId>,
}

/// A task that waited for a worker behind a culprit's polls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Victim {
    /// `tasks spawned at FILE:LINE:COL`, or `` `name` ``.
    pub task: String,
    /// Its wait that those polls overlapped.
    pub waited_ns: u64,
    pub delays: u64,
}

/// `long_poll`: polls on CPU past the threshold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LongPoll {
    pub threshold_ns: u64,
    pub longest_ns: u64,
    pub polls: u64,
}

/// `lock_contention`: futex waits in polls and who ended them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockWaits {
    pub waits: u64,
    pub wait_ns: u64,
    /// Waits whose waker thread (and, when it was polling, task) is known.
    pub named: u64,
    /// Whether the trace has the kernel's wakeups at all (`record --no-wakeups` has not).
    pub wakeups_recorded: bool,
    /// Who woke the waits, most first.
    pub woken_by: Vec<LockHolder>,
}

/// A thread that ended futex waits (it released the lock), and the task it was polling.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LockHolder {
    pub tid: u32,
    pub thread: String,
    /// `tasks spawned at …` / `` `name` ``; null when the thread was in no poll.
    pub task: Option<String>,
    pub waits: u64,
    pub wait_ns: u64,
}

/// `held_across_await`: the task (the diagnosis's) held a tokio lock while idle at another
/// await (`line`); other tasks waited at the lock meanwhile and it woke them when it let go.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldAcross {
    /// The await of the lock the others waited at.
    pub lock_line: Option<String>,
    /// The tasks that waited, most first: their wait while the holder was idle.
    pub waiters: Vec<Victim>,
}

/// `self_wake`: a task that mostly wakes itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SelfWake {
    pub self_wakes: u64,
    pub wakes: u64,
    pub polls: u64,
    /// Polls per second of its life.
    pub polls_per_s: f64,
}

/// `blocking_pool`: `spawn_blocking` jobs that waited for a pool thread.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockingPool {
    pub jobs: u64,
    /// Jobs that waited at least the threshold.
    pub waited: u64,
    pub longest_wait_ns: u64,
    /// Most pool threads running jobs at once.
    pub peak_threads: u64,
}

/// Whether a blocked poll's wait was the runtime's own, not the program's: the first frame
/// out from the kernel that is neither the C library's nor a lock's is tokio's or mio's (a
/// wait on tokio's timer-wheel lock under load; `accept4` on a non-blocking listener that the
/// kernel held while it grew the file table). tasks[] and warnings[] still count it.
fn runtime_internal(d: &Diagnosis) -> bool {
    if !matches!(d.kind, "blocked_in_poll" | "lock_contention") {
        return false;
    }
    let Some(stack) = &d.stack else { return false };
    const PASS: [&str; 6] = [
        "parking_lot",
        "lock_api::",
        "std::sys::",
        "std::sync::",
        "<std::sync::",
        "<parking_lot",
    ];
    let first = stack.iter().find(|f| {
        // Kernel frames have no ` at `, nor do the C library's without DWARF; both are named
        // in lower case with no `::`.
        f.contains("::") && !PASS.iter().any(|p| f.starts_with(p))
    });
    first.is_some_and(|f| {
        let f = f.trim_start_matches('<');
        f.starts_with("tokio::") || f.starts_with("mio::")
    })
}

/// Drops the diagnoses that their named stacks show not to apply: a runtime-internal wait
/// ([`runtime_internal`]), a `held_across_await`
/// whose waiters did not wait at a tokio lock or semaphore, or whose holder was itself
/// waiting at one (a queue of tasks taking the lock in turn).
pub fn settle(diagnoses: &mut Vec<Diagnosis>) {
    diagnoses.retain(|d| !runtime_internal(d));
    diagnoses.retain(|d| {
        let Some(held) = &d.held else { return true };
        held.lock_line.as_deref().is_some_and(is_sync_await)
            && !d.line.as_deref().is_some_and(is_sync_await)
    });
    // One holder idle at one await while others waited at one lock is one diagnosis, whatever
    // stacks the waits' places had.
    let mut merged: Vec<Diagnosis> = Vec::with_capacity(diagnoses.len());
    for d in diagnoses.drain(..) {
        let lock = |d: &Diagnosis| d.held.as_ref().map(|h| h.lock_line.clone());
        let same = merged.iter_mut().find(|m| {
            m.held.is_some()
                && (m.kind, m.pid, m.task_id, &m.line) == (d.kind, d.pid, d.task_id, &d.line)
                && lock(m) == lock(&d)
        });
        match same {
            Some(m) => absorb(m, d),
            None => merged.push(d),
        }
    }
    *diagnoses = merged;
}

/// Adds `d`'s counts, moments, waiters and lock wakers to `into` (the same diagnosis of
/// another task spawned at the same place, or at another stack of the same place).
pub(crate) fn absorb(into: &mut Diagnosis, d: Diagnosis) {
    if (into.pid, into.task_id) != (d.pid, d.task_id) {
        into.tasks = into.tasks.saturating_add(d.tasks);
    }
    into.count = into.count.saturating_add(d.count);
    into.cost_ns = into.cost_ns.saturating_add(d.cost_ns);
    into.at_ns.extend(d.at_ns);
    into.at_ns.sort_unstable();
    into.at_ns.dedup();
    into.at_ns.truncate(MAX_MOMENTS);
    if let (Some(a), Some(b)) = (&mut into.held, d.held) {
        for w in b.waiters {
            match a.waiters.iter_mut().find(|x| x.task == w.task) {
                Some(x) => {
                    x.waited_ns = x.waited_ns.saturating_add(w.waited_ns);
                    x.delays = x.delays.saturating_add(w.delays);
                }
                None => a.waiters.push(w),
            }
        }
        a.waiters.sort_by_key(|v| std::cmp::Reverse(v.waited_ns));
    }
    if let (Some(a), Some(b)) = (&mut into.lock, d.lock) {
        a.waits = a.waits.saturating_add(b.waits);
        a.wait_ns = a.wait_ns.saturating_add(b.wait_ns);
        a.named = a.named.saturating_add(b.named);
        for h in b.woken_by {
            match a
                .woken_by
                .iter_mut()
                .find(|x| x.tid == h.tid && x.task == h.task)
            {
                Some(x) => {
                    x.waits = x.waits.saturating_add(h.waits);
                    x.wait_ns = x.wait_ns.saturating_add(h.wait_ns);
                }
                None => a.woken_by.push(h),
            }
        }
        a.woken_by.sort_by_key(|h| std::cmp::Reverse(h.waits));
    }
    if let (Some(a), Some(b)) = (&mut into.long_poll, d.long_poll) {
        a.longest_ns = a.longest_ns.max(b.longest_ns);
        a.polls = a.polls.saturating_add(b.polls);
    }
    if let (Some(a), Some(b)) = (&mut into.self_wake, d.self_wake) {
        a.self_wakes = a.self_wakes.saturating_add(b.self_wakes);
        a.wakes = a.wakes.saturating_add(b.wakes);
        a.polls = a.polls.saturating_add(b.polls);
        a.polls_per_s += b.polls_per_s;
    }
    for v in d.delayed {
        match into.delayed.iter_mut().find(|x| x.task == v.task) {
            Some(x) => {
                x.waited_ns = x.waited_ns.saturating_add(v.waited_ns);
                x.delays = x.delays.saturating_add(v.delays);
            }
            None => into.delayed.push(v),
        }
    }
    into.delayed.sort_by_key(|v| std::cmp::Reverse(v.waited_ns));
}

/// Whether a yield-site line names an await on one of tokio's locks, semaphores or channels.
pub fn is_sync_await(line: &str) -> bool {
    const SYNC: [&str; 6] = [
        "tokio::sync::mutex",
        "tokio::sync::rwlock",
        "tokio::sync::semaphore",
        "tokio::sync::batch_semaphore",
        "OwnedMutexGuard",
        "Semaphore::acquire",
    ];
    SYNC.iter().any(|s| line.contains(s))
}
