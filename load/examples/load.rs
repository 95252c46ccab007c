//! Drives a URL with the load generator and prints the report, for checking by hand:
//!
//! ```text
//! cargo run -p iotrace-load --example load -- http://127.0.0.1:PORT/work?io_ms=1 1000 3
//! ```
//!
//! Arguments: URL, connections (default 16), seconds (default 5). Add `--json` for JSON.

use std::process::ExitCode;
use std::time::Duration;

use iotrace_load::{self as load, LoadConfig};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    let Some(url) = args.first() else {
        eprintln!("usage: load URL [CONNECTIONS] [SECONDS] [--json]");
        return ExitCode::from(2);
    };
    let connections = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    let seconds = args
        .get(2)
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(5.0);
    let cfg = LoadConfig {
        connections,
        duration: Some(Duration::from_secs_f64(seconds)),
        ..LoadConfig::new(url.as_str())
    };
    match load::run(&cfg) {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("load: {e}"),
        },
        Ok(report) => print!("{}", report.to_text()),
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
