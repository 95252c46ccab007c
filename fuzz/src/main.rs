//! `iotrace-fuzz [INPUTS] [--seeds DIR]... [--target NAME] [--rng SEED] [--crashes DIR]`:
//! fuzz every decoder (or one), INPUTS in all (default 100000) split evenly between the
//! targets. Prints one line per target, then `N inputs, P panics, peak RSS X MB`; each failing
//! input is written to the crashes folder (default `fuzz/crashes`). Exits 1 if any failed.

use std::path::PathBuf;
use std::process::ExitCode;

use iotrace_fuzz::targets::{Seeds, Target};
use iotrace_fuzz::{fuzz_target, Outcome};

fn main() -> ExitCode {
    let mut inputs: u64 = 100_000;
    let mut seed_dirs: Vec<PathBuf> = Vec::new();
    let mut only: Option<String> = None;
    let mut rng: u64 = 1;
    let mut crashes = PathBuf::from("fuzz/crashes");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seeds" => seed_dirs.extend(args.next().map(PathBuf::from)),
            "--target" => only = args.next(),
            "--rng" => rng = args.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            "--crashes" => crashes = args.next().map(PathBuf::from).unwrap_or(crashes),
            n => match n.replace('_', "").parse() {
                Ok(n) => inputs = n,
                Err(_) => {
                    eprintln!("usage: iotrace-fuzz [INPUTS] [--seeds DIR]... [--target trace_file|trace_frame|span_wire|perf_records] [--rng SEED] [--crashes DIR]");
                    return ExitCode::from(2);
                }
            },
        }
    }
    let mut seeds = Seeds::committed();
    for dir in &seed_dirs {
        match seeds.add_dir(dir) {
            Ok(n) => eprintln!("seeds: {n} traces from {}", dir.display()),
            Err(e) => eprintln!("seeds: cannot read {}: {e}", dir.display()),
        }
    }
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name()))
        .collect();
    if targets.is_empty() {
        eprintln!("iotrace-fuzz: no target named {only:?}");
        return ExitCode::from(2);
    }
    let per_target = inputs.div_ceil(targets.len() as u64);
    let started = std::time::Instant::now();
    let mut total = Outcome::default();
    for target in targets {
        let t0 = std::time::Instant::now();
        let outcome = fuzz_target(target, &seeds, per_target, rng);
        println!(
            "{:<13} {} inputs ({} seeds), {} panics, {:.1} s",
            target.name(),
            outcome.inputs,
            seeds.for_target(target).len(),
            outcome.panics,
            t0.elapsed().as_secs_f64()
        );
        for (i, f) in outcome.failures.iter().enumerate() {
            let _ = std::fs::create_dir_all(&crashes);
            let path = crashes.join(format!("{}-{i}.bin", target.name()));
            let _ = std::fs::write(&path, &f.input);
            println!("  FAILED: {} ({})", f.message, path.display());
        }
        total.add(outcome);
    }
    println!("{}", total.summary());
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
    if total.panics == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
