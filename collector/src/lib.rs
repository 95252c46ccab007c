//! iotrace's engine: recording a program under perf events, the trace file, and the analysis
//! that turns a trace into reports.
//!
//! The pipeline reads top to bottom:
//! - [`record`] starts the child held, attaches [`perf`] events and polls /proc ([`procpoll`]),
//!   and streams everything into a trace file ([`format`]).
//! - [`analysis`] folds a trace, one record at a time, into a [`analysis::Summary`].
//! - [`report`] renders a summary as text for people or JSON for scripts.
//! - [`tasks`] is the state model inside that pass: per thread running / runnable / blocked,
//!   per task polling / scheduled / idle, and the tasks that blocked their worker thread.
//! - [`timeline`] and [`export`] draw every thread and task through time (an HTML page, or
//!   Chrome trace JSON for Perfetto); [`export`] also writes pprof, the Firefox Profiler's
//!   format and OTLP/JSON spans (docs/EXPORT.md).
//! - [`stacks`] folds the trace's stack samples (on-CPU, and off-CPU weighted by time away),
//!   each with the task and spans active on its thread; [`symbolize`] names their frames
//!   offline; [`flamegraph`] counts them into folded stacks and SVGs.
//!
//! ```no_run
//! use iotrace_collector::{analysis, record, report};
//! let opts = record::RecordOptions::new(vec!["true".into()], "t.iotrace".into());
//! let outcome = record::record(&opts)?;
//! let summary = analysis::summarize_file(&outcome.trace)?;
//! print!("{}", report::text(&summary));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod analysis;
pub mod attach;
pub mod compare;
pub mod export;
pub mod flamegraph;
pub mod format;
pub mod intake;
pub mod perf;
pub mod procpoll;
pub mod record;
pub mod report;
pub mod spans;
pub mod stacks;
pub mod symbolize;
pub mod sys;
pub mod tasks;
pub mod timeline;
