//! Support for the end-to-end tests: find the built `iotrace` and fixture binaries, run
//! `iotrace record` on a scenario, read its JSON report, and decide whether perf tests run.

#![deny(unsafe_code)]

/// The harness's one raw syscall: all of this crate's `unsafe`.
#[allow(unsafe_code)]
mod sys {
    /// The effective uid of the tests.
    pub fn euid() -> u32 {
        // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
        unsafe { libc::geteuid() }
    }
}

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

/// Says that `test` (or the part of it named) was skipped, and why, where `cargo test` shows
/// it. The harness captures `print!`/`eprint!` and shows them only for failing tests, so a skip
/// announced with `eprintln!` passed unseen; a write to the process's stderr is not captured.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let line = format!("\n*** SKIPPED {test}: {why} ***\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Whether `var` is set to `1`: a missing prerequisite is then a failure, not a skip.
fn required(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// Skips `test` loudly for want of `what`, or fails it when `require_var=1` (as in CI).
fn skip_or_fail(test: &str, what: &str, require_var: &str) {
    if required(require_var) {
        panic!("{test}: {what} ({require_var}=1 makes this a failure)");
    }
    skip(
        test,
        &format!("{what}; set {require_var}=1 to make this a failure"),
    );
}

/// Whether perf-dependent tests can run here: perf events with the kernel's side (switches,
/// kernel stacks) and the syscall tracepoint. Root has them; another user needs
/// `perf_event_paranoid` ≤ 1 *and* read access to the tracepoint's id in tracefs, which is
/// root-only by default. Without them the tests are skipped loudly, unless
/// `IOTRACE_REQUIRE_PERF=1` (as in CI), where that fails the test.
pub fn perf_available(test: &str) -> bool {
    if sys::euid() == 0 {
        return true;
    }
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4);
    let tracepoint = "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id";
    let why = if paranoid > 1 {
        format!("perf events are not usable here (not root, perf_event_paranoid={paranoid} > 1)")
    } else if let Err(e) = std::fs::read_to_string(tracepoint) {
        format!("syscall counts are not usable here (not root, and {tracepoint}: {e})")
    } else {
        return true;
    };
    skip_or_fail(test, &why, "IOTRACE_REQUIRE_PERF");
    false
}

/// Whether the `perf` binary runs here, for the parts of tests that compare iotrace with
/// `perf stat` or `perf record`. Missing, that part is skipped loudly, unless
/// `IOTRACE_REQUIRE_PERF=1` (as in CI), where that fails the test.
pub fn perf_binary(test: &str) -> bool {
    let why = match Command::new("perf").arg("--version").output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "`perf --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("no perf binary ({e}; apt-get install linux-perf)"),
    };
    skip_or_fail(test, &why, "IOTRACE_REQUIRE_PERF");
    false
}

/// Whether tests that need root (mounting a tmpfs, dropping to another user) can run here.
/// Skipped loudly when not root, except with `IOTRACE_REQUIRE_PERF=1` (CI runs as root),
/// where that is a failure.
pub fn root_available(test: &str) -> bool {
    let root = sys::euid() == 0;
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
    record_in(Path::new("."), trace, extra, cmd)
}

/// [`record`] with CMD (and iotrace) started in directory `cwd`.
pub fn record_in(cwd: &Path, trace: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["record", "-q", "-o", trace.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    Command::new(iotrace())
        .args(&args)
        .current_dir(cwd)
        .output()
        .expect("run iotrace record")
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
    iotrace_load::ready::wait_for_address(stdout, std::time::Duration::from_secs(20))
        .expect("the demo printed `listening on ADDR`")
}

/// Whether the program `tool` (e.g. `node`) is on PATH for the test `test`. Missing, the test
/// is skipped loudly, except in CI (`CI=true`), where that is a failure: `.ci/run` installs
/// what the tests use.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    });
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: `{tool}` is not installed (CI installs it in .ci/run)");
        }
        eprintln!("\n*** SKIPPED {test}: `{tool}` is not installed ***\n");
    }
    found
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
        let what = "no chromium (apt-get install chromium, or set IOTRACE_CHROMIUM)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {what} (CI=true makes this a failure)");
        }
        skip_or_fail(test, what, "IOTRACE_REQUIRE_CHROMIUM");
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

/// Records demo `strategy` into `trace` under `iotrace load` of `/work?QUERY` with the load
/// arguments `load` (e.g. `["-c", "8", "-n", "400"]`), then SIGTERMs it and reads the report.
pub fn loaded_demo_report(
    strategy: &str,
    trace: &Path,
    query: &str,
    load: &[&str],
) -> serde_json::Value {
    let (mut child, addr) = record_demo(strategy, trace);
    let url = format!("http://{addr}/work?{query}");
    let mut args = vec!["load", url.as_str()];
    args.extend_from_slice(load);
    let out = run_iotrace(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // iotrace forwards SIGTERM to the demo. (`kill(1)`: this crate has no unsafe.)
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {}", child.id());
    let status = child.wait().expect("wait for iotrace record");
    assert!(status.success(), "{strategy}: record ended with {status}");
    report_json(trace)
}

/// Folded stacks (`a;b;c COUNT` lines) as (stack, count) pairs.
pub fn parse_folded(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (stack, n) = l.trim_end().rsplit_once(' ')?;
            Some((stack.to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// `iotrace flamegraph TRACE --folded ARGS`: its stacks, and its stderr (the summary line).
pub fn folded_stacks(trace: &Path, args: &[&str]) -> (Vec<(String, u64)>, String) {
    let mut all = vec![
        "flamegraph",
        trace.to_str().expect("utf-8 path"),
        "--folded",
    ];
    all.extend_from_slice(args);
    let out = run_iotrace(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "flamegraph {args:?} failed: {err}");
    (parse_folded(&String::from_utf8_lossy(&out.stdout)), err)
}

/// `perf record -q -e cpu-clock -F 999 RECORD_ARGS -o DATA -- CMD`, then `perf script` folded
/// by inferno's own perf collapser: the reference the stack tests compare with.
pub fn perf_record_folded(data: &Path, record_args: &[&str], cmd: &[&str]) -> Vec<(String, u64)> {
    let status = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "999"])
        .args(record_args)
        .arg("-o")
        .arg(data)
        .arg("--")
        .args(cmd)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("perf record");
    assert!(
        status.success(),
        "perf record {record_args:?} -- {cmd:?}: {status}"
    );
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("perf script");
    let mut collapsed = Vec::new();
    inferno::collapse::Collapse::collapse(
        &mut inferno::collapse::perf::Folder::default(),
        &script.stdout[..],
        &mut collapsed,
    )
    .expect("inferno collapses perf script output");
    parse_folded(&String::from_utf8_lossy(&collapsed))
}

/// A Python venv under target/ (`target/NAME`) with PyPI `packages`, made once, in which
/// `python -c IMPORTS` succeeds; `None` (skipped loudly) when it cannot be made, except in CI
/// (`CI=true` or `IOTRACE_REQUIRE_PERF=1`), where that is a failure.
pub fn python_venv(test: &str, name: &str, packages: &[&str], imports: &str) -> Option<PathBuf> {
    let venv = iotrace()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", imports])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output();
    let why = match made {
        Ok(o) if o.status.success() => {
            let pip = Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .args(packages)
                .output();
            match pip {
                Ok(o) if o.status.success() && ready(&python) => return Some(python),
                Ok(o) => format!(
                    "pip could not install {packages:?}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => format!("no pip in the venv ({e})"),
            }
        }
        Ok(o) => format!(
            "python3 -m venv failed (apt-get install python3-venv): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("no python3 ({e})"),
    };
    let strict = std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true");
    if strict {
        panic!("{test}: {why} (.ci/run provides python3-venv and PyPI; CI makes this a failure)");
    }
    skip(
        test,
        &format!("{why}; set IOTRACE_REQUIRE_PERF=1 to make this a failure"),
    );
    None
}
