//! Tick numbers: wrapping arithmetic and sequence-number comparison.

use orrery_tick::Tick;
use proptest::prelude::*;

const HALF: u32 = 1 << 31;

#[test]
fn constructors_and_accessors_round_trip() {
    assert_eq!(Tick::ZERO.get(), 0);
    assert_eq!(Tick::default(), Tick::ZERO);
    assert_eq!(Tick::new(42).get(), 42);
    assert_eq!(Tick::new(42).to_string(), "42");
}

#[test]
fn arithmetic_wraps_instead_of_overflowing() {
    assert_eq!(Tick::new(7).next(), Tick::new(8));
    assert_eq!(Tick::new(u32::MAX).next(), Tick::ZERO);
    assert_eq!(Tick::new(u32::MAX - 1).wrapping_add(5), Tick::new(3));
    assert_eq!(Tick::new(3).wrapping_sub(5), Tick::new(u32::MAX - 1));
}

#[test]
fn diff_is_signed_wrapping_distance() {
    assert_eq!(Tick::new(10).diff(Tick::new(4)), 6);
    assert_eq!(Tick::new(4).diff(Tick::new(10)), -6);
    assert_eq!(Tick::new(2).diff(Tick::new(u32::MAX)), 3);
    assert_eq!(Tick::new(u32::MAX).diff(Tick::new(2)), -3);
    assert_eq!(Tick::new(9).diff(Tick::new(9)), 0);
    assert_eq!(Tick::new(HALF).diff(Tick::ZERO), i32::MIN);
    assert_eq!(Tick::ZERO.diff(Tick::new(HALF)), i32::MIN);
}

#[test]
fn newer_than_follows_the_wrap() {
    assert!(Tick::new(1).is_newer_than(Tick::ZERO));
    assert!(!Tick::ZERO.is_newer_than(Tick::new(1)));
    assert!(Tick::ZERO.is_newer_than(Tick::new(u32::MAX)));
    assert!(!Tick::new(u32::MAX).is_newer_than(Tick::ZERO));
    assert!(!Tick::new(5).is_newer_than(Tick::new(5)));
    assert!(Tick::new(HALF - 1).is_newer_than(Tick::ZERO));
    // Exactly half the number space apart: neither is newer.
    assert!(!Tick::new(HALF).is_newer_than(Tick::ZERO));
    assert!(!Tick::ZERO.is_newer_than(Tick::new(HALF)));
}

#[test]
fn ticks_since_counts_forward_across_the_wrap() {
    assert_eq!(Tick::new(10).ticks_since(Tick::new(4)), 6);
    assert_eq!(Tick::new(2).ticks_since(Tick::new(u32::MAX)), 3);
    assert_eq!(Tick::new(4).ticks_since(Tick::new(4)), 0);
    assert_eq!(Tick::new(4).ticks_since(Tick::new(5)), u32::MAX);
}

proptest! {
    #[test]
    fn a_tick_ahead_by_less_than_half_is_newer_and_not_older(start: u32, ahead in 1..HALF) {
        let earlier = Tick::new(start);
        let later = earlier.wrapping_add(ahead);
        prop_assert!(later.is_newer_than(earlier));
        prop_assert!(!earlier.is_newer_than(later));
        prop_assert_eq!(i64::from(later.diff(earlier)), i64::from(ahead));
        prop_assert_eq!(later.ticks_since(earlier), ahead);
        prop_assert_eq!(later.wrapping_sub(ahead), earlier);
    }
}
