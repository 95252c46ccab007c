//! Where futures yield and who woke them, end to end: the `yields` program's three tasks each
//! wait their own way (a timer, a socket, a channel fed by a std thread), the tokio demo's
//! connection tasks wait at known awaits, and tokio-blocking's handlers, which sleep in their
//! polls, make the other tasks wait for a worker.

use std::path::Path;

use iotrace_tests::*;
use serde_json::Value;

/// One loaded demo at a time: the delay rules assume the two cores are not shared with
/// another scenario's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const ROUNDS: u64 = 30;
/// The gap the program waits between rounds.
const GAP_NS: u64 = 10_000_000;

fn task<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {:#}", report["tasks"]))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn three_tasks_name_their_awaits_and_their_wakers() {
    if !perf_available("three_tasks_name_their_awaits_and_their_wakers") {
        return;
    }
    let dir = temp_dir("yields-three");
    let trace = dir.join("y.data");
    let bin = demo_binary("yields");
    let rounds = ROUNDS.to_string();
    let out = record(&trace, &[], &[bin.to_str().unwrap(), &rounds]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report_json(&trace);
    for (name, awaited, woken_by) in [
        ("sleeper", "sleep", "timer"),
        ("reader", "read", "io"),
        ("receiver", "recv", "thread"),
    ] {
        let t = task(&r, name);
        let top = &t["yield_sites"][0];
        let site = top["site"].as_str().unwrap();
        assert!(
            site.contains(awaited) && site.contains("yields.rs:"),
            "{name}'s top yield site is {site}: {:#}",
            t["yield_sites"]
        );
        // Every round's wait is one idle stretch there (plus the wait before the first).
        assert!(n(&top["count"]) >= ROUNDS, "{name}: {top:#}");
        let w = &t["woken_by"];
        assert!(
            n(&w[woken_by]) >= ROUNDS - 1,
            "{name} woken by {w} (expected {woken_by} for each of {ROUNDS} rounds)"
        );
        let others: u64 = ["io", "timer", "task", "thread", "unknown"]
            .iter()
            .filter(|k| **k != woken_by)
            .map(|k| n(&w[*k]))
            .sum();
        assert!(others <= 2, "{name} woken by {w}");
        // The program makes it wait ROUNDS gaps; all of its life but its polls is idle.
        let life = n(&t["closed_ns"]) - n(&t["spawned_ns"]);
        let idle = n(&t["idle_ns"]);
        assert!(life >= ROUNDS * GAP_NS, "{name} lived {life} ns");
        let not_polling = life - n(&t["busy_ns"]);
        assert!(
            idle * 10 >= not_polling * 9,
            "{name}: idle {idle} of {not_polling} ns not polling"
        );
        assert_eq!(n(&t["yield_unknown_ns"]), 0, "{name}: {t:#}");
    }
    let feeder = task(&r, "receiver")["wakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "thread")
        .cloned()
        .unwrap_or_default();
    assert_eq!(feeder["name"], "channel-feeder", "{feeder:#}");
    assert!(n(&feeder["count"]) >= ROUNDS - 1, "{feeder:#}");
    // The text report says the same.
    let text = run_iotrace(&["report", trace.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("where tasks wait"), "{text}");
    assert!(
        text.contains("tokio::time::sleep::Sleep in yields::sleeper"),
        "{text}"
    );
}

/// Records `strategy` under a bounded load (each request waits 10 ms) and reads the report.
fn loaded(strategy: &str, dir: &Path) -> Value {
    let trace = dir.join(format!("{strategy}.data"));
    let load = ["-c", "8", "-n", "400"];
    loaded_demo_report(strategy, &trace, "io_ms=10&cpu_us=50", &load)
}

/// Tasks spawned for connections (not the accept loop, not the runtime's own).
fn connection_tasks(r: &Value) -> Vec<&Value> {
    r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "task" && n(&t["polls"]) > 2)
        .filter(|t| {
            t["yield_sites"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| !s["site"].as_str().unwrap_or("").contains("accept"))
        })
        .collect()
}

#[test]
fn the_tokio_demo_knows_where_its_connections_wait_and_is_not_delayed() {
    if !perf_available("the_tokio_demo_knows_where_its_connections_wait_and_is_not_delayed") {
        return;
    }
    let _serial = serial();
    let r = loaded("tokio", &temp_dir("yields-tokio"));
    let conns = connection_tasks(&r);
    assert!(conns.len() >= 8, "{:#}", r["tasks"]);
    let idle: u64 = conns.iter().map(|t| n(&t["idle_ns"])).sum();
    let unknown: u64 = conns.iter().map(|t| n(&t["yield_unknown_ns"])).sum();
    assert!(idle > 0);
    assert!(
        unknown * 20 <= idle,
        "{unknown} of {idle} ns of connection-task idle time has no known yield site"
    );
    // The handler's 10 ms sleep is where they wait most.
    let at_sleep: u64 = conns
        .iter()
        .flat_map(|t| t["yield_sites"].as_array().unwrap())
        .filter(|s| s["site"].as_str().unwrap_or("").contains("sleep"))
        .map(|s| n(&s["idle_ns"]))
        .sum();
    assert!(at_sleep * 2 >= idle, "{at_sleep} of {idle} ns at the sleep");
    let delays: Vec<&Value> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "scheduling_delay")
        .collect();
    assert!(delays.is_empty(), "{delays:#?}");
}

#[test]
fn tokio_blocking_delays_are_blamed_on_the_blocking_handlers() {
    if !perf_available("tokio_blocking_delays_are_blamed_on_the_blocking_handlers") {
        return;
    }
    let _serial = serial();
    let r = loaded("tokio-blocking", &temp_dir("yields-tokio-blocking"));
    let warnings = r["warnings"].as_array().unwrap();
    // The handlers that block: their spawn place.
    let blocker = warnings
        .iter()
        .find(|w| w["kind"] == "blocked_in_poll")
        .and_then(|w| w["location"].as_str())
        .unwrap_or_else(|| panic!("no blocked_in_poll warning: {warnings:#?}"));
    let delays: Vec<&Value> = warnings
        .iter()
        .filter(|w| w["kind"] == "scheduling_delay")
        .collect();
    assert!(!delays.is_empty(), "no scheduling_delay: {warnings:#?}");
    for d in &delays {
        let top = &d["delay"]["held_by"][0];
        assert!(
            top["task"].as_str().unwrap().contains(blocker),
            "held by {top:#}, not the blocking handlers at {blocker}"
        );
        // They held the workers blocked in the kernel for most of the delay.
        assert!(n(&top["blocked_ns"]) * 2 >= n(&top["held_ns"]), "{d:#}");
        assert!(n(&d["delay"]["p99_ns"]) >= 1_000_000, "{d:#}");
        assert!(d["message"].as_str().unwrap().contains(blocker), "{d:#}");
    }
}
