//! What a reply and a subscription say about durability, against a live server whose log is
//! fsynced only every 1.5 s (so "ran" and "on disk" are far apart): a plain call is answered
//! the tick it ran and says whether that tick was durable yet; a durable call is answered once
//! it is and always says so; a client with confirmed reads sees a row only once its tick is
//! durable, later than a client without them, and never earlier.

mod common;

use std::time::{Duration, Instant};

use orrery_client::{Client, ClientOptions};
use orrery_engine::FsyncPolicy;
use orrery_server::{ServerConfig, Storage};
use serde_json::json;

fn texts(client: &Client) -> Vec<String> {
    client
        .rows::<serde_json::Value>("note")
        .unwrap()
        .iter()
        .map(|row| row["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_say_whether_durable_and_confirmed_reads_wait_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.storage = Storage::Disk {
        fsync: FsyncPolicy::Interval(Duration::from_millis(1_500)),
        snapshot_every_ticks: 0,
    };
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    let connect = || Client::connect(&server.http_url, ClientOptions::default());
    let (writer, eager, confirmed) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    confirmed.set_confirmed_reads(true).unwrap();
    for client in [&eager, &confirmed] {
        client.subscribe("SELECT * FROM note").await.unwrap();
    }

    let mut plain_not_yet_durable = 0;
    let mut confirmed_later = 0;
    for round in 0..4 {
        let text = format!("note {round}");
        let reply = writer.call("note", json!([1, text])).await.unwrap();
        plain_not_yet_durable += usize::from(!reply.durable);
        // Poll both mirrors until the confirmed client has the row; the eager one must have
        // had it first (or at the same poll).
        let started = Instant::now();
        let mut eager_at = None;
        loop {
            assert!(started.elapsed() < Duration::from_secs(10), "round {round}");
            let (eager_has, confirmed_has) = (
                texts(&eager).contains(&text),
                texts(&confirmed).contains(&text),
            );
            if eager_has && eager_at.is_none() {
                eager_at = Some(started.elapsed());
            }
            if confirmed_has {
                let eager_at = eager_at.expect("a confirmed read came before the eager one");
                if started.elapsed() > eager_at + Duration::from_millis(100) {
                    confirmed_later += 1;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let durable = writer
            .call_durable("note", json!([2, format!("durable {round}")]))
            .await
            .unwrap();
        assert!(durable.durable, "a durable call's reply says durable");
        assert!(durable.tick > reply.tick);
    }
    // With 1.5 s between fsyncs, a reply one tick after the call is durable only if an fsync
    // happened to fall in that tick (a few percent), and a confirmed read trails the eager one
    // by up to the fsync interval: requiring it of one round in four cannot fail by chance.
    assert!(plain_not_yet_durable >= 1, "{plain_not_yet_durable} of 4");
    assert!(confirmed_later >= 1, "{confirmed_later} of 4");
    for client in [&writer, &eager, &confirmed] {
        client.disconnect();
    }
    server.shutdown().await.unwrap();
}
