//! A warning as one line of text: what `iotrace report` prints, the `message` of the JSON
//! report's `warnings[]`, and the timeline's warning list.

use iotrace_analysis::tasks::Warning;

use crate::report::duration;

/// User frames shown in a warning's one-line message.
const MESSAGE_FRAMES: usize = 3;

/// The warning in one line: who blocked which worker, how often and how long, in which
/// syscall, and, when its stack is named, the first user frames of that stack; or, for a
/// `scheduling_delay`, how long the task waited for a worker and what held the workers.
pub fn message(w: &Warning) -> String {
    if let Some(d) = &w.delay {
        return delay_message(&w.task, w.location.as_deref(), d);
    }
    let mut message = format!("task `{}`", w.task);
    if let Some(loc) = &w.location {
        message.push_str(&format!(" ({loc})"));
    }
    message.push_str(&format!(
        " blocked worker `{}` (tid {}",
        w.worker, w.worker_tid
    ));
    let others = w.other_workers;
    if others > 0 {
        message.push_str(&format!(
            ", and {others} other worker{}",
            if others == 1 { "" } else { "s" }
        ));
    }
    message.push(')');
    message.push_str(&format!(
        " in {} of {} polls, {} each, in {}",
        w.polls,
        w.total_polls,
        duration(w.blocked_ns / w.polls.max(1)),
        w.syscall
    ));
    if !w.frames.is_empty() {
        let short = short_stack(&w.frames, &w.syscall);
        if !short.is_empty() {
            message.push_str(" ← ");
            message.push_str(&short);
        }
    }
    message
}

/// "task `a` (loc) waited 5.100 ms for a worker (p99; 31 of 400 wakes ≥ 1.000 ms, 120 ms in
/// all); the 2 workers were in polls of `conn (src/main.rs:71)` for 87% of that time, blocked
/// in the kernel for 80%".
pub(crate) fn delay_message(
    task: &str,
    location: Option<&str>,
    d: &iotrace_analysis::tasks::Delay,
) -> String {
    let mut m = format!("task `{task}`");
    if let Some(loc) = location {
        m.push_str(&format!(" ({loc})"));
    }
    m.push_str(&format!(
        " waited {} for a worker (p99; {} of {} wakes ≥ {}, {} in all)",
        duration(d.p99_ns),
        d.delayed,
        d.wakes,
        duration(d.threshold_ns),
        duration(d.delayed_ns)
    ));
    let worker_time: u64 = d.held_by.iter().map(|h| h.held_ns).sum::<u64>() + d.unheld_ns;
    let pct = |ns: u64| 100.0 * ns as f64 / worker_time.max(1) as f64;
    let workers = if d.workers == 1 {
        "the worker was".to_owned()
    } else {
        format!("the {} workers were", d.workers)
    };
    match d.held_by.first() {
        Some(h) => {
            m.push_str(&format!(
                "; {workers} in polls of {} for {:.0}% of that time, blocked in the kernel for {:.0}%",
                h.task,
                pct(h.held_ns),
                pct(h.blocked_ns)
            ));
            if h.long_poll_ns > 0 {
                m.push_str(&format!(
                    ", in long polls on CPU for {:.0}%",
                    pct(h.long_poll_ns)
                ));
            }
            let rest: u64 = d.held_by[1..].iter().map(|h| h.held_ns).sum();
            if pct(rest + d.unheld_ns) >= 1.0 {
                m.push_str(&format!(
                    " (other tasks' polls {:.0}%, no poll {:.0}%)",
                    pct(rest),
                    pct(d.unheld_ns)
                ));
            }
        }
        None => m.push_str(&format!("; {workers} in no poll")),
    }
    m
}

/// A blocked stack in a line, innermost first: the first user frames past the libc wrapper
/// of `syscall` (which the reader already sees named), then, if those are not the program's
/// own code, `…` and its first frame that is (the line to go and read).
pub fn short_stack(frames: &[(String, bool)], syscall: &str) -> String {
    let user: Vec<&str> = frames
        .iter()
        .filter(|(_, kernel)| !kernel)
        .map(|(name, _)| name.as_str())
        .skip_while(|name| {
            let function = name.split(" at ").next().unwrap_or(name);
            function.ends_with(syscall)
        })
        .take(MESSAGE_FRAMES)
        .collect();
    let mut out = user.join(" ← ");
    let own = frames
        .iter()
        .filter(|(_, kernel)| !kernel)
        .map(|(name, _)| name.as_str())
        .find(|name| iotrace_analysis::tasks::naming::is_own_code(name));
    if let Some(own) = own.filter(|own| !user.contains(own)) {
        if !out.is_empty() {
            out.push_str(" ← ");
        }
        out.push_str("… ← ");
        out.push_str(own);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning() -> Warning {
        Warning {
            kind: "blocked_in_poll",
            task: "handler".into(),
            task_id: 100,
            pid: 1,
            location: Some("src/main.rs:42:5".into()),
            polls: 1,
            total_polls: 1,
            blocked_ns: 5_000_000,
            syscall: "clock_nanosleep".into(),
            stack: None,
            stack_id: None,
            worker_tid: 7,
            worker: "tokio-runtime-w".into(),
            other_workers: 0,
            frames: Vec::new(),
            delay: None,
        }
    }

    #[test]
    fn a_scheduling_delay_names_what_held_the_workers() {
        let mut w = warning();
        w.kind = "scheduling_delay";
        w.delay = Some(iotrace_analysis::tasks::Delay {
            p99_ns: 5_100_000,
            threshold_ns: 1_000_000,
            delayed: 31,
            wakes: 400,
            delayed_ns: 120_000_000,
            workers: 2,
            held_by: vec![
                iotrace_analysis::tasks::Holder {
                    task: "tasks spawned at src/main.rs:71".into(),
                    held_ns: 174_000_000,
                    blocked_ns: 160_000_000,
                    delays: 31,
                    ..Default::default()
                },
                iotrace_analysis::tasks::Holder {
                    task: "other".into(),
                    held_ns: 4_000_000,
                    blocked_ns: 0,
                    delays: 3,
                    ..Default::default()
                },
            ],
            unheld_ns: 22_000_000,
        });
        assert_eq!(
            message(&w),
            "task `handler` (src/main.rs:42:5) waited 5.100 ms for a worker (p99; 31 of 400 \
             wakes ≥ 1.000 ms, 120.000 ms in all); the 2 workers were in polls of \
             tasks spawned at src/main.rs:71 for 87% of that time, blocked in the kernel for 80% \
             (other tasks' polls 2%, no poll 11%)"
        );
    }

    #[test]
    fn the_line_says_who_blocked_which_worker_how_long_in_what() {
        let mut w = warning();
        assert_eq!(
            message(&w),
            "task `handler` (src/main.rs:42:5) blocked worker `tokio-runtime-w` (tid 7) \
             in 1 of 1 polls, 5.000 ms each, in clock_nanosleep"
        );
        w.other_workers = 2;
        w.polls = 2;
        w.blocked_ns = 3_000_000;
        w.frames = vec![
            ("do_nanosleep".into(), true),
            (
                "clock_nanosleep at ./time/clock_nanosleep.c:48".into(),
                false,
            ),
            (
                "std::thread::sleep at library/std/src/thread/mod.rs:1".into(),
                false,
            ),
            ("demo::handle at src/main.rs:71".into(), false),
        ];
        assert_eq!(
            message(&w),
            "task `handler` (src/main.rs:42:5) blocked worker `tokio-runtime-w` (tid 7, and 2 \
             other workers) in 2 of 1 polls, 1.500 ms each, in clock_nanosleep ← \
             std::thread::sleep at library/std/src/thread/mod.rs:1 ← demo::handle at src/main.rs:71"
        );
    }
}
