//! Every way the recorder or its child can die, on the real binary: iotrace killed with
//! SIGKILL (the file reads back truncated; the child dies with it) or sent SIGTERM (forwarded,
//! the file finished), the disk filling up (one error line, the child runs to its end and its
//! status is returned, the partial file reads back), a child killed by SIGSEGV, and a child
//! that exits while a daemonized grandchild lives on (the recording ends with the child; the
//! report names the survivor).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iotrace_tests::{
    fixture, iotrace, perf_available, record, report_json, root_available, run_iotrace, temp_dir,
};

fn fx() -> String {
    fixture().to_str().expect("utf-8 path").to_owned()
}

/// Waits (at most 20 s) for a pid written to `file`.
fn read_pid(file: &Path) -> i32 {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < end, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live process (not gone, not a zombie waiting for its new parent).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn report_text(trace: &Path) -> String {
    let out = run_iotrace(&["report", trace.to_str().unwrap()]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigkill_of_the_recorder_kills_the_child_and_leaves_a_truncated_file() {
    let dir = temp_dir("fault-sigkill");
    let trace = dir.join("t.data");
    let pid_file = dir.join("child.pid");
    let mut recorder = Command::new(iotrace())
        .args(["record", "-q", "-o", trace.to_str().unwrap(), "--"])
        .args([&fx(), "announce", pid_file.to_str().unwrap(), "10", "3000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn iotrace");
    let child = read_pid(&pid_file);
    assert!(alive(child));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGKILL) };
    let status = recorder.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // The child would sleep for 30 s; it dies with the recorder (PR_SET_PDEATHSIG).
    let end = Instant::now() + Duration::from_secs(10);
    while alive(child) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(child),
        "child {child} outlived the SIGKILLed recorder"
    );
    let r = report_json(&trace);
    assert!(r["truncated"].is_string(), "{}", r["truncated"]);
    assert!(r["exit"].is_null());
    assert!(report_text(&trace).contains("the recorder did not finish"));
}

#[test]
fn sigterm_is_forwarded_and_the_file_is_finished() {
    let trace = temp_dir("fault-sigterm").join("t.data");
    let mut recorder = Command::new(iotrace())
        .args(["record", "-q", "-o", trace.to_str().unwrap(), "--"])
        .args([&fx(), "sleep", "100", "300"])
        .spawn()
        .expect("spawn iotrace");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGTERM) };
    let status = recorder.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let r = report_json(&trace);
    assert!(r["truncated"].is_null(), "{}", r["truncated"]);
    assert_eq!(r["exit"]["signal"], libc::SIGTERM);
    assert_eq!(r["forwarded_signal"], libc::SIGTERM);
}

#[test]
fn child_killed_by_sigsegv_gives_139_and_says_so() {
    let trace = temp_dir("fault-segv").join("t.data");
    let out = record(&trace, &[], &[&fx(), "segv"]);
    assert_eq!(out.status.code(), Some(139));
    let r = report_json(&trace);
    assert_eq!(r["exit"]["signal"], libc::SIGSEGV);
    assert!(report_text(&trace).contains("killed by SIGSEGV"));
}

#[test]
fn daemonized_grandchild_outlives_the_recording_and_is_named() {
    if !perf_available("daemonized_grandchild_outlives_the_recording_and_is_named") {
        return;
    }
    let dir = temp_dir("fault-daemon");
    let trace = dir.join("t.data");
    let pid_file = dir.join("daemon.pid");
    // The recording ends when the direct child exits, though its daemon sleeps on for 30 s.
    let out = record(&trace, &[], &[&fx(), "daemon", pid_file.to_str().unwrap()]);
    let daemon = read_pid(&pid_file);
    let was_alive = alive(daemon);
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert_eq!(out.status.code(), Some(0));
    assert!(
        was_alive,
        "the daemon should still run when the recording ends"
    );
    let r = report_json(&trace);
    assert!(r["truncated"].is_null());
    let still = r["still_running"].as_array().expect("still_running");
    assert!(
        still.iter().any(|p| p["pid"] == daemon),
        "daemon {daemon} not in {still:?}"
    );
    assert!(report_text(&trace).contains("still running when it exited"));
}

/// A tmpfs of `bytes` free space at `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, free: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount -t tmpfs failed");
        let disk = SmallDisk(dir.to_owned());
        // Fill it up to `free` bytes: what is left is known whatever the page size.
        let avail = statvfs_avail(dir);
        let filler = avail.saturating_sub(free);
        std::fs::write(dir.join("filler"), vec![0u8; filler as usize]).unwrap();
        disk
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn statvfs_avail(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a live, exclusively borrowed statvfs.
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statvfs");
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn full_disk_gives_one_error_the_childs_status_and_a_readable_partial_file() {
    if !root_available("full_disk_gives_one_error_the_childs_status_and_a_readable_partial_file") {
        return;
    }
    let dir = temp_dir("fault-disk-full");
    let disk = SmallDisk::mount(&dir.join("disk"), 16 << 10);
    let trace = disk.0.join("t.data");
    // About 40 KB of trace (2,000 switch-outs with their stacks) into 16 KiB of room; the
    // child exits 7 when it is done.
    let out = Command::new(iotrace())
        .args(["record", "-q", "-o", trace.to_str().unwrap(), "--"])
        .args(["env", "FIXTURE_EXIT=7", &fx(), "nap", "1", "2000"])
        .output()
        .expect("run iotrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("writing the trace") && errors[0].contains("No space left on device"),
        "{err}"
    );
    // The partial file reads back, and says it is truncated.
    let kept = dir.join("partial.data");
    std::fs::copy(&trace, &kept).unwrap();
    drop(disk);
    let r = report_json(&kept);
    assert!(r["truncated"].is_string(), "{}", r["truncated"]);
    assert!(r["records"].as_u64().unwrap() >= 2, "{}", r["records"]);
}
