//! Diagnoses end to end (collector/REPORT.md, "Diagnoses"): the `asyncbugs` teaching program
//! has one task per classic async bug, each line at fault marked `// BUG: <kind>`; each bug's
//! diagnosis must name its task and that line, and the healthy task none. The tokio demo
//! under load has no diagnosis; tokio-blocking has only the blocked polls and the delays they
//! cause.

use std::path::Path;

use iotrace_tests::*;
use serde_json::Value;

/// One loaded program at a time: the rules about waiting for a worker assume the two cores
/// are not shared with another scenario's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const SOURCE: &str = "instrumented-demos/src/bin/asyncbugs.rs";

/// `asyncbugs.rs:N` for the line marked `// BUG: kind`.
fn marked(kind: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SOURCE);
    let text = std::fs::read_to_string(&path).expect("asyncbugs source");
    let marker = format!("// BUG: {kind}");
    let n = text
        .lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .unwrap_or_else(|| panic!("no `{marker}` in {SOURCE}"));
    format!("asyncbugs.rs:{}", n + 1)
}

fn diagnoses(r: &Value) -> &Vec<Value> {
    r["diagnoses"].as_array().expect("diagnoses[]")
}

fn one<'a>(r: &'a Value, kind: &str) -> &'a Value {
    let all = diagnoses(r);
    let of: Vec<&Value> = all.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(of.len(), 1, "one {kind} diagnosis expected in {all:#?}");
    of[0]
}

/// The `kind` diagnosis of task `task` (other tasks may have one of that kind too: the
/// spawner of 1,000 blocking jobs can poll for 10 ms on CPU).
fn of_task<'a>(r: &'a Value, kind: &str, task: &str) -> &'a Value {
    let all = diagnoses(r);
    let of: Vec<&Value> = all
        .iter()
        .filter(|d| d["kind"] == kind && d["task"] == task)
        .collect();
    assert_eq!(
        of.len(),
        1,
        "one {kind} diagnosis of {task} expected in {all:#?}"
    );
    of[0]
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn recorded(dir: &Path, args: &[&str]) -> Value {
    let trace = dir.join("bugs.data");
    let bin = demo_binary("asyncbugs");
    let mut cmd = vec![bin.to_str().expect("utf-8 path")];
    cmd.extend_from_slice(args);
    let out = record(&trace, &[], &cmd);
    assert!(
        out.status.success(),
        "record asyncbugs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report_json(&trace)
}

#[test]
fn every_bug_of_the_teaching_program_is_named_with_its_task_and_line() {
    if !perf_available("every_bug_of_the_teaching_program_is_named_with_its_task_and_line") {
        return;
    }
    let _one = serial();
    let r = recorded(&temp_dir("diagnoses-all"), &[]);

    // The culprit, the line, what it cost.
    let d = of_task(&r, "long_poll", "spinner");
    assert!(text(&d["message"]).contains(&marked("long_poll")), "{d:#}");
    // 20 polls of 25 ms of CPU; preempted by the other bugs' work, some stay under 10 ms on
    // CPU, none goes past 25 ms.
    let count = d["count"].as_u64().unwrap();
    assert!((1..=20).contains(&count), "{d:#}");
    assert!(
        d["cost_ns"].as_u64().unwrap() >= 10_000_000 * count,
        "{d:#}"
    );

    let d = of_task(&r, "lock_contention", "locker");
    assert!(
        text(&d["line"]).contains(&marked("lock_contention")),
        "{d:#}"
    );
    let lock = &d["lock"];
    let waits = lock["waits"].as_u64().unwrap();
    assert!(waits >= 2, "{d:#}");
    // The kernel's waker edge names the thread that released the lock, and the task it was
    // polling: the other lockers.
    assert!(
        lock["named"].as_u64().unwrap() * 10 >= waits * 9,
        "fewer than 90% of the futex waits have their waker named: {d:#}"
    );
    let holder = &lock["woken_by"][0];
    assert!(
        text(&holder["task"]).contains(text(&d["location"])),
        "{d:#}"
    );
    assert!(holder["tid"].as_u64().unwrap() > 0, "{d:#}");

    let d = of_task(&r, "held_across_await", "holder");
    assert!(
        text(&d["line"]).contains(&marked("held_across_await")),
        "{d:#}"
    );
    let held = &d["held"];
    assert!(text(&held["lock_line"]).contains("Mutex::lock"), "{d:#}");
    assert_eq!(held["waiters"][0]["task"], "waiter", "{d:#}");

    let d = of_task(&r, "self_wake", "busy_waiter");
    assert!(text(&d["line"]).contains(&marked("self_wake")), "{d:#}");
    // It wakes itself 200,000 times.
    assert!(
        d["self_wake"]["self_wakes"].as_u64().unwrap() >= 200_000,
        "{d:#}"
    );

    // No waker event comes from a future that keeps none: the task and its spawn place.
    let d = of_task(&r, "lost_waker", "lost");
    assert!(text(&d["location"]).contains("asyncbugs.rs:"), "{d:#}");

    let d = one(&r, "blocking_pool");
    assert!(text(&d["line"]).contains(&marked("blocking_pool")), "{d:#}");
    let pool = &d["pool"];
    assert_eq!(pool["jobs"], 1000, "{d:#}");
    // 1,000 jobs of 10 ms on at most 16 threads: all but the first 16 wait ≥ 10 ms.
    assert!(pool["waited"].as_u64().unwrap() >= 900, "{d:#}");
    assert!(pool["peak_threads"].as_u64().unwrap() <= 16, "{d:#}");

    for d in diagnoses(&r) {
        assert_ne!(d["task"], "healthy", "the healthy task is named: {d:#}");
    }
}

#[test]
fn the_healthy_task_alone_has_no_diagnosis() {
    if !perf_available("the_healthy_task_alone_has_no_diagnosis") {
        return;
    }
    let _one = serial();
    let r = recorded(&temp_dir("diagnoses-none"), &["--none"]);
    assert!(diagnoses(&r).is_empty(), "{:#?}", diagnoses(&r));
}

#[test]
fn without_wakeups_lock_contention_is_named_but_not_its_holder() {
    if !perf_available("without_wakeups_lock_contention_is_named_but_not_its_holder") {
        return;
    }
    let _one = serial();
    let dir = temp_dir("diagnoses-no-wakeups");
    let trace = dir.join("bugs.data");
    let bin = demo_binary("asyncbugs");
    let out = record(
        &trace,
        &["--no-wakeups"],
        &[bin.to_str().unwrap(), "--std-mutex"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report_json(&trace);
    let d = one(&r, "lock_contention");
    assert_eq!(d["lock"]["wakeups_recorded"], false, "{d:#}");
    assert_eq!(d["lock"]["named"], 0, "{d:#}");
}

/// Records `strategy` under a bounded load and reads the report.
fn loaded(strategy: &str, connections: &str, requests: &str, query: &str) -> Value {
    let dir = temp_dir(&format!("diagnoses-{strategy}-{connections}"));
    let trace = dir.join(format!("{strategy}.data"));
    loaded_demo_report(
        strategy,
        &trace,
        query,
        &["-c", connections, "-n", requests],
    )
}

#[test]
fn the_tokio_demo_under_load_has_no_diagnosis() {
    if !perf_available("the_tokio_demo_under_load_has_no_diagnosis") {
        return;
    }
    let _one = serial();
    for (c, n) in [("64", "20000"), ("1000", "20000")] {
        let r = loaded("tokio", c, n, "io_ms=1&cpu_us=50");
        assert!(
            diagnoses(&r).is_empty(),
            "{c} connections: {:#?}",
            diagnoses(&r)
        );
    }
}

#[test]
fn tokio_blocking_has_only_its_blocked_polls_and_the_delays_they_cause() {
    if !perf_available("tokio_blocking_has_only_its_blocked_polls_and_the_delays_they_cause") {
        return;
    }
    let _one = serial();
    let r = loaded("tokio-blocking", "64", "2000", "io_ms=1&cpu_us=50");
    let kinds: Vec<&str> = diagnoses(&r).iter().map(|d| text(&d["kind"])).collect();
    assert!(kinds.contains(&"blocked_in_poll"), "{kinds:?}");
    for k in &kinds {
        assert!(
            *k == "blocked_in_poll" || *k == "scheduling_delay",
            "{k} in {:#?}",
            diagnoses(&r)
        );
    }
    let d = one(&r, "blocked_in_poll");
    assert!(text(&d["message"]).contains("clock_nanosleep"), "{d:#}");
}
