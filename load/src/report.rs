//! The result of a load run: counts, rate and latency percentiles, as JSON (serde) or text.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles of successful requests, in microseconds (0 when there were none).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

/// What a load run measured.
///
/// `requests` counts every request whose outcome is known (answered, failed or timed out);
/// `errors` is the part of them that got a non-2xx status, an I/O error, a malformed response
/// or a timeout. Requests still in flight when the duration ends are not counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub req_per_s: f64,
    pub latency_us: Latency,
}

impl Latency {
    /// Summarises a histogram of microsecond latencies.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

impl LoadReport {
    /// A short aligned summary for people.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        format!(
            "requests    {}\n\
             errors      {}\n\
             duration    {:.3} s\n\
             rate        {:.1} req/s\n\
             latency     p50 {}  p90 {}  p99 {}  max {}  mean {}\n",
            self.requests,
            self.errors,
            self.duration_s,
            self.req_per_s,
            micros(l.p50 as f64),
            micros(l.p90 as f64),
            micros(l.p99 as f64),
            micros(l.max as f64),
            micros(l.mean),
        )
    }
}

/// Formats microseconds as `850µs`, `12.3ms` or `1.20s`.
fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_shapes() {
        let report = LoadReport {
            requests: 300,
            errors: 1,
            duration_s: 0.5,
            req_per_s: 600.0,
            latency_us: Latency {
                p50: 900,
                p90: 1500,
                p99: 2_500_000,
                max: 3_000_000,
                mean: 1000.0,
            },
        };
        let text = report.to_text();
        assert!(text.contains("requests    300\n"), "{text}");
        assert!(text.contains("p50 900µs  p90 1.5ms  p99 2.50s"), "{text}");
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["latency_us"]["p99"], 2_500_000);
        assert_eq!(json["requests"], 300);
    }
}
