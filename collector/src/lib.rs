//! iotrace's engine in one dependency. The work is done by the crates of `collector/`, one per
//! arrow of the data flow (README.md, "Layout"); this crate re-exports them under the module
//! names the CLI, the tests and the fuzzer use:
//!
//! | module | crate | job |
//! |---|---|---|
//! | [`format`] | `iotrace-trace` | the trace file: records, writer, reader (FORMAT.md) |
//! | [`record`], [`perf`], [`procpoll`], [`attach`], [`intake`], [`sys`] | `iotrace-record` | perf events, /proc, the span socket → a trace file |
//! | [`analysis`], [`spans`], [`tasks`], [`stacks`], [`symbolize`], [`intervals`] | `iotrace-analysis` | one streaming pass over a trace → results |
//! | [`report`], [`compare`], [`flamegraph`], [`timeline`], [`export`] | `iotrace-render` | results → text, JSON, SVG, HTML and export formats |
//!
//! ```no_run
//! use iotrace_collector::{analysis, record, report};
//! let opts = record::RecordOptions::new(vec!["true".into()], "t.iotrace".into());
//! let outcome = record::record(&opts)?;
//! let summary = analysis::summarize_file(&outcome.trace)?;
//! print!("{}", report::text(&summary));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub use iotrace_analysis::{intervals, spans, stacks, summary as analysis, symbolize, tasks};
pub use iotrace_record::{attach, intake, perf, procpoll, record, sys};
pub use iotrace_render::{compare, export, flamegraph, report, timeline};
pub use iotrace_trace as format;
pub use iotrace_wire as wire;
