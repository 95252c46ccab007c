//! The fold on hand-made records: order, pairing, contexts.

use super::*;
use iotrace_trace::{Samples, StackNode, StackSample, Switch, Switches};
use iotrace_wire::{Callsite, CallsiteKind, FieldValue, Level, SpanBatch, SpanEvent};

fn defs() -> Record {
    Record::StackDefs(StackDefs {
        nodes: vec![
            StackNode { parent: 0, addr: 1 },
            StackNode {
                parent: 1,
                addr: 0x1000,
            },
            StackNode {
                parent: 2,
                addr: 0x2000,
            },
        ],
    })
}

fn sample(time: u64, tid: u32, off_cpu: Option<u16>) -> Record {
    Record::Samples(Samples {
        cpu: 0,
        base_ns: time,
        samples: vec![StackSample {
            delta_ns: 0,
            tid,
            stack: 3,
            off_cpu,
        }],
    })
}

fn switch_in(time: u64, tid: u32) -> Record {
    Record::Switches(Switches {
        cpu: 1,
        base_ns: time,
        switches: vec![Switch {
            delta_ns: 0,
            pid: 1,
            tid,
            flags: 0,
            syscall: Switch::NO_SYSCALL,
        }],
    })
}

fn run(fold: &mut StackFold, records: &[Record]) -> Vec<StackItem> {
    let mut items = Vec::new();
    for r in records {
        fold.add(r, &mut |_, i| items.push(i));
    }
    fold.finish(&mut |_, i| items.push(i));
    items
}

#[test]
fn walk_goes_from_leaf_to_outermost_frame() {
    let mut fold = StackFold::new(false);
    run(&mut fold, &[defs()]);
    let frames: Vec<u64> = fold
        .stacks
        .walk(3)
        .map(|n| fold.stacks.frame(n).unwrap().0)
        .collect();
    assert_eq!(frames, vec![0x2000, 0x1000]);
    assert_eq!(
        fold.stacks.walk(1).count(),
        0,
        "a process root is not a frame"
    );
    assert_eq!(fold.stacks.walk(99).count(), 0);
}

#[test]
fn off_cpu_stretch_ends_at_next_switch_in() {
    let mut fold = StackFold::new(false);
    let items = run(
        &mut fold,
        &[defs(), switch_in(5_000, 7), sample(1_000, 7, Some(230))],
    );
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].off_cpu.unwrap().duration_ns, 4_000);
    assert_eq!(items[0].time_ns, 1_000);
}

#[test]
fn undefined_stacks_are_counted_not_used() {
    let mut fold = StackFold::new(false);
    let items = run(&mut fold, &[sample(1_000, 7, None)]);
    assert!(items.is_empty());
    assert_eq!(fold.stats.undefined_stacks, 1);
}

fn task_callsite() -> SpanEvent {
    SpanEvent::Callsite(Callsite {
        id: 1,
        kind: CallsiteKind::Span,
        level: Level::Trace,
        name: "runtime.spawn".into(),
        target: "tokio::task".into(),
        module: None,
        file: None,
        line: None,
        fields: vec!["kind".into(), "loc.file".into(), "loc.line".into()],
    })
}

fn request_callsite() -> SpanEvent {
    SpanEvent::Callsite(Callsite {
        id: 2,
        kind: CallsiteKind::Span,
        level: Level::Info,
        name: "request".into(),
        target: "demo".into(),
        module: None,
        file: None,
        line: None,
        fields: vec![],
    })
}

fn batch(tid: u32, events: Vec<SpanEvent>) -> Record {
    Record::Spans(SpanBatch {
        pid: 1,
        tid,
        dropped_total: 0,
        events,
    })
}

#[test]
fn samples_get_the_task_and_spans_active_at_their_instant() {
    let mut fold = StackFold::new(true);
    let creation = batch(0, vec![task_callsite(), request_callsite()]);
    let spans = batch(
        7,
        vec![
            SpanEvent::NewSpan {
                time: 10,
                span: 100,
                parent: None,
                callsite: 1,
                fields: vec![
                    FieldValue {
                        index: 0,
                        value: Value::Str("task".into()),
                    },
                    FieldValue {
                        index: 1,
                        value: Value::Str("/src/demo/strategy/tokio.rs".into()),
                    },
                    FieldValue {
                        index: 2,
                        value: Value::U64(70),
                    },
                ],
            },
            SpanEvent::Enter {
                time: 100,
                span: 100,
            },
            SpanEvent::NewSpan {
                time: 110,
                span: 101,
                parent: Some(100),
                callsite: 2,
                fields: vec![],
            },
            SpanEvent::Enter {
                time: 120,
                span: 101,
            },
            SpanEvent::Exit {
                time: 2_000,
                span: 101,
            },
            SpanEvent::Exit {
                time: 2_100,
                span: 100,
            },
            SpanEvent::Enter {
                time: 9_000,
                span: 100,
            },
        ],
    );
    // The perf samples come first in the file; the thread's span batch later.
    let items = run(
        &mut fold,
        &[
            defs(),
            sample(1_000, 7, None),
            sample(3_000, 7, None),
            creation,
            spans,
        ],
    );
    assert_eq!(items.len(), 2);
    let first = fold.contexts.get(items[0].context).expect("a context");
    assert_eq!(
        fold.strings.get(first.task.unwrap()),
        "task strategy/tokio.rs:70"
    );
    let names: Vec<&str> = first.spans.iter().map(|&s| fold.strings.get(s)).collect();
    assert_eq!(names, vec!["request"]);
    assert_eq!(items[1].context, 0, "between polls no span is active");
}

use iotrace_wire::Value;

#[test]
fn a_span_created_after_its_samples_is_named_at_the_end() {
    let mut fold = StackFold::new(true);
    // Thread 7 enters span 100 and is sampled inside it; the thread that created span 100
    // (thread 8) sends its batch, with the creation record, only at the very end.
    let entered = batch(
        7,
        vec![
            SpanEvent::Enter {
                time: 100,
                span: 100,
            },
            SpanEvent::Exit {
                time: 9_000,
                span: 100,
            },
        ],
    );
    let created = batch(
        8,
        vec![SpanEvent::NewSpan {
            time: 50,
            span: 100,
            parent: None,
            callsite: 2,
            fields: vec![],
        }],
    );
    let items = run(
        &mut fold,
        &[
            defs(),
            sample(1_000, 7, None),
            entered,
            batch(0, vec![request_callsite()]),
            created,
        ],
    );
    assert_eq!(items.len(), 1);
    let c = fold.contexts.get(items[0].context).expect("a context");
    let names: Vec<&str> = c.spans.iter().map(|&s| fold.strings.get(s)).collect();
    assert_eq!(names, vec!["request"]);
}
