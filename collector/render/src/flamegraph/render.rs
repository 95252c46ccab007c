//! From counted stacks to folded lines: the root frames each kind puts above the native
//! frames, naming the native frames, and the off-CPU leaf (the kernel function the thread
//! slept in, and the syscall). The wall graph marks kernel frames `_[k]` and JIT frames (named
//! from `/tmp/perf-PID.map`) `_[j]`, as stackcollapse-perf does, for inferno's colours.

use std::collections::{HashMap, HashSet};

use super::{Counts, GroupBy, Kind, Options, Origin};
use iotrace_analysis::stacks::{Context, StackFold, StackTable};
use iotrace_analysis::symbolize::{self, FrameKey, KernelSymbols, SymbolStats, Symbols};

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
pub(crate) fn thread_name(fold: &mut StackFold, tid: u32) -> u32 {
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
        // The idle and wake graphs are folded from the task model (`idle.rs`, `wake.rs`),
        // never here.
        Kind::OnCpu | Kind::OffCpu | Kind::Idle | Kind::Wake => vec![thread],
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

/// One native frame of a stack as the flamegraphs name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NamedFrame<'a> {
    /// The frame to name (stack node, return address).
    pub key: FrameKey,
    pub name: &'a str,
    pub kernel: bool,
    /// Named from a JIT map (`/tmp/perf-PID.map`).
    pub jit: bool,
}

/// Adds the frames of stack `leaf` to those to name.
pub(crate) fn need_frames(stacks: &StackTable, leaf: u32, need: &mut HashSet<FrameKey>) {
    need.extend(stacks.frame_keys(leaf).map(|(k, _)| k));
}

/// The native frames of stack `leaf`, outermost first, named as the flamegraphs name them
/// (frames `symbols` does not name are `[unknown]`). For an off-CPU stack (`off_cpu`: the
/// syscall it slept in, `u16::MAX` when unknown) the scheduler's frames on top are dropped
/// and the syscall the leaf slept in is returned, unless its kernel frames show it was not in
/// one.
pub(crate) fn native_frames<'a>(
    fold: &'a StackFold,
    symbols: &Symbols,
    leaf: u32,
    off_cpu: Option<u16>,
    out: &mut Vec<NamedFrame<'a>>,
) -> Option<String> {
    out.clear();
    for (key, kernel) in fold.stacks.frame_keys(leaf) {
        let jit = symbols.is_jit(key);
        // Innermost first: the functions inlined at the frame, then its own.
        if let Some(d) = symbols.detail(key) {
            out.extend(d.inlined.iter().rev().map(|&(name, _)| NamedFrame {
                key,
                name: fold.strings.get(name),
                kernel,
                jit,
            }));
        }
        out.push(NamedFrame {
            key,
            name: symbols
                .get(key)
                .map_or("[unknown]", |id| fold.strings.get(id)),
            kernel,
            jit,
        });
    }
    out.reverse();
    let syscall = off_cpu?;
    while out.len() > 1 && out.last().is_some_and(|f| SCHEDULER.contains(&f.name)) {
        out.pop();
    }
    syscall_note(out, syscall)
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
        need_frames(&fold.stacks, stack, &mut need);
    }
    let roots: Vec<Option<Vec<u32>>> = counts
        .origin_list
        .iter()
        .map(|&o| root_frames(fold, opts, o))
        .collect();
    let (symbols, stats) = symbolize::symbolize(fold, need, kernel);
    let fold = &*fold;
    let strings = &fold.strings;
    let mut merged: HashMap<String, u64> = HashMap::new();
    let mut native: Vec<NamedFrame> = Vec::new();
    let mut line = String::new();
    for ((origin, stack, tag), weight) in counts.weights {
        let Some(Some(roots)) = roots.get(origin as usize) else {
            continue;
        };
        let off_cpu = tag != 0;
        let syscall = off_cpu.then(|| u16::try_from(tag - 1).unwrap_or(u16::MAX));
        let leaf_note = native_frames(fold, &symbols, stack, syscall, &mut native);
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
        for (i, f) in native.iter().enumerate() {
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(f.name);
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
                } else if f.kernel {
                    line.push_str("_[k]");
                } else if f.jit {
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
fn syscall_note(native: &[NamedFrame], nr: u16) -> Option<String> {
    if nr == iotrace_trace::Switch::NO_SYSCALL {
        return None;
    }
    let kernel: Vec<&str> = native.iter().filter(|f| f.kernel).map(|f| f.name).collect();
    let known = kernel.iter().any(|n| !n.starts_with("[unknown"));
    if known && !kernel.iter().any(|n| n.contains("sys_")) {
        return None;
    }
    Some(iotrace_analysis::summary::syscall_name(nr))
}
