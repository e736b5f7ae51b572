//! The capture against a real Tracy client: the test binary runs itself again as a child
//! process instrumented with the pinned `tracy-client` (on demand, localhost, on a free port via
//! `TRACY_PORT`), which marks frames and emits nested static zones, zones with runtime names,
//! a plot and messages on two threads. The capture must see all of it with the right
//! names, and decoding its raw stream again must give the same summary. Two captures in a row
//! check that the client is left ready for the next profiler.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orrery_profiler::{CaptureOptions, Limits, Summary, capture, replay};
use support::{Kill, free_port};

/// Set in the child: how many seconds it runs at most.
const CHILD: &str = "ORRERY_PROFILER_TEST_CHILD";

/// Spins for `d` (a sleep would not show as work inside a zone).
fn busy(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Not a test of its own: the instrumented child process (it returns at once unless [`CHILD`]
/// is set).
#[test]
fn instrumented_child_process() {
    let Ok(seconds) = std::env::var(CHILD) else {
        return;
    };
    let seconds: u64 = seconds.parse().unwrap_or(60);
    let client = tracy_client::Client::start();
    let end = Instant::now() + Duration::from_secs(seconds);
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            let client = tracy_client::Client::start();
            client.set_thread_name("worker");
            while Instant::now() < end {
                {
                    let _zone = tracy_client::span!("worker_job");
                    busy(Duration::from_micros(50));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        })
        .expect("spawn the worker");
    let mut frame = 0u64;
    while Instant::now() < end {
        {
            let _outer = tracy_client::span!("outer");
            {
                let _inner = tracy_client::span!("inner");
                busy(Duration::from_micros(100));
            }
            {
                let name = if frame.is_multiple_of(2) {
                    "named_even"
                } else {
                    "named_odd"
                };
                let _named =
                    client
                        .clone()
                        .span_alloc(Some(name), "runtime_name", file!(), line!(), 0);
                busy(Duration::from_micros(20));
            }
            client.plot(tracy_client::plot_name!("test_plot"), (frame % 7) as f64);
            if frame.is_multiple_of(10) {
                client.message(&format!("message {frame}"), 0);
            }
        }
        client.frame_mark();
        frame += 1;
        std::thread::sleep(Duration::from_millis(4));
    }
    worker.join().expect("the worker");
}

fn spawn_child(port: u16) -> Kill {
    let exe = std::env::current_exe().expect("the test binary");
    let child = Command::new(exe)
        .args(["--exact", "instrumented_child_process", "--nocapture"])
        .env(CHILD, "90")
        .env("TRACY_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the instrumented child");
    Kill(child)
}

fn check(summary: &Summary) {
    let shown = summary.to_string();
    assert!(
        summary.terminated,
        "the client did not end the stream:\n{shown}"
    );
    assert!(summary.on_demand, "{shown}");
    assert!(
        summary.frame_count() >= 50,
        "{} frames:\n{shown}",
        summary.frame_count()
    );
    for name in ["outer", "inner", "named_even", "named_odd", "worker_job"] {
        assert!(summary.zone(name).is_some(), "no zone {name}:\n{shown}");
    }
    let (outer, inner) = (
        summary.zone("outer").expect("outer"),
        summary.zone("inner").expect("inner"),
    );
    assert!(outer.mean_ns >= inner.mean_ns, "{shown}");
    // The inner zone spins 100 µs: its durations are real times in nanoseconds.
    assert!(
        (100_000.0..50_000_000.0).contains(&inner.mean_ns),
        "inner mean {} ns:\n{shown}",
        inner.mean_ns
    );
    assert!(inner.p99_ns >= inner.min_ns && inner.p99_ns <= inner.max_ns);
    let named = summary.zone("named_even").expect("named_even");
    assert_eq!(named.function, "runtime_name");
    assert!(named.file.ends_with("in_process.rs"), "{named:?}");
    assert!(outer.file.ends_with("in_process.rs"), "{outer:?}");
    // Every frame has one outer zone (give or take the frames cut by the capture's ends).
    assert!(
        outer.count + 2 >= summary.frame_count() && outer.count <= summary.frame_count() + 2,
        "{shown}"
    );
    let plot = summary.plot("test_plot").expect("the plot");
    assert!(
        plot.min >= 0.0 && plot.max <= 6.0 && plot.points > 10,
        "{plot:?}"
    );
    assert!(
        summary
            .messages
            .iter()
            .any(|m| m.text.starts_with("message ")),
        "{shown}"
    );
    // Tracy names the thread that started the client "Main thread" whatever it is told.
    for thread in ["Main thread", "worker"] {
        assert!(
            summary
                .threads
                .iter()
                .any(|t| t.name == thread && t.zones > 0),
            "no zones on thread {thread}:\n{shown}"
        );
    }
}

#[test]
fn captures_frames_zones_plots_and_messages_of_a_live_client() {
    let port = free_port();
    let _child = spawn_child(port);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let raw = dir.path().join("stream.raw");

    let mut options = CaptureOptions::new(addr, Duration::from_millis(1500));
    options.connect_timeout = Duration::from_secs(60);
    options.raw = Some(raw.clone());
    let summary = capture(&options).expect("the first capture");
    check(&summary);

    let replayed = replay(&raw, Limits::default()).expect("the raw stream decodes again");
    assert_eq!(replayed, summary);

    // On demand, the client waits for the next profiler once the first one left.
    let mut again = CaptureOptions::new(addr, Duration::from_millis(1500));
    again.connect_timeout = Duration::from_secs(30);
    let second = capture(&again).expect("the second capture");
    check(&second);
    assert!(
        second.frames_before_capture >= summary.frame_count(),
        "the client counted frames between captures: {} then {}",
        summary.frames_before_capture,
        second.frames_before_capture
    );
}
