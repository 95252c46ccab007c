//! `iotrace export --format pprof | firefox | otlp`, each read by the real client or the
//! official definitions: `go tool pprof`, the OTLP protos (PyPI's `opentelemetry-proto`), and
//! the Firefox Profiler's processed-format invariants; and the wakes of the Perfetto exports
//! (`perfetto`, `pftrace`) as flows, the protobuf read with Perfetto's protos.

use std::path::{Path, PathBuf};
use std::process::Command;

use iotrace_tests::*;

/// Tests here that load the CPU run one at a time (the burn share is of what the fixture got).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn strict() -> bool {
    std::env::var("IOTRACE_REQUIRE_PERF").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

/// A client the test needs is missing: skipped loudly, or a failure where `.ci/run` installs
/// it (`IOTRACE_REQUIRE_PERF=1` or `CI=true`).
fn missing(test: &str, what: &str) {
    if strict() {
        panic!("{test}: {what} (.ci/run installs it; IOTRACE_REQUIRE_PERF=1 makes this a failure)");
    }
    skip(
        test,
        &format!("{what}; set IOTRACE_REQUIRE_PERF=1 to make this a failure"),
    );
}

fn export(trace: &Path, format: &str, out: &Path) -> std::process::Output {
    run_iotrace(&[
        "export",
        trace.to_str().unwrap(),
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
    ])
}

fn export_ok(trace: &Path, format: &str, out: &Path) {
    let o = export(trace, format, out);
    assert!(
        o.status.success(),
        "export --format {format} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn record_burn(dir: &Path) -> PathBuf {
    let trace = dir.join("burn.data");
    let fx = fixture();
    let out = record(&trace, &[], &[fx.to_str().unwrap(), "burn", "1500"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    trace
}

/// `go tool pprof -top` rows: (flat %, function), heaviest first.
fn pprof_top(profile: &Path, extra: &[&str]) -> Vec<(f64, String)> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .args(extra)
        .arg(profile)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let pct = cols.get(1)?.strip_suffix('%')?.parse().ok()?;
            Some((pct, cols[5..].join(" ")))
        })
        .collect()
}

#[test]
fn pprof_of_burn_cpu_reads_in_go_tool_pprof_with_burn_cpu_first() {
    let test = "pprof_of_burn_cpu_reads_in_go_tool_pprof_with_burn_cpu_first";
    if !perf_available(test) {
        return;
    }
    if Command::new("go").arg("version").output().is_err() {
        missing(test, "no `go` (apt-get install golang-go)");
        return;
    }
    let _serial = serial();
    let dir = temp_dir("export-pprof");
    let trace = record_burn(&dir);
    let profile = dir.join("burn.pb.gz");
    export_ok(&trace, "pprof", &profile);
    let bytes = std::fs::read(&profile).unwrap();
    assert_eq!(&bytes[..2], [0x1f, 0x8b], "gzipped");

    // The default sample type is cpu/nanoseconds.
    let top = pprof_top(&profile, &[]);
    let (flat, name) = top.first().expect("pprof lists functions");
    assert!(
        name.ends_with("burn_cpu") && *flat >= 80.0,
        "first row {name} at {flat}% flat:\n{top:?}"
    );
    // The other sample types are there and readable too; the fixture barely sleeps, so its
    // off-CPU time is not in burn_cpu.
    let samples = pprof_top(&profile, &["-sample_index=samples"]);
    assert!(samples.first().is_some_and(|r| r.1.ends_with("burn_cpu")));
    let off = pprof_top(&profile, &["-sample_index=off_cpu"]);
    assert!(
        off.iter().all(|r| !r.1.ends_with("burn_cpu") || r.0 < 50.0),
        "{off:?}"
    );
    // Samples carry their thread as a label.
    let tags = Command::new("go")
        .args(["tool", "pprof", "-tags"])
        .arg(&profile)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(
        tags.contains("thread") && tags.contains("fixture"),
        "{tags}"
    );
}

/// A venv under target/ with the OTLP protos, made once; `None` when pip cannot get them.
fn otlp_python(test: &str) -> Option<PathBuf> {
    python_venv(
        test,
        "otlp-venv",
        &["opentelemetry-proto", "protobuf"],
        "import opentelemetry.proto.collector.trace.v1.trace_service_pb2, google.protobuf.json_format",
    )
}

/// The Firefox Profiler's own command-line client (npm's `@firefox-devtools/profiler-cli`,
/// which bundles the profiler's profile loading and upgrading code), installed once under
/// target/; `None` (skipped loudly) without node and npm, except in CI.
fn profiler_cli(test: &str) -> Option<PathBuf> {
    let dir = iotrace()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("profiler-cli");
    let bin = dir.join("node_modules/.bin/profiler-cli");
    let works = |b: &Path| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&bin) {
        return Some(bin);
    }
    if !require_tool(test, "npm") {
        return None;
    }
    let _ = std::fs::create_dir_all(&dir);
    let installed = Command::new("npm")
        .args(["install", "-q", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg("@firefox-devtools/profiler-cli@0.10.0")
        .output();
    match installed {
        Ok(o) if o.status.success() && works(&bin) => Some(bin),
        Ok(o) => {
            missing(
                test,
                &format!(
                    "npm could not install @firefox-devtools/profiler-cli: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            None
        }
        Err(e) => {
            missing(test, &format!("npm did not run ({e})"));
            None
        }
    }
}

/// `profiler-cli ARGS --session SESSION --json`, parsed.
fn pq(bin: &Path, session: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin)
        .args(args)
        .args(["--session", session, "--json"])
        .output()
        .expect("run profiler-cli");
    assert!(
        out.status.success(),
        "profiler-cli {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "profiler-cli {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Decodes OTLP/JSON with the official protos as a collector does (ids are hex in OTLP/JSON;
/// protobuf's JSON parser takes bytes as base64, so they are converted first, after checking
/// they are hex of the right length) and prints one line per span: name, then the
/// `thread.id`, `thread.name` and `iotrace.task.id` attributes.
const DECODE: &str = r#"
import base64, json, re, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
doc = json.load(open(sys.argv[1]))
for rs in doc["resourceSpans"]:
    for ss in rs["scopeSpans"]:
        for s in ss["spans"]:
            for key, n in (("traceId", 32), ("spanId", 16), ("parentSpanId", 16)):
                if key in s:
                    assert re.fullmatch("[0-9a-f]{%d}" % n, s[key]), (key, s[key])
                    s[key] = base64.b64encode(bytes.fromhex(s[key])).decode()
req = json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())
for rs in req.resource_spans:
    res = {a.key for a in rs.resource.attributes}
    assert {"service.name", "process.pid"} <= res, res
    for ss in rs.scope_spans:
        for s in ss.spans:
            assert len(s.trace_id) == 16 and len(s.span_id) == 8, s
            assert s.end_time_unix_nano >= s.start_time_unix_nano > 1_600_000_000 * 10**9, s
            a = {x.key: x.value for x in s.attributes}
            assert "thread.id" in a and "thread.name" in a, s
            print(s.name, a["thread.id"].int_value, a["thread.name"].string_value,
                  a["iotrace.task.id"].int_value if "iotrace.task.id" in a else "-", sep="\t")
"#;

#[test]
fn otlp_of_the_tokio_demo_decodes_with_the_official_protos_one_span_per_request() {
    let test = "otlp_of_the_tokio_demo_decodes_with_the_official_protos_one_span_per_request";
    if !perf_available(test) {
        return;
    }
    let Some(python) = otlp_python(test) else {
        return;
    };
    let dir = temp_dir("export-otlp");
    let trace = dir.join("tokio.data");
    let (mut child, addr) = record_demo("tokio", &trace);
    let url = format!("http://{addr}/work?io_ms=1&cpu_us=100");
    let load = run_iotrace(&["load", &url, "-c", "8", "-d", "1s", "--json"]);
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let load: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(load["errors"], 0, "{load}");
    let served = load["requests"].as_u64().unwrap();
    // SAFETY: signalling our own child (iotrace forwards it to the demo).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let out = dir.join("spans.json");
    export_ok(&trace, "otlp", &out);
    let decoded = Command::new(&python)
        .args(["-c", DECODE])
        .arg(&out)
        .output()
        .expect("run python");
    assert!(
        decoded.status.success(),
        "the OTLP protos reject the export: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let text = String::from_utf8_lossy(&decoded.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let requests: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == "request").collect();

    // The report counts closed `request` spans in its own pass over the trace.
    let report = report_json(&trace);
    let in_report = report["spans"]["requests"].as_u64().unwrap();
    assert_eq!(
        requests.len() as u64,
        in_report,
        "OTLP request spans vs the report"
    );
    assert!(
        in_report >= served,
        "{in_report} request spans for {served} requests served"
    );
    assert_eq!(
        rows.len() as u64,
        report["spans"]["spans_closed"].as_u64().unwrap(),
        "every closed span is exported"
    );
    // Each request ran in a connection task on a worker thread of the demo.
    let workers: std::collections::BTreeSet<String> = report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("tokio-r")))
        .filter_map(|t| t["tid"].as_u64())
        .map(|tid| tid.to_string())
        .collect();
    for r in &requests {
        assert!(r[2].starts_with("tokio-r"), "{r:?}");
        assert!(
            workers.contains(r[1]),
            "{r:?} is not on a worker: {workers:?}"
        );
        assert_ne!(r[3], "-", "{r:?} has no task");
    }
}

/// The Firefox Profiler's processed format, checked as its loader relies on it: every table's
/// columns as long as its `length`, indexes within the tables they point into, stack prefixes
/// before their stacks, samples in time order.
fn check_processed_profile(p: &serde_json::Value) {
    let meta = &p["meta"];
    assert!(meta["version"].as_u64().is_some(), "meta.version");
    assert!(meta["preprocessedProfileVersion"].as_u64().unwrap() >= 40);
    assert!(meta["interval"].as_f64().unwrap() > 0.0);
    let categories = meta["categories"].as_array().unwrap().len();
    let threads = p["threads"].as_array().expect("threads");
    assert!(!threads.is_empty());
    let table = |t: &serde_json::Value, name: &str, cols: &[&str]| -> usize {
        let tab = &t[name];
        let n = tab["length"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}.length")) as usize;
        for c in cols {
            let col = tab[c]
                .as_array()
                .unwrap_or_else(|| panic!("{name}.{c} is not an array"));
            assert_eq!(col.len(), n, "{name}.{c}");
        }
        n
    };
    let index = |v: &serde_json::Value, below: usize, what: &str| {
        if let Some(i) = v.as_u64() {
            assert!((i as usize) < below, "{what} {i} ≥ {below}");
        } else {
            assert!(v.is_null(), "{what} is {v}");
        }
    };
    for t in threads {
        let strings = t["stringArray"].as_array().expect("stringArray").len();
        let funcs = table(
            t,
            "funcTable",
            &["name", "resource", "isJS", "relevantForJS"],
        );
        let frames = table(t, "frameTable", &["func", "category", "address", "line"]);
        let stacks = table(t, "stackTable", &["prefix", "frame"]);
        let samples = table(t, "samples", &["stack", "timeDeltas"]);
        let markers = table(
            t,
            "markers",
            &["name", "startTime", "endTime", "phase", "data"],
        );
        for f in t["funcTable"]["name"].as_array().unwrap() {
            index(f, strings, "funcTable.name");
        }
        for (i, f) in t["frameTable"]["func"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            index(f, funcs, "frameTable.func");
            index(
                &t["frameTable"]["category"][i],
                categories,
                "frameTable.category",
            );
        }
        for (i, s) in t["stackTable"]["frame"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            index(s, frames, "stackTable.frame");
            index(&t["stackTable"]["prefix"][i], i.max(1), "stackTable.prefix");
        }
        for s in t["samples"]["stack"].as_array().unwrap() {
            index(s, stacks, "samples.stack");
        }
        let deltas = t["samples"]["timeDeltas"].as_array().unwrap();
        assert!(
            deltas.iter().skip(1).all(|d| d.as_f64().unwrap() >= 0.0),
            "samples in time order"
        );
        for m in t["markers"]["name"].as_array().unwrap() {
            index(m, strings, "markers.name");
        }
        for (i, d) in t["markers"]["data"].as_array().unwrap().iter().enumerate() {
            let ty = d["type"].as_str().expect("marker data has a type");
            assert!(
                meta["markerSchema"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == ty),
                "marker type {ty} has a schema"
            );
            // Instants (phase 0: the diagnoses' moments) have no end.
            if t["markers"]["phase"][i] == 0 {
                continue;
            }
            let (s, e) = (&t["markers"]["startTime"][i], &t["markers"]["endTime"][i]);
            assert!(
                e.as_f64().unwrap() >= s.as_f64().unwrap(),
                "marker ends after it starts"
            );
        }
        let _ = (samples, markers);
    }
}

/// Functions with samples in a thread, by name.
fn sampled_functions(t: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let s = |i: &serde_json::Value| i.as_u64().unwrap() as usize;
    let mut names = std::collections::BTreeSet::new();
    for st in t["samples"]["stack"].as_array().unwrap() {
        let mut stack = st.as_u64().map(|v| v as usize);
        while let Some(i) = stack {
            let frame = s(&t["stackTable"]["frame"][i]);
            let func = s(&t["frameTable"]["func"][frame]);
            let name = s(&t["funcTable"]["name"][func]);
            names.insert(t["stringArray"][name].as_str().unwrap().to_owned());
            stack = t["stackTable"]["prefix"][i].as_u64().map(|v| v as usize);
        }
    }
    names
}

#[test]
fn firefox_profile_has_the_processed_format_structure_with_burn_cpu_sampled() {
    let test = "firefox_profile_has_the_processed_format_structure_with_burn_cpu_sampled";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("export-firefox");
    let trace = dir.join("nap.data");
    let fx = fixture();
    // Burn, then nap: on-CPU samples in burn_cpu and blocked stretches in nanosleep.
    let rec = record(
        &trace,
        &[],
        &[
            "sh",
            "-c",
            &format!("{0} burn 400; {0} nap 20 5", fx.to_str().unwrap()),
        ],
    );
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let profile = dir.join("profile.json");
    export_ok(&trace, "firefox", &profile);
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profile).unwrap()).expect("the profile is JSON");
    check_processed_profile(&p);
    let threads = p["threads"].as_array().unwrap();
    let all: std::collections::BTreeSet<String> =
        threads.iter().flat_map(sampled_functions).collect();
    assert!(all.contains("fixture::flat::burn_cpu"), "{all:?}");
    assert!(all.contains("fixture::nap"), "{all:?}");
    // The five 20 ms naps are blocked markers of at least 20 ms each.
    let mut naps = 0;
    for t in threads {
        let m = &t["markers"];
        for (i, d) in m["data"].as_array().unwrap().iter().enumerate() {
            if d["type"] != "iotrace-blocked" {
                continue;
            }
            let ms = m["endTime"][i].as_f64().unwrap() - m["startTime"][i].as_f64().unwrap();
            if ms >= 19.9 {
                naps += 1;
            }
        }
    }
    assert!(naps >= 5, "{naps} blocked markers of 20 ms");

    // The profiler's own loader reads it: burn_cpu is the hottest function of the busiest
    // thread, and the naps are blocked markers under our schema's label.
    if let Some(bin) = profiler_cli(test) {
        let session = format!("iotrace-test-{}", std::process::id());
        /// Stops the profiler-cli daemon of the session, however the test ends.
        struct Stop<'a>(&'a Path, &'a str);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                let _ = Command::new(self.0).args(["stop", self.1]).output();
            }
        }
        let _stop = Stop(&bin, &session);
        let loaded = Command::new(&bin)
            .args(["load", profile.to_str().unwrap(), "--session", &session])
            .output()
            .expect("run profiler-cli load");
        assert!(
            loaded.status.success(),
            "the Firefox Profiler does not load it: {}{}",
            String::from_utf8_lossy(&loaded.stdout),
            String::from_utf8_lossy(&loaded.stderr)
        );
        let list = pq(&bin, &session, &["thread", "list"]);
        let threads = list["threads"].as_array().expect("threads");
        let busiest = threads
            .iter()
            .max_by(|a, b| {
                a["cpuMs"]
                    .as_f64()
                    .partial_cmp(&b["cpuMs"].as_f64())
                    .unwrap()
            })
            .expect("a thread");
        let handle = busiest["threadHandle"].as_str().unwrap();
        let hot = pq(&bin, &session, &["thread", "samples", "--thread", handle]);
        let top = &hot["topFunctionsBySelf"][0];
        assert!(
            top["name"] == "fixture::flat::burn_cpu"
                && top["selfPercentage"].as_f64() >= Some(80.0),
            "the profiler's hottest function: {top}"
        );
        let napper = threads
            .iter()
            .find(|t| t["markerCount"].as_u64() >= Some(5) && t["name"] == "fixture")
            .unwrap_or_else(|| panic!("no thread with the naps' markers: {list}"));
        let handle = napper["threadHandle"].as_str().unwrap();
        let markers = pq(&bin, &session, &["thread", "markers", "--thread", handle]);
        let blocked = markers["byType"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["markerName"] == "blocked")
            .unwrap_or_else(|| panic!("no blocked markers: {markers}"));
        assert!(
            blocked["count"].as_u64() >= Some(5)
                && blocked["durationStats"]["max"].as_f64() >= Some(19.9)
                && blocked["topMarkers"][0]["label"] == "blocked in clock_nanosleep",
            "{blocked}"
        );
    }

    // --max-markers keeps the longest markers, says how many it left out, and no others (the
    // diagnoses' instants are all kept, and not counted).
    let durations = |p: &serde_json::Value| -> Vec<f64> {
        let mut d = Vec::new();
        for t in p["threads"].as_array().unwrap() {
            let m = &t["markers"];
            for i in 0..m["length"].as_u64().unwrap() as usize {
                if m["phase"][i] == 0 {
                    continue;
                }
                d.push(m["endTime"][i].as_f64().unwrap() - m["startTime"][i].as_f64().unwrap());
            }
        }
        d
    };
    let all = durations(&p);
    let max = all.len() / 2;
    assert!(max >= 3, "only {} markers", all.len());
    let capped = dir.join("capped.json");
    let o = run_iotrace(&[
        "export",
        trace.to_str().unwrap(),
        "--format",
        "firefox",
        "--max-markers",
        &max.to_string(),
        "-o",
        capped.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(&capped).unwrap()).unwrap();
    check_processed_profile(&q);
    let kept = durations(&q);
    assert!(
        !kept.is_empty() && kept.len() <= max,
        "{} kept of at most {max}",
        kept.len()
    );
    assert!(
        err.contains(&format!("left out {} markers", all.len() - kept.len())),
        "{err}"
    );
    let shortest = kept.iter().copied().fold(f64::INFINITY, f64::min);
    let longer = all.iter().filter(|&&d| d >= shortest).count();
    assert_eq!(
        longer,
        kept.len(),
        "the kept markers are not the longest ({shortest} ms and up)"
    );
    let sampled = |p: &serde_json::Value| -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = p["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let n = t["samples"]["length"].as_u64().unwrap_or(0) as usize;
                (t["name"].as_str().unwrap_or("").to_owned(), n)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        sampled(&q),
        sampled(&p),
        "samples were left out with the markers"
    );
}

#[test]
fn exports_of_bad_input_say_so_in_one_line() {
    let dir = temp_dir("export-bad");
    let foreign = dir.join("foreign.data");
    std::fs::write(&foreign, b"this is not a trace at all, just some text\n").unwrap();
    let missing_file = dir.join("missing.data");
    for format in ["pprof", "firefox", "otlp"] {
        for input in [&foreign, &missing_file] {
            let o = export(input, format, &dir.join("out"));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{format} of {input:?} succeeded");
            assert_eq!(err.trim().lines().count(), 1, "{format}: {err}");
            assert!(
                err.starts_with("iotrace: ") && !err.contains("panicked"),
                "{err}"
            );
        }
    }
}

#[test]
fn exports_of_a_truncated_trace_write_what_it_holds_and_warn() {
    let test = "exports_of_a_truncated_trace_write_what_it_holds_and_warn";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("export-truncated");
    let trace = record_burn(&dir);
    let bytes = std::fs::read(&trace).unwrap();
    // Inside the last frame (a frame is at least 9 bytes), and two thirds in (which may land
    // between frames).
    for (name, len) in [
        ("end", bytes.len() - 7),
        ("two-thirds", bytes.len() * 2 / 3),
    ] {
        let cut = dir.join(format!("cut-{name}.data"));
        std::fs::write(&cut, &bytes[..len]).unwrap();
        for format in ["pprof", "firefox", "otlp"] {
            let o = export(&cut, format, &dir.join(format!("cut-{name}.{format}")));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{format} of {name}: {err}");
            if format == "otlp" {
                // The fixture sends no spans: nothing to export, said in one line.
                assert!(!o.status.success(), "{err}");
                assert_eq!(err.trim().lines().count(), 1, "{err}");
                continue;
            }
            assert!(o.status.success(), "{format} of {name}: {err}");
            if name == "end" {
                assert!(
                    err.contains("warning: ") && err.contains("truncated"),
                    "{format} says the trace is cut: {err}"
                );
            }
        }
    }
}

#[test]
fn otlp_of_a_program_without_spans_is_one_clear_line() {
    let test = "otlp_of_a_program_without_spans_is_one_clear_line";
    let dir = temp_dir("export-nospans");
    let trace = dir.join("t.data");
    let fx = fixture();
    let rec = record(
        &trace,
        &["--no-samples"],
        &[fx.to_str().unwrap(), "writes", "3"],
    );
    if !rec.status.success() {
        skip(test, "record failed here");
        return;
    }
    let o = export(&trace, "otlp", &dir.join("spans.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no spans to export") && err.trim().lines().count() == 1,
        "{err}"
    );
    let o = export(&trace, "pprof", &dir.join("p.pb.gz"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no stack samples") && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// Decodes a `.pftrace` with Perfetto's Python protos and prints, as JSON, per flow id the track
/// (a thread's name, or a task track's name) and kind of the event that starts it (`flow_ids`)
/// and of the one that ends it (`terminating_flow_ids`), the yield sites of idle slices by
/// track, and whether every track's events are in time order.
const DECODE_FLOWS: &str = r#"
import json, sys
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
t = Trace()
t.ParseFromString(open(sys.argv[1], "rb").read())
tracks, names, arg_names, strings, last = {}, {}, {}, {}, {}
starts, ends, sites = {}, {}, {}
ok = True
kinds = {TrackEvent.TYPE_SLICE_BEGIN: "begin", TrackEvent.TYPE_INSTANT: "instant"}
for p in t.packet:
    d = p.interned_data
    for e in d.event_names: names[e.iid] = e.name
    for e in d.debug_annotation_names: arg_names[e.iid] = e.name
    for e in d.debug_annotation_string_values: strings[e.iid] = e.str.decode()
    if p.HasField("track_descriptor"):
        td = p.track_descriptor
        tracks[td.uuid] = td.thread.thread_name if td.HasField("thread") else td.name
        continue
    ev = p.track_event
    if p.timestamp < last.get(ev.track_uuid, 0): ok = False
    last[ev.track_uuid] = p.timestamp
    where = [tracks[ev.track_uuid], kinds.get(ev.type, "other"), names.get(ev.name_iid), p.timestamp]
    for f in ev.flow_ids: starts[f] = where
    for f in ev.terminating_flow_ids: ends[f] = where
    args = {arg_names[a.name_iid]: strings.get(a.string_value_iid) for a in ev.debug_annotations if a.HasField("string_value_iid")}
    if "yield_site" in args:
        sites.setdefault(tracks[ev.track_uuid], []).append(args["yield_site"])
flows = [[starts.get(f), ends.get(f)] for f in sorted(set(starts) | set(ends))]
print(json.dumps({"ok": ok, "flows": flows, "sites": sites}))
"#;

/// The Chrome JSON timestamp in integer nanoseconds.
fn json_ns(v: &serde_json::Value) -> i64 {
    (v.as_f64().expect("a number") * 1000.0).round() as i64
}

#[test]
fn perfetto_exports_of_yields_carry_each_wake_as_a_flow_to_the_woken_tasks_poll() {
    let test = "perfetto_exports_of_yields_carry_each_wake_as_a_flow_to_the_woken_tasks_poll";
    if !perf_available(test) {
        return;
    }
    let dir = temp_dir("export-yields");
    let trace = dir.join("yields.data");
    let bin = demo_binary("yields");
    let out = record(&trace, &[], &[bin.to_str().unwrap(), "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Chrome JSON: `s` on the channel-feeder thread, `f` (bound to the enclosing slice) on the
    // worker thread at the moment the receiver's poll begins.
    let json = dir.join("trace.json");
    export_ok(&trace, "perfetto", &json);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let feeder = events
        .iter()
        .find(|e| e["ph"] == "M" && e["args"]["name"] == "channel-feeder")
        .map(|e| e["tid"].clone())
        .expect("the channel-feeder thread is named");
    let is_receiver = |e: &serde_json::Value| {
        e["ph"] == "b"
            && e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("receiver ("))
    };
    let polls: std::collections::HashSet<(String, i64)> = events
        .iter()
        .filter(|e| is_receiver(e) && e["cat"].as_str().is_some_and(|c| c.starts_with("poll")))
        .map(|e| (e["tid"].to_string(), json_ns(&e["ts"])))
        .collect();
    let mut flows: std::collections::HashMap<u64, [Option<&serde_json::Value>; 2]> =
        std::collections::HashMap::new();
    for e in events {
        let end = match e["ph"].as_str() {
            Some("s") => 0,
            Some("f") => 1,
            _ => continue,
        };
        let id = e["id"].as_u64().expect("a flow id");
        assert!(
            flows.entry(id).or_default()[end].replace(e).is_none(),
            "flow {id} twice"
        );
    }
    let to_receiver = flows
        .values()
        .filter(|[s, f]| {
            let (Some(s), Some(f)) = (s, f) else {
                panic!("half a flow: {s:?} {f:?}");
            };
            assert!(json_ns(&s["ts"]) <= json_ns(&f["ts"]), "{s} {f}");
            assert_eq!(f["bp"], "e");
            s["tid"] == feeder && polls.contains(&(f["tid"].to_string(), json_ns(&f["ts"])))
        })
        .count();
    assert!(
        to_receiver >= 15,
        "{to_receiver} flows from channel-feeder finish where a receiver poll begins ({} flows, {} polls)",
        flows.len(),
        polls.len()
    );
    // Idle slices say where the task yielded; scheduled ones who woke it.
    let receiver: Vec<&serde_json::Value> = events.iter().filter(|e| is_receiver(e)).collect();
    let recv_sites = receiver
        .iter()
        .filter(|e| {
            e["cat"] == "idle"
                && e["args"]["yield_site"]
                    .as_str()
                    .is_some_and(|s| s.contains("recv"))
        })
        .count();
    let fed = receiver
        .iter()
        .filter(|e| {
            e["cat"] == "scheduled"
                && e["args"]["woken_by"]
                    .as_str()
                    .is_some_and(|s| s.contains("channel-feeder"))
        })
        .count();
    assert!(
        recv_sites >= 15 && fed >= 15,
        "{recv_sites} idle slices at recv, {fed} woken by the feeder"
    );

    // pftrace: the flow starts with an instant on the feeder's track and ends on the receiver's
    // poll slice.
    let Some(python) = python_venv(
        test,
        "perfetto-venv",
        &["perfetto", "protobuf"],
        "import perfetto.protos.perfetto.trace.perfetto_trace_pb2",
    ) else {
        return;
    };
    let pf = dir.join("trace.pftrace");
    export_ok(&trace, "pftrace", &pf);
    let out = Command::new(&python)
        .args(["-c", DECODE_FLOWS])
        .arg(&pf)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the official protos do not decode it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("decoder output");
    assert_eq!(got["ok"], true, "a track's events go back in time");
    let flows = got["flows"].as_array().unwrap();
    let on_receiver = flows
        .iter()
        .filter(|f| {
            let (s, e) = (&f[0], &f[1]);
            s[0] == "channel-feeder"
                && s[1] == "instant"
                && e[0].as_str().is_some_and(|t| t.starts_with("receiver ("))
                && e[1] == "begin"
                && e[2].as_str().is_some_and(|n| n.starts_with("poll"))
                && s[3].as_u64() <= e[3].as_u64()
        })
        .count();
    assert!(
        on_receiver >= 15,
        "{on_receiver} flows from channel-feeder end on a receiver poll: {flows:?}"
    );
    let sleeper_sites = got["sites"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(track, _)| track.starts_with("sleeper ("))
        .flat_map(|(_, v)| v.as_array().unwrap())
        .filter(|s| s.as_str().is_some_and(|s| s.contains("sleep")))
        .count();
    assert!(
        sleeper_sites >= 15,
        "{sleeper_sites} sleeper idle slices at the sleep: {}",
        got["sites"]
    );
}
