//! Shared by the live tests: a sample-mmo server on its own runtime, the native library's build
//! directory, and external tools (mono, g++) that must be installed: a missing tool fails the
//! test with the install command, it never passes silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A live sample-mmo server (200 NPCs in 600 m) on its own runtime, and its data directory.
/// FFI calls and child processes run outside that runtime.
pub struct Server {
    local: sample_mmo::LocalServer,
    /// The control plane's base URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = orrery_server::ServerConfig {
            // Connections alternate between two network workers (two ports).
            net_workers: 2,
            ..orrery_server::ServerConfig::for_tests(dir.path())
        };
        let local =
            sample_mmo::LocalServer::start(sample_mmo::LocalServer::small_world(), config).unwrap();
        let url = local.url.clone();
        Server {
            local,
            url,
            _dir: dir,
        }
    }
}

impl Server {
    /// The module schema, fetched over HTTP like a client does.
    pub fn schema(&self) -> orrery_client::row::ModuleSchema {
        let http = orrery_client::http::ControlPlane::new(&self.url).unwrap();
        self.local.runtime().block_on(http.schema()).unwrap()
    }
}

/// Writes the code `orrery generate` emits for `schema` in `lang` into `dir`; returns its path.
pub fn generate(
    schema: &orrery_client::row::ModuleSchema,
    lang: orrery_cli::codegen::Lang,
    dir: &Path,
) -> PathBuf {
    let files = orrery_cli::codegen::generate(schema, lang, &Default::default()).unwrap();
    let path = dir.join(&files[0].name);
    std::fs::write(&path, &files[0].contents).unwrap();
    path
}

/// The schema with every type of the row format (shared with the CLI's tests).
pub fn kitchen_sink_schema() -> orrery_client::row::ModuleSchema {
    let path = crate_dir().join("../../cli/tests/generated/kitchen_sink.schema.json");
    let text = std::fs::read_to_string(&path).unwrap();
    orrery_client::row::ModuleSchema::from_json_str(&text).unwrap()
}

/// This crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared row-format vectors.
pub fn vectors_path() -> PathBuf {
    crate_dir().join("tests/vectors/row_vectors.json")
}

/// The directory holding this crate's cdylib and staticlib as built for these tests:
/// `target/<profile>/deps`, beside the test binary (cargo builds the library with all its crate
/// types as a dependency of the tests; only a build naming the library itself copies them up to
/// `target/<profile>`, so that copy may be stale).
pub fn native_lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    for lib in ["liborrery_client_ffi.so", "liborrery_client_ffi.a"] {
        assert!(
            dir.join(lib).exists(),
            "{lib} not found in {}: cargo builds the crate's cdylib and staticlib with its tests",
            dir.display()
        );
    }
    dir
}

/// The path of `tool` on PATH, or a failure saying how to install it.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed, so this test cannot build and run its program. \
                 Install it ({install}); .ci/run does this on a fresh machine."
            )
        })
}

/// Runs `cmd` to completion with a deadline (the child is killed if it passes), returning its
/// output; panics with the output if it failed.
pub fn run(mut cmd: Command, what: &str, deadline: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let until = Instant::now() + deadline;
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).ok();
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).ok();
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
