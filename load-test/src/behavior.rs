//! What a bot does: the [`Behavior`] chosen on the command line, the [`Role`] each bot plays
//! under it, and the [`Brain`] that turns what the bot sees into one [`Action`] (one reducer
//! call) per input tick. Pure and seeded: the same seed and the same sights give the same
//! actions, so runs are repeatable up to the server's own timing.

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Walking speed of the sample MMO's default rules, m/s.
pub const WALK_SPEED: f32 = 4.0;
/// Running speed of the default rules, m/s.
pub const RUN_SPEED: f32 = 8.0;
/// Reach of attacks and pick-ups the bots aim for (the rules allow 3 m).
pub const REACH: f32 = 2.5;
/// The attack cooldown of the default rules (800 ms) plus a margin, seconds.
pub const ATTACK_EVERY: f64 = 0.85;

/// The load a run puts on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// Travel from place to place: walk (or now and then run) to a random point within
    /// `--wander-radius` of the town the bot entered in, then to the next.
    Wander,
    /// Every bot converges on one spot and mills around it: everyone sees everyone, the worst
    /// case for interest management.
    Swarm,
    /// Hunt the nearest creature, pick up loot, drink potions when hurt.
    Fight,
    /// Wander and talk: a local line every 4–8 s, now and then a global one.
    Chat,
    /// Half wander, 30% fight, 20% chat.
    Mixed,
}

impl Behavior {
    /// The role of the bot drawing `roll` (uniform in `[0, 1)`).
    pub fn role(self, roll: f64) -> Role {
        match self {
            Behavior::Wander => Role::Wander,
            Behavior::Swarm => Role::Swarm,
            Behavior::Fight => Role::Fight,
            Behavior::Chat => Role::Chat,
            Behavior::Mixed if roll < 0.5 => Role::Wander,
            Behavior::Mixed if roll < 0.8 => Role::Fight,
            Behavior::Mixed => Role::Chat,
        }
    }

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Behavior::Wander => "wander",
            Behavior::Swarm => "swarm",
            Behavior::Fight => "fight",
            Behavior::Chat => "chat",
            Behavior::Mixed => "mixed",
        }
    }
}

/// What one bot does (a [`Behavior`] resolved per bot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See [`Behavior::Wander`].
    Wander,
    /// See [`Behavior::Swarm`].
    Swarm,
    /// See [`Behavior::Fight`].
    Fight,
    /// See [`Behavior::Chat`].
    Chat,
}

/// One reducer call.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `set_input(direction, run)`.
    SetInput {
        /// Direction (length at most 1).
        direction: [f32; 2],
        /// Run instead of walk.
        run: bool,
    },
    /// `move_to(target, run)`.
    MoveTo {
        /// Where to.
        target: [f32; 2],
        /// Run instead of walk.
        run: bool,
    },
    /// `attack(npc)`.
    Attack {
        /// The NPC's id.
        npc: u64,
    },
    /// `pick_up(item)`.
    PickUp {
        /// The item's id.
        item: u64,
    },
    /// `use_item(item)`.
    UseItem {
        /// The inventory item's id.
        item: u64,
    },
    /// `say(text, global)`.
    Say {
        /// The line.
        text: String,
        /// Heard everywhere.
        global: bool,
    },
}

impl Action {
    /// The reducer it calls.
    pub fn reducer(&self) -> &'static str {
        match self {
            Action::SetInput { .. } => "set_input",
            Action::MoveTo { .. } => "move_to",
            Action::Attack { .. } => "attack",
            Action::PickUp { .. } => "pick_up",
            Action::UseItem { .. } => "use_item",
            Action::Say { .. } => "say",
        }
    }

    /// Its arguments (JSON, by position).
    pub fn args(&self) -> serde_json::Value {
        match self {
            Action::SetInput { direction, run } => json!([direction, run]),
            Action::MoveTo { target, run } => json!([target, run]),
            Action::Attack { npc } => json!([npc]),
            Action::PickUp { item } | Action::UseItem { item } => json!([item]),
            Action::Say { text, global } => json!([text, global]),
        }
    }

    /// The velocity the server will give the avatar for a `set_input` (the default rules'
    /// speeds; `set_input` normalizes directions longer than 1).
    pub fn expected_velocity(&self) -> Option<[f32; 2]> {
        let Action::SetInput { direction, run } = self else {
            return None;
        };
        let [x, y] = *direction;
        let len2 = x * x + y * y;
        let (x, y) = if len2 > 1.0 {
            let r = 1.0 / len2.sqrt();
            (x * r, y * r)
        } else {
            (x, y)
        };
        let speed = if *run { RUN_SPEED } else { WALK_SPEED };
        Some([x * speed, y * speed])
    }
}

/// Something the bot sees at a place (an NPC or an item on the ground).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thing {
    /// Its id.
    pub id: u64,
    /// Where it is.
    pub position: [f32; 2],
}

/// What the bot knows when it decides.
#[derive(Clone, Debug, Default)]
pub struct Sight {
    /// Its avatar's position (from its mirror).
    pub position: [f32; 2],
    /// Its hit points.
    pub hp: i32,
    /// Its full hit points.
    pub max_hp: i32,
    /// NPCs in view.
    pub npcs: Vec<Thing>,
    /// Items on the ground in view.
    pub items: Vec<Thing>,
    /// Potions it carries (inventory ids).
    pub potions: Vec<u64>,
}

/// Tunables shared by every brain of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrainParams {
    /// Where swarm bots converge.
    pub swarm_center: [f32; 2],
    /// How far from the centre swarm bots mill about, metres.
    pub swarm_radius: f32,
    /// Wandering bots travel to points at most this far from the town they entered in,
    /// metres.
    pub wander_radius: f32,
    /// Chance that a chat line is global.
    pub global_chat: f64,
    /// Seconds after its start during which a bot (but a swarm bot) runs straight out from
    /// town before its behaviour begins: spreads the population over the world.
    pub spread_s: f64,
}

impl Default for BrainParams {
    fn default() -> Self {
        BrainParams {
            swarm_center: [0.0, 0.0],
            swarm_radius: 20.0,
            wander_radius: 400.0,
            global_chat: 0.02,
            spread_s: 0.0,
        }
    }
}

/// SplitMix64, seeded per bot.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn unit_towards(from: [f32; 2], to: [f32; 2]) -> [f32; 2] {
    let d = distance(from, to);
    if d <= f32::EPSILON {
        [0.0, 0.0]
    } else {
        [(to[0] - from[0]) / d, (to[1] - from[1]) / d]
    }
}

fn nearest(things: &[Thing], here: [f32; 2]) -> Option<(Thing, f32)> {
    things
        .iter()
        .map(|t| (*t, distance(t.position, here)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.id.cmp(&b.0.id)))
}

/// One bot's decision maker (see the module docs).
#[derive(Clone, Debug)]
pub struct Brain {
    role: Role,
    params: BrainParams,
    rng: Rng,
    direction: [f32; 2],
    run: bool,
    next_turn_at: f64,
    home: Option<[f32; 2]>,
    destination: Option<[f32; 2]>,
    target: Option<([f32; 2], f64)>,
    next_say_at: f64,
    lines: u64,
    last_attack_at: f64,
    last_pickup_at: f64,
    last_potion_at: f64,
    spread_direction: [f32; 2],
}

impl Brain {
    /// A brain playing `role`, its choices drawn from `seed`.
    pub fn new(role: Role, seed: u64, params: BrainParams) -> Self {
        let mut rng = Rng::new(seed);
        let next_say_at = rng.range(1.0, 8.0);
        let out = rng.range(0.0, std::f64::consts::TAU);
        Brain {
            spread_direction: [out.cos() as f32, out.sin() as f32],
            role,
            params,
            rng,
            direction: [0.0, 0.0],
            run: false,
            next_turn_at: 0.0,
            home: None,
            destination: None,
            target: None,
            next_say_at,
            lines: 0,
            last_attack_at: f64::NEG_INFINITY,
            last_pickup_at: f64::NEG_INFINITY,
            last_potion_at: f64::NEG_INFINITY,
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The action for the input tick at `t` seconds (since the bot started) given `sight`.
    pub fn next(&mut self, t: f64, sight: &Sight) -> Action {
        if t < self.params.spread_s && self.role != Role::Swarm {
            return Action::SetInput {
                direction: self.spread_direction,
                run: true,
            };
        }
        match self.role {
            Role::Wander => self.wander(t, sight),
            Role::Swarm => self.swarm(t, sight),
            Role::Chat => {
                if t >= self.next_say_at {
                    self.next_say_at = t + self.rng.range(4.0, 8.0);
                    self.lines += 1;
                    let global = self.rng.unit() < self.params.global_chat;
                    let text = format!("line {} from a bot, {} here", self.lines, sight.npcs.len());
                    return Action::Say { text, global };
                }
                self.wander(t, sight)
            }
            Role::Fight => self.fight(t, sight),
        }
    }

    /// Random-waypoint travel: players go places (a quest, a hunting ground, a friend), so a
    /// population spreads over the land around its towns instead of milling where it entered,
    /// as a random walk would (one that turns every few seconds drifts only ~90 m a minute).
    fn wander(&mut self, t: f64, sight: &Sight) -> Action {
        let home = *self.home.get_or_insert(sight.position);
        let arrived = self
            .destination
            .is_none_or(|destination| distance(sight.position, destination) < 3.0);
        if arrived {
            let angle = self.rng.range(0.0, std::f64::consts::TAU);
            // Uniform over the disc around home.
            let reach = f64::from(self.params.wander_radius) * self.rng.unit().sqrt();
            self.destination = Some([
                home[0] + (angle.cos() * reach) as f32,
                home[1] + (angle.sin() * reach) as f32,
            ]);
            self.next_turn_at = t;
        }
        if t >= self.next_turn_at {
            // Steer again every few seconds, as a player corrects course.
            let destination = self.destination.unwrap_or(home);
            self.direction = unit_towards(sight.position, destination);
            self.run = self.rng.unit() < 0.2;
            self.next_turn_at = t + self.rng.range(3.0, 8.0);
        }
        Action::SetInput {
            direction: self.direction,
            run: self.run,
        }
    }

    fn swarm(&mut self, t: f64, sight: &Sight) -> Action {
        let arrived = self.target.is_none_or(|(target, deadline)| {
            distance(sight.position, target) < 1.5 || t > deadline
        });
        if arrived {
            let angle = self.rng.range(0.0, std::f64::consts::TAU);
            let r = self.params.swarm_radius as f64 * self.rng.unit().sqrt();
            let c = self.params.swarm_center;
            let target = [
                c[0] + (r * angle.cos()) as f32,
                c[1] + (r * angle.sin()) as f32,
            ];
            let d = distance(sight.position, target) as f64;
            self.target = Some((target, t + d / f64::from(WALK_SPEED) + 3.0));
            self.direction = unit_towards(sight.position, target);
        }
        Action::SetInput {
            direction: self.direction,
            run: false,
        }
    }

    fn fight(&mut self, t: f64, sight: &Sight) -> Action {
        let here = sight.position;
        if sight.hp < sight.max_hp / 2
            && t - self.last_potion_at >= 2.0
            && let Some(&potion) = sight.potions.first()
        {
            self.last_potion_at = t;
            return Action::UseItem { item: potion };
        }
        if let Some((item, d)) = nearest(&sight.items, here).filter(|(_, d)| *d < 20.0) {
            if d <= REACH {
                if t - self.last_pickup_at >= 0.5 {
                    self.last_pickup_at = t;
                    return Action::PickUp { item: item.id };
                }
                return Action::SetInput {
                    direction: [0.0, 0.0],
                    run: false,
                };
            }
            return Action::MoveTo {
                target: item.position,
                run: false,
            };
        }
        if let Some((npc, d)) = nearest(&sight.npcs, here) {
            if d <= REACH {
                if t - self.last_attack_at >= ATTACK_EVERY {
                    self.last_attack_at = t;
                    return Action::Attack { npc: npc.id };
                }
                return Action::SetInput {
                    direction: [0.0, 0.0],
                    run: false,
                };
            }
            return Action::MoveTo {
                target: npc.position,
                run: true,
            };
        }
        self.wander(t, sight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sight_at(position: [f32; 2]) -> Sight {
        Sight {
            position,
            hp: 100,
            max_hp: 100,
            ..Sight::default()
        }
    }

    #[test]
    fn same_seed_same_actions() {
        let run = |seed| {
            let mut b = Brain::new(Role::Chat, seed, BrainParams::default());
            (0..400)
                .map(|i| b.next(f64::from(i) * 0.05, &sight_at([0.0, 0.0])))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert!(run(3).iter().any(|a| matches!(a, Action::Say { .. })));
    }

    #[test]
    fn mixed_splits_roles() {
        let mut rng = Rng::new(1);
        let roles: Vec<Role> = (0..1_000)
            .map(|_| Behavior::Mixed.role(rng.unit()))
            .collect();
        let share = |r| roles.iter().filter(|x| **x == r).count();
        assert!((400..600).contains(&share(Role::Wander)));
        assert!((200..400).contains(&share(Role::Fight)));
        assert!((100..300).contains(&share(Role::Chat)));
        assert_eq!(share(Role::Swarm), 0);
    }

    /// Moves a sight along `action` for `dt` seconds (walking 4 m/s, running 8).
    fn walk(sight: &mut Sight, action: &Action, dt: f32) {
        let Action::SetInput { direction, run } = action else {
            panic!("wanderers steer, got {action:?}");
        };
        let speed = if *run { RUN_SPEED } else { WALK_SPEED };
        sight.position[0] += direction[0] * speed * dt;
        sight.position[1] += direction[1] * speed * dt;
    }

    #[test]
    fn wanderers_travel_around_their_home_town() {
        let params = BrainParams {
            wander_radius: 200.0,
            ..BrainParams::default()
        };
        let home = [1_000.0, -1_000.0];
        let (mut farthest, mut samples, mut out) = (0.0f32, 0, 0);
        for seed in 0..40 {
            let mut b = Brain::new(Role::Wander, seed, params);
            let mut sight = sight_at(home);
            for i in 0..1_200 {
                // One minute at 20 Hz.
                let action = b.next(f64::from(i) * 0.05, &sight);
                walk(&mut sight, &action, 0.05);
                let away = distance(sight.position, home);
                farthest = farthest.max(away);
                if i >= 600 {
                    samples += 1;
                    out += usize::from(away > 100.0);
                }
            }
        }
        // In the second half-minute, travellers spend most of their time beyond half the
        // radius (a random walk turning every 3-8 s: about a fifth), and never leave it.
        let share = out as f64 / samples as f64;
        assert!(share > 0.45, "{share} of the time beyond 100 m");
        assert!(
            farthest <= 200.0 + 3.0 + 8.0 * 8.0,
            "{farthest} m from home"
        );
    }

    #[test]
    fn a_wanderer_far_from_home_heads_back() {
        let params = BrainParams {
            wander_radius: 100.0,
            ..BrainParams::default()
        };
        let mut b = Brain::new(Role::Wander, 9, params);
        b.next(0.0, &sight_at([0.0, 0.0]));
        for i in 1..50 {
            let t = f64::from(i) * 10.0;
            let Action::SetInput { direction, .. } = b.next(t, &sight_at([500.0, 0.0])) else {
                panic!("wanderers steer");
            };
            assert!(direction[0] < 0.0, "heads back west: {direction:?}");
        }
    }

    #[test]
    fn bots_spread_out_first_then_behave() {
        let params = BrainParams {
            spread_s: 10.0,
            ..BrainParams::default()
        };
        let mut b = Brain::new(Role::Fight, 5, params);
        let first = b.next(0.0, &sight_at([0.0, 0.0]));
        let Action::SetInput { direction, run } = first.clone() else {
            panic!("spreading bots run");
        };
        assert!(run && (direction[0].hypot(direction[1]) - 1.0).abs() < 1e-5);
        assert_eq!(b.next(9.0, &sight_at([50.0, 0.0])), first);
        let mut sight = sight_at([70.0, 0.0]);
        sight.npcs = vec![Thing {
            id: 1,
            position: [71.0, 0.0],
        }];
        assert_eq!(b.next(10.0, &sight), Action::Attack { npc: 1 });
        let mut swarm = Brain::new(Role::Swarm, 5, params);
        let Action::SetInput { run, .. } = swarm.next(0.0, &sight_at([0.0, 0.0])) else {
            panic!("swarm bots steer");
        };
        assert!(!run, "swarm bots do not spread");
    }

    #[test]
    fn swarm_bots_head_for_the_centre() {
        let mut b = Brain::new(Role::Swarm, 2, BrainParams::default());
        let Action::SetInput { direction, run } = b.next(0.0, &sight_at([300.0, 300.0])) else {
            panic!("swarm bots steer");
        };
        assert!(!run && direction[0] < -0.5 && direction[1] < -0.5);
    }

    #[test]
    fn fighters_approach_attack_on_cooldown_and_loot() {
        let mut b = Brain::new(Role::Fight, 1, BrainParams::default());
        let mut sight = sight_at([0.0, 0.0]);
        sight.npcs = vec![
            Thing {
                id: 7,
                position: [30.0, 0.0],
            },
            Thing {
                id: 8,
                position: [50.0, 0.0],
            },
        ];
        assert_eq!(
            b.next(0.0, &sight),
            Action::MoveTo {
                target: [30.0, 0.0],
                run: true
            }
        );
        sight.npcs[0].position = [1.0, 0.0];
        assert_eq!(b.next(0.1, &sight), Action::Attack { npc: 7 });
        assert!(matches!(b.next(0.2, &sight), Action::SetInput { .. }));
        assert_eq!(b.next(1.0, &sight), Action::Attack { npc: 7 });
        sight.items = vec![Thing {
            id: 3,
            position: [2.0, 0.0],
        }];
        assert_eq!(b.next(1.1, &sight), Action::PickUp { item: 3 });
        sight.hp = 10;
        sight.potions = vec![11];
        assert_eq!(b.next(1.2, &sight), Action::UseItem { item: 11 });
    }

    #[test]
    fn expected_velocity_matches_the_rules() {
        let a = Action::SetInput {
            direction: [3.0, 4.0],
            run: true,
        };
        let v = a.expected_velocity().unwrap();
        assert!((v[0] - 4.8).abs() < 1e-5 && (v[1] - 6.4).abs() < 1e-5);
        assert_eq!(
            Action::SetInput {
                direction: [0.5, 0.0],
                run: false
            }
            .expected_velocity(),
            Some([2.0, 0.0])
        );
        assert_eq!(Action::Attack { npc: 1 }.expected_velocity(), None);
        assert_eq!(a.reducer(), "set_input");
        assert_eq!(a.args(), json!([[3.0, 4.0], true]));
    }
}
