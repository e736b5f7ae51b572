//! `load-test`: a headless bot swarm that proves how many players an Orrery server holds.
//!
//! Each bot is a real [`orrery_client::Client`] over real UDP (its own socket and driver
//! task; many bots per process, optionally several processes), playing the sample MMO: it
//! creates an identity, enters the world, subscribes like a game client, and then sends one
//! reducer call per input tick according to its behaviour (wander, swarm, fight, chat, mixed).
//! The run samples the bots, the server's `/metrics` and the server process every second and
//! ends with a JSON and a self-contained HTML report (time series, histograms, pass/fail
//! checks against budgets); `--verify` makes every bot compare its mirror with the server's
//! rows at the end.
//!
//! | module | owns |
//! |---|---|
//! | [`behavior`] | behaviours, roles, the per-bot decision maker |
//! | [`fleet`] | the bots of one process: connect, play, stop, verify; shared counters |
//! | [`verify`] | mirror-versus-server comparison |
//! | [`scrape`] | `/metrics` parsing, a tiny HTTP GET, `/proc` usage |
//! | [`server`] | starting `sample-mmo` as a child process |
//! | [`run`] | one run: server, bots (local or worker processes), sampling, report |
//! | [`report`], [`html`] | the report and its HTML page |
//! | [`hist`] | latency histograms |
//!
//! Dependency rule (`docs/architecture.md`): client side only — `orrery-client` and what it
//! re-exports; never the engine, the publisher or the server. How to run it and what the
//! numbers mean: `docs/load-test.md`.

pub mod behavior;
pub mod fleet;
pub mod hist;
pub mod html;
pub mod report;
pub mod run;
pub mod scrape;
pub mod server;
pub mod verify;
