//! Each diagnosis rule on a small synthetic trace whose answer is known by construction, and
//! the same trace just short of the rule, which must not be diagnosed.

use super::tests::*;
use super::*;
use iotrace_trace::build::{self, MS};
use iotrace_wire::SpanEvent;

const FUTEX: u16 = syscalls::Sysno::futex as u16;
const OTHER: u32 = 12;

fn of<'a>(r: &'a TaskReport, kind: &str) -> Vec<&'a Diagnosis> {
    r.diagnoses.iter().filter(|d| d.kind == kind).collect()
}

/// Task 100 polls twice on WORKER, on CPU for `cpu_ms` each time (the worker runs throughout).
fn cpu_polls(cpu_ms: u64) -> Vec<Record> {
    vec![
        header(),
        callsites(),
        batch(1, vec![new_task(MS, 100, "task", "spinner")]),
        switches(&[(2 * MS, false, false, 0)]),
        batch(
            WORKER,
            vec![
                enter(2 * MS, 100),
                exit((2 + cpu_ms) * MS, 100),
                enter(50 * MS, 100),
                exit((50 + cpu_ms) * MS, 100),
            ],
        ),
        marker(90 * MS),
        end(100 * MS),
    ]
}

#[test]
fn polls_on_cpu_past_the_threshold_are_long_polls() {
    let r = analyze(&cpu_polls(15));
    let d = of(&r, "long_poll");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    assert_eq!((d[0].task.as_str(), d[0].count), ("spinner", 2));
    assert_eq!(d[0].cost_ns, 30 * MS);
    assert_eq!(d[0].at_ns.len(), 2);
    assert_eq!(d[0].long_poll.as_ref().unwrap().longest_ns, 15 * MS);
    let r = analyze(&cpu_polls(5));
    assert!(of(&r, "long_poll").is_empty(), "{:#?}", r.diagnoses);
}

/// Task 100 on WORKER blocks in futex twice (2 ms each); each wait ends with a wakeup by
/// thread OTHER while it polls task 101 (`waker_pid` 0 when the wakeups are left out).
fn futex_waits(wakeups: bool) -> Vec<Record> {
    let mut recs = vec![
        header(),
        callsites(),
        batch(
            1,
            vec![
                new_task(MS, 100, "task", "locker"),
                new_task(MS, 101, "task", "holder"),
            ],
        ),
        switches(&[
            (2 * MS, false, false, 0),
            (3 * MS, true, false, FUTEX),
            (5 * MS, false, false, 0),
            (6 * MS, true, false, FUTEX),
            (8 * MS, false, false, 0),
        ]),
        batch(WORKER, vec![enter(2 * MS, 100), exit(9 * MS, 100)]),
        batch(
            OTHER,
            vec![
                enter(2 * MS, 101),
                exit(4 * MS, 101),
                enter(4 * MS + 500_000, 101),
                exit(7 * MS, 101),
            ],
        ),
    ];
    if wakeups {
        recs.push(build::wakeups(
            1,
            &[
                (5 * MS - 1_000, PID, OTHER, WORKER, 0),
                (8 * MS - 1_000, PID, OTHER, WORKER, 0),
            ],
        ));
    }
    recs.extend([marker(20 * MS), end(30 * MS)]);
    recs
}

#[test]
fn futex_waits_in_polls_are_lock_contention_named_by_their_waker() {
    let r = analyze(&futex_waits(true));
    let d = of(&r, "lock_contention");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    let lock = d[0].lock.as_ref().unwrap();
    assert_eq!((lock.waits, lock.wait_ns, lock.named), (2, 4 * MS, 2));
    assert!(lock.wakeups_recorded);
    // The first wake came while OTHER was between polls: its thread is known, not a task.
    let by: Vec<(u32, Option<&str>, u64)> = lock
        .woken_by
        .iter()
        .map(|h| (h.tid, h.task.as_deref(), h.waits))
        .collect();
    assert!(
        by.contains(&(OTHER, Some("tasks spawned at src/main.rs:42:5"), 1)),
        "{by:?}"
    );
    assert!(by.contains(&(OTHER, None, 1)), "{by:?}");
    assert!(
        of(&r, "blocked_in_poll").is_empty(),
        "the lock says it: {:#?}",
        r.diagnoses
    );

    // The thread view says the same: OTHER ended both of WORKER's blocked stretches.
    let th = r.threads.iter().find(|t| t.tid == WORKER).unwrap();
    assert_eq!(
        th.woken_by
            .iter()
            .map(|w| (w.kind, w.tid, w.count, w.ns))
            .collect::<Vec<_>>(),
        [("thread", OTHER, 2, 4 * MS)]
    );
    assert_eq!(th.woken_unknown_ns, 0);

    let r = analyze(&futex_waits(false));
    let th = r.threads.iter().find(|t| t.tid == WORKER).unwrap();
    assert!(th.woken_by.is_empty() && th.woken_unknown_ns == 0);
    let lock = of(&r, "lock_contention")[0].lock.clone().unwrap();
    assert_eq!((lock.waits, lock.named), (2, 0));
    assert!(!lock.wakeups_recorded);
}

/// Task 100 wakes itself inside each of `n` polls; task 101 stores a waker once, so the
/// process's clones are recorded.
fn self_wakes(n: u64) -> Vec<Record> {
    let mut events = Vec::new();
    for i in 0..n {
        let t = 2 * MS + i * 10_000;
        events.push(enter(t, 100));
        events.push(waker_op(t + 1_000, 100, "waker.wake_by_ref", Some(100)));
        events.push(exit(t + 2_000, 100));
    }
    vec![
        header(),
        callsites(),
        batch(1, vec![new_task(MS, 100, "task", "busy")]),
        batch(WORKER, events),
        marker(2 * MS + n * 10_000 + MS),
        end(2 * MS + n * 10_000 + 2 * MS),
    ]
}

#[test]
fn a_task_that_wakes_itself_in_most_polls_is_a_self_wake() {
    let r = analyze(&self_wakes(1_000));
    let d = of(&r, "self_wake");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    let w = d[0].self_wake.as_ref().unwrap();
    assert_eq!((w.self_wakes, w.wakes, w.polls), (1_000, 1_000, 1_000));
    assert!(of(&analyze(&self_wakes(999)), "self_wake").is_empty());
}

/// Task 100 returns Pending having stored no waker (`stored`: it stored one) and is never
/// woken; task 101 stores two wakers and drops one (so the process's wakers are counted, and
/// it keeps one alive).
fn pending_forever(stored: bool) -> Vec<Record> {
    let mut first = vec![enter(2 * MS, 100)];
    if stored {
        first.push(waker_op(2 * MS + 10, 100, "waker.clone", Some(100)));
    }
    first.push(exit(2 * MS + 20, 100));
    first.extend([
        enter(3 * MS, 101),
        waker_op(3 * MS + 10, 101, "waker.clone", Some(101)),
        waker_op(3 * MS + 15, 101, "waker.clone", Some(101)),
        waker_op(3 * MS + 20, 101, "waker.drop", Some(101)),
        exit(3 * MS + 30, 101),
    ]);
    vec![
        header(),
        callsites(),
        batch(
            1,
            vec![
                new_task(MS, 100, "task", "lost"),
                new_task(MS, 101, "task", "fine"),
            ],
        ),
        batch(WORKER, first),
        marker(300 * MS),
        end(300 * MS),
    ]
}

#[test]
fn pending_with_no_live_waker_is_a_lost_waker() {
    let r = analyze(&pending_forever(false));
    let d = of(&r, "lost_waker");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    assert_eq!(d[0].task, "lost");
    assert_eq!(d[0].cost_ns, 300 * MS - (2 * MS + 20));
    assert!(of(&analyze(&pending_forever(true)), "lost_waker").is_empty());
}

/// `jobs` blocking tasks spawned at 1 ms, each first polled 5 ms later, on one pool thread
/// at a time.
fn blocking_jobs(jobs: u64) -> Vec<Record> {
    let spawned = (0..jobs)
        .map(|i| new_task(MS, 300 + i, "blocking", "job"))
        .collect();
    let polls = (0..jobs)
        .flat_map(|i| {
            let t = 6 * MS + i * MS;
            [enter(t, 300 + i), exit(t + MS / 2, 300 + i)]
        })
        .collect();
    vec![
        header(),
        callsites(),
        batch(1, spawned),
        batch(20, polls),
        marker(100 * MS),
        end(100 * MS),
    ]
}

#[test]
fn jobs_that_wait_for_a_pool_thread_are_a_flooded_blocking_pool() {
    let r = analyze(&blocking_jobs(12));
    let d = of(&r, "blocking_pool");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    let pool = d[0].pool.as_ref().unwrap();
    assert_eq!((pool.jobs, pool.waited, pool.peak_threads), (12, 12, 1));
    assert_eq!(pool.longest_wait_ns, 16 * MS);
    assert!(of(&analyze(&blocking_jobs(9)), "blocking_pool").is_empty());
}

/// Holder 101 stores its waker at stack 7 (its sleep) and idles 20 ms; meanwhile waiter 100
/// stores its waker at stack 9 (the lock) and idles until the holder, polled again, wakes it.
/// `rounds` times.
fn held_lock(rounds: u64) -> Vec<Record> {
    let mut holder = Vec::new();
    let mut waiter = Vec::new();
    for i in 0..rounds {
        let t = 2 * MS + i * 30 * MS;
        holder.extend([
            enter(t, 101),
            waker_op(t + 10, 101, "waker.clone", Some(101)),
            at(t + 10, 7),
            exit(t + 20, 101),
        ]);
        waiter.extend([
            enter(t + MS, 100),
            waker_op(t + MS + 10, 100, "waker.clone", Some(100)),
            at(t + MS + 10, 9),
            exit(t + MS + 20, 100),
        ]);
        // The timer wakes the holder; in its poll it lets go of the lock and wakes the waiter.
        holder.extend([
            SpanEvent::Event {
                time: t + 20 * MS,
                span: None,
                callsite: WAKER_CS,
                fields: vec![
                    fv(0, iotrace_wire::Value::Str("waker.wake".into())),
                    fv(1, iotrace_wire::Value::Span(101)),
                ],
            },
            enter(t + 20 * MS + 100, 101),
            wake(t + 20 * MS + 200, 100),
            exit(t + 20 * MS + 300, 101),
        ]);
        waiter.extend([enter(t + 21 * MS, 100), exit(t + 21 * MS + 100, 100)]);
    }
    let end_t = 2 * MS + rounds * 30 * MS + MS;
    vec![
        header(),
        callsites(),
        batch(
            1,
            vec![
                new_task(MS, 100, "task", "waiter"),
                new_task(MS, 101, "task", "holder"),
            ],
        ),
        batch(WORKER, holder),
        batch(OTHER, waiter),
        marker(end_t),
        end(end_t),
    ]
}

#[test]
fn a_wait_ended_by_a_holder_that_idled_meanwhile_is_held_across_await() {
    let r = analyze(&held_lock(2));
    let d = of(&r, "held_across_await");
    assert_eq!(d.len(), 1, "{:#?}", r.diagnoses);
    // The holder is the task at fault, at its own await; the waiter's await is the lock.
    assert_eq!((d[0].task.as_str(), d[0].count), ("holder", 2));
    assert_eq!((d[0].stack_id, d[0].stack2_id), (Some(7), Some(9)));
    let held = d[0].held.as_ref().unwrap();
    assert_eq!(held.waiters[0].task, "waiter");
    assert!(of(&analyze(&held_lock(1)), "held_across_await").is_empty());
}

/// Named, the same diagnosis is kept only when the waiters' await is a tokio lock's and the
/// holder's is not.
#[test]
fn held_across_await_is_kept_only_at_a_tokio_lock() {
    let lock = "tokio::sync::mutex::Mutex::lock in app::waiter at src/main.rs:20";
    let sleep = "tokio::time::sleep::Sleep in app::holder at src/main.rs:10";
    let d = |line: &str, lock_line: &str| Diagnosis {
        kind: "held_across_await",
        line: Some(line.to_owned()),
        held: Some(diagnosis::HeldAcross {
            lock_line: Some(lock_line.to_owned()),
            waiters: Vec::new(),
        }),
        ..Diagnosis::default()
    };
    let mut all = vec![d(sleep, lock), d(sleep, sleep), d(lock, lock)];
    diagnosis::settle(&mut all);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].line.as_deref(), Some(sleep));
}

/// A wait in the runtime's own lock is not the program's line at fault.
#[test]
fn a_blocked_poll_inside_the_runtime_is_not_diagnosed() {
    let stack = |frames: &[&str]| Diagnosis {
        kind: "blocked_in_poll",
        stack: Some(frames.iter().map(|f| f.to_string()).collect()),
        ..Diagnosis::default()
    };
    let mut all = vec![
        stack(&[
            "futex_wait",
            "syscall at ./misc/syscall.S:38",
            "parking_lot_core::thread_parker::imp::ThreadParker::futex_wait at x.rs:1",
            "lock_api::mutex::Mutex<R,T>::lock at y.rs:2",
            "tokio::runtime::time::Inner::lock at tokio-1.54.1/src/runtime/time/mod.rs:471",
            "app::handle at src/main.rs:9",
        ]),
        stack(&[
            "futex_wait",
            "std::sys::sync::mutex::futex::Mutex::lock_contended at library/std/x.rs:1",
            "app::lock_and_work at src/main.rs:20",
        ]),
    ];
    diagnosis::settle(&mut all);
    assert_eq!(all.len(), 1);
    assert!(all[0].stack.as_ref().unwrap()[2].starts_with("app::"));
}

/// A few of a place's many tasks that blocked once are measured against the whole place.
#[test]
fn blocked_polls_of_a_place_are_weighed_against_all_its_tasks() {
    let at = Some("src/main.rs:7:1".to_owned());
    let rows: Vec<TaskRow> = (0..100)
        .map(|id| TaskRow {
            id,
            location: at.clone(),
            busy_ns: 10 * MS,
            ..TaskRow::default()
        })
        .collect();
    let blocked = |tasks, cost_ns| Diagnosis {
        kind: "blocked_in_poll",
        location: at.clone(),
        tasks,
        cost_ns,
        ..Diagnosis::default()
    };
    // 5 ms of the place's 1 s of polls: under 5%. 100 ms: over. One task: its own rule.
    let mut all = vec![blocked(5, 5 * MS), blocked(5, 100 * MS), blocked(1, MS)];
    rules::share_of_place(&mut all, &rows, &TaskOptions::default());
    let kept: Vec<u64> = all.iter().map(|d| d.cost_ns).collect();
    assert_eq!(kept, [100 * MS, MS]);
}
