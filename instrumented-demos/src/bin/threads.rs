//! The `threads` demo server; see `iotrace_demos::strategy::threads`.

fn main() -> std::process::ExitCode {
    iotrace_demos::server_main("threads", iotrace_demos::strategy::threads::serve)
}
