//! `orrery-cli`: the `orrery` command line for a running Orrery server, and the code
//! generator behind `orrery generate`.
//!
//! It owns the commands ([`Cli`], [`run`]): `sql` (a one-off read), `call` (a reducer over
//! HTTP), `subscribe` (a UDP connection printing row changes live), `schema`, `identity new`
//! and `generate` (typed rows, decoders and reducer calls for C#, C++ and Rust from the schema
//! JSON: [`codegen`]). Commands write their output to a writer, so tests and other programs can
//! run them in-process; the binary (`src/main.rs`) passes stdout.
//!
//! Dependency rule: client side only. It depends on `orrery-client` (and through it the row
//! codec and the netcode) and must not reach the engine, the publisher, the server, bevy_ecs or
//! sqlparser (`docs/architecture.md`): everything it knows about a module comes from the
//! schema the server serves. Usage: `docs/ffi.md`.

pub mod codegen;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orrery_client::http::ControlPlane;
use orrery_client::row::{ModuleSchema, values_to_json};
use orrery_client::{CallError, Client, ClientError, ClientOptions, Event, MirrorChange};

/// The `orrery` command line.
#[derive(Debug, Parser)]
#[command(name = "orrery", version, about = "Talk to a running Orrery server")]
pub struct Cli {
    /// The server's control plane (HTTP base URL).
    #[arg(
        long,
        global = true,
        env = "ORRERY_SERVER",
        default_value = "http://127.0.0.1:3000"
    )]
    pub server: String,
    /// An identity token (as `orrery identity new` prints it).
    #[arg(long, global = true, env = "ORRERY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the identity token (as `orrery identity new --save FILE` writes it).
    #[arg(long, global = true, env = "ORRERY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a one-off SQL read (the subscription subset) and print the rows, one JSON object a
    /// line.
    Sql {
        /// The query, e.g. "SELECT * FROM npc WHERE kind = 'Wolf'".
        query: String,
        /// The point `:focus` stands for: x,y or x,y,z.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        focus: Option<Vec<f32>>,
    },
    /// Call a reducer over HTTP and print `{"ok":true,"tick":N}` once it committed.
    Call {
        /// The reducer.
        reducer: String,
        /// Its arguments as JSON: an array by position or an object by name.
        #[arg(default_value = "[]", allow_hyphen_values = true)]
        args: String,
    },
    /// Connect over UDP, subscribe and print row changes live, one JSON object a line
    /// (`subscribed`, `insert`, `update`, `delete`, `disconnected`).
    Subscribe {
        /// One or more queries.
        #[arg(required = true)]
        queries: Vec<String>,
        /// Stop after this many row changes.
        #[arg(long)]
        limit: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Print the module schema JSON.
    Schema,
    /// Generate typed rows, decoders and reducer calls from the schema.
    Generate {
        /// The language.
        #[arg(long, value_enum)]
        lang: codegen::Lang,
        /// The output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Read the schema from this JSON file instead of the server.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// The C# or C++ namespace of the generated code.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Manage identities.
    Identity {
        /// What to do.
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

/// `orrery identity …`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create a new identity and print it and its token as JSON.
    New {
        /// Also write the token to this file (for --token-file).
        #[arg(long)]
        save: Option<PathBuf>,
    },
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The client failed (HTTP, UDP, bad arguments, ...).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A reducer call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A JSON input did not parse.
    #[error("{what} is not valid JSON: {error}")]
    Json {
        /// Which input.
        what: String,
        /// The parser's message.
        error: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// The command needs an identity and none was given.
    #[error(
        "`{0}` needs an identity: pass --token or --token-file \
         (create one with `orrery identity new --save orrery.token`)"
    )]
    NoToken(&'static str),
    /// `--focus` had the wrong number of values.
    #[error("--focus takes 2 or 3 numbers (x,y or x,y,z), got {0}")]
    Focus(usize),
    /// Code generation failed.
    #[error(transparent)]
    Codegen(#[from] codegen::CodegenError),
    /// The connection closed while subscribed.
    #[error("disconnected: {0}")]
    Disconnected(String),
}

impl Cli {
    /// The identity token from `--token` or `--token-file`, if any.
    pub fn token(&self) -> Result<Option<String>, CliError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|source| CliError::Io {
                    path: path.clone(),
                    source,
                }),
            None => Ok(None),
        }
    }

    fn required_token(&self, command: &'static str) -> Result<String, CliError> {
        self.token()?.ok_or(CliError::NoToken(command))
    }
}

fn line(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), CliError> {
    writeln!(out, "{value}")
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let http = ControlPlane::new(&cli.server)?;
    match &cli.command {
        Command::Sql { query, focus } => {
            let focus = match focus.as_deref() {
                None => None,
                Some([x, y]) => Some([*x, *y, 0.0]),
                Some([x, y, z]) => Some([*x, *y, *z]),
                Some(other) => return Err(CliError::Focus(other.len())),
            };
            let token = cli.required_token("sql")?;
            let answer = http.sql(&token, query, focus).await?;
            tracing::info!(
                table = answer.table,
                tick = answer.tick,
                rows = answer.rows.len(),
                "read"
            );
            for row in &answer.rows {
                line(out, row)?;
            }
        }
        Command::Call { reducer, args } => {
            let args: serde_json::Value =
                serde_json::from_str(args).map_err(|e| CliError::Json {
                    what: "the arguments".into(),
                    error: e.to_string(),
                })?;
            let token = cli.required_token("call")?;
            let answer = http.call(&token, reducer, &args).await?;
            line(out, &serde_json::json!({"ok": true, "tick": answer.tick}))?;
        }
        Command::Schema => {
            let schema = http.schema().await?;
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            writeln!(out, "{text}").map_err(CliError::Output)?;
        }
        Command::Identity {
            command: IdentityCommand::New { save },
        } => {
            let created = http.create_identity().await?;
            if let Some(path) = save {
                std::fs::write(path, format!("{}\n", created.token)).map_err(|source| {
                    CliError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            line(
                out,
                &serde_json::json!({"identity": created.identity, "token": created.token}),
            )?;
        }
        Command::Generate {
            lang,
            out: dir,
            schema,
            namespace,
        } => {
            let schema = match schema {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    ModuleSchema::from_json_str(&text).map_err(|e| CliError::Json {
                        what: path.display().to_string(),
                        error: e.to_string(),
                    })?
                }
                None => http.schema().await?,
            };
            let options = codegen::Options {
                namespace: namespace.clone(),
            };
            std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
                path: dir.clone(),
                source,
            })?;
            for file in codegen::generate(&schema, *lang, &options)? {
                let path = dir.join(&file.name);
                std::fs::write(&path, &file.contents).map_err(|source| CliError::Io {
                    path: path.clone(),
                    source,
                })?;
                writeln!(out, "{}", path.display()).map_err(CliError::Output)?;
            }
        }
        Command::Subscribe {
            queries,
            limit,
            seconds,
        } => subscribe(cli, queries, *limit, *seconds, out).await?,
    }
    Ok(())
}

/// `orrery subscribe`: see [`Command::Subscribe`].
async fn subscribe(
    cli: &Cli,
    queries: &[String],
    limit: Option<u64>,
    seconds: Option<f64>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let options = ClientOptions {
        token: cli.token()?,
        event_capacity: 1 << 16,
        ..ClientOptions::default()
    };
    let client = Client::connect(&cli.server, options).await?;
    let schema = client.schema().clone();
    // Subscribed before the queries go out, so no initial row is missed.
    let mut events = client.events();
    for sql in queries {
        let query = client.subscribe(sql).await?;
        line(
            out,
            &serde_json::json!({"event": "subscribed", "query_id": query.query_id, "sql": sql}),
        )?;
    }
    let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut changes = 0u64;
    loop {
        if limit.is_some_and(|limit| changes >= limit) {
            break;
        }
        let next = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at, events.recv()).await.ok(),
                None => Some(events.recv().await),
            }
        };
        let event = tokio::select! {
            event = next => event,
            _ = tokio::signal::ctrl_c() => None,
        };
        let event = match event {
            None => break,
            Some(Ok(event)) => event,
            Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(missed = n, "output fell behind; events were dropped");
                continue;
            }
            Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
        };
        match event {
            Event::TableUpdate {
                table_id,
                tick,
                changes: rows,
            } => {
                let table = schema
                    .table_by_id(table_id)
                    .map_or_else(|| table_id.to_string(), |t| t.name.clone());
                for change in rows {
                    let json = |row: &orrery_client::Row| values_to_json(row.table(), row.values());
                    let value = match &change {
                        MirrorChange::Insert(row) => serde_json::json!({
                            "event": "insert", "table": table, "tick": tick, "row": json(row)}),
                        MirrorChange::Update { old, new } => serde_json::json!({
                            "event": "update", "table": table, "tick": tick,
                            "old": json(old), "new": json(new)}),
                        MirrorChange::Delete(row) => serde_json::json!({
                            "event": "delete", "table": table, "tick": tick, "row": json(row)}),
                    };
                    line(out, &value)?;
                    changes += 1;
                    if limit.is_some_and(|limit| changes >= limit) {
                        break;
                    }
                }
            }
            Event::Disconnected { reason } => {
                line(
                    out,
                    &serde_json::json!({"event": "disconnected", "reason": reason.to_string()}),
                )?;
                return Err(CliError::Disconnected(reason.to_string()));
            }
            _ => {}
        }
    }
    client.disconnect();
    Ok(())
}
