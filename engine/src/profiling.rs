//! Tracy instrumentation (the `tracy` feature): a zone per tick phase the engine runs, a zone
//! per reducer call named after the reducer, a message per reducer that fails or panics and per
//! systems phase that panics. The module's systems get zones through bevy's `trace` feature,
//! which the `tracy` feature turns on (a `tracing` span per system run, which the server's
//! tracing layer turns into a zone).
//!
//! Without the feature every function here is an empty inline one and [`Zone`] is a unit
//! struct: call sites stay one line and nothing of Tracy is compiled in. With it, zones are
//! recorded only once a binary has started the Tracy client and only while a profiler is
//! connected (Tracy's on-demand mode); otherwise each call costs an atomic load or two. The
//! engine never starts the client: only binaries do.

use orrery_tick::Phase;

/// An open Tracy zone; it ends when dropped. Hold it in a `let _zone = ..;` binding.
#[must_use = "a zone ends when it is dropped: bind it to a variable for the scope it measures"]
pub struct Zone {
    #[cfg(feature = "tracy")]
    _span: Option<tracy_client::Span>,
}

/// Ends the zone (the span inside, with the feature). Without the feature this empty impl is
/// what lets call sites end a zone early with `drop(zone)` the same way in both builds.
impl Drop for Zone {
    #[inline(always)]
    fn drop(&mut self) {}
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Zone")
    }
}

impl Zone {
    /// A zone that records nothing.
    #[inline(always)]
    pub fn none() -> Zone {
        Zone {
            #[cfg(feature = "tracy")]
            _span: None,
        }
    }
}

/// Whether the Tracy instrumentation is compiled in (the `tracy` feature).
pub const ENABLED: bool = cfg!(feature = "tracy");

/// Whether a profiler is connected right now (always `false` without the feature). Guard work
/// that only feeds the profiler (formatting a message) with it.
#[inline(always)]
pub fn connected() -> bool {
    #[cfg(feature = "tracy")]
    {
        tracy_client::Client::is_connected()
    }
    #[cfg(not(feature = "tracy"))]
    {
        false
    }
}

/// A zone named after `phase` ([`Phase::name`]: `"input"`, `"reducers"`, ...). The engine opens
/// the zones of the phases it runs; the server those of input, publish and flush.
#[inline(always)]
pub fn phase(phase: Phase) -> Zone {
    #[cfg(feature = "tracy")]
    {
        use tracy_client::span_location;
        let Some(client) = tracy_client::Client::running() else {
            return Zone::none();
        };
        let location = match phase {
            Phase::Input => span_location!("input"),
            Phase::Reducers => span_location!("reducers"),
            Phase::Scheduled => span_location!("scheduled"),
            Phase::Systems => span_location!("systems"),
            Phase::Capture => span_location!("capture"),
            Phase::Commit => span_location!("commit"),
            Phase::Publish => span_location!("publish"),
            Phase::Flush => span_location!("flush"),
        };
        Zone {
            _span: Some(client.span(location, 0)),
        }
    }
    #[cfg(not(feature = "tracy"))]
    {
        let _ = phase;
        Zone::none()
    }
}

/// A zone for one call of the reducer `name`, named after it (its source location says function
/// `reducer`). The name is copied for the profiler, so this is done only while one is connected.
#[inline(always)]
pub fn reducer(name: &str) -> Zone {
    #[cfg(feature = "tracy")]
    {
        if !tracy_client::Client::is_connected() {
            return Zone::none();
        }
        let Some(client) = tracy_client::Client::running() else {
            return Zone::none();
        };
        Zone {
            _span: Some(client.span_alloc(Some(name), "reducer", file!(), line!(), 0)),
        }
    }
    #[cfg(not(feature = "tracy"))]
    {
        let _ = name;
        Zone::none()
    }
}

/// Colour of error messages (RGBA).
pub const ERROR_COLOR: u32 = 0xff_50_50_ff;
/// Colour of lifecycle messages (connects, disconnects; RGBA).
pub const LIFECYCLE_COLOR: u32 = 0x60_c0_ff_ff;

/// Sends `text()` to the profiler as a message in `rgba`, if one is connected (`text` is not
/// called otherwise).
#[inline(always)]
pub fn message(rgba: u32, text: impl FnOnce() -> String) {
    #[cfg(feature = "tracy")]
    {
        if tracy_client::Client::is_connected()
            && let Some(client) = tracy_client::Client::running()
        {
            client.color_message(&text(), rgba, 0);
        }
    }
    #[cfg(not(feature = "tracy"))]
    {
        let _ = (rgba, text);
    }
}
