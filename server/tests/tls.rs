//! The control plane over TLS, against a live server on real sockets: the Rust client speaks
//! `https://` with a private root, refuses a certificate it cannot verify, clear-text HTTP
//! gets no answer from the TLS port, a client stuck mid-handshake holds up nobody, and bad
//! certificate files stop the start with an error naming the file.

mod common;

use std::time::Duration;

use orrery_client::http::ControlPlane;
use orrery_client::{Client, ClientError, ClientOptions};
use orrery_server::{ServerConfig, ServerError, ServerHandle, TlsFiles};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for `localhost`, written as PEM files; returns the files and
/// the certificate's PEM (the client's root).
fn self_signed(dir: &std::path::Path) -> (TlsFiles, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate = certified.cert.pem();
    let files = TlsFiles {
        certificate_chain: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
    };
    std::fs::write(&files.certificate_chain, &certificate).unwrap();
    std::fs::write(&files.private_key, certified.signing_key.serialize_pem()).unwrap();
    (files, certificate.into_bytes())
}

async fn tls_server() -> (ServerHandle, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (files, root) = self_signed(dir.path());
    let mut config = ServerConfig::for_tests(dir.path());
    config.tls = Some(files);
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    (server, root, dir)
}

fn https_base(server: &ServerHandle) -> String {
    // The certificate names `localhost`, so the URL must too (TLS checks the name).
    format!("https://localhost:{}", server.http_addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_connects_and_calls_over_https() {
    let (server, root, _dir) = tls_server().await;
    assert!(
        server.http_url.starts_with("https://"),
        "{}",
        server.http_url
    );

    let cp = ControlPlane::new(&https_base(&server))
        .unwrap()
        .with_root_certificates_pem(&root)
        .unwrap();
    assert!(cp.is_https());
    let me = cp.create_identity().await.unwrap();
    assert_eq!(me.identity.len(), 64);
    let connect = cp.connect_token(&me.token).await.unwrap();
    assert!(!connect.token_bytes().unwrap().is_empty());
    let answer = cp.call(&me.token, "note", &json!([2, "over tls"])).await;
    assert!(answer.unwrap().tick > 0);

    // The whole client: identity, schema and connect token over HTTPS, then UDP.
    let options = ClientOptions {
        root_certificates_pem: Some(root),
        ..ClientOptions::default()
    };
    let client = Client::connect(&https_base(&server), options)
        .await
        .unwrap();
    let reply = client.call("add", json!([5])).await.unwrap();
    assert!(reply.tick > 0);
    client.disconnect();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverifiable_certificate_is_refused() {
    let (server, root, _dir) = tls_server().await;
    // The public roots do not vouch for a self-signed certificate.
    let cp = ControlPlane::new(&https_base(&server)).unwrap();
    match cp.create_identity().await {
        Err(ClientError::Http { error, .. }) => {
            assert!(
                error.contains("TLS") && error.contains("certificate"),
                "{error}"
            )
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // Trusting some other certificate does not help either.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_root) = self_signed(other_dir.path());
    let cp = ControlPlane::new(&https_base(&server))
        .unwrap()
        .with_root_certificates_pem(&other_root)
        .unwrap();
    assert!(matches!(
        cp.create_identity().await,
        Err(ClientError::Http { .. })
    ));
    // Nor does a name the certificate does not carry.
    let cp = ControlPlane::new(&format!("https://{}", server.http_addr))
        .unwrap()
        .with_root_certificates_pem(&root)
        .unwrap();
    assert!(matches!(
        cp.create_identity().await,
        Err(ClientError::Http { .. })
    ));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_text_gets_no_answer_and_stalled_handshakes_hold_up_nobody() {
    let (server, root, _dir) = tls_server().await;

    // A plain HTTP request to the TLS port: the bytes are not a TLS hello, so the connection
    // is closed without an HTTP answer and without issuing anything.
    let mut plain = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    plain
        .write_all(b"POST /v1/identity HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    assert!(read.is_ok() || answer.is_empty());
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    // Fifty connections that never send a ClientHello do not block the next handshake.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(
            tokio::net::TcpStream::connect(server.http_addr)
                .await
                .unwrap(),
        );
    }
    let cp = ControlPlane::new(&https_base(&server))
        .unwrap()
        .with_root_certificates_pem(&root)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let me = cp.create_identity().await.unwrap();
    assert_eq!(me.identity.len(), 64);
    drop(stalled);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = self_signed(dir.path());

    let missing = TlsFiles {
        certificate_chain: dir.path().join("absent.pem"),
        ..files.clone()
    };
    let garbage = TlsFiles {
        private_key: dir.path().join("garbage.pem"),
        ..files.clone()
    };
    std::fs::write(&garbage.private_key, "-----BEGIN NOTHING-----\n").unwrap();
    let swapped = TlsFiles {
        certificate_chain: files.private_key.clone(),
        private_key: files.certificate_chain.clone(),
    };
    for (tls, expected_path) in [
        (missing, dir.path().join("absent.pem")),
        (garbage, dir.path().join("garbage.pem")),
        (swapped.clone(), swapped.certificate_chain.clone()),
    ] {
        let mut config = ServerConfig::for_tests(dir.path());
        config.tls = Some(tls);
        match orrery_server::start(common::module(), config).await {
            Err(ServerError::Tls { path, reason }) => {
                assert_eq!(path, expected_path, "{reason}")
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }
}
