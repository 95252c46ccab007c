//! What iotrace writes from an analysis ([`iotrace_analysis`]): every output a person or a
//! script reads.
//!
//! - [`report`] renders a summary as text for people or JSON for scripts (`collector/REPORT.md`); the task
//!   and thread-state sections are [`tasks_text`], a warning's line is [`warning`], a
//!   diagnosis' line is [`diagnosis`].
//! - [`compare`] tables the costs of several recordings side by side.
//! - [`flamegraph`] counts stack samples into folded stacks and SVGs.
//! - [`timeline`] draws every thread and task through time as one HTML page; [`export`] writes
//!   the same intervals as Perfetto (JSON or protobuf), and pprof, the Firefox Profiler's format
//!   and OTLP/JSON spans (docs/EXPORT.md).
//!
//! ```no_run
//! let summary = iotrace_analysis::summary::summarize_file("t.iotrace".as_ref())?;
//! print!("{}", iotrace_render::report::text(&summary));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod compare;
pub mod diagnosis;
pub mod export;
#[cfg(test)]
mod fixtures;
pub mod flamegraph;
mod out;
pub mod report;
pub mod tasks_text;
pub mod timeline;
pub mod warning;
