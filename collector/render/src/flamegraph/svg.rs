//! Folded stacks in and out, and SVGs drawn by `inferno` (plain and differential).

use std::io::{self, BufRead, Write};

use inferno::flamegraph::color::{BasicPalette, MultiPalette, Palette};

use super::{Folded, Kind, Options};

/// `frame;frame;frame weight` lines, as flamegraph.pl and inferno read them.
pub fn write_folded(folded: &Folded, mut out: impl Write) -> io::Result<()> {
    let mut w = io::BufWriter::new(&mut out);
    for (stack, weight) in &folded.lines {
        writeln!(w, "{stack} {weight}")?;
    }
    w.flush()
}

/// Read folded lines (`stack weight`); lines that do not end in a number are skipped.
pub fn read_folded(input: impl BufRead) -> io::Result<Vec<(String, u64)>> {
    let mut lines = Vec::new();
    for line in input.lines() {
        let line = line?;
        let line = line.trim_end();
        if let Some((stack, n)) = line.rsplit_once(' ') {
            if let Ok(n) = n.parse::<u64>() {
                lines.push((stack.to_owned(), n));
            }
        }
    }
    Ok(lines)
}

fn inferno_options(kind: Kind, title: String, unit: &str) -> inferno::flamegraph::Options<'static> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = title;
    o.count_name = unit.to_owned();
    o.hash = true;
    o.deterministic = true;
    o.colors = match kind {
        Kind::OnCpu | Kind::Async => Palette::Basic(BasicPalette::Hot),
        Kind::OffCpu => Palette::Basic(BasicPalette::Io),
        Kind::Idle => Palette::Basic(BasicPalette::Aqua),
        Kind::Wake => Palette::Basic(BasicPalette::Purple),
        // `_[k]` (kernel, orange) and `_[i]` (here: off-CPU, blue-green) annotations.
        Kind::Wall => Palette::Multi(MultiPalette::Java),
    };
    o
}

fn default_title(kind: Kind, command: &str) -> String {
    let what = match kind {
        Kind::OnCpu => "On-CPU",
        Kind::OffCpu => "Off-CPU (time blocked)",
        Kind::Wall => "Wall clock: on-CPU and off-CPU",
        Kind::Async => "Async: by task and span",
        Kind::Idle => "Idle time by yield site",
        Kind::Wake => "Wake→poll delay by waker",
    };
    if command.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {command}")
    }
}

/// Draw `folded` as an interactive SVG.
pub fn write_svg(folded: &Folded, opts: &Options, out: impl Write) -> io::Result<()> {
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| default_title(opts.kind, &folded.command));
    let mut o = inferno_options(opts.kind, title, folded.unit);
    let text: Vec<String> = folded
        .lines
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    inferno::flamegraph::from_lines(&mut o, text.iter().map(String::as_str), out)
}

/// A differential flamegraph: the shape of `after`, colored by how each frame changed from
/// `before` (red: grew, blue: shrank). Weights are normalized so that different lengths of
/// recording compare.
pub fn write_diff_svg(
    before: &[(String, u64)],
    after: &[(String, u64)],
    title: &str,
    unit: &str,
    out: impl Write,
) -> io::Result<()> {
    let as_text = |lines: &[(String, u64)]| {
        let mut t = String::new();
        for (s, n) in lines {
            t.push_str(s);
            t.push(' ');
            t.push_str(&n.to_string());
            t.push('\n');
        }
        t
    };
    let (b, a) = (as_text(before), as_text(after));
    let mut diff = Vec::new();
    let opt = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    inferno::differential::from_readers(opt, b.as_bytes(), a.as_bytes(), &mut diff)?;
    let mut o = inferno_options(Kind::OnCpu, title.to_owned(), unit);
    inferno::flamegraph::from_reader(&mut o, &diff[..], out)
}
