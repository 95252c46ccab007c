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
