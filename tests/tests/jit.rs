//! JIT-compiled code is named from the map the JIT writes for perf (`/tmp/perf-PID.map`):
//! Node with `--perf-basic-prof` burning CPU in a JS function shows that function, where it
//! used to be `[unknown]` frames in no mapping.

use iotrace_tests::*;

/// A JS program whose only work is `burnCpu`, a loop of about 1.5 s.
const BURN: &str = "\
function burnCpu(ms) {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 100000; i++) x = (x * 31 + i) | 0;
  }
  return x;
}
console.log(burnCpu(1500));
";

#[test]
fn node_js_function_burning_cpu_is_named_from_its_perf_map() {
    let test = "node_js_function_burning_cpu_is_named_from_its_perf_map";
    if !perf_available(test) || !require_tool(test, "node") {
        return;
    }
    let dir = temp_dir("jit-node");
    let trace = dir.join("node.data");
    // Node writes an isolate-*-v8.log into its working directory: keep it in the temp dir.
    let out = record_in(
        &dir,
        &trace,
        &[],
        &["node", "--perf-basic-prof", "-e", BURN],
    );
    assert!(
        out.status.success(),
        "record node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = trace.to_str().expect("utf-8 path");
    let out = run_iotrace(&["flamegraph", t, "--kind", "oncpu", "--folded"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flamegraph failed: {stderr}");
    let folded = String::from_utf8_lossy(&out.stdout);
    let (mut all, mut burn) = (0u64, 0u64);
    for line in folded.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        all += n;
        if stack.contains("burnCpu") {
            burn += n;
        }
    }
    eprintln!("node: {burn} of {all} on-CPU samples in burnCpu; {stderr}");
    // The process does little else than burnCpu: V8 starts in ~50 ms and the loop runs 1.5 s.
    assert!(
        all > 0 && burn * 2 >= all,
        "{burn} of {all} on-CPU samples name burnCpu:\n{folded}"
    );
    assert!(stderr.contains("named from JIT maps"), "{stderr}");
    // Node leaves its map behind, as perf expects; this test's is no use to anyone.
    if let Some(pid) = report_json(&trace)["pid"].as_u64() {
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
