//! Thread states, task states and blocked-worker warnings end to end: each demo server runs
//! under `iotrace record` with a bounded load, and the report must show what its code makes
//! certain (a handler that sleeps in its poll blocks its worker for the whole sleep; an epoll
//! loop blocks only in epoll_wait). Then the timeline page in headless Chromium (with the
//! `yields` program's yield sites and wake arrows) and the Perfetto export.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use iotrace_tests::*;
use serde_json::Value;

/// One scenario at a time: the blocked-time bounds assume the two cores are not shared with
/// another scenario's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The load every strategy gets: bounded requests, so the trace holds a known number.
const REQUESTS: u64 = 300;
const CONNECTIONS: &str = "8";
const IO_MS: u64 = 10;

/// A demo recorded under a bounded load, stopped, and reported.
struct Scenario {
    trace: PathBuf,
    report: Value,
    /// Requests the load generator completed.
    requests: u64,
}

/// Records `strategy` under [`REQUESTS`] requests of `io_ms` waiting each, then SIGTERMs
/// iotrace (which forwards it to the demo) and reads the report.
fn scenario(strategy: &str, dir: &Path) -> Scenario {
    let trace = dir.join(format!("{strategy}.data"));
    let (mut child, addr) = record_demo(strategy, &trace);
    let url = format!("http://{addr}/work?io_ms={IO_MS}&cpu_us=50");
    let n = REQUESTS.to_string();
    let out = run_iotrace(&["load", &url, "-c", CONNECTIONS, "-n", &n, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load: Value = serde_json::from_slice(&out.stdout).expect("load --json");
    assert_eq!(load["errors"], 0, "{load}");
    // SAFETY: signalling our own child; iotrace forwards SIGTERM to the demo.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for iotrace record");
    assert!(status.success(), "{strategy}: record ended with {status}");
    let report = report_json(&trace);
    assert_eq!(report["lost_events"], 0, "{strategy}: events were lost");
    Scenario {
        trace,
        report,
        requests: load["requests"].as_u64().unwrap(),
    }
}

/// Blocked time of a thread by syscall name, in ns (and switch-outs).
fn blocked_by(thread: &Value) -> BTreeMap<String, (u64, u64)> {
    thread["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["syscall"].as_str().unwrap().to_owned(),
                (b["ns"].as_u64().unwrap(), b["count"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The demo's serving thread: its main thread (epoll, green).
fn main_thread(report: &Value) -> &Value {
    let pid = report["pid"].as_u64().unwrap();
    report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"].as_u64() == Some(pid))
        .expect("the main thread is in the report")
}

/// The thread waited only in epoll_wait while serving. Other switch-outs must be rare and
/// short: the iotrace layer handing its last records to its writer thread at exit (a futex),
/// and, on a busy machine, a non-blocking socket call sleeping a moment on a kernel lock.
fn assert_blocks_only_in_epoll_wait(thread: &Value) {
    let mut by = blocked_by(thread);
    // Before serving: the kernel loading the program in execve (its pages read from disk on a
    // cold cache, as in CI's fresh clone: 4.3 ms once), named since switch-outs are named
    // from their kernel stacks.
    by.remove("execve");
    let total: u64 = by.values().map(|v| v.0).sum();
    let (epoll_ns, epoll_waits) = by.get("epoll_wait").copied().unwrap_or((0, 0));
    let others: u64 = by
        .iter()
        .filter(|(k, _)| *k != "epoll_wait")
        .map(|(_, v)| v.1)
        .sum();
    assert!(
        epoll_ns * 100 >= total * 99 && others <= (epoll_waits / 100).max(2),
        "blocked in {by:?}"
    );
}

fn non_blocking_tasks(report: &Value) -> Vec<&Value> {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] != "blocking")
        .collect()
}

#[test]
fn tokio_blocking_handler_is_warned_and_blocks_for_every_sleep() {
    if !perf_available("tokio_blocking_handler_is_warned_and_blocks_for_every_sleep") {
        return;
    }
    let _serial = serial();
    let s = scenario("tokio-blocking", &temp_dir("tl-tokio-blocking"));
    let r = &s.report;
    assert_eq!(r["spans"]["dropped"], 0);
    // Each request's handler sleeps IO_MS inside one poll of its connection's task.
    let requests = r["spans"]["requests"].as_u64().unwrap();
    assert!(requests >= s.requests, "{requests} < {}", s.requests);
    // The handlers block their workers; the other tasks wait for a worker meanwhile (those
    // get `scheduling_delay` warnings, looked at in yields.rs).
    let all = r["warnings"].as_array().unwrap();
    assert!(
        all.iter()
            .all(|w| w["kind"] == "blocked_in_poll" || w["kind"] == "scheduling_delay"),
        "{all:#?}"
    );
    let warnings: Vec<&Value> = all
        .iter()
        .filter(|w| w["kind"] == "blocked_in_poll")
        .collect();
    assert!(!warnings.is_empty(), "no warning: {:#}", r["tasks"]);
    for w in &warnings {
        let loc = w["location"].as_str().unwrap_or("");
        assert!(loc.contains("strategy/tokio.rs"), "{w}");
        assert!(w["syscall"].as_str().unwrap().contains("nanosleep"), "{w}");
        assert!(w["polls"].as_u64().unwrap() >= 1);
        assert!(w["message"].as_str().unwrap().contains("blocked worker"));
    }
    let tasks = non_blocking_tasks(r);
    assert!(
        tasks.iter().all(|t| t["unmeasured_polls"] == 0),
        "{tasks:#?}"
    );
    let blocked: u64 = tasks
        .iter()
        .map(|t| t["blocked_in_poll_ns"].as_u64().unwrap())
        .sum();
    let expected = requests * IO_MS * 1_000_000;
    let ratio = blocked as f64 / expected as f64;
    eprintln!("tokio-blocking: {requests} sleeps of {IO_MS} ms; blocked in polls {blocked} ns = {ratio:.3}×");
    assert!(
        (1.0..=1.3).contains(&ratio),
        "blocked in polls {blocked} ns for {requests} sleeps of {IO_MS} ms: ratio {ratio:.3}"
    );
    // Every task that blocked is warned about, and the warnings add up to the same time.
    let warned: u64 = warnings
        .iter()
        .map(|w| w["blocked_ns"].as_u64().unwrap())
        .sum();
    assert_eq!(warned, blocked);
    let text = run_iotrace(&["report", s.trace.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("WARNING:") && text.contains("in clock_nanosleep"),
        "{text}"
    );
    // The message sends the reader to the line that sleeps: std::thread::sleep (found through
    // glibc's frameless clock_nanosleep by the recorder's CFI unwinding), then the demo's own
    // source line, from DWARF.
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../instrumented-demos/src/strategy/tokio.rs"),
    )
    .unwrap();
    let line = 1 + src
        .lines()
        .position(|l| l.contains("WaitMode::Blocking => std::thread::sleep"))
        .expect("the demo's blocking sleep");
    let at = format!("instrumented-demos/src/strategy/tokio.rs:{line}");
    for w in warnings {
        let m = w["message"].as_str().unwrap();
        assert!(m.contains("std::thread") && m.contains("sleep"), "{m}");
        assert!(m.contains(&at), "the message does not name {at}: {m}");
        // The handler that called the sleep, by its path.
        assert!(
            m.contains("strategy::tokio::handle"),
            "the message does not name the handler: {m}"
        );
    }
}

#[test]
fn tokio_under_the_same_load_is_not_warned_about() {
    if !perf_available("tokio_under_the_same_load_is_not_warned_about") {
        return;
    }
    let _serial = serial();
    let s = scenario("tokio", &temp_dir("tl-tokio"));
    let r = &s.report;
    assert_eq!(
        r["warnings"].as_array().unwrap().len(),
        0,
        "{:#}",
        r["warnings"]
    );
    let tasks = non_blocking_tasks(r);
    let conns: usize = CONNECTIONS.parse().unwrap();
    assert!(tasks.len() > conns, "{tasks:#?}");
    let polls: u64 = tasks.iter().map(|t| t["polls"].as_u64().unwrap()).sum();
    assert!(
        polls >= s.requests,
        "{polls} polls for {} requests",
        s.requests
    );
    // The handler waits with tokio::time::sleep: its tasks are woken, not blocked.
    let wakes: u64 = tasks.iter().map(|t| t["wakes"].as_u64().unwrap()).sum();
    assert!(wakes >= s.requests, "{wakes} wakes");
    let idle: u64 = tasks.iter().map(|t| t["idle_ns"].as_u64().unwrap()).sum();
    assert!(idle >= s.requests * IO_MS * 1_000_000, "idle {idle}");
}

#[test]
fn threads_block_in_recv_and_in_nanosleep() {
    if !perf_available("threads_block_in_recv_and_in_nanosleep") {
        return;
    }
    let _serial = serial();
    let s = scenario("threads", &temp_dir("tl-threads"));
    let conns: Vec<&Value> = s.report["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "conn")
        .collect();
    assert_eq!(
        conns.len(),
        CONNECTIONS.parse::<usize>().unwrap(),
        "{:#}",
        s.report["threads"]
    );
    let mut slept = 0;
    for t in conns {
        let by = blocked_by(t);
        let recv = ["read", "recvfrom", "recv", "recvmsg"]
            .iter()
            .any(|k| by.contains_key(*k));
        let nap = by.get("clock_nanosleep").or(by.get("nanosleep"));
        assert!(
            recv && nap.is_some(),
            "conn thread {} blocked in {by:?}",
            t["tid"]
        );
        slept += nap.map_or(0, |v| v.1);
    }
    assert!(
        slept >= s.requests,
        "{slept} sleeps for {} requests",
        s.requests
    );
}

#[test]
fn epoll_loop_blocks_only_in_epoll_wait() {
    if !perf_available("epoll_loop_blocks_only_in_epoll_wait") {
        return;
    }
    let _serial = serial();
    let s = scenario("epoll", &temp_dir("tl-epoll"));
    assert_blocks_only_in_epoll_wait(main_thread(&s.report));
}

#[test]
fn green_threads_are_idle_between_slices_and_the_scheduler_waits_in_epoll() {
    if !perf_available("green_threads_are_idle_between_slices_and_the_scheduler_waits_in_epoll") {
        return;
    }
    let _serial = serial();
    let s = scenario("green", &temp_dir("tl-green"));
    let r = &s.report;
    assert_blocks_only_in_epoll_wait(main_thread(r));
    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        CONNECTIONS.parse::<usize>().unwrap(),
        "{tasks:#?}"
    );
    for t in tasks {
        assert!(t["name"].as_str().unwrap().starts_with("conn "), "{t}");
        // A coroutine runs in slices and between them waits, suspended, for its socket or
        // timer: no wakes (the scheduler has no wakers), idle time well above running time.
        let polls = t["polls"].as_u64().unwrap();
        assert!(polls >= 2, "{t}");
        assert_eq!(t["wakes"], 0);
        assert!(
            t["idle_ns"].as_u64().unwrap() > t["busy_ns"].as_u64().unwrap(),
            "{t}"
        );
        assert_eq!(
            t["blocked_polls"], 0,
            "a coroutine blocked the scheduler: {t}"
        );
    }
    assert!(r["warnings"].as_array().unwrap().is_empty());
}

/// `data-NAME="VALUE"` of the page's `#tracks` element.
fn track_attr(dom: &str, name: &str) -> u64 {
    let at = dom.find("id=\"tracks\"").expect("the #tracks element");
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let key = format!("data-{name}=\"");
    let start = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in {tag}"))
        + key.len();
    tag[start..start + tag[start..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn timeline_opens_in_headless_chromium_with_a_track_per_thread_and_task() {
    if !perf_available("timeline_opens_in_headless_chromium_with_a_track_per_thread_and_task") {
        return;
    }
    let Some(browser) =
        chromium("timeline_opens_in_headless_chromium_with_a_track_per_thread_and_task")
    else {
        return;
    };
    let _serial = serial();
    let dir = temp_dir("tl-chromium");
    let s = scenario("tokio-blocking", &dir);
    let page = dir.join("timeline.html");
    let out = run_iotrace(&[
        "timeline",
        s.trace.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for remote in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(
            !html.contains(remote),
            "the page must not load anything ({remote})"
        );
    }
    let (dom, log) = open_in_chromium(&browser, &page, &dir.join("profile"));
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console: {errors:#?}");
    assert_eq!(track_attr(&dom, "errors"), 0, "script errors");
    assert_eq!(track_attr(&dom, "rendered"), 1, "the canvas was not drawn");
    let threads = s.report["threads"].as_array().unwrap().len() as u64;
    let tasks = s.report["tasks"].as_array().unwrap().len() as u64;
    assert!(
        threads >= 3 && tasks >= 3,
        "{threads} threads, {tasks} tasks"
    );
    assert_eq!(track_attr(&dom, "threads"), threads);
    assert_eq!(track_attr(&dom, "tasks"), tasks);
    assert_eq!(track_attr(&dom, "count"), threads + tasks);
    assert!(track_attr(&dom, "intervals") > s.requests);

    // The diagnoses, and one more on the first task's track in the middle of the recording
    // (its text must stay text): listed and marked without errors.
    let data = page_data(&html);
    let diagnoses = data["diagnoses"].as_array().expect("diagnoses").clone();
    let marks: usize = diagnoses
        .iter()
        .filter(|d| d["track"].as_i64() >= Some(0))
        .map(|d| d["at_ns"].as_array().unwrap().len())
        .sum();
    let at = (data["t0"].as_u64().unwrap() + data["t1"].as_u64().unwrap()) / 2;
    let extra = format!(
        r#"{{"kind":"long_poll","task":"t","task_id":1,"pid":1,"tid":0,"line":null,"message":"\u003cb\u003einjected","at_ns":[{at}],"count":1,"cost_ns":1,"track":{threads}}}"#
    );
    let sep = if diagnoses.is_empty() { "" } else { "," };
    let injected = html.replacen(
        "\"diagnoses\":[",
        &format!("\"diagnoses\":[{extra}{sep}"),
        1,
    );
    let page = dir.join("diagnosed.html");
    std::fs::write(&page, injected).unwrap();
    let (dom, log) = open_in_chromium(&browser, &page, &dir.join("profile"));
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console: {errors:#?}");
    assert_eq!(track_attr(&dom, "errors"), 0, "script errors");
    assert_eq!(track_attr(&dom, "rendered"), 1, "the canvas was not drawn");
    assert_eq!(track_attr(&dom, "diagnoses"), diagnoses.len() as u64 + 1);
    assert_eq!(track_attr(&dom, "marks"), marks as u64 + 1);
    assert!(
        dom.contains("&lt;b&gt;injected"),
        "the message is text in the list"
    );
}

/// The `yields` program recorded for 20 rounds: `sleeper` waits on a timer, `reader` on a socket,
/// `receiver` on a channel that the std thread `channel-feeder` sends to every 10 ms.
fn record_yields(dir: &Path) -> PathBuf {
    let trace = dir.join("yields.data");
    let bin = demo_binary("yields");
    let out = record(&trace, &[], &[bin.to_str().unwrap(), "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    trace
}

/// `iotrace timeline TRACE -o PAGE`: the page and its data.
fn timeline_page(trace: &Path, page: &Path) -> (String, Value) {
    let out = run_iotrace(&[
        "timeline",
        trace.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(page).unwrap();
    let data = page_data(&html);
    (html, data)
}

/// The data of a timeline page: the JSON in its `#data` element.
fn page_data(html: &str) -> Value {
    let open = "<script id=\"data\" type=\"application/json\">";
    let at = html.find(open).expect("the #data element") + open.len();
    let end = at + html[at..].find("</script>").expect("the end of #data");
    serde_json::from_str(&html[at..end]).expect("the page's data is JSON")
}

/// A page track's stretches: (start, end, state, x), times in ns since the recording started.
fn page_stretches(track: &Value) -> Vec<(u64, u64, u64, i64)> {
    let iv = track["iv"].as_array().unwrap();
    let mut start = 0;
    iv.chunks(4)
        .map(|c| {
            start += c[0].as_u64().unwrap();
            (
                start,
                start + c[1].as_u64().unwrap(),
                c[2].as_u64().unwrap(),
                c[3].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn timeline_names_where_tasks_yield_and_draws_each_wake_from_its_waker() {
    let test = "timeline_names_where_tasks_yield_and_draws_each_wake_from_its_waker";
    if !perf_available(test) {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("tl-yields");
    let trace = record_yields(&dir);
    let (_, d) = timeline_page(&trace, &dir.join("timeline.html"));
    let tracks = d["tracks"].as_array().unwrap();
    let track = |kind: &str, label: &dyn Fn(&str) -> bool| {
        tracks
            .iter()
            .position(|t| t["kind"] == kind && label(t["label"].as_str().unwrap()))
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} track in {:?}",
                    tracks.iter().map(|t| &t["label"]).collect::<Vec<_>>()
                )
            })
    };
    let sleeper = track("task", &|l| l == "sleeper");
    let receiver = track("task", &|l| l == "receiver");
    let feeder = track("thread", &|l| l.starts_with("channel-feeder "));
    // Each idle stretch points at its yield site, named: the sleep's and the recv's await.
    let site = |x: i64| -> Option<&str> {
        let i = d["yields"][usize::try_from(x).ok()?].as_i64()?;
        d["sites"][usize::try_from(i).ok()?].as_str()
    };
    for (task, awaited) in [(sleeper, "sleep"), (receiver, "recv")] {
        let idle: Vec<(u64, u64, u64, i64)> = page_stretches(&tracks[task])
            .into_iter()
            .filter(|iv| iv.2 == 6)
            .collect();
        let named = idle
            .iter()
            .filter(|iv| {
                site(iv.3).is_some_and(|s| s.contains(awaited) && s.contains("yields.rs:"))
            })
            .count();
        assert!(
            named >= 15,
            "{named} of {} idle stretches of {} name a site with {awaited}: {:?}",
            idle.len(),
            tracks[task]["label"],
            idle.iter().map(|iv| site(iv.3)).collect::<Vec<_>>()
        );
    }
    // Wakes: from the feeder thread's track to the receiver's, as a thread outside the runtime.
    let wakes: Vec<&[Value]> = d["wakes"].as_array().unwrap().chunks(5).collect();
    let fed = wakes
        .iter()
        .filter(|w| w[2] == feeder && w[3] == receiver && w[4] == 2)
        .count();
    assert!(
        fed >= 15,
        "{fed} wakes from channel-feeder to receiver in {:?}",
        wakes
    );
    // The sleeper's come from the runtime (its timer), never from the feeder.
    assert!(wakes.iter().all(|w| !(w[2] == feeder && w[3] == sleeper)));
    assert_eq!(d["wakes_left_out"], 0);

    // The page draws them: every wake in view with `#wakes=all`.
    let Some(browser) = chromium(test) else {
        return;
    };
    // The fragment rides on the file URL that the helper makes of the path.
    let (dom, log) = open_in_chromium(
        &browser,
        &dir.join("timeline.html#wakes=all"),
        &dir.join("profile"),
    );
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console: {errors:#?}");
    assert_eq!(track_attr(&dom, "errors"), 0, "script errors");
    assert_eq!(track_attr(&dom, "rendered"), 1, "the canvas was not drawn");
    assert_eq!(track_attr(&dom, "wakes"), wakes.len() as u64);
    let arrows = track_attr(&dom, "arrows");
    assert!(
        arrows >= fed as u64 && arrows <= wakes.len() as u64,
        "{arrows} arrows drawn of {} wakes",
        wakes.len()
    );
}

/// A track of the Chrome trace event format: thread slices by (pid, tid), async slices by
/// (pid, name, id), counters by (pid, name); the diagnoses' instants by thread, apart from
/// its slices (they fall inside them).
fn track_of(e: &Value) -> String {
    match e["ph"].as_str().unwrap() {
        "X" => format!("X {} {}", e["pid"], e["tid"]),
        "i" => format!("I {} {}", e["pid"], e["tid"]),
        "b" | "e" => format!("A {} {} {}", e["pid"], e["name"], e["id2"]),
        "C" => format!("C {} {}", e["pid"], e["name"]),
        _ => String::new(),
    }
}

#[test]
fn perfetto_export_parses_and_every_track_runs_forward() {
    if !perf_available("perfetto_export_parses_and_every_track_runs_forward") {
        return;
    }
    let _serial = serial();
    let dir = temp_dir("tl-perfetto");
    let s = scenario("tokio-blocking", &dir);
    let json = dir.join("trace.json");
    let out = run_iotrace(&[
        "export",
        s.trace.to_str().unwrap(),
        "--format",
        "perfetto",
        "-o",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("valid JSON");
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    // Times are µs with three decimals: compare them as integer nanoseconds.
    let ns = |v: &Value| (v.as_f64().expect("a number") * 1000.0).round() as i64;
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut open: HashMap<String, i64> = HashMap::new();
    let (mut slices, mut tasks, mut counters) = (0, 0, 0);
    // Wake flows by id: where each starts and finishes.
    let mut flows: HashMap<u64, (Option<i64>, Option<i64>)> = HashMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap();
        if ph == "M" {
            continue;
        }
        if ph == "s" || ph == "f" {
            assert_eq!(e["cat"], "wake", "{e}");
            let id = e["id"].as_u64().expect("a flow's id");
            let ends = flows.entry(id).or_default();
            let end = if ph == "s" { &mut ends.0 } else { &mut ends.1 };
            assert!(end.replace(ns(&e["ts"])).is_none(), "two {ph} of flow {id}");
            if ph == "f" {
                assert_eq!(e["bp"], "e", "{e}");
            }
            continue;
        }
        let ts = ns(&e["ts"]);
        let track = track_of(e);
        let prev = last.insert(track.clone(), ts).unwrap_or(i64::MIN);
        assert!(ts >= prev, "{track}: {ts} after {prev}");
        match ph {
            "X" => {
                let dur = ns(&e["dur"]);
                assert!(dur > 0, "{e}");
                last.insert(track, ts + dur);
                slices += 1;
            }
            "b" => {
                assert!(open.insert(track, ts).is_none(), "nested begin: {e}");
                tasks += 1;
            }
            "e" => {
                let begin = open.remove(&track).expect("end without begin");
                assert!(ts > begin, "{e}");
            }
            "C" => counters += 1,
            // A diagnosis' moment: a thread-scoped instant named after its kind.
            "i" => {
                assert!(e["s"] == "t" && e["cat"] == "iotrace.diagnosis", "{e}");
                assert!(
                    e["args"]["message"].is_string() && e["args"]["task"].is_string(),
                    "{e}"
                );
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    assert!(open.is_empty(), "unfinished slices: {open:?}");
    assert!(slices > 0 && tasks as u64 > s.requests && counters > 0);
    // Every wake's flow starts, then finishes (the connections' tasks are woken by their
    // sockets).
    assert!(!flows.is_empty(), "no wake flows");
    for (id, ends) in &flows {
        match ends {
            (Some(s), Some(f)) => assert!(s <= f, "flow {id} finishes before it starts"),
            _ => panic!("flow {id} is half a pair: {ends:?}"),
        }
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names
        .iter()
        .any(|n| n.starts_with("blocked: clock_nanosleep")));
    // Every blocking sleep's slice carries its stack, named down to the handler's line.
    let sleeps: Vec<&Value> = events
        .iter()
        .filter(|e| e["name"] == "blocked: clock_nanosleep")
        .collect();
    let named = sleeps
        .iter()
        .filter(|e| {
            e["args"]["stack"].as_str().is_some_and(|st| {
                st.contains("std::thread") && st.contains("strategy::tokio::handle")
            })
        })
        .count();
    assert!(
        named as u64 >= s.requests && named * 10 >= sleeps.len() * 9,
        "{named} of {} clock_nanosleep slices name std::thread…sleep and the handler ({} requests): {:?}",
        sleeps.len(),
        s.requests,
        sleeps.first().map(|e| &e["args"])
    );
}

/// Decodes a `.pftrace` with Perfetto's own Python module (PyPI's `perfetto`) and prints, as
/// JSON: slices begun on thread and on task tracks, counter values, slices by name, the
/// blocked slices whose `stack` names the handler, and whether every track's slices begin
/// before they end, never nest and never go back in time.
const DECODE_PFTRACE: &str = r#"
import json, sys, collections
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
t = Trace()
t.ParseFromString(open(sys.argv[1], "rb").read())
kinds, names, arg_names, strings = {}, {}, {}, {}
begins = collections.Counter()
by_name = collections.Counter()
counters = handler = 0
ok = True
open_at, last = {}, {}
seen_first = False
for p in t.packet:
    assert p.trusted_packet_sequence_id == 1, p
    if not seen_first:
        assert p.sequence_flags & 1 and p.first_packet_on_sequence, p
        seen_first = True
    d = p.interned_data
    for e in d.event_names: names[e.iid] = e.name
    for e in d.debug_annotation_names: arg_names[e.iid] = e.name
    for e in d.debug_annotation_string_values: strings[e.iid] = e.str.decode()
    if p.HasField("track_descriptor"):
        td = p.track_descriptor
        kinds[td.uuid] = "thread" if td.HasField("thread") else "process" if td.HasField("process") else "counter" if td.HasField("counter") else "task"
        continue
    ev = p.track_event
    assert ev.track_uuid in kinds, ("event before its track", ev)
    kind = kinds[ev.track_uuid]
    ts = p.timestamp
    if ts < last.get(ev.track_uuid, 0): ok = False
    last[ev.track_uuid] = ts
    if ev.type == TrackEvent.TYPE_SLICE_BEGIN:
        if ev.track_uuid in open_at: ok = False
        open_at[ev.track_uuid] = ts
        begins[kind] += 1
        name = names[ev.name_iid]
        by_name[name] += 1
        args = {arg_names[a.name_iid]: strings.get(a.string_value_iid) if a.HasField("string_value_iid") else a.uint_value for a in ev.debug_annotations}
        if name == "blocked: clock_nanosleep" and "strategy::tokio::handle" in (args.get("stack") or "") and "std::thread" in args["stack"]:
            handler += 1
    elif ev.type == TrackEvent.TYPE_SLICE_END:
        if open_at.pop(ev.track_uuid, None) is None or ts < 0: ok = False
    elif ev.type == TrackEvent.TYPE_COUNTER:
        assert kind == "counter"
        counters += 1
print(json.dumps({"begins": begins, "counters": counters, "by_name": by_name, "handler": handler, "ok": ok and not open_at}))
"#;

#[test]
fn pftrace_export_decodes_with_perfettos_protos_and_holds_what_the_json_does() {
    let test = "pftrace_export_decodes_with_perfettos_protos_and_holds_what_the_json_does";
    if !perf_available(test) {
        return;
    }
    let Some(python) = python_venv(
        test,
        "perfetto-venv",
        &["perfetto", "protobuf"],
        "import perfetto.protos.perfetto.trace.perfetto_trace_pb2",
    ) else {
        return;
    };
    let _serial = serial();
    let dir = temp_dir("tl-pftrace");
    let s = scenario("tokio-blocking", &dir);
    let export = |format: &str, name: &str| {
        let out = dir.join(name);
        let o = run_iotrace(&[
            "export",
            s.trace.to_str().unwrap(),
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let json = export("perfetto", "trace.json");
    let pf = export("pftrace", "trace.pftrace");
    let out = Command::new(&python)
        .args(["-c", DECODE_PFTRACE])
        .arg(&pf)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the official protos do not decode it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("decoder output");
    assert_eq!(
        got["ok"], true,
        "a track's slices overlap or go back: {got}"
    );

    // The same slices as the JSON export: thread states (X), task stretches (b), counters (C).
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count() as u64;
    assert_eq!(got["begins"]["thread"].as_u64(), Some(count("X")), "{got}");
    assert_eq!(got["begins"]["task"].as_u64(), Some(count("b")), "{got}");
    assert_eq!(got["counters"].as_u64(), Some(count("C")), "{got}");
    let sleeps = events
        .iter()
        .filter(|e| e["name"] == "blocked: clock_nanosleep")
        .count() as u64;
    assert_eq!(
        got["by_name"]["blocked: clock_nanosleep"].as_u64(),
        Some(sleeps)
    );
    // Every request's blocking sleep, with its stack down to the handler.
    let handler = got["handler"].as_u64().unwrap();
    assert!(
        handler >= s.requests && handler * 10 >= sleeps * 9,
        "{handler} of {sleeps} sleeps name the handler ({} requests)",
        s.requests
    );
    let (pf_bytes, json_bytes) = (
        std::fs::metadata(&pf).unwrap().len(),
        std::fs::metadata(&json).unwrap().len(),
    );
    eprintln!(
        "pftrace {pf_bytes} bytes vs JSON {json_bytes} ({:.2}×)",
        json_bytes as f64 / pf_bytes as f64
    );
    assert!(
        pf_bytes * 2 < json_bytes,
        "{pf_bytes} vs {json_bytes} bytes"
    );
}

/// Who woke a blocked thread, on the page: two threads of a ping-pong wake each other 2,000
/// times, so most of `ping`'s blocked stretches name `pong` as their waker (a wake may come
/// before its sleep's switch-out and end none, hence "most").
#[test]
fn blocked_stretches_name_the_thread_that_woke_them() {
    const N: u64 = 2000;
    if !perf_available("blocked_stretches_name_the_thread_that_woke_them") {
        return;
    }
    let _one = serial();
    let dir = temp_dir("timeline-wakers");
    let trace = dir.join("t.data");
    let n = N.to_string();
    let out = record(&trace, &[], &[fixture().to_str().unwrap(), "pingpong", &n]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, data) = timeline_page(&trace, &dir.join("t.html"));
    let strings: Vec<&str> = data["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let reasons = data["reasons"].as_array().unwrap();
    let tracks = data["tracks"].as_array().unwrap();
    let ping = tracks
        .iter()
        .find(|t| t["kind"] == "thread" && t["label"].as_str().unwrap().starts_with("ping "))
        .unwrap_or_else(|| {
            panic!(
                "no ping track in {:?}",
                tracks.iter().map(|t| &t["label"]).collect::<Vec<_>>()
            )
        });
    let blocked: Vec<i64> = page_stretches(ping)
        .into_iter()
        .filter(|s| s.2 == u64::from(iotrace_collector::intervals::BLOCKED) && s.3 >= 0)
        .map(|s| s.3)
        .collect();
    let by_pong = blocked
        .iter()
        .filter(|&&x| {
            let waker = reasons[x as usize][2].as_i64().unwrap();
            waker >= 0 && strings[waker as usize].starts_with("thread pong (")
        })
        .count() as u64;
    assert!(
        2 * by_pong >= N,
        "{by_pong} of ping's {} blocked stretches name pong as their waker ({N} round trips)",
        blocked.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
