//! `iotrace record`'s engine: start a program held (or attach to a running one), open perf
//! events on it, poll /proc, take its span batches from the span socket, and stream all of it
//! into a trace file ([`iotrace_trace`]).
//!
//! - [`record`] runs the whole recording: [`record::record`] for a launched command,
//!   [`record::RecordOptions::attach`] for `-p PID`.
//! - [`perf`] opens the per-CPU rings and counters, merges the rings' records by time, unwinds
//!   stacks and turns everything into trace records.
//! - [`procpoll`] samples /proc; [`attach`] reads what a running process already has.
//! - [`intake`] is the recorder's end of the span wire protocol ([`iotrace_wire`]).
//! - [`sys`] holds every raw syscall and so all of this crate's `unsafe`.
//!
//! ```no_run
//! let opts = iotrace_record::record::RecordOptions::new(vec!["true".into()], "t.iotrace".into());
//! let outcome = iotrace_record::record::record(&opts)?;
//! println!("{}", outcome.trace.display());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod attach;
pub mod intake;
pub mod perf;
pub mod procpoll;
pub mod record;
#[allow(unsafe_code)]
pub mod sys;
