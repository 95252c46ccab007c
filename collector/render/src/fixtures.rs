//! What the unit tests of the timeline and the exports draw: a small analysis built by hand.

use iotrace_analysis::intervals::Collected;
use iotrace_analysis::summary::{Summary, ThreadSummary};
use iotrace_analysis::tasks::{
    Diagnosis, Poll, Sink, TaskInterval, TaskKey, TaskPhase, TaskRow, YieldSite,
};

pub(crate) const PID: u32 = 10;
pub(crate) const WORKER: u32 = 11;
pub(crate) const OTHER: u32 = 12;
pub(crate) const TASK: u64 = 100;
/// The recording's start on the trace's clock.
pub(crate) const START: u64 = 1_000_000;

/// Threads 10, 11 and 12 of process 10; task 100 `handler`, idle from 0 to 1 ms since the
/// recording started, polled on thread 12 from 1 ms to 2 ms, then idle until 8 ms; and one
/// `long_poll` diagnosis of it at 1 ms, whose worker (the one it happened on most) is 11.
pub(crate) fn diagnosed() -> (Summary, Collected) {
    let mut summary = Summary {
        pid: PID,
        duration_ns: 10_000_000,
        ..Summary::default()
    };
    for tid in [PID, WORKER, OTHER] {
        summary.threads.push(ThreadSummary {
            tid,
            pid: PID,
            name: format!("t{tid}"),
            ..ThreadSummary::default()
        });
    }
    let mut row = TaskRow::default();
    (row.id, row.pid, row.name) = (TASK, PID, "handler".into());
    summary.tasks.push(row);
    let mut d = Diagnosis::default();
    (d.kind, d.task, d.task_id, d.pid, d.tid) = ("long_poll", "handler".into(), TASK, PID, WORKER);
    d.line = Some("demo::handle at src/main.rs:42".into());
    (d.count, d.cost_ns, d.at_ns) = (1, 1_000_000, vec![1_000_000]);
    d.evidence = "polled for 1 ms on CPU".into();
    summary.diagnoses.push(d);
    let mut col = Collected::default();
    col.start_ns = START;
    let task = TaskKey {
        pid: PID,
        span: TASK,
    };
    let ms = |t: u64| START + t * 1_000_000;
    let idle = |start: u64, end: u64| TaskInterval {
        task,
        start: ms(start),
        end: ms(end),
        phase: TaskPhase::Idle(YieldSite::default()),
    };
    col.task_interval(&idle(0, 1));
    col.task_interval(&TaskInterval {
        task,
        start: ms(1),
        end: ms(2),
        phase: TaskPhase::Poll(Poll {
            tid: OTHER,
            start: ms(1),
            end: ms(2),
            on_cpu_ns: 1_000_000,
            preempted_ns: 0,
            blocked_ns: 0,
            blocked_counted_ns: 0,
            stretches: 0,
            syscall: None,
            stack: None,
            measured: true,
        }),
    });
    // Past the reorder buffer, so that the poll is stored.
    for i in 2..8 {
        col.task_interval(&idle(i, i + 1));
    }
    (summary, col)
}
