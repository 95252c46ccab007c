//! Every error the command line can run into, as a user meets it: the `iotrace` binary on bad
//! paths, foreign and cut-short trace files, outputs that cannot be written, bad arguments, a
//! server that is not there, programs that cannot run. Each must exit with its status, name
//! the problem, and say each thing once: no line twice, no OS error (`(os error N)`) twice, and
//! the file or value it is about once.
//!
//! Regression: errors whose message included their OS error and also named it as their source
//! printed it twice through the error chain (`iotrace timeline t.iotrace -o /nonexistent/x.html`,
//! `iotrace load http://127.0.0.1:1/`), and `timeline`/`export` of a missing or foreign trace
//! named the trace twice (`exporting t.iotrace: t.iotrace: not an iotrace trace file`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One failing command line and what its stderr must say.
struct Case {
    args: Vec<String>,
    /// The exit status.
    code: i32,
    /// Text that names the problem.
    says: &'static str,
    /// The file, address or value the error is about: named exactly once.
    subject: String,
    /// Send stdout to /dev/full (a write error on stdout).
    full_stdout: bool,
}

fn case(args: &[&str], code: i32, says: &'static str, subject: &str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        says,
        subject: subject.to_owned(),
        full_stdout: false,
    }
}

fn iotrace(args: &[String], full_stdout: bool) -> Output {
    let stdout = if full_stdout {
        Stdio::from(File::create("/dev/full").expect("open /dev/full"))
    } else {
        Stdio::null()
    };
    Command::new(env!("CARGO_BIN_EXE_iotrace"))
        .args(args)
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .stdout(stdout)
        .output()
        .expect("run iotrace")
}

/// What is wrong with `err` as the stderr of a failed command (`None`: nothing).
fn repeated(err: &str) -> Option<String> {
    let mut lines = HashMap::new();
    for line in err.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *lines.entry(line).or_insert(0) += 1;
    }
    if let Some((line, _)) = lines.iter().find(|(_, &n)| n > 1) {
        return Some(format!("the line `{line}` appears twice"));
    }
    if err.matches("(os error ").count() > 1 {
        return Some("two OS errors".to_owned());
    }
    for line in err.lines() {
        // `Connection refused (os error 111)`, and what precedes it up to a `: ` or `(`.
        let mut causes = HashMap::new();
        let mut rest = line;
        while let Some(at) = rest.find("(os error ") {
            let end = at + rest[at..].find(')').map_or(rest.len() - at, |e| e + 1);
            let start = rest[..at].rfind(": ").map_or(0, |s| s + 2);
            *causes.entry(&rest[start..end]).or_insert(0) += 1;
            rest = &rest[end..];
        }
        if let Some((cause, _)) = causes.iter().find(|(_, &n)| n > 1) {
            return Some(format!("`{cause}` appears twice in `{line}`"));
        }
        // The `: `-separated parts of a message: none twice (`X: No such file: No such file`).
        let mut parts = HashMap::new();
        for part in line.split(": ").map(str::trim).filter(|p| !p.is_empty()) {
            *parts.entry(part).or_insert(0) += 1;
        }
        if let Some((part, _)) = parts.iter().find(|(_, &n)| n > 1) {
            return Some(format!("`{part}` appears twice in `{line}`"));
        }
    }
    None
}

#[test]
fn repeated_finds_what_it_must() {
    for twice in [
        "iotrace: error: writing x: No such file or directory (os error 2): No such file or directory (os error 2)",
        "iotrace: error: cannot connect to 127.0.0.1:1: Connection refused (os error 111)\nCaused by: Connection refused (os error 111)",
        "iotrace: error: a: b\niotrace: error: a: b",
        "iotrace: error: x: y: x: y",
    ] {
        assert!(repeated(twice).is_some(), "{twice}");
    }
    let once =
        "iotrace: error: exporting t.iotrace: writing /x: No such file or directory (os error 2)";
    assert_eq!(repeated(once), None);
    // `exporting t: t: not a trace` names its file twice: each case's `subject` catches that.
}

/// A trace of `true` recorded without perf: it has no samples, whatever the machine allows.
fn record_plain(trace: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_iotrace"))
        .args(["record", "--no-perf", "-q", "-o"])
        .arg(trace)
        .args(["--", "true"])
        .output()
        .expect("run iotrace record");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A trace with on-CPU samples, if perf may be used here (root, or a low perf_event_paranoid).
fn record_sampled(trace: &Path) -> bool {
    let busy = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
    let ok = Command::new(env!("CARGO_BIN_EXE_iotrace"))
        .args(["record", "-q", "-o"])
        .arg(trace)
        .args(["--", "sh", "-c", busy])
        .output()
        .is_ok_and(|o| o.status.success());
    let svg = trace.with_extension("svg");
    ok && Command::new(env!("CARGO_BIN_EXE_iotrace"))
        .arg("flamegraph")
        .arg(trace)
        .arg("-o")
        .arg(&svg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_error_says_what_went_wrong_once() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("errors-once-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_owned();
    let trace = path("t.iotrace");
    record_plain(Path::new(&trace));
    let foreign = path("foreign.iotrace");
    std::fs::write(&foreign, "this is not a trace at all, just some text\n").unwrap();
    let empty = path("empty.iotrace");
    std::fs::write(&empty, "").unwrap();
    let short = path("short.iotrace");
    let bytes = std::fs::read(&trace).unwrap();
    std::fs::write(&short, &bytes[..10]).unwrap();
    let folded = path("a.folded");
    std::fs::write(&folded, "main;work 10\nmain;wait 5\n").unwrap();
    // A folder that does not exist: nothing can be read from or written into it.
    let missing = path("no-such-dir");
    let m = |name: &str| format!("{missing}/{name}");
    let (m_trace, m_out) = (m("t.iotrace"), m("out"));
    let enoent = "No such file or directory";
    let full = "No space left on device";

    let mut cases = vec![
        // Reading traces.
        case(&["report", &m_trace], 1, enoent, &m_trace),
        case(
            &["report", &foreign],
            1,
            "not an iotrace trace file",
            &foreign,
        ),
        case(
            &["report", &empty],
            1,
            "shorter than the 16-byte header",
            &empty,
        ),
        case(
            &["report", &short],
            1,
            "shorter than the 16-byte header",
            &short,
        ),
        case(
            &["report", &missing.replace("/no-such-dir", "")],
            1,
            "Is a directory",
            "Is a directory",
        ),
        case(&["flamegraph", &m_trace], 1, enoent, &m_trace),
        case(
            &["flamegraph", &foreign],
            1,
            "not an iotrace trace file",
            &foreign,
        ),
        case(&["flamegraph", &trace], 1, "no on-CPU samples", &trace),
        case(
            &["flamegraph", "--diff", &folded, &m_trace],
            1,
            enoent,
            &m_trace,
        ),
        case(
            &["flamegraph", "--diff", &folded, &empty],
            1,
            "neither an iotrace trace nor folded stacks",
            &empty,
        ),
        case(
            &["timeline", &m_trace, "-o", &m("x.html")],
            1,
            enoent,
            &m_trace,
        ),
        case(
            &["timeline", &foreign, "-o", &m("x.html")],
            1,
            "not an iotrace trace file",
            &foreign,
        ),
        case(&["export", &m_trace, "-o", &m_out], 1, enoent, &m_trace),
        case(
            &["export", &foreign, "-o", &m_out],
            1,
            "not an iotrace trace file",
            &foreign,
        ),
        case(
            &["export", &short, "-o", &m_out],
            1,
            "shorter than the 16-byte header",
            &short,
        ),
        case(
            &["export", &trace, "-f", "pprof", "-o", &m_out],
            1,
            "no stack samples",
            &trace,
        ),
        case(
            &["export", &trace, "-f", "firefox", "-o", &m_out],
            1,
            "no stack samples",
            &trace,
        ),
        case(&["compare", &m_trace], 1, enoent, &m_trace),
        case(
            &["compare", &foreign, &trace],
            1,
            "not an iotrace trace file",
            &foreign,
        ),
        case(
            &["compare", &short],
            1,
            "shorter than the 16-byte header",
            &short,
        ),
        // Writing outputs.
        case(
            &["flamegraph", "--diff", &folded, &folded, "-o", &m("x.svg")],
            1,
            enoent,
            &m("x.svg"),
        ),
        case(
            &["flamegraph", "--diff", &folded, &folded, "-o", "/dev/full"],
            1,
            full,
            "/dev/full",
        ),
        case(
            &["timeline", &trace, "-o", &m("x.html")],
            1,
            enoent,
            &m("x.html"),
        ),
        case(
            &["timeline", &trace, "-o", "/dev/full"],
            1,
            full,
            "/dev/full",
        ),
        case(
            &["record", "--no-perf", "-q", "-o", &m_trace, "--", "true"],
            1,
            enoent,
            &m_trace,
        ),
        case(
            &["record", "--no-perf", "-q", "-o", "/dev/full", "--", "true"],
            1,
            full,
            "/dev/full",
        ),
        Case {
            full_stdout: true,
            ..case(&["report", &trace], 1, full, "writing to stdout")
        },
        Case {
            full_stdout: true,
            ..case(&["report", "--json", &trace], 1, full, "writing to stdout")
        },
        Case {
            full_stdout: true,
            ..case(
                &["flamegraph", "--diff", &folded, &folded, "--folded"],
                1,
                full,
                full,
            )
        },
        // The load generator.
        case(
            &["load", "http://127.0.0.1:1/", "-n", "1"],
            1,
            "Connection refused",
            "127.0.0.1:1",
        ),
        case(
            &["load", "http://192.0.2.1/", "-n", "1"],
            1,
            "only loopback hosts",
            "192.0.2.1",
        ),
        case(
            &["load", "ftp://127.0.0.1/"],
            1,
            "only http:// URLs",
            "ftp://127.0.0.1/",
        ),
        case(
            &["load", "http://127.0.0.1:1/", "-c", "0"],
            1,
            "connections must be between",
            "connections",
        ),
        // Programs that cannot be recorded.
        case(
            &["record", "-q", "-o", &path("x.iotrace"), "--", &m("prog")],
            127,
            "command not found",
            &m("prog"),
        ),
        case(
            &["record", "-q", "-o", &path("x.iotrace"), "--", &foreign],
            126,
            "Permission denied",
            &foreign,
        ),
        case(
            &[
                "record",
                "-q",
                "-p",
                "4194305",
                "-d",
                "1s",
                "-o",
                &path("x.iotrace"),
            ],
            1,
            "no process with pid 4194305",
            "4194305",
        ),
        // Bad arguments (usage errors, exit status 2).
        case(
            &["record", "-p", "12x", "-o", &path("x.iotrace")],
            2,
            "is not a pid",
            "12x",
        ),
        case(
            &["record", "-d", "5x", "--", "true"],
            2,
            "unknown unit `x`",
            "5x",
        ),
        case(
            &["record", "-d", "0", "--", "true"],
            2,
            "must be above zero",
            "'0'",
        ),
        case(
            &["load", "http://127.0.0.1:1/", "-d", "abc"],
            2,
            "expected a number and a unit",
            "abc",
        ),
        case(
            &["load", "http://127.0.0.1:1/", "--timeout=-1s"],
            2,
            "expected a number and a unit",
            "-1s",
        ),
        case(
            &["load", "http://127.0.0.1:1/", "-d", "2000m"],
            2,
            "at most 24 hours",
            "2000m",
        ),
        case(
            &["compare", "-d", "1.2.3s"],
            2,
            "expected a number and a unit",
            "1.2.3s",
        ),
        case(
            &["compare", "--strategies", "fibers"],
            1,
            "unknown strategy `fibers`",
            "fibers",
        ),
        case(
            &["report", &trace, "--blocked-threshold", "1h"],
            2,
            "unknown unit `h`",
            "1h",
        ),
        case(
            &["report", &trace, "--blocked-share", "200%"],
            2,
            "between 0% and 100%",
            "200%",
        ),
        case(
            &["flamegraph", &trace, "--from", "soon"],
            2,
            "expected a number and a unit",
            "soon",
        ),
        case(
            &["timeline", &trace, "--to", "1 2"],
            2,
            "unknown unit `2`",
            "'1 2'",
        ),
        case(
            &["export", &trace, "--from", "1.5fortnights"],
            2,
            "unknown unit `fortnights`",
            "1.5fortnights",
        ),
        case(
            &["export", &trace, "-f", "svg"],
            2,
            "invalid value 'svg'",
            "svg",
        ),
        case(
            &["record"],
            2,
            "<CMD>",
            "required arguments were not provided",
        ),
    ];
    for format in ["perfetto", "pftrace", "otlp"] {
        let out = m(&format!("x.{format}"));
        cases.push(case(
            &["export", &trace, "-f", format, "-o", &out],
            1,
            enoent,
            &out,
        ));
        cases.push(case(
            &["export", &trace, "-f", format, "-o", "/dev/full"],
            1,
            full,
            "/dev/full",
        ));
    }
    // Writing the outputs that need stack samples, where perf can take them.
    let sampled = path("s.iotrace");
    if record_sampled(Path::new(&sampled)) {
        for format in ["pprof", "firefox"] {
            let out = m(&format!("x.{format}"));
            cases.push(case(
                &["export", &sampled, "-f", format, "-o", &out],
                1,
                enoent,
                &out,
            ));
            cases.push(case(
                &["export", &sampled, "-f", format, "-o", "/dev/full"],
                1,
                full,
                "/dev/full",
            ));
        }
        let svg = m("x.svg");
        cases.push(case(&["flamegraph", &sampled, "-o", &svg], 1, enoent, &svg));
        cases.push(case(
            &["flamegraph", &sampled, "-o", "/dev/full"],
            1,
            full,
            "/dev/full",
        ));
        cases.push(case(
            &["flamegraph", &sampled, "-o", &path("")],
            1,
            "Is a directory",
            "Is a directory",
        ));
    } else {
        eprintln!("note: perf is not available: the sampled outputs' write errors are not checked");
    }

    let mut failures = Vec::new();
    for c in &cases {
        let out = iotrace(&c.args, c.full_stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        let what = format!("iotrace {}", c.args.join(" "));
        if out.status.code() != Some(c.code) {
            failures.push(format!(
                "{what}: exit status {:?}, expected {}: {err}",
                out.status.code(),
                c.code
            ));
        } else if !err.contains(c.says) {
            failures.push(format!("{what}: stderr does not say `{}`: {err}", c.says));
        } else if let Some(problem) = repeated(&err) {
            failures.push(format!("{what}: {problem}"));
        } else if err.matches(c.subject.as_str()).count() != 1 {
            failures.push(format!(
                "{what}: `{}` is not named exactly once: {err}",
                c.subject
            ));
        } else if c.code == 1 && err.trim_end().lines().count() != 1 {
            failures.push(format!("{what}: more than one error line: {err}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The errors whose messages include their OS error, printed as the CLI prints errors
/// (anyhow's `{:#}`, the whole chain): the OS error once. Some of these the command line
/// cannot reach on every machine (perf refused, /proc unreadable), so they are built here.
#[test]
fn errors_with_an_os_error_print_it_once() {
    use iotrace_collector::{attach, export, flamegraph, perf, record, timeline};
    let os = || std::io::Error::from_raw_os_error(libc::ENOENT);
    let path = || PathBuf::from("/x/y");
    let errors: Vec<anyhow::Error> = vec![
        perf::PerfError::Denied { error: os() }.into(),
        perf::PerfError::Open(os()).into(),
        record::RecordError::Exec {
            program: "prog".into(),
            error: os(),
        }
        .into(),
        record::RecordError::Write {
            path: path(),
            error: os(),
        }
        .into(),
        record::RecordError::Io(os()).into(),
        attach::AttachError::Proc {
            pid: 1,
            error: os(),
        }
        .into(),
        flamegraph::FlamegraphError::Io {
            path: path(),
            error: os(),
        }
        .into(),
        flamegraph::FlamegraphError::Write(os()).into(),
        timeline::TimelineError::Write {
            path: path(),
            error: os(),
        }
        .into(),
        timeline::TimelineError::Spill(os()).into(),
        export::ExportError::Write {
            path: path(),
            error: os(),
        }
        .into(),
        iotrace_load::LoadError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            error: os(),
        }
        .into(),
        iotrace_load::LoadError::Runtime(os()).into(),
    ];
    for e in errors {
        let text = format!("{e:#}");
        assert_eq!(text.matches("(os error 2)").count(), 1, "{text}");
        assert_eq!(repeated(&text), None, "{text}");
    }
}
