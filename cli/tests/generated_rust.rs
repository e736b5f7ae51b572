//! The Rust code `orrery generate --lang rust` emits for the sample MMO is checked in
//! (`generated/sample_mmo.rs`, compiled here) and must equal what the generator emits today
//! (`ORRERY_BLESS=1` rewrites it); driven through `orrery-client` against a live server, its
//! reducer calls work and its row decoders agree with the client's own decoding.

use std::time::{Duration, Instant};

use orrery_cli::codegen::{Lang, Options, generate};
use orrery_client::{Client, ClientOptions};
use support::Server;

mod support;

#[rustfmt::skip]
#[path = "generated/sample_mmo.rs"]
mod sample_mmo;

#[test]
fn generated_rust_is_current_and_plays_the_sample() {
    let server = Server::start();
    let url = server.url.clone();
    server.local.runtime().block_on(async move {
        let http = orrery_client::http::ControlPlane::new(&url).unwrap();
        let schema = http.schema().await.unwrap();
        let files = generate(&schema, Lang::Rust, &Options::default()).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/generated/sample_mmo.rs");
        if std::env::var_os("ORRERY_BLESS").is_some() {
            std::fs::write(path, &files[0].contents).unwrap();
        }
        assert!(
            std::fs::read_to_string(path).unwrap_or_default() == files[0].contents,
            "{path} is stale: ORRERY_BLESS=1 cargo test -p orrery-cli --test generated_rust"
        );

        let client = Client::connect(&url, ClientOptions::default())
            .await
            .unwrap();
        sample_mmo::reducers::enter_world(&client, "rust_gen")
            .await
            .unwrap();
        let refused = sample_mmo::reducers::enter_world(&client, "x")
            .await
            .unwrap_err();
        assert!(refused.reducer_error().unwrap().contains("3-16 characters"));
        client.subscribe("SELECT * FROM avatar").await.unwrap();
        client.subscribe("SELECT * FROM npc").await.unwrap();
        sample_mmo::reducers::set_input(&client, &[0.0, 1.0], &true)
            .await
            .unwrap();

        let until = Instant::now() + Duration::from_secs(20);
        let (identity, _) = client.identity().unwrap();
        loop {
            let (avatars, npcs) = client.with_mirror(|m| {
                let decode_all = |table: &str| -> Vec<(Vec<u8>, serde_json::Value)> {
                    m.iter(table)
                        .unwrap()
                        .map(|r| (r.to_bytes(), r.to_json()))
                        .collect()
                };
                (decode_all("avatar"), decode_all("npc"))
            });
            for (bytes, json) in &npcs {
                let npc = sample_mmo::Npc::decode(bytes).unwrap();
                assert_eq!(serde_json::json!(npc.id), json["id"]);
                assert_eq!(serde_json::json!(npc.hp), json["hp"]);
                let kind = match npc.kind {
                    sample_mmo::NpcKind::Deer => "Deer",
                    sample_mmo::NpcKind::Wolf => "Wolf",
                };
                assert_eq!(json["kind"], kind);
                assert_eq!(npc.to_bytes(), *bytes, "re-encodes to the same row");
            }
            let mine = avatars
                .iter()
                .map(|(bytes, _)| sample_mmo::Avatar::decode(bytes).unwrap())
                .find(|a| a.owner == identity);
            if npcs.len() == 200
                && let Some(me) = mine
                && me.velocity[1] > 0.0
            {
                assert_eq!(me.name, "rust_gen");
                assert_eq!(sample_mmo::Avatar::TABLE_NAME, "avatar");
                break;
            }
            assert!(
                Instant::now() < until,
                "mirror never showed 200 NPCs and a running avatar"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
