//! The one parser of times and durations on the command line: `--duration`, `--timeout`,
//! `--from`, `--to` and `--blocked-threshold` all take the same spellings.
//!
//! A time is a decimal number and an optional unit: `ns`, `us` (or `µs`), `ms`, `s`, `m` (or
//! `min`); no unit means seconds (`1.5` is 1.5 s). Spaces around the number and between it and
//! the unit are allowed. The number is read exactly (`0.3s` is 300,000,000 ns, not a float's
//! 299,999,999); digits below a nanosecond are dropped. Error messages do not repeat the
//! input: clap's `invalid value '5x' for '--duration <DURATION>': …` names it already.

use std::time::Duration;

/// What the error messages list as accepted.
const ACCEPTED: &str =
    "a number and a unit: ns, us (or µs), ms, s, m (or min), e.g. 250us, 1.5ms, 2s, 1m; \
     no unit means seconds";

/// The longest `--duration`/`--timeout` accepted.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Parses `text` as nanoseconds; `0` is allowed (a point in a recording, a threshold).
pub fn parse_ns(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u128 = match unit.trim_start() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        _ if number.is_empty() => return Err(format!("expected {ACCEPTED}")),
        u => return Err(format!("unknown unit `{u}`; expected {ACCEPTED}")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(format!("expected {ACCEPTED}"));
    }
    let out_of_range = || "out of range".to_owned();
    let int: u128 = match int {
        "" => 0,
        digits => digits.parse().map_err(|_| out_of_range())?,
    };
    // The fraction's digits that matter at nanosecond precision (a scale has at most 11).
    let mut frac_ns: u128 = 0;
    let mut place = scale;
    for digit in frac.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        frac_ns += u128::from(digit - b'0') * place;
    }
    let ns = int
        .checked_mul(scale)
        .and_then(|n| n.checked_add(frac_ns))
        .ok_or_else(out_of_range)?;
    u64::try_from(ns).map_err(|_| out_of_range())
}

/// Parses `text` as a run length (`--duration`, `--timeout`): above zero, at most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = Duration::from_nanos(parse_ns(text)?);
    if d.is_zero() {
        return Err("the duration must be above zero".to_owned());
    }
    if d > MAX_DURATION {
        return Err("out of range (at most 24 hours)".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit() {
        assert_eq!(parse_ns("250ns"), Ok(250));
        assert_eq!(parse_ns("100us"), Ok(100_000));
        assert_eq!(parse_ns("100µs"), Ok(100_000));
        assert_eq!(parse_ns("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_ns("2s"), Ok(2_000_000_000));
        assert_eq!(parse_ns("1m"), Ok(60_000_000_000));
        assert_eq!(parse_ns("1min"), Ok(60_000_000_000));
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_ns("2"), Ok(2_000_000_000));
        assert_eq!(parse_ns("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_ns("0"), Ok(0));
        assert_eq!(parse_ns(".5"), Ok(500_000_000));
        assert_eq!(parse_ns("5."), Ok(5_000_000_000));
    }

    #[test]
    fn spaces_are_allowed() {
        assert_eq!(parse_ns(" 100 us "), Ok(100_000));
        assert_eq!(parse_ns("3 s"), Ok(3_000_000_000));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_ns("0.3s"), Ok(300_000_000));
        assert_eq!(parse_ns("0.1"), Ok(100_000_000));
        assert_eq!(parse_ns("1.0000000009s"), Ok(1_000_000_000)); // below a nanosecond
        assert_eq!(parse_ns("0.5us"), Ok(500));
        assert_eq!(parse_ns("1.5ns"), Ok(1));
    }

    #[test]
    fn bad_input_says_what_is_accepted() {
        for bad in ["", "s", ".", "1.2.3s", "-1s", "five", "1e3", "inf", "1 2s"] {
            let err = parse_ns(bad).expect_err(bad);
            assert!(
                err.contains("expected a number and a unit: ns, us"),
                "{bad}: {err}"
            );
        }
        let err = parse_ns("5x").unwrap_err();
        assert!(err.contains("unknown unit `x`"), "{err}");
        assert!(err.contains("ns, us (or µs), ms, s, m (or min)"), "{err}");
        assert!(parse_ns("99999999999999999999999s")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_ns("1000000000000m")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn durations_are_above_zero_and_at_most_a_day() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("24h")
            .unwrap_err()
            .contains("unknown unit `h`"));
        assert_eq!(parse_duration("1440m"), Ok(MAX_DURATION));
        assert!(parse_duration("1441m")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse_duration("0").unwrap_err().contains("above zero"));
    }
}
