//! The [`Tick`] number: a `u32` counter that wraps, compared like a network sequence number.

use std::fmt;

/// The number of a server tick.
///
/// At 20 Hz a `u32` wraps after about 6.8 years of uptime (at 60 Hz, about 2.3 years), so tick
/// arithmetic wraps instead of overflowing, and ticks are compared the way network sequence
/// numbers are (RFC 1982): `a` is newer than `b` when `a` is less than half the number space
/// (2^31 ticks) ahead of `b`.
///
/// `Tick` deliberately implements neither [`Ord`] nor [`PartialOrd`]: the wrapping order is not
/// transitive (for three ticks evenly spaced around the circle, each is newer than the one before
/// it), and ticks exactly 2^31 apart are neither newer nor older than each other, so it cannot
/// satisfy those traits' contracts and would silently break sorting and `BTreeMap`s. Use
/// [`Tick::is_newer_than`], [`Tick::diff`] or [`Tick::ticks_since`] instead, or sort by
/// [`Tick::get`] when the ticks are known not to straddle a wrap.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct Tick(u32);

impl Tick {
    /// The first tick.
    pub const ZERO: Tick = Tick(0);

    /// The tick with the given number.
    #[must_use]
    pub const fn new(number: u32) -> Self {
        Tick(number)
    }

    /// This tick's number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The tick after this one, wrapping from `u32::MAX` to zero.
    #[must_use]
    pub const fn next(self) -> Self {
        self.wrapping_add(1)
    }

    /// The tick `ticks` after this one, wrapping.
    #[must_use]
    pub const fn wrapping_add(self, ticks: u32) -> Self {
        Tick(self.0.wrapping_add(ticks))
    }

    /// The tick `ticks` before this one, wrapping.
    #[must_use]
    pub const fn wrapping_sub(self, ticks: u32) -> Self {
        Tick(self.0.wrapping_sub(ticks))
    }

    /// The signed wrapping distance from `earlier` to `self`: positive when `self` is newer,
    /// negative when it is older, zero when equal.
    ///
    /// Ticks exactly 2^31 apart give `i32::MIN` in both directions.
    ///
    /// ```
    /// # use orrery_tick::Tick;
    /// assert_eq!(Tick::new(5).diff(Tick::new(3)), 2);
    /// assert_eq!(Tick::new(3).diff(Tick::new(5)), -2);
    /// assert_eq!(Tick::new(1).diff(Tick::new(u32::MAX)), 2);
    /// ```
    #[must_use]
    pub const fn diff(self, earlier: Tick) -> i32 {
        self.0.wrapping_sub(earlier.0).cast_signed()
    }

    /// Whether `self` comes after `other`, that is, the wrapping distance from `other` to `self`
    /// is in `1..2^31`.
    ///
    /// ```
    /// # use orrery_tick::Tick;
    /// assert!(Tick::new(0).is_newer_than(Tick::new(u32::MAX)));
    /// assert!(!Tick::new(7).is_newer_than(Tick::new(7)));
    /// ```
    #[must_use]
    pub const fn is_newer_than(self, other: Tick) -> bool {
        self.diff(other) > 0
    }

    /// How many ticks have passed from `earlier` up to `self`, counting forwards with wrapping.
    ///
    /// Unlike [`Tick::diff`] this never goes negative: if `earlier` is in fact newer, the result is
    /// the (large) forward distance around the wrap. Use it when `earlier` is known to be earlier,
    /// for example the tick a value was last written at.
    ///
    /// ```
    /// # use orrery_tick::Tick;
    /// assert_eq!(Tick::new(10).ticks_since(Tick::new(4)), 6);
    /// assert_eq!(Tick::new(2).ticks_since(Tick::new(u32::MAX)), 3);
    /// ```
    #[must_use]
    pub const fn ticks_since(self, earlier: Tick) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
