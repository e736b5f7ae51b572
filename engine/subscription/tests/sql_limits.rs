//! The SQL front end against hostile input: every query a client can send is refused with a
//! clear error naming the limit, or parsed, without a panic, without unbounded recursion and in
//! bounded time. The long and deep shapes here killed the server before the limits existed
//! (stack overflow on the tick thread).

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use orrery_row::{
    ColumnSchema, Durability, IndexKind, IndexSchema, ModuleSchema, TableSchema, TypeDesc,
    Visibility,
};
use orrery_subscription::{QueryError, QueryLimits, SubscriptionQuery, check_limits};
use proptest::prelude::*;

fn schema() -> ModuleSchema {
    let column = |name: &str, ty: TypeDesc| ColumnSchema {
        name: name.into(),
        ty,
        auto_inc: false,
        quantize: None,
    };
    ModuleSchema {
        name: "limits".into(),
        tables: vec![TableSchema {
            id: 0,
            name: "npc".into(),
            rust_type: "Npc".into(),
            columns: vec![
                column("id", TypeDesc::U64),
                column("name", TypeDesc::String),
                column("hp", TypeDesc::I32),
                column("pos", TypeDesc::Vec2),
            ],
            primary_key: 0,
            indexes: vec![
                IndexSchema {
                    column: "id".into(),
                    kind: IndexKind::Primary,
                },
                IndexSchema {
                    column: "pos".into(),
                    kind: IndexKind::Spatial { cell: 50.0 },
                },
            ],
            visibility: Visibility::Public,
            durability: Durability::Durable,
            event: false,
            scheduled: None,
        }],
        reducers: Vec::new(),
    }
}

fn parse(sql: &str) -> Result<SubscriptionQuery, QueryError> {
    SubscriptionQuery::parse(&schema(), sql, &QueryLimits::default())
}

fn or_chain(terms: usize) -> String {
    let mut sql = String::from("SELECT * FROM npc WHERE hp = 0");
    for i in 1..terms {
        sql.push_str(&format!(" OR hp = {i}"));
    }
    sql
}

fn limit_of(result: Result<SubscriptionQuery, QueryError>) -> &'static str {
    match result {
        Err(QueryError::Limit { limit, .. }) => limit,
        other => panic!("expected a limit refusal, got {other:?}"),
    }
}

#[test]
fn a_long_or_chain_is_refused_by_its_length_or_its_predicates() {
    // 100,000 terms: megabytes of text, refused before it is read.
    assert_eq!(limit_of(parse(&or_chain(100_000))), "sql_bytes");
    assert_eq!(
        limit_of(parse(&or_chain(100_000).replace(" OR ", " AND "))),
        "sql_bytes"
    );
    // Short enough in bytes, too many predicates.
    let limits = QueryLimits {
        max_sql_bytes: 1 << 20,
        ..QueryLimits::default()
    };
    let err = SubscriptionQuery::parse(&schema(), &or_chain(50_000), &limits).unwrap_err();
    assert_eq!(
        err,
        QueryError::Limit {
            limit: "predicates",
            value: 50_000,
            max: 64
        }
    );
    assert_eq!(
        err.to_string(),
        "query exceeds the predicates limit: 50000 > 64"
    );
    // At the limit it parses, and the query knows its cost.
    let query = parse(&or_chain(64)).unwrap();
    assert_eq!(query.predicates, 64);
    assert_eq!(limit_of(parse(&or_chain(65))), "predicates");
}

#[test]
fn deep_parentheses_are_refused_before_parsing() {
    for depth in [17, 100, 10_000] {
        let sql = format!(
            "SELECT * FROM npc WHERE {}hp = 1{}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        let limits = QueryLimits {
            max_sql_bytes: 1 << 20,
            ..QueryLimits::default()
        };
        let err = SubscriptionQuery::parse(&schema(), &sql, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                QueryError::Limit {
                    limit: "nesting_depth",
                    ..
                }
            ),
            "{depth}: {err}"
        );
    }
    let sql = format!(
        "SELECT * FROM npc WHERE {}hp = 1{}",
        "(".repeat(16),
        ")".repeat(16)
    );
    assert!(parse(&sql).is_ok());
}

#[test]
fn huge_and_invalid_radii_are_refused() {
    assert!(parse("SELECT * FROM npc WHERE within(pos, :focus, 1000)").is_ok());
    let err = parse("SELECT * FROM npc WHERE within(pos, :focus, 1e30)").unwrap_err();
    assert!(
        matches!(
            err,
            QueryError::Limit {
                limit: "within_radius",
                max: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert!(parse("SELECT * FROM npc WHERE within(pos, :focus, 1000.5)").is_err());
    assert!(matches!(
        parse("SELECT * FROM npc WHERE within(pos, :focus, -1)"),
        Err(QueryError::Unsupported(_))
    ));
}

#[test]
fn check_limits_counts_without_parsing() {
    let limits = QueryLimits::default();
    assert_eq!(
        check_limits("SELECT * FROM npc WHERE a = 1 AND b < 2", &limits),
        Ok(2)
    );
    // Operators inside string literals are not predicates.
    assert_eq!(
        check_limits("SELECT * FROM npc WHERE name = 'a=b<c'", &limits),
        Ok(1)
    );
    assert_eq!(
        check_limits("SELECT * FROM npc WHERE within(pos, :focus, 5)", &limits),
        Ok(1)
    );
    assert!(matches!(
        check_limits(&"x ".repeat(5_000), &limits),
        Err(QueryError::Limit {
            limit: "sql_bytes",
            ..
        })
    ));
    // Many tokens but no predicates: still bounded.
    let words = format!("SELECT * FROM npc WHERE {}", "a ".repeat(1_600));
    assert!(matches!(
        check_limits(&words, &limits),
        Err(QueryError::Limit {
            limit: "tokens",
            ..
        })
    ));
}

/// Generous on purpose (a debug build on a loaded 2-core machine): a statement that is
/// refused or parsed within the limits takes microseconds; without them, seconds or a crash.
const PER_STATEMENT: Duration = Duration::from_secs(2);

fn hostile() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("hp = 1".to_owned()),
        Just("name = 'x'".to_owned()),
        Just("within(pos, :focus, 10)".to_owned()),
        Just("id >= 18446744073709551615".to_owned()),
        Just(":sender".to_owned()),
        "[a-z_]{1,8} (=|<>|<|>=) [0-9]{1,30}",
        "'[^']{0,200}'",
        "\\PC{0,40}",
    ];
    let expr = atom.prop_recursive(12, 400, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
        ]
    });
    prop_oneof![
        expr.prop_map(|e| format!("SELECT * FROM npc WHERE {e}")),
        (1usize..3000).prop_map(|n| format!("SELECT * FROM npc WHERE {}hp = 1", "(".repeat(n))),
        (1usize..2000).prop_map(or_chain),
        (1usize..100_000)
            .prop_map(|n| format!("SELECT * FROM npc WHERE name = '{}'", "é".repeat(n))),
        "\\PC{0,300}",
        proptest::collection::vec(any::<char>(), 0..500).prop_map(|c| c.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_is_refused_or_parsed_quickly_without_panicking(sql in hostile()) {
        let started = Instant::now();
        let result = parse(&sql);
        let took = started.elapsed();
        prop_assert!(took < PER_STATEMENT, "{took:?} for {} bytes", sql.len());
        if let Ok(query) = result {
            prop_assert!(query.predicates <= QueryLimits::default().max_predicates);
            prop_assert!(sql.len() <= QueryLimits::default().max_sql_bytes);
        }
    }
}

#[test]
fn one_client_cannot_hold_more_predicates_than_its_budget() {
    use orrery_row::{ConnectionId, Identity};
    use orrery_subscription::{PublishConfig, Publisher, SubscribeError};
    let schema = schema();
    let config = PublishConfig::default();
    let budget = config.max_predicates_per_client;
    let mut publisher = Publisher::new(&schema, config);
    let client = ConnectionId(1);
    publisher.connect(client, Identity::from_u64(1));
    let full = or_chain(64);
    for query_id in 0..(budget / 64) as u32 {
        publisher
            .subscribe(&schema, client, query_id, &full)
            .unwrap();
    }
    let err = publisher
        .subscribe(&schema, client, 99, "SELECT * FROM npc WHERE hp = 1")
        .unwrap_err();
    assert_eq!(
        err,
        SubscribeError::TooManyPredicates {
            total: budget + 1,
            max: budget
        }
    );
    // Dropping a subscription gives its predicates back.
    publisher.unsubscribe(client, 0).unwrap();
    publisher
        .subscribe(&schema, client, 99, "SELECT * FROM npc WHERE hp = 1")
        .unwrap();
    // Another client has its own budget.
    publisher.connect(ConnectionId(2), Identity::from_u64(2));
    publisher
        .subscribe(&schema, ConnectionId(2), 0, &full)
        .unwrap();
}
