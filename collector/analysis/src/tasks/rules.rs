//! The diagnoses' rules: what a finished task's evidence must show for each kind
//! ([`task_diagnoses`]), what the `spawn_blocking` jobs of one spawn place must show
//! ([`Pools`]), and the last step once every task is in ([`Pending::finish`]): the waiting
//! tasks listed under the culprits that held their workers, and the holder names.

use std::collections::HashMap;

use rustc_hash::FxHashMap as FxMap;

use super::diagnosis::{
    BlockingPool, Diagnosis, DiagnosisOptions, HeldAcross, LockHolder, LockWaits, LongPoll,
    SelfWake, Victim, KINDS, MAX_MOMENTS,
};
use super::evidence::top_stack;
use super::model::Stats;
use super::{TaskKey, TaskRow};

/// Most diagnoses kept while the pass runs (the worst are kept).
const MAX_PENDING: usize = 2_000;
/// Most waiting tasks listed per culprit.
const MAX_VICTIMS: usize = 8;

/// A diagnosis with the keys that the last step needs.
pub(crate) struct Found {
    pub d: Diagnosis,
    pub key: TaskKey,
    /// The task's holder label.
    pub label: Option<u32>,
    /// `lock_contention`'s wakers, named in the last step: (tid, task label, waits, ns).
    pub lock_by: Vec<(u32, Option<u32>, u64, u64)>,
    /// `held_across_await`'s holder.
    pub holder: Option<TaskKey>,
    /// `lost_waker`: the task never had a waker cloned (so it had none alive even if the
    /// program's drops are not recorded).
    pub lost_never_cloned: bool,
}

fn rel(t: u64, start: u64) -> u64 {
    t.saturating_sub(start)
}

fn base(kind: &'static str, row: &TaskRow) -> Diagnosis {
    Diagnosis {
        kind,
        task: row.name.clone(),
        task_id: row.id,
        pid: row.pid,
        location: row.location.clone(),
        tasks: 1,
        tid: row.worker.map_or(0, |w| w.0),
        ..Diagnosis::default()
    }
}

/// The diagnoses of one finished task (`blocked_in_poll` and `scheduling_delay` come from the
/// warnings' rules, in [`super::rows`]).
pub(crate) fn task_diagnoses(
    key: TaskKey,
    label: Option<u32>,
    row: &TaskRow,
    s: &Stats,
    o: &DiagnosisOptions,
    start_ns: u64,
    out: &mut Vec<Found>,
) {
    if row.kind == "blocking" {
        return;
    }
    let ev = &s.ev;
    let moments = |v: &[u64]| v.iter().map(|&t| rel(t, start_ns)).collect::<Vec<u64>>();
    let found = |d: Diagnosis| Found {
        d,
        key,
        label,
        lock_by: Vec::new(),
        holder: None,
        lost_never_cloned: false,
    };
    if ev.long_polls > 0 {
        out.push(found(Diagnosis {
            count: ev.long_polls,
            cost_ns: ev.long_cpu_ns,
            at_ns: moments(&ev.long_at),
            stack_id: top_stack(&ev.long_stacks),
            evidence: format!(
                "{} of its {} polls ran on CPU for {} ms or more without an await",
                ev.long_polls,
                row.polls,
                o.long_poll_ns / 1_000_000
            ),
            long_poll: Some(LongPoll {
                threshold_ns: o.long_poll_ns,
                longest_ns: ev.longest_cpu_ns,
                polls: row.polls,
            }),
            ..base("long_poll", row)
        }));
    }
    let lock_floor = (o.lock_share * row.busy_ns as f64) as u64;
    if ev.futex_waits >= 2 && ev.futex_ns >= lock_floor.max(1) {
        let tid = ev.futex_tids.iter().max_by_key(|e| e.1).map_or(0, |e| e.0);
        out.push(Found {
            lock_by: ev
                .futex_by
                .iter()
                .map(|(by, n, ns)| (by.tid, by.task, *n, *ns))
                .collect(),
            ..found(Diagnosis {
                count: ev.futex_waits,
                cost_ns: ev.futex_ns,
                at_ns: moments(&ev.futex_at),
                stack_id: top_stack(&ev.futex_stacks),
                tid,
                lock: Some(LockWaits {
                    waits: ev.futex_waits,
                    wait_ns: ev.futex_ns,
                    named: ev.futex_named,
                    ..LockWaits::default()
                }),
                ..base("lock_contention", row)
            })
        });
    }
    // Told from the waiter's side; the last step makes the holder the diagnosis's task.
    for h in ev.held.iter().filter(|h| h.count >= 2) {
        out.push(Found {
            holder: Some(h.holder),
            ..found(Diagnosis {
                count: h.count,
                cost_ns: h.overlap_ns,
                at_ns: moments(&h.at),
                stack_id: h.holder_site,
                stack2_id: h.site,
                tid: 0,
                held: Some(HeldAcross {
                    lock_line: None,
                    waiters: vec![Victim {
                        task: row.name.clone(),
                        waited_ns: h.overlap_ns,
                        delays: h.count,
                    }],
                }),
                ..base("held_across_await", row)
            })
        });
    }
    if ev.self_wakes >= o.self_wake_min
        && ev.self_wakes as f64 >= o.self_wake_share * row.wakes.max(1) as f64
    {
        let life = row.busy_ns + row.scheduled_ns + row.idle_ns;
        let polls_per_s = row.polls as f64 / (life.max(1) as f64 / 1e9);
        out.push(found(Diagnosis {
            count: ev.self_wakes,
            cost_ns: row.busy_ns.saturating_add(row.scheduled_ns),
            at_ns: moments(&ev.self_at),
            stack_id: top_stack(&ev.self_stacks),
            self_wake: Some(SelfWake {
                self_wakes: ev.self_wakes,
                wakes: row.wakes,
                polls: row.polls,
                polls_per_s,
            }),
            ..base("self_wake", row)
        }));
    }
    if let Some((since, ns, never)) = ev.lost.filter(|l| l.1 >= o.lost_waker_ns) {
        out.push(Found {
            lost_never_cloned: never,
            ..found(Diagnosis {
                count: 1,
                cost_ns: ns,
                at_ns: vec![rel(since, start_ns)],
                line: row.location.as_ref().map(|l| format!("spawned at {l}")),
                ..base("lost_waker", row)
            })
        });
    }
}

/// `blocked_in_poll`, from a task the warnings' rule names, unless the same task's
/// `lock_contention` already says it (its blocked time was mostly futex waits).
pub(crate) fn blocked_in_poll(
    key: TaskKey,
    label: Option<u32>,
    row: &TaskRow,
    s: &Stats,
    start_ns: u64,
    found: &[Found],
) -> Option<Found> {
    let futex = syscalls::Sysno::futex as u16;
    if row.syscall == Some(futex)
        && found
            .iter()
            .any(|f| f.key == key && f.d.kind == "lock_contention")
    {
        return None;
    }
    Some(Found {
        d: Diagnosis {
            count: row.blocked_polls,
            cost_ns: row.blocked_in_poll_ns,
            at_ns: s.ev.blocked_at.iter().map(|&t| rel(t, start_ns)).collect(),
            stack_id: row.stack,
            evidence: format!(
                "in {}",
                row.syscall
                    .map(crate::summary::syscall_name)
                    .unwrap_or_else(|| "an unknown syscall".to_owned())
            ),
            ..base("blocked_in_poll", row)
        },
        key,
        label,
        lock_by: Vec::new(),
        holder: None,
        lost_never_cloned: false,
    })
}

/// `scheduling_delay`, from its warning: the task waited for a worker while the workers were
/// held by polls that blocked or ran long, and no other place's culprit explains it.
pub(crate) fn scheduling_delay(
    row: &TaskRow,
    w: &super::Warning,
    at: &[u64],
    start_ns: u64,
) -> Diagnosis {
    Diagnosis {
        count: row.delayed_wakes,
        cost_ns: row.delayed_ns,
        at_ns: at.iter().map(|&t| rel(t, start_ns)).collect(),
        tid: 0,
        delay: w.delay.clone(),
        ..base("scheduling_delay", row)
    }
}

/// The `spawn_blocking` jobs of each spawn place: how many, and how long they waited for a
/// pool thread.
#[derive(Default)]
pub(crate) struct Pools {
    /// By (pid, holder label).
    places: FxMap<(u32, u32), Pool>,
}

#[derive(Default)]
struct Pool {
    row: TaskRow,
    jobs: u64,
    waited: u64,
    wait_ns: u64,
    longest: u64,
    at: Vec<u64>,
}

impl Pools {
    pub(crate) fn add(
        &mut self,
        label: Option<u32>,
        row: &TaskRow,
        s: &Stats,
        o: &DiagnosisOptions,
        start_ns: u64,
    ) {
        let (Some(label), true) = (label, row.kind == "blocking" && row.location.is_some()) else {
            return;
        };
        let Some((spawned, wait)) = s.ev.first_wait else {
            return;
        };
        if self.places.len() >= MAX_PENDING && !self.places.contains_key(&(row.pid, label)) {
            return;
        }
        let p = self.places.entry((row.pid, label)).or_default();
        if p.jobs == 0 {
            p.row = TaskRow {
                yield_sites: Vec::new(),
                wakers: Vec::new(),
                ..row.clone()
            };
        }
        p.jobs += 1;
        if wait >= o.blocking_wait_ns {
            p.waited += 1;
            p.wait_ns = p.wait_ns.saturating_add(wait);
            p.longest = p.longest.max(wait);
            if p.at.len() < MAX_MOMENTS {
                p.at.push(rel(spawned, start_ns));
            }
        }
    }

    /// The `blocking_pool` diagnoses, with each place's peak of jobs running at once.
    fn finish(
        self,
        o: &DiagnosisOptions,
        peaks: &FxMap<(u32, u32), (u64, u64)>,
        out: &mut Vec<Found>,
    ) {
        for ((pid, label), p) in self.places {
            if p.waited < o.blocking_min_jobs {
                continue;
            }
            let peak = peaks.get(&(pid, label)).map_or(0, |e| e.1);
            let mut at = p.at;
            at.sort_unstable();
            out.push(Found {
                d: Diagnosis {
                    count: p.waited,
                    cost_ns: p.wait_ns,
                    at_ns: at,
                    tid: 0,
                    line: p
                        .row
                        .location
                        .as_ref()
                        .map(|l| format!("spawn_blocking at {l}")),
                    pool: Some(BlockingPool {
                        jobs: p.jobs,
                        waited: p.waited,
                        longest_wait_ns: p.longest,
                        peak_threads: peak,
                    }),
                    ..base("blocking_pool", &p.row)
                },
                key: TaskKey {
                    pid,
                    span: p.row.id,
                },
                label: Some(label),
                lock_by: Vec::new(),
                holder: None,
                lost_never_cloned: false,
            });
        }
    }
}

/// What the last step reads besides the pending diagnoses: from the model, the kernel view
/// and the pass's names.
pub(crate) struct Ends<'a> {
    /// Most blocking tasks of each (pid, spawn place) that ran at once.
    pub peaks: &'a FxMap<(u32, u32), (u64, u64)>,
    /// Holder labels.
    pub strings: &'a [String],
    /// Thread names.
    pub names: &'a HashMap<u32, String>,
    /// Whether the trace has the kernel's wakeups.
    pub wakeups: bool,
    /// The processes whose `waker.drop` and `waker.clone` events the trace has.
    pub drops: &'a rustc_hash::FxHashSet<u32>,
    pub clones: &'a rustc_hash::FxHashSet<u32>,
}

/// Diagnoses found while the pass runs, and the waits behind each task's polls.
#[derive(Default)]
pub(crate) struct Pending {
    pub found: Vec<Found>,
    pub dropped: u64,
    /// Holder task → (waiting task's label, its wait those polls overlapped, delays).
    pub behind: FxMap<TaskKey, Vec<(u32, u64, u64)>>,
    pub pools: Pools,
}

impl Pending {
    pub(crate) fn push(&mut self, f: Found) {
        if self.found.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.found.push(f);
    }

    /// Task `holder`'s polls held a worker for `ns` while a task labelled `victim` waited.
    pub(crate) fn behind(&mut self, holder: TaskKey, victim: u32, ns: u64) {
        if !self.behind.contains_key(&holder) && self.behind.len() >= 4 * MAX_PENDING {
            return;
        }
        let v = self.behind.entry(holder).or_default();
        match v.iter().position(|e| e.0 == victim) {
            Some(i) => {
                v[i].1 = v[i].1.saturating_add(ns);
                v[i].2 += 1;
            }
            None if v.len() < MAX_VICTIMS => v.push((victim, ns, 1)),
            None => {}
        }
    }

    /// Every diagnosis, culprits first, each kind's worst first: lock wakers and holders
    /// named, waiting tasks listed under the culprits that held their workers.
    pub(crate) fn finish(
        mut self,
        o: &DiagnosisOptions,
        ends: &Ends<'_>,
        rows: &[TaskRow],
    ) -> Vec<Diagnosis> {
        let (strings, names) = (ends.strings, ends.names);
        // A task's live wakers are known when its process's drops are recorded, or when it
        // never had one cloned and the process's clones are.
        self.found.retain(|f| {
            f.d.kind != "lost_waker"
                || ends.drops.contains(&f.d.pid)
                || (f.lost_never_cloned && ends.clones.contains(&f.d.pid))
        });
        let pools = std::mem::take(&mut self.pools);
        pools.finish(o, ends.peaks, &mut self.found);
        let label = |l: u32| strings.get(l as usize).cloned();
        let by_key: HashMap<(u32, u64), &TaskRow> =
            rows.iter().map(|r| ((r.pid, r.id), r)).collect();
        let mut out: Vec<Diagnosis> = Vec::with_capacity(self.found.len());
        for f in self.found {
            let mut d = f.d;
            if let Some(lock) = &mut d.lock {
                lock.wakeups_recorded = ends.wakeups;
                let mut by: Vec<LockHolder> = f
                    .lock_by
                    .iter()
                    .map(|&(tid, task, waits, wait_ns)| LockHolder {
                        tid,
                        thread: names.get(&tid).cloned().unwrap_or_default(),
                        task: task.and_then(label),
                        waits,
                        wait_ns,
                    })
                    .collect();
                by.sort_by_key(|h| std::cmp::Reverse(h.waits));
                lock.woken_by = by;
            }
            if let Some(h) = f.holder {
                // The holder is the diagnosis's task; the same holder's waits at one place
                // are one diagnosis, its waiters listed.
                match by_key.get(&(h.pid, h.span)) {
                    Some(r) => {
                        let holder = base(d.kind, r);
                        d.task = holder.task;
                        d.task_id = holder.task_id;
                        d.pid = holder.pid;
                        d.location = holder.location;
                    }
                    None => {
                        d.task = format!("span {}", h.span);
                        d.task_id = h.span;
                        d.location = None;
                    }
                }
                if let Some(same) = out.iter_mut().find(|o| {
                    o.kind == d.kind
                        && (o.pid, o.task_id, o.stack_id, o.stack2_id)
                            == (d.pid, d.task_id, d.stack_id, d.stack2_id)
                }) {
                    super::diagnosis::absorb(same, d);
                    continue;
                }
            }
            if matches!(d.kind, "long_poll" | "lock_contention" | "blocked_in_poll") {
                if let Some(v) = self.behind.get(&f.key) {
                    let mut victims: Vec<Victim> = v
                        .iter()
                        .filter(|e| Some(e.0) != f.label)
                        .filter_map(|&(l, ns, n)| {
                            Some(Victim {
                                task: label(l)?,
                                waited_ns: ns,
                                delays: n,
                            })
                        })
                        .collect();
                    victims.sort_by_key(|v| std::cmp::Reverse(v.waited_ns));
                    d.delayed = victims;
                }
            }
            out.push(d);
        }
        sort(&mut out);
        out
    }
}

/// The tasks spawned at one place (a handler per connection) are one diagnosis of each kind:
/// the costliest one's task, the sums of all.
pub(crate) fn group(all: Vec<Diagnosis>) -> Vec<Diagnosis> {
    let mut out: Vec<Diagnosis> = Vec::with_capacity(all.len());
    let place = |d: &Diagnosis| (d.kind, d.pid, d.location.clone());
    for d in all {
        let groups = d.location.is_some() && d.held.is_none() && d.kind != "blocking_pool";
        match out
            .iter_mut()
            .find(|o| groups && o.held.is_none() && place(o) == place(&d))
        {
            Some(o) => {
                if d.cost_ns > o.cost_ns {
                    (o.task, o.task_id, o.tid) = (d.task.clone(), d.task_id, d.tid);
                    (o.stack_id, o.line) = (d.stack_id.or(o.stack_id), d.line.clone());
                    o.delay = d.delay.clone();
                }
                super::diagnosis::absorb(o, d);
            }
            None => out.push(d),
        }
    }
    out
}

/// Blocked polls and lock waits of tasks spawned at one place are diagnosed when they reach
/// their share of the poll time of all the place's tasks, not only of the few that met one:
/// 5 of 1,000 connection handlers that each waited once on the allocator's lock under
/// overload are not a bug of that handler.
pub(crate) fn share_of_place(
    all: &mut Vec<Diagnosis>,
    rows: &[TaskRow],
    opts: &super::TaskOptions,
) {
    let mut busy: HashMap<(u32, &str), u64> = HashMap::new();
    for r in rows {
        if let Some(loc) = &r.location {
            let e = busy.entry((r.pid, loc.as_str())).or_default();
            *e = e.saturating_add(r.busy_ns);
        }
    }
    all.retain(|d| {
        let share = match d.kind {
            "blocked_in_poll" => opts.warn_share,
            "lock_contention" => opts.diagnosis.lock_share,
            _ => return true,
        };
        let Some(loc) = &d.location else { return true };
        let place = busy.get(&(d.pid, loc.as_str())).copied().unwrap_or(0);
        d.tasks <= 1 || d.cost_ns as f64 >= share * place as f64
    });
}

/// Culprits first (in [`KINDS`] order), each kind's costliest first.
pub(crate) fn sort(d: &mut [Diagnosis]) {
    let rank = |k: &str| KINDS.iter().position(|&x| x == k).unwrap_or(KINDS.len());
    d.sort_by(|a, b| {
        rank(a.kind)
            .cmp(&rank(b.kind))
            .then(b.cost_ns.cmp(&a.cost_ns))
            .then(a.task_id.cmp(&b.task_id))
    });
}
