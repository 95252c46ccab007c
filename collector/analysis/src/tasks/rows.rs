//! What the task analysis reports: one row per task, one warning per task that blocked its
//! worker, and totals. Serialized as part of `iotrace report --json` (see `collector/REPORT.md`).
//! The number of rows kept is bounded: past [`MAX_ROWS`] the least interesting tasks are
//! counted but not listed.

use std::collections::HashMap;

use serde::Serialize;

use super::hist::LogHist;
use super::model::Task;
use super::TaskKey;
use crate::summary::syscall_name;

/// Most task rows listed; more tasks are counted in [`TaskTotals::omitted`].
pub const MAX_ROWS: usize = 10_000;
/// Most warnings listed; more are counted in [`TaskTotals::warnings_omitted`].
pub const MAX_WARNINGS: usize = 1_000;

/// One task, as `tasks[]` of the JSON report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskRow {
    /// The task's span id (never reused within its process).
    pub id: u64,
    pub pid: u32,
    pub name: String,
    /// `task`, `local` or `blocking`.
    pub kind: String,
    /// Where it was spawned (`file:line[:col]`), when known.
    pub location: Option<String>,
    /// The program's own id (tokio's `task.id`).
    pub task_id: Option<u64>,
    pub polls: u64,
    /// Time inside polls.
    pub busy_ns: u64,
    /// Of the busy time: the worker on a CPU, preempted, and blocked (any length).
    pub on_cpu_ns: u64,
    pub preempted_ns: u64,
    pub blocked_ns: u64,
    /// Spawned or woken, waiting for a worker.
    pub scheduled_ns: u64,
    pub scheduled_p50_ns: Option<u64>,
    pub scheduled_p99_ns: Option<u64>,
    /// Returned Pending, waiting to be woken.
    pub idle_ns: u64,
    /// Blocked time inside polls, in stretches at least as long as the threshold.
    pub blocked_in_poll_ns: u64,
    /// Polls with at least one such stretch.
    pub blocked_polls: u64,
    pub longest_poll_ns: u64,
    pub wakes: u64,
    /// Spawn and end, nanoseconds since the recording started (null when unknown/still open).
    pub spawned_ns: Option<u64>,
    pub closed_ns: Option<u64>,
    /// Polls whose worker's kernel state was not known (no perf, or records lost).
    pub unmeasured_polls: u64,
    #[serde(skip)]
    pub(crate) syscall: Option<u16>,
    #[serde(skip)]
    pub(crate) worker: Option<(u32, usize)>,
    #[serde(skip)]
    pub(crate) stack: Option<super::StackId>,
    /// Where it yielded: the sites with the most idle time first (at most
    /// [`MAX_YIELD_SITES`] known ones), then the idle time whose site is not known, if any.
    pub yield_sites: Vec<YieldSiteRow>,
    /// Idle time whose yield site is not known.
    pub yield_unknown_ns: u64,
    /// Who began its scheduled stretches (one count per stretch that a wake began).
    pub woken_by: WokenBy,
    /// The tasks and threads that woke it most, most first (at most [`MAX_WAKER_ROWS`]).
    pub wakers: Vec<WakerRow>,
    /// Wake→poll delays at least the `--sched-delay` threshold long, and their total.
    pub delayed_wakes: u64,
    pub delayed_ns: u64,
    /// Driver wakes, resolved into `woken_by` once their stacks are named.
    #[serde(skip)]
    pub(crate) driver_wakes: Vec<(Option<super::StackId>, Option<super::TaskKey>, u64)>,
}

/// A row that gets a `scheduling_delay` warning, with what held the workers in its delays.
#[derive(Debug, Clone)]
pub(crate) struct DelayedRow {
    row: TaskRow,
    /// (holder label, held ns, of which blocked, of which in long polls, delays).
    holders: Vec<(u32, u64, u64, u64, u64)>,
    label: Option<u32>,
    unheld_ns: u64,
    workers: u32,
    /// When its long delays began.
    at: Vec<u64>,
}

/// Most known yield sites listed per task.
pub const MAX_YIELD_SITES: usize = 5;
/// Most wakers listed per task.
pub const MAX_WAKER_ROWS: usize = 5;

/// One place where a task's future returned Pending (`tasks[].yield_sites[]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct YieldSiteRow {
    /// In one line: the future that stored the waker, in which of the program's functions,
    /// at which line (`tokio::time::sleep::Sleep in app::tick at src/main.rs:40`); else the
    /// user's spans there (`in span conn > read_request`); `unknown` when neither is known.
    pub site: String,
    /// The stack there, innermost frame first (null without one).
    pub stack: Option<Vec<String>>,
    /// The user's spans entered there, outermost first (`a > b`).
    pub spans: Option<String>,
    pub idle_ns: u64,
    /// Idle stretches that waited there.
    pub count: u64,
    #[serde(skip)]
    pub(crate) stack_id: Option<super::StackId>,
    /// `spans` as the model's chain index, until the rows are finished.
    #[serde(skip)]
    pub(crate) chain: Option<u32>,
}

/// Who began a task's scheduled stretches (`tasks[].woken_by`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WokenBy {
    /// The I/O driver (readiness of a socket, pipe, ...).
    pub io: u64,
    /// The timer driver (a sleep, interval or timeout elapsed).
    pub timer: u64,
    /// Another task's poll (or its own: a yield), or a task that finished (its JoinHandle).
    pub task: u64,
    /// A thread that never polled a task (outside the runtime).
    pub thread: u64,
    /// A runtime thread outside any poll whose stack did not say which driver.
    pub unknown: u64,
}

/// A task or thread that woke a task (`tasks[].wakers[]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WakerRow {
    /// `task`, `thread`, `io`, `timer` or `unknown`.
    pub kind: String,
    /// The waking task's row `id`, or the thread's tid.
    pub id: u64,
    pub name: String,
    pub count: u64,
}

/// What held the workers while a task waited for one (`warnings[].delay`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delay {
    /// The task's wake→poll p99, and the threshold it reached.
    pub p99_ns: u64,
    pub threshold_ns: u64,
    /// Delays at least the threshold long, out of `wakes` scheduled stretches.
    pub delayed: u64,
    pub wakes: u64,
    pub delayed_ns: u64,
    /// Worker threads of its process seen during those delays.
    pub workers: u32,
    /// Worker time during those delays, in polls (by task, most first) and in no poll.
    pub held_by: Vec<Holder>,
    pub unheld_ns: u64,
}

/// Polls of the tasks spawned at one place (or of one task without a known place) that held
/// the workers (`delay.held_by[]`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holder {
    /// `tasks spawned at FILE:LINE:COL`, or `` `name` ``.
    pub task: String,
    pub held_ns: u64,
    /// Of that, the worker was blocked in the kernel.
    pub blocked_ns: u64,
    /// Of that, in polls that ran on CPU for a long poll's time or more.
    pub long_poll_ns: u64,
    /// Delays during which it held a worker.
    pub delays: u64,
}

/// One warning (`warnings[]`): a task that blocked its worker thread inside polls
/// (`blocked_in_poll`), or one that waited long for a worker while the workers were held by
/// blocked polls (`scheduling_delay`, with `delay`). Its one-line text (`message` in the JSON
/// report) is the renderer's (`iotrace_render::warning`).
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    /// `blocked_in_poll` or `scheduling_delay`.
    pub kind: &'static str,
    /// The task's name, and its row's `id` and `pid` in `tasks`.
    pub task: String,
    pub task_id: u64,
    pub pid: u32,
    pub location: Option<String>,
    /// Polls in which the worker blocked, out of `total_polls`.
    pub polls: u64,
    pub total_polls: u64,
    /// Blocked time inside those polls (stretches at least the threshold long).
    pub blocked_ns: u64,
    /// The syscall most of that time was spent in.
    pub syscall: String,
    /// The off-CPU stack of those stretches, innermost frame first, when the trace has stacks.
    pub stack: Option<Vec<String>>,
    /// That stack's id in the trace's stack tree (named by [`super::naming`]).
    #[serde(skip)]
    pub stack_id: Option<super::StackId>,
    /// The worker thread that blocked most.
    pub worker_tid: u32,
    pub worker: String,
    /// Other worker threads the task blocked.
    pub other_workers: u64,
    /// `stack`'s frames with whether each is the kernel's (the renderers pick the lines to show).
    #[serde(skip)]
    pub frames: Vec<(String, bool)>,
    /// For `scheduling_delay`: the delays and what held the workers (null otherwise).
    pub delay: Option<Delay>,
}

/// Share of the held worker time that must have been blocked in the kernel for a
/// `scheduling_delay` warning: the workers were held by polls that blocked, which the task
/// that waited can name and fix, not by a fair queue of short polls.
pub const DELAY_BLOCKED_SHARE: f64 = 0.25;

/// Totals over every task (`task_summary` in JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskTotals {
    pub tasks: u64,
    /// Tasks counted but not listed in `tasks` (more than the listing limit).
    pub omitted: u64,
    pub polls: u64,
    pub busy_ns: u64,
    pub blocked_in_poll_ns: u64,
    pub warned_tasks: u64,
    pub warnings_omitted: u64,
    /// Diagnoses found but not listed (more than the listing limit).
    pub diagnoses_omitted: u64,
    /// Wake→poll latency over all tasks.
    pub scheduled_p50_ns: Option<u64>,
    pub scheduled_p99_ns: Option<u64>,
    /// Shortest blocked stretch inside a poll that counts as blocking the worker.
    pub blocked_threshold_ns: u64,
    /// Share of its poll time a task must spend in such stretches to be warned about.
    pub warn_share: f64,
    pub unmeasured_polls: u64,
    /// Span events that arrived after later ones had been analysed; counted, partly ignored.
    pub late_events: u64,
    /// Whether the worker threads' kernel states were recorded (perf switch records).
    pub kernel_view: bool,
}

/// Collects finished tasks, keeping at most [`MAX_ROWS`].
#[derive(Default)]
pub(crate) struct Results {
    pub(crate) rows: Vec<TaskRow>,
    pub(crate) warned: Vec<TaskRow>,
    pub(crate) totals: TaskTotals,
    pub(crate) start_ns: u64,
    pub(crate) sched: LogHist,
    pub(crate) warn_share: f64,
    /// Rows that get a `scheduling_delay` warning, with their holders (label, ns, blocked,
    /// delays) and the time no poll held.
    pub(crate) delayed: Vec<DelayedRow>,
    pub(crate) delay_threshold_ns: u64,
    /// One blocked poll alone is warned about only if it blocked at least this long (see
    /// [`warrants_warning`]).
    pub(crate) lone_block_ns: u64,
    pub(crate) diag: super::DiagnosisOptions,
    /// Diagnoses found so far, and what they need at the end.
    pub(crate) pending: super::rules::Pending,
}

/// How many times the blocked threshold a task's only blocked poll must last to be warned
/// about. One short wait (a worker meeting a runtime-internal lock once, e.g. tokio's timer
/// wheel mutex for 0.3 ms in 1 of 78 polls) is not a bug a user can act on; a task that blocks
/// again and again, or once for long (a synchronous DNS lookup), is.
pub const LONE_BLOCK_FACTOR: u64 = 10;

/// The warning rule: the task is not meant to block, its blocked stretches reach `warn_share`
/// of its poll time, and it blocked in at least two polls or once for `lone_block_ns` or more.
fn warrants_warning(row: &TaskRow, warn_share: f64, lone_block_ns: u64) -> bool {
    let share = row.blocked_in_poll_ns as f64 / row.busy_ns.max(1) as f64;
    row.kind != "blocking"
        && row.blocked_polls > 0
        && share >= warn_share
        && (row.blocked_polls >= 2 || row.blocked_in_poll_ns >= lone_block_ns)
}

fn interest(r: &TaskRow) -> (u64, u64) {
    (r.blocked_in_poll_ns, r.busy_ns)
}

impl Results {
    /// Task `holder`'s polls held a worker for `ns` while a task labelled `victim` waited.
    pub(crate) fn behind(&mut self, holder: TaskKey, victim: u32, ns: u64) {
        self.pending.behind(holder, victim, ns);
    }

    pub(crate) fn add(&mut self, key: TaskKey, task: Task) {
        let label = task.label;
        let info = task.info.map(|i| *i).unwrap_or_else(|| super::TaskInfo {
            name: format!("span {}", key.span),
            kind: "task".to_owned(),
            location: None,
            task_id: None,
            tokio: true,
        });
        let s = task.stats;
        let rel = |t: u64| t.saturating_sub(self.start_ns);
        let worker = s
            .workers
            .iter()
            .max_by_key(|w| w.1)
            .map(|w| (w.0, s.workers.len() - 1));
        let syscall = s.syscalls.iter().max_by_key(|w| w.1).map(|w| w.0);
        let stack = s.stacks.iter().max_by_key(|w| w.1).map(|w| w.0);
        self.sched.merge(&s.sched);
        let mut sites: Vec<&(super::YieldSite, u64, u64)> =
            s.sites.iter().filter(|e| e.0.is_known()).collect();
        sites.sort_by_key(|e| std::cmp::Reverse(e.1));
        let unknown = s.sites.iter().find(|e| !e.0.is_known());
        let yield_unknown_ns = unknown.map_or(0, |e| e.1);
        let mut yield_sites: Vec<YieldSiteRow> = sites
            .iter()
            .take(MAX_YIELD_SITES)
            .map(|e| YieldSiteRow {
                idle_ns: e.1,
                count: e.2,
                stack_id: e.0.stack,
                // Named in `finish`: the chains' names are the model's.
                chain: e.0.spans,
                ..YieldSiteRow::default()
            })
            .collect();
        if let Some(u) = unknown {
            yield_sites.push(YieldSiteRow {
                site: "unknown".to_owned(),
                idle_ns: u.1,
                count: u.2,
                ..YieldSiteRow::default()
            });
        }
        let mut woken_by = WokenBy::default();
        let mut driver_wakes = Vec::new();
        let mut wakers: Vec<(super::WakeSource, u64)> = s.wakers.clone();
        for &(by, n) in &s.wakers {
            match by {
                super::WakeSource::Task(_) => woken_by.task += n,
                super::WakeSource::Thread { .. } => woken_by.thread += n,
                super::WakeSource::Driver { stack, after, .. } => {
                    woken_by.unknown += n;
                    driver_wakes.push((stack, after, n));
                }
            }
        }
        woken_by.unknown += s.wakers_dropped;
        wakers.sort_by_key(|e| std::cmp::Reverse(e.1));
        let row = TaskRow {
            id: key.span,
            pid: key.pid,
            name: info.name,
            kind: info.kind,
            location: info.location,
            task_id: info.task_id,
            polls: s.polls,
            busy_ns: s.busy_ns,
            on_cpu_ns: s.on_cpu_ns,
            preempted_ns: s.preempted_ns,
            blocked_ns: s.blocked_ns,
            scheduled_ns: s.scheduled_ns,
            scheduled_p50_ns: s.sched.quantile(0.5),
            scheduled_p99_ns: s.sched.quantile(0.99),
            idle_ns: s.idle_ns,
            blocked_in_poll_ns: s.blocked_in_poll_ns,
            blocked_polls: s.blocked_polls,
            longest_poll_ns: s.longest_poll_ns,
            wakes: s.wakes,
            spawned_ns: task.created.map(rel),
            closed_ns: task.closed.map(rel),
            unmeasured_polls: s.unmeasured_polls,
            syscall,
            worker,
            stack,
            yield_sites,
            yield_unknown_ns,
            woken_by,
            wakers: Vec::new(),
            delayed_wakes: s.delayed,
            delayed_ns: s.delayed_ns,
            driver_wakes,
        };
        let row = TaskRow {
            wakers: waker_rows(&wakers),
            ..row
        };
        if delay_warrants(&row, &s, self.delay_threshold_ns) {
            delayed_push(self, &row, &s, label);
        }
        let mut found = Vec::new();
        super::rules::task_diagnoses(key, label, &row, &s, &self.diag, self.start_ns, &mut found);
        if warrants_warning(&row, self.warn_share, self.lone_block_ns) {
            found.extend(super::rules::blocked_in_poll(
                key,
                label,
                &row,
                &s,
                self.start_ns,
                &found,
            ));
        }
        for f in found {
            self.pending.push(f);
        }
        self.pending
            .pools
            .add(label, &row, &s, &self.diag, self.start_ns);
        let t = &mut self.totals;
        t.tasks += 1;
        t.polls += row.polls;
        t.busy_ns = t.busy_ns.saturating_add(row.busy_ns);
        if row.kind != "blocking" {
            t.blocked_in_poll_ns = t.blocked_in_poll_ns.saturating_add(row.blocked_in_poll_ns);
        }
        t.unmeasured_polls += row.unmeasured_polls;
        if warrants_warning(&row, self.warn_share, self.lone_block_ns) {
            t.warned_tasks += 1;
            self.warned.push(row.clone());
            if self.warned.len() >= 2 * MAX_WARNINGS {
                self.warned.sort_by_key(|r| std::cmp::Reverse(interest(r)));
                t.warnings_omitted += (self.warned.len() - MAX_WARNINGS) as u64;
                self.warned.truncate(MAX_WARNINGS);
            }
        }
        self.rows.push(row);
        if self.rows.len() >= 2 * MAX_ROWS {
            self.rows.sort_by_key(|r| std::cmp::Reverse(interest(r)));
            self.totals.omitted += (self.rows.len() - MAX_ROWS) as u64;
            self.rows.truncate(MAX_ROWS);
        }
    }

    /// The listed rows in spawn order, and the warnings, worst first.
    pub(crate) fn finish(
        mut self,
        opts: &super::TaskOptions,
        ends: &super::rules::Ends<'_>,
    ) -> (
        Vec<TaskRow>,
        Vec<Warning>,
        Vec<super::Diagnosis>,
        TaskTotals,
    ) {
        let (names, strings) = (ends.names, ends.strings);
        for r in &mut self.rows {
            for site in &mut r.yield_sites {
                if site.site != "unknown" {
                    site.spans = site.chain.and_then(|i| strings.get(i as usize)).cloned();
                    site.site = default_site(site);
                }
            }
        }
        let task_names: HashMap<(u32, u64), String> = self
            .rows
            .iter()
            .map(|r| ((r.pid, r.id), r.name.clone()))
            .collect();
        for r in &mut self.rows {
            let pid = r.pid;
            for w in &mut r.wakers {
                let name = match w.kind.as_str() {
                    "thread" => names.get(&(w.id as u32)),
                    _ => task_names.get(&(pid, w.id)),
                };
                if let Some(n) = name {
                    w.name = n.clone();
                }
            }
        }
        if self.rows.len() > MAX_ROWS {
            self.rows.sort_by_key(|r| std::cmp::Reverse(interest(r)));
            self.totals.omitted += (self.rows.len() - MAX_ROWS) as u64;
            self.rows.truncate(MAX_ROWS);
        }
        self.rows
            .sort_by_key(|r| (r.pid, r.spawned_ns.unwrap_or(0), r.id));
        self.warned.sort_by_key(|r| std::cmp::Reverse(interest(r)));
        if self.warned.len() > MAX_WARNINGS {
            self.totals.warnings_omitted += (self.warned.len() - MAX_WARNINGS) as u64;
            self.warned.truncate(MAX_WARNINGS);
        }
        let mut warnings: Vec<Warning> = self.warned.iter().map(|r| warning(r, names)).collect();
        // A task that waited behind another place's culprits is listed under their
        // diagnoses; a scheduling delay of its own is one that no such culprit explains.
        let culprits: std::collections::HashSet<u32> = self
            .pending
            .found
            .iter()
            .filter(|f| {
                matches!(
                    f.d.kind,
                    "long_poll" | "lock_contention" | "blocked_in_poll"
                )
            })
            .filter_map(|f| f.label)
            .collect();
        let mut delay_diagnoses = Vec::new();
        self.delayed
            .sort_by_key(|d| std::cmp::Reverse(d.row.delayed_ns));
        for d in &self.delayed {
            if warnings.len() >= MAX_WARNINGS {
                self.totals.warnings_omitted += 1;
                continue;
            }
            self.totals.warned_tasks += 1;
            let w = delay_warning(d, strings, self.delay_threshold_ns);
            let bad = |h: &(u32, u64, u64, u64, u64)| h.2.max(h.3);
            let all: u64 = d.holders.iter().map(bad).sum();
            let elsewhere: u64 = d
                .holders
                .iter()
                .filter(|h| culprits.contains(&h.0) && Some(h.0) != d.label)
                .map(bad)
                .sum();
            if all == 0 || 2 * elsewhere < all {
                delay_diagnoses.push(super::rules::scheduling_delay(
                    &d.row,
                    &w,
                    &d.at,
                    self.start_ns,
                ));
            }
            warnings.push(w);
        }
        self.totals.blocked_threshold_ns = opts.blocked_threshold_ns;
        self.totals.warn_share = opts.warn_share;
        self.totals.scheduled_p50_ns = self.sched.quantile(0.5);
        self.totals.scheduled_p99_ns = self.sched.quantile(0.99);
        let mut diagnoses = self.pending.finish(&opts.diagnosis, ends, &self.rows);
        diagnoses.extend(delay_diagnoses);
        let mut diagnoses = super::rules::group(diagnoses);
        super::rules::share_of_place(&mut diagnoses, &self.rows, opts);
        super::rules::sort(&mut diagnoses);
        if diagnoses.len() > MAX_WARNINGS {
            self.totals.diagnoses_omitted += (diagnoses.len() - MAX_WARNINGS) as u64;
            diagnoses.truncate(MAX_WARNINGS);
        }
        (self.rows, warnings, diagnoses, self.totals)
    }
}

/// The site line of a row whose stack is not named (yet): its spans, or its stack's id.
pub(crate) fn default_site(site: &YieldSiteRow) -> String {
    match (&site.spans, site.stack_id) {
        (Some(chain), _) => format!("in span {chain}"),
        (None, Some(id)) => format!("stack {id} (not named)"),
        (None, None) => "unknown".to_owned(),
    }
}

fn waker_rows(wakers: &[(super::WakeSource, u64)]) -> Vec<WakerRow> {
    let mut rows: Vec<WakerRow> = Vec::new();
    for &(by, n) in wakers {
        let (kind, id) = match by {
            super::WakeSource::Task(k) => ("task", k.span),
            super::WakeSource::Thread { tid, .. } => ("thread", u64::from(tid)),
            // Named once the stacks are (driver kinds come from them).
            super::WakeSource::Driver { .. } => continue,
        };
        match rows.iter_mut().find(|r| r.kind == kind && r.id == id) {
            Some(r) => r.count += n,
            None => rows.push(WakerRow {
                kind: kind.to_owned(),
                id,
                name: String::new(),
                count: n,
            }),
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.count));
    rows.truncate(MAX_WAKER_ROWS);
    rows
}

/// The `scheduling_delay` rule: the task is not meant to block, its p99 wake→poll delay
/// reached the threshold in two delays or more, and in its delays the workers were held by
/// polls that blocked in the kernel (stretches of at least the blocked threshold) for at least
/// [`DELAY_BLOCKED_SHARE`] of the time they were held.
fn delay_warrants(row: &TaskRow, s: &super::model::Stats, threshold: u64) -> bool {
    let held: u64 = s.holders.iter().map(|h| h.1).sum();
    // Held by polls that blocked, or that ran on CPU for a long poll's time.
    let blocked: u64 = s.holders.iter().map(|h| h.2.max(h.3)).sum();
    threshold > 0
        && row.kind != "blocking"
        && s.delayed >= 2
        && row.scheduled_p99_ns.is_some_and(|p| p >= threshold)
        && held > 0
        && blocked as f64 >= DELAY_BLOCKED_SHARE * held as f64
}

fn delayed_push(results: &mut Results, row: &TaskRow, s: &super::model::Stats, label: Option<u32>) {
    if results.delayed.len() >= 2 * MAX_WARNINGS {
        results.totals.warnings_omitted += 1;
        return;
    }
    results.delayed.push(DelayedRow {
        row: row.clone(),
        holders: s.holders.clone(),
        unheld_ns: s.unheld_ns,
        workers: s.workers_seen,
        label,
        at: s.ev.delay_at.clone(),
    });
}

fn delay_warning(d: &DelayedRow, strings: &[String], threshold_ns: u64) -> Warning {
    let r = &d.row;
    let mut held_by: Vec<Holder> = d
        .holders
        .iter()
        .map(
            |&(label, held_ns, blocked_ns, long_poll_ns, delays)| Holder {
                task: strings
                    .get(label as usize)
                    .cloned()
                    .unwrap_or_else(|| "tasks not named yet".to_owned()),
                held_ns,
                blocked_ns,
                long_poll_ns,
                delays,
            },
        )
        .collect();
    held_by.sort_by_key(|h| std::cmp::Reverse(h.blocked_ns.max(h.long_poll_ns).max(h.held_ns / 4)));
    let blocked_ns = held_by.iter().map(|h| h.blocked_ns).sum();
    Warning {
        kind: "scheduling_delay",
        task: r.name.clone(),
        task_id: r.id,
        pid: r.pid,
        location: r.location.clone(),
        polls: r.delayed_wakes,
        total_polls: r.polls,
        blocked_ns,
        syscall: String::new(),
        stack: None,
        stack_id: None,
        worker_tid: 0,
        worker: String::new(),
        other_workers: 0,
        frames: Vec::new(),
        delay: Some(Delay {
            p99_ns: r.scheduled_p99_ns.unwrap_or(0),
            threshold_ns,
            delayed: r.delayed_wakes,
            wakes: r.woken_by.io
                + r.woken_by.timer
                + r.woken_by.task
                + r.woken_by.thread
                + r.woken_by.unknown,
            delayed_ns: r.delayed_ns,
            workers: d.workers,
            held_by,
            unheld_ns: d.unheld_ns,
        }),
    }
}

fn warning(r: &TaskRow, names: &HashMap<u32, String>) -> Warning {
    let (worker_tid, others) = r.worker.unwrap_or((0, 0));
    let worker = names.get(&worker_tid).cloned().unwrap_or_default();
    let syscall = r
        .syscall
        .map(syscall_name)
        .unwrap_or_else(|| "unknown".to_owned());
    Warning {
        kind: "blocked_in_poll",
        task: r.name.clone(),
        task_id: r.id,
        pid: r.pid,
        location: r.location.clone(),
        polls: r.blocked_polls,
        total_polls: r.polls,
        blocked_ns: r.blocked_in_poll_ns,
        syscall,
        stack: None,
        stack_id: r.stack,
        worker_tid,
        worker,
        other_workers: others as u64,
        frames: Vec::new(),
        delay: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, busy_ns: u64, blocked_polls: u64, blocked_in_poll_ns: u64) -> TaskRow {
        TaskRow {
            kind: kind.to_owned(),
            polls: 80,
            busy_ns,
            blocked_polls,
            blocked_in_poll_ns,
            ..TaskRow::default()
        }
    }

    const LONE: u64 = 100_000 * LONE_BLOCK_FACTOR;

    #[test]
    fn one_short_wait_on_a_runtime_lock_is_not_a_warning() {
        // Regression: CI warned about the tokio demo for one 0.3 ms wait on tokio's timer-wheel
        // mutex in 1 of 78 polls (6% of that short task's poll time).
        assert!(!warrants_warning(
            &row("task", 4_700_000, 1, 293_310),
            0.05,
            LONE
        ));
    }

    #[test]
    fn a_handler_that_blocks_every_poll_is_warned_about() {
        assert!(warrants_warning(
            &row("task", 1_363_000_000, 259, 1_332_000_000),
            0.05,
            LONE
        ));
    }

    #[test]
    fn one_long_block_is_warned_about() {
        // e.g. a synchronous DNS lookup once: 40 ms in one poll.
        assert!(warrants_warning(
            &row("task", 45_000_000, 1, 40_000_000),
            0.05,
            LONE
        ));
    }

    #[test]
    fn below_the_share_or_meant_to_block_is_never_warned() {
        assert!(!warrants_warning(
            &row("task", 1_000_000_000, 5, 10_000_000),
            0.05,
            LONE
        ));
        assert!(!warrants_warning(
            &row("blocking", 1_000_000, 100, 1_000_000),
            0.05,
            LONE
        ));
    }
}
