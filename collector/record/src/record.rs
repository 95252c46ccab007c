//! `iotrace record`: start the child held, attach perf, let it exec, and stream everything
//! (perf records, /proc samples, span batches) into the trace file until the child exits.
//!
//! Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to iotrace are forwarded to the child and
//! iotrace keeps recording until it exits; a third Ctrl-C kills the child with SIGKILL. The
//! file is flushed every loop turn, so a killed recorder leaves a readable, truncated trace.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::intake;
use crate::perf::{PerfOptions, PerfSession};
use crate::procpoll::ProcPoller;
use crate::sys;
use iotrace_trace::{
    Capabilities, End, ExitStatus, Header, Record, Rusage, SpanStats, TraceWriter,
};
use iotrace_wire::SpanEvent;

/// What to record and how.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    pub output: PathBuf,
    /// Use perf events (false: /proc only, as with `--no-perf`).
    pub perf: bool,
    /// How often to read /proc.
    pub proc_interval: Duration,
    /// Offer the span socket to the child (`IOTRACE_SOCKET`).
    pub spans: bool,
    pub perf_options: PerfOptions,
    /// Leave closing the perf events to a helper process that waits for this one to exit.
    /// Closing a tracepoint event waits for the kernel's RCU grace periods (~75 ms here);
    /// a program that exits right after recording (the CLI) need not wait for that. The
    /// events then stay open until this process exits.
    pub defer_teardown: bool,
    /// Attach to these running processes instead of launching `command` (`record -p`).
    pub attach: Vec<u32>,
    /// End the recording after this long (attached recordings; a launched one ends with the
    /// command).
    pub duration: Option<Duration>,
    /// Pick `perf_options.call_graph` by whether the program's executable keeps frame
    /// pointers (`--call-graph auto`, the default): frame pointers with CFI leaves if it
    /// does, the whole stack from CFI if not.
    pub auto_call_graph: bool,
    /// With `auto_call_graph`: the stack copy size the user asked for (else the mode's default).
    pub stack_copy: Option<u32>,
}

impl RecordOptions {
    pub fn new(command: Vec<OsString>, output: PathBuf) -> Self {
        RecordOptions {
            command,
            output,
            perf: true,
            proc_interval: Duration::from_millis(100),
            spans: true,
            perf_options: PerfOptions::default(),
            defer_teardown: false,
            attach: Vec::new(),
            duration: None,
            auto_call_graph: true,
            stack_copy: None,
        }
    }
}

/// How a recording ended.
#[derive(Debug, Clone)]
pub struct RecordOutcome {
    pub exit: ExitStatus,
    pub trace: PathBuf,
    pub bytes: u64,
    pub lost_records: u64,
    pub forwarded_signal: Option<i32>,
    /// Sentences about what could not be measured.
    pub missing: Vec<String>,
    /// Writing the trace failed (e.g. the disk is full): the file stops there and reads back
    /// as truncated. The recording stopped, the program ran on to its end, and `exit` is its
    /// status. The error line was printed when it happened.
    pub write_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no command given: usage is `iotrace record -- CMD [ARGS...]`")]
    NoCommand,
    #[error("cannot run `{program}`: command not found")]
    NotFound { program: String },
    // The OS errors are part of the messages and deliberately not sources (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print them twice.
    #[error("cannot run `{program}`: {error}")]
    Exec { program: String, error: io::Error },
    #[error(transparent)]
    Format(#[from] iotrace_trace::FormatError),
    #[error("writing the trace {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl RecordError {
    /// The exit code a shell would give for this failure (127: not found, 126: not runnable).
    pub fn exit_code(&self) -> i32 {
        match self {
            RecordError::NotFound { .. } => 127,
            RecordError::Exec { .. } => 126,
            _ => 1,
        }
    }
}

/// Nice steps the recorder's threads are raised by (when permitted: root or CAP_SYS_NICE).
pub const RECORDER_BOOST: i32 = 10;

const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Signals delivered to iotrace, made pollable.
struct SignalWatch {
    last: Arc<AtomicUsize>,
    wake: UnixStream,
    ids: Vec<signal_hook::SigId>,
}

impl SignalWatch {
    fn install() -> io::Result<Self> {
        let (wake, write) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let last = Arc::new(AtomicUsize::new(0));
        let mut ids = Vec::new();
        for sig in FORWARDED {
            ids.push(signal_hook::flag::register_usize(
                sig,
                Arc::clone(&last),
                sig as usize,
            )?);
            ids.push(signal_hook::low_level::pipe::register(
                sig,
                write.try_clone()?,
            )?);
        }
        Ok(SignalWatch { last, wake, ids })
    }

    /// The signal received since the last call, if any.
    fn take(&mut self) -> Option<i32> {
        let mut buf = [0u8; 64];
        while matches!(io::Read::read(&mut self.wake, &mut buf), Ok(n) if n > 0) {}
        match self.last.swap(0, Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// The trace writer during the recording. The first write error (a full disk) is printed
/// once and kept; from then on nothing more is written, but the recording loop goes on
/// draining perf and the span socket (so neither the program nor the kernel waits on us)
/// until the program exits, and iotrace then returns the program's status.
struct Out {
    writer: TraceWriter,
    error: Option<io::Error>,
    /// The span layer's stacks (by pid and the layer's id) as nodes of the trace's stack tree.
    span_stacks: rustc_hash::FxHashMap<(u32, u64), u32>,
}

/// Most layer stacks remembered; past it, events at new stacks lose their stack.
const MAX_SPAN_STACKS: usize = 1 << 20;

impl Out {
    fn failed(&mut self, e: io::Error) {
        if self.error.is_none() {
            eprintln!(
                "iotrace: error: writing the trace {}: {e}; recording stopped at {} bytes (the file reads back as truncated), waiting for the program to exit",
                self.writer.path().display(),
                self.writer.bytes()
            );
            self.error = Some(e);
        }
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        if self.error.is_none() {
            if let Err(e) = self.writer.write(record) {
                self.failed(e);
            }
        }
        Ok(())
    }

    /// Writes a span batch. The layer's stacks become nodes of the trace's stack tree (written
    /// first), and each `At` names its node; without perf there are no mappings to name their
    /// frames with, and they are left out.
    fn write_spans(&mut self, batch: &mut intake::SpanBatch, perf: Option<&mut PerfSession>) {
        if batch
            .events
            .iter()
            .any(|e| matches!(e, SpanEvent::Stack { .. } | SpanEvent::At { .. }))
        {
            self.resolve_stacks(batch, perf);
        }
        if self.error.is_none() {
            if let Err(e) = self.writer.write_spans(batch) {
                self.failed(e);
            }
        }
    }

    fn resolve_stacks(&mut self, batch: &mut intake::SpanBatch, perf: Option<&mut PerfSession>) {
        let pid = batch.pid;
        let Some(perf) = perf else {
            batch
                .events
                .retain(|e| !matches!(e, SpanEvent::Stack { .. } | SpanEvent::At { .. }));
            return;
        };
        let stacks = &mut self.span_stacks;
        batch.events.retain_mut(|e| match e {
            SpanEvent::Stack { id, frames } => {
                if stacks.len() < MAX_SPAN_STACKS {
                    let node = perf.intern_user_stack(pid, frames);
                    stacks.insert((pid, *id), node);
                }
                false
            }
            SpanEvent::At { stack, .. } => match stacks.get(&(pid, *stack)) {
                Some(&node) => {
                    *stack = u64::from(node);
                    true
                }
                None => false,
            },
            _ => true,
        });
        if let Some(defs) = perf.take_stack_defs() {
            let _ = self.write(&Record::StackDefs(defs));
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.writer.flush() {
                self.failed(e);
            }
        }
    }
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Record `opts.command` into `opts.output`. Returns once the child has exited and the file
/// is complete.
pub fn record(opts: &RecordOptions) -> Result<RecordOutcome, RecordError> {
    if !opts.attach.is_empty() {
        return record_attached(opts);
    }
    let program = opts.command.first().ok_or(RecordError::NoCommand)?;
    let program_name = program.to_string_lossy().into_owned();
    let path = sys::resolve_program(program).ok_or_else(|| RecordError::NotFound {
        program: program_name.clone(),
    })?;

    let mut writer = TraceWriter::create(&opts.output)?;
    let write_err = |error| RecordError::Write {
        path: opts.output.clone(),
        error,
    };
    let mut signals = SignalWatch::install()?;

    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut spans = None;
    if opts.spans {
        match SpanDir::create().and_then(|dir| intake::start(&dir.path).map(|i| (dir, i))) {
            Ok((dir, intake)) => {
                env.push((intake::SOCKET_ENV.into(), intake.socket_path().into()));
                spans = Some((dir, intake));
            }
            Err(e) => eprintln!(
                "iotrace: warning: span socket not available ({e}); recording without spans"
            ),
        }
    }
    let mut child =
        sys::spawn_held(&path, &opts.command, &env).map_err(|error| RecordError::Exec {
            program: program_name.clone(),
            error,
        })?;
    let pid = child.pid;

    let mut caps = Capabilities {
        spans: spans.is_some(),
        ..Capabilities::default()
    };
    let mut perf = None;
    if opts.perf {
        match PerfSession::open(pid, &perf_options(opts, &path)) {
            Ok(session) => perf = Some(adopt(&mut caps, session)),
            Err(e) => caps.missing.push(format!(
                "perf was not used: {e}; per-thread switches and CPU time come from /proc only"
            )),
        }
    } else {
        caps.missing.push(
            "perf was not used (--no-perf): context switches, CPU time and RSS come from /proc and wait4; syscall counts and per-thread page faults are missing"
                .to_owned(),
        );
    }

    let header = Header {
        iotrace_version: env!("CARGO_PKG_VERSION").to_owned(),
        command: opts
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        pid: pid as u32,
        start_ns: sys::monotonic_ns(),
        start_unix_ns: unix_now_ns(),
        hostname: sys::hostname(),
        cpus: sys::online_cpus().len() as u32,
    };
    writer.write(&Record::Header(header)).map_err(write_err)?;
    writer
        .write(&Record::Capabilities(caps.clone()))
        .map_err(write_err)?;
    if let Some(sampling) = perf.as_ref().and_then(|p| p.sampling()) {
        writer
            .write(&Record::Sampling(sampling.clone()))
            .map_err(write_err)?;
    }
    writer.flush().map_err(write_err)?;
    let mut out = Out {
        writer,
        error: None,
        span_stacks: Default::default(),
    };

    let pidfd = sys::pidfd_open(pid)?;
    if let Err(source) = child.release() {
        // exec failed: the child exits 127; reap it and say why.
        sys::kill(pid, libc::SIGKILL);
        let _ = wait_blocking(pid);
        let code = source.raw_os_error();
        return Err(if code == Some(libc::ENOENT) {
            RecordError::NotFound {
                program: program_name,
            }
        } else {
            RecordError::Exec {
                program: program_name,
                error: source,
            }
        });
    }

    // The child runs at its normal priority (it is forked before this); the recorder's own
    // thread gets a higher one so its rings and the span socket are drained under load.
    sys::boost_this_thread(RECORDER_BOOST);
    let mut poller = ProcPoller::new(pid);
    let mut next_poll = std::time::Instant::now();
    let mut forwarded: Option<i32> = None;
    let mut interrupts = 0u32;
    let mut peak_threads = 0u32;
    let mut live_threads: i64 = 1;

    // What the loop waits on: the child's exit, our signals, queued span batches, and the
    // perf rings' wakeup watermark (fds[0] must stay the pidfd).
    let mut fds = vec![pidfd.as_raw_fd(), signals.wake.as_raw_fd()];
    if let Some((_, intake)) = &spans {
        fds.push(intake.ready_fd());
    }
    if let Some(p) = &perf {
        fds.extend(p.fds());
    }
    // --duration: the command gets SIGTERM then, as with Ctrl-C, and is recorded to its exit.
    let mut deadline = opts.duration.map(|d| std::time::Instant::now() + d);
    let (exit, rusage) = loop {
        let now = std::time::Instant::now();
        let mut timeout = next_poll
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        let ready = sys::poll_readable(&fds, timeout.as_millis() as i32)?;
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            deadline = None;
            forwarded = Some(libc::SIGTERM);
            sys::kill(pid, libc::SIGTERM);
        }

        if let Some(sig) = signals.take() {
            forwarded = Some(sig);
            if sig == libc::SIGINT {
                interrupts += 1;
            }
            sys::kill(pid, if interrupts >= 3 { libc::SIGKILL } else { sig });
        }

        if let Some(p) = perf.as_mut() {
            p.drain(&mut |r| {
                match &r {
                    Record::Fork(f) => {
                        live_threads += 1;
                        // Records come in time order (see perf/merge.rs), so an exit never precedes
                        // its fork; the clamp only guards against a lost record.
                        peak_threads = peak_threads.max(u32::try_from(live_threads).unwrap_or(0));
                        if f.pid == f.tid {
                            poller.add_pid(f.pid as i32);
                        }
                    }
                    Record::Exit(_) => live_threads = (live_threads - 1).max(0),
                    _ => {}
                }
                out.write(&r)
            })?;
        }

        if let Some((_, intake)) = &spans {
            intake.take_ready();
            while let Some(mut batch) = intake.try_recv() {
                out.write_spans(&mut batch, perf.as_mut());
            }
        }

        if std::time::Instant::now() >= next_poll {
            let sample = poller.sample();
            for p in &sample.processes {
                peak_threads = peak_threads.max(p.threads);
            }
            out.write(&Record::ProcSample(sample))?;
            next_poll += opts.proc_interval;
            if next_poll < std::time::Instant::now() {
                next_poll = std::time::Instant::now() + opts.proc_interval;
            }
        }
        out.flush();

        if ready[0] {
            // The child is a zombie until reaped: one last look at its threads' counters.
            let last = poller.sample();
            out.write(&Record::ProcSample(last))?;
            if let Some(done) = sys::try_wait4(pid)? {
                break done;
            }
        }
    };

    let mut lost_records = 0;
    let mut missing = caps.missing.clone();
    if let Some(p) = perf.as_mut() {
        p.drain_all(&mut |r| out.write(&r))?;
        let totals = p.totals();
        out.write(&Record::Totals(totals))?;
        lost_records = p.lost_records;
        if p.syscalls_dropped > 0 {
            missing.push(format!(
                "{} syscalls went uncounted: the in-kernel counter's map was full",
                p.syscalls_dropped
            ));
        }
    }
    let mut span_dropped = 0;
    if let Some((dir, intake)) = spans.take() {
        let (stats, rest) = intake.shutdown();
        for mut batch in rest {
            out.write_spans(&mut batch, perf.as_mut());
        }
        span_dropped = stats.dropped_by_programs;
        out.write(&Record::SpanStats(SpanStats {
            clients: stats.clients,
            events: stats.events,
            dropped: stats.dropped_by_programs,
            bad_clients: stats.bad_clients,
            warnings: stats.warnings.clone(),
        }))?;
        for w in &stats.warnings {
            eprintln!("iotrace: warning: span socket: {w}");
        }
        drop(dir);
    }
    if span_dropped > 0 {
        missing.push(format!("the program's iotrace layer dropped {span_dropped} span events: the recorder did not keep up"));
    }
    if lost_records > 0 {
        missing.push(format!(
            "perf lost {lost_records} records: the rings overflowed"
        ));
    }
    let end = End {
        time_ns: sys::monotonic_ns(),
        exit,
        rusage,
        forwarded_signal: forwarded,
        peak_threads,
    };
    out.write(&Record::End(end))?;
    let (bytes, write_error) = finish_trace(out, opts);
    drop(signals);
    close_perf(perf.take(), opts);
    Ok(RecordOutcome {
        exit,
        trace: opts.output.clone(),
        bytes,
        lost_records,
        forwarded_signal: forwarded,
        missing,
        write_error,
    })
}

/// The perf options of a recording of `exe`, with `--call-graph auto` decided.
fn perf_options(opts: &RecordOptions, exe: &Path) -> PerfOptions {
    let mut perf = opts.perf_options.clone();
    if opts.auto_call_graph && perf.frequency_hz + u64::from(perf.off_cpu_stacks) > 0 {
        perf.call_graph = crate::perf::unwind::auto_call_graph(Some(exe));
        match &mut perf.call_graph {
            crate::perf::CallGraph::FpCfi { copy } => {
                if let Some(asked) = opts.stack_copy {
                    *copy = asked;
                }
            }
            graph @ crate::perf::CallGraph::Dwarf { .. } => {
                *graph = crate::perf::CallGraph::dwarf(opts.stack_copy);
            }
            crate::perf::CallGraph::Fp => {}
        }
        if let crate::perf::CallGraph::Dwarf { copy, switch_copy } = perf.call_graph {
            eprintln!(
                "iotrace: note: {} keeps no frame pointers: stacks are unwound from its CFI (--call-graph dwarf, stack copies of {copy} bytes for samples and {switch_copy} at switch-outs)",
                std::fs::read_link(exe).unwrap_or_else(|_| exe.to_owned()).display()
            );
        }
    }
    perf
}

/// Notes what an opened perf session gives the recording in `caps`; its notes go to stderr.
fn adopt(caps: &mut Capabilities, session: PerfSession) -> PerfSession {
    caps.perf = true;
    caps.kernel = session.kernel;
    caps.syscalls = session.has_syscalls();
    caps.missing.extend(session.missing.iter().cloned());
    for note in &session.notes {
        eprintln!("iotrace: note: {note}");
    }
    session
}

/// Ends the trace file: its size, and the error that stopped writing it, if one did (said
/// on stderr when it is the final flush).
fn finish_trace(out: Out, opts: &RecordOptions) -> (u64, Option<String>) {
    let Out { writer, error, .. } = out;
    let bytes = writer.bytes();
    let write_error = match error {
        // What was buffered when the disk filled may be lost; the file on disk says how far
        // it got by itself (it reads back as truncated).
        Some(e) => Some(e.to_string()),
        None => match writer.finish() {
            Ok(_) => None,
            Err(e) => {
                eprintln!(
                    "iotrace: error: writing the trace {}: {e}",
                    opts.output.display()
                );
                Some(e.to_string())
            }
        },
    };
    (bytes, write_error)
}

/// Closes the perf events, or with `defer_teardown` leaves them to a helper process that
/// outlives us (closing them waits for the kernel's RCU grace periods).
fn close_perf(perf: Option<PerfSession>, opts: &RecordOptions) {
    if let Some(line) = perf.as_ref().and_then(unwind_note) {
        eprintln!("iotrace: note: {line}");
    }
    if let Some(p) = perf {
        if opts.defer_teardown && sys::close_fds_after_exit().is_ok() {
            std::mem::forget(p);
        }
    }
}

/// One line when a fair share (≥ 5%) of the stacks unwound from CFI stopped short, with what
/// to do about it.
fn unwind_note(perf: &PerfSession) -> Option<String> {
    let (mode, c) = perf.unwind_counts()?;
    let short = c.truncated + c.no_unwind_info + c.not_mapped + c.failed;
    if c.unwound == 0 || short * 20 < c.unwound {
        return None;
    }
    let mut why = Vec::new();
    for (n, reason) in [
        (c.truncated, "stack copy too small: raise --stack-copy"),
        (c.no_unwind_info, "code without unwind info"),
        (c.not_mapped, "JIT or unmapped code"),
        (c.failed, "unwinding failed"),
    ] {
        if n > 0 {
            why.push(format!("{n} {reason}"));
        }
    }
    Some(format!(
        "{short} of {} user stacks unwound from CFI (--call-graph {}) stopped short ({}); they end in an `[unwind stopped: …]` frame",
        c.unwound,
        mode.name(),
        why.join(", ")
    ))
}

/// A private directory (mode 0700) for the span socket, removed when dropped.
struct SpanDir {
    path: PathBuf,
}

impl SpanDir {
    fn create() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!(
            "iotrace-{}-{}",
            std::process::id(),
            sys::monotonic_ns()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(SpanDir { path })
    }
}

impl Drop for SpanDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn wait_blocking(pid: libc::pid_t) -> io::Result<(ExitStatus, Rusage)> {
    loop {
        if let Some(done) = sys::try_wait4(pid)? {
            return Ok(done);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A span socket at a running process's rendezvous path (layer/WIRE.md, "Attaching"): the
/// layer in that process connects when it sees it, and goes back to looking when it is gone.
struct Rendezvous {
    intake: intake::Intake,
}

impl Rendezvous {
    fn open(target: &crate::attach::Target) -> io::Result<Self> {
        let path = crate::attach::rendezvous_path(target);
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        crate::attach::prepare_dir(dir, target.uid)?;
        let intake = intake::start_at(&path)?;
        if sys::euid() != target.uid {
            // The program's user must be able to connect (write to the socket); the
            // directory (0700, theirs) keeps everyone else out. lchown: never follow a
            // symlink someone put in its place.
            std::os::unix::fs::lchown(&path, Some(target.uid), None)?;
        }
        Ok(Rendezvous { intake })
    }
}

/// `record -p`: attach to running processes, record until the duration passes, a signal
/// comes (SIGINT, SIGTERM, SIGHUP, SIGQUIT: none is forwarded) or they have all exited, then
/// detach. They are never signalled, stopped or ptraced: perf events and the BPF counter
/// observe them from outside, and closing those leaves them as they were.
fn record_attached(opts: &RecordOptions) -> Result<RecordOutcome, RecordError> {
    let targets = opts
        .attach
        .iter()
        .map(|&pid| crate::attach::check(pid))
        .collect::<Result<Vec<_>, _>>()?;
    let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    // Opened before anything else, so that a process that exits from here on is seen to.
    let pidfds = pids
        .iter()
        .map(|&p| sys::pidfd_open(p as libc::pid_t))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => {
                RecordError::Attach(crate::attach::AttachError::NoSuchProcess(pids[0]))
            }
            _ => RecordError::Io(e),
        })?;

    let mut writer = TraceWriter::create(&opts.output)?;
    let write_err = |error| RecordError::Write {
        path: opts.output.clone(),
        error,
    };
    let mut signals = SignalWatch::install()?;

    // The span sockets first: a layer that sees one connects within its look interval, and
    // the perf events below take a while on a process with many threads.
    let mut spans: Vec<Rendezvous> = Vec::new();
    if opts.spans {
        for t in &targets {
            match Rendezvous::open(t) {
                Ok(r) => spans.push(r),
                Err(e) => eprintln!(
                    "iotrace: warning: span socket for pid {} not available ({e}); recording it without spans",
                    t.pid
                ),
            }
        }
    }

    let start_ns = sys::monotonic_ns();
    let mut caps = Capabilities {
        spans: !spans.is_empty(),
        ..Capabilities::default()
    };
    let mut perf = None;
    let mut threads = 0u32;
    if opts.perf {
        let exe = PathBuf::from(format!("/proc/{}/exe", pids[0]));
        match PerfSession::attach(&pids, &perf_options(opts, &exe)) {
            Ok((session, opened)) => {
                threads = opened.len() as u32;
                perf = Some(adopt(&mut caps, session));
            }
            Err(e) => caps.missing.push(format!(
                "perf was not used: {e}; per-thread switches and CPU time come from /proc only"
            )),
        }
    } else {
        caps.missing.push(
            "perf was not used (--no-perf): context switches and CPU time come from /proc; syscall counts and per-thread page faults are missing"
                .to_owned(),
        );
    }
    if threads == 0 {
        threads = pids
            .iter()
            .map(|&p| crate::attach::threads(p).len() as u32)
            .sum();
    }

    let header = Header {
        iotrace_version: env!("CARGO_PKG_VERSION").to_owned(),
        command: targets[0].command.clone(),
        pid: pids[0],
        start_ns,
        start_unix_ns: unix_now_ns(),
        hostname: sys::hostname(),
        cpus: sys::online_cpus().len() as u32,
    };
    writer.write(&Record::Header(header)).map_err(write_err)?;
    writer
        .write(&Record::Capabilities(caps.clone()))
        .map_err(write_err)?;
    if let Some(sampling) = perf.as_ref().and_then(|p| p.sampling()) {
        writer
            .write(&Record::Sampling(sampling.clone()))
            .map_err(write_err)?;
    }
    writer
        .write(&Record::Attach(iotrace_trace::Attach {
            pids: pids.clone(),
            time_ns: start_ns,
            threads,
        }))
        .map_err(write_err)?;
    // What the processes' execs would have told perf: read after the events are open, so a
    // mapping made since is in the rings too (twice is harmless; missing is not).
    for &pid in &pids {
        for r in crate::attach::synthesize(pid, start_ns) {
            if let (Record::Mmap(m), Some(p)) = (&r, perf.as_mut()) {
                p.observe_mmap(m);
            }
            writer.write(&r).map_err(write_err)?;
        }
    }
    writer.flush().map_err(write_err)?;
    let mut out = Out {
        writer,
        error: None,
        span_stacks: Default::default(),
    };
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    eprintln!(
        "iotrace: attached to pid {} ({threads} threads); recording until {}",
        list.join(","),
        match opts.duration {
            Some(d) => format!("{:.2} s have passed or Ctrl-C", d.as_secs_f64()),
            None => "Ctrl-C".to_owned(),
        }
    );

    sys::boost_this_thread(RECORDER_BOOST);
    let mut poller = ProcPoller::new(pids[0] as i32);
    for &p in &pids[1..] {
        poller.add_pid(p as i32);
    }
    let mut next_poll = std::time::Instant::now();
    let deadline = opts.duration.map(|d| std::time::Instant::now() + d);
    let mut stopped_by: Option<i32> = None;
    let mut peak_threads = threads;
    let mut live_threads = i64::from(threads);
    let mut gone = vec![false; pidfds.len()];

    let mut fds: Vec<std::os::fd::RawFd> = pidfds.iter().map(|f| f.as_raw_fd()).collect();
    fds.push(signals.wake.as_raw_fd());
    for r in &spans {
        fds.push(r.intake.ready_fd());
    }
    if let Some(p) = &perf {
        fds.extend(p.fds());
    }
    loop {
        let now = std::time::Instant::now();
        let mut timeout = next_poll
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        let ready = sys::poll_readable(&fds, timeout.as_millis() as i32)?;
        for (i, g) in gone.iter_mut().enumerate() {
            if ready[i] {
                *g = true;
                // Readable for good: poll it no more (-1 is skipped by poll).
                fds[i] = -1;
            }
        }
        let signal = signals.take();
        if let Some(p) = perf.as_mut() {
            p.drain(&mut |r| {
                match &r {
                    Record::Fork(f) => {
                        live_threads += 1;
                        peak_threads = peak_threads.max(u32::try_from(live_threads).unwrap_or(0));
                        if f.pid == f.tid {
                            poller.add_pid(f.pid as i32);
                        }
                    }
                    Record::Exit(_) => live_threads = (live_threads - 1).max(0),
                    _ => {}
                }
                out.write(&r)
            })?;
        }
        for r in &spans {
            r.intake.take_ready();
            while let Some(mut batch) = r.intake.try_recv() {
                out.write_spans(&mut batch, perf.as_mut());
            }
        }
        if std::time::Instant::now() >= next_poll {
            let sample = poller.sample();
            for p in &sample.processes {
                peak_threads = peak_threads.max(p.threads);
            }
            out.write(&Record::ProcSample(sample))?;
            next_poll += opts.proc_interval;
            if next_poll < std::time::Instant::now() {
                next_poll = std::time::Instant::now() + opts.proc_interval;
            }
        }
        out.flush();
        if let Some(sig) = signal {
            stopped_by = Some(sig);
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        if gone.iter().all(|&g| g) {
            break;
        }
    }

    let mut lost_records = 0;
    let mut missing = caps.missing.clone();
    if let Some(p) = perf.as_mut() {
        p.stop();
        p.drain_all(&mut |r| out.write(&r))?;
        let totals = p.totals();
        out.write(&Record::Totals(totals))?;
        lost_records = p.lost_records;
        if p.syscalls_dropped > 0 {
            missing.push(format!(
                "{} syscalls went uncounted: the in-kernel counter's map was full",
                p.syscalls_dropped
            ));
        }
    }
    let mut stats = intake::IntakeStats::default();
    for r in spans.drain(..) {
        let (s, rest) = r.intake.shutdown();
        for mut batch in rest {
            out.write_spans(&mut batch, perf.as_mut());
        }
        stats.clients += s.clients;
        stats.frames += s.frames;
        stats.events += s.events;
        stats.dropped_by_programs += s.dropped_by_programs;
        stats.bad_clients += s.bad_clients;
        stats.warnings.extend(s.warnings);
    }
    if caps.spans {
        out.write(&Record::SpanStats(SpanStats {
            clients: stats.clients,
            events: stats.events,
            dropped: stats.dropped_by_programs,
            bad_clients: stats.bad_clients,
            warnings: stats.warnings.clone(),
        }))?;
        for w in &stats.warnings {
            eprintln!("iotrace: warning: span socket: {w}");
        }
    }
    if stats.dropped_by_programs > 0 {
        missing.push(format!(
            "the program's iotrace layer dropped {} span events: the recorder did not keep up",
            stats.dropped_by_programs
        ));
    }
    if lost_records > 0 {
        missing.push(format!(
            "perf lost {lost_records} records: the rings overflowed"
        ));
    }
    out.write(&Record::End(End {
        time_ns: sys::monotonic_ns(),
        exit: ExitStatus::Detached,
        rusage: Rusage::default(),
        forwarded_signal: None,
        peak_threads,
    }))?;
    let (bytes, write_error) = finish_trace(out, opts);
    drop(signals);
    close_perf(perf.take(), opts);
    Ok(RecordOutcome {
        exit: ExitStatus::Detached,
        trace: opts.output.clone(),
        bytes,
        lost_records,
        forwarded_signal: stopped_by,
        missing,
        write_error,
    })
}
