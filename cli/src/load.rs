//! `iotrace load`: drive an HTTP/1.1 server on loopback with `iotrace_load` and print its
//! throughput and latency.

use std::process::ExitCode;

use crate::print_stdout;

pub const EXAMPLES: &str = "EXAMPLES:\n    iotrace load 'http://127.0.0.1:8080/work?io_ms=1&cpu_us=50' -c 64 -d 5s\n    iotrace load http://localhost:8080/ --requests 10000 --json\n";

#[derive(clap::Args)]
pub struct LoadArgs {
    /// `http://HOST[:PORT]/PATH?QUERY`; HOST must be a loopback address.
    url: String,
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Stop after this long (e.g. 500ms, 5s, 1m). Default 5s when --requests is not given.
    #[arg(short, long, value_parser = crate::time::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Per-request timeout (a timeout counts as an error).
    #[arg(long, default_value = "10s", value_parser = crate::time::parse_duration)]
    timeout: std::time::Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let cfg = iotrace_load::LoadConfig {
        url: args.url,
        connections: args.connections,
        duration: args.duration,
        requests: args.requests,
        timeout: args.timeout,
    };
    let report = iotrace_load::run(&cfg)?;
    if args.json {
        print_stdout(&serde_json::to_string_pretty(&report)?)?;
        print_stdout("\n")?;
    } else {
        print_stdout(&report.to_text())?;
    }
    Ok(ExitCode::SUCCESS)
}
