//! Tables through every index kind, constraint errors, lifecycle reducers and bad arguments.

mod common;

use common::*;
use orrery_engine::prelude::*;
use orrery_engine::{ReducerError, RowOp, TableError};

fn seeded() -> Engine {
    let mut engine = engine();
    engine.init(at_tick(0)).unwrap();
    for (name, level, balance) in [
        ("ann", 1, 100),
        ("bob", 3, 50),
        ("cy", 3, 0),
        ("dee", 7, 10),
    ] {
        engine
            .call_reducer(
                "open_account",
                alice(),
                (name.to_string(), level as u32, balance as i64),
            )
            .unwrap();
    }
    engine
}

#[test]
fn insert_assigns_auto_inc_and_finds_through_every_index() {
    let mut engine = seeded();
    engine.read(|db| {
        let mut accounts = db.account();
        assert_eq!(accounts.count(), 4);
        assert_eq!(accounts.id().find(&2).unwrap().name, "bob");
        assert_eq!(accounts.name().find(&"dee".to_string()).unwrap().id, 4);
        assert!(accounts.name().find(&"zed".to_string()).is_none());
        let level3: Vec<String> = accounts.level().filter(&3).map(|a| a.name).collect();
        assert_eq!(level3, vec!["bob", "cy"]);
        let range: Vec<u64> = accounts.level().filter(2..8).map(|a| a.id).collect();
        assert_eq!(range, vec![2, 3, 4]);
        assert_eq!(accounts.level().count(..=3), 3);
        assert_eq!(accounts.level().filter(8..).count(), 0);
        let mut all: Vec<u64> = accounts.iter().map(|a| a.id).collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 4]);
    });
    engine.check_integrity().unwrap();
}

#[test]
fn update_and_delete_through_every_index_keep_indexes_exact() {
    let mut engine = seeded();
    let result = engine.read(|db| -> Result<(), TableError> {
        let mut accounts = db.account();
        // Update through the primary key, changing a unique and a btree column.
        let mut bob = accounts.id().find(&2).unwrap();
        bob.name = "robert".into();
        bob.level = 9;
        accounts.id().update(bob)?;
        assert!(accounts.name().find(&"bob".to_string()).is_none());
        assert_eq!(accounts.name().find(&"robert".to_string()).unwrap().id, 2);
        assert_eq!(
            accounts
                .level()
                .filter(&9)
                .map(|a| a.id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            accounts
                .level()
                .filter(&3)
                .map(|a| a.id)
                .collect::<Vec<_>>(),
            vec![3]
        );

        // Update through a unique column.
        let mut cy = accounts.name().find(&"cy".to_string()).unwrap();
        cy.balance = 77;
        accounts.name().update(cy)?;
        assert_eq!(accounts.id().find(&3).unwrap().balance, 77);

        // Delete through each index kind.
        assert!(accounts.id().delete(&1));
        assert!(!accounts.id().delete(&1));
        assert!(accounts.name().delete(&"dee".to_string()));
        assert_eq!(accounts.level().delete(0..100), 2);
        assert_eq!(accounts.count(), 0);
        Ok(())
    });
    result.unwrap();
    // `read` undid all of it.
    assert_eq!(engine.count::<Account>(), 4);
    assert_eq!(engine.find::<Account>(&2).unwrap().name, "bob");
    engine.check_integrity().unwrap();
}

#[test]
fn unique_and_primary_violations_are_errors_carrying_the_key() {
    let mut engine = seeded();
    let err = engine
        .call_reducer("open_account", alice(), ("bob".to_string(), 1u32, 1i64))
        .unwrap_err();
    assert_eq!(
        err,
        ReducerError::Failed {
            reducer: "open_account".into(),
            message: "unique constraint violated on account.name: key \"bob\" already exists"
                .into()
        }
    );
    engine.read(|db| {
        let mut accounts = db.account();
        let dup = Account {
            id: 3,
            name: "new".into(),
            level: 0,
            owner: Identity::ZERO,
            balance: 0,
        };
        assert_eq!(
            accounts.insert(dup).unwrap_err(),
            TableError::UniqueViolation {
                table: "account",
                column: "id",
                key: "3".into()
            }
        );
        // Renaming onto an existing name fails and changes nothing.
        let mut ann = accounts.id().find(&1).unwrap();
        ann.name = "cy".into();
        assert!(matches!(
            accounts.id().update(ann),
            Err(TableError::UniqueViolation { column: "name", .. })
        ));
        assert_eq!(accounts.id().find(&1).unwrap().name, "ann");
        // Updating a missing row.
        let ghost = Account {
            id: 99,
            name: "ghost".into(),
            level: 0,
            owner: Identity::ZERO,
            balance: 0,
        };
        assert!(matches!(
            accounts.id().update(ghost),
            Err(TableError::NotFound { .. })
        ));
        // Changing the primary key through a unique column.
        let mut cy = accounts.name().find(&"cy".to_string()).unwrap();
        cy.id = 1000;
        assert!(matches!(
            accounts.name().update(cy),
            Err(TableError::PrimaryKeyChanged { .. })
        ));
    });
    engine.check_integrity().unwrap();
}

#[test]
fn explicit_ids_move_the_sequence_forward() {
    let mut engine = seeded();
    engine.read(|db| {
        let mut accounts = db.account();
        let row = Account {
            id: 50,
            name: "x".into(),
            level: 0,
            owner: Identity::ZERO,
            balance: 0,
        };
        accounts.insert(row).unwrap();
        let next = accounts
            .insert(Account {
                id: 0,
                name: "y".into(),
                level: 0,
                owner: Identity::ZERO,
                balance: 0,
            })
            .unwrap();
        assert_eq!(next.id, 51);
    });
}

#[test]
fn failed_and_panicking_reducers_leave_everything_as_before() {
    let mut engine = seeded();
    let before = engine.rows::<Account>();
    let err = engine
        .call_reducer("rename_then_fail", alice(), (2u64, "zed".to_string(), 1u32))
        .unwrap_err();
    assert!(
        matches!(err, ReducerError::Failed { ref message, .. } if message == "changed my mind")
    );
    assert_eq!(engine.rows::<Account>(), before);
    engine.check_integrity().unwrap();

    let err = engine
        .call_reducer("panic_after_write", alice(), (1u64,))
        .unwrap_err();
    assert!(
        matches!(err, ReducerError::Panicked { ref message, .. } if message == "boom after deleting 1")
    );
    assert_eq!(engine.rows::<Account>(), before);
    engine.check_integrity().unwrap();

    // The rolled-back insert did not consume a sequence value.
    engine
        .call_reducer("open_account", alice(), ("eve".to_string(), 0u32, 0i64))
        .unwrap();
    assert_eq!(engine.rows::<Account>().last().unwrap().id, 5);
    // Failed transactions do not show up in the tick's changes.
    let out = engine.step(at_tick(1));
    let ops = out.changes.rows::<Account>().unwrap();
    assert_eq!(ops.len(), 5, "{ops:?}");
    assert!(ops.iter().all(|op| matches!(op, RowOp::Insert(_))));
    let counters = engine.counters();
    assert_eq!((counters.failed, counters.panicked), (1, 1));
}

#[test]
fn lifecycle_reducers_fire_with_the_caller() {
    let mut engine = engine();
    engine.init(at_tick(0)).unwrap();
    let bob = Caller::client(Identity::from_u64(2), ConnectionId(7));
    engine.client_connected(bob).unwrap();
    engine.client_disconnected(bob).unwrap();
    let banned = Caller::client(Identity::from_u64(666), ConnectionId(8));
    let err = engine.client_connected(banned).unwrap_err();
    assert_eq!(err.client_message(), "banned");
    let log: Vec<(String, Identity)> = engine
        .rows::<LifecycleLog>()
        .into_iter()
        .map(|l| (l.event, l.who))
        .collect();
    assert_eq!(
        log,
        vec![
            ("init".into(), Identity::ZERO),
            ("connected".into(), bob.identity),
            ("disconnected".into(), bob.identity),
        ]
    );
    // Lifecycle reducers cannot be called by clients.
    assert!(matches!(
        engine.call_reducer_bytes("init", alice(), &[]),
        Err(ReducerError::NotCallable { .. })
    ));
}

#[test]
fn queued_inputs_run_in_order_in_the_reducers_phase() {
    let mut engine = seeded();
    let caller = Caller::client(alice(), ConnectionId(1));
    let mut args = Vec::new();
    (1u64, 2u64, 60i64).encode_args_into(&mut args);
    engine.enqueue(orrery_engine::Input::Connect { caller });
    engine.enqueue(orrery_engine::Input::Call {
        request_id: 10,
        caller,
        reducer: "transfer".into(),
        args: args.clone(),
    });
    engine.enqueue(orrery_engine::Input::Call {
        request_id: 11,
        caller,
        reducer: "transfer".into(),
        args,
    });
    let out = engine.step(at_tick(1));
    let results: Vec<_> = out
        .outcomes
        .iter()
        .map(|o| (o.request_id, o.result.is_ok()))
        .collect();
    assert_eq!(
        results,
        vec![(None, true), (Some(10), true), (Some(11), false)]
    );
    assert_eq!(engine.find::<Account>(&1).unwrap().balance, 40);
    assert_eq!(engine.find::<Account>(&2).unwrap().balance, 110);
}

trait EncodeArgs {
    fn encode_args_into(&self, out: &mut Vec<u8>);
}
impl<T: orrery_engine::ReducerArgs> EncodeArgs for T {
    fn encode_args_into(&self, out: &mut Vec<u8>) {
        self.encode_args(out);
    }
}

#[test]
fn bad_reducer_arguments_are_errors_not_panics() {
    let mut engine = seeded();
    // Too few bytes.
    let err = engine
        .call_reducer_bytes("transfer", alice(), &[1])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad arguments for reducer \"transfer\": argument 1 `to` (u64): unexpected end of input: needed 1 more byte(s) for u64"
    );
    // Trailing bytes.
    let mut args = 1u64.to_bytes();
    args.extend(2u64.to_bytes());
    args.extend(3i64.to_bytes());
    args.push(0);
    assert!(matches!(
        engine.call_reducer_bytes("transfer", alice(), &args),
        Err(ReducerError::BadArgs {
            error: orrery_engine::ArgsError::Trailing {
                expected: 3,
                extra: 1
            },
            ..
        })
    ));
    // Invalid enum tag and invalid UTF-8.
    assert!(matches!(
        engine.call_reducer_bytes("spawn_npc", alice(), &[9, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(ReducerError::BadArgs { .. })
    ));
    assert!(matches!(
        engine.call_reducer_bytes("open_account", alice(), &[1, 0xff, 0, 0]),
        Err(ReducerError::BadArgs { .. })
    ));
    // Wrong typed arity and types.
    let err = engine
        .call_reducer("transfer", alice(), (1u64, 2u64))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "reducer \"transfer\" takes (u64, u64, i64), got (u64, u64)"
    );
    assert!(matches!(
        engine.call_reducer("transfer", alice(), (1u64, 2u64, 3u32)),
        Err(ReducerError::ArgTypes { .. })
    ));
    assert!(matches!(
        engine.call_reducer_bytes("no_such_reducer", alice(), &[]),
        Err(ReducerError::UnknownReducer(name)) if name == "no_such_reducer"
    ));
    // Random garbage never panics and never changes state.
    let before = engine.rows::<Account>();
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in 0..2000 {
        let bytes: Vec<u8> = (0..len % 40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for reducer in ["transfer", "open_account", "spawn_npc", "schedule_respawn"] {
            if let Err(e) = engine.call_reducer_bytes(reducer, alice(), &bytes) {
                assert!(!matches!(e, ReducerError::Panicked { .. }), "{e}");
            }
        }
    }
    let after = engine.rows::<Account>();
    assert_eq!(before.len(), after.len());
    engine.check_integrity().unwrap();
}
