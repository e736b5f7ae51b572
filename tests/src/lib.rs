//! Cross-crate integration tests for Orrery and the harness binaries they drive.
//!
//! The crash test (`tests/crash.rs`) spawns the `crash-harness` binary: a process that owns a
//! durable engine running the [`bank`] module, reads transfer requests on stdin and answers on
//! stdout only once the tick holding each transfer is durable. The test kills it with SIGKILL
//! at random moments and checks [`bank::verify`] after every restart.
//!
//! The server crash test (`tests/server_crash.rs`) does the same to a whole server: the
//! `server-crash-harness` binary serves the [`ledger`] module over real UDP and HTTP, clients
//! record numbers with durable and non-durable calls, and after each `kill -9` every number
//! acknowledged as durable must be there and nobody may be shown online.

pub mod bank;
pub mod ledger;
