//! A live sample-mmo server (200 NPCs in 600 m) on its own runtime, for the CLI's tests.

#![allow(dead_code)]

/// The running server; shut down when dropped.
pub struct Server {
    pub runtime: tokio::runtime::Runtime,
    handle: Option<orrery_server::ServerHandle>,
    /// The control plane's base URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let world = sample_mmo::WorldSettings {
            npc_count: 200,
            world_size: 600.0,
            ..Default::default()
        };
        let config = orrery_server::ServerConfig::for_tests(dir.path());
        let handle = runtime
            .block_on(orrery_server::start(sample_mmo::module_with(world), config))
            .unwrap();
        let url = handle.http_url.clone();
        Server {
            runtime,
            handle: Some(handle),
            url,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.runtime.block_on(handle.shutdown());
        }
    }
}
