//! The tracing layer a program links so `iotrace record` sees its spans and tokio tasks.
//!
//! ```no_run
//! // First thing in main. Records when started by `iotrace record` (which sets
//! // IOTRACE_SOCKET), or while `iotrace record -p PID` is attached; otherwise a disabled span
//! // costs what it costs with no subscriber, and a thread looks for a recorder 5 times a second
//! // (one `stat`). IOTRACE_ATTACH=0 turns attaching off: nothing is installed then.
//! iotrace_layer::init();
//! // ... the program, with `tracing` spans, or tokio built with
//! // `--cfg tokio_unstable` and feature `tracing` for one span per task.
//! ```
//!
//! To keep another layer (say, a log formatter), compose it yourself:
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! tracing_subscriber::registry().with(iotrace_layer::layer()).init();
//! ```
//!
//! What the layer records — span creation (with parent, callsite and fields), enter, exit, close,
//! recorded values and events, each with the CLOCK_MONOTONIC time and the kernel tid — and how
//! it travels to the recorder is specified in `WIRE.md` beside this crate.
//!
//! Cost: each callback writes a compact record into a fixed-size buffer owned by the calling
//! thread, with no lock and no allocation in the steady state; a background thread writes full
//! buffers to the socket. When that falls behind, whole buffers are dropped and counted, never
//! waited for: the program is never blocked by the recorder. A thread's buffer (32 KiB) goes to
//! the writer when full, at the thread's first record after it is 50 ms old, when the thread
//! exits, and at [`flush`] or `exit()`; a thread that sleeps keeps its last records until then.
//! The one allocation per span is the 8-byte id the registry stores in the span's extensions.
//!
//! Yield sites: with tokio's waker events the layer also records `waker.clone` (a future storing
//! its task's waker before returning Pending) and walks the calling thread's frame pointers at
//! `waker.clone` and `waker.wake`, so that `iotrace report` can say at which await each task
//! waited and who woke it. `IOTRACE_YIELD_SITES=0` or
//! [`IotraceLayer::with_yield_sites`]`(false)` turns that off.
//!
//! Span ids: tracing reuses a span's id after it closes; the layer gives every span its own id
//! that is never reused in the process, and translates the `task.id` of tokio's waker events
//! (a tracing span id) into it.

#![deny(unsafe_code)]

mod encode;
mod layer;
mod local;
mod sink;
#[allow(unsafe_code)]
mod sys;

use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

pub use layer::IotraceLayer;
pub use sink::{ATTACH_ENV, SOCKET_ENV};

/// The layer, connected to the recorder named by `IOTRACE_SOCKET`.
///
/// The first call in a process connects (printing one warning to stderr if that fails); later
/// calls share the same connection. Without the variable, or after a failed connection, the layer
/// is inert. Compose it with `tracing_subscriber::registry()`.
pub fn layer() -> IotraceLayer {
    IotraceLayer::new(sink::get())
}

/// Installs `registry() + layer()` as the global subscriber: recording when `IOTRACE_SOCKET` is
/// set, or else attachable (recording while `iotrace record -p` is attached; WIRE.md,
/// "Attaching"), with the global max level held at OFF while detached, so that spans cost what
/// they cost with no subscriber. With `IOTRACE_ATTACH=0` and no `IOTRACE_SOCKET`, nothing.
///
/// Does nothing if the connection to `IOTRACE_SOCKET` fails, or if a global subscriber is
/// already installed. Never panics.
pub fn init() {
    let launched = std::env::var_os(SOCKET_ENV).is_some_and(|v| !v.is_empty());
    if !launched && !sink::attach_enabled() {
        return;
    }
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let layer = layer();
    if !(layer.is_recording() || layer.is_attachable()) {
        return;
    }
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(layer.off_while_detached()),
    );
}

/// Hands the calling thread's buffered records to the writer thread and waits, at most 200 ms,
/// until everything queued so far is on the socket.
///
/// Exiting threads hand off their buffers by themselves, and `exit()` runs the same flush for the
/// exiting thread; call this before ending the process in other ways, or to bound latency.
pub fn flush() {
    sink::flush_for(Duration::from_millis(200));
}

/// Records this process has dropped so far (also sent to the recorder with every frame).
pub fn dropped_events() -> u64 {
    sink::dropped()
}
