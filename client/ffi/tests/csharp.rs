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
fn csharp_generated_code_for_every_type_compiles_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&kitchen_sink_schema(), Lang::Csharp, dir.path());
    let main = dir.path().join("RoundTrip.cs");
    std::fs::write(
        &main,
        r#"using System;
using System.Collections.Generic;
using Orrery;
using Orrery.Generated;
public static class RoundTrip
{
    public static int Main()
    {
        var t = new Thing
        {
            Id = ulong.MaxValue, Label = "h\u00e9", Maybe = 5, Nick = null, Target = new Vec2(3, 4),
            Nested = -7, Bytes = new byte[] { 0xde, 0xad }, Tags = new List<string> { "a", "" },
            Grid = new List<List<ushort>> { new List<ushort> { 1, 300 }, new List<ushort>() },
            Points = new List<Vec2> { new Vec2(1, 2) },
            Inner = new Inner { Tag = 7, Labels = new List<string> { "x" } },
            Inners = new List<Inner>(),
            Shape = new Shape.Nested { Inner = new Inner { Labels = new List<string>() }, Mood = Mood.Angry },
            Shapes = new List<Shape> { new Shape.Dot(), new Shape.Circle { Item0 = 2.5f }, new Shape.Rect { W = 3, H = 300 } },
            MaybeMood = null, Pair = new Pair { Item0 = 1, Item1 = "one" }, Empty = new Empty(),
            Type = "keyword", Read_ = 1, When = ScheduleAt.Interval(1000000),
        };
        var w = new RowWriter();
        t.Write(w);
        var bytes = w.ToArray();
        var back = Thing.Decode(bytes);
        var again = new RowWriter();
        back.Write(again);
        if (BitConverter.ToString(again.ToArray()) != BitConverter.ToString(bytes)) { Console.WriteLine("re-encoded differently"); return 1; }
        if (back.Label != t.Label || back.Nested != -7 || ((Shape.Rect)back.Shapes[2]).H != 300 || back.Grid[0][1] != 300) return 1;
        try { Thing.Decode(new byte[] { 1 }); Console.WriteLine("a cut row decoded"); return 1; }
        catch (RowFormatException) { }
        var args = Reducers.EncodePoke(back.Shape, back.Who, new List<string> { "a" }, null, "cls", new Vec3(1, 2, 3), back.Pair);
        if (args.Length == 0 || Reducers.EncodeNoop().Length != 0) return 1;
        Console.WriteLine("ROUND TRIP OK " + bytes.Length + " bytes");
        return 0;
    }
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("roundtrip.exe");
    mcs(&[&generated, &main], &exe, false);
    let out = mono(&exe, &[], None);
    assert!(out.starts_with("ROUND TRIP OK"), "{out}");
}

#[test]
#[should_panic(expected = "`orrery-no-such-tool` is not installed")]
fn a_missing_tool_fails_the_test_and_says_how_to_install_it() {
    require_tool("orrery-no-such-tool", INSTALL);
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
