//! From counted stacks to folded lines: the root frames each kind puts above the native
//! frames, naming the native frames, and the off-CPU leaf (the kernel function the thread
//! slept in, and the syscall). The wall graph marks kernel frames `_[k]` and JIT frames (named
//! from `/tmp/perf-PID.map`) `_[j]`, as stackcollapse-perf does, for inferno's colours.

use std::collections::{HashMap, HashSet};

use super::{Counts, GroupBy, Kind, Options, Origin};
use crate::stacks::{Context, StackFold, StackTable};
use crate::symbolize::{self, is_kernel, FrameKey, KernelSymbols, SymbolStats};

/// Scheduler frames on top of every off-CPU stack: the leaf is the function that called them.
const SCHEDULER: &[&str] = &[
    "__schedule",
    "schedule",
    "schedule_idle",
    "preempt_schedule",
    "preempt_schedule_common",
    "preempt_schedule_irq",
    "__perf_event_task_sched_out",
    "perf_event_task_sched_out",
    "___perf_sw_event",
    "__perf_sw_event",
];

/// The thread's name (its latest), or `tid N`.
pub(super) fn thread_name(fold: &mut StackFold, tid: u32) -> u32 {
    match fold.threads.get(tid) {
        Some((_, name)) if !fold.strings.get(name).is_empty() => name,
        _ => fold.strings.intern(&format!("tid {tid}")),
    }
}

/// Root frames (string ids) of an origin for this kind; `None` when `--task` leaves it out.
fn root_frames(fold: &mut StackFold, opts: &Options, origin: Origin) -> Option<Vec<u32>> {
    let context: Option<Context> = fold.contexts.get(origin.context).cloned();
    let task = context.as_ref().and_then(|c| c.task);
    if let Some(want) = &opts.task {
        if !task.is_some_and(|t| fold.strings.get(t).contains(want.as_str())) {
            return None;
        }
    }
    let thread = origin.thread;
    Some(match opts.kind {
        Kind::OnCpu | Kind::OffCpu => vec![thread],
        Kind::Wall => {
            let root = if origin.off_cpu { "off-CPU" } else { "on-CPU" };
            vec![fold.strings.intern(root), thread]
        }
        Kind::Async => {
            let task_frame = match task {
                Some(t) => t,
                None => fold.strings.intern("[no task]"),
            };
            let spans = context.as_ref().map_or(&[][..], |c| &c.spans[..]);
            match opts.group_by {
                GroupBy::Thread => [thread, task_frame]
                    .into_iter()
                    .chain(spans.iter().copied())
                    .collect(),
                GroupBy::Task => std::iter::once(task_frame)
                    .chain(spans.iter().copied())
                    .collect(),
                GroupBy::Span => match (spans.last(), task) {
                    (Some(&s), _) => vec![s],
                    (None, Some(t)) => vec![t],
                    (None, None) => vec![fold.strings.intern("[no span]")],
                },
            }
        }
    })
}

/// Frames of a stack from the innermost out, each with whether its address is a return
/// address (all but the innermost frame of the kernel part and of the user part).
fn frame_keys(stacks: &StackTable, leaf: u32) -> impl Iterator<Item = (FrameKey, bool)> + '_ {
    let mut previous_kernel: Option<bool> = None;
    stacks.walk(leaf).map(move |node| {
        let kernel = stacks.frame(node).is_some_and(|(a, _)| is_kernel(a));
        let sampled = match previous_kernel {
            None => true,
            Some(pk) => pk && !kernel,
        };
        previous_kernel = Some(kernel);
        ((node, !sampled), kernel)
    })
}

/// Name the frames and write one line per distinct stack, merged and sorted.
pub(super) fn lines(
    fold: &mut StackFold,
    opts: &Options,
    counts: Counts,
    kernel: Option<&KernelSymbols>,
) -> (Vec<(String, u64)>, SymbolStats) {
    let mut need: HashSet<FrameKey> = HashSet::new();
    for &(_, stack, _) in counts.weights.keys() {
        need.extend(frame_keys(&fold.stacks, stack).map(|(k, _)| k));
    }
    let roots: Vec<Option<Vec<u32>>> = counts
        .origin_list
        .iter()
        .map(|&o| root_frames(fold, opts, o))
        .collect();
    let (symbols, stats) = symbolize::symbolize(fold, need, kernel);
    let strings = &fold.strings;
    let mut merged: HashMap<String, u64> = HashMap::new();
    // (name, kernel, JIT)
    let mut native: Vec<(&str, bool, bool)> = Vec::new();
    let mut line = String::new();
    for ((origin, stack, tag), weight) in counts.weights {
        let Some(Some(roots)) = roots.get(origin as usize) else {
            continue;
        };
        native.clear();
        native.extend(frame_keys(&fold.stacks, stack).map(|(key, kernel)| {
            let name = symbols.get(key).map_or("[unknown]", |id| strings.get(id));
            (name, kernel, symbols.is_jit(key))
        }));
        native.reverse();
        let off_cpu = tag != 0;
        let mut leaf_note = None;
        if off_cpu {
            while native.len() > 1 && native.last().is_some_and(|f| SCHEDULER.contains(&f.0)) {
                native.pop();
            }
            leaf_note = syscall_note(&native, tag - 1);
        }
        line.clear();
        for (i, &r) in roots.iter().enumerate() {
            if i > 0 {
                line.push(';');
                if opts.kind == Kind::Wall && off_cpu {
                    line.push_str(strings.get(r));
                    line.push_str("_[i]");
                    continue;
                }
            }
            line.push_str(strings.get(r));
        }
        let last = native.len().saturating_sub(1);
        for (i, &(name, kernel, jit)) in native.iter().enumerate() {
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(name);
            if i == last {
                if let Some(note) = &leaf_note {
                    line.push_str(" [");
                    line.push_str(note);
                    line.push(']');
                }
            }
            if opts.kind == Kind::Wall {
                if off_cpu {
                    line.push_str("_[i]");
                } else if kernel {
                    line.push_str("_[k]");
                } else if jit {
                    line.push_str("_[j]");
                }
            }
        }
        if line.is_empty() {
            continue;
        }
        *merged.entry(line.clone()).or_insert(0) += weight;
    }
    let mut lines: Vec<(String, u64)> = merged.into_iter().collect();
    lines.sort_unstable();
    (lines, stats)
}

/// The syscall a stack slept in, unless its kernel frames show it was not in one (a page
/// fault, say, where the last syscall entered is stale).
fn syscall_note(native: &[(&str, bool, bool)], syscall: u32) -> Option<String> {
    let nr = u16::try_from(syscall).ok()?;
    if nr == crate::format::Switch::NO_SYSCALL {
        return None;
    }
    let kernel: Vec<&str> = native.iter().filter(|f| f.1).map(|f| f.0).collect();
    let known = kernel.iter().any(|n| !n.starts_with("[unknown"));
    if known && !kernel.iter().any(|n| n.contains("sys_")) {
        return None;
    }
    Some(crate::analysis::syscall_name(nr))
}
