//! The workspace's layering, checked with `cargo tree` and `cargo metadata`: each crate does one job of the data
//! flow and depends only on the crates upstream of it (README.md, "Layout"), and every library
//! keeps its `unsafe` in one `sys` module.
//!
//! The rules are the `RULES` table below; a new crate or a new dependency that breaks one fails
//! this test with the path through which the forbidden crate is reached.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `(crate, what it must never link, through normal dependencies, however indirectly)`.
const RULES: &[(&str, &[&str])] = &[
    ("iotrace-wire", &["*"]),
    (
        "iotrace-layer",
        &[
            "iotrace-trace",
            "iotrace-record",
            "iotrace-analysis",
            "iotrace-render",
            "serde",
            "tokio",
        ],
    ),
    (
        "iotrace-trace",
        &[
            "iotrace-record",
            "iotrace-analysis",
            "iotrace-render",
            "perf-event2",
            "procfs",
            "signal-hook",
            "blazesym",
            "inferno",
            "tokio",
        ],
    ),
    (
        "iotrace-record",
        &[
            "iotrace-analysis",
            "iotrace-render",
            "blazesym",
            "inferno",
            "tokio",
        ],
    ),
    (
        "iotrace-analysis",
        &[
            "iotrace-record",
            "iotrace-render",
            "perf-event2",
            "procfs",
            "signal-hook",
            "inferno",
            "tokio",
        ],
    ),
    (
        "iotrace-render",
        &[
            "iotrace-record",
            "perf-event2",
            "procfs",
            "signal-hook",
            "tokio",
        ],
    ),
    (
        "iotrace-load",
        &[
            "iotrace-collector",
            "iotrace-demos",
            "tokio",
            "mio",
            "corosensei",
        ],
    ),
    (
        "iotrace-cli",
        &["iotrace-demos", "tokio", "mio", "corosensei"],
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo's output is UTF-8")
}

/// Workspace members: name → library source file, if it has a library.
fn members() -> BTreeMap<String, Option<PathBuf>> {
    let v: Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--no-deps"]))
            .expect("cargo metadata's JSON");
    let mut members = BTreeMap::new();
    for p in v["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_owned();
        let lib = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib"))
            })
            .and_then(|t| t["src_path"].as_str())
            .map(PathBuf::from);
        members.insert(name, lib);
    }
    members
}

/// The crates `krate` links through normal dependencies, with the features a build of that
/// crate alone resolves (as `cargo tree -p KRATE -e normal` lists them), itself excluded.
fn links(krate: &str) -> BTreeSet<String> {
    cargo(&[
        "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
    ])
    .lines()
    .filter_map(|l| l.split_whitespace().next())
    .filter(|name| *name != krate)
    .map(str::to_owned)
    .collect()
}

#[test]
fn no_crate_links_one_its_layer_forbids() {
    let members = members();
    let mut broken = Vec::new();
    for &(krate, forbidden) in RULES {
        if !members.contains_key(krate) {
            broken.push(format!("{krate}: not a workspace member (update RULES)"));
            continue;
        }
        for name in links(krate) {
            if forbidden.contains(&"*") || forbidden.contains(&name.as_str()) {
                let why = cargo(&["tree", "-p", krate, "-e", "normal", "-i", &name]);
                broken.push(format!("{krate} links {name}:\n{why}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_rules_cover_every_library_of_the_pipeline() {
    for name in members().keys() {
        let pipeline = [
            "wire", "layer", "trace", "record", "analysis", "render", "load", "cli",
        ]
        .iter()
        .any(|p| name == &format!("iotrace-{p}"));
        if pipeline {
            assert!(
                RULES.iter().any(|(k, _)| k == name),
                "{name} has no layering rule"
            );
        }
    }
}

#[test]
fn every_library_denies_unsafe_code_outside_its_sys_module() {
    let mut broken = Vec::new();
    for (name, lib) in &members() {
        let Some(lib) = lib else { continue };
        let src = std::fs::read_to_string(lib).expect("reading a library's root");
        if !src.contains("#![deny(unsafe_code)]") {
            broken.push(format!(
                "{name}: {} lacks #![deny(unsafe_code)]",
                lib.display()
            ));
        }
        // Every allowance sits on the `sys` module and nowhere else, in any of its files.
        let dir = lib.parent().expect("src dir");
        for file in rust_files(dir) {
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if !line.contains("allow(unsafe_code)") || line.trim_start().starts_with("//") {
                    continue;
                }
                let next = lines[i + 1..]
                    .iter()
                    .find(|l| !l.trim_start().starts_with("#[") && !l.trim().is_empty());
                let on_sys = next.is_some_and(|l| {
                    let l = l.trim();
                    l == "mod sys;" || l == "pub mod sys;" || l == "mod sys {"
                });
                if !on_sys {
                    broken.push(format!(
                        "{name}: {}:{} allows unsafe code outside a `sys` module",
                        file.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("reading a source dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}
