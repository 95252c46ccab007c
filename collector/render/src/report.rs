//! Renders a [`Summary`] for people (aligned text, like `perf stat`) and for scripts (JSON,
//! the schema in `collector/REPORT.md`).

use std::fmt::Write;

use iotrace_analysis::summary::{ExitJson, Summary};

/// The `--json` form.
pub fn json(summary: &Summary) -> String {
    let value = serde_json::to_value(summary).map(|mut v| {
        // Each warning's line of text is the renderer's, added after its fields.
        if let Some(list) = v.get_mut("warnings").and_then(|w| w.as_array_mut()) {
            for (json, w) in list.iter_mut().zip(&summary.warnings) {
                if let Some(obj) = json.as_object_mut() {
                    obj.insert("message".into(), crate::warning::message(w).into());
                }
            }
        }
        if let Some(list) = v.get_mut("diagnoses").and_then(|w| w.as_array_mut()) {
            for (json, d) in list.iter_mut().zip(&summary.diagnoses) {
                if let Some(obj) = json.as_object_mut() {
                    obj.insert("message".into(), crate::diagnosis::message(d).into());
                }
            }
        }
        v
    });
    value
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

/// How the child ended, in words.
pub fn exit_words(summary: &Summary) -> String {
    if let Some(a) = &summary.attached {
        return attached_words(a, summary.duration_ns);
    }
    let mut words = match summary.exit {
        Some(ExitJson::Code(0)) => "exited normally (code 0)".to_owned(),
        Some(ExitJson::Code(c)) => format!("exited with code {c}"),
        Some(ExitJson::Signal(s)) => format!("killed by {}", signal_name(s)),
        None => "unknown: the recording did not finish".to_owned(),
    };
    if let Some(sig) = summary.forwarded_signal {
        let _ = write!(words, "; iotrace forwarded {} to it", signal_name(sig));
    }
    words
}

/// What an attached recording saw: "attached to pid N for 3.00 s; detached, left running".
fn attached_words(a: &iotrace_analysis::summary::Attached, duration_ns: u64) -> String {
    let pids: Vec<String> = a.pids.iter().map(u32::to_string).collect();
    let who = if pids.len() == 1 {
        format!("pid {}", pids[0])
    } else {
        format!("pids {}", pids.join(","))
    };
    let mut words = format!(
        "attached to {who} for {:.2} s ({} threads then)",
        duration_ns as f64 / 1e9,
        a.threads
    );
    if !a.detached {
        words.push_str("; the recording did not finish");
    } else if a.exited.len() == a.pids.len() {
        words.push_str("; it exited during the recording (exit status not known to iotrace)");
    } else if a.exited.is_empty() {
        words.push_str("; detached, left running");
    } else {
        let gone: Vec<String> = a.exited.iter().map(u32::to_string).collect();
        words.push_str(&format!(
            "; detached, left running (pid {} exited during it)",
            gone.join(",")
        ));
    }
    words
}

/// Nanoseconds in a short human unit.
pub fn duration(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Bytes in a short human unit.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The text report: header, totals, threads, thread states, tasks and warnings, top syscalls.
pub fn text(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, " iotrace report for '{}' (pid {})", s.command, s.pid);
    let _ = writeln!(out);
    let ended = if s.attached.is_some() {
        "window:"
    } else {
        "ended: "
    };
    let _ = writeln!(out, "   {ended}    {}", exit_words(s));
    let _ = writeln!(out, "   duration:  {}", duration(s.duration_ns));
    let caps = &s.capabilities;
    let measured = if caps.perf {
        let mut m = vec!["perf switch records", "/proc"];
        if caps.syscalls {
            m.push("exact syscall counts");
        }
        m.join(", ")
    } else {
        "/proc and wait4 only".to_owned()
    };
    let _ = writeln!(out, "   measured:  {measured}");
    for missing in &caps.missing {
        let _ = writeln!(out, "   missing:   {missing}");
    }
    if let Some(t) = &s.truncated {
        let _ = writeln!(out, "   WARNING:   {t}");
    }
    if s.lost_events > 0 {
        let _ = writeln!(out, "   WARNING:   {} events were lost", s.lost_events);
    }
    if !s.still_running.is_empty() {
        let list: Vec<String> = s
            .still_running
            .iter()
            .map(|p| format!("pid {} ({})", p.pid, p.name))
            .collect();
        let _ = writeln!(
            out,
            "   WARNING:   {} process(es) the command started were still running when it exited, and were not recorded after: {}",
            list.len(),
            list.join(", ")
        );
    }
    let _ = writeln!(out);
    out.push_str(&crate::diagnosis::section(s));
    let row = |out: &mut String, value: String, what: &str| {
        let _ = writeln!(out, "{value:>18}      {what}");
    };
    row(
        &mut out,
        format!("{:.3}", s.on_cpu_ns as f64 / 1e6),
        "msec on CPU",
    );
    row(
        &mut out,
        (s.context_switches.voluntary + s.context_switches.involuntary).to_string(),
        &format!(
            "context switches ({} voluntary, {} involuntary; from {})",
            s.context_switches.voluntary, s.context_switches.involuntary, s.context_switches.source
        ),
    );
    if let Some(m) = s.cpu_migrations {
        row(&mut out, m.to_string(), "cpu migrations");
    }
    if let Some(p) = s.page_faults {
        row(&mut out, p.to_string(), "page faults");
    }
    if caps.syscalls {
        row(&mut out, s.syscalls_total.to_string(), "syscalls");
    }
    row(&mut out, bytes(s.peak_rss_bytes), "peak RSS");
    if let Some(i) = &s.instrumentation {
        row(
            &mut out,
            format!("{:.3}", i.on_cpu_ns as f64 / 1e6),
            &format!(
                "msec on CPU in iotrace's layer thread ({} syscalls, {} switches; included above)",
                i.syscalls_total,
                i.voluntary + i.involuntary
            ),
        );
    }
    row(&mut out, s.peak_threads.to_string(), "peak threads");
    let _ = writeln!(out);

    if !s.threads.is_empty() {
        let _ = writeln!(
            out,
            " {:>8} {:>8}  {:<16} {:>9} {:>9} {:>12} {:>6} {:>8} {:>9}",
            "pid", "tid", "name", "vol cs", "invol cs", "on-CPU", "migr", "faults", "syscalls"
        );
        const MAX_ROWS: usize = 40;
        for t in s.threads.iter().take(MAX_ROWS) {
            let _ = writeln!(
                out,
                " {:>8} {:>8}  {:<16} {:>9} {:>9} {:>12} {:>6} {:>8} {:>9}",
                t.pid,
                t.tid,
                head(&t.name, 16),
                t.voluntary,
                t.involuntary,
                duration(t.on_cpu_ns),
                t.migrations,
                t.page_faults,
                t.syscalls
            );
        }
        if s.threads.len() > MAX_ROWS {
            let _ = writeln!(
                out,
                " … and {} more threads (all of them are in --json)",
                s.threads.len() - MAX_ROWS
            );
        }
        let _ = writeln!(out);
    }
    if let Some(sp) = &s.spans {
        let _ = writeln!(
            out,
            " spans: {} events from {} process(es), {} dropped, {} spans ({} closed), {} requests",
            sp.events, sp.clients, sp.dropped, sp.spans_created, sp.spans_closed, sp.requests
        );
        if sp.bad_clients > 0 {
            let _ = writeln!(
                out,
                " WARNING: {} span clients broke the protocol and were dropped",
                sp.bad_clients
            );
        }
        if !sp.top.is_empty() {
            let _ = writeln!(
                out,
                " {:<28} {:>9} {:>10} {:>12} {:>12}",
                "top spans by busy time", "count", "enters", "busy", "lifetime"
            );
            for t in &sp.top {
                let _ = writeln!(
                    out,
                    " {:<28} {:>9} {:>10} {:>12} {:>12}",
                    head(&t.name, 28),
                    t.count,
                    t.enters,
                    duration(t.busy_ns),
                    duration(t.lifetime_ns)
                );
            }
        }
        let _ = writeln!(out);
    }
    out.push_str(&crate::tasks_text::thread_states(s));
    out.push_str(&crate::tasks_text::tasks(s));
    if !s.syscalls.is_empty() {
        let _ = writeln!(out, " top syscalls:");
        for c in s.syscalls.iter().take(10) {
            let _ = writeln!(out, " {:>12}  {}", c.count, c.name);
        }
        let _ = writeln!(out);
    }
    out
}

/// Keeps the start of `s`, at most `n` characters (`…` marks the cut).
pub(crate) fn head(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}
