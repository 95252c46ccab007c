//! Names for the off-CPU stacks that warnings point at. The analysis keeps only stack ids (a
//! node of the trace's stack tree); when a warning has one, a second pass over the trace builds
//! the tree and the processes' mappings ([`crate::stacks::StackFold`]) and
//! [`crate::symbolize`] names the frames of just those stacks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{StackId, Warning};
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

/// Fills in the stacks of `warnings` that have one. A trace without stacks (or a failure to read them) leaves the warnings as they are.
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
