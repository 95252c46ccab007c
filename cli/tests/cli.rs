//! The command line as a user meets it: help texts are golden files (rewrite them with
//! `IOTRACE_BLESS=1 cargo test -p iotrace-cli`), and bad input gets one clear error line.

use std::path::PathBuf;
use std::process::{Command, Output};

fn iotrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iotrace"))
        .args(args)
        .env("COLUMNS", "100")
        .output()
        .expect("run iotrace")
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if std::env::var_os("IOTRACE_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with IOTRACE_BLESS=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} changed; if intended, rerun with IOTRACE_BLESS=1"
    );
}

#[test]
fn help_texts() {
    for (args, file) in [
        (vec!["--help"], "help.txt"),
        (vec!["record", "--help"], "record-help.txt"),
        (vec!["report", "--help"], "report-help.txt"),
        (vec!["load", "--help"], "load-help.txt"),
        (vec!["compare", "--help"], "compare-help.txt"),
        (vec!["flamegraph", "--help"], "flamegraph-help.txt"),
        (vec!["timeline", "--help"], "timeline-help.txt"),
        (vec!["export", "--help"], "export-help.txt"),
    ] {
        let out = iotrace(&args);
        assert!(out.status.success());
        golden(file, &String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn record_without_command_is_a_usage_error() {
    let out = iotrace(&["record"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CMD"));
}

#[test]
fn report_of_missing_file_names_it() {
    let out = iotrace(&["report", "/nonexistent/trace.data"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/trace.data"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Regression: the OS error was printed twice (once in the message, once as its source).
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn bad_durations_are_usage_errors() {
    for bad in ["5x", "-1s", "abc", "0s"] {
        let out = iotrace(&["load", "http://127.0.0.1:9/", &format!("--duration={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad), "{bad}");
    }
}

#[test]
fn load_refuses_non_loopback_hosts() {
    let out = iotrace(&["load", "http://192.0.2.1/", "--requests", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn compare_rejects_unknown_strategy() {
    let out = iotrace(&["compare", "--strategies", "fibers"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown strategy `fibers`"));
}

// Every error path, each saying its cause once: tests/errors.rs.
