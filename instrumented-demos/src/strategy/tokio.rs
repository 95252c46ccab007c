//! async/await on tokio's multi-thread runtime, one `tokio::spawn`ed task per connection.
//!
//! [`WaitMode::Async`] waits with `tokio::time::sleep`: the task returns `Pending` and the
//! worker thread serves others. [`WaitMode::Blocking`] calls `std::thread::sleep` inside the
//! poll — async done wrong — so the worker thread blocks and every task queued on it waits.
//! Both binaries (`tokio`, `tokio-blocking`) run this same code.

use std::io;
use std::net::TcpListener as StdListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::conn::{InBuf, Next};
use crate::http::{self, Action, Request, Status};
use crate::shutdown::Shutdown;
use crate::sys;
use crate::work::{burn_cpu, request_span};

/// How long runtime shutdown waits for tasks; blocked workers are abandoned after it.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// How a request's wait is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// `tokio::time::sleep(..).await`: the right way.
    Async,
    /// `std::thread::sleep(..)` inside the poll: blocks the worker thread.
    Blocking,
}

/// The `tokio` binary's server.
pub fn serve(listener: StdListener, shutdown: Shutdown) -> io::Result<()> {
    serve_with(listener, shutdown, WaitMode::Async)
}

/// The `tokio-blocking` binary's server.
pub fn serve_blocking(listener: StdListener, shutdown: Shutdown) -> io::Result<()> {
    serve_with(listener, shutdown, WaitMode::Blocking)
}

/// Runs the accept loop on a fresh multi-thread runtime until shutdown.
pub fn serve_with(listener: StdListener, shutdown: Shutdown, mode: WaitMode) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        TcpListener::from_std(listener)?
    };
    runtime.spawn(accept_loop(listener, mode));
    // Wait for the signal on this thread, outside tokio: in tokio-blocking every worker may be
    // asleep for a long time, and with them tokio's I/O driver, which would not see the signal.
    while !shutdown.requested() {
        sys::poll_readable([shutdown.as_raw_fd()], None)?;
    }
    // Tasks whose worker is blocked are abandoned after the grace period.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    Ok(())
}

/// Accepts connections and spawns one task each, for ever.
async fn accept_loop(listener: TcpListener, mode: WaitMode) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    // A peer reset is routine; there is no one to report it to.
                    let _ = serve_connection(stream, mode).await;
                });
            }
            Err(e) => {
                eprintln!("tokio: accept: {e}");
                // E.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves requests on one connection until the peer closes, an error, or `Connection: close`.
async fn serve_connection(mut stream: TcpStream, mode: WaitMode) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = InBuf::new();
    let mut out = Vec::with_capacity(128);
    loop {
        match input.next_request() {
            Next::Read => match stream.read(input.spare()).await? {
                0 => return Ok(()),
                n => input.filled(n),
            },
            Next::Malformed => {
                out.clear();
                http::write_response(Status::BadRequest, false, &mut out);
                return stream.write_all(&out).await;
            }
            Next::Request(req) => {
                out.clear();
                handle(req, mode, &mut out)
                    .instrument(request_span(&req.action))
                    .await;
                stream.write_all(&out).await?;
                if !req.keep_alive {
                    return Ok(());
                }
            }
        }
    }
}

/// Does the request's work and writes its response into `out`.
async fn handle(req: Request, mode: WaitMode, out: &mut Vec<u8>) {
    if let Action::Work(work) = req.action {
        if work.io_ms > 0 {
            match mode {
                WaitMode::Async => tokio::time::sleep(work.io_wait()).await,
                WaitMode::Blocking => std::thread::sleep(work.io_wait()),
            }
        }
        burn_cpu(work.cpu());
    }
    http::write_response(http::status_of(&req.action), req.keep_alive, out);
}
