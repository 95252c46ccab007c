//! One streaming pass over a trace file ([`iotrace_trace`]) that turns its records into results
//! the renderers (`iotrace-render`) draw. Memory grows with threads, tasks and distinct stacks,
//! never with the length of the recording.
//!
//! - [`summary`] folds every record into a [`summary::Summary`]: the numbers behind
//!   `iotrace report`.
//! - [`tasks`] is the state model inside that pass: per thread running / runnable / blocked,
//!   per task polling / scheduled / idle, and the tasks that blocked their worker thread. It
//!   hands every stretch to a [`tasks::Sink`].
//! - [`intervals`] is the sink that keeps those stretches by track, for the timeline and the
//!   exports.
//! - [`spans`] measures the program's own spans; [`stacks`] folds the stack samples (on-CPU, and
//!   off-CPU weighted by time away) with the task and spans active on their thread;
//!   [`symbolize`] names their frames offline.
//! - [`sys`] holds this crate's few raw syscalls and so all of its `unsafe`.
//!
//! ```no_run
//! let summary = iotrace_analysis::summary::summarize_file("t.iotrace".as_ref())?;
//! println!("{} syscalls", summary.syscalls_total);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod intervals;
pub mod spans;
pub mod stacks;
pub mod summary;
pub mod symbolize;
#[allow(unsafe_code)]
pub mod sys;
pub mod tasks;
