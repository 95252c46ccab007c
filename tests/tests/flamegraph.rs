//! `iotrace flamegraph` end to end: stack samples of real children, checked against facts
//! their code makes certain (a hot function, a known sleep, a handler inside its task) and
//! against `perf record -g` folded by inferno's own perf collapser.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;

use iotrace_tests::*;

/// The tests of this file run one at a time: the off-CPU durations they check include the
/// wait for a CPU after each wakeup, which two tests loading both cores would stretch.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fx() -> String {
    fixture().to_str().expect("utf-8").to_owned()
}

/// `iotrace flamegraph TRACE ARGS… --folded`, parsed into (stack, weight) lines.
fn folded(trace: &Path, args: &[&str]) -> Vec<(String, u64)> {
    folded_stacks(trace, args).0
}

fn total(lines: &[(String, u64)]) -> u64 {
    lines.iter().map(|l| l.1).sum()
}

/// The `n` heaviest leaf functions.
fn top_leaves(lines: &[(String, u64)], n: usize) -> Vec<(String, u64)> {
    let mut by_leaf: BTreeMap<String, u64> = BTreeMap::new();
    for (stack, w) in lines {
        let leaf = stack.rsplit(';').next().unwrap_or("");
        *by_leaf.entry(leaf.to_owned()).or_default() += w;
    }
    let mut v: Vec<(String, u64)> = by_leaf.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

#[test]
fn burn_cpu_holds_the_on_cpu_samples_and_leaves_agree_with_perf() {
    if !perf_available("burn_cpu_holds_the_on_cpu_samples_and_leaves_agree_with_perf") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-oncpu");
    let trace = dir.join("t.data");
    let fx = fx();
    let out = record(&trace, &[], &[&fx, "spin", "1500"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = folded(&trace, &[]);
    let all = total(&ours);
    assert!(all >= 300, "only {all} on-CPU samples in 1.5 s of spinning");
    let in_burn: u64 = ours
        .iter()
        .filter(|(s, _)| s.split(';').any(|f| f == "fixture::burn_cpu"))
        .map(|l| l.1)
        .sum();
    assert!(
        in_burn * 100 >= all * 80,
        "burn_cpu holds {in_burn} of {all} samples"
    );
    let top: BTreeSet<String> = top_leaves(&ours, 5).into_iter().map(|l| l.0).collect();
    let expected: BTreeSet<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|l| format!("fixture::leaf_{l}"))
        .collect();
    assert_eq!(top, expected, "{:?}", top_leaves(&ours, 8));

    // The same program under perf record -g, folded by inferno's perf collapser.
    if !perf_binary(
        "burn_cpu_holds_the_on_cpu_samples_and_leaves_agree_with_perf (the comparison with perf record)",
    ) {
        return;
    }
    let theirs = perf_record_folded(&dir.join("perf.data"), &["-g"], &[&fx, "spin", "1500"]);
    let their_top: BTreeSet<String> = top_leaves(&theirs, 5).into_iter().map(|l| l.0).collect();
    assert_eq!(
        top,
        their_top,
        "top five leaves differ: iotrace {:?} vs perf {:?}",
        top_leaves(&ours, 5),
        top_leaves(&theirs, 5)
    );
}

/// On-CPU samples come from a timer per CPU, filtered in the kernel to the recorded
/// processes (docs/DESIGN.md), or from one per recorded thread without the BPF counter:
/// either way a process that shares the CPU unrecorded leaves no sample, and the recorded one
/// gets about -F samples per second of its own CPU time, not of the CPU's.
#[test]
fn a_cpu_shared_with_an_unrecorded_spinner_samples_only_the_recorded_one() {
    if !perf_available("a_cpu_shared_with_an_unrecorded_spinner_samples_only_the_recorded_one") {
        return;
    }
    let _serial = serial();
    let trace = temp_dir("fg-shared").join("t.data");
    let fx = fx();
    // The neighbour: a shell spinning on CPU 0 for the whole recording, so the recorded
    // spinner (1 s of wall time) gets about half the CPU (taskset execs the
    // shell, so the child is the spinner itself; killed when the guard drops, panic or not).
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let neighbour = KillOnDrop(
        std::process::Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the neighbour"),
    );
    let out = record(&trace, &[], &["taskset", "-c", "0", &fx, "spin", "1000"]);
    drop(neighbour);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = folded(&trace, &[]);
    let foreign: Vec<&(String, u64)> = lines
        .iter()
        .filter(|(s, _)| !(s.starts_with("fixture;") || s.starts_with("taskset;")))
        .collect();
    assert!(
        foreign.is_empty(),
        "samples of other processes: {foreign:?}"
    );
    let samples = total(&lines) as f64;
    let on_cpu_s = report_json(&trace)["on_cpu_ns"].as_u64().unwrap() as f64 / 1e9;
    let expected = on_cpu_s * 999.0;
    assert!(
        on_cpu_s >= 0.2 && samples >= expected * 0.75 && samples <= expected * 1.25,
        "{samples} samples for {on_cpu_s:.3} s on CPU (expected about {expected:.0})"
    );
}

#[test]
fn a_hundred_ten_ms_naps_are_one_second_off_cpu_in_the_kernel_sleep() {
    if !perf_available("a_hundred_ten_ms_naps_are_one_second_off_cpu_in_the_kernel_sleep") {
        return;
    }
    let _serial = serial();
    let trace = temp_dir("fg-offcpu").join("t.data");
    let fx = fx();
    let out = record(&trace, &[], &[&fx, "nap", "10", "100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = folded(&trace, &["--kind", "offcpu"]);
    let nap: Vec<&(String, u64)> = lines
        .iter()
        .filter(|(s, _)| s.split(';').any(|f| f == "fixture::nap"))
        .collect();
    let us: u64 = nap.iter().map(|l| l.1).sum();
    eprintln!("fixture nap 10 100: {us} µs off-CPU through fixture::nap");
    assert!(
        (900_000..=1_100_000).contains(&us),
        "off-CPU through fixture::nap: {us} µs, expected 1 s ± 10%\n{lines:#?}"
    );
    // The path ends in the kernel's sleep, and says which syscall it slept in.
    let (heaviest, _) = nap.iter().max_by_key(|l| l.1).unwrap();
    let leaf = heaviest.rsplit(';').next().unwrap();
    assert!(
        leaf.contains("nanosleep") && leaf.ends_with("[clock_nanosleep]"),
        "leaf {leaf:?} in {heaviest}"
    );
    let frames: Vec<&str> = heaviest.split(';').collect();
    let nap_at = frames.iter().position(|f| *f == "fixture::nap").unwrap();
    assert!(
        frames[nap_at..]
            .iter()
            .any(|f| f.contains("sys_clock_nanosleep")),
        "the kernel part lies under fixture::nap: {heaviest}"
    );

    // The wall graph holds the same time under its off-CPU root.
    let wall = folded(&trace, &["--kind", "wall"]);
    let off: u64 = wall
        .iter()
        .filter(|(s, _)| s.starts_with("off-CPU;") && s.contains("fixture::nap_[i]"))
        .map(|l| l.1)
        .sum();
    assert_eq!(off, us);
}

#[test]
fn filters_narrow_by_thread_and_time() {
    if !perf_available("filters_narrow_by_thread_and_time") {
        return;
    }
    let _serial = serial();
    let trace = temp_dir("fg-filters").join("t.data");
    let fx = fx();
    assert!(record(&trace, &[], &[&fx, "nap", "10", "100"])
        .status
        .success());
    let all = total(&folded(&trace, &["--kind", "offcpu"]));
    // A window of 0.5 s holds about half of the second of naps.
    let half = total(&folded(
        &trace,
        &["--kind", "offcpu", "--from", "0s", "--to", "500ms"],
    ));
    assert!(
        half > all / 4 && half < all * 3 / 4,
        "window 0–500 ms holds {half} of {all} µs"
    );
    let out = run_iotrace(&[
        "flamegraph",
        trace.to_str().unwrap(),
        "--folded",
        "--kind",
        "offcpu",
        "--tid",
        "1",
    ]);
    assert!(!out.status.success(), "no samples for tid 1 is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("match the filters"), "{err}");
}

#[test]
fn svg_opens_in_headless_chromium_with_its_frames() {
    if !perf_available("svg_opens_in_headless_chromium_with_its_frames") {
        return;
    }
    let _serial = serial();
    let Some(browser) = chromium("svg_opens_in_headless_chromium_with_its_frames") else {
        return;
    };
    let dir = temp_dir("fg-chromium");
    let trace = dir.join("t.data");
    let fx = fx();
    assert!(record(&trace, &[], &[&fx, "spin", "300"]).status.success());
    let svg = dir.join("cpu.svg");
    let out = run_iotrace(&[
        "flamegraph",
        trace.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dom, log) = open_in_chromium(&browser, &svg, &dir.join("chromium-profile"));
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    for frame in ["fixture::burn_cpu", "fixture::leaf_a", "fixture::main"] {
        assert!(
            dom.contains(&format!("<title>{frame} (")),
            "{frame} is not a frame of the rendered SVG"
        );
    }
}

/// A demo server recorded by `iotrace record`, with its address.
struct Recorded {
    child: Child,
    addr: String,
    trace: PathBuf,
}

fn record_demo(name: &str, dir: &Path) -> Recorded {
    let trace = dir.join(format!("{name}.data"));
    let (child, addr) = iotrace_tests::record_demo(name, &trace);
    Recorded { child, addr, trace }
}

impl Recorded {
    /// `iotrace load` on the demo; returns the number of requests served.
    fn load(&self, query: &str, connections: &str, duration: &str) -> u64 {
        let url = format!("http://{}/work?{query}", self.addr);
        let out = run_iotrace(&["load", &url, "-c", connections, "-d", duration, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        report["requests"].as_u64().unwrap()
    }

    fn stop(mut self) -> PathBuf {
        // SAFETY: signalling our own child (iotrace forwards it to the demo).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for iotrace record");
        assert!(status.success(), "record ended with {status}");
        self.trace
    }
}

#[test]
fn tokio_handler_frames_sit_under_their_task_and_request_span() {
    if !perf_available("tokio_handler_frames_sit_under_their_task_and_request_span") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-tokio");
    let server = record_demo("tokio", &dir);
    let requests = server.load("io_ms=1&cpu_us=300", "16", "2s");
    assert!(requests > 100, "{requests} requests");
    let trace = server.stop();
    let lines = folded(&trace, &["--kind", "async"]);
    let burn = |s: &str| s.contains("iotrace_demos::work::burn_cpu");
    let all_burn: u64 = lines.iter().filter(|(s, _)| burn(s)).map(|l| l.1).sum();
    // task (the connection's tokio::spawn) → request span → native frames down to burn_cpu.
    let under_task: u64 = lines
        .iter()
        .filter(|(s, _)| {
            let f: Vec<&str> = s.splitn(3, ';').collect();
            f.len() == 3
                && f[0].starts_with("task ")
                && f[0].contains("tokio.rs:")
                && f[1] == "request"
                && burn(f[2])
        })
        .map(|l| l.1)
        .sum();
    assert!(all_burn > 0, "no burn_cpu samples:\n{lines:#?}");
    assert!(
        under_task * 10 >= all_burn * 9,
        "{under_task} of {all_burn} µs of burn_cpu sit under task → request"
    );
    // The other groupings keep the same total.
    let by_thread = folded(&trace, &["--kind", "async", "--group-by", "thread"]);
    assert_eq!(total(&by_thread), total(&lines));
    assert!(
        by_thread
            .iter()
            .any(|(s, _)| s.starts_with("tokio-r") && s.contains(";task ")),
        "worker threads (tokio-rt-worker or tokio-runtime-w) hold the tasks"
    );
}

#[test]
fn tokio_blocking_handler_task_is_off_cpu_for_every_blocking_wait() {
    if !perf_available("tokio_blocking_handler_task_is_off_cpu_for_every_blocking_wait") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-tokio-blocking");
    let server = record_demo("tokio-blocking", &dir);
    let io_ms = 5;
    let requests = server.load(&format!("io_ms={io_ms}&cpu_us=20"), "8", "2s");
    assert!(requests > 50, "{requests} requests");
    let trace = server.stop();
    let lines = folded(&trace, &["--kind", "offcpu", "--task", "strategy/tokio.rs"]);
    let blocked_us: u64 = lines
        .iter()
        .filter(|(s, _)| s.ends_with("[clock_nanosleep]"))
        .map(|l| l.1)
        .sum();
    let expected = requests * io_ms * 1000;
    eprintln!("tokio-blocking: {blocked_us} µs off-CPU in clock_nanosleep under the handler task; {requests} requests × {io_ms} ms = {expected} µs");
    assert!(
        blocked_us * 10 >= expected * 9,
        "off-CPU in clock_nanosleep under the handler task: {blocked_us} µs; {requests} requests × {io_ms} ms = {expected} µs"
    );
    // And it is the handler's own sleep: under its task and `request`, in the handler
    // (`handle`), in std::thread::sleep's syscall.
    let async_lines = folded(&trace, &["--kind", "async", "--task", "strategy/tokio.rs"]);
    let in_handler: u64 = async_lines
        .iter()
        .filter(|(s, _)| {
            s.starts_with("task ")
                && s.contains(";request;")
                && s.contains("strategy::tokio::handle")
                && s.contains("std::thread")
                && s.ends_with("[clock_nanosleep]")
        })
        .map(|l| l.1)
        .sum();
    assert!(
        in_handler * 10 >= blocked_us * 9,
        "{in_handler} of {blocked_us} µs blocked in clock_nanosleep are under task;request;…handle…;std::thread…sleep\n{async_lines:#?}"
    );
}

#[test]
fn diff_of_two_traces_is_an_svg() {
    if !perf_available("diff_of_two_traces_is_an_svg") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-diff");
    let fx = fx();
    let (a, b) = (dir.join("a.data"), dir.join("b.data"));
    assert!(record(&a, &[], &[&fx, "spin", "200"]).status.success());
    assert!(record(&b, &[], &[&fx, "spin", "400"]).status.success());
    let svg = dir.join("diff.svg");
    let out = run_iotrace(&[
        "flamegraph",
        "--diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.contains("fixture::burn_cpu"));
}

#[test]
fn no_samples_records_no_stacks_and_says_so() {
    let _serial = serial();
    let trace = temp_dir("fg-nosamples").join("t.data");
    let fx = fx();
    assert!(record(&trace, &["--no-samples"], &[&fx, "spin", "100"])
        .status
        .success());
    let out = run_iotrace(&["flamegraph", trace.to_str().unwrap(), "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-samples"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// `iotrace flamegraph TRACE ARGS… --folded`: the parsed lines and stderr.
fn folded_with_stderr(trace: &Path, args: &[&str]) -> (Vec<(String, u64)>, String) {
    folded_stacks(trace, args)
}

#[test]
fn iotrace_flush_thread_is_left_out_unless_include_self() {
    // The layer's flusher and the idle main thread used to fill half of an off-CPU graph.
    if !perf_available("iotrace_flush_thread_is_left_out_unless_include_self") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-self");
    let server = record_demo("tokio", &dir);
    let requests = server.load("io_ms=1&cpu_us=50", "4", "1s");
    assert!(requests > 10, "{requests} requests");
    let trace = server.stop();
    let own = |lines: &[(String, u64)]| -> u64 {
        lines
            .iter()
            .filter(|(s, _)| s.starts_with("iotrace-flush;"))
            .map(|l| l.1)
            .sum()
    };
    // The flusher blocks at least once (it waits for buffers), so it has off-CPU stacks.
    let (default, err) = folded_with_stderr(&trace, &["--kind", "offcpu"]);
    assert_eq!(own(&default), 0, "iotrace-flush drawn by default");
    assert!(
        err.contains("of iotrace's own threads (iotrace-flush); --include-self shows them"),
        "{err}"
    );
    let (with_self, _) = folded_with_stderr(&trace, &["--kind", "offcpu", "--include-self"]);
    let own_us = own(&with_self);
    assert!(own_us > 0, "no iotrace-flush stacks with --include-self");
    assert_eq!(total(&with_self), total(&default) + own_us);
}

#[test]
fn no_idle_leaves_out_a_thread_that_only_slept_and_keeps_a_busy_one() {
    if !perf_available("no_idle_leaves_out_a_thread_that_only_slept_and_keeps_a_busy_one") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-idle");
    let fx = fx();
    // One thread asleep for 1 s, on CPU only to start (a few ms, under the 1% bound): idle.
    let sleeper = dir.join("sleep.data");
    assert!(record(&sleeper, &[], &[&fx, "sleep", "100", "10"])
        .status
        .success());
    let (lines, _) = folded_with_stderr(&sleeper, &["--kind", "offcpu"]);
    assert!(total(&lines) >= 900_000, "{lines:?}");
    let s = sleeper.to_str().unwrap();
    let out = run_iotrace(&["flamegraph", s, "--folded", "--kind", "offcpu", "--no-idle"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("1 idle threads were left out (--no-idle)"),
        "{err}"
    );
    // One thread burning CPU for 300 ms: not idle, all of it stays.
    let spinner = dir.join("spin.data");
    assert!(record(&spinner, &[], &[&fx, "spin", "300"])
        .status
        .success());
    let (all, _) = folded_with_stderr(&spinner, &[]);
    let (busy, err) = folded_with_stderr(&spinner, &["--no-idle"]);
    assert!(total(&all) > 0);
    assert_eq!(total(&busy), total(&all), "{err}");
    assert!(!err.contains("idle threads"), "{err}");
}

/// The line of `yields.rs` (instrumented-demos/src/bin/yields.rs) that holds `text`.
fn yields_line(text: &str) -> usize {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../instrumented-demos/src/bin/yields.rs");
    let src = std::fs::read_to_string(&src).expect("read yields.rs");
    1 + src
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no `{text}` in yields.rs"))
}

/// `yields ROUNDS` recorded into DIR/yields.data.
fn record_yields(dir: &Path, rounds: &str) -> PathBuf {
    let trace = dir.join("yields.data");
    let yields = demo_binary("yields");
    let out = record(&trace, &[], &[yields.to_str().expect("utf-8"), rounds]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    trace
}

/// `yields 30`: three tasks, each idle 30 times for about 10 ms, one at a sleep, one at a
/// socket read, one at a channel receive. The idle graph has each under its task, from the
/// task's own future (the await's line) down into the future that stored the waker, with none
/// of the worker loop above it and none of the waker's clone, tracing or the layer below it.
#[test]
fn idle_graph_puts_each_tasks_idle_time_under_the_await_it_yielded_at() {
    if !perf_available("idle_graph_puts_each_tasks_idle_time_under_the_await_it_yielded_at") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-idle-kind");
    let trace = record_yields(&dir, "30");
    let (lines, err) = folded_stacks(&trace, &["--kind", "idle"]);
    assert!(err.contains("idle flamegraph"), "{err}");
    for (stack, _) in &lines {
        for machinery in [
            "iotrace_layer",
            "tokio::runtime::task::waker",
            "tokio::runtime::task::core::Core<",
            "worker::Context::run_task",
        ] {
            assert!(!stack.contains(machinery), "{machinery} in {stack}");
        }
    }
    for (task, awaited, await_text) in [
        (
            "sleeper",
            "tokio::time::sleep",
            "tokio::time::sleep(GAP).await",
        ),
        ("reader", "read", "stream.read(&mut byte).await"),
        ("receiver", "recv", "rx.recv().await"),
    ] {
        let root = format!("task {task}");
        let mine: Vec<&(String, u64)> = lines
            .iter()
            .filter(|(s, _)| s.split(';').next() == Some(root.as_str()))
            .collect();
        // 30 waits of 10 ms each: at least 90% of 300 ms, in µs.
        let us: u64 = mine.iter().map(|l| l.1).sum();
        assert!(us >= 270_000, "{root}: {us} µs idle\n{lines:#?}");
        let (heaviest, w) = mine.iter().max_by_key(|l| l.1).copied().unwrap();
        let frames: Vec<&str> = heaviest.split(';').collect();
        assert!(
            *w * 10 >= us * 8 && frames.len() >= 3,
            "{root}: heaviest {heaviest} {w} of {us} µs"
        );
        // The first frame under the task is the task's own future, at the await.
        let future = format!("yields::{task}::{{{{closure}}}}");
        assert!(frames[1].starts_with(&future), "{root}: {heaviest}");
        if let Some((_, at)) = frames[1].split_once(" at ") {
            let line = yields_line(await_text);
            assert!(
                at.ends_with(&format!("bin/yields.rs:{line}")),
                "{root} yields at {at}, the await is at line {line}"
            );
        }
        assert!(
            frames[2..].iter().any(|f| f.contains(awaited)),
            "{root}: no {awaited} inside {future}: {heaviest}"
        );
    }
}

#[test]
fn idle_svg_opens_in_headless_chromium_with_the_task_and_its_sleep() {
    if !perf_available("idle_svg_opens_in_headless_chromium_with_the_task_and_its_sleep") {
        return;
    }
    let _serial = serial();
    let Some(browser) = chromium("idle_svg_opens_in_headless_chromium_with_the_task_and_its_sleep")
    else {
        return;
    };
    let dir = temp_dir("fg-idle-chromium");
    let trace = record_yields(&dir, "10");
    let svg = dir.join("idle.svg");
    let out = run_iotrace(&[
        "flamegraph",
        trace.to_str().unwrap(),
        "--kind",
        "idle",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dom, log) = open_in_chromium(&browser, &svg, &dir.join("chromium-profile"));
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert!(dom.contains("Idle time by yield site"), "no title");
    let titles: Vec<&str> = dom
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .collect();
    for frame in [
        "task sleeper (",
        "yields::sleeper::{{closure}}",
        "tokio::time::sleep::Sleep",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(frame)),
            "no frame {frame:?} in the rendered SVG: {titles:#?}"
        );
    }
}

/// `yields 30`: the sleeper is woken by the timer, the reader by the I/O driver and the
/// receiver by the channel-feeder thread's send. The wake graph has each wake→poll delay under
/// its kind of waker and the waker's stack, with the woken task as the leaf, and none of the
/// layer's frames (the innermost of each waker stack).
#[test]
fn wake_graph_puts_each_wake_to_poll_delay_under_its_waker() {
    if !perf_available("wake_graph_puts_each_wake_to_poll_delay_under_its_waker") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("fg-wake-kind");
    let trace = record_yields(&dir, "30");
    let (lines, err) = folded_stacks(&trace, &["--kind", "wake"]);
    assert!(err.contains("wake flamegraph"), "{err}");
    for (stack, _) in &lines {
        assert!(!stack.contains("iotrace_layer"), "iotrace_layer in {stack}");
    }
    for (root, task) in [
        ("woken by the timer", "sleeper"),
        ("woken by the I/O driver", "reader"),
        ("woken by a thread", "receiver"),
    ] {
        let leaf = format!("→ task {task}");
        let mine: Vec<&(String, u64)> = lines
            .iter()
            .filter(|(s, _)| {
                s.split(';').next() == Some(root) && s.rsplit(';').next() == Some(leaf.as_str())
            })
            .collect();
        let us: u64 = mine.iter().map(|l| l.1).sum();
        assert!(us > 0, "no `{root}` … `{leaf}` stack\n{lines:#?}");
        if task == "receiver" {
            // The feeder thread's own code, down to the channel's send that woke the task.
            assert!(
                mine.iter().any(|(s, _)| {
                    let frames: Vec<&str> = s.split(';').collect();
                    frames.iter().any(|f| f.starts_with("yields::"))
                        && frames
                            .iter()
                            .any(|f| f.contains("mpsc") && f.contains("send"))
                }),
                "no channel-feeder frames under `{root}`: {mine:#?}"
            );
        }
    }
}

#[test]
fn idle_graph_of_a_trace_without_tasks_says_why() {
    let _serial = serial();
    let trace = temp_dir("fg-idle-notasks").join("t.data");
    let fx = fx();
    assert!(record(&trace, &["--no-perf"], &[&fx, "spin", "50"])
        .status
        .success());
    for kind in ["idle", "wake"] {
        let out = run_iotrace(&[
            "flamegraph",
            trace.to_str().unwrap(),
            "--kind",
            kind,
            "-o",
            "/dev/null",
        ]);
        assert_eq!(out.status.code(), Some(1), "--kind {kind}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no tasks"), "--kind {kind}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "--kind {kind}: {err}");
    }
}
