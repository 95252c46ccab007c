//! The `tokio` demo server: async/await done right; see `iotrace_demos::strategy::tokio`.

fn main() -> std::process::ExitCode {
    iotrace_demos::server_main("tokio", iotrace_demos::strategy::tokio::serve)
}
