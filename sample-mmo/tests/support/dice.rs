//! A deterministic stream of numbers for the zone tests (xorshift): the same seed walks the
//! same characters to the same places.

/// A deterministic stream of numbers.
pub struct Dice(pub u64);

impl Dice {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    #[allow(dead_code)] // not every test rolls these
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A coordinate in `-half..half`, on a 0.1 m grid.
    pub fn coordinate(&mut self, half: f32) -> f32 {
        let steps = (half * 20.0) as u64;
        (self.next() % steps) as f32 / 10.0 - half
    }
}
