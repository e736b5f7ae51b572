//! A sample world served in-process on a runtime of its own: what tests, examples and tools
//! use when they need a live server (HTTP control plane and UDP) without spawning the binary.
//! Calls made from outside that runtime (FFI, child processes, blocking clients) never
//! starve it.

use orrery_server::{ServerConfig, ServerError, ServerHandle};

use crate::{WorldSettings, module_with};

/// Why a [`LocalServer`] did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    /// The tokio runtime could not be built.
    #[error("cannot build the server's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The server refused to start.
    #[error(transparent)]
    Start(#[from] ServerError),
}

/// The sample module served on its own two-worker tokio runtime; shut down when dropped.
pub struct LocalServer {
    runtime: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
    /// The control plane's base URL.
    pub url: String,
}

impl LocalServer {
    /// Starts the sample module with `world` under `config` (which names the data directory).
    pub fn start(world: WorldSettings, config: ServerConfig) -> Result<Self, LocalServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(LocalServerError::Runtime)?;
        let handle = runtime.block_on(orrery_server::start(module_with(world), config))?;
        let url = handle.http_url.clone();
        Ok(LocalServer {
            runtime,
            handle: Some(handle),
            url,
        })
    }

    /// A small world (200 NPCs on 600 m × 600 m) with the server's test configuration in `dir`.
    pub fn small(dir: &std::path::Path) -> Result<Self, LocalServerError> {
        Self::start(Self::small_world(), ServerConfig::for_tests(dir))
    }

    /// The world [`LocalServer::small`] serves: 200 NPCs on 600 m × 600 m.
    pub fn small_world() -> WorldSettings {
        WorldSettings {
            npc_count: 200,
            world_size: 600.0,
            ..WorldSettings::default()
        }
    }

    /// The runtime the server runs on, for driving async clients next to it.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// The running server.
    pub fn handle(&self) -> &ServerHandle {
        self.handle
            .as_ref()
            .expect("the handle is only taken by shutdown")
    }

    /// Stops the server and waits for it, returning how the tick thread ended.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        match self.handle.take() {
            Some(handle) => self.runtime.block_on(handle.shutdown()),
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take()
            && let Err(error) = self.runtime.block_on(handle.shutdown())
        {
            tracing::warn!(%error, "local sample server stopped with an error");
        }
    }
}
