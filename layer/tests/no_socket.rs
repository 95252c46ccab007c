//! Without `IOTRACE_SOCKET` and with attaching turned off (`IOTRACE_ATTACH=0`) the layer installs
//! nothing and costs nothing; with an unusable socket it says so once and stays off. Neither ever
//! panics. (Without either variable the layer is attachable: `tests/attach.rs`.)

#[test]
fn unset_or_unusable_socket_installs_nothing() {
    std::env::remove_var(iotrace_layer::SOCKET_ENV);
    std::env::set_var(iotrace_layer::ATTACH_ENV, "0");
    iotrace_layer::init();
    assert!(!tracing::dispatcher::has_been_set());

    // Composed by hand it is inert but harmless.
    use tracing_subscriber::layer::SubscriberExt;
    let sub = tracing_subscriber::registry().with(iotrace_layer::layer());
    tracing::subscriber::with_default(sub, || {
        let s = tracing::info_span!("s");
        let _e = s.enter();
        tracing::info!("inert");
    });
    assert!(!iotrace_layer::layer().is_recording());
    iotrace_layer::flush();
}

#[test]
fn bad_socket_path_leaves_the_layer_off() {
    // The sink is decided once per process, on first use; this test's process already decided
    // "unset" if the other test ran first, so use a child process to see the connect failure.
    if std::env::var_os("IOTRACE_LAYER_TEST_CHILD").is_some() {
        iotrace_layer::init();
        assert!(!tracing::dispatcher::has_been_set());
        assert!(!iotrace_layer::layer().is_recording());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "bad_socket_path_leaves_the_layer_off",
            "--nocapture",
        ])
        .env("IOTRACE_LAYER_TEST_CHILD", "1")
        .env(iotrace_layer::SOCKET_ENV, "/nonexistent/iotrace/spans.sock")
        .output()
        .expect("run child");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("iotrace: cannot connect").count(), 1, "{err}");
}
