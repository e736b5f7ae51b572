//! Simulation time: [`Timestamp`] (microseconds since the Unix epoch) and [`ScheduleAt`]
//! (when a schedule-table row fires).
//!
//! The engine never reads the system clock: every tick is given its timestamp by the caller of
//! `Engine::step`, so replaying an input log reproduces the same timestamps.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::codec::{
    OrreryType, RowDecodeError, TypeDesc, read_varint, unzigzag, write_varint, zigzag,
};

/// Microseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// From microseconds since the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Only binaries and drivers call this; the engine takes
    /// timestamps as inputs.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts a [`SystemTime`], saturating outside the representable range.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_micros(rhs)))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}µs)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        write!(f, "{secs}.{micros:06}s")
    }
}

impl OrreryType for Timestamp {
    fn type_desc() -> TypeDesc {
        TypeDesc::Timestamp
    }
    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, zigzag(self.0));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(Timestamp(unzigzag(read_varint(input, "Timestamp")?)))
    }
}

/// When a schedule-table row fires.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ScheduleAt {
    /// Repeatedly, at every multiple of the `Duration` since the Unix epoch, starting with the
    /// first one after the row is written: a wall-clock-aligned timer, so its phase is the same
    /// before and after a restart without being stored anywhere. On a tick grid whose step
    /// divides the interval (the usual case: 50 ms ticks, 1 s interval) it fires on exact grid
    /// ticks; otherwise in the first tick at or after each multiple. Fires at most once per
    /// tick: periods missed while the server was behind or down are skipped, keeping phase.
    Interval(Duration),
    /// Once, in the first tick whose timestamp is at or after this time; the row is deleted after
    /// it fires.
    At(Timestamp),
}

impl ScheduleAt {
    /// When a row with this schedule, inserted or changed at `now`, is first due.
    pub fn first_due(self, now: Timestamp) -> Timestamp {
        match self {
            ScheduleAt::Interval(every) => {
                let step = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
                if step <= 0 {
                    // A zero interval is allowed and means "each tick".
                    return now;
                }
                let next = now.as_micros().div_euclid(step).saturating_add(1);
                Timestamp::from_micros(next.saturating_mul(step))
            }
            ScheduleAt::At(at) => at,
        }
    }
}

impl From<Duration> for ScheduleAt {
    fn from(d: Duration) -> Self {
        ScheduleAt::Interval(d)
    }
}

impl From<Timestamp> for ScheduleAt {
    fn from(t: Timestamp) -> Self {
        ScheduleAt::At(t)
    }
}

impl OrreryType for ScheduleAt {
    fn type_desc() -> TypeDesc {
        TypeDesc::ScheduleAt
    }
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ScheduleAt::Interval(d) => {
                out.push(0);
                d.encode(out);
            }
            ScheduleAt::At(t) => {
                out.push(1);
                t.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        match u8::decode(input)? {
            0 => Ok(ScheduleAt::Interval(Duration::decode(input)?)),
            1 => Ok(ScheduleAt::At(Timestamp::decode(input)?)),
            tag => Err(RowDecodeError::InvalidTag {
                what: "ScheduleAt",
                tag: u64::from(tag),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_displays() {
        let t = Timestamp::from_micros(1_500_000);
        assert_eq!((t + Duration::from_millis(500)).as_micros(), 2_000_000);
        assert_eq!((t - Duration::from_secs(2)).as_micros(), -500_000);
        assert_eq!(
            Timestamp::from_micros(i64::MAX) + Duration::MAX,
            Timestamp::from_micros(i64::MAX)
        );
        assert_eq!(t.to_string(), "1.500000s");
        assert_eq!(Timestamp::from_micros(-1).to_string(), "-1.999999s");
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn schedule_at_round_trips_and_rejects_bad_tags() {
        for s in [
            ScheduleAt::Interval(Duration::from_millis(250)),
            ScheduleAt::At(Timestamp::from_micros(-42)),
        ] {
            assert_eq!(ScheduleAt::from_bytes(&s.to_bytes()).unwrap(), s);
        }
        assert!(matches!(
            ScheduleAt::from_bytes(&[9, 0]),
            Err(RowDecodeError::InvalidTag { tag: 9, .. })
        ));
    }
}
