//! Names for the off-CPU stacks that warnings point at. The analysis keeps only stack ids (a
//! node of the trace's stack tree); when a warning has one, a second pass over the trace builds
//! the tree and the processes' mappings ([`crate::stacks::StackFold`]) and
//! [`crate::symbolize`] names the frames of just those stacks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{StackId, Warning};
use crate::format::{FormatError, Record, TraceReader};
use crate::stacks::{Need, StackFold, StackTable};
use crate::symbolize::{self, is_kernel, FrameKey, KernelSymbols};

/// User frames shown in a warning's one-line message.
const MESSAGE_FRAMES: usize = 3;

/// Frames of a stack from the innermost out: key, and whether it is a kernel frame. Return
/// addresses (every frame but the innermost of the kernel part and of the user part) are
/// looked up one byte earlier.
fn frame_keys(stacks: &StackTable, leaf: u32) -> Vec<(FrameKey, bool)> {
    let mut previous_kernel: Option<bool> = None;
    stacks
        .walk(leaf)
        .map(|node| {
            let kernel = stacks.frame(node).is_some_and(|(a, _)| is_kernel(a));
            let sampled = match previous_kernel {
                None => true,
                Some(pk) => pk && !kernel,
            };
            previous_kernel = Some(kernel);
            ((node, !sampled), kernel)
        })
        .collect()
}

/// Frame names of `ids`, innermost first, each with whether it is a kernel frame. A frame
/// with functions inlined at it comes out as one name per function (` (inlined)`), and a name
/// whose place is known from DWARF ends in ` at file:line`.
pub fn stack_names(
    trace: &Path,
    ids: &[StackId],
) -> Result<HashMap<StackId, Vec<(String, bool)>>, FormatError> {
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
pub(crate) fn names_in(
    fold: &mut StackFold,
    ids: &[StackId],
    kernel: Option<&KernelSymbols>,
) -> HashMap<StackId, Vec<(String, bool)>> {
    let keys: HashMap<StackId, Vec<(FrameKey, bool)>> = ids
        .iter()
        .map(|&id| (id, frame_keys(&fold.stacks, id)))
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

/// Fills in the stacks of `warnings` that have one, and adds their first user frames to the
/// messages. A trace without stacks (or a failure to read them) leaves the warnings as they are.
pub fn name_warning_stacks(trace: &Path, warnings: &mut [Warning]) {
    let ids: Vec<StackId> = warnings.iter().filter_map(|w| w.stack_id).collect();
    if ids.is_empty() {
        return;
    }
    let Ok(names) = stack_names(trace, &ids) else {
        return;
    };
    apply_warning_names(&names, warnings);
}

/// Whether a frame name (`name at file:line`) is in the program's own sources: not Rust's
/// `library/`, not a crate from cargo's registry (`tokio-1.54.1/src/…`), not a distribution's
/// build tree (`./time/…`, `/build/…`) or a system path.
fn is_own_code(name: &str) -> bool {
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

/// A blocked stack in a line, innermost first: the first user frames past the libc wrapper
/// of `syscall` (which the reader already sees named), then, if those are not the program's
/// own code, `…` and its first frame that is (the line to go and read).
pub(crate) fn short_stack(frames: &[(String, bool)], syscall: &str) -> String {
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
        .find(|name| is_own_code(name));
    if let Some(own) = own.filter(|own| !user.contains(own)) {
        if !out.is_empty() {
            out.push_str(" ← ");
        }
        out.push_str("… ← ");
        out.push_str(own);
    }
    out
}

/// Fills in the stacks of `warnings` from `names` and adds their first user frames to the
/// messages.
pub(crate) fn apply_warning_names(
    names: &HashMap<StackId, Vec<(String, bool)>>,
    warnings: &mut [Warning],
) {
    for w in warnings.iter_mut() {
        let Some(frames) = w.stack_id.and_then(|id| names.get(&id)) else {
            continue;
        };
        if frames.is_empty() {
            continue;
        }
        let short = short_stack(frames, &w.syscall);
        if !short.is_empty() {
            w.message.push_str(" ← ");
            w.message.push_str(&short);
        }
        w.stack = Some(frames.iter().map(|(name, _)| name.clone()).collect());
    }
}
