//! The task model on small synthetic traces whose answers are known by construction: a poll
//! that sleeps, a wake and its latency, a task's creation arriving after its polls, the drop of
//! a tokio task (not a poll), green-thread slices, and garbage that must not panic.

use super::*;
use iotrace_trace::{build, ProcSample};
use iotrace_wire::{Callsite, CallsiteKind, FieldValue, Level, SpanBatch, SpanEvent, Value};

pub(super) const PID: u32 = 10;
pub(super) const WORKER: u32 = 11;
pub(super) const SPAWN_CS: u64 = 1;
pub(super) const WAKER_CS: u64 = 2;
const GREEN_CS: u64 = 3;
const PLAIN_CS: u64 = 4;
use iotrace_trace::build::MS;

pub(super) fn callsites() -> Record {
    let cs = |id, kind, name: &str, target: &str, fields: &[&str]| {
        SpanEvent::Callsite(Callsite {
            id,
            kind,
            level: Level::Trace,
            name: name.into(),
            target: target.into(),
            module: None,
            file: Some("src/main.rs".into()),
            line: Some(42),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        })
    };
    Record::Spans(SpanBatch {
        pid: PID,
        tid: 0,
        dropped_total: 0,
        events: vec![
            cs(
                SPAWN_CS,
                CallsiteKind::Span,
                "runtime.spawn",
                "tokio::task",
                &[
                    "kind",
                    "task.name",
                    "task.id",
                    "loc.file",
                    "loc.line",
                    "loc.col",
                ],
            ),
            cs(
                WAKER_CS,
                CallsiteKind::Event,
                "event waker.rs:75",
                "tokio::task::waker",
                &["op", "task.id"],
            ),
            cs(
                GREEN_CS,
                CallsiteKind::Span,
                "green.task",
                "demo",
                &["iotrace.task", "task.id"],
            ),
            cs(PLAIN_CS, CallsiteKind::Span, "request", "demo", &["io_ms"]),
        ],
    })
}

pub(super) fn fv(index: u8, value: Value) -> FieldValue {
    FieldValue { index, value }
}

pub(super) fn new_task(time: u64, span: u64, kind: &str, name: &str) -> SpanEvent {
    SpanEvent::NewSpan {
        time,
        span,
        parent: None,
        callsite: SPAWN_CS,
        fields: vec![
            fv(0, Value::Str(kind.into())),
            fv(1, Value::Str(name.into())),
            fv(2, Value::U64(span)),
            fv(3, Value::Str("src/main.rs".into())),
            fv(4, Value::U64(42)),
            fv(5, Value::U64(5)),
        ],
    }
}

pub(super) fn wake(time: u64, span: u64) -> SpanEvent {
    SpanEvent::Event {
        time,
        span: None,
        callsite: WAKER_CS,
        fields: vec![
            fv(0, Value::Str("waker.wake".into())),
            fv(1, Value::Span(span)),
        ],
    }
}

pub(super) fn batch(tid: u32, events: Vec<SpanEvent>) -> Record {
    build::spans(PID, tid, events)
}

/// Switches of WORKER on CPU 0: `(time, out, preempt, syscall)`.
pub(super) fn switches(list: &[(u64, bool, bool, u16)]) -> Record {
    build::switches(0, PID, WORKER, list)
}

pub(super) fn header() -> Record {
    build::TraceBuilder::new(PID).records.remove(0)
}

pub(super) fn marker(time_ns: u64) -> Record {
    Record::ProcSample(ProcSample {
        time_ns,
        ..ProcSample::default()
    })
}

pub(super) fn end(time_ns: u64) -> Record {
    build::end(time_ns)
}

pub(super) fn analyze(records: &[Record]) -> TaskReport {
    let mut a = TaskAnalyzer::default();
    for r in records {
        a.add(r, &mut NoSink);
    }
    a.finish(&mut NoSink)
}

pub(super) fn task(r: &TaskReport, span: u64) -> &TaskRow {
    r.tasks
        .iter()
        .find(|t| t.id == span)
        .unwrap_or_else(|| panic!("no task {span} in {:#?}", r.tasks))
}

/// A task whose one poll sleeps 5 ms in clock_nanosleep (syscall 230), then is dropped.
fn sleeping_poll(creation_last: bool) -> Vec<Record> {
    let creation = batch(1, vec![new_task(MS, 100, "task", "handler")]);
    let mut recs = vec![header(), callsites()];
    if !creation_last {
        recs.push(creation.clone());
    }
    recs.extend([
        switches(&[(2 * MS, false, false, 0), (2 * MS + 100, true, false, 230)]),
        switches(&[(7 * MS + 100, false, false, 0), (8 * MS, true, false, 232)]),
        batch(
            WORKER,
            vec![
                SpanEvent::Enter {
                    time: 2 * MS + 50,
                    span: 100,
                },
                SpanEvent::Exit {
                    time: 7 * MS + 200,
                    span: 100,
                },
                // tokio enters a task's span once more to drop it: not a poll.
                SpanEvent::Enter {
                    time: 7 * MS + 300,
                    span: 100,
                },
                SpanEvent::Exit {
                    time: 7 * MS + 400,
                    span: 100,
                },
                SpanEvent::Close {
                    time: 7 * MS + 500,
                    span: 100,
                },
            ],
        ),
        marker(9 * MS),
    ]);
    if creation_last {
        recs.push(creation);
    }
    recs.push(end(10 * MS));
    recs
}

#[test]
fn a_poll_that_sleeps_blocks_its_worker_and_is_warned_about() {
    let r = analyze(&sleeping_poll(false));
    let t = task(&r, 100);
    assert_eq!(
        (t.name.as_str(), t.location.as_deref()),
        ("handler", Some("src/main.rs:42:5"))
    );
    assert_eq!(t.polls, 1, "the drop's enter is not a poll");
    assert_eq!(t.blocked_polls, 1);
    assert_eq!(t.blocked_in_poll_ns, 5 * MS);
    assert_eq!(t.busy_ns, 5 * MS + 150);
    assert_eq!(t.scheduled_ns, MS + 50, "spawn to first poll");
    assert_eq!(r.warnings.len(), 1);
    let w = &r.warnings[0];
    assert_eq!(
        (w.syscall.as_str(), w.worker_tid, w.polls),
        ("clock_nanosleep", WORKER, 1)
    );
    assert_eq!(
        (w.total_polls, w.blocked_ns, w.other_workers),
        (1, 5 * MS, 0)
    );
    let th = r.threads.iter().find(|t| t.tid == WORKER).unwrap();
    assert_eq!(th.blocked[0].syscall, "clock_nanosleep");
    assert_eq!(th.blocked[0].ns, 5 * MS);
}

#[test]
fn a_creation_that_arrives_after_the_polls_still_names_the_task() {
    let r = analyze(&sleeping_poll(true));
    let t = task(&r, 100);
    assert_eq!(t.name, "handler");
    assert_eq!((t.polls, t.blocked_in_poll_ns), (1, 5 * MS));
    assert_eq!(r.warnings.len(), 1);
}

#[test]
fn tasks_meant_to_block_are_never_warned_about() {
    let mut recs = sleeping_poll(false);
    for r in &mut recs {
        if let Record::Spans(b) = r {
            for e in &mut b.events {
                if let SpanEvent::NewSpan { fields, .. } = e {
                    fields[0] = fv(0, Value::Str("blocking".into()));
                }
            }
        }
    }
    let r = analyze(&recs);
    assert_eq!(task(&r, 100).blocked_in_poll_ns, 5 * MS);
    assert!(r.warnings.is_empty());
}

#[test]
fn a_wake_starts_scheduled_time_until_the_next_poll() {
    let recs = vec![
        header(),
        callsites(),
        batch(
            WORKER,
            vec![
                new_task(0, 7, "task", ""),
                SpanEvent::Enter { time: 10, span: 7 },
                SpanEvent::Exit { time: 20, span: 7 },
                wake(50, 7),
                SpanEvent::Enter { time: 80, span: 7 },
                SpanEvent::Exit { time: 90, span: 7 },
                SpanEvent::Enter { time: 95, span: 7 },
                SpanEvent::Exit { time: 96, span: 7 },
                SpanEvent::Close { time: 100, span: 7 },
            ],
        ),
        end(200),
    ];
    let r = analyze(&recs);
    let t = task(&r, 7);
    assert_eq!(t.name, "task 7");
    assert_eq!((t.polls, t.wakes, t.busy_ns), (2, 1, 20));
    assert_eq!(t.scheduled_ns, 10 + 30);
    // Idle after each poll until woken, and around the drop until the span closes.
    assert_eq!(t.idle_ns, 30 + 5 + 4);
    assert_eq!(
        t.unmeasured_polls, 2,
        "no switch records: polls are not split"
    );
    assert!(t.scheduled_p50_ns.is_some());
}

#[test]
fn marked_spans_are_tasks_idle_between_their_slices() {
    let green = |time, span| SpanEvent::NewSpan {
        time,
        span,
        parent: None,
        callsite: GREEN_CS,
        fields: vec![fv(0, Value::Str("conn".into())), fv(1, Value::U64(3))],
    };
    let plain = SpanEvent::NewSpan {
        time: 1,
        span: 9,
        parent: None,
        callsite: PLAIN_CS,
        fields: vec![],
    };
    let recs = vec![
        header(),
        callsites(),
        batch(
            WORKER,
            vec![
                green(0, 5),
                plain,
                SpanEvent::Enter { time: 10, span: 5 },
                SpanEvent::Enter { time: 11, span: 9 },
                SpanEvent::Exit { time: 19, span: 9 },
                SpanEvent::Exit { time: 20, span: 5 },
                SpanEvent::Enter { time: 50, span: 5 },
                SpanEvent::Exit { time: 60, span: 5 },
                SpanEvent::Close { time: 70, span: 5 },
                SpanEvent::Close { time: 71, span: 9 },
            ],
        ),
        end(100),
    ];
    let r = analyze(&recs);
    assert_eq!(
        r.tasks.len(),
        1,
        "a span without iotrace.task is not a task"
    );
    let t = task(&r, 5);
    assert_eq!((t.name.as_str(), t.task_id), ("conn 3", Some(3)));
    assert_eq!((t.polls, t.busy_ns, t.idle_ns, t.wakes), (2, 20, 40, 0));
}

#[test]
fn garbage_records_do_not_panic() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut a = TaskAnalyzer::default();
    a.add(&callsites(), &mut NoSink);
    for _ in 0..5000 {
        let t = next() % 1000;
        let span = next() % 8;
        let rec = match next() % 7 {
            0 => switches(&[(t, next() % 2 == 0, next() % 3 == 0, (next() % 300) as u16)]),
            1 => batch(WORKER, vec![SpanEvent::Enter { time: t, span }]),
            2 => batch(WORKER, vec![SpanEvent::Exit { time: t, span }]),
            3 => batch(WORKER, vec![SpanEvent::Close { time: t, span }]),
            4 => batch(WORKER, vec![wake(t, span), new_task(t, span, "task", "x")]),
            5 => marker(t),
            _ => batch(
                (next() % 3) as u32,
                vec![new_task(u64::MAX - t, span, "local", "")],
            ),
        };
        a.add(&rec, &mut NoSink);
    }
    let r = a.finish(&mut NoSink);
    assert!(serde_json::to_string(&r.tasks).is_ok());
}

pub(super) fn waker_op(time: u64, span: u64, op: &str, ctx: Option<u64>) -> SpanEvent {
    SpanEvent::Event {
        time,
        span: ctx,
        callsite: WAKER_CS,
        fields: vec![fv(0, Value::Str(op.into())), fv(1, Value::Span(span))],
    }
}

pub(super) fn at(time: u64, stack: u64) -> SpanEvent {
    SpanEvent::At { time, stack }
}

pub(super) fn enter(time: u64, span: u64) -> SpanEvent {
    SpanEvent::Enter { time, span }
}

pub(super) fn exit(time: u64, span: u64) -> SpanEvent {
    SpanEvent::Exit { time, span }
}

/// Task 100 polls on WORKER inside its span `request` (200), stores its waker at stack 7
/// and yields; a thread outside the runtime (50) wakes it; its second poll stores nothing (the
/// registration stands) and yields again; task 101, polling on worker 12, wakes it.
#[test]
fn yield_sites_come_from_the_waker_stored_in_the_poll_and_wakers_are_named() {
    let recs = vec![
        header(),
        callsites(),
        batch(
            1,
            vec![
                new_task(MS, 100, "task", "conn"),
                new_task(MS, 101, "task", "other"),
            ],
        ),
        batch(
            WORKER,
            vec![
                enter(2 * MS, 100),
                SpanEvent::NewSpan {
                    time: 2 * MS + 10,
                    span: 200,
                    parent: Some(100),
                    callsite: PLAIN_CS,
                    fields: vec![],
                },
                enter(2 * MS + 20, 200),
                waker_op(2 * MS + 30, 100, "waker.clone", Some(200)),
                at(2 * MS + 30, 7),
                // Stored again in the same span: the same site (its span chain made once).
                waker_op(2 * MS + 35, 100, "waker.clone", Some(200)),
                at(2 * MS + 35, 7),
                exit(2 * MS + 40, 200),
                exit(2 * MS + 50, 100),
                enter(12 * MS, 100),
                exit(12 * MS + 50, 100),
            ],
        ),
        batch(50, vec![wake(11 * MS, 100)]),
        batch(
            12,
            vec![
                enter(30 * MS, 101),
                wake(30 * MS + 10, 100),
                exit(30 * MS + 20, 101),
            ],
        ),
        batch(WORKER, vec![enter(31 * MS, 100), exit(31 * MS + 50, 100)]),
        marker(40 * MS),
        end(40 * MS),
    ];
    let r = analyze(&recs);
    let t = task(&r, 100);
    let known: Vec<_> = t
        .yield_sites
        .iter()
        .filter(|s| s.site != "unknown")
        .collect();
    assert_eq!(known.len(), 1, "{:#?}", t.yield_sites);
    let site = known[0];
    assert_eq!(site.stack_id, Some(7));
    assert_eq!(site.spans.as_deref(), Some("request"));
    assert_eq!(
        site.site, "in span request",
        "named by its span until its stack is"
    );
    // Idle 2.05..11 ms, 12.05..30.01 ms and 31.05..40 ms (the end), all at the stored waker.
    assert_eq!(site.count, 3);
    assert_eq!(
        site.idle_ns,
        (11 * MS - (2 * MS + 50)) + (30 * MS + 10 - (12 * MS + 50)) + (40 * MS - (31 * MS + 50))
    );
    assert_eq!(t.yield_unknown_ns, 0);
    assert_eq!(
        t.woken_by,
        WokenBy {
            thread: 1,
            task: 1,
            ..WokenBy::default()
        }
    );
    let kinds: Vec<(&str, u64)> = t.wakers.iter().map(|w| (w.kind.as_str(), w.id)).collect();
    assert!(
        kinds.contains(&("thread", 50)) && kinds.contains(&("task", 101)),
        "{kinds:?}"
    );
    assert_eq!(
        t.wakers
            .iter()
            .find(|w| w.kind == "task")
            .map(|w| w.name.as_str()),
        Some("other")
    );
}

/// Task 100 blocks WORKER (the only worker) for 5 ms in each of two polls; task 101, woken
/// as each begins, waits for it: scheduling delays held by blocked polls of task 100's spawn
/// place.
#[test]
fn a_wait_behind_a_blocked_poll_is_a_scheduling_delay() {
    let us = MS / 1000;
    let recs = vec![
        header(),
        callsites(),
        batch(
            1,
            vec![
                new_task(MS, 100, "task", "blocker"),
                new_task(MS, 101, "task", "victim"),
            ],
        ),
        switches(&[
            (2 * MS, false, false, 0),
            (2100 * us, true, false, 230),
            (7100 * us, false, false, 0),
            (7600 * us, true, false, 230),
            (12600 * us, false, false, 0),
            (14 * MS, true, false, 232),
        ]),
        batch(
            WORKER,
            vec![
                enter(1500 * us, 101),
                exit(1600 * us, 101),
                enter(2050 * us, 100),
                exit(7200 * us, 100),
                enter(7300 * us, 101),
                exit(7400 * us, 101),
                enter(7450 * us, 100),
                exit(12700 * us, 100),
                enter(12800 * us, 101),
                exit(12900 * us, 101),
            ],
        ),
        batch(50, vec![wake(2060 * us, 101), wake(7500 * us, 101)]),
        marker(14 * MS),
        end(15 * MS),
    ];
    let r = analyze(&recs);
    let v = task(&r, 101);
    assert_eq!(v.delayed_wakes, 2);
    assert_eq!(v.delayed_ns, (7300 - 2060) * us + (12800 - 7500) * us);
    let w = r
        .warnings
        .iter()
        .find(|w| w.kind == "scheduling_delay")
        .unwrap_or_else(|| panic!("no scheduling_delay in {:#?}", r.warnings));
    assert_eq!(w.task, "victim");
    let d = w.delay.as_ref().expect("delay");
    assert_eq!(d.held_by[0].task, "tasks spawned at src/main.rs:42:5");
    assert_eq!(
        d.held_by[0].held_ns,
        (7200 - 2060) * us + (12700 - 7500) * us
    );
    assert_eq!(d.held_by[0].blocked_ns, 10 * MS);
    assert_eq!(d.workers, 1);
    // The blocker itself waited behind nobody.
    assert!(!r
        .warnings
        .iter()
        .any(|w| w.kind == "scheduling_delay" && w.task == "blocker"));
}
