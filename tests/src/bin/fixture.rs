//! A child program whose behaviour the end-to-end tests know exactly.
//!
//! `fixture MODE ARGS…`:
//! - `sleep MS COUNT`      sleep MS milliseconds COUNT times
//! - `writes N`            N one-byte write(2) calls to /dev/null
//! - `spin MS`             burn CPU for MS milliseconds in `burn_cpu`, whose leaves `leaf_a` …
//!   `leaf_e` do work in the ratio 16:8:4:2:1 (a known on-CPU profile)
//! - `nap MS COUNT`        like `sleep`, but from the function `nap` (a known off-CPU path)
//! - `spinners N MS`       N processes that each burn CPU for MS milliseconds, concurrently
//! - `threads N`           N named threads, all alive at once with main, that each sleep
//!   20 ms, then join
//! - `fork`                spawn a grandchild process (`fixture sleep 20 2`) and wait for it
//! - `fork-on-cpu CPU MS`  move to CPU (other than the one it exec'd on, under `taskset`), then
//!   fork a child that burns CPU for MS milliseconds in `burn_cpu`, and wait for it
//! - `span-garbage N`      misbehave on the span socket ($IOTRACE_SOCKET): random bytes, then
//!   a good hello and half a frame, hanging up each time; then N one-byte writes to /dev/null

use std::io::Write;
use std::time::{Duration, Instant};

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// `$n` xorshift steps: plain shifts and xors, so that even a debug build calls nothing.
macro_rules! xorshift {
    ($x:expr, $n:expr) => {{
        let mut x: u64 = $x;
        let mut i = 0;
        while i < $n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i += 1;
        }
        x
    }};
}

#[inline(never)]
fn leaf_a(x: u64) -> u64 {
    xorshift!(x, 1600)
}

#[inline(never)]
fn leaf_b(x: u64) -> u64 {
    xorshift!(x, 800)
}

#[inline(never)]
fn leaf_c(x: u64) -> u64 {
    xorshift!(x, 400)
}

#[inline(never)]
fn leaf_d(x: u64) -> u64 {
    xorshift!(x, 200)
}

#[inline(never)]
fn leaf_e(x: u64) -> u64 {
    xorshift!(x, 100)
}

/// Burns CPU for `ms` milliseconds, all of it in the leaves above (16:8:4:2:1).
#[inline(never)]
fn burn_cpu(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < end {
        for _ in 0..20 {
            x = leaf_e(leaf_d(leaf_c(leaf_b(leaf_a(x)))));
        }
    }
    x
}

/// Sleeps `ms` milliseconds `count` times: the off-CPU path goes through here.
#[inline(never)]
fn nap(ms: u64, count: u64) {
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    match mode {
        "sleep" => {
            for _ in 0..arg(&args, 2, 1) {
                std::thread::sleep(Duration::from_millis(arg(&args, 1, 1)));
            }
        }
        "nap" => nap(arg(&args, 1, 10), arg(&args, 2, 1)),
        "writes" => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("open /dev/null");
            for _ in 0..arg(&args, 1, 1) {
                f.write_all(b"x").expect("write /dev/null");
            }
        }
        "spin" => {
            std::hint::black_box(burn_cpu(arg(&args, 1, 100)));
        }
        "spinners" => {
            let me = std::env::current_exe().expect("current_exe");
            let ms = arg(&args, 2, 300).to_string();
            let children: Vec<_> = (0..arg(&args, 1, 3))
                .map(|_| {
                    std::process::Command::new(&me)
                        .args(["spin", &ms])
                        .spawn()
                        .expect("spawn")
                })
                .collect();
            for mut c in children {
                c.wait().expect("wait");
            }
        }
        "threads" => {
            // The workers and main are all alive at once: none sleeps before all have started.
            let n = arg(&args, 1, 8) as usize;
            let all_started = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let all_started = all_started.clone();
                    std::thread::Builder::new()
                        .name(format!("worker-{i}"))
                        .spawn(move || {
                            all_started.wait();
                            std::thread::sleep(Duration::from_millis(20))
                        })
                        .expect("spawn thread")
                })
                .collect();
            all_started.wait();
            for h in handles {
                h.join().expect("join");
            }
        }
        "fork-on-cpu" => {
            let cpu = arg(&args, 1, 0) as usize;
            // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity
            // reads it. fork in this single-threaded program; the child only burns CPU and
            // calls _exit.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    eprintln!("fixture: sched_setaffinity({cpu}) failed");
                    std::process::exit(2);
                }
                match libc::fork() {
                    0 => {
                        std::hint::black_box(burn_cpu(arg(&args, 2, 200)));
                        libc::_exit(0);
                    }
                    -1 => std::process::exit(2),
                    child => {
                        let mut status = 0;
                        libc::waitpid(child, &mut status, 0);
                    }
                }
            }
        }
        "fork" => {
            let me = std::env::current_exe().expect("current_exe");
            let status = std::process::Command::new(me)
                .args(["sleep", "20", "2"])
                .status()
                .expect("spawn grandchild");
            std::process::exit(status.code().unwrap_or(1));
        }
        "span-garbage" => {
            use std::os::unix::net::UnixStream;
            let socket = std::env::var_os("IOTRACE_SOCKET").expect("run under iotrace record");
            let mut seed = 0x2545F4914F6CDD1Du64;
            let junk: Vec<u8> = (0..4096)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut garbage = UnixStream::connect(&socket).expect("connect span socket");
            let _ = garbage.write_all(&junk);
            drop(garbage);
            let mut half = UnixStream::connect(&socket).expect("connect span socket");
            let mut hello = b"IOTRSPAN".to_vec();
            hello.extend_from_slice(&1u16.to_le_bytes());
            hello.extend_from_slice(&0u16.to_le_bytes());
            hello.extend_from_slice(&std::process::id().to_le_bytes());
            hello.extend_from_slice(&1000u32.to_le_bytes());
            hello.extend_from_slice(&[0u8; 10]);
            let _ = half.write_all(&hello);
            drop(half);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("open /dev/null");
            for _ in 0..arg(&args, 1, 1000) {
                f.write_all(b"x").expect("write /dev/null");
            }
        }
        _ => {
            eprintln!(
                "usage: fixture sleep|nap|writes|spin|spinners|threads|fork|span-garbage ARGS"
            );
            std::process::exit(2);
        }
    }
}
