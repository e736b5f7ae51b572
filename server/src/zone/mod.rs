//! Zones: one world split over several server processes. This module owns the zone map
//! (which process owns which region) and the handoff relay (the server-to-server half of
//! moving a character across a border); the module owns what a handoff carries and how it
//! is applied (see `docs/zones.md`).

pub mod map;
pub mod relay;

pub use map::{ZoneId, ZoneMap, ZoneMapError, ZoneSpec};
pub use relay::{BorderSync, Relay, RelayConfig, RelayError, RelayStats};
