//! `iotrace timeline`: one self-contained HTML page (no network at all) with a track per thread
//! and per task, colored by state, that zooms and pans and tells on hover what a stretch was.
//!
//! The trace is read once through the analysis, which keeps every interval
//! ([`iotrace_analysis::intervals`], shared with [`crate::export`]) and the stack tree that names
//! the blocked stretches' and yield sites' stacks, and the wakes. The page is `timeline.html`
//! with the data inlined as JSON, written one track at a time (`page.rs`) by a second thread
//! (`out.rs`). The page draws on a canvas and, when a track has more intervals than pixels in
//! view, colors each pixel column by the state that filled most of it (prefix sums per state),
//! so it stays smooth with millions of intervals. Wakes are arrows from the waker's track to the
//! woken task's, drawn for the selected track or, on request, for every track. Diagnoses are
//! listed above the tracks and marked at each of their moments on the diagnosed task's track
//! (`diagnoses.rs`).

use std::path::Path;

pub use iotrace_analysis::intervals::{
    collect, heaviest, heaviest_stacks, Collected, TaskIv, ThreadIv, TimelineOptions, BLOCKED,
    DEFAULT_MAX_INTERVALS, DEFAULT_MAX_WAKES, IDLE, MAX_NAMED_STACKS, MAX_NAMED_YIELD_STACKS, POLL,
    POLL_BLOCKED, RUNNABLE, RUNNING, SCHEDULED, STATES,
};

mod diagnoses;
mod page;

pub use crate::out::TimelineError;
use crate::out::{OutFile, TrackError};

/// What [`write_timeline`] wrote.
#[derive(Debug, Clone, Default)]
pub struct TimelineOutcome {
    pub threads: usize,
    pub tasks: usize,
    /// Intervals collected, and drawn (fewer when short ones were merged to fit the limit).
    pub intervals: u64,
    pub drawn: u64,
    /// Wakes drawn as arrows, and those left out (past [`TimelineOptions::max_wakes`], or
    /// without a track at either end).
    pub wakes: u64,
    pub wakes_left_out: u64,
    pub bytes: u64,
    /// Set when the trace is damaged or unfinished (see [`Summary::truncated`]).
    pub truncated: Option<String>,
}

/// Reads `trace` and writes its timeline page to `out`.
pub fn write_timeline(
    trace: &Path,
    out: &Path,
    opts: &TimelineOptions,
) -> Result<TimelineOutcome, TimelineError> {
    let (mut summary, mut col) = collect(trace, opts, true)?;
    let collected = col.intervals;
    let write_err = |error| TimelineError::Write {
        path: out.to_owned(),
        error,
    };
    let resolution =
        page::resolution(&col, &summary, opts.max_intervals).map_err(TimelineError::Spill)?;
    let mut w = OutFile::create(out).map_err(write_err)?;
    let tracks = page::write_tracks(&summary, &col, resolution, &mut w).map_err(|e| match e {
        TrackError::Read(e) => TimelineError::Spill(e),
        TrackError::Write(e) => write_err(e),
    })?;
    // Name the stacks of the warnings, of the blocked stretches with the most time and of
    // the yield sites with the most idle time.
    let mut ids = heaviest_stacks(&tracks.stack_time);
    ids.extend(heaviest(&col.idle_time, MAX_NAMED_YIELD_STACKS));
    ids.extend(summary.warnings.iter().filter_map(|w| w.stack_id));
    ids.extend(iotrace_analysis::tasks::naming::task_stack_ids(
        &summary.tasks,
    ));
    ids.extend(iotrace_analysis::tasks::naming::diagnosis_stack_ids(
        &summary.diagnoses,
    ));
    let names = if ids.is_empty() {
        iotrace_analysis::tasks::naming::StackNames::new()
    } else {
        col.name_stacks(&ids)
    };
    iotrace_analysis::tasks::naming::apply_warning_names(&names, &mut summary.warnings);
    iotrace_analysis::tasks::naming::apply_task_names(&names, &mut summary.tasks);
    iotrace_analysis::tasks::naming::apply_diagnosis_names(&names, &mut summary.diagnoses);
    iotrace_analysis::tasks::diagnosis::settle(&mut summary.diagnoses);
    let (wakes, wakes_left_out) =
        page::write_tail(&summary, &col, tracks.strings, &names, &mut w).map_err(write_err)?;
    let bytes = w.finish().map_err(write_err)?;
    Ok(TimelineOutcome {
        threads: summary.threads.len(),
        tasks: summary.tasks.len(),
        intervals: collected,
        drawn: tracks.drawn,
        wakes,
        wakes_left_out,
        bytes,
        truncated: summary.truncated.clone(),
    })
}

/// The page's track of each thread (by tid) and of each task: threads first, then tasks, in
/// the summary's order.
pub(crate) fn track_indexes(
    summary: &iotrace_analysis::summary::Summary,
) -> (
    std::collections::HashMap<u32, usize>,
    std::collections::HashMap<iotrace_analysis::tasks::TaskKey, usize>,
) {
    let threads = summary
        .threads
        .iter()
        .enumerate()
        .map(|(i, t)| (t.tid, i))
        .collect();
    let tasks = summary
        .tasks
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let key = iotrace_analysis::tasks::TaskKey {
                pid: row.pid,
                span: row.id,
            };
            (key, summary.threads.len() + i)
        })
        .collect();
    (threads, tasks)
}
