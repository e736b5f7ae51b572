//! Deterministic replay of a recorded sample-MMO world: bots (movement, combat, chat, pick-ups,
//! disconnects and reconnects) play on a virtual clock against a durable engine that records
//! its input log, the server restarts in the middle (recovery from a snapshot plus the log,
//! stale connections ended), and the replay re-runs the recording with identical state hashes
//! at every tick; with one recorded input changed it reports exactly that tick.

use std::path::Path;
use std::time::Duration;

use orrery_engine::glam::Vec2;
use orrery_engine::replay::{RecordedInput, Recording, ReplayOptions, replay};
use orrery_engine::{
    Caller, ConnectionId, DurabilityConfig, Engine, EngineConfig, FsyncPolicy, Identity, Input,
    ReducerArgs, SystemsExecutor, Timestamp,
};
use sample_mmo::{Avatar, Item, Npc, WorldSettings};

const DT: Duration = Duration::from_millis(50);
const BOTS: u64 = 8;

fn settings() -> WorldSettings {
    WorldSettings {
        npc_count: 40,
        world_size: 240.0,
        supply_drop_every: Duration::from_secs(4),
        ..WorldSettings::default()
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        executor: SystemsExecutor::MultiThreaded,
        tick_interval: DT,
        tick_budget: DT,
        seed: 0x5eed_0f7e_57ab,
        ..EngineConfig::default()
    }
}

fn open(dir: &Path) -> (Engine, bool) {
    let mut durability = DurabilityConfig::new(dir);
    durability.fsync = FsyncPolicy::Never;
    durability.snapshot_every_ticks = 40;
    // Keep every snapshot, so replay can start from one in the middle.
    durability.prune = false;
    durability.record_inputs = true;
    let (engine, report) = Engine::open(
        sample_mmo::module_with(settings()),
        engine_config(),
        durability,
    )
    .unwrap();
    (engine, report.fresh)
}

/// splitmix64: the bots' decisions are a pure function of their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn args<A: ReducerArgs>(a: A) -> Vec<u8> {
    let mut bytes = Vec::new();
    a.encode_args(&mut bytes);
    bytes
}

/// The bot swarm: which bots are connected and on which connection.
struct Bots {
    rng: Rng,
    connection: Vec<Option<u64>>,
    next_connection: u64,
}

impl Bots {
    fn new() -> Self {
        Bots {
            rng: Rng(42),
            connection: vec![None; BOTS as usize],
            next_connection: 1,
        }
    }

    fn identity(bot: usize) -> Identity {
        Identity::from_u64(1000 + bot as u64)
    }

    fn call(engine: &mut Engine, caller: Caller, reducer: &str, args: Vec<u8>) {
        engine.enqueue(Input::Call {
            request_id: 0,
            caller,
            reducer: reducer.into(),
            args,
        });
    }

    /// Queues this tick's inputs, deciding from what the bots can see (their avatars, the
    /// NPCs and items around them).
    fn act(&mut self, engine: &mut Engine) {
        let avatars = engine.rows::<Avatar>();
        let npcs = engine.rows::<Npc>();
        let items = engine.rows::<Item>();
        for bot in 0..BOTS as usize {
            let identity = Self::identity(bot);
            let Some(connection) = self.connection[bot] else {
                if self.rng.chance(15) {
                    let connection = self.next_connection;
                    self.next_connection += 1;
                    self.connection[bot] = Some(connection);
                    let caller = Caller::client(identity, ConnectionId(connection));
                    engine.enqueue(Input::Connect { caller });
                    Self::call(engine, caller, "enter_world", args((format!("bot{bot}"),)));
                }
                continue;
            };
            let caller = Caller::client(identity, ConnectionId(connection));
            let me = avatars.iter().find(|a| a.owner == identity);
            let roll = self.rng.next() % 100;
            match (roll, me) {
                (0..=2, _) => {
                    engine.enqueue(Input::Disconnect { caller });
                    self.connection[bot] = None;
                }
                (3..=12, _) => {
                    let angle = self.rng.unit() * std::f32::consts::TAU;
                    let run = self.rng.chance(50);
                    Self::call(
                        engine,
                        caller,
                        "set_input",
                        args((Vec2::from_angle(angle), run)),
                    );
                }
                (13..=62, Some(me)) => {
                    // Fight: walk to the nearest NPC, hit it when close.
                    let nearest = npcs.iter().min_by(|a, b| {
                        a.position
                            .distance(me.position)
                            .total_cmp(&b.position.distance(me.position))
                            .then(a.id.cmp(&b.id))
                    });
                    if let Some(npc) = nearest {
                        // Clients also swing from too far away now and then.
                        if npc.position.distance(me.position) < 6.0 || self.rng.chance(25) {
                            Self::call(engine, caller, "attack", args((npc.id,)));
                        } else {
                            Self::call(engine, caller, "move_to", args((npc.position, true)));
                        }
                    }
                }
                (63..=68, Some(me)) => {
                    if let Some(item) = items
                        .iter()
                        .find(|i| i.position.distance(me.position) < 20.0)
                    {
                        Self::call(engine, caller, "move_to", args((item.position, false)));
                        Self::call(engine, caller, "pick_up", args((item.id,)));
                    }
                }
                (69..=74, _) => {
                    let global = self.rng.chance(30);
                    let text = format!("hello {} from bot{bot}", self.rng.next() % 1000);
                    Self::call(engine, caller, "say", args((text, global)));
                }
                _ => {}
            }
        }
    }
}

/// Runs `ticks` ticks on the tick grid after `wall`, like the server's tick loop; returns the
/// wall time reached.
fn play(engine: &mut Engine, bots: &mut Bots, mut wall: Timestamp, ticks: u32) -> Timestamp {
    for _ in 0..ticks {
        let at = engine.grid_timestamp(wall);
        bots.act(engine);
        let out = engine.step(at);
        assert!(out.storage_error.is_none());
        assert!(
            out.state_hash.is_some(),
            "recording maintains the state hash"
        );
        wall = at + DT;
    }
    wall
}

/// Records a run of `before + after` ticks with a restart between them; returns the last
/// tick.
fn record(dir: &Path) -> u64 {
    let mut bots = Bots::new();
    let start = Timestamp::from_micros(1_800_000_000_000_000);
    let (mut engine, fresh) = open(dir);
    assert!(fresh);
    let first = engine.grid_timestamp(start);
    // As the server does: `init` at the first grid point, the first tick one step later.
    engine.init(first).unwrap();
    let wall = play(&mut engine, &mut bots, first + DT, 150);
    assert_eq!(engine.state_hash(), Some(engine.full_state_hash()));
    // Crash-like restart with clients still connected: their connections end on reopen.
    assert!(bots.connection.iter().any(Option::is_some));
    engine.close().unwrap();
    for connection in &mut bots.connection {
        *connection = None;
    }
    let (mut engine, fresh) = open(dir);
    assert!(!fresh);
    assert_eq!(
        engine.state_hash(),
        Some(engine.full_state_hash()),
        "the hash of a recovered engine is seeded from its rows"
    );
    assert!(engine.disconnect_stale_connections() > 0);
    // Five seconds of downtime: the next tick is on the grid after the wall clock.
    play(&mut engine, &mut bots, wall + Duration::from_secs(5), 150);
    assert_eq!(engine.state_hash(), Some(engine.full_state_hash()));
    let last = engine.tick_seq();
    engine.close().unwrap();
    last
}

fn module() -> orrery_engine::Module {
    sample_mmo::module_with(settings())
}

#[test]
fn a_recorded_run_with_a_restart_replays_with_identical_hashes_and_a_changed_input_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let last = record(dir.path());
    assert_eq!(last, 300);

    let recording = Recording::read(dir.path(), None).unwrap();
    assert_eq!(recording.torn_tail_bytes, 0);
    let sessions = recording
        .ticks
        .iter()
        .filter(|t| t.inputs.as_ref().is_some_and(|i| i.session_start))
        .count();
    assert_eq!(sessions, 1, "the restart is marked once");
    let kinds = |f: fn(&RecordedInput) -> bool| {
        recording
            .ticks
            .iter()
            .flat_map(|t| t.inputs.iter().flat_map(|i| i.inputs.iter()))
            .filter(|i| f(i))
            .count()
    };
    assert_eq!(kinds(|i| matches!(i, RecordedInput::Init { .. })), 1);
    assert!(kinds(|i| matches!(i, RecordedInput::Connect { .. })) > BOTS as usize);
    assert!(kinds(|i| matches!(i, RecordedInput::Disconnect { queued: false, .. })) > 0);
    let calls = |name: &str| {
        recording
            .ticks
            .iter()
            .flat_map(|t| t.inputs.iter().flat_map(|i| i.inputs.iter()))
            .filter(|i| matches!(i, RecordedInput::Call { reducer, .. } if reducer == name))
            .count()
    };
    for reducer in ["enter_world", "set_input", "move_to", "attack", "say"] {
        assert!(calls(reducer) > 0, "no {reducer} call recorded");
    }

    // The whole run, from the empty world, through the restart.
    let report = replay(&module, &recording, &ReplayOptions::default()).unwrap();
    assert_eq!(report.divergence, None);
    assert_eq!(report.base, 0);
    assert_eq!(report.range, Some((1, last)));
    assert_eq!(report.matched, last);
    assert_eq!(report.restarts, 1);

    // From a snapshot in the middle, on one thread, with a dump.
    let options = ReplayOptions {
        from: Some(100),
        to: Some(260),
        dump: Some(200),
        engine: EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..EngineConfig::default()
        },
    };
    let report = replay(&module, &recording, &options).unwrap();
    assert_eq!(report.divergence, None);
    assert!(report.base > 0 && report.base < 100, "{report:?}");
    assert_eq!(report.range, Some((report.base + 1, 260)));
    let dump = report.dump.expect("tick 200 was reached");
    assert_eq!(dump["tick"], 200);
    assert_eq!(
        dump["tables"]["avatar"].as_array().unwrap().len(),
        BOTS as usize
    );
    assert!(!dump["tables"]["npc"].as_array().unwrap().is_empty());

    // One input changed: the last `set_input` of a bot in a tick past the start gets another
    // direction and speed. The replay reports that very tick, and the avatar row.
    let mut tampered = recording.clone();
    let (seq, index) = tampered
        .ticks
        .iter()
        .filter(|t| t.seq > 60)
        .find_map(|t| {
            let inputs = &t.inputs.as_ref()?.inputs;
            inputs
                .iter()
                .enumerate()
                .find_map(|(i, input)| match input {
                    RecordedInput::Call {
                        caller, reducer, ..
                    } if reducer == "set_input"
                        && !inputs[i + 1..].iter().any(|later| match later {
                            RecordedInput::Call { caller: c, .. }
                            | RecordedInput::Connect { caller: c, .. }
                            | RecordedInput::Disconnect { caller: c, .. } => c == caller,
                            RecordedInput::Init { .. } => false,
                        }) =>
                    {
                        Some((t.seq, i))
                    }
                    _ => None,
                })
        })
        .expect("a set_input call to change");
    let tick = tampered.ticks.iter_mut().find(|t| t.seq == seq).unwrap();
    let RecordedInput::Call {
        args: call_args, ..
    } = &mut tick.inputs.as_mut().unwrap().inputs[index]
    else {
        unreachable!()
    };
    let changed = args((Vec2::new(0.6, -0.8), true));
    assert_ne!(*call_args, changed);
    *call_args = changed;
    let report = replay(&module, &tampered, &ReplayOptions::default()).unwrap();
    let divergence = report.divergence.expect("the changed input is detected");
    assert_eq!(divergence.seq, seq);
    assert_eq!(report.matched, seq - 1);
    assert_ne!(divergence.recorded_hash, divergence.replayed_hash);
    let avatar = divergence
        .tables
        .iter()
        .find(|t| t.table == "avatar")
        .expect("the avatar table differs");
    assert!(avatar.differing >= 1 && !avatar.rows.is_empty());
    assert!(avatar.rows[0].recorded != avatar.rows[0].replayed);
}

#[test]
fn a_corrupt_log_is_an_error_and_a_torn_tail_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    engine.init(Timestamp::from_micros(1_000_000)).unwrap();
    let mut bots = Bots::new();
    play(
        &mut engine,
        &mut bots,
        Timestamp::from_micros(1_050_000),
        30,
    );
    engine.close().unwrap();
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    // A cut tail: the complete records before it are read.
    std::fs::write(&segment, &bytes[..bytes.len() - 3]).unwrap();
    let recording = Recording::read(dir.path(), None).unwrap();
    assert_eq!(recording.ticks.len(), 29);
    assert!(recording.torn_tail_bytes > 0);
    let report = replay(&module, &recording, &ReplayOptions::default()).unwrap();
    assert_eq!(report.divergence, None);
    assert_eq!(report.matched, 29);
    // Garbage instead of a segment header in a closed segment is an error, not a panic.
    let mut bad = bytes.clone();
    bad[3] ^= 0xff;
    std::fs::write(&segment, &bad).unwrap();
    std::fs::write(
        dir.path().join(format!("{:020}.log", 1_000_000)),
        &bytes[..40],
    )
    .unwrap();
    assert!(Recording::read(dir.path(), None).is_err());
}
