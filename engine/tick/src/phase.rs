//! The [`Phase`]s of one tick, in the order the tick runs them.

use std::fmt;

/// One phase of a tick. Every tick runs all phases, in declaration order.
///
/// The derived [`Ord`] is that execution order.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Phase {
    /// Drain client messages received since the last tick.
    Input,
    /// Run queued reducer calls sequentially, each its own transaction.
    Reducers,
    /// Fire due scheduled reducers.
    Scheduled,
    /// Run the module's systems.
    Systems,
    /// Collect this tick's row changes and update indexes.
    Capture,
    /// Append the tick's changes to the commit log.
    Commit,
    /// Evaluate subscriptions and build per-client deltas.
    Publish,
    /// Hand packets to the transport.
    Flush,
}

impl Phase {
    /// The number of phases.
    pub const COUNT: usize = 8;

    /// Every phase, in execution order; `Phase::ALL[p.index()] == p`.
    pub const ALL: [Phase; Phase::COUNT] = [
        Phase::Input,
        Phase::Reducers,
        Phase::Scheduled,
        Phase::Systems,
        Phase::Capture,
        Phase::Commit,
        Phase::Publish,
        Phase::Flush,
    ];

    /// The phase's lowercase name, as used in metrics and trace zones (`"input"`, `"reducers"`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Input => "input",
            Phase::Reducers => "reducers",
            Phase::Scheduled => "scheduled",
            Phase::Systems => "systems",
            Phase::Capture => "capture",
            Phase::Commit => "commit",
            Phase::Publish => "publish",
            Phase::Flush => "flush",
        }
    }

    /// The phase's position in execution order, in `0..Phase::COUNT`; usable as an array index.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
