//! Cross-crate integration tests for Orrery and the harness binaries they drive.
//!
//! The crash test (`tests/crash.rs`) spawns the `crash-harness` binary: a process that owns a
//! durable engine running the [`bank`] module, reads transfer requests on stdin and answers on
//! stdout only once the tick holding each transfer is durable. The test kills it with SIGKILL
//! at random moments and checks [`bank::verify`] after every restart.

pub mod bank;
