//! Timekeeping for the Orrery tick loop.
//!
//! This crate owns:
//!
//! - [`Tick`]: the wrapping tick number stamped on everything the server does;
//! - [`FixedClock`]: a sans-IO fixed-step clock that tells the tick loop how many ticks are due,
//!   with an explicit [`OverrunPolicy`] for when the loop falls behind;
//! - [`Phase`]: the fixed, ordered phases of one tick;
//! - [`PhaseTimer`], [`TickTiming`] and [`TickStats`]: per-phase timing of ticks and summaries
//!   (min, p50, p99, max, mean, overruns) over a window of recent ticks.
//!
//! It must stay a leaf: it must not depend on the ECS, networking, or any async runtime, so
//! that its logic can be tested deterministically with virtual time and reused by any loop.

mod clock;
mod phase;
mod stats;
mod tick;

pub use clock::{ClockError, FixedClock, OverrunPolicy, TicksDue};
pub use phase::Phase;
pub use stats::{PhaseSummary, PhaseTimer, TickStats, TickStatsSummary, TickTiming};
pub use tick::Tick;
