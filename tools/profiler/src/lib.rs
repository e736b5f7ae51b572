//! `orrery-profiler`: the project's headless Tracy profiler. It owns a client-side
//! implementation of Tracy's network protocol (the version of the pinned `tracy-client-sys`):
//! the handshake, the LZ4-framed stream, the queue items and the queries that resolve names
//! ([`protocol`], [`session`]), a TCP capture of a live Tracy-instrumented process into a
//! [`Summary`] of frames, zones, plots and messages ([`mod@capture`]), and the server's own per-phase
//! tick statistics from `/metrics` ([`ticks`]).
//!
//! It is client side: it must not depend on the engine, the publisher, the server, bevy_ecs or
//! sqlparser (it talks to a server over TCP and HTTP only). It does not link Tracy itself; only
//! its tests instrument a process of their own with the pinned client.

pub mod capture;
pub mod protocol;
pub mod session;
pub mod summary;
pub mod ticks;

pub use capture::{CaptureError, CaptureOptions, ReplayError, capture, replay};
pub use session::{DecodeError, Limits, Session};
pub use summary::Summary;
