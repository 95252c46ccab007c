//! Who woke whom: `record` keeps the kernel's wakeups (`sched:sched_waking`) that a recorded
//! thread performs, in `Wakeups` records, and none with `--no-wakeups`; an attached recording
//! (`record -p`) keeps those of the threads it attached to.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use iotrace_collector::format::{Record, TraceReader};
use iotrace_tests::{fixture, iotrace, perf_available, record, temp_dir};

/// A wakeup as the trace has it: `(waker_pid, waker_tid, wakee_tid, flags)`.
type Edge = (u32, u32, u32, u8);

/// Every wakeup of a trace, and the threads' names (the last name of each tid).
fn read_trace(trace: &Path) -> (Vec<Edge>, HashMap<String, u32>) {
    let reader = TraceReader::open(trace).expect("open the trace");
    let mut edges = Vec::new();
    let mut names = HashMap::new();
    for r in reader {
        match r {
            Record::Wakeups(w) => edges.extend(
                w.wakeups
                    .iter()
                    .map(|x| (x.waker_pid, x.waker_tid, x.wakee_tid, x.flags)),
            ),
            Record::Comm(c) => {
                names.insert(c.name, c.tid);
            }
            _ => {}
        }
    }
    (edges, names)
}

/// Two threads hand a turn back and forth N times over a Mutex and Condvar: each waits in
/// futex until the other wakes it, so the trace holds at least N wakeups between them, with
/// the waker a thread of the pair and the wakee the other. Without `--no-wakeups` only.
#[test]
fn pingpong_threads_wake_each_other() {
    const N: usize = 2000;
    if !perf_available("pingpong_threads_wake_each_other") {
        return;
    }
    let dir = temp_dir("wakeups-pingpong");
    let trace = dir.join("t.iotrace");
    let fx = fixture();
    let n = N.to_string();
    let cmd = [fx.to_str().unwrap(), "pingpong", n.as_str()];
    let out = record(&trace, &[], &cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "record failed: {err}");
    assert!(!err.contains("wakeups) is missing"), "{err}");
    let (between, all) = between_ping_and_pong(&trace);
    assert!(
        between >= N,
        "{between} wakeups between ping and pong, expected at least {N}; {all} wakeups in all"
    );
    let (edges, names) = read_trace(&trace);
    let ping = names["ping"];
    // The waker's process is the fixture's.
    let pid = edges
        .iter()
        .find(|e| e.1 == ping)
        .map(|e| e.0)
        .expect("a wakeup by ping");
    assert_ne!(pid, 0);
    assert!(edges.iter().filter(|e| e.1 == ping).all(|e| e.0 == pid));

    let out = record(&trace, &["--no-wakeups"], &cmd);
    assert!(
        out.status.success(),
        "record --no-wakeups failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (edges, _) = read_trace(&trace);
    assert!(
        edges.is_empty(),
        "--no-wakeups recorded {} wakeups",
        edges.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The wakeups between threads `ping` and `pong` of a trace, and all of its wakeups.
fn between_ping_and_pong(trace: &Path) -> (usize, usize) {
    let (edges, names) = read_trace(trace);
    let (ping, pong) = (names["ping"], names["pong"]);
    let between = edges
        .iter()
        .filter(|&&(_, waker, wakee, flags)| {
            flags == 0 && ((waker, wakee) == (ping, pong) || (waker, wakee) == (pong, ping))
        })
        .count();
    (between, edges.len())
}

/// `record -p` on a ping-pong that was running before it: the threads it attached to are
/// followed, so their wakeups of each other are kept. A round trip takes tens of
/// microseconds here, so a second of it holds thousands; a hundred is the bar.
#[test]
fn attached_threads_wakeups_are_recorded() {
    if !perf_available("attached_threads_wakeups_are_recorded") {
        return;
    }
    let dir = temp_dir("wakeups-attached");
    let trace = dir.join("t.iotrace");
    // Long enough to outlast the recording; killed after it.
    let mut target = Command::new(fixture())
        .args(["pingpong", "1000000000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the fixture");
    // Both threads are running before the recording starts.
    std::thread::sleep(Duration::from_millis(100));
    let pid = target.id().to_string();
    let mut rec = Command::new(iotrace())
        .args(["record", "-q", "-o", trace.to_str().unwrap(), "-p", &pid])
        .args(["--duration", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iotrace record -p");
    let mut said = String::new();
    for line in BufReader::new(rec.stderr.take().unwrap()).lines() {
        said.push_str(&line.expect("iotrace's stderr"));
        said.push('\n');
    }
    let status = rec.wait().expect("iotrace record -p");
    let _ = target.kill();
    let _ = target.wait();
    assert!(status.success(), "record -p failed: {said}");
    let (between, all) = between_ping_and_pong(&trace);
    assert!(
        between >= 100,
        "{between} wakeups between ping and pong in a second of attached recording; {all} in all"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
