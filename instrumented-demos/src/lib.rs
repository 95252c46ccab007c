//! Demo HTTP servers, one per I/O strategy.
//!
//! Every server answers the same keep-alive HTTP/1.1 route, `GET /work?io_ms=N&cpu_us=M`:
//! wait N ms as if for a downstream service, burn M µs of CPU in [`burn_cpu`], answer `ok`.
//! Only *how* the wait happens differs, which is what `iotrace compare` measures:
//!
//! | binary           | module                  | a waiting request holds…                   |
//! |------------------|-------------------------|--------------------------------------------|
//! | `threads`        | [`strategy::threads`]   | a whole OS thread, blocked in the kernel   |
//! | `green`          | [`strategy::green`]     | a suspended coroutine stack (one thread)   |
//! | `epoll`          | [`strategy::epoll`]     | a state-machine entry and a timer          |
//! | `tokio`          | [`strategy::tokio`]     | a pending future                           |
//! | `tokio-blocking` | [`strategy::tokio`]     | a tokio worker thread (async done wrong)   |
//!
//! Each request runs in a `request` span ([`request_span`]); green threads add `green.task`
//! and `run_slice` spans, tokio adds its own task spans. A binary is one call:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     iotrace_demos::server_main("threads", iotrace_demos::strategy::threads::serve)
//! }
//! ```
//!
//! The load generator that drives them, and the ready line they print, are the
//! `iotrace-load` crate.

#![deny(unsafe_code)]

pub mod args;
pub mod conn;
pub mod http;
pub mod shutdown;
pub mod strategy;
#[allow(unsafe_code)]
pub mod sys;
pub mod work;

use std::io::{self, Write};
use std::net::TcpListener;
use std::process::ExitCode;

pub use shutdown::Shutdown;
pub use work::{burn_cpu, request_span};

use args::{ArgsError, ServerArgs, USAGE};

/// Installs the iotrace tracing layer (a near no-op unless `IOTRACE_SOCKET` is set).
pub fn init_tracing() {
    iotrace_layer::init();
}

/// The whole `main` of a demo server: tracing, arguments, file limit, signals, bind on
/// 127.0.0.1, the `listening on 127.0.0.1:PORT` line, then `serve` until a signal.
///
/// Exit status: 0 after SIGINT/SIGTERM, 2 on bad arguments, 1 on any other failure.
pub fn server_main(
    name: &str,
    serve: impl FnOnce(TcpListener, Shutdown) -> io::Result<()>,
) -> ExitCode {
    init_tracing();
    let args = match ServerArgs::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            println!("Usage: {name} [--port <P>]\n\n{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(msg)) => {
            eprintln!("{name}: {msg}\nUsage: {name} [--port <P>]\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = iotrace_load::raise_nofile_limit() {
        eprintln!("{name}: warning: could not raise the open-file limit: {e}");
    }
    let result = Shutdown::register()
        .map_err(|e| format!("installing signal handlers: {e}"))
        .and_then(|shutdown| {
            let listener = sys::bind_loopback(args.port)
                .map_err(|e| format!("binding 127.0.0.1:{}: {e}", args.port))?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("reading the bound address: {e}"))?;
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "{}{addr}", iotrace_load::ready::PREFIX)
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("writing to stdout: {e}"))?;
            drop(stdout);
            serve(listener, shutdown).map_err(|e| format!("serving: {e}"))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{name}: {msg}");
            ExitCode::FAILURE
        }
    }
}
