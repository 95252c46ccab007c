//! `iotrace compare`: record each demo server under `iotrace record`, drive it with the same
//! load, stop it, and table the costs; or table existing traces. Glue between the collector
//! (traces, table) and the demos crate (load generator); the table itself is
//! `iotrace_collector::compare`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use iotrace_collector::analysis;
use iotrace_collector::compare::{self, CompareRow, LoadFigures};
use iotrace_load as load;

use crate::print_stdout;

pub const EXAMPLES: &str = "EXAMPLES:\n    iotrace compare\n    iotrace compare --strategies threads,tokio --connections 1000 --duration 5s\n    iotrace compare iotrace-compare/threads.iotrace iotrace-compare/tokio.iotrace --json\n";

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Existing traces to table instead of running the demos.
    traces: Vec<PathBuf>,
    /// Strategies to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "threads,green,epoll,tokio,tokio-blocking"
    )]
    strategies: Vec<String>,
    /// Concurrent keep-alive connections of the load.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Milliseconds each request waits, as if for a downstream service.
    #[arg(long, default_value_t = 1)]
    io_ms: u64,
    /// Microseconds of CPU each request burns.
    #[arg(long, default_value_t = 50)]
    cpu_us: u64,
    /// Load duration per strategy (e.g. 3s).
    #[arg(short, long, default_value = "3s", value_parser = crate::time::parse_duration)]
    duration: std::time::Duration,
    /// Folder for traces, logs, table.txt and compare.json.
    #[arg(short, long, default_value = "iotrace-compare")]
    out: PathBuf,
    /// Print the table as JSON: {"rows": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let rows = if args.traces.is_empty() {
        for s in &args.strategies {
            if !STRATEGIES.contains(&s.as_str()) {
                bail!(
                    "unknown strategy `{s}`; choose from {}",
                    STRATEGIES.join(", ")
                );
            }
        }
        let plan = Plan {
            strategies: args.strategies,
            connections: args.connections,
            io_ms: args.io_ms,
            cpu_us: args.cpu_us,
            duration: args.duration,
            out_dir: args.out.clone(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let rows = run_plan(&plan)?;
        for (name, text) in [
            ("table.txt", compare::table(&rows)),
            ("compare.json", compare::json(&rows)),
        ] {
            let path = args.out.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        rows
    } else {
        from_traces(&args.traces)?
    };
    if args.json {
        print_stdout(&compare::json(&rows))?;
        print_stdout("\n")?;
    } else {
        print_stdout(&compare::table(&rows))?;
        if args.traces.is_empty() {
            print_stdout(&format!(
                "\nwrote {}/: table.txt, compare.json, and per strategy STRATEGY.iotrace (trace), STRATEGY.iotrace.load.json, STRATEGY-report.txt, STRATEGY-oncpu.svg, STRATEGY-offcpu.svg, STRATEGY-timeline.html, STRATEGY.log\n",
                args.out.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The strategies `compare` runs by default, in table order.
const STRATEGIES: [&str; 5] = ["threads", "green", "epoll", "tokio", "tokio-blocking"];

/// The load every strategy gets.
#[derive(Debug, Clone)]
struct Plan {
    strategies: Vec<String>,
    connections: usize,
    io_ms: u64,
    cpu_us: u64,
    duration: Duration,
    out_dir: PathBuf,
    progress: bool,
}

fn demo_binary(strategy: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the iotrace binary")?;
    let dir = exe.parent().context("iotrace binary has no directory")?;
    let path = dir.join(strategy);
    if !path.exists() {
        bail!(
            "the `{strategy}` demo server is not built next to {}; build it with `cargo build --release --workspace`",
            exe.display()
        );
    }
    Ok(path)
}

/// Wait for the server's `listening on ADDR` line (its stdout is drained afterwards).
fn wait_listening(child: &mut Child, timeout: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("server stdout")?;
    iotrace_load::ready::wait_for_address(stdout, timeout).ok_or_else(|| {
        anyhow::anyhow!("the server did not print `listening on ADDR` within {timeout:?}")
    })
}

fn stop(child: &mut Child, grace: Duration) -> anyhow::Result<()> {
    iotrace_collector::sys::kill(child.id() as i32, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A third SIGINT makes iotrace kill the server; then wait for the file to be finished.
    for _ in 0..3 {
        iotrace_collector::sys::kill(child.id() as i32, libc::SIGINT);
    }
    child.wait()?;
    Ok(())
}

/// Record and load one strategy; returns its row.
fn run_one(plan: &Plan, strategy: &str) -> anyhow::Result<CompareRow> {
    let demo = demo_binary(strategy)?;
    let trace = plan.out_dir.join(format!("{strategy}.iotrace"));
    let log_path = plan.out_dir.join(format!("{strategy}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["record", "-q", "-o"])
        .arg(&trace)
        .arg("--")
        .arg(&demo)
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting `iotrace record -- {}`", demo.display()))?;
    let addr = match wait_listening(&mut child, Duration::from_secs(15)) {
        Ok(a) => a,
        Err(e) => {
            let _ = stop(&mut child, Duration::from_secs(2));
            return Err(e.context(format!("{strategy}: see {}", log_path.display())));
        }
    };
    let cfg = load::LoadConfig {
        url: format!(
            "http://{addr}/work?io_ms={}&cpu_us={}",
            plan.io_ms, plan.cpu_us
        ),
        connections: plan.connections,
        duration: Some(plan.duration),
        requests: None,
        timeout: Duration::from_secs(10),
    };
    let result = load::run(&cfg);
    stop(&mut child, Duration::from_secs(10))?;
    let report = result.with_context(|| format!("{strategy}: load generator"))?;
    let figures = LoadFigures {
        requests: report.requests,
        errors: report.errors,
        req_per_s: report.req_per_s,
        p50_us: report.latency_us.p50 as f64,
        p99_us: report.latency_us.p99 as f64,
        connections: plan.connections,
    };
    let sidecar = compare::sidecar_path(&trace);
    std::fs::write(&sidecar, serde_json::to_string_pretty(&figures)?)
        .with_context(|| format!("writing {}", sidecar.display()))?;
    let summary =
        analysis::summarize_file(&trace).with_context(|| format!("reading {}", trace.display()))?;
    crate::flamegraph::write_compare_svgs(&trace, &plan.out_dir, strategy);
    write_report_and_timeline(&trace, &plan.out_dir, strategy, &summary);
    Ok(compare::row(strategy, &summary, Some(&figures), &trace))
}

/// `STRATEGY-report.txt` (what `iotrace report` prints) and `STRATEGY-timeline.html`. A
/// failure is a warning: the table and the trace are still worth having.
fn write_report_and_timeline(
    trace: &Path,
    dir: &Path,
    strategy: &str,
    summary: &analysis::Summary,
) {
    let report = dir.join(format!("{strategy}-report.txt"));
    if let Err(e) = std::fs::write(&report, iotrace_collector::report::text(summary)) {
        eprintln!("iotrace: warning: {}: {e}", report.display());
    }
    let html = dir.join(format!("{strategy}-timeline.html"));
    let opts = iotrace_collector::timeline::TimelineOptions::default();
    if let Err(e) = iotrace_collector::timeline::write_timeline(trace, &html, &opts) {
        eprintln!("iotrace: warning: {}: {e}", html.display());
    }
}

/// Run the whole plan: one row per strategy, in order.
fn run_plan(plan: &Plan) -> anyhow::Result<Vec<CompareRow>> {
    std::fs::create_dir_all(&plan.out_dir)
        .with_context(|| format!("creating {}", plan.out_dir.display()))?;
    let bar = if plan.progress {
        indicatif::ProgressBar::new(plan.strategies.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut rows = Vec::new();
    for strategy in &plan.strategies {
        bar.set_message(format!(
            "{strategy}: {} connections, io_ms={}, cpu_us={}, {:?}",
            plan.connections, plan.io_ms, plan.cpu_us, plan.duration
        ));
        rows.push(run_one(plan, strategy)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Rows from existing traces (their `.load.json` sidecars give requests and latency; without
/// one, requests are the program's `request` spans).
fn from_traces(traces: &[PathBuf]) -> anyhow::Result<Vec<CompareRow>> {
    traces
        .iter()
        .map(|trace| {
            let summary = analysis::summarize_file(trace)?;
            let name = strategy_name(trace, &summary.argv);
            Ok(compare::row(
                &name,
                &summary,
                compare::load_sidecar(trace).as_ref(),
                trace,
            ))
        })
        .collect()
}

fn strategy_name(trace: &Path, argv: &[String]) -> String {
    argv.first()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| trace.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| trace.display().to_string())
}
