//! `iotrace record -p PID`: attaching to a running process. The tokio demo is started on its
//! own (not under iotrace), loaded before, during and after two attached recordings in a row,
//! and must serve every request; the attached report must hold its threads, its syscalls per
//! request as a launched recording of the same demo under the same load counts them, and its
//! task spans and polls (the layer connects when the recorder attaches). And the one-line
//! errors: a pid that does not exist, a process another user owns, `-p` with a command.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iotrace_tests::*;
use serde_json::Value;

/// One scenario at a time: syscalls per request are compared across two runs on two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CONNECTIONS: &str = "8";
const URL_QUERY: &str = "work?io_ms=1&cpu_us=50";

/// `iotrace load` on the demo for `secs`; returns the parsed JSON after checking 0 errors.
fn load(addr: &str, secs: &str, when: &str) -> Value {
    let url = format!("http://{addr}/{URL_QUERY}");
    let out = run_iotrace(&["load", &url, "-c", CONNECTIONS, "-d", secs, "--json"]);
    assert!(
        out.status.success(),
        "load {when}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("load --json");
    assert_eq!(v["errors"], 0, "load {when}: {v}");
    assert!(v["requests"].as_u64().unwrap() > 0, "load {when}: {v}");
    v
}

/// Waits for `child` to exit, at most `secs`.
fn wait_bounded(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `iotrace record -q -p PID --duration D -o TRACE`, returned once it says it has attached,
/// with its stderr's other lines collected by a thread.
fn attach(pid: u32, duration: &str, trace: &Path) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new(iotrace())
        .args([
            "record",
            "-q",
            "-p",
            &pid.to_string(),
            "--duration",
            duration,
        ])
        .arg("-o")
        .arg(trace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iotrace record -p");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("iotrace record -p says something")
        .expect("stderr is text");
    assert!(
        first.starts_with(&format!("iotrace: attached to pid {pid} (")),
        "{first}"
    );
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    // The layer looks for the recorder's socket every 200 ms.
    std::thread::sleep(Duration::from_millis(500));
    (child, rest)
}

/// Syscalls per request of the threads other than the main thread. The demo's main thread
/// starts the runtime and then waits in it: its syscalls are the startup (~370: exec, the
/// loader, binding), which a launched recording sees and an attached one cannot.
fn per_request(report: &Value, requests: u64) -> f64 {
    let pid = report["pid"].as_u64().unwrap();
    let main: u64 = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tid"] == pid)
        .map(|t| t["syscalls"].as_u64().unwrap())
        .sum();
    (report["syscalls_total"].as_u64().unwrap() - main) as f64 / requests as f64
}

fn workers(report: &Value) -> Vec<&Value> {
    report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "tokio-rt-worker")
        .collect()
}

#[test]
fn attaching_to_the_tokio_demo_twice_sees_what_a_launched_recording_sees() {
    if !perf_available("attaching_to_the_tokio_demo_twice_sees_what_a_launched_recording_sees") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("attach-tokio");

    // The same demo and load, launched under iotrace: the reference syscalls per request.
    let launched_trace = dir.join("launched.data");
    let (mut rec, addr) = record_demo("tokio", &launched_trace);
    let launched_load = load(&addr, "2s", "launched");
    // SAFETY: signalling our own child; iotrace forwards SIGTERM to the demo.
    unsafe { libc::kill(rec.id() as i32, libc::SIGTERM) };
    assert!(wait_bounded(&mut rec, 30, "launched recording").success());
    let launched = report_json(&launched_trace);
    let launched_per = per_request(&launched, launched_load["requests"].as_u64().unwrap());

    // The demo on its own.
    let mut demo = Command::new(demo_binary("tokio"))
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the tokio demo");
    let pid = demo.id();
    let addr = listening(&mut demo);
    load(&addr, "500ms", "before attaching");

    let trace = dir.join("attached.data");
    let (mut rec, stderr) = attach(pid, "3s", &trace);
    let during = load(&addr, "2s", "while attached");
    let status = wait_bounded(&mut rec, 30, "attached recording");
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "record -p ended with {status}: {stderr}");
    assert!(demo.try_wait().unwrap().is_none(), "the demo kept running");
    load(&addr, "500ms", "after detaching");

    let r = report_json(&trace);
    assert_eq!(r["pid"], pid);
    assert_eq!(r["attached"]["pids"], serde_json::json!([pid]));
    assert_eq!(r["attached"]["detached"], true, "{}", r["attached"]);
    assert!(
        r["exit"].is_null(),
        "no exit status when attached: {}",
        r["exit"]
    );
    let secs = r["duration_ns"].as_u64().unwrap() as f64 / 1e9;
    assert!((2.9..6.0).contains(&secs), "the window was {secs} s");
    assert_eq!(r["lost_events"], 0);
    // Its threads: the main thread and the workers, which served the requests.
    let threads = r["threads"].as_array().unwrap();
    assert!(
        threads.iter().any(|t| t["tid"] == pid),
        "main thread missing"
    );
    let w = workers(&r);
    assert!(!w.is_empty(), "no tokio-rt-worker threads");
    assert!(w.iter().all(|t| t["pid"] == pid));
    let served: u64 = w.iter().map(|t| t["syscalls"].as_u64().unwrap()).sum();
    let requests = during["requests"].as_u64().unwrap();
    assert!(
        served >= requests,
        "workers made {served} syscalls for {requests} requests"
    );
    // The same syscalls per request as the launched recording counted (within 10%).
    let attached_per = per_request(&r, requests);
    eprintln!(
        "syscalls per request (all threads but main): attached {attached_per:.3}, launched {launched_per:.3}; \
         (all threads: attached {:.3}, launched {:.3}); {} and {} requests",
        r["syscalls_total"].as_f64().unwrap() / requests as f64,
        launched["syscalls_total"].as_f64().unwrap() / launched_load["requests"].as_f64().unwrap(),
        requests,
        launched_load["requests"]
    );
    assert!(
        (attached_per - launched_per).abs() <= 0.10 * launched_per,
        "syscalls per request: attached {attached_per:.3}, launched {launched_per:.3}"
    );
    // Task spans and polls, from the layer that connected when the recorder attached.
    let spans = &r["spans"];
    assert!(!spans.is_null(), "no spans: the layer did not connect");
    let span_requests = spans["requests"].as_u64().unwrap();
    assert!(
        span_requests * 2 >= requests && span_requests <= requests,
        "{span_requests} request spans for {requests} requests"
    );
    assert!(!r["tasks"].as_array().unwrap().is_empty(), "no tasks");
    assert!(r["task_summary"]["polls"].as_u64().unwrap() >= span_requests);

    // Attaching again works the same, and the layer connects again.
    let trace2 = dir.join("again.data");
    let (mut rec, stderr) = attach(pid, "2s", &trace2);
    let again = load(&addr, "1s", "while attached again");
    let status = wait_bounded(&mut rec, 30, "second attached recording");
    assert!(status.success(), "{}", stderr.join().unwrap());
    load(&addr, "500ms", "after the second detach");
    assert!(demo.try_wait().unwrap().is_none(), "the demo kept running");
    let r2 = report_json(&trace2);
    assert_eq!(r2["attached"]["detached"], true);
    let per2 = per_request(&r2, again["requests"].as_u64().unwrap());
    assert!(
        (per2 - launched_per).abs() <= 0.10 * launched_per,
        "second attach: {per2:.3} syscalls per request, launched {launched_per:.3}"
    );
    assert!(
        r2["spans"]["requests"].as_u64().unwrap() > 0,
        "{}",
        r2["spans"]
    );
    assert!(!workers(&r2).is_empty());

    // SAFETY: signalling our own child, which we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_bounded(&mut demo, 10, "the demo").success());
}

#[test]
fn threads_created_while_attached_are_followed_and_counted_once() {
    if !perf_available("threads_created_while_attached_are_followed_and_counted_once") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("attach-churn");
    let mut churn = Command::new(fixture())
        .args(["churn", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fixture churn");
    let mut first = String::new();
    BufReader::new(churn.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let pid: u32 = first
        .trim()
        .strip_prefix("churn ")
        .unwrap()
        .parse()
        .unwrap();
    let trace = dir.join("churn.data");
    let (mut rec, stderr) = attach(pid, "2s", &trace);
    let status = wait_bounded(&mut rec, 30, "attached recording");
    assert!(status.success(), "{}", stderr.join().unwrap());
    assert!(
        churn.try_wait().unwrap().is_none(),
        "the fixture kept running"
    );
    let r = report_json(&trace);
    let churners: Vec<&Value> = r["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "churn")
        .collect();
    // Each thread makes 100 writes plus a few syscalls of its own (open, close, sleep, exit,
    // its start-up); one counted twice would show twice that.
    let whole = churners
        .iter()
        .filter(|t| (100..150).contains(&t["syscalls"].as_u64().unwrap()))
        .count();
    assert!(
        churners
            .iter()
            .all(|t| t["syscalls"].as_u64().unwrap() < 200),
        "a thread counted twice"
    );
    // Two threads at a time for 2 s, each a millisecond or a few: hundreds, all but the ones
    // cut by the window's two ends seen whole (the ends take milliseconds: at the start the
    // events are opened thread by thread and /proc is scanned again; at the end counting
    // stops before the rings are read for the last time).
    let cut = churners.len() - whole;
    eprintln!(
        "churn threads: {} seen, {whole} whole, {cut} cut by the window's ends",
        churners.len()
    );
    assert!(
        whole >= 100,
        "{whole} whole churn threads of {}",
        churners.len()
    );
    assert!(
        cut <= 20,
        "{cut} of {} churn threads not whole",
        churners.len()
    );
    // Every thread counted is one the recording saw (of the process).
    for t in r["threads"].as_array().unwrap() {
        if t["syscalls"].as_u64().unwrap() > 0 {
            assert_eq!(t["pid"], pid, "a thread counted but not seen: {t}");
        }
    }
    assert_eq!(r["lost_events"], 0);
    assert!(wait_bounded(&mut churn, 20, "the fixture").success());
}

/// Runs `iotrace record -p PID` (as `user` when given) and returns (exit code, stderr lines).
fn attach_error(pid: &str, as_nobody: bool, dir: &Path) -> (Option<i32>, Vec<String>) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(iotrace());
        c
    } else {
        Command::new(iotrace())
    };
    let out = cmd
        .args(["record", "-p", pid, "--duration", "1s", "-o"])
        .arg(dir.join("never.data"))
        .output()
        .expect("run iotrace record -p");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code(), lines)
}

#[test]
fn a_pid_that_does_not_exist_is_one_error_line() {
    let dir = temp_dir("attach-missing");
    // Pids are below pid_max: this one cannot exist.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let pid = pid_max.trim();
    let (code, lines) = attach_error(pid, false, &dir);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(
        lines,
        vec![format!("iotrace: error: no process with pid {pid}")]
    );
    assert!(!dir.join("never.data").exists());

    let (code, lines) = attach_error("12x", false, &dir);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("`12x` is not a pid"), "{lines:?}");

    // -p and a command exclude each other (clap's usage error).
    let out = run_iotrace(&["record", "-p", "1", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn another_users_process_is_one_error_line() {
    if !root_available("another_users_process_is_one_error_line") {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("another_users_process_is_one_error_line", "no setpriv");
        return;
    }
    let dir = temp_dir("attach-forbidden");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A process of root's that nobody may trace.
    let mut victim = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = victim.id().to_string();
    let (code, lines) = attach_error(&pid, true, &dir);
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "iotrace: error: not permitted to trace pid {pid} (owned by uid 0; iotrace runs as uid 65534)"
        )),
        "{lines:?}"
    );
    assert!(!dir.join("never.data").exists());
}
