//! JIT symbol maps, `/tmp/perf-PID.map`, read as perf reads them: one `START SIZE name` line per
//! piece of generated code (V8 with `--perf-basic-prof`, the JVM with perf-map-agent, .NET with
//! `DOTNET_PerfMapEnabled`, LuaJIT, …). START and SIZE are hex, with or without `0x`; the name
//! is the rest of the line. Where ranges overlap (a JIT reuses freed code memory), the later
//! line wins, as in perf.
//!
//! A map can grow to hundreds of megabytes in a long-running server, so it is streamed: only
//! the addresses asked for are kept, sorted, and each line is matched against them by binary
//! search. Lines that do not parse are skipped and counted; nothing here panics on input.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Longer lines are skipped (a name is never this long; a damaged file could be one line).
const MAX_LINE: u64 = 64 * 1024;

/// Where a process's JIT writes its map, by the convention perf defines.
pub fn path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{pid}.map"))
}

/// What reading one map found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// A name per address asked for (same order), `None` where no line covers it.
    pub names: Vec<Option<String>>,
    /// Lines that were not `START SIZE name`.
    pub bad_lines: u64,
}

/// One parsed line: `(start, size, name)`, or `None` if it is not a map line.
pub fn parse_line(line: &[u8]) -> Option<(u64, u64, String)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (start, rest) = split_field(line)?;
    let (size, name) = split_field(rest)?;
    let name = String::from_utf8_lossy(name);
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some((hex(start)?, hex(size)?, name.to_owned()))
}

/// The first space-separated field and the rest after the spaces that end it.
fn split_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = trim_start(s);
    let end = s.iter().position(|b| b.is_ascii_whitespace())?;
    Some((&s[..end], trim_start(&s[end..])))
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[skip..]
}

fn hex(field: &[u8]) -> Option<u64> {
    let digits = field
        .strip_prefix(b"0x")
        .or_else(|| field.strip_prefix(b"0X"))
        .unwrap_or(field);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Names for `addrs` (sorted ascending, no duplicates) from a map's lines.
pub fn resolve(reader: impl Read, addrs: &[u64]) -> io::Result<Resolved> {
    let mut out = Resolved {
        names: vec![None; addrs.len()],
        bad_lines: 0,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if n as u64 == MAX_LINE && line.last() != Some(&b'\n') {
            // Too long to be a map line: skip the rest of it.
            reader.skip_until(b'\n')?;
            out.bad_lines += 1;
            continue;
        }
        let Some((start, size, name)) = parse_line(&line) else {
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.bad_lines += 1;
            }
            continue;
        };
        let end = start.saturating_add(size);
        let first = addrs.partition_point(|&a| a < start);
        let last = addrs.partition_point(|&a| a < end);
        if first < last {
            let name = name.replace(';', ",");
            for slot in &mut out.names[first..last] {
                *slot = Some(name.clone());
            }
        }
    }
    Ok(out)
}

/// Names for `addrs` (sorted, deduplicated) from the map of `pid`; `None` when the process
/// has no map, or one that perf too would refuse: not a regular file, or owned by someone
/// other than root and this user (anyone can write to /tmp).
pub fn resolve_pid(pid: u32, addrs: &[u64]) -> Option<Resolved> {
    resolve_file(&path(pid), addrs)
}

fn resolve_file(path: &Path, addrs: &[u64]) -> Option<Resolved> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let me = crate::sys::euid();
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != me) {
        return None;
    }
    resolve(file, addrs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_and_without_0x_and_names_keep_their_spaces() {
        assert_eq!(
            parse_line(b"7f2fc9fc5d00 26c JS:*burnCpu [eval]:1:17\n"),
            Some((
                0x7f2f_c9fc_5d00,
                0x26c,
                "JS:*burnCpu [eval]:1:17".to_owned()
            ))
        );
        assert_eq!(
            parse_line(b"0x1000 0x20 java.lang.String::hashCode()\r\n"),
            Some((0x1000, 0x20, "java.lang.String::hashCode()".to_owned()))
        );
        assert_eq!(
            parse_line(b"  1000\t20   padded name  "),
            Some((0x1000, 0x20, "padded name".to_owned()))
        );
    }

    #[test]
    fn garbage_lines_are_refused_not_panicked_on() {
        for bad in [
            &b""[..],
            b"\n",
            b"1000",
            b"1000 20",
            b"1000 20   \n",
            b"zz 20 name",
            b"1000 -20 name",
            b"0x 20 name",
            b"10000000000000000 20 name",
            b"\xff\xfe 20 name",
            b"1000 20",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // A name that is not UTF-8 is kept, lossily.
        let (_, _, name) = parse_line(b"1000 20 f\xffo").unwrap();
        assert_eq!(name, "f\u{fffd}o");
    }

    #[test]
    fn addresses_resolve_by_range_and_later_lines_win() {
        let map = "\
1000 100 first
1080 10 overlaid_later
2000 10 two
garbage line here
ffffffffffffff00 1000 wraps_to_the_end
3000 0 empty_range
";
        let addrs = [
            0xfff,
            0x1000,
            0x1085,
            0x10ff,
            0x1100,
            0x2005,
            0x3000,
            u64::MAX - 1,
        ];
        let r = resolve(map.as_bytes(), &addrs).unwrap();
        let names: Vec<Option<&str>> = r.names.iter().map(Option::as_deref).collect();
        assert_eq!(
            names,
            [
                None,
                Some("first"),
                Some("overlaid_later"),
                Some("first"),
                None,
                Some("two"),
                None,
                Some("wraps_to_the_end"),
            ]
        );
        assert_eq!(r.bad_lines, 1);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut map = vec![b'a'; MAX_LINE as usize * 3];
        map.extend_from_slice(b"\n1000 10 after_the_long_line\n");
        let r = resolve(&map[..], &[0x1008]).unwrap();
        assert_eq!(r.names, [Some("after_the_long_line".to_owned())]);
        assert_eq!(r.bad_lines, 1);
    }

    #[test]
    fn semicolons_stay_out_of_names() {
        let r = resolve(&b"1000 10 a;b\n"[..], &[0x1000]).unwrap();
        assert_eq!(r.names, [Some("a,b".to_owned())]);
    }

    #[test]
    fn a_missing_map_resolves_nothing() {
        assert_eq!(
            resolve_file(Path::new("/nonexistent/perf-1.map"), &[1]),
            None
        );
    }
}
