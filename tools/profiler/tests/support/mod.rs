//! What the profiler's live tests share: free ports and child processes that die with the test.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Child;

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
