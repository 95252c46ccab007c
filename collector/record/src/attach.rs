//! What `iotrace record -p PID` needs from /proc about a running process: whether it exists
//! and may be traced, its threads, and the names and executable mappings it already has (a
//! launched command gets those from perf at its exec; a running one will not exec, so they are
//! written into the trace from /proc). Also the span rendezvous: where the program's layer
//! looks for a recorder's socket (layer/WIRE.md, "Attaching").

use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use iotrace_trace::{Comm, Mmap, Record};

/// Why a process cannot be attached to, in one line.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("not permitted to trace pid {pid} (owned by uid {owner}; iotrace runs as uid {me}): run iotrace as that user or as root")]
    NotPermitted { pid: u32, owner: u32, me: u32 },
    #[error("`{0}` is not a pid (expected numbers separated by commas, e.g. -p 1234,5678)")]
    BadPid(String),
    // The OS error is part of the message and deliberately not a source (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print it twice.
    #[error("cannot read /proc/{pid}: {error}")]
    Proc { pid: u32, error: io::Error },
}

/// A process to attach to, as /proc showed it when checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// Effective uid.
    pub uid: u32,
    /// Its command line (the comm name when the command line is empty, e.g. a kernel thread).
    pub command: Vec<String>,
}

/// Parse `1234,5678` into pids.
pub fn parse_pids(text: &str) -> Result<Vec<u32>, AttachError> {
    let mut pids = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pid: u32 = part
            .parse()
            .ok()
            .filter(|&p| p > 0 && p <= i32::MAX as u32)
            .ok_or_else(|| AttachError::BadPid(part.to_owned()))?;
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    if pids.is_empty() {
        return Err(AttachError::BadPid(text.to_owned()));
    }
    Ok(pids)
}

/// Whether `pid` is a process (not a thread id of another process) that this user may trace.
/// Reading `/proc/PID/maps` takes the same permission check as tracing it (ptrace read
/// access), so that read is the test; it also fails for a process that went away.
pub fn check(pid: u32) -> Result<Target, AttachError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = match std::fs::read_to_string(dir.join("status")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AttachError::NoSuchProcess(pid))
        }
        Err(error) => return Err(AttachError::Proc { pid, error }),
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // /proc lists thread ids too (not in its directory listing, but by name): -p takes a
    // process, as perf's -p does.
    if field("Tgid:").and_then(|t| t.parse::<u32>().ok()) != Some(pid) {
        return Err(AttachError::NoSuchProcess(pid));
    }
    let uid = field("Uid:")
        .and_then(|u| u.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    match std::fs::File::open(dir.join("maps")) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AttachError::NoSuchProcess(pid))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(AttachError::NotPermitted {
                pid,
                owner: uid,
                me: crate::sys::euid(),
            })
        }
        Err(error) => return Err(AttachError::Proc { pid, error }),
    }
    let mut command: Vec<String> = std::fs::read(dir.join("cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if command.is_empty() {
        command.push(field("Name:").unwrap_or("?").to_owned());
    }
    Ok(Target { pid, uid, command })
}

/// The process's threads now (empty if it is gone).
pub fn threads(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The main thread first: it exists as long as the process does.
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    tids
}

/// The records a launched command's exec would have produced: a name for each thread and
/// each executable file mapping, as /proc shows them at `time_ns`.
pub fn synthesize(pid: u32, time_ns: u64) -> Vec<Record> {
    let mut out = Vec::new();
    for tid in threads(pid) {
        let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else {
            continue;
        };
        out.push(Record::Comm(Comm {
            pid,
            tid,
            time_ns,
            name: name.trim_end_matches('\n').to_owned(),
            exec: false,
        }));
    }
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        out.extend(
            maps.lines()
                .filter_map(|l| parse_maps_line(l, pid, time_ns))
                .map(Record::Mmap),
        );
    }
    out
}

/// `start-end perms offset dev inode [path]`: an executable mapping of a file (or `[vdso]`),
/// as perf's MMAP2 record would give it.
fn parse_maps_line(line: &str, pid: u32, time_ns: u64) -> Option<Mmap> {
    // The path may contain spaces: it is the rest of the line after the inode.
    let mut fields = line
        .trim_start()
        .splitn(6, |c: char| c.is_ascii_whitespace());
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let rest = fields.next().unwrap_or("").trim();
    if perms.as_bytes().get(2) != Some(&b'x') || rest.is_empty() {
        return None;
    }
    if rest.starts_with('[') && rest != "[vdso]" {
        return None;
    }
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    Some(Mmap {
        pid,
        tid: pid,
        time_ns,
        addr: start,
        len: end.checked_sub(start)?,
        pgoff: u64::from_str_radix(offset, 16).ok()?,
        ino: inode.parse().ok()?,
        build_id: Vec::new(),
        filename: rest.to_owned(),
    })
}

/// Where the layer in process `pid` looks for a recorder (layer/WIRE.md, "Attaching"):
/// `$XDG_RUNTIME_DIR/iotrace/PID.sock` when the process has that variable (absolute), else
/// `/tmp/iotrace-UID/PID.sock`, UID being the process's effective uid.
pub fn rendezvous_path(target: &Target) -> PathBuf {
    let xdg = std::fs::read(format!("/proc/{}/environ", target.pid))
        .ok()
        .and_then(|env| {
            env.split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"XDG_RUNTIME_DIR=").map(<[u8]>::to_vec))
        })
        .map(std::ffi::OsString::from_vec);
    iotrace_wire::rendezvous_path(xdg.as_deref(), target.uid, target.pid)
}

/// Make the rendezvous directory (mode 0700, owned by `uid`), or check the one there: a real
/// directory (not a symlink) owned by `uid` that no one else may enter. Anything else is
/// refused, so that another user cannot plant a directory the program would trust.
pub fn prepare_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if crate::sys::euid() != uid {
                std::os::unix::fs::lchown(dir, Some(uid), None)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of uid {uid} with mode 0700 (uid {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_executable_file_mappings() {
        let m = parse_maps_line(
            "7f1c2a400000-7f1c2a5a0000 r-xp 00028000 fe:01 1234567   /usr/lib/x86_64-linux-gnu/libc.so.6",
            7,
            9,
        )
        .unwrap();
        assert_eq!(
            (m.addr, m.len, m.pgoff, m.ino, m.filename.as_str()),
            (
                0x7f1c2a400000,
                0x1a0000,
                0x28000,
                1234567,
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            )
        );
        let spaced = parse_maps_line("1000-2000 r-xp 0 00:00 5 /opt/my app/bin", 7, 9).unwrap();
        assert_eq!(spaced.filename, "/opt/my app/bin");
        assert!(parse_maps_line("1000-2000 rw-p 0 00:00 5 /lib/x.so", 7, 9).is_none());
        assert!(parse_maps_line("1000-2000 r-xp 0 00:00 0", 7, 9).is_none());
        assert!(parse_maps_line("1000-2000 r-xp 0 00:00 0 [vsyscall]", 7, 9).is_none());
        assert!(parse_maps_line("1000-2000 r-xp 0 00:00 0 [vdso]", 7, 9).is_some());
        for bad in ["", "x", "2000-1000 r-xp 0 0 1 /a", "zz-1 r-xp 0 0 1 /a"] {
            assert!(parse_maps_line(bad, 7, 9).is_none(), "{bad}");
        }
    }

    #[test]
    fn pid_lists_parse_and_reject_junk() {
        assert_eq!(parse_pids("12, 34,12").unwrap(), vec![12, 34]);
        for bad in ["", "0", "-1", "12,x", "99999999999"] {
            assert!(parse_pids(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_process_is_attachable_and_its_threads_are_listed() {
        let me = std::process::id();
        let t = check(me).unwrap();
        assert_eq!(t.pid, me);
        assert_eq!(threads(me)[0], me);
        let records = synthesize(me, 1);
        assert!(records.iter().any(|r| matches!(r, Record::Mmap(_))));
        assert!(records.iter().any(|r| matches!(r, Record::Comm(_))));
    }
}
