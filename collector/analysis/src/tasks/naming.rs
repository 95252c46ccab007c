//! Names for the off-CPU stacks that warnings point at. The analysis keeps only stack ids (a
//! node of the trace's stack tree); when a warning has one, a second pass over the trace builds
//! the tree and the processes' mappings ([`crate::stacks::StackFold`]) and
//! [`crate::symbolize`] names the frames of just those stacks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{Diagnosis, StackId, TaskRow, WakerRow, Warning};
use crate::stacks::{Need, StackFold};
use crate::symbolize::{self, FrameKey, KernelSymbols};
use iotrace_trace::{FormatError, Record, TraceReader};

/// Frame names of stacks, innermost first, each with whether it is a kernel frame.
pub type StackNames = HashMap<StackId, Vec<(String, bool)>>;

/// Frame names of `ids`, innermost first, each with whether it is a kernel frame. A frame
/// with functions inlined at it comes out as one name per function (` (inlined)`), and a name
/// whose place is known from DWARF ends in ` at file:line`.
pub fn stack_names(trace: &Path, ids: &[StackId]) -> Result<StackNames, FormatError> {
    let mut reader = TraceReader::open(trace)?;
    let mut fold = StackFold::with(Need {
        on_cpu: false,
        off_cpu: false,
        contexts: false,
    });
    let mut kernel = None;
    for record in reader.by_ref() {
        if let Record::Sampling(s) = &record {
            if s.kernel_stacks && kernel.is_none() && symbolize::same_boot(&s.boot_id) {
                kernel = Some(KernelSymbols::spawn());
            }
        }
        fold.add(&record, &mut |_, _| {});
    }
    fold.finish(&mut |_, _| {});
    let kernel = kernel.and_then(|k| k.join().ok().flatten());
    Ok(names_in(&mut fold, ids, kernel.as_ref()))
}

/// Frame names of `ids` in a finished fold's stack tree, innermost first, each with whether
/// it is a kernel frame.
pub fn names_in(
    fold: &mut StackFold,
    ids: &[StackId],
    kernel: Option<&KernelSymbols>,
) -> StackNames {
    let keys: HashMap<StackId, Vec<(FrameKey, bool)>> = ids
        .iter()
        .map(|&id| (id, fold.stacks.frame_keys(id).collect()))
        .collect();
    let need: HashSet<FrameKey> = keys.values().flatten().map(|k| k.0).collect();
    let (symbols, _) = symbolize::symbolize(fold, need, kernel);
    let named = |name: Option<u32>, at: Option<u32>| {
        let mut text = name.map_or("[unknown]", |s| fold.strings.get(s)).to_owned();
        if let Some(at) = at {
            text.push_str(" at ");
            text.push_str(fold.strings.get(at));
        }
        text
    };
    keys.into_iter()
        .map(|(id, frames)| {
            let mut names = Vec::new();
            for (key, kernel) in frames {
                // Innermost first: the functions inlined at the frame, then its own.
                for (name, at, _) in symbols.frames(key).into_iter().rev() {
                    names.push((named(name, at), kernel));
                }
            }
            (id, names)
        })
        .collect()
}

/// Fills in the stacks of the summary's warnings and diagnoses that have one, and the tasks'
/// yield sites and driver wakes, then settles the diagnoses (see
/// [`super::diagnosis::settle`]). A trace without stacks (or a failure to read them) leaves
/// them as they are.
pub fn name_report_stacks(trace: &Path, summary: &mut crate::summary::Summary) {
    let mut ids: Vec<StackId> = summary.warnings.iter().filter_map(|w| w.stack_id).collect();
    ids.extend(task_stack_ids(&summary.tasks));
    ids.extend(diagnosis_stack_ids(&summary.diagnoses));
    if !ids.is_empty() {
        ids.sort_unstable();
        ids.dedup();
        if let Ok(names) = stack_names(trace, &ids) {
            apply_warning_names(&names, &mut summary.warnings);
            apply_task_names(&names, &mut summary.tasks);
            apply_diagnosis_names(&names, &mut summary.diagnoses);
        }
    }
    super::diagnosis::settle(&mut summary.diagnoses);
}

/// The stacks the diagnoses point at.
pub fn diagnosis_stack_ids(diagnoses: &[Diagnosis]) -> Vec<StackId> {
    diagnoses
        .iter()
        .flat_map(|d| [d.stack_id, d.stack2_id])
        .flatten()
        .collect()
}

/// Names the diagnoses' stacks: each one's `stack`, and its `line` (the program's line at
/// fault) from it, and for `held_across_await` the holder's line.
pub fn apply_diagnosis_names(names: &StackNames, diagnoses: &mut [Diagnosis]) {
    for d in diagnoses.iter_mut() {
        if let Some(frames) = d.stack_id.and_then(|id| names.get(&id)) {
            if !frames.is_empty() {
                let line = match d.kind {
                    "held_across_await" => site_line(frames),
                    // The loop, and the line of the poll that ran it.
                    "long_poll" | "self_wake" => fault_line(frames, 2),
                    _ => fault_line(frames, 1),
                };
                if line.is_some() {
                    d.line = line;
                }
                d.stack = Some(frames.iter().map(|(n, _)| n.clone()).collect());
            }
        }
        if let (Some(frames), Some(held)) = (d.stack2_id.and_then(|id| names.get(&id)), &mut d.held)
        {
            held.lock_line = site_line(frames);
        }
    }
}

/// Whether a frame name (`name at file:line`) is in the program's own sources: not Rust's
/// `library/`, not a crate from cargo's registry (`tokio-1.54.1/src/…`), not a distribution's
/// build tree (`./time/…`, `/build/…`) or a system path.
pub fn is_own_code(name: &str) -> bool {
    let Some((_, at)) = name.rsplit_once(" at ") else {
        return false;
    };
    let first = at.split('/').next().unwrap_or("");
    let versioned = first.rsplit_once('-').is_some_and(|(_, v)| {
        v.split('.').count() >= 3
            && v.split('.')
                .all(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_ascii_digit()))
    });
    let system = ["/usr/", "/build/", "/rustc/", "/lib/"]
        .iter()
        .any(|p| at.starts_with(p))
        || at.contains("/.rustup/")
        || at.contains("/.cargo/");
    at.contains('/') && !system && !at.starts_with('.') && first != "library" && !versioned
}

/// The program's lines in a stack: its `n` innermost frames that are neither a library's nor
/// the kernel's, each as `function at file:line`, innermost first, joined by ` ← `.
pub fn fault_line(frames: &[(String, bool)], n: usize) -> Option<String> {
    let lines: Vec<String> = frames
        .iter()
        .filter(|(name, kernel)| !*kernel && !is_library(name) && is_own_code(name))
        .take(n)
        .map(|(name, _)| {
            let mut line = short_name(name);
            if let Some(p) = name.split(" at ").nth(1) {
                line.push_str(" at ");
                line.push_str(p);
            }
            line
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join(" ← "))
}

/// The stacks the task rows point at: their yield sites and the stacks of driver wakes.
pub fn task_stack_ids(tasks: &[TaskRow]) -> Vec<StackId> {
    let mut ids: Vec<StackId> = tasks
        .iter()
        .flat_map(|t| {
            t.yield_sites
                .iter()
                .filter_map(|s| s.stack_id)
                .chain(t.driver_wakes.iter().filter_map(|d| d.0))
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Names the tasks' yield sites from `names` and sorts their driver wakes into I/O, timer and
/// task (a finished task's harness) by the frames of their stacks.
pub fn apply_task_names(names: &StackNames, tasks: &mut [TaskRow]) {
    for t in tasks.iter_mut() {
        for site in &mut t.yield_sites {
            let Some(frames) = site.stack_id.and_then(|id| names.get(&id)) else {
                continue;
            };
            if let Some(line) = site_line(frames) {
                site.site = line;
            }
            site.stack = Some(frames.iter().map(|(n, _)| n.clone()).collect());
        }
        // Two stacks of one await (another caller further out) are one site.
        let mut merged: Vec<super::YieldSiteRow> = Vec::new();
        for site in t.yield_sites.drain(..) {
            match merged
                .iter_mut()
                .find(|m| m.site == site.site && m.site != "unknown")
            {
                Some(m) => {
                    m.idle_ns += site.idle_ns;
                    m.count += site.count;
                }
                None => merged.push(site),
            }
        }
        merged.sort_by_key(|m| (m.site == "unknown", std::cmp::Reverse(m.idle_ns)));
        t.yield_sites = merged;
        let mut by_kind: Vec<(&'static str, u64, u64)> = Vec::new();
        for &(stack, after, n) in &t.driver_wakes {
            let frames = stack.and_then(|id| names.get(&id));
            let kind = frames.map_or("unknown", |f| {
                driver_kind(f.iter().map(|(n, _)| n.as_str()))
            });

            let w = &mut t.woken_by;
            if kind != "unknown" {
                w.unknown = w.unknown.saturating_sub(n);
                match kind {
                    "io" => w.io += n,
                    "timer" => w.timer += n,
                    _ => w.task += n,
                }
            }
            let id = if kind == "task" {
                after.map_or(0, |k| k.span)
            } else {
                0
            };
            match by_kind.iter_mut().find(|e| e.0 == kind && e.1 == id) {
                Some(e) => e.2 += n,
                None => by_kind.push((kind, id, n)),
            }
        }
        for (kind, id, n) in by_kind {
            let name = match kind {
                "io" => "the I/O driver",
                "timer" => "the timer",
                "task" => "a finished task",
                _ => "a runtime thread outside any poll",
            };
            t.wakers.push(WakerRow {
                kind: kind.to_owned(),
                id,
                name: name.to_owned(),
                count: n,
            });
        }
        t.wakers.sort_by_key(|w| std::cmp::Reverse(w.count));
        t.wakers.truncate(super::rows::MAX_WAKER_ROWS);
    }
}

/// Which driver a wake outside any poll came from, by its stack's frames: the innermost
/// frame that is the I/O driver's, the timer's or a task harness's decides (tokio's timer
/// driver parks in the I/O driver, so an I/O wake has timer frames further out). `frames`
/// are the stack's function names, innermost first; the kind is `io`, `timer`, `task` or
/// `unknown`.
pub fn driver_kind<'a>(frames: impl IntoIterator<Item = &'a str>) -> &'static str {
    const KINDS: [(&str, &[&str]); 3] = [
        (
            "timer",
            &[
                "runtime::time::",
                "time::entry::",
                "TimerEntry",
                "StateCell",
            ],
        ),
        (
            "io",
            &["runtime::io::", "ScheduledIo", "io::driver", "mio::"],
        ),
        (
            "task",
            &["runtime::task::harness", "task::core::", "Harness<"],
        ),
    ];
    for name in frames {
        for (kind, pats) in KINDS {
            if pats.iter().any(|p| name.contains(p)) {
                return kind;
            }
        }
    }
    "unknown"
}

/// Whether a frame's function is the runtime's or a library's rather than the program's:
/// the layer, tracing, tokio, futures and the standard library, and trait glue on a generic
/// type (`<&mut T as tokio::io::AsyncRead>::poll_read`).
fn is_library(name: &str) -> bool {
    const LIBS: [&str; 12] = [
        "iotrace_layer",
        "tracing",
        "tokio",
        "core::",
        "std::",
        "alloc::",
        "futures",
        "__",
        "mio",
        "pin_project",
        "[unknown]",
        "dyn ",
    ];
    let lib = |n: &str| {
        let n = n.trim_start_matches(['&', ' ']).trim_start_matches("mut ");
        LIBS.iter().any(|l| n.starts_with(l))
    };
    match name.strip_prefix('<').and_then(|r| r.split_once(" as ")) {
        Some((ty, _)) => {
            let bare = ty.trim_start_matches(['&', ' ']).trim_start_matches("mut ");
            let generic = !bare.contains("::") && bare.len() <= 2;
            generic || lib(ty) || lib(bare.split('<').next().unwrap_or(bare))
        }
        None => lib(name.trim_start_matches('<')),
    }
}

/// A function name without ` at file:line`, ` (inlined)`, closure suffixes and generic
/// arguments: `tokio::sync::mpsc::bounded::Receiver<T>::recv::{{closure}}` →
/// `tokio::sync::mpsc::bounded::Receiver::recv`; a trait impl's type:
/// `<tokio::time::sleep::Sleep as core::future::future::Future>::poll` →
/// `tokio::time::sleep::Sleep`.
fn short_name(name: &str) -> String {
    let name = name.split(" at ").next().unwrap_or(name);
    let name = name.trim_end_matches(" (inlined)");
    let name = match name.strip_prefix('<') {
        Some(rest) => match rest.find(" as ") {
            Some(i) => &rest[..i],
            None => rest,
        },
        None => name,
    };
    let mut out = String::new();
    let mut depth = 0u32;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let mut out = out.as_str();
    while let Some(s) = out.strip_suffix("::{{closure}}") {
        out = s;
    }
    out.trim_start_matches('&').to_owned()
}

/// The yield site of a stack, in a line: the future nearest the program's code that stored
/// the waker, the program's function, and its place (`tokio::time::sleep::Sleep in
/// app::tick at src/main.rs:40`). `None` when no frame is named.
pub fn site_line(frames: &[(String, bool)]) -> Option<String> {
    let user = frames.iter().position(|(n, k)| !*k && !is_library(n));
    let Some(at) = user else {
        // All library: the outermost named frame that is not the layer's or tracing's.
        return frames
            .iter()
            .rev()
            .find(|(n, _)| !n.starts_with("[unknown]"))
            .map(|(n, _)| short_name(n));
    };
    let (user_name, _) = &frames[at];
    let place = user_name.split(" at ").nth(1);
    // The library frame just inside it: what the program awaited.
    let awaited = frames[..at]
        .iter()
        .rev()
        .find(|(n, _)| {
            let s = short_name(n);
            !s.starts_with("core::") && !s.starts_with("std::") && !s.starts_with("alloc::")
        })
        .map(|(n, _)| short_name(n));
    let mut line = String::new();
    if let Some(a) = awaited {
        line.push_str(&a);
        line.push_str(" in ");
    }
    line.push_str(&short_name(user_name));
    if let Some(p) = place {
        line.push_str(" at ");
        line.push_str(p);
    }
    Some(line)
}

/// Fills in the stacks of `warnings` from `names`.
pub fn apply_warning_names(names: &StackNames, warnings: &mut [Warning]) {
    for w in warnings.iter_mut() {
        let Some(frames) = w.stack_id.and_then(|id| names.get(&id)) else {
            continue;
        };
        if frames.is_empty() {
            continue;
        }
        w.stack = Some(frames.iter().map(|(name, _)| name.clone()).collect());
        w.frames = frames.clone();
    }
}
