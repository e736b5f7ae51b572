//! The C++ binding (`bindings/cpp`, header-only C++17), built with g++: its row-format reader
//! and writer pass the shared vectors; generated code for a schema with every type compiles
//! and round-trips a row; and a program on the binding, the generated header of the sample and
//! the staticlib plays a live server over UDP (connect, enter the world, subscribe near the
//! player, walk and see the own position change, get an error reply for a bad call). Without
//! g++ these tests fail and say how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orrery_cli::codegen::Lang;
use support::{Server, generate, kitchen_sink_schema, native_lib_dir, require_tool, run};

mod support;

const INSTALL: &str = "apt-get install -y g++";

fn binding() -> PathBuf {
    support::crate_dir().join("bindings/cpp")
}

/// Compiles and links `source` (with `include` on the include path) into `exe`.
fn gxx(source: &Path, include: &Path, exe: &Path, link_staticlib: bool) {
    let mut cmd = Command::new(require_tool("g++", INSTALL));
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-O0"]);
    cmd.arg("-I").arg(support::crate_dir().join("include"));
    cmd.arg("-I").arg(binding().join("include"));
    cmd.arg("-I").arg(include);
    cmd.arg(source).arg("-o").arg(exe);
    if link_staticlib {
        cmd.arg(native_lib_dir().join("liborrery_client_ffi.a"));
        cmd.args(["-lpthread", "-ldl", "-lm"]);
    }
    run(cmd, "g++", Duration::from_secs(300));
}

fn exec(exe: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let out = run(cmd, "the C++ program", Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cpp_reader_and_writer_pass_the_shared_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("vectors_check");
    gxx(
        &binding().join("tests/vectors_check.cpp"),
        dir.path(),
        &exe,
        false,
    );
    let out = exec(&exe, &[support::vectors_path().to_str().unwrap()]);
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.ends_with("passed, 0 failed"), "{out}");
    assert!(!summary.starts_with("0 passed"), "{out}");
}

#[test]
fn cpp_generated_code_for_every_type_compiles_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    generate(&kitchen_sink_schema(), Lang::Cpp, dir.path());
    let main = dir.path().join("main.cpp");
    std::fs::write(
        &main,
        r#"#include <cstdio>
#include "kitchen_sink.hpp"
namespace g = orrery_generated;
int main() {
    g::Thing t;
    t.id = 7; t.label = "h\xc3\xa9"; t.maybe = 5u; t.nested = std::optional<int32_t>();
    t.grid = {{1, 300}, {}}; t.shape.value = g::Shape::Rect{3, 300};
    t.shapes = {g::Shape{}, g::Shape{g::Shape::Circle{2.5f}}};
    t.maybe_mood = g::Mood::Angry; t.pair.f1 = "one"; t.type = "keyword"; t.read_ = 1;
    orrery::RowWriter w;
    t.write(w);
    std::string error;
    auto back = g::Thing::decode(w.bytes(), &error);
    if (!back) { std::printf("decode failed: %s\n", error.c_str()); return 1; }
    orrery::RowWriter again;
    back->write(again);
    if (again.bytes() != w.bytes()) { std::printf("re-encoded differently\n"); return 1; }
    if (std::get<g::Shape::Rect>(back->shape.value).h != 300 || back->label != t.label) return 1;
    auto args = g::encode_poke(back->shape, back->who, {"a"}, std::nullopt, "cls", {1, 2, 3}, back->pair);
    if (args.empty() || !g::encode_noop().empty()) return 1;
    std::vector<uint8_t> cut(w.bytes().begin(), w.bytes().end() - 1);
    if (g::Thing::decode(cut)) { std::printf("a cut row decoded\n"); return 1; }
    std::printf("ROUND TRIP OK %zu bytes\n", w.bytes().size());
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("kitchen_sink");
    gxx(&main, dir.path(), &exe, false);
    let out = exec(&exe, &[]);
    assert!(out.starts_with("ROUND TRIP OK"), "{out}");
}

#[test]
fn cpp_client_plays_the_sample_over_udp() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    generate(&server.schema(), Lang::Cpp, dir.path());
    let exe = dir.path().join("live_check");
    gxx(
        &binding().join("tests/live_check.cpp"),
        dir.path(),
        &exe,
        true,
    );
    let out = exec(&exe, &[&server.url]);
    assert!(out.contains("moved to"), "{out}");
    assert!(
        out.contains("bad call refused: a name has 3-16 characters"),
        "{out}"
    );
    assert!(out.lines().last() == Some("LIVE OK"), "{out}");
}
