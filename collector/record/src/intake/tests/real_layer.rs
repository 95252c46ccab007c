//! Round trips from the real `iotrace-layer`: each scenario runs in a child process (this test
//! binary re-run with `IOTRACE_TEST_CHILD`), so the layer's process-wide connection, its exit
//! flush and the child's own pid are all real.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use super::super::*;
use super::TempDir;

const CHILD_ENV: &str = "IOTRACE_TEST_CHILD";

/// Entry point of the child processes; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    iotrace_layer::init();
    match scenario.as_str() {
        "threads" => threads_scenario(),
        "tokio" => tokio_scenario(),
        "exit_without_flush" => {
            let s = tracing::info_span!("last_words");
            s.in_scope(|| tracing::info!("bye"));
            // No flush(): exit() runs the layer's atexit hook.
            std::process::exit(0);
        }
        _ => {}
    }
    iotrace_layer::flush();
    std::process::exit(0);
}

fn threads_scenario() {
    let work = |who: &'static str| {
        let outer = tracing::info_span!("outer", who, n = 3u64);
        let _o = outer.enter();
        for i in 0..3u64 {
            let inner = tracing::debug_span!("inner", i);
            let _e = inner.enter();
            tracing::info!(i, ok = true, "tick");
        }
    };
    let t = std::thread::spawn(move || work("thread"));
    work("main");
    let _ = t.join();
}

fn tokio_scenario() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..10u64)
            .map(|i| {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    i
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(rt);
}

/// Runs `scenario` in a child connected to a fresh intake; returns the child's pid and batches.
fn record(scenario: &str) -> (u32, Vec<SpanBatch>, IntakeStats) {
    let dir = TempDir::new();
    let intake = start(dir.path()).expect("start intake");
    let test = format!(
        "{}::child_entry",
        module_path!().split_once("::").map_or("", |(_, rest)| rest)
    );
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env(SOCKET_ENV, intake.socket_path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let pid = child.id();
    let mut got = Vec::new();
    loop {
        if let Some(b) = intake.recv_timeout(Duration::from_millis(10)) {
            got.push(b);
        }
        if let Some(status) = child.try_wait().expect("wait child") {
            assert!(status.success(), "child failed: {status}");
            break;
        }
    }
    let (stats, rest) = intake.shutdown();
    got.extend(rest);
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert_eq!(stats.bad_clients, 0);
    assert_eq!(stats.dropped_by_programs, 0);
    assert_eq!(
        stats.events as usize,
        got.iter().map(|b| b.events.len()).sum::<usize>()
    );
    (pid, got, stats)
}

/// The decoded stream, indexed.
struct Trace {
    callsites: HashMap<u64, Callsite>,
    /// span id -> (callsite, parent, fields, tid)
    spans: BTreeMap<u64, (u64, Option<u64>, Vec<FieldValue>, u32)>,
    /// (tid, event) in arrival order
    events: Vec<(u32, SpanEvent)>,
}

impl Trace {
    fn new(batches: &[SpanBatch]) -> Self {
        let mut t = Trace {
            callsites: HashMap::new(),
            spans: BTreeMap::new(),
            events: Vec::new(),
        };
        for b in batches {
            for e in &b.events {
                match e {
                    SpanEvent::Callsite(c) => {
                        assert!(t.callsites.insert(c.id, c.clone()).is_none(), "sent once");
                    }
                    SpanEvent::NewSpan {
                        span,
                        parent,
                        callsite,
                        fields,
                        ..
                    } => {
                        let prev = t
                            .spans
                            .insert(*span, (*callsite, *parent, fields.clone(), b.tid));
                        assert!(prev.is_none(), "span id {span} reused");
                    }
                    _ => {}
                }
                t.events.push((b.tid, e.clone()));
            }
        }
        t
    }

    fn callsite(&self, id: u64) -> &Callsite {
        self.callsites
            .get(&id)
            .expect("every used callsite is defined")
    }

    fn spans_named(&self, name: &str) -> Vec<u64> {
        self.spans
            .iter()
            .filter(|(_, (cs, ..))| self.callsite(*cs).name == name)
            .map(|(id, _)| *id)
            .collect()
    }

    fn field(&self, span: u64, name: &str) -> Option<&Value> {
        let (cs, _, fields, _) = self.spans.get(&span)?;
        self.callsite(*cs).get(fields, name)
    }

    fn count(&self, pred: impl Fn(&SpanEvent) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| pred(e)).count()
    }
}

#[test]
fn real_layer_round_trip_across_two_threads() {
    let (pid, batches, _) = record("threads");
    assert!(batches.iter().all(|b| b.pid == pid));
    let t = Trace::new(&batches);

    let outer = t.spans_named("outer");
    let inner = t.spans_named("inner");
    assert_eq!((outer.len(), inner.len()), (2, 6));
    let tids: BTreeSet<u32> = outer.iter().map(|s| t.spans[s].3).collect();
    assert_eq!(tids.len(), 2, "two threads");
    assert!(!tids.contains(&0));
    for s in &inner {
        let (_, parent, _, tid) = &t.spans[s];
        let parent = parent.expect("inner has a parent");
        assert!(outer.contains(&parent));
        assert_eq!(t.spans[&parent].3, *tid, "parent on the same thread");
        assert!(matches!(t.field(*s, "i"), Some(Value::U64(0..=2))));
    }
    let mut whos: Vec<_> = outer.iter().filter_map(|s| t.field(*s, "who")).collect();
    whos.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(
        whos,
        [&Value::Str("main".into()), &Value::Str("thread".into())]
    );
    let cs = t.callsite(t.spans[&outer[0]].0);
    assert_eq!((cs.kind, cs.level), (CallsiteKind::Span, Level::Info));

    for kind in ["enter", "exit", "close"] {
        let n = t.count(|e| match kind {
            "enter" => matches!(e, SpanEvent::Enter { .. }),
            "exit" => matches!(e, SpanEvent::Exit { .. }),
            _ => matches!(e, SpanEvent::Close { .. }),
        });
        assert_eq!(n, 8, "{kind}s");
    }
    let mut ticks = 0;
    for (tid, e) in &t.events {
        if let SpanEvent::Event {
            span,
            callsite,
            fields,
            ..
        } = e
        {
            let cs = t.callsite(*callsite);
            assert_eq!(cs.kind, CallsiteKind::Event);
            assert_eq!(cs.get(fields, "message"), Some(&Value::Str("tick".into())));
            assert_eq!(cs.get(fields, "ok"), Some(&Value::Bool(true)));
            let span = span.expect("event inside a span");
            assert!(inner.contains(&span));
            assert_eq!(t.spans[&span].3, *tid);
            ticks += 1;
        }
    }
    assert_eq!(ticks, 6);
    // Per thread, times never go backwards.
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (tid, e) in &t.events {
        if let Some(time) = e.time() {
            let prev = last.insert(*tid, time).unwrap_or(0);
            assert!(time >= prev, "time went back on tid {tid}");
        }
    }
}

#[test]
fn tokio_tasks_round_trip_with_wakers_mapped_to_task_spans() {
    let (_, batches, _) = record("tokio");
    let t = Trace::new(&batches);
    let tasks: BTreeSet<u64> = t
        .spans_named("runtime.spawn")
        .into_iter()
        .filter(|s| t.field(*s, "kind") == Some(&Value::Str("task".into())))
        .collect();
    assert_eq!(tasks.len(), 10, "10 spawned tasks");
    for s in &tasks {
        let cs = t.callsite(t.spans[s].0);
        assert_eq!(cs.target, "tokio::task");
        assert!(matches!(t.field(*s, "task.id"), Some(Value::U64(_))));
        assert!(matches!(t.field(*s, "loc.file"), Some(Value::Str(_))));
    }
    let enters = t.count(|e| matches!(e, SpanEvent::Enter { span, .. } if tasks.contains(span)));
    assert!(enters >= 10, "each task polled at least once, got {enters}");

    let mut woken: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, e) in &t.events {
        let SpanEvent::Event {
            callsite, fields, ..
        } = e
        else {
            continue;
        };
        let cs = t.callsite(*callsite);
        if cs.target != "tokio::task::waker" {
            continue;
        }
        assert!(matches!(cs.get(fields, "op"), Some(Value::Str(op)) if op.starts_with("waker.")));
        match cs.get(fields, "task.id") {
            Some(Value::Span(id)) => {
                assert!(t.spans.contains_key(id), "waker names a known span");
                *woken.entry(*id).or_default() += 1;
            }
            other => panic!("unresolved waker task id {other:?}"),
        }
    }
    for s in &tasks {
        assert!(woken.contains_key(s), "task span {s} has waker events");
    }
}

#[test]
fn records_still_buffered_at_exit_arrive_without_an_explicit_flush() {
    let (_, batches, _) = record("exit_without_flush");
    let t = Trace::new(&batches);
    let spans = t.spans_named("last_words");
    assert_eq!(spans.len(), 1);
    assert_eq!(t.count(|e| matches!(e, SpanEvent::Enter { .. })), 1);
    assert_eq!(t.count(|e| matches!(e, SpanEvent::Exit { .. })), 1);
    assert_eq!(t.count(|e| matches!(e, SpanEvent::Event { .. })), 1);
    // exit() runs no destructors on the stack, so the span never closed.
    assert_eq!(t.count(|e| matches!(e, SpanEvent::Close { .. })), 0);
}
