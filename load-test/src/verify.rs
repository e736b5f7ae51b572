//! `--verify`: after input stops, each bot compares its mirror with what the server says it
//! may see (`POST /v1/sql` as its identity, with the same query and its focus).
//!
//! What is compared, per subscription (chat is an event table: nothing is stored on either
//! side, so it is not compared):
//!
//! - **Membership.** A row on one side only is divergent, unless it sits on the edge of a
//!   `within` view: the server's read uses the radius `r`, the mirror keeps rows until they
//!   pass `r + hysteresis` (5 m), and the focus the bot sends is its own quantized position
//!   (±5 mm of the server's). So a row only in the mirror is tolerated between `r - band` and
//!   `r + hysteresis + band`; a row only on the server between `r - band` and `r`.
//! - **Values.** Every column must be equal; quantized columns (positions, 1 cm) within half a
//!   step, since the mirror holds the quantized value and the read the exact one.
//! - **Moving rows.** NPCs never stop (they wander, flee, chase): their `position` is compared
//!   within 2 m and the `band` above is 2 m, and their `velocity` and `attack_ready_at` are
//!   not compared. Avatars are at rest once input stopped (a wolf bite or a revive still
//!   changes one now and then: the retries below absorb it).
//! - **Retries.** A bot compares, and while anything differs compares again every second until
//!   its mirror matches or `--verify-timeout` passes; what still differs then is reported as
//!   divergent. A correct server converges within one budgeted round of updates; a lost
//!   update, a missed delete or a row leaking past visibility never does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orrery_client::row::TableSchema;
use orrery_client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The subscription radii of the sample MMO's client (`docs/sample-mmo.md`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SightRadii {
    /// Avatars.
    pub avatar: f32,
    /// NPCs.
    pub npc: f32,
    /// Items on the ground.
    pub item: f32,
    /// Local chat.
    pub chat: f32,
}

impl Default for SightRadii {
    fn default() -> Self {
        SightRadii {
            avatar: 100.0,
            npc: 60.0,
            item: 60.0,
            chat: 40.0,
        }
    }
}

impl SightRadii {
    /// The queries a bot subscribes to, in order.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            format!(
                "SELECT * FROM avatar WHERE within(position, :focus, {})",
                self.avatar
            ),
            format!(
                "SELECT * FROM npc WHERE within(position, :focus, {})",
                self.npc
            ),
            format!(
                "SELECT * FROM item WHERE within(position, :focus, {})",
                self.item
            ),
            format!(
                "SELECT * FROM chat WHERE within(position, :focus, {})",
                self.chat
            ),
            "SELECT * FROM chat WHERE global = true".to_owned(),
            "SELECT * FROM player".to_owned(),
            "SELECT * FROM inventory".to_owned(),
        ]
    }

    /// The comparisons `--verify` makes (every subscription but chat).
    pub fn checks(&self) -> Vec<Check> {
        let spatial = |table: &'static str, radius: f32| Check {
            table,
            sql: format!("SELECT * FROM {table} WHERE within(position, :focus, {radius})"),
            radius: Some(radius),
            band: STILL_BAND,
            tolerance: 0.0,
            ignore: &[],
        };
        vec![
            spatial("avatar", self.avatar),
            Check {
                band: NPC_TOLERANCE,
                tolerance: NPC_TOLERANCE,
                ignore: &["velocity", "attack_ready_at"],
                ..spatial("npc", self.npc)
            },
            spatial("item", self.item),
            Check {
                table: "player",
                sql: "SELECT * FROM player".into(),
                radius: None,
                band: 0.0,
                tolerance: 0.0,
                ignore: &[],
            },
            Check {
                table: "inventory",
                sql: "SELECT * FROM inventory".into(),
                radius: None,
                band: 0.0,
                tolerance: 0.0,
                ignore: &[],
            },
        ]
    }
}

/// The publisher's hysteresis margin (`PublishConfig::hysteresis`, 5 m).
pub const HYSTERESIS: f32 = 5.0;
/// Edge band for rows at rest: the bot's focus is its quantized position.
pub const STILL_BAND: f32 = 0.05;
/// Position tolerance and edge band for NPCs, which never stop moving.
pub const NPC_TOLERANCE: f32 = 2.0;

/// One comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The table.
    pub table: &'static str,
    /// The query (the same text as the subscription).
    pub sql: String,
    /// The `within` radius, for spatial queries.
    pub radius: Option<f32>,
    /// Edge band tolerated around the radius (see the module docs).
    pub band: f32,
    /// Extra tolerance on quantized columns (metres for positions).
    pub tolerance: f32,
    /// Columns not compared.
    pub ignore: &'static [&'static str],
}

/// A row that differs between a bot's mirror and the server's read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// The bot's index.
    pub bot: usize,
    /// The table.
    pub table: String,
    /// The row's primary key (JSON).
    pub key: String,
    /// `missing` (the server has it, the mirror not), `extra` (the mirror has it, the server
    /// not) or `value` (both, with different values).
    pub kind: String,
    /// What differs.
    pub detail: String,
}

/// One bot's verification.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BotVerify {
    /// Rows compared in the last attempt (both sides' union).
    pub rows_compared: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Time from the first attempt until the mirror matched (`None`: it never did).
    pub converged_after_ms: Option<f64>,
    /// What still differed at the end.
    pub divergent: Vec<Divergence>,
    /// The verification could not be made (HTTP error, own avatar unknown).
    pub error: Option<String>,
}

fn as_point(v: &Json) -> Option<[f32; 2]> {
    let a = v.as_array()?;
    Some([a.first()?.as_f64()? as f32, a.get(1)?.as_f64()? as f32])
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Whether two JSON values are equal, numbers within `tolerance` (absolute) or a relative
/// 1e-6 (f32 values printed through f64 on both sides).
fn close(a: &Json, b: &Json, tolerance: f64) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= tolerance.max(1e-6 * x.abs().max(y.abs()))
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y, tolerance))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| close(v, w, tolerance)))
        }
        _ => a == b,
    }
}

/// Compares one query's rows: `mirror` (the bot's rows of the table, as JSON objects) against
/// `server` (the read's rows). Returns the rows compared and the divergences.
pub fn compare(
    bot: usize,
    check: &Check,
    schema: &TableSchema,
    focus: [f32; 2],
    mirror: &[Json],
    server: &[Json],
) -> (u64, Vec<Divergence>) {
    let pk = schema
        .primary_key_column()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let keyed = |rows: &[Json]| -> BTreeMap<String, Json> {
        rows.iter()
            .map(|r| {
                (
                    r.get(&pk).map(Json::to_string).unwrap_or_default(),
                    r.clone(),
                )
            })
            .collect()
    };
    let (mine, theirs) = (keyed(mirror), keyed(server));
    let distance_of = |row: &Json| {
        row.get("position")
            .and_then(as_point)
            .map(|p| distance(p, focus))
    };
    let mut out = Vec::new();
    let divergence = |key: &str, kind: &str, detail: String| Divergence {
        bot,
        table: check.table.to_owned(),
        key: key.to_owned(),
        kind: kind.to_owned(),
        detail,
    };
    let mut keys: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in &keys {
        match (mine.get(*key), theirs.get(*key)) {
            (Some(m), None) => {
                let d = distance_of(m);
                let on_edge = check
                    .radius
                    .zip(d)
                    .is_some_and(|(r, d)| d >= r - check.band && d <= r + HYSTERESIS + check.band);
                if !on_edge {
                    out.push(divergence(
                        key,
                        "extra",
                        format!(
                            "in the mirror only, {:.2} m from the focus: {m}",
                            d.unwrap_or(0.0)
                        ),
                    ));
                }
            }
            (None, Some(s)) => {
                let d = distance_of(s);
                let on_edge = check
                    .radius
                    .zip(d)
                    .is_some_and(|(r, d)| d >= r - check.band);
                if !on_edge {
                    out.push(divergence(
                        key,
                        "missing",
                        format!(
                            "on the server only, {:.2} m from the focus: {s}",
                            d.unwrap_or(0.0)
                        ),
                    ));
                }
            }
            (Some(m), Some(s)) => {
                for column in &schema.columns {
                    if check.ignore.contains(&column.name.as_str()) {
                        continue;
                    }
                    let (a, b) = (
                        m.get(&column.name).unwrap_or(&Json::Null),
                        s.get(&column.name).unwrap_or(&Json::Null),
                    );
                    let tolerance = match column.quantize {
                        Some(step) => f64::from(step) * 0.5 + 1e-4 + f64::from(check.tolerance),
                        None => 0.0,
                    };
                    if !close(a, b, tolerance) {
                        out.push(divergence(
                            key,
                            "value",
                            format!("column {}: mirror {a}, server {b}", column.name),
                        ));
                        break;
                    }
                }
            }
            (None, None) => {}
        }
    }
    (keys.len() as u64, out)
}

/// Why a bot could not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bot's own avatar is not in its mirror, so it has no focus to read with.
    #[error("bot {bot}: its own avatar {avatar} is not in its mirror")]
    NoOwnAvatar {
        /// The bot.
        bot: usize,
        /// Its avatar id.
        avatar: u64,
    },
    /// The table is not in the schema.
    #[error("table {0:?} is not in the schema")]
    UnknownTable(String),
    /// The read failed.
    #[error("bot {bot}: POST /v1/sql {sql:?}: {error}")]
    Read {
        /// The bot.
        bot: usize,
        /// The query.
        sql: String,
        /// The client's error.
        error: ClientError,
    },
}

/// One attempt: every check once. Returns the rows compared and the divergences.
async fn attempt(
    bot: usize,
    client: &Client,
    avatar: u64,
    checks: &[Check],
    reads: &tokio::sync::Semaphore,
) -> Result<(u64, Vec<Divergence>), VerifyError> {
    let focus = client
        .with_mirror(|m| {
            m.find_row("avatar", &serde_json::json!(avatar))
                .ok()
                .flatten()
                .and_then(|row| row.get("position").map(|_| row.to_json()))
        })
        .and_then(|row| row.get("position").and_then(as_point))
        .ok_or(VerifyError::NoOwnAvatar { bot, avatar })?;
    let mut compared = 0;
    let mut divergent = Vec::new();
    for check in checks {
        let server = {
            let _permit = reads.acquire().await;
            client
                .control_plane()
                .sql(
                    client.token(),
                    &check.sql,
                    check.radius.map(|_| [focus[0], focus[1], 0.0]),
                )
                .await
                .map_err(|error| VerifyError::Read {
                    bot,
                    sql: check.sql.clone(),
                    error,
                })?
        };
        let schema = client
            .schema()
            .table(check.table)
            .ok_or_else(|| VerifyError::UnknownTable(check.table.to_owned()))?;
        let mirror: Vec<Json> = client.with_mirror(|m| {
            m.iter(check.table)
                .map(|rows| rows.map(|r| r.to_json()).collect())
                .unwrap_or_default()
        });
        let (n, mut d) = compare(bot, check, schema, focus, &mirror, &server.rows);
        compared += n;
        divergent.append(&mut d);
    }
    Ok((compared, divergent))
}

/// Verifies one bot (see the module docs): compares until the mirror matches or `timeout`
/// passes. `reads` bounds the HTTP reads in flight across bots.
pub async fn verify_bot(
    bot: usize,
    client: &Client,
    avatar: u64,
    checks: &[Check],
    timeout: Duration,
    reads: &tokio::sync::Semaphore,
) -> BotVerify {
    let start = Instant::now();
    let mut result = BotVerify::default();
    loop {
        result.attempts += 1;
        match attempt(bot, client, avatar, checks, reads).await {
            Ok((compared, divergent)) => {
                result.rows_compared = compared;
                result.error = None;
                result.divergent = divergent;
                if result.divergent.is_empty() {
                    result.converged_after_ms = Some(start.elapsed().as_secs_f64() * 1_000.0);
                    return result;
                }
            }
            Err(e) => result.error = Some(e.to_string()),
        }
        if start.elapsed() >= timeout {
            return result;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> TableSchema {
        serde_json::from_value(json!({
            "id": 0, "name": "npc", "rust_type": "Npc", "primary_key": 0,
            "indexes": [{"column": "id", "kind": "primary"}],
            "visibility": {"kind": "public"}, "durability": "durable", "event": false,
            "columns": [
                {"name": "id", "type": {"kind": "u64"}, "auto_inc": true},
                {"name": "position", "type": {"kind": "vec2"}, "auto_inc": false, "quantize": 0.01},
                {"name": "velocity", "type": {"kind": "vec2"}, "auto_inc": false},
                {"name": "hp", "type": {"kind": "i32"}, "auto_inc": false}
            ]
        }))
        .unwrap()
    }

    fn row(id: u64, x: f32, hp: i32) -> Json {
        json!({"id": id, "position": [x, 0.0], "velocity": [1.0, 0.0], "hp": hp})
    }

    fn still(radius: f32) -> Check {
        Check {
            table: "npc",
            sql: String::new(),
            radius: Some(radius),
            band: STILL_BAND,
            tolerance: 0.0,
            ignore: &[],
        }
    }

    #[test]
    fn equal_rows_and_quantization_pass() {
        let s = schema();
        let mirror = [row(1, 10.0, 5), row(2, 20.0, 5)];
        let server = [row(2, 20.004, 5), row(1, 10.0, 5)];
        let (n, d) = compare(0, &still(60.0), &s, [0.0, 0.0], &mirror, &server);
        assert_eq!((n, d), (2, vec![]));
    }

    #[test]
    fn missing_extra_and_changed_rows_diverge() {
        let s = schema();
        let mirror = [row(1, 10.0, 5), row(3, 30.0, 5)];
        let server = [row(1, 10.0, 4), row(2, 20.0, 5)];
        let (n, d) = compare(7, &still(60.0), &s, [0.0, 0.0], &mirror, &server);
        assert_eq!(n, 3);
        let kinds: Vec<(&str, &str)> = d
            .iter()
            .map(|d| (d.key.as_str(), d.kind.as_str()))
            .collect();
        assert_eq!(kinds, [("1", "value"), ("2", "missing"), ("3", "extra")]);
        assert!(d[0].detail.contains("hp") && d.iter().all(|d| d.bot == 7));
    }

    #[test]
    fn rows_on_the_edge_of_a_view_are_tolerated() {
        let s = schema();
        // In the mirror inside the hysteresis margin; on the server just inside the radius.
        let mirror = [row(1, 62.0, 5)];
        let server = [row(2, 59.99, 5)];
        let (_, d) = compare(0, &still(60.0), &s, [0.0, 0.0], &mirror, &server);
        assert!(d.is_empty(), "{d:?}");
        // Beyond the margin, or well inside the view: divergent.
        let (_, d) = compare(0, &still(60.0), &s, [0.0, 0.0], &[row(1, 70.0, 5)], &[]);
        assert_eq!(d.len(), 1);
        let (_, d) = compare(0, &still(60.0), &s, [0.0, 0.0], &[], &[row(2, 40.0, 5)]);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn moving_rows_compare_within_tolerance_and_skip_ignored_columns() {
        let s = schema();
        let moving = Check {
            band: NPC_TOLERANCE,
            tolerance: NPC_TOLERANCE,
            ignore: &["velocity"],
            ..still(60.0)
        };
        let mut m = row(1, 10.0, 5);
        m["velocity"] = json!([0.0, 3.0]);
        let (_, d) = compare(0, &moving, &s, [0.0, 0.0], &[m.clone()], &[row(1, 11.5, 5)]);
        assert!(d.is_empty(), "{d:?}");
        let (_, d) = compare(0, &still(60.0), &s, [0.0, 0.0], &[m], &[row(1, 11.5, 5)]);
        assert_eq!(d.len(), 1);
    }
}
