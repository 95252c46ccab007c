//! A child program whose behaviour the end-to-end tests know exactly.
//!
//! `fixture MODE ARGS…`:
//! - `sleep MS COUNT`      sleep MS milliseconds COUNT times
//! - `writes N`            N one-byte write(2) calls to /dev/null
//! - `spin MS`             burn CPU for MS milliseconds in `burn_cpu`, whose leaves `leaf_a` …
//!   `leaf_e` do work in the ratio 16:8:4:2:1 (a known on-CPU profile)
//! - `burn MS`             burn CPU for MS milliseconds in `flat::burn_cpu` itself, which calls
//!   nothing in its loop but the clock, once per million steps (a known flat profile)
//! - `nap MS COUNT`        like `sleep`, but from the function `nap` (a known off-CPU path)
//! - `spinners N MS`       N processes that each burn CPU for MS milliseconds, concurrently
//! - `threads N`           N named threads, all alive at once with main, that each sleep
//!   20 ms, then join
//! - `fork`                spawn a grandchild process (`fixture sleep 20 2`) and wait for it
//! - `fork-on-cpu CPU MS`  move to CPU (other than the one it exec'd on, under `taskset`), then
//!   fork a child that burns CPU for MS milliseconds in `burn_cpu`, and wait for it
//! - `span-garbage N`      misbehave on the span socket ($IOTRACE_SOCKET): random bytes, then
//!   a good hello and half a frame, hanging up each time; then N one-byte writes to /dev/null
//! - `span-clients N`      N span clients connected at once, each sending a hello and one
//!   frame of one Enter record; all held open until every one is sent, then closed
//! - `span-abuse FLOOD_MB HUGE HALF`  a flood (FLOOD_MB MiB of valid 4 MiB frames on one
//!   client), HUGE clients with a 4 GiB length prefix (each waits to be disconnected), HALF
//!   clients each sending as much of a 4 MiB frame as the recorder takes, held open
//!   (non-blocking) while the recorder's peak RSS is read
//! - `span-as-nobody`      run `setpriv` as nobody to connect to the span socket; prints
//!   `connect: permission denied` (exit 0) or what happened instead (exit 3)
//! - `span-connect`        connect to $IOTRACE_SOCKET; print the outcome (used by the above)
//! - `announce FILE MS COUNT`  write own pid to FILE, then sleep MS milliseconds COUNT times
//! - `daemon FILE`         start a detached grandchild (new session, stdio on /dev/null) that
//!   sleeps 30 s; write its pid to FILE and exit at once
//! - `segv`                die of SIGSEGV
//! - `pingpong N`          threads `ping` and `pong` hand a turn back and forth N times over a
//!   `Mutex` and a `Condvar`: each waits in futex for the other to wake it
//!
//! Every mode prints the recorder's peak RSS (`recorder VmHWM N kB`, its parent's) on stdout
//! when FIXTURE_PARENT_HWM=1, and exits with `$FIXTURE_EXIT` (default 0) when it ends normally.

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

/// A function that does its own work, as a C `burn_cpu` loop would.
mod flat {
    use std::time::{Duration, Instant};

    #[inline(never)]
    pub fn burn_cpu(ms: u64) -> u64 {
        let end = Instant::now() + Duration::from_millis(ms);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while Instant::now() < end {
            x = xorshift!(x, 1_000_000);
        }
        x
    }
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
        "burn" => {
            std::hint::black_box(flat::burn_cpu(arg(&args, 1, 100)));
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
        "churn" => {
            // Prints its pid, then for SECS seconds keeps two short-lived threads going, each
            // making exactly 100 one-byte writes to /dev/null: threads created all the time,
            // for `record -p` to follow.
            println!("churn {}", std::process::id());
            let _ = std::io::stdout().flush();
            let until = std::time::Instant::now() + Duration::from_secs(arg(&args, 1, 5));
            while std::time::Instant::now() < until {
                let pair: Vec<_> = (0..2)
                    .map(|_| {
                        std::thread::Builder::new()
                            .name("churn".into())
                            .spawn(|| {
                                let mut f = std::fs::OpenOptions::new()
                                    .write(true)
                                    .open("/dev/null")
                                    .expect("open /dev/null");
                                for _ in 0..100 {
                                    f.write_all(b"x").expect("write /dev/null");
                                }
                                std::thread::sleep(Duration::from_millis(1));
                            })
                            .expect("spawn thread")
                    })
                    .collect();
                for h in pair {
                    h.join().expect("join");
                }
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
        "span-clients" => span_clients(arg(&args, 1, 500) as usize),
        "span-abuse" => span_abuse(
            arg(&args, 1, 64) as usize,
            arg(&args, 2, 50) as usize,
            arg(&args, 3, 200) as usize,
        ),
        "span-as-nobody" => {
            let me = std::env::current_exe().expect("current_exe");
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(me)
                .arg("span-connect")
                .output()
                .expect("run setpriv");
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            print!("{said}");
            if !said.contains("connect: permission denied") {
                std::process::exit(3);
            }
        }
        "span-connect" => {
            let socket = std::env::var_os("IOTRACE_SOCKET").expect("run under iotrace record");
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(_) => println!("connect: connected"),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    println!("connect: permission denied")
                }
                Err(e) => println!("connect: {e}"),
            }
        }
        "announce" => {
            let file = args.get(1).expect("announce FILE MS COUNT");
            std::fs::write(file, std::process::id().to_string()).expect("write pid file");
            nap(arg(&args, 2, 10), arg(&args, 3, 3000));
        }
        "daemon" => {
            use std::os::unix::process::CommandExt;
            use std::process::Stdio;
            let file = args.get(1).expect("daemon FILE");
            let me = std::env::current_exe().expect("current_exe");
            let mut cmd = std::process::Command::new(me);
            cmd.args(["sleep", "30000", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: setsid is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            let grandchild = cmd.spawn().expect("spawn daemon");
            std::fs::write(file, grandchild.id().to_string()).expect("write pid file");
            // Not waited for: it outlives us.
            std::mem::forget(grandchild);
        }
        "pingpong" => pingpong(arg(&args, 1, 1000)),
        "segv" => {
            // Rust's runtime handles SIGSEGV (to report stack overflows) and a raised one
            // would return: restore the default action first.
            // SAFETY: resetting a signal's disposition and raising it; the default action
            // ends the process.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
        _ => {
            eprintln!(
                "usage: fixture sleep|nap|writes|spin|spinners|threads|fork|span-garbage|span-clients|span-abuse|span-as-nobody|span-connect|announce|daemon|segv|pingpong ARGS"
            );
            std::process::exit(2);
        }
    }
    if std::env::var("FIXTURE_PARENT_HWM").as_deref() == Ok("1") {
        print_parent_hwm();
    }
    if let Some(code) = std::env::var("FIXTURE_EXIT")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        std::process::exit(code);
    }
}

/// Prints the parent's (the recorder's) VmHWM line: `recorder VmHWM N kB`.
/// Threads `ping` and `pong` take turns `n` times each: a turn is handed over under the
/// mutex and the other thread is woken from its condvar wait.
fn pingpong(n: u64) {
    use std::sync::{Arc, Condvar, Mutex};
    // Whose turn it is: false for ping, true for pong.
    let turn = Arc::new((Mutex::new(false), Condvar::new()));
    let player = |name: &str, me: bool| {
        let turn = Arc::clone(&turn);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let (lock, cv) = &*turn;
                for _ in 0..n {
                    let mut t = lock.lock().expect("lock");
                    while *t != me {
                        t = cv.wait(t).expect("wait");
                    }
                    *t = !me;
                    cv.notify_one();
                }
            })
            .expect("spawn thread")
    };
    let ping = player("ping", false);
    let pong = player("pong", true);
    ping.join().expect("join");
    pong.join().expect("join");
}

fn print_parent_hwm() {
    // SAFETY: getppid has no side effects.
    let parent = unsafe { libc::getppid() };
    let status = std::fs::read_to_string(format!("/proc/{parent}/status")).unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        let kb = line.trim_start_matches("VmHWM:").trim();
        println!("recorder VmHWM {kb}");
    }
}

fn span_socket() -> std::ffi::OsString {
    std::env::var_os("IOTRACE_SOCKET").expect("run under iotrace record")
}

/// The span wire's hello for this process (layer/WIRE.md).
fn hello() -> Vec<u8> {
    let mut h = b"IOTRSPAN".to_vec();
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&std::process::id().to_le_bytes());
    h
}

/// A frame of `n` Enter records of thread `tid`.
fn frame(tid: u32, n: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + 17 * n);
    p.extend_from_slice(&std::process::id().to_le_bytes());
    p.extend_from_slice(&tid.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    for i in 0..n as u64 {
        p.push(3);
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
    }
    let mut f = (p.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&p);
    f
}

/// Records in the largest frame the wire allows (4 MiB after the length prefix).
const BIG: usize = ((4 << 20) - 16) / 17;

fn span_clients(n: usize) {
    use std::os::unix::net::UnixStream;
    let socket = span_socket();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = UnixStream::connect(&socket).expect("connect span socket");
        let mut bytes = hello();
        bytes.extend_from_slice(&frame(i as u32 + 1, 1));
        c.write_all(&bytes).expect("send to span socket");
        clients.push(c);
    }
    if std::env::var("FIXTURE_PARENT_HWM").as_deref() == Ok("1") {
        print_parent_hwm();
    }
    drop(clients);
}

fn span_abuse(flood_mb: usize, huge: usize, half: usize) {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let socket = span_socket();
    // A flood of valid 4 MiB frames on one client (blocking writes: the recorder paces us).
    let big = frame(1, BIG);
    let mut flood = UnixStream::connect(&socket).expect("connect span socket");
    flood.write_all(&hello()).expect("hello");
    for _ in 0..(flood_mb << 20).div_ceil(big.len()) {
        flood.write_all(&big).expect("flood");
    }
    drop(flood);
    // Length prefixes that claim 4 GiB: each is disconnected at once.
    for _ in 0..huge {
        let mut c = UnixStream::connect(&socket).expect("connect span socket");
        let mut bytes = hello();
        bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        c.write_all(&bytes).expect("send");
        let mut sink = [0u8; 16];
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.read(&mut sink); // 0 or ECONNRESET once the recorder hangs up
    }
    // Half frames: as much of a 4 MiB frame as the recorder takes, never finished.
    let part = &big[..big.len() - 100];
    let mut held = Vec::with_capacity(half);
    for _ in 0..half {
        let mut c = UnixStream::connect(&socket).expect("connect span socket");
        c.write_all(&hello()).expect("hello");
        c.set_nonblocking(true).expect("nonblocking");
        held.push((c, 0usize));
    }
    // Round after round, push more of each until the recorder has taken nothing for 20
    // rounds: it reads large incomplete frames only up to its memory budget.
    let mut idle = 0;
    while idle < 20 {
        let mut progress = false;
        for (c, sent) in held.iter_mut() {
            while *sent < part.len() {
                match c.write(&part[*sent..]) {
                    Ok(n) => {
                        *sent += n;
                        progress = true;
                    }
                    Err(_) => break,
                }
            }
        }
        if progress {
            idle = 0;
        } else {
            idle += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let offered: usize = held.iter().map(|(_, sent)| *sent).sum();
    println!("half frames: {} MiB taken by the recorder", offered >> 20);
    // Give the recorder a moment to read what it will of them before its RSS is read.
    std::thread::sleep(Duration::from_millis(500));
    print_parent_hwm();
    drop(held);
}
