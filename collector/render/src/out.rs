//! Writing a timeline or export: its errors, and the output file, written by a second thread
//! (formatting the events and the kernel's copying of them into the page cache then overlap:
//! an export of a minute's recording is over a gigabyte of JSON).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use iotrace_analysis::intervals::IntervalError;
use iotrace_trace::FormatError;

/// Why a timeline or export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Format(#[from] FormatError),
    // The OS error is part of the message and deliberately not a source (a field named
    // `source` would be one): error chains (anyhow's `{:#}`) would print it twice.
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("keeping the intervals in a temporary file ($TMPDIR or /tmp): {0}")]
    Spill(io::Error),
    #[error("the window {from_ns} ns..{to_ns} ns is empty or outside the recording")]
    Window { from_ns: u64, to_ns: u64 },
}

impl From<IntervalError> for TimelineError {
    fn from(e: IntervalError) -> Self {
        match e {
            IntervalError::Format(e) => TimelineError::Format(e),
            IntervalError::Spill(e) => TimelineError::Spill(e),
            IntervalError::Window { from_ns, to_ns } => TimelineError::Window { from_ns, to_ns },
        }
    }
}

/// Why the tracks could not be written.
pub(crate) enum TrackError {
    /// Reading the intervals back from the temporary file.
    Read(io::Error),
    Write(io::Error),
}

/// Bytes handed to the writing thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight before the formatting side waits.
const IN_FLIGHT: usize = 4;

pub(crate) struct OutFile {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Chunks the thread has written, for reuse.
    back: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    bytes: u64,
}

impl OutFile {
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let mut file = File::create(path)?;
        let (tx, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (back_tx, back) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        let thread = std::thread::Builder::new()
            .name("iotrace-write".into())
            .spawn(move || -> io::Result<()> {
                for mut chunk in rx {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    let _ = back_tx.try_send(chunk);
                }
                Ok(())
            })?;
        Ok(OutFile {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            back,
            thread: Some(thread),
            bytes: 0,
        })
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.buf, next);
        let sent = self.tx.as_ref().map(|tx| tx.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error says why.
            _ => Err(self
                .join()
                .err()
                .unwrap_or_else(|| io::Error::other("the writer stopped"))),
        }
    }

    fn join(&mut self) -> io::Result<()> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the writing thread panicked")),
            None => Ok(()),
        }
    }

    /// Writes what is left and waits for the file to be written; returns its size.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.send()?;
        self.join()?;
        Ok(self.bytes)
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        self.bytes += buf.len() as u64;
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(|_| ())
    }
    /// Data reaches the file at [`OutFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_written_reaches_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut out = OutFile::create(&path).unwrap();
        let mut want = Vec::new();
        for i in 0..300_000u32 {
            let line = format!("{i},");
            out.write_all(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
        }
        assert_eq!(out.finish().unwrap(), want.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn a_full_disk_is_an_error_not_a_hang() {
        // /dev/full fails every write with ENOSPC.
        let mut out = OutFile::create(Path::new("/dev/full")).unwrap();
        let chunk = vec![b'x'; CHUNK];
        let mut failed = None;
        for _ in 0..(IN_FLIGHT + 4) {
            if let Err(e) = out.write_all(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => out.finish().unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
