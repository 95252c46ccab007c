//! The span socket under abuse, on the real recorder: 500 clients at once, a flood of the
//! largest frames, length prefixes that claim gigabytes, half frames held open. The recorder
//! reads them all, names the bad clients, and stays bounded in memory (its VmHWM, read by the
//! fixture from /proc while the clients are held). Another user cannot connect at all.

use iotrace_tests::{fixture, record, recorder_hwm_bytes, report_json, root_available, temp_dir};

fn fx() -> String {
    fixture().to_str().expect("utf-8 path").to_owned()
}

#[test]
fn five_hundred_span_clients_at_once_are_all_read() {
    let trace = temp_dir("span-500").join("t.data");
    let out = record(
        &trace,
        &[],
        &["env", "FIXTURE_PARENT_HWM=1", &fx(), "span-clients", "500"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r = report_json(&trace);
    let spans = &r["spans"];
    assert_eq!(spans["clients"], 500, "{spans}");
    assert_eq!(spans["events"], 500, "{spans}");
    assert_eq!(spans["bad_clients"], 0, "{spans}");
    let hwm = recorder_hwm_bytes(&out.stdout).expect("the fixture printed the recorder's VmHWM");
    assert!(hwm < 150 << 20, "recorder peak RSS {} MiB", hwm >> 20);
}

#[test]
fn floods_huge_prefixes_and_half_frames_keep_the_recorder_bounded() {
    let trace = temp_dir("span-abuse").join("t.data");
    // 64 MiB of 4 MiB frames, 50 clients claiming 4 GiB frames, 500 clients holding most of
    // a 4 MiB frame each: 2 GB if the recorder buffered every half frame.
    let out = record(&trace, &[], &[&fx(), "span-abuse", "64", "50", "500"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let hwm = recorder_hwm_bytes(&out.stdout).expect("the fixture printed the recorder's VmHWM");
    assert!(
        hwm < 250 << 20,
        "recorder peak RSS {} MiB with 500 half frames held",
        hwm >> 20
    );
    let r = report_json(&trace);
    assert!(r["truncated"].is_null(), "{}", r["truncated"]);
    let spans = &r["spans"];
    // Every record of the flood arrived: 17 frames of 246,722 Enter records.
    assert!(
        spans["events"].as_u64().unwrap() >= 17 * 246_722,
        "{}",
        spans["events"]
    );
    // Each 4 GiB prefix was a bad client, disconnected and named.
    assert!(
        spans["bad_clients"].as_u64().unwrap() >= 50,
        "{}",
        spans["bad_clients"]
    );
    assert!(err.contains("frame length 4294967280"), "{err}");
}

#[test]
fn another_user_cannot_connect_to_the_span_socket() {
    if !root_available("another_user_cannot_connect_to_the_span_socket") {
        return;
    }
    let trace = temp_dir("span-nobody").join("t.data");
    // The child (root) runs `setpriv --reuid=nobody … fixture span-connect`.
    let out = record(&trace, &[], &[&fx(), "span-as-nobody"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("connect: permission denied"), "{said}");
}
