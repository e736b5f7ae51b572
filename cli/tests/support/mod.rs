//! A live sample-mmo server (200 NPCs in 600 m) for the CLI's tests.

#![allow(dead_code)]

/// The running server and its data directory; shut down when dropped.
pub struct Server {
    pub local: sample_mmo::LocalServer,
    /// The control plane's base URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let local = sample_mmo::LocalServer::small(dir.path()).unwrap();
        let url = local.url.clone();
        Server {
            local,
            url,
            _dir: dir,
        }
    }
}
