//! The C# binding (`bindings/csharp`), built with mono's `mcs` and run with `mono`: its
//! row-format reader and writer pass the shared vectors; generated code for a schema with every
//! type compiles; and a console program on the binding and the generated code of the sample
//! plays a live server over UDP (connect, enter the world, subscribe near the player, walk and
//! see the own position change, get an error reply for a bad call). Without mono these tests
//! fail and say how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orrery_cli::codegen::Lang;
use support::{Server, generate, kitchen_sink_schema, native_lib_dir, require_tool, run};

mod support;

const INSTALL: &str = "apt-get install -y mono-mcs mono-runtime";

fn binding() -> PathBuf {
    support::crate_dir().join("bindings/csharp")
}

/// The binding's runtime sources.
fn runtime_sources() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(binding().join("Runtime"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cs"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// Compiles `sources` (plus the runtime) with warnings as errors into `out`.
fn mcs(sources: &[&Path], out: &Path, library: bool) {
    let mut cmd = Command::new(require_tool("mcs", INSTALL));
    cmd.args(["-nologo", "-warnaserror+", "-langversion:7.2"]);
    if library {
        cmd.arg("-target:library");
    }
    cmd.arg(format!("-out:{}", out.display()));
    cmd.args(runtime_sources()).args(sources);
    run(cmd, "mcs", Duration::from_secs(120));
}

fn mono(exe: &Path, args: &[&str], lib_dir: Option<&Path>) -> String {
    let mut cmd = Command::new(require_tool("mono", INSTALL));
    cmd.arg(exe).args(args);
    if let Some(dir) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    let out = run(cmd, "the C# program", Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn csharp_reader_and_writer_pass_the_shared_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("vectors.exe");
    mcs(&[&binding().join("Tests~/VectorsCheck.cs")], &exe, false);
    let out = mono(&exe, &[support::vectors_path().to_str().unwrap()], None);
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.ends_with("passed, 0 failed"), "{out}");
    assert!(!summary.starts_with("0 passed"), "{out}");
}

#[test]
fn csharp_generated_code_for_every_type_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&kitchen_sink_schema(), Lang::Csharp, dir.path());
    mcs(&[&generated], &dir.path().join("KitchenSink.dll"), true);
}

#[test]
fn csharp_client_plays_the_sample_over_udp() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&server.schema(), Lang::Csharp, dir.path());
    let exe = dir.path().join("live.exe");
    mcs(
        &[&generated, &binding().join("Tests~/LiveCheck.cs")],
        &exe,
        false,
    );
    let lib = native_lib_dir().join("liborrery_client_ffi.so");
    std::fs::copy(&lib, dir.path().join("liborrery_client_ffi.so")).unwrap();
    let out = mono(&exe, &[&server.url], Some(dir.path()));
    assert!(out.contains("moved to"), "{out}");
    assert!(
        out.contains("bad call refused: a name has 3-16 characters"),
        "{out}"
    );
    assert!(out.lines().last() == Some("LIVE OK"), "{out}");
}
