//! The stack clauses of `collector/trace/FORMAT.md` (kinds 14–17), as the analysis folds them.

use iotrace_trace::build::read_all;
use iotrace_trace::*;

use iotrace_analysis::stacks::{StackFold, StackItem};

fn node(parent: u32, addr: u64) -> StackNode {
    StackNode { parent, addr }
}

fn samples(base_ns: u64, list: &[(u64, u32, u32, Option<u16>)]) -> Record {
    Record::Samples(Samples {
        cpu: 0,
        base_ns,
        samples: list
            .iter()
            .map(|&(delta_ns, tid, stack, off_cpu)| StackSample {
                delta_ns,
                tid,
                stack,
                off_cpu,
            })
            .collect(),
    })
}

fn fold(records: &[Record]) -> (StackFold, Vec<StackItem>) {
    let mut f = StackFold::new(false);
    let mut items = Vec::new();
    for r in records {
        f.add(r, &mut |_, i| items.push(i));
    }
    f.finish(&mut |_, i| items.push(i));
    (f, items)
}

fn frames(f: &StackFold, leaf: u32) -> Vec<u64> {
    f.stacks
        .walk(leaf)
        .map(|n| f.stacks.frame(n).unwrap().0)
        .collect()
}

#[test]
fn stack_records_round_trip() {
    let records = vec![
        Record::Sampling(Sampling {
            frequency_hz: 999,
            off_cpu: true,
            kernel_stacks: true,
            boot_id: "b".into(),
            kernel_release: "6.1".into(),
        }),
        Record::Mmap(Mmap {
            pid: 42,
            tid: 42,
            time_ns: 5,
            addr: 0x5000,
            len: 0x1000,
            pgoff: 0x2000,
            ino: 7,
            build_id: vec![],
            filename: "/bin/true".into(),
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x5010)],
        }),
        samples(1_000, &[(0, 42, 2, None), (10, 42, 2, Some(35))]),
    ];
    let mut t = iotrace_trace::build::TraceBuilder::new(42);
    t.records = records.clone();
    let bytes = t.to_bytes();
    let (read, stop) = read_all(&bytes).unwrap();
    assert!(stop.is_none());
    assert_eq!(read, records);
}

#[test]
fn stack_nodes() {
    // Numbered in file order across records; a root is not a frame; frames share prefixes.
    let (f, _) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000), node(2, 0x2000)],
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(2, 0x3000), node(4, 0xffff_ffff_8100_0000)],
        }),
    ]);
    assert_eq!(frames(&f, 3), vec![0x2000, 0x1000]);
    assert_eq!(frames(&f, 5), vec![0xffff_ffff_8100_0000, 0x3000, 0x1000]);
    assert!(frames(&f, 1).is_empty());
}

#[test]
fn stack_defs_first() {
    // A sample is read against the nodes defined before it: here, node 2 exists.
    let (f, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 2, None)]),
    ]);
    assert_eq!(items.len(), 1);
    assert_eq!(frames(&f, items[0].stack), vec![0x1000]);
}

#[test]
fn address_spaces() {
    let mmap = |addr: u64, file: &str| {
        Record::Mmap(Mmap {
            pid: 42,
            tid: 42,
            time_ns: 0,
            addr,
            len: 0x1000,
            pgoff: 0,
            ino: 0,
            build_id: vec![],
            filename: file.into(),
        })
    };
    let exec = Record::Comm(Comm {
        pid: 42,
        tid: 42,
        time_ns: 0,
        name: "b".into(),
        exec: true,
    });
    let (f, _) = fold(&[
        mmap(0x1000, "/bin/a"),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1010)],
        }),
        exec,
        mmap(0x1000, "/bin/b"),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(3, 0x1010)],
        }),
        Record::Fork(Fork {
            pid: 43,
            ppid: 42,
            tid: 43,
            ptid: 42,
            time_ns: 0,
        }),
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 43), node(5, 0x1010)],
        }),
    ]);
    let file = |n: u32| {
        let (addr, space) = f.stacks.frame(n).unwrap();
        f.spaces.lookup(space, addr).unwrap().filename.clone()
    };
    assert_eq!(file(2), "/bin/a", "before the exec");
    assert_eq!(file(4), "/bin/b", "after the exec");
    assert_eq!(
        file(6),
        "/bin/b",
        "a forked child sees its parent's mappings"
    );
}

#[test]
fn samples_delta() {
    let (_, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(
            1_000,
            &[(5, 42, 2, None), (20, 42, 2, None), (0, 42, 2, None)],
        ),
    ]);
    let times: Vec<u64> = items.iter().map(|i| i.time_ns).collect();
    assert_eq!(times, vec![1_005, 1_025, 1_025]);
}

#[test]
fn off_cpu() {
    let switches = Record::Switches(Switches {
        cpu: 1,
        base_ns: 1_500,
        switches: vec![
            Switch {
                delta_ns: 0,
                pid: 42,
                tid: 42,
                flags: Switch::OUT,
                syscall: 230,
            },
            Switch {
                delta_ns: 8_500,
                pid: 42,
                tid: 42,
                flags: 0,
                syscall: Switch::NO_SYSCALL,
            },
        ],
    });
    let (_, items) = fold(&[
        Record::StackDefs(StackDefs {
            nodes: vec![node(0, 42), node(1, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 2, None), (500, 42, 2, Some(230))]),
        switches,
    ]);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].off_cpu, None);
    let off = items[1].off_cpu.expect("an off-CPU item");
    assert_eq!(
        (items[1].time_ns, off.duration_ns, off.syscall),
        (1_500, 8_500, 230)
    );
}

#[test]
fn undefined_stack() {
    let (f, items) = fold(&[
        Record::StackDefs(StackDefs {
            // Node 2's parent (5) is never defined before it: the stack ends there.
            nodes: vec![node(0, 42), node(5, 0x1000)],
        }),
        samples(1_000, &[(0, 42, 99, None), (0, 42, 2, None)]),
    ]);
    assert_eq!(f.stats.undefined_stacks, 1);
    assert_eq!(items.len(), 1);
    assert_eq!(frames(&f, 2), vec![0x1000]);
}

#[test]
fn span_stacks() {
    use iotrace_wire::{FieldValue, SpanEvent, Value};
    let event = SpanEvent::Event {
        time: 2_000,
        span: None,
        callsite: 9,
        fields: vec![FieldValue {
            index: 0,
            value: Value::Str("waker.clone".into()),
        }],
    };
    let mut b = build::TraceBuilder::new(42);
    b.push(Record::StackDefs(StackDefs {
        nodes: vec![node(0, 42), node(1, 0x1000), node(2, 0x2000)],
    }));
    b.spans(
        42,
        43,
        vec![
            event.clone(),
            SpanEvent::At {
                time: 2_000,
                stack: 3,
            },
            // An `At` after no event: ignored.
            SpanEvent::At {
                time: 2_100,
                stack: 3,
            },
        ],
    );
    b.end(5_000);
    let (records, stop) = read_all(&b.to_bytes()).expect("reads back");
    assert!(stop.is_none());
    let batch = records
        .iter()
        .find_map(|r| match r {
            Record::Spans(s) => Some(s),
            _ => None,
        })
        .expect("the batch");
    assert_eq!(batch.events[0], event);
    assert_eq!(
        batch.events[1],
        SpanEvent::At {
            time: 2_000,
            stack: 3
        }
    );
    // The node is the stack tree's: its frames are the two defined before the batch.
    let (f, _) = fold(&records);
    assert_eq!(frames(&f, 3), vec![0x2000, 0x1000]);
    let mut tasks = iotrace_analysis::tasks::TaskAnalyzer::default();
    for r in &records {
        tasks.add(r, &mut iotrace_analysis::tasks::NoSink);
    }
    let report = tasks.finish(&mut iotrace_analysis::tasks::NoSink);
    assert!(report.tasks.is_empty());
}
