//! The `tokio-blocking` demo server: the `tokio` server with `std::thread::sleep` in its
//! handler, blocking the worker thread; see `iotrace_demos::strategy::tokio`.

fn main() -> std::process::ExitCode {
    iotrace_demos::server_main(
        "tokio-blocking",
        iotrace_demos::strategy::tokio::serve_blocking,
    )
}
