//! The spatial workload of `docs/reference-numbers.md`, shared by the grid benchmark and the engine's
//! spatial benchmark so both measure exactly the same ticks: 100,000 entities uniformly
//! placed in a 4,000 m × 4,000 m world; each tick 10,000 of them move by a random vector of
//! length ≤ 5 m, then 2,000 radius-50 m queries run at random centers.

#![allow(dead_code)]

use glam::Vec2;

pub const ENTITIES: usize = 100_000;
pub const WORLD: f32 = 4_000.0;
pub const MOVES_PER_TICK: usize = 10_000;
pub const QUERIES_PER_TICK: usize = 2_000;
pub const RADIUS: f32 = 50.0;
pub const MAX_STEP: f32 = 5.0;
pub const SEED: u64 = 0x0DDB_1A5E_5BAD_5EED;

/// Entity-like handle: index in the low 32 bits, generation 1 in the high bits (the shape
/// of `bevy_ecs::entity::Entity::to_bits`).
pub type Handle = u64;

pub fn handle(i: usize) -> Handle {
    (1u64 << 32) | i as u64
}

/// SplitMix64: tiny, seeded, good enough for placing points.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    pub fn point_in_world(&mut self) -> Vec2 {
        Vec2::new(self.unit() * WORLD, self.unit() * WORLD)
    }

    /// Uniform in the disk of radius `r` (rejection sampling).
    pub fn in_disk(&mut self, r: f32) -> Vec2 {
        loop {
            let v = Vec2::new(self.unit() * 2.0 - 1.0, self.unit() * 2.0 - 1.0);
            if v.length_squared() <= 1.0 {
                return v * r;
            }
        }
    }
}

/// One tick's input, generated outside the timed region.
pub struct TickInput {
    pub moves: Vec<(usize, Vec2)>,
    pub centers: Vec<Vec2>,
}

/// The simulation state: the positions (truth) and the deterministic RNG.
pub struct Sim {
    pub pos: Vec<Vec2>,
    pub rng: SplitMix64,
    pub input: TickInput,
}

impl Sim {
    pub fn new() -> Self {
        let mut rng = SplitMix64(SEED);
        let pos = (0..ENTITIES).map(|_| rng.point_in_world()).collect();
        Sim {
            pos,
            rng,
            input: TickInput {
                moves: Vec::with_capacity(MOVES_PER_TICK),
                centers: Vec::with_capacity(QUERIES_PER_TICK),
            },
        }
    }

    /// Draws the next tick's moves (advancing the truth positions) and query centers.
    pub fn next_tick(&mut self) {
        self.input.moves.clear();
        self.input.centers.clear();
        for _ in 0..MOVES_PER_TICK {
            let i = self.rng.below(ENTITIES);
            let p =
                (self.pos[i] + self.rng.in_disk(MAX_STEP)).clamp(Vec2::ZERO, Vec2::splat(WORLD));
            self.pos[i] = p;
            self.input.moves.push((i, p));
        }
        for _ in 0..QUERIES_PER_TICK {
            let c = self.rng.point_in_world();
            self.input.centers.push(c);
        }
    }
}
