//! The `green` demo server; see `iotrace_demos::strategy::green`.

fn main() -> std::process::ExitCode {
    iotrace_demos::server_main("green", iotrace_demos::strategy::green::serve)
}
