//! The I/O strategies, one module each; every `serve` takes the bound listener and the
//! shutdown pipe and returns once a signal arrives.

pub mod epoll;
pub mod green;
pub mod threads;
pub mod tokio;
