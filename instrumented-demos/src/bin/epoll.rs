//! The `epoll` demo server; see `iotrace_demos::strategy::epoll`.

fn main() -> std::process::ExitCode {
    iotrace_demos::server_main("epoll", iotrace_demos::strategy::epoll::serve)
}
