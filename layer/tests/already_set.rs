//! `init` leaves an existing global subscriber alone and does not even connect.

use std::os::unix::net::UnixListener;
use std::time::Duration;

#[test]
fn init_does_nothing_when_a_global_subscriber_exists() {
    let dir = std::env::temp_dir().join(format!("iotrace-layer-set-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("spans.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    tracing::subscriber::set_global_default(tracing_subscriber::registry()).expect("first");
    std::env::set_var(iotrace_layer::SOCKET_ENV, &path);
    iotrace_layer::init();
    std::thread::sleep(Duration::from_millis(50));
    assert!(listener.accept().is_err(), "no connection was made");
    let _ = std::fs::remove_dir_all(&dir);
}
