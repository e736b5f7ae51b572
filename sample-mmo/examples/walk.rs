//! A small player for the sample MMO: joins, says hello, hunts the nearest creature, picks up
//! what it drops, drinks potions when hurt, and prints what it sees once a second.
//!
//! ```sh
//! cargo run --release -p sample-mmo                              # in one terminal
//! cargo run --release -p sample-mmo --example walk               # in another (or several)
//! cargo run --release -p sample-mmo --example walk -- --name ann --seconds 120
//! ```
//!
//! The identity token is kept in `--token-file` (default `./walk-<name>.token`), so running
//! it again plays the same character.

#![allow(clippy::print_stdout)] // A terminal program: what it prints is its output.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use orrery_client::{Client, ClientOptions};
use orrery_engine::glam::Vec2;
use serde::Deserialize;
use serde_json::json;

/// Play the sample MMO from the terminal.
#[derive(Parser, Debug)]
struct Args {
    /// The server's control plane.
    #[arg(default_value = "http://127.0.0.1:3000")]
    server: String,
    /// Character name (3-16 letters, digits, `_`, `-`).
    #[arg(long, default_value = "walker")]
    name: String,
    /// How long to play, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Where the identity token is kept (default `./walk-<name>.token`).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// PEM root certificate for an `https://` server with a private or self-signed certificate.
    #[arg(long)]
    root_certificate: Option<std::path::PathBuf>,
}

#[derive(Deserialize, Debug, Clone)]
struct Avatar {
    name: String,
    position: [f32; 2],
    hp: i32,
    max_hp: i32,
    level: u32,
}

#[derive(Deserialize, Debug, Clone)]
struct Npc {
    id: u64,
    kind: String,
    position: [f32; 2],
    hp: i32,
}

#[derive(Deserialize, Debug, Clone)]
struct Item {
    id: u64,
    kind: String,
    position: [f32; 2],
}

#[derive(Deserialize, Debug, Clone)]
struct Carried {
    id: u64,
    kind: String,
}

fn at(p: [f32; 2]) -> Vec2 {
    Vec2::from_array(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| format!("walk-{}.token", args.name).into());
    let token = std::fs::read_to_string(&token_file)
        .ok()
        .map(|t| t.trim().to_owned());
    let root_certificates_pem = match &args.root_certificate {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("{}", path.display()))?),
        None => None,
    };
    let options = ClientOptions {
        token,
        root_certificates_pem,
        ..ClientOptions::default()
    };
    let client = Client::connect(&args.server, options)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    std::fs::write(&token_file, client.token())
        .with_context(|| format!("saving the token to {}", token_file.display()))?;
    client
        .call("enter_world", json!([args.name]))
        .await
        .context("entering the world")?;
    for sql in [
        "SELECT * FROM avatar WHERE within(position, :focus, 100)",
        "SELECT * FROM npc WHERE within(position, :focus, 60)",
        "SELECT * FROM item WHERE within(position, :focus, 60)",
        "SELECT * FROM chat WHERE within(position, :focus, 40)",
        "SELECT * FROM chat WHERE global = true",
        "SELECT * FROM inventory",
        "SELECT * FROM spawn_point",
    ] {
        client
            .subscribe(sql)
            .await
            .with_context(|| sql.to_owned())?;
    }
    client.on_insert("chat", |row| {
        let text = |c: &str| row.get(c).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        println!("  [chat] {}: {}", text("name"), text("text"));
    })?;
    println!(
        "{} joined {} (token in {})",
        args.name,
        args.server,
        token_file.display()
    );
    client
        .call("say", json!([format!("hello, I am {}", args.name), false]))
        .await?;

    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut last_report = Instant::now() - Duration::from_secs(1);
    while Instant::now() < end && client.is_connected() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let avatars: Vec<Avatar> = client.rows("avatar")?;
        let Some(me) = avatars.iter().find(|a| a.name == args.name).cloned() else {
            continue;
        };
        let here = at(me.position);
        let npcs: Vec<Npc> = client.rows("npc")?;
        let items: Vec<Item> = client.rows("item")?;
        let carried: Vec<Carried> = client.rows("inventory")?;

        let potion = carried.iter().find(|c| c.kind == "Potion");
        if let Some(potion) = potion.filter(|_| me.hp < me.max_hp / 2)
            && client.call("use_item", json!([potion.id])).await.is_ok()
        {
            println!("  drank a potion");
        }
        let nearest_item = items.iter().min_by(|a, b| {
            at(a.position)
                .distance(here)
                .total_cmp(&at(b.position).distance(here))
        });
        let nearest_npc = npcs.iter().min_by(|a, b| {
            at(a.position)
                .distance(here)
                .total_cmp(&at(b.position).distance(here))
        });
        if let Some(item) = nearest_item.filter(|i| at(i.position).distance(here) < 20.0) {
            if at(item.position).distance(here) <= 2.5 {
                if client.call("pick_up", json!([item.id])).await.is_ok() {
                    println!("  picked up a {}", item.kind);
                }
            } else {
                client
                    .call("move_to", json!([item.position, false]))
                    .await?;
            }
        } else if let Some(npc) = nearest_npc {
            if at(npc.position).distance(here) <= 2.5 {
                match client.call("attack", json!([npc.id])).await {
                    Ok(_) => println!("  hit {} {} ({} hp left)", npc.kind, npc.id, npc.hp - 10),
                    Err(e) => tracing::debug!(%e, "attack"),
                }
            } else {
                client.call("move_to", json!([npc.position, true])).await?;
            }
        } else {
            // Nothing around: head for the nearest spawn point.
            #[derive(Deserialize)]
            struct SpawnPoint {
                position: [f32; 2],
            }
            let points: Vec<SpawnPoint> = client.rows("spawn_point")?;
            if let Some(point) = points
                .iter()
                .map(|p| at(p.position))
                .min_by(|a, b| a.distance(here).total_cmp(&b.distance(here)))
            {
                client
                    .call("move_to", json!([point.to_array(), true]))
                    .await?;
            }
        }

        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            println!(
                "{} at ({:.0}, {:.0}) hp {}/{} level {} | sees {} players, {} creatures, {} items | carries {}",
                me.name,
                here.x,
                here.y,
                me.hp,
                me.max_hp,
                me.level,
                avatars.len() - 1,
                npcs.len(),
                items.len(),
                carried.len(),
            );
        }
    }
    client.disconnect();
    Ok(())
}
