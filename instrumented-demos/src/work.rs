//! The work a request asks for: the CPU burn and the `request` span every strategy enters.

use std::time::{Duration, Instant};

use tracing::Span;

use crate::http::{Action, Work};

/// Burns `cpu` of CPU time on this thread by spinning on the monotonic clock.
///
/// Never inlined, so profiles show it as its own frame under whatever called it.
#[inline(never)]
pub fn burn_cpu(cpu: Duration) {
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while start.elapsed() < cpu {
        for _ in 0..64 {
            // xorshift: cheap work the optimiser cannot remove.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

/// The `request` span for one request: `io_ms` and `cpu_us` for `/work`, `status` otherwise.
pub fn request_span(action: &Action) -> Span {
    match *action {
        Action::Work(Work { io_ms, cpu_us }) => tracing::info_span!("request", io_ms, cpu_us),
        Action::Reply(status) => {
            let status = status.code();
            tracing::info_span!("request", status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_cpu_takes_at_least_the_asked_time() {
        let start = Instant::now();
        burn_cpu(Duration::from_micros(500));
        assert!(start.elapsed() >= Duration::from_micros(500));
    }
}
