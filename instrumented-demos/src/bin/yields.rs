//! Three tokio tasks, each waiting its own way: what `iotrace report` names as their yield
//! sites and wakers (see `collector/REPORT.md`, "Yield sites and wakes").
//!
//! - `sleeper` awaits `tokio::time::sleep(10 ms)`: woken by the timer.
//! - `reader` awaits a `TcpStream` read fed by a client thread that writes a byte every 10 ms:
//!   woken by I/O readiness.
//! - `receiver` awaits an mpsc channel fed by a std thread every 10 ms: woken by a thread
//!   outside the runtime.
//!
//! `yields [ROUNDS]` (default 50): each task waits ROUNDS times, then the program exits. Binds
//! 127.0.0.1 only.

use std::io::Write;
use std::time::Duration;

use tokio::io::AsyncReadExt;

const GAP: Duration = Duration::from_millis(10);

async fn sleeper(rounds: u32) {
    for _ in 0..rounds {
        tokio::time::sleep(GAP).await;
    }
}

async fn reader(listener: tokio::net::TcpListener, rounds: u32) -> u32 {
    let Ok((mut stream, _)) = listener.accept().await else {
        return 0;
    };
    let mut got = 0;
    let mut byte = [0u8; 1];
    while got < rounds {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => got += 1,
        }
    }
    got
}

async fn receiver(mut rx: tokio::sync::mpsc::Receiver<u32>) -> u32 {
    let mut got = 0;
    while rx.recv().await.is_some() {
        got += 1;
    }
    got
}

fn main() -> std::process::ExitCode {
    iotrace_layer::init();
    let rounds: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 50,
        Some(Ok(n)) if n > 0 && n <= 100_000 => n,
        Some(_) => {
            eprintln!("usage: yields [ROUNDS]   (ROUNDS: 1..=100000, default 50)");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("yields: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);

        let writer = std::thread::Builder::new()
            .name("byte-writer".into())
            .spawn(move || -> std::io::Result<()> {
                let mut s = std::net::TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                for _ in 0..rounds {
                    std::thread::sleep(GAP);
                    s.write_all(b"x")?;
                }
                Ok(())
            })?;
        let sender = std::thread::Builder::new()
            .name("channel-feeder".into())
            .spawn(move || {
                for i in 0..rounds {
                    std::thread::sleep(GAP);
                    if tx.blocking_send(i).is_err() {
                        break;
                    }
                }
            })?;

        let a = tokio::task::Builder::new()
            .name("sleeper")
            .spawn(sleeper(rounds))?;
        let b = tokio::task::Builder::new()
            .name("reader")
            .spawn(reader(listener, rounds))?;
        let c = tokio::task::Builder::new()
            .name("receiver")
            .spawn(receiver(rx))?;
        let (_, read, received) = (a.await, b.await, c.await);
        let _ = writer.join();
        let _ = sender.join();
        let (read, received) = (read.unwrap_or(0), received.unwrap_or(0));
        println!("yields: {rounds} sleeps, {read} bytes read, {received} messages received");
        Ok::<_, std::io::Error>(read == rounds && received == rounds)
    });
    iotrace_layer::flush();
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("yields: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
