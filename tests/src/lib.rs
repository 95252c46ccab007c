//! Support for the end-to-end tests: find the built `iotrace` and fixture binaries, run
//! `iotrace record` on a scenario, read its JSON report, and decide whether perf tests run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory holding the workspace's built binaries (target/debug or target/release).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/record-xxxx -> target/debug
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn built(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the suite with `cargo test --workspace` (or set {env})",
        path.display()
    );
    path
}

/// The `iotrace` binary under test (`IOTRACE_BIN` overrides).
pub fn iotrace() -> PathBuf {
    built("iotrace", "IOTRACE_BIN")
}

/// The fixture program (`tests/src/bin/fixture.rs`).
pub fn fixture() -> PathBuf {
    built("fixture", "IOTRACE_FIXTURE")
}

/// Whether perf-dependent tests can run here. Without perf they are skipped loudly, unless
/// `IOTRACE_REQUIRE_PERF=1` (as in CI), where a missing perf fails the test.
pub fn perf_available(test: &str) -> bool {
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4);
    let ok = root || paranoid <= 1;
    if !ok {
        if std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1") {
            panic!("{test}: perf is required (IOTRACE_REQUIRE_PERF=1) but not usable: not root and perf_event_paranoid={paranoid}");
        }
        eprintln!("\n*** SKIPPED {test}: perf is not usable here (not root, perf_event_paranoid={paranoid}). Set IOTRACE_REQUIRE_PERF=1 to make this a failure. ***\n");
    }
    ok
}

/// Whether tests that need root (mounting a tmpfs, dropping to another user) can run here.
/// Skipped loudly when not root, except with `IOTRACE_REQUIRE_PERF=1` (CI runs as root),
/// where that is a failure.
pub fn root_available(test: &str) -> bool {
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1") {
            panic!("{test}: needs root (IOTRACE_REQUIRE_PERF=1 is set, as in CI)");
        }
        eprintln!("\n*** SKIPPED {test}: needs root. Set IOTRACE_REQUIRE_PERF=1 to make this a failure. ***\n");
    }
    root
}

/// The recorder's peak RSS as the fixture printed it (`recorder VmHWM N kB`; the largest
/// if printed more than once), in bytes.
pub fn recorder_hwm_bytes(stdout: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("recorder VmHWM "))
        .filter_map(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .max()
        .map(|kb| kb * 1024)
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iotrace-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Run `iotrace ARGS` and return its output.
pub fn run_iotrace(args: &[&str]) -> Output {
    Command::new(iotrace())
        .args(args)
        .output()
        .expect("run iotrace")
}

/// `iotrace record -q -o TRACE [extra…] -- CMD…`, returning the record's output.
pub fn record(trace: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["record", "-q", "-o", trace.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    run_iotrace(&args)
}

/// `iotrace report --json TRACE`, parsed.
pub fn report_json(trace: &Path) -> serde_json::Value {
    let out = run_iotrace(&["report", "--json", trace.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report --json is JSON")
}

/// Count of a syscall in a JSON report (0 when absent).
pub fn syscall_count(report: &serde_json::Value, name: &str) -> u64 {
    report["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(0)
}

/// A demo server binary (`instrumented-demos/src/bin/NAME.rs`), built next to `iotrace`.
pub fn demo_binary(name: &str) -> PathBuf {
    let path = iotrace().parent().expect("bin dir").join(name);
    assert!(
        path.exists(),
        "{} is not built; run the suite with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Waits for `listening on ADDR` on a child's piped stdout (a demo server, directly or under
/// `iotrace record`) and returns ADDR; the rest of the output is drained.
pub fn listening(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    iotrace_demos::ready::wait_for_address(stdout, std::time::Duration::from_secs(20))
        .expect("the demo printed `listening on ADDR`")
}

/// Headless Chromium for the browser tests (`IOTRACE_CHROMIUM` overrides the path). Missing,
/// the test is skipped loudly, except in CI (`CI=true` or `IOTRACE_REQUIRE_CHROMIUM=1`),
/// where that is a failure: `.ci/run` installs it.
pub fn chromium(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("IOTRACE_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            [
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true")
            || std::env::var("IOTRACE_REQUIRE_CHROMIUM").as_deref() == Ok("1")
        {
            panic!("{test}: chromium is not installed (apt-get install chromium)");
        }
        eprintln!("\n*** SKIPPED {test}: no chromium (apt-get install chromium) ***\n");
    }
    found
}

/// Headless Chromium on a local page (no network): the DOM after its scripts ran, and the
/// browser's log with console messages.
pub fn open_in_chromium(browser: &Path, page: &Path, profile: &Path) -> (String, String) {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {log}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), log)
}

/// The console messages and uncaught errors in a Chromium log.
pub fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

/// Starts demo server `strategy` under `iotrace record -q -o TRACE` on an ephemeral port and
/// waits until it listens. Returns the `iotrace` child (SIGTERM it to stop the demo and finish
/// the trace) and the demo's address.
pub fn record_demo(strategy: &str, trace: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(iotrace())
        .args([
            "record",
            "-q",
            "-o",
            trace.to_str().expect("utf-8 path"),
            "--",
        ])
        .arg(demo_binary(strategy))
        .args(["--port", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn iotrace record");
    let addr = listening(&mut child);
    (child, addr)
}
