//! Six classic async-Rust bugs, one tokio task each, for `iotrace report` to find (and for a
//! tutorial to show what each looks like in a trace). Two worker threads, so the bugs that hold
//! a worker hurt everyone; a seventh task, `healthy`, just sleeps and works a little.
//!
//! - `--long-poll`, task `spinner`: 20 polls that each burn 25 ms of CPU.
//!   Symptom: other tasks on that worker wait. Fix: `spawn_blocking` (or rayon) for CPU work.
//! - `--std-mutex`, 4 tasks `locker`: a `std::sync::Mutex` held for 3 ms of CPU work.
//!   Symptom: workers blocked in futex. Fix: hold std locks for microseconds, never under load.
//! - `--held-across-await`, task `holder` and 3 tasks `waiter`: a `tokio::sync::Mutex` guard held
//!   across a 20 ms sleep. Symptom: waiters idle 20 ms for a lock. Fix: drop the guard first.
//! - `--lost-waker`, task `lost`: a future returns `Pending` without keeping `cx.waker()`.
//!   Symptom: a task idle forever. Fix: store the waker and wake it when ready.
//! - `--self-wake`, task `busy_waiter`: a future wakes itself 200,000 times while "waiting".
//!   Symptom: many tiny polls, all self-woken. Fix: wake from where the event happens.
//! - `--blocking-pool`, task `blocking_spawner`: 1,000 `spawn_blocking` jobs of 10 ms.
//!   Symptom: jobs queue for the 16 pool threads. Fix: bound them (a `Semaphore`) or batch.
//!
//! `asyncbugs [--all | --none | BUG FLAGS...] [--blocking-threads N]`: with no bug flag, all
//! bugs run (`--all`); `--none` runs only `healthy`. `--blocking-threads N` (default 16) is the
//! runtime's `max_blocking_threads`. All tasks start together; the program prints one line per
//! bug (and one for `healthy`), then exits 0 within a few seconds, cancelling `lost` at
//! shutdown. No sockets.
//!
//! Each bug's line at fault carries a trailing `BUG:` comment naming its kind (`long_poll`,
//! `lock_contention`, `held_across_await`, `lost_waker`, `self_wake`, `blocking_pool`); the
//! end-to-end tests find those lines by scanning this file.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// `spinner`: polls, each this long on CPU.
const LONG_POLLS: u32 = 20;
const LONG_POLL_CPU: Duration = Duration::from_millis(25);
const LONG_POLL_SLEEP: Duration = Duration::from_millis(5);

/// `locker`: tasks, lock rounds per task, CPU time with the lock held.
const LOCKERS: u32 = 4;
const LOCK_ROUNDS: u32 = 25;
const LOCK_HELD_CPU: Duration = Duration::from_millis(3);

/// `holder` and `waiter`: the holder sleeps with the tokio lock held.
const HOLDER_ROUNDS: u32 = 10;
const HOLDER_SLEEP: Duration = Duration::from_millis(20);
const WAITERS: u32 = 3;
const WAITER_ROUNDS: u32 = 10;
const WAITER_WORK: Duration = Duration::from_micros(5);
const WAITER_SLEEP: Duration = Duration::from_millis(5);

/// `busy_waiter`: how many times it wakes itself before it is ready.
const SELF_WAKES: u32 = 200_000;

/// `blocking_spawner`: jobs, each sleeping this long on a blocking-pool thread.
const BLOCKING_JOBS: u32 = 1_000;
const BLOCKING_JOB_SLEEP: Duration = Duration::from_millis(10);
const DEFAULT_BLOCKING_THREADS: usize = 16;

/// `healthy`: short sleeps, a little work after each.
const HEALTHY_ROUNDS: u32 = 200;
const HEALTHY_SLEEP: Duration = Duration::from_millis(2);
const HEALTHY_WORK: Duration = Duration::from_micros(20);

const USAGE: &str = "usage: asyncbugs [--all | --none | --long-poll --std-mutex \
--held-across-await --lost-waker --self-wake --blocking-pool] [--blocking-threads N]";

const HELP: &str = "\
asyncbugs: one tokio task per classic async bug, for `iotrace record`/`report`.

Bugs (any combination; none given means --all):
  --long-poll            spinner: 20 polls of 25 ms on CPU, blocking a worker each time
  --std-mutex            4 x locker: a std::sync::Mutex held 3 ms on CPU; waiters block in futex
  --held-across-await    holder sleeps 20 ms holding a tokio Mutex; 3 x waiter queue for it
  --lost-waker           lost: returns Pending without keeping its waker; never woken again
  --self-wake            busy_waiter: wakes itself 200,000 times instead of waiting
  --blocking-pool        blocking_spawner: 1,000 spawn_blocking jobs of 10 ms queue for the pool

Options:
  --all                  run every bug (the default)
  --none                 run no bug, only the `healthy` task
  --blocking-threads N   the runtime's max_blocking_threads (1..=512, default 16)
  --help                 this text

A `healthy` task (200 sleeps of 2 ms, 20 us of work after each) always runs.";

/// Which bugs to run, and the blocking pool's size.
#[derive(Clone, Copy, Default)]
struct Bugs {
    long_poll: bool,
    std_mutex: bool,
    held_across_await: bool,
    lost_waker: bool,
    self_wake: bool,
    blocking_pool: bool,
    blocking_threads: usize,
}

enum Args {
    Run(Bugs),
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut bugs = Bugs {
        blocking_threads: DEFAULT_BLOCKING_THREADS,
        ..Bugs::default()
    };
    let (mut all, mut none, mut any) = (false, false, false);
    while let Some(arg) = args.next() {
        let flag = match arg.as_str() {
            "--help" | "-h" => return Ok(Args::Help),
            "--all" => &mut all,
            "--none" => &mut none,
            "--long-poll" => &mut bugs.long_poll,
            "--std-mutex" => &mut bugs.std_mutex,
            "--held-across-await" => &mut bugs.held_across_await,
            "--lost-waker" => &mut bugs.lost_waker,
            "--self-wake" => &mut bugs.self_wake,
            "--blocking-pool" => &mut bugs.blocking_pool,
            "--blocking-threads" => {
                let n = args.next().ok_or("--blocking-threads needs a number")?;
                bugs.blocking_threads = match n.parse() {
                    Ok(n @ 1..=512) => n,
                    _ => return Err(format!("--blocking-threads {n}: expected 1..=512")),
                };
                continue;
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        *flag = true;
        any |= !matches!(arg.as_str(), "--all" | "--none");
    }
    if none && (all || any) {
        return Err("--none runs no bug: it cannot be combined with bug flags".into());
    }
    if !none && (all || !any) {
        bugs.long_poll = true;
        bugs.std_mutex = true;
        bugs.held_across_await = true;
        bugs.lost_waker = true;
        bugs.self_wake = true;
        bugs.blocking_pool = true;
    }
    Ok(Args::Run(bugs))
}

/// Burns `d` of CPU without a syscall (`Instant::now` reads the clock through the vDSO).
#[inline(never)]
fn burn_cpu(d: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        n = black_box(n.wrapping_add(1));
    }
    n
}

/// Bug 1: CPU work inside a poll. The worker runs nothing else for 25 ms each time.
async fn long_poll() -> u32 {
    for _ in 0..LONG_POLLS {
        burn_cpu(LONG_POLL_CPU); // BUG: long_poll
        tokio::time::sleep(LONG_POLL_SLEEP).await;
    }
    LONG_POLLS
}

/// Takes the std lock and keeps it while on CPU: a second worker that wants it blocks in futex.
#[inline(never)]
fn lock_and_work(counter: &std::sync::Mutex<u64>) {
    let mut guard = counter.lock().unwrap_or_else(PoisonError::into_inner); // BUG: lock_contention
    burn_cpu(LOCK_HELD_CPU);
    *guard += 1;
}

/// Bug 2: a contended `std::sync::Mutex` in async code blocks the worker thread, not the task.
async fn std_mutex_contention(counter: Arc<std::sync::Mutex<u64>>) {
    for _ in 0..LOCK_ROUNDS {
        lock_and_work(&counter);
        tokio::task::yield_now().await;
    }
}

/// Bug 3, the culprit: a tokio lock held across a sleep. Tasks that want it wait 20 ms.
async fn hold_across_await(lock: Arc<tokio::sync::Mutex<u64>>) {
    for _ in 0..HOLDER_ROUNDS {
        let mut guard = lock.lock().await;
        tokio::time::sleep(HOLDER_SLEEP).await; // BUG: held_across_await
        *guard += 1;
        drop(guard);
    }
}

/// Bug 3, the victims: each needs the lock for a few microseconds only.
async fn wait_for_lock(lock: Arc<tokio::sync::Mutex<u64>>) {
    for _ in 0..WAITER_ROUNDS {
        {
            let mut guard = lock.lock().await;
            burn_cpu(WAITER_WORK);
            *guard += 1;
        }
        tokio::time::sleep(WAITER_SLEEP).await;
    }
}

/// A future that says "not yet" but keeps no waker: nobody can ever wake its task.
struct ForgetsWaker {
    polled: bool,
}

impl Future for ForgetsWaker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.polled {
            return Poll::Ready(());
        }
        self.polled = true;
        Poll::Pending // should have stored cx.waker().clone() for whoever makes it ready
    }
}

/// Bug 4: a lost waker. The task is idle forever; the runtime cancels it at shutdown.
async fn lost_waker() {
    ForgetsWaker { polled: false }.await; // BUG: lost_waker
}

/// A future that "waits" for a counter by waking itself on every poll: a busy loop through
/// the scheduler.
struct WakesItself {
    remaining: u32,
    polls: u32,
}

impl Future for WakesItself {
    type Output = u32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        self.polls += 1;
        if self.remaining == 0 {
            return Poll::Ready(self.polls);
        }
        self.remaining -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Bug 5: self-wakes. Returns how many times the future was polled.
async fn self_wake() -> u32 {
    let countdown = WakesItself {
        remaining: SELF_WAKES,
        polls: 0,
    };
    countdown.await // BUG: self_wake
}

#[inline(never)]
fn blocking_job() {
    std::thread::sleep(BLOCKING_JOB_SLEEP);
}

/// Bug 6: more `spawn_blocking` jobs than pool threads. Returns the jobs that completed.
async fn flood_blocking_pool() -> u32 {
    let mut jobs = Vec::with_capacity(BLOCKING_JOBS as usize);
    for _ in 0..BLOCKING_JOBS {
        jobs.push(tokio::task::spawn_blocking(blocking_job)); // BUG: blocking_pool
    }
    let mut done = 0;
    for job in jobs {
        done += u32::from(job.await.is_ok());
    }
    done
}

/// No bug: sleeps, then does a little work.
async fn healthy() {
    for _ in 0..HEALTHY_ROUNDS {
        tokio::time::sleep(HEALTHY_SLEEP).await;
        burn_cpu(HEALTHY_WORK);
    }
}

/// Spawns a named task. `#[track_caller]` so that the trace's "spawned at" is the caller's line
/// (tokio's `Builder::spawn` records its caller's location), not this helper's.
#[track_caller]
fn spawn<F>(name: &str, future: F) -> std::io::Result<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::task::Builder::new().name(name).spawn(future)
}

/// Starts every selected bug at once, waits for all but `lost`, and returns the lines to print.
async fn run(bugs: Bugs) -> std::io::Result<Result<Vec<String>, tokio::task::JoinError>> {
    let spinner = bugs
        .long_poll
        .then(|| spawn("spinner", long_poll()))
        .transpose()?;
    let lockers = if bugs.std_mutex {
        let counter = Arc::new(std::sync::Mutex::new(0u64));
        (0..LOCKERS)
            .map(|_| spawn("locker", std_mutex_contention(counter.clone())))
            .collect::<std::io::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let (holder, waiters) = if bugs.held_across_await {
        let lock = Arc::new(tokio::sync::Mutex::new(0u64));
        let holder = spawn("holder", hold_across_await(lock.clone()))?;
        let waiters = (0..WAITERS)
            .map(|_| spawn("waiter", wait_for_lock(lock.clone())))
            .collect::<std::io::Result<Vec<_>>>()?;
        (Some(holder), waiters)
    } else {
        (None, Vec::new())
    };
    let lost = bugs
        .lost_waker
        .then(|| spawn("lost", lost_waker()))
        .transpose()?;
    let busy_waiter = bugs
        .self_wake
        .then(|| spawn("busy_waiter", self_wake()))
        .transpose()?;
    let blocking_spawner = bugs
        .blocking_pool
        .then(|| spawn("blocking_spawner", flood_blocking_pool()))
        .transpose()?;
    let healthy = spawn("healthy", healthy())?;

    let mut lines = Vec::new();
    let wait = async {
        if let Some(task) = spinner {
            let polls = task.await?;
            lines.push(format!(
                "long_poll: {polls} polls of {} ms on CPU",
                LONG_POLL_CPU.as_millis()
            ));
        }
        if !lockers.is_empty() {
            for task in lockers {
                task.await?;
            }
            lines.push(format!(
                "lock_contention: {LOCKERS} tasks took a std Mutex {LOCK_ROUNDS} times each, \
                 holding it {} ms on CPU",
                LOCK_HELD_CPU.as_millis()
            ));
        }
        if let Some(task) = holder {
            task.await?;
            for task in waiters {
                task.await?;
            }
            lines.push(format!(
                "held_across_await: holder slept {HOLDER_ROUNDS} x {} ms holding a tokio Mutex; \
                 {WAITERS} waiters locked it {WAITER_ROUNDS} times each",
                HOLDER_SLEEP.as_millis()
            ));
        }
        if let Some(task) = &lost {
            let state = if task.is_finished() {
                "finished?!"
            } else {
                "never woken, cancelled at shutdown"
            };
            lines.push(format!(
                "lost_waker: returned Pending once without keeping its waker; {state}"
            ));
        }
        if let Some(task) = busy_waiter {
            let polls = task.await?;
            lines.push(format!(
                "self_wake: {polls} polls, woken by itself {SELF_WAKES} times"
            ));
        }
        if let Some(task) = blocking_spawner {
            let done = task.await?;
            lines.push(format!(
                "blocking_pool: {done} of {BLOCKING_JOBS} spawn_blocking jobs of {} ms on at most \
                 {} threads",
                BLOCKING_JOB_SLEEP.as_millis(),
                bugs.blocking_threads
            ));
        }
        healthy.await?;
        lines.push(format!(
            "healthy: {HEALTHY_ROUNDS} sleeps of {} ms, {} us of work after each",
            HEALTHY_SLEEP.as_millis(),
            HEALTHY_WORK.as_micros()
        ));
        Ok(lines)
    };
    Ok(wait.await)
}

fn main() -> ExitCode {
    iotrace_layer::init();
    let bugs = match parse_args(std::env::args().skip(1)) {
        Ok(Args::Run(bugs)) => bugs,
        Ok(Args::Help) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("asyncbugs: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(bugs.blocking_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("asyncbugs: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(bugs));
    // `lost` is still pending: shutting down drops it (and lets idle pool threads go).
    runtime.shutdown_timeout(Duration::from_secs(1));
    iotrace_layer::flush();
    match result {
        Ok(Ok(lines)) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("asyncbugs: a task failed: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("asyncbugs: cannot spawn a task: {e}");
            ExitCode::FAILURE
        }
    }
}
