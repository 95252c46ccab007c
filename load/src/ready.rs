//! The one line a demo server prints when it is ready, `listening on ADDR`, and the reader
//! that waits for it on the server's stdout (used by `iotrace compare` and the tests).

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

/// What precedes the address in the ready line.
pub const PREFIX: &str = "listening on ";

/// Waits up to `timeout` for `listening on ADDR` on `stdout` and returns ADDR, or `None` if
/// the line did not come (the server failed or is slow). The rest of the output is drained on
/// a thread so the server never blocks on a full pipe.
pub fn wait_for_address(stdout: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix(PREFIX) {
                let _ = tx.send(addr.trim().to_owned());
                break;
            }
        }
        for _ in lines {}
    });
    rx.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_after_other_output() {
        let out = b"starting\nlistening on 127.0.0.1:8080\nmore\n".to_vec();
        let addr = wait_for_address(std::io::Cursor::new(out), Duration::from_secs(1));
        assert_eq!(addr.as_deref(), Some("127.0.0.1:8080"));
    }

    #[test]
    fn no_ready_line_is_none() {
        let out = b"error: cannot bind\n".to_vec();
        assert_eq!(
            wait_for_address(std::io::Cursor::new(out), Duration::from_secs(1)),
            None
        );
    }
}
