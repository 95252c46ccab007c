//! Golden files of every output a script may parse, from one small synthetic trace whose
//! content is known by construction: a tokio-style task `handler` on worker thread 11 that sleeps
//! 5 ms inside its poll (inside a `request` span), then waits in epoll and is dropped; an on-CPU
//! and an off-CPU stack sample of it.
//!
//! REPORT.md promises that the JSON report's keys are only ever added: a change to any of these
//! files shows in review as a diff of `tests/golden/`. Rerun with `IOTRACE_BLESS=1` to accept one.

use std::path::{Path, PathBuf};

use iotrace_analysis::intervals::TimelineOptions;
use iotrace_analysis::summary::summarize_file;
use iotrace_render::export::{export, ExportFormat};
use iotrace_render::flamegraph::{self, GroupBy, Kind, Options};
use iotrace_render::report;
use iotrace_trace::build::{TraceBuilder, MS};
use iotrace_trace::{
    Capabilities, ProcSample, Record, Sampling, StackDefs, StackNode, StackSample,
};
use iotrace_wire::{Callsite, CallsiteKind, FieldValue, Level, SpanEvent, Value};

const PID: u32 = 10;
const WORKER: u32 = 11;
const SPAWN_CS: u64 = 1;
const REQUEST_CS: u64 = 2;
const TASK: u64 = 100;
const REQUEST: u64 = 200;

fn callsite(id: u64, name: &str, target: &str, fields: &[&str]) -> SpanEvent {
    SpanEvent::Callsite(Callsite {
        id,
        kind: CallsiteKind::Span,
        level: Level::Trace,
        name: name.into(),
        target: target.into(),
        module: None,
        file: Some("src/main.rs".into()),
        line: Some(42),
        fields: fields.iter().map(|f| f.to_string()).collect(),
    })
}

fn fv(index: u8, value: Value) -> FieldValue {
    FieldValue { index, value }
}

fn trace() -> TraceBuilder {
    let mut t = TraceBuilder::new(PID);
    t.push(Record::Capabilities(Capabilities {
        perf: true,
        kernel: true,
        syscalls: false,
        spans: true,
        missing: vec!["no syscall counts (a synthetic trace)".into()],
    }));
    t.push(Record::Sampling(Sampling {
        frequency_hz: 1000,
        off_cpu: true,
        kernel_stacks: false,
        boot_id: "golden".into(),
        kernel_release: "golden".into(),
    }));
    t.comm(PID, PID, 0, "demo").comm(PID, WORKER, 0, "worker");
    t.spans(
        PID,
        0,
        vec![
            callsite(
                SPAWN_CS,
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
            callsite(REQUEST_CS, "request", "demo", &["path"]),
        ],
    );
    t.spans(
        PID,
        WORKER,
        vec![SpanEvent::NewSpan {
            time: MS,
            span: TASK,
            parent: None,
            callsite: SPAWN_CS,
            fields: vec![
                fv(0, Value::Str("task".into())),
                fv(1, Value::Str("handler".into())),
                fv(2, Value::U64(1)),
                fv(3, Value::Str("src/main.rs".into())),
                fv(4, Value::U64(42)),
                fv(5, Value::U64(5)),
            ],
        }],
    );
    // The worker runs from 2 ms, sleeps 5 ms in clock_nanosleep (230) inside the poll, runs
    // again, and waits in epoll_wait (232) from 8 ms to 9 ms.
    t.switches(
        0,
        PID,
        WORKER,
        &[
            (2 * MS, false, false, 0),
            (2 * MS + MS / 10, true, false, 230),
            (7 * MS + MS / 10, false, false, 0),
            (8 * MS, true, false, 232),
            (9 * MS, false, false, 0),
        ],
    );
    t.push(Record::StackDefs(StackDefs {
        nodes: vec![
            StackNode {
                parent: 0,
                addr: u64::from(PID),
            },
            StackNode {
                parent: 1,
                addr: 0x1000,
            },
            StackNode {
                parent: 2,
                addr: 0x2000,
            },
        ],
    }));
    t.push(Record::Samples(iotrace_trace::Samples {
        cpu: 0,
        base_ns: 2 * MS + MS / 20,
        samples: vec![
            StackSample {
                delta_ns: 0,
                tid: WORKER,
                stack: 3,
                off_cpu: None,
            },
            StackSample {
                delta_ns: MS / 20,
                tid: WORKER,
                stack: 3,
                off_cpu: Some(230),
            },
        ],
    }));
    t.spans(
        PID,
        WORKER,
        vec![
            SpanEvent::Enter {
                time: 2 * MS + MS / 50,
                span: TASK,
            },
            SpanEvent::NewSpan {
                time: 2 * MS + MS / 40,
                span: REQUEST,
                parent: Some(TASK),
                callsite: REQUEST_CS,
                fields: vec![fv(0, Value::Str("/".into()))],
            },
            SpanEvent::Enter {
                time: 2 * MS + MS / 40,
                span: REQUEST,
            },
            SpanEvent::Exit {
                time: 7 * MS + MS / 5,
                span: REQUEST,
            },
            SpanEvent::Close {
                time: 7 * MS + MS / 5,
                span: REQUEST,
            },
            SpanEvent::Exit {
                time: 7 * MS + MS / 4,
                span: TASK,
            },
            // tokio enters a task's span once more to drop it: not a poll.
            SpanEvent::Enter {
                time: 9 * MS + MS / 10,
                span: TASK,
            },
            SpanEvent::Exit {
                time: 9 * MS + MS / 5,
                span: TASK,
            },
            SpanEvent::Close {
                time: 9 * MS + MS / 4,
                span: TASK,
            },
        ],
    );
    // The recorder writes /proc samples as it goes: they tell the analysis how far the
    // (late-arriving) span batches have come.
    t.push(Record::ProcSample(ProcSample {
        time_ns: 9 * MS + MS / 2,
        ..ProcSample::default()
    }));
    t.end(10 * MS);
    t
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("IOTRACE_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("create tests/golden");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with IOTRACE_BLESS=1", path.display()));
    assert!(
        actual == expected,
        "{name} changed; if intended, rerun with IOTRACE_BLESS=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// A temporary directory with the synthetic trace in it, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iotrace-golden-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        trace().write(&dir.join("t.iotrace")).expect("write trace");
        Dir(dir)
    }
    fn trace(&self) -> PathBuf {
        self.0.join("t.iotrace")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn report_text_and_json() {
    let dir = Dir::new("report");
    let summary = summarize_file(&dir.trace()).expect("summarize");
    // What the trace makes certain, before comparing every byte.
    assert_eq!(summary.tasks.len(), 1);
    assert_eq!(summary.tasks[0].name, "handler");
    check("report.txt", &report::text(&summary));
    assert_eq!(
        summary.warnings.len(),
        1,
        "the 5 ms sleep blocks the worker"
    );
    let json = report::json(&summary);
    let v: serde_json::Value = serde_json::from_str(&json).expect("the report is JSON");
    assert!(v["warnings"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("clock_nanosleep")));
    check("report.json", &json);
}

#[test]
fn perfetto_json() {
    let dir = Dir::new("perfetto");
    let out = dir.0.join("t.json");
    export(
        &dir.trace(),
        &out,
        ExportFormat::Perfetto,
        &TimelineOptions::default(),
    )
    .expect("export");
    let json = std::fs::read_to_string(&out).expect("read export");
    let v: serde_json::Value = serde_json::from_str(&json).expect("the export is JSON");
    assert!(v["traceEvents"].as_array().is_some_and(|e| !e.is_empty()));
    check("perfetto.json", &json);
}

#[test]
fn folded_stacks() {
    let dir = Dir::new("folded");
    for (kind, name, stacks) in [
        (Kind::OnCpu, "on-cpu.folded", 1),
        (Kind::OffCpu, "off-cpu.folded", 1),
        (Kind::Async, "async.folded", 2),
    ] {
        let mut opts = Options::new(kind);
        opts.group_by = GroupBy::Task;
        let folded = flamegraph::fold_file(&dir.trace(), &opts).expect("fold");
        assert_eq!(folded.lines.len(), stacks, "{name}");
        let mut out = Vec::new();
        flamegraph::write_folded(&folded, &mut out).expect("write folded");
        check(
            name,
            &String::from_utf8(out).expect("folded stacks are UTF-8"),
        );
    }
}
