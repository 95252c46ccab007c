//! Stacks through code without frame pointers (issue 8): the recorder unwinds user stacks
//! from the binary's CFI (`record --call-graph`). The C program `tests/c/stacks.c` blocks and
//! burns through glibc, whose functions keep no frame pointers: `nanosleep` →
//! `clock_nanosleep` for a known second, and a `qsort` comparator that burns the CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use iotrace_tests::*;

/// The tests of this file run one at a time: off-CPU time includes the wait for a CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `tests/c/stacks.c` built with `flags` into `dir`, or `None` (skipped) without gcc.
fn build_c(test: &str, dir: &Path, name: &str, flags: &[&str]) -> Option<PathBuf> {
    if !require_tool(test, "gcc") {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/stacks.c");
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-g")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc {flags:?} failed");
    Some(out)
}

fn folded(trace: &Path, args: &[&str]) -> (Vec<(String, u64)>, String) {
    folded_stacks(trace, args)
}

fn weight(lines: &[(String, u64)], keep: impl Fn(&[&str]) -> bool) -> u64 {
    lines
        .iter()
        .filter(|(s, _)| keep(&s.split(';').collect::<Vec<_>>()))
        .map(|l| l.1)
        .sum()
}

fn record_ok(trace: &Path, extra: &[&str], cmd: &[&str]) -> String {
    let out = record(trace, extra, cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "record {extra:?} {cmd:?}: {stderr}");
    stderr
}

/// Whether `outer` calls `inner` directly somewhere in `frames` (outermost first).
fn calls(frames: &[&str], outer: &str, inner: &str) -> bool {
    frames.windows(2).any(|w| w[0] == outer && w[1] == inner)
}

#[test]
fn sleep_a_lot_keeps_its_second_off_cpu_through_frameless_nanosleep() {
    let test = "sleep_a_lot_keeps_its_second_off_cpu_through_frameless_nanosleep";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-sleep");
    let Some(exe) = build_c(test, &dir, "stacks", &["-O1", "-fno-omit-frame-pointer"]) else {
        return;
    };
    let exe = exe.to_str().unwrap();
    let fp = dir.join("fp.data");
    record_ok(&fp, &["--call-graph", "fp"], &[exe, "sleep"]);
    let (lines, _) = folded(&fp, &["--kind", "offcpu"]);
    let fp_only = weight(&lines, |f| f.contains(&"sleep_a_lot"));
    eprintln!("--call-graph fp: sleep_a_lot holds {fp_only} µs off-CPU (glibc's clock_nanosleep is frameless)");

    // The default (auto: frame pointers, with CFI for the leaf frames).
    let trace = dir.join("t.data");
    record_ok(&trace, &[], &[exe, "sleep"]);
    let (lines, _) = folded(&trace, &["--kind", "offcpu"]);
    let us = weight(&lines, |f| f.contains(&"sleep_a_lot"));
    eprintln!("--call-graph auto: sleep_a_lot holds {us} µs off-CPU");
    assert!(
        (900_000..=1_100_000).contains(&us),
        "sleep_a_lot holds {us} µs off-CPU, expected 1 s ± 10%\n{lines:#?}"
    );
    // Its path: main;sleep_a_lot;…nanosleep…;do_nanosleep.
    let path_ok = weight(&lines, |f| {
        let Some(at) = f.iter().position(|&x| x == "sleep_a_lot") else {
            return false;
        };
        at > 0
            && f[at - 1] == "main"
            && f.get(at + 1).is_some_and(|x| x.contains("nanosleep"))
            && f.last().is_some_and(|x| x.starts_with("do_nanosleep"))
    });
    assert!(
        path_ok * 100 >= us * 95,
        "{path_ok} of {us} µs have the path main;sleep_a_lot;…nanosleep…;do_nanosleep\n{lines:#?}"
    );
}

#[test]
fn burn_cpu_in_a_qsort_comparator_keeps_qsort_and_its_caller() {
    let test = "burn_cpu_in_a_qsort_comparator_keeps_qsort_and_its_caller";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-qsort");
    let Some(exe) = build_c(test, &dir, "stacks", &["-O1", "-fno-omit-frame-pointer"]) else {
        return;
    };
    let trace = dir.join("t.data");
    record_ok(&trace, &[], &[exe.to_str().unwrap(), "qsort"]);
    let (lines, _) = folded(&trace, &[]);
    let burn = weight(&lines, |f| f.last() == Some(&"burn_cpu"));
    assert!(
        burn >= 200,
        "only {burn} samples in burn_cpu in 0.5 s of CPU time\n{lines:#?}"
    );
    // glibc's qsort is qsort_r (qsort calls it, or is an alias of it).
    let through = weight(&lines, |f| {
        f.last() == Some(&"burn_cpu")
            && (calls(f, "sort_many", "qsort") || calls(f, "sort_many", "qsort_r"))
            && calls(f, "main", "sort_many")
            && f.contains(&"compare")
    });
    eprintln!("burn_cpu: {through} of {burn} samples under main;sort_many;qsort…;compare");
    assert!(
        through * 100 >= burn * 95,
        "{through} of {burn} burn_cpu samples keep main;sort_many;qsort;…;compare\n{lines:#?}"
    );
}

/// The share of the folded weight whose stack reaches `main`.
fn reach_main(lines: &[(String, u64)]) -> (u64, u64) {
    let all: u64 = lines.iter().map(|l| l.1).sum();
    (weight(lines, |f| f.contains(&"main")), all)
}

#[test]
fn dwarf_mode_reaches_main_on_a_binary_without_frame_pointers_as_perf_does() {
    let test = "dwarf_mode_reaches_main_on_a_binary_without_frame_pointers_as_perf_does";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-dwarf");
    let Some(exe) = build_c(test, &dir, "stacks", &["-O2", "-fomit-frame-pointer"]) else {
        return;
    };
    let exe = exe.to_str().unwrap();

    // auto sees that the binary keeps no frame pointers, and says so.
    let on = dir.join("on.data");
    let stderr = record_ok(&on, &[], &[exe, "qsort"]);
    assert!(
        stderr.contains("keeps no frame pointers") && stderr.contains("--call-graph dwarf"),
        "auto did not choose dwarf: {stderr}"
    );
    let (lines, _) = folded(&on, &[]);
    let (main, all) = reach_main(&lines);
    assert!(all >= 200, "only {all} on-CPU samples in 0.5 s of CPU time");
    let off = dir.join("off.data");
    record_ok(&off, &["--call-graph", "dwarf"], &[exe, "sleep"]);
    let (off_lines, _) = folded(&off, &["--kind", "offcpu"]);
    let (off_main, off_all) = reach_main(&off_lines);
    let (fp, _) = {
        let t = dir.join("fp.data");
        record_ok(&t, &["--call-graph", "fp"], &[exe, "qsort"]);
        reach_main(&folded(&t, &[]).0)
    };
    eprintln!(
        "iotrace --call-graph dwarf: on-CPU {main} of {all} samples reach main ({:.1}%), off-CPU {off_main} of {off_all} µs ({:.1}%); --call-graph fp: {fp} on-CPU samples reach main",
        100.0 * main as f64 / all.max(1) as f64,
        100.0 * off_main as f64 / off_all.max(1) as f64,
    );
    assert!(
        main * 100 >= all * 95,
        "on-CPU: {main} of {all} reach main\n{lines:#?}"
    );
    assert!(
        off_main * 100 >= off_all * 95,
        "off-CPU: {off_main} of {off_all} µs reach main\n{off_lines:#?}"
    );

    // perf record --call-graph dwarf on the same binary, for comparison.
    if !perf_binary(&format!("{test} (the comparison with perf record)")) {
        return;
    }
    let theirs = perf_record_folded(
        &dir.join("perf.data"),
        &["--call-graph", "dwarf"],
        &[exe, "qsort"],
    );
    let (perf_main, perf_all) = reach_main(&theirs);
    eprintln!(
        "perf record --call-graph dwarf: on-CPU {:.1}% of the cpu-clock weight reaches main",
        100.0 * perf_main as f64 / perf_all.max(1) as f64
    );
    assert!(perf_all > 0, "perf recorded no samples");
}

#[test]
fn stacks_cut_by_a_small_copy_end_in_a_counted_reason() {
    let test = "stacks_cut_by_a_small_copy_end_in_a_counted_reason";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-cut");
    let Some(exe) = build_c(test, &dir, "stacks", &["-O2", "-fomit-frame-pointer"]) else {
        return;
    };
    let trace = dir.join("t.data");
    // 64 bytes hold burn_cpu's and compare's frames, not qsort's recursion.
    record_ok(
        &trace,
        &["--call-graph", "dwarf", "--stack-copy", "64"],
        &[exe.to_str().unwrap(), "qsort"],
    );
    let (lines, stderr) = folded(&trace, &[]);
    let all: u64 = lines.iter().map(|l| l.1).sum();
    let cut = weight(&lines, |f| {
        f.get(1) == Some(&"[unwind stopped: stack copy too small]")
    });
    assert!(
        cut * 2 >= all && all > 0,
        "{cut} of {all} samples end in the reason\n{lines:#?}"
    );
    assert!(
        stderr.contains("unwind stopped: stack copy too small"),
        "the flamegraph's summary does not count the reason: {stderr}"
    );
}

#[test]
fn an_inlined_function_is_a_frame_of_its_own_unless_no_inline() {
    let test = "an_inlined_function_is_a_frame_of_its_own_unless_no_inline";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-inline");
    let Some(exe) = build_c(test, &dir, "stacks", &["-O2", "-fno-omit-frame-pointer"]) else {
        return;
    };
    let trace = dir.join("t.data");
    record_ok(&trace, &[], &[exe.to_str().unwrap(), "inline"]);
    let (lines, _) = folded(&trace, &[]);
    let all: u64 = lines.iter().map(|l| l.1).sum();
    let inlined = weight(&lines, |f| calls(f, "main", "hot_inlined (inlined)"));
    eprintln!("hot_inlined: {inlined} of {all} on-CPU samples, as an inlined frame under main");
    assert!(
        all >= 200 && inlined * 2 >= all,
        "{inlined} of {all} samples under main;hot_inlined (inlined)\n{lines:#?}"
    );
    // --no-inline: the symbol table only, as before.
    let out = run_iotrace(&[
        "flamegraph",
        trace.to_str().unwrap(),
        "--folded",
        "--no-inline",
    ]);
    let plain = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !plain.contains("hot_inlined"),
        "{plain}"
    );
}

/// Debian's nginx: two workers serving a static page on `port`, logs and pid file in `dir`.
fn nginx_config(dir: &Path, port: u16) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    // The workers run as www-data.
    for d in [dir, &www] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(www.join("index.html"), "x".repeat(612)).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\n\
             error_log {dir}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {dir}/www; }} }}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// nginx under `iotrace record EXTRA`, driven by `iotrace load` for 2 s, then stopped
/// gracefully (SIGQUIT to its master). Returns the trace.
fn record_nginx(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let port = free_port();
    let conf = nginx_config(dir, port);
    let trace = dir.join(format!("{name}.data"));
    let mut args = vec!["record", "-q", "-o", trace.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "nginx", "-p", dir.to_str().unwrap(), "-c"]);
    args.push(conf.to_str().unwrap());
    let mut rec = Command::new(iotrace())
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn iotrace record");
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        let _ = rec.kill();
        panic!(
            "nginx did not listen on 127.0.0.1:{port}: {}",
            std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
        );
    }
    let url = format!("http://127.0.0.1:{port}/");
    let load = run_iotrace(&["load", &url, "-c", "8", "-d", "2s", "--json"]);
    let pid = std::fs::read_to_string(dir.join("nginx.pid")).expect("nginx.pid");
    let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
    let status = rec.wait().expect("wait for iotrace record");
    assert!(
        status.success(),
        "iotrace record {extra:?} -- nginx: {status}"
    );
    let load: serde_json::Value = serde_json::from_slice(&load.stdout).expect("load --json");
    assert!(
        load["requests"].as_u64().unwrap_or(0) > 100 && load["errors"].as_u64() == Some(0),
        "load against nginx: {load}"
    );
    trace
}

/// The on-CPU samples of nginx's own processes (master and workers), and how many of them
/// reach `main` (the workers are forked from the master, so their stacks start there too) or
/// the worker's loop.
fn nginx_reach(trace: &Path, kind: &str) -> (u64, u64, Vec<(String, u64)>) {
    let (lines, _) = folded(trace, &["--kind", kind]);
    let ours: Vec<(String, u64)> = lines
        .into_iter()
        .filter(|(s, _)| s.starts_with("nginx"))
        .collect();
    let all: u64 = ours.iter().map(|l| l.1).sum();
    let reach = weight(&ours, |f| {
        f.iter()
            .any(|&x| x == "main" || x.starts_with("ngx_worker_process_cycle"))
    });
    (reach, all, ours)
}

/// Debian's nginx is built without frame pointers (as most distribution packages are): the
/// DWARF mode unwinds it from `.eh_frame`, and `auto` chooses that mode for it.
#[test]
fn nginx_without_frame_pointers_reaches_main_in_dwarf_mode() {
    let test = "nginx_without_frame_pointers_reaches_main_in_dwarf_mode";
    if !perf_available(test) || !require_tool(test, "nginx") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("unwind-nginx");
    let dwarf = record_nginx(&dir, "dwarf", &["--call-graph", "dwarf"]);
    let (reach, all, lines) = nginx_reach(&dwarf, "oncpu");
    // Off-CPU: the stacks taken at switch-outs (a smaller copy than on-CPU samples').
    let (off_reach, off_all, off_lines) = nginx_reach(&dwarf, "offcpu");
    let fp = record_nginx(&dir, "fp", &["--call-graph", "fp"]);
    let (fp_reach, fp_all, _) = nginx_reach(&fp, "oncpu");
    eprintln!(
        "nginx --call-graph dwarf: {reach} of {all} on-CPU samples reach main ({:.1}%); --call-graph fp: {fp_reach} of {fp_all} ({:.1}%)",
        100.0 * reach as f64 / all.max(1) as f64,
        100.0 * fp_reach as f64 / fp_all.max(1) as f64
    );
    assert!(
        all >= 200,
        "only {all} on-CPU samples of nginx in 2 s of load\n{lines:#?}"
    );
    let top: Vec<_> = {
        let mut l = lines.clone();
        l.sort_by_key(|x| std::cmp::Reverse(x.1));
        l.truncate(20);
        l
    };
    assert!(
        reach * 100 >= all * 90,
        "{reach} of {all} nginx samples reach main or ngx_worker_process_cycle; heaviest stacks:\n{top:#?}"
    );
    eprintln!(
        "nginx --call-graph dwarf, off-CPU: {off_reach} of {off_all} µs reach main ({:.1}%)",
        100.0 * off_reach as f64 / off_all.max(1) as f64
    );
    assert!(
        off_all > 0 && off_reach * 100 >= off_all * 90,
        "off-CPU: {off_reach} of {off_all} µs reach main\n{off_lines:#?}"
    );
}
