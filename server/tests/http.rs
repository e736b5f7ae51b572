//! The HTTP control plane against a running in-process server (in-memory engine, ports chosen
//! by the OS): requests go through the router with `tower::ServiceExt::oneshot` (no sockets),
//! plus one smoke test over a real socket.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use orrery_netcode::{ConnectToken, unix_now};
use orrery_server::{ServerConfig, ServerHandle};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn server(configure: impl FnOnce(&mut ServerConfig)) -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    configure(&mut config);
    let handle = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    (handle, dir)
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn json_of(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, text) = send(router, method, uri, token, body).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{uri}: {e}: {text}"));
    (status, value)
}

async fn new_identity(router: &Router) -> (String, String) {
    let (status, v) = json_of(router, "POST", "/v1/identity", None, None).await;
    assert_eq!(status, StatusCode::OK);
    (
        v["identity"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_connect_tokens_with_bearer_errors() {
    let (server, _dir) = server(|_| {}).await;
    let router = server.router();
    let (identity, token) = new_identity(&router).await;
    assert_eq!(identity.len(), 64);
    assert!(identity.chars().all(|c| c.is_ascii_hexdigit()));

    let (status, v) = json_of(&router, "POST", "/v1/connect-token", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["identity"], identity);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["connect_token"].as_str().unwrap())
        .unwrap();
    let connect = ConnectToken::from_bytes(&bytes).unwrap();
    assert_eq!(connect.client_id, v["client_id"].as_u64().unwrap());
    assert_eq!(connect.server_addresses, server.public_addresses);
    assert_eq!(v["server_addresses"][0], server.udp_addr.to_string());
    // Unique client ids.
    let (_, v2) = json_of(&router, "POST", "/v1/connect-token", Some(&token), None).await;
    assert_ne!(v2["client_id"], v["client_id"]);

    // Missing, forged, malformed and expired bearer tokens: 401 with a JSON error.
    let (status, v) = json_of(&router, "POST", "/v1/connect-token", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
    let mut forged = token.clone().into_bytes();
    let i = forged.len() / 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, v) = json_of(&router, "POST", "/v1/connect-token", Some(&forged), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("forged"), "{v}");
    let (status, _) = json_of(&router, "POST", "/v1/connect-token", Some("garbage!"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = server.secrets().issue(
        &orrery_engine::Identity([3; 32]),
        unix_now() - Duration::from_secs(100),
        Duration::from_secs(10),
    );
    let (status, v) = json_of(&router, "POST", "/v1/connect-token", Some(&expired), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    // Another server's token is forged here.
    let (other, _other_dir) = self::server(|_| {}).await;
    let (_, other_token) = new_identity(&other.router()).await;
    let (status, _) = json_of(
        &router,
        "POST",
        "/v1/connect-token",
        Some(&other_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    other.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_reducers_with_json_arguments() {
    let (server, _dir) = server(|_| {}).await;
    let router = server.router();
    let (_, token) = new_identity(&router).await;
    let t = Some(token.as_str());
    let (status, v) = json_of(&router, "POST", "/v1/call/add", t, Some("[5]")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["tick"].as_u64().unwrap() > 0);
    let (status, _) = json_of(&router, "POST", "/v1/call/add", t, Some(r#"{"n": "2"}"#)).await;
    assert_eq!(status, StatusCode::OK, "64-bit integers may be strings");
    let (status, v) = json_of(&router, "POST", "/v1/call/expect", t, Some("[7]")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the calls ran as this identity: {v}"
    );
    let (status, v) = json_of(&router, "POST", "/v1/call/expect", t, Some("[8]")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"], "counter is 7, expected 8");
    assert_eq!(v["ok"], false);
    let (status, v) = json_of(&router, "POST", "/v1/call/notes_are", t, Some("[1]")).await;
    assert_eq!(status, StatusCode::OK, "init ran once: {v}");

    for (uri, body, needle) in [
        ("/v1/call/nope", "[]", "no reducer named"),
        ("/v1/call/add", r#"["x"]"#, "bad arguments"),
        ("/v1/call/add", "[1, 2]", "bad arguments"),
        ("/v1/call/add", r#"{"m": 1}"#, "bad arguments"),
        ("/v1/call/add", "{not json", "not JSON"),
        ("/v1/call/connected", "[]", "cannot be called"),
    ] {
        let (status, v) = json_of(&router, "POST", uri, t, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{uri} {body}: {v}"
        );
    }
    let (status, _) = json_of(&router, "POST", "/v1/call/add", None, Some("[1]")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, v) = json_of(&router, "GET", "/v1/schema", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["name"], "server-test");
    let tables: Vec<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["counter", "note", "presence", "mob"]);
    assert!(
        v["reducers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "add")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_are_rate_limited_per_identity() {
    let (server, _dir) = server(|c| {
        c.rate_limit.calls_per_second = 0.5;
        c.rate_limit.burst = 2;
    })
    .await;
    let router = server.router();
    let (_, a) = new_identity(&router).await;
    let (_, b) = new_identity(&router).await;
    for _ in 0..2 {
        let (status, _) = json_of(&router, "POST", "/v1/call/add", Some(&a), Some("[1]")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, v) = json_of(&router, "POST", "/v1/call/add", Some(&a), Some("[1]")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        v["error"].as_str().unwrap().starts_with("rate limited"),
        "{v}"
    );
    let (status, _) = json_of(&router, "POST", "/v1/call/add", Some(&b), Some("[1]")).await;
    assert_eq!(status, StatusCode::OK, "another identity is not limited");
    let (status, v) = json_of(&router, "POST", "/v1/call/expect", Some(&a), Some("[2]")).await;
    assert!(
        status == StatusCode::TOO_MANY_REQUESTS || v["error"].is_null(),
        "the refused call did not run: {v}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_metrics_and_health() {
    let (server, dir) = server(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let router = server.router();
    let admin = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let admin = admin.trim();
    assert_eq!(admin, server.admin_token());
    let (_, user) = new_identity(&router).await;

    // Admin endpoints: 401 without a token, 403 with a user's, 200 with the admin token.
    for (method, uri) in [
        ("GET", "/metrics"),
        ("GET", "/v1/admin/clients"),
        ("POST", "/v1/admin/clients/7/disconnect"),
    ] {
        let (status, _) = send(&router, method, uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        let (status, _) = send(&router, method, uri, Some(&user), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
    }
    let (status, v) = json_of(&router, "GET", "/v1/admin/clients", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["clients"], json!([]));
    let (status, _) = json_of(
        &router,
        "POST",
        "/v1/admin/clients/7/disconnect",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let read = |text: &str| common::parse_metrics(text);
    let (status, before) = send(&router, "GET", "/metrics", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let before = read(&before);
    assert_eq!(before["orrery_reducer_calls_total"], 0.0);
    for (reducer, body) in [
        ("add", "[1]"),
        ("add", "[2]"),
        ("expect", "[99]"),
        ("nope", "[]"),
    ] {
        let _ = send(
            &router,
            "POST",
            &format!("/v1/call/{reducer}"),
            Some(&user),
            Some(body),
        )
        .await;
    }
    let (_, text) = send(&router, "GET", "/metrics", Some(admin), None).await;
    let after = read(&text);
    assert_eq!(after["orrery_reducer_calls_total"], 4.0, "{text}");
    assert_eq!(after["orrery_reducer_calls_committed_total"], 2.0);
    assert_eq!(after["orrery_reducer_calls_failed_total"], 1.0);
    assert_eq!(
        after["orrery_reducer_calls_rejected_total{reason=\"invalid\"}"],
        1.0
    );
    assert_eq!(
        after["orrery_reducer_calls_rejected_total{reason=\"rate_limit\"}"],
        0.0
    );
    assert!(after["orrery_ticks_total"] > before["orrery_ticks_total"]);
    assert_eq!(after["orrery_clients_connected"], 0.0);
    assert!(after["orrery_tick_duration_seconds{phase=\"total\",quantile=\"0.99\"}"] > 0.0);
    assert!(after.contains_key("orrery_tick_duration_seconds{phase=\"publish\",quantile=\"0.5\"}"));
    assert!(after.contains_key("orrery_udp_bytes_total{direction=\"out\"}"));
    assert!(after.contains_key("orrery_publish_worker_busy_seconds_total{worker=\"0\"}"));
    // The separate metrics listener needs no token.
    let (status, text) = send(&server.metrics_router(), "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(read(&text)["orrery_reducer_calls_total"] >= 4.0);

    let (status, v) = json_of(&router, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert!(v["tick"].as_u64().unwrap() > 0);
    server.metrics().set_storage_failed("disk full (test)");
    let (status, v) = json_of(&router, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"], "disk full (test)");
    server.shutdown().await.unwrap();
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

/// Over real sockets: /health on the control plane, /metrics on the metrics listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_socket_smoke() {
    let (server, _dir) = server(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let response = raw_get(server.http_addr, "/health").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
    let response = raw_get(server.metrics_addr.unwrap(), "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("orrery_ticks_total"), "{response}");
    let response = raw_get(server.http_addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    server.shutdown().await.unwrap();
}

/// Taken ports fall back to ports the OS chooses; with fallback off they are an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_ports_fall_back() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (http_port, udp_port) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let (server, _dir) = server(|c| {
        c.http_bind = http_port;
        c.udp_bind = udp_port;
    })
    .await;
    assert_ne!(server.http_addr, http_port);
    assert_ne!(server.udp_addr, udp_port);
    assert_eq!(server.public_addresses, vec![server.udp_addr]);
    server.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.http_bind = http_port;
    config.fallback_ports = false;
    let error = orrery_server::start(common::module(), config)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&http_port.to_string()),
        "{error}"
    );
}

/// `POST /v1/sql`: one-off reads under the subscription rules, as plain text or JSON with a
/// focus; every refusal is a 400 naming the problem, and reads count in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_obey_visibility_and_limits() {
    let (server, dir) = server(|c| c.max_sql_rows = 3).await;
    let router = server.router();
    let admin = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let (_, a) = new_identity(&router).await;
    let (_, b) = new_identity(&router).await;
    for body in [
        r#"[1, "one"]"#,
        r#"[5, "five"]"#,
        r#"[9, "nine"]"#,
        r#"[2, "two"]"#,
    ] {
        let (status, v) = json_of(&router, "POST", "/v1/call/note", Some(&a), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    for (token, body) in [(&a, "[10.0, 10.0]"), (&b, "[500.0, 500.0]")] {
        let (status, v) = json_of(&router, "POST", "/v1/call/walk", Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }

    let sql = |token: &str, body: &str| {
        let router = router.clone();
        let (token, body) = (token.to_owned(), body.to_owned());
        async move { json_of(&router, "POST", "/v1/sql", Some(&token), Some(&body)).await }
    };
    // Plain-text body; the reducers above committed before this read's tick ended.
    let (status, v) = sql(&b, "SELECT * FROM note WHERE level > 2 ORDER BY 1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = sql(&b, "  SELECT * FROM note WHERE level > 2 OR text = 'one'\n").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["table"], "note");
    assert!(v["tick"].as_u64().unwrap() > 0);
    let texts: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "five", "nine"], "ordered by primary key");

    // JSON body with a focus for `within`.
    let (status, v) = sql(
        &b,
        r#"{"sql": "SELECT * FROM mob WHERE within(pos, :focus, 50)", "focus": [0, 0]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["pos"], json!([10.0, 10.0]));
    let (status, v) = sql(
        &a,
        r#"{"sql": "SELECT * FROM mob WHERE within(pos, :focus, 50)", "focus": [490, 510, 0]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);

    // Refusals, each naming what is wrong.
    for (body, needle) in [
        ("SELECT * FROM mob WHERE within(pos, :focus, 50)", "focus"),
        ("SELECT * FROM presence", "presence"),
        ("SELECT * FROM nope", "nope"),
        ("DELETE FROM note", "DELETE"),
        ("SELECT * FROM note", "limit of 3"),
        ("", "empty"),
        (
            r#"{"sql": "SELECT * FROM note", "focus": [1, 2, 3, 4]}"#,
            "focus",
        ),
        (r#"{"sql": "SELECT * FROM note", "extra": 1}"#, "extra"),
    ] {
        let (status, v) = sql(&a, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let message = v["error"].as_str().unwrap();
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{body}: {message}"
        );
    }
    let (status, _) = send(&router, "POST", "/v1/sql", None, Some("SELECT * FROM note")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, text) = send(&router, "GET", "/metrics", Some(admin.trim()), None).await;
    let metrics = common::parse_metrics(&text);
    assert_eq!(metrics["orrery_sql_reads_total"], 12.0, "{text}");
    assert_eq!(metrics["orrery_sql_reads_refused_total"], 9.0, "{text}");
    server.shutdown().await.unwrap();
}

/// `orrery_client::http::ControlPlane` over a real socket: identity, a JSON call, one-off
/// reads (typed rows, focus) and a refused read carrying the server's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_control_plane_calls_and_reads() {
    use orrery_client::ClientError;
    use orrery_client::http::ControlPlane;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct NoteRow {
        id: u64,
        level: u32,
        text: String,
    }

    let (server, _dir) = server(|_| {}).await;
    let cp = ControlPlane::new(&format!("http://{}", server.http_addr)).unwrap();
    let me = cp.create_identity().await.unwrap();
    let first = cp
        .call(&me.token, "note", &json!([4, "four"]))
        .await
        .unwrap();
    let second = cp
        .call(&me.token, "note", &json!({"level": 1, "text": "one"}))
        .await
        .unwrap();
    assert!(second.tick > first.tick);
    match cp.call(&me.token, "fail", &json!(["no"])).await {
        Err(ClientError::Status {
            status, message, ..
        }) => assert_eq!((status, message.as_str()), (422, "no")),
        other => panic!("{other:?}"),
    }
    cp.call(&me.token, "walk", &json!([3.0, 4.0]))
        .await
        .unwrap();

    let read = cp
        .sql(&me.token, "SELECT * FROM note WHERE level >= 1", None)
        .await
        .unwrap();
    assert_eq!(read.table, "note");
    assert!(read.tick >= second.tick);
    let rows: Vec<NoteRow> = read.rows_as().unwrap();
    let levels: Vec<(u32, &str)> = rows.iter().map(|r| (r.level, r.text.as_str())).collect();
    assert_eq!(levels, [(4, "four"), (1, "one")]);
    assert!(rows[0].id < rows[1].id);

    let near = cp
        .sql(
            &me.token,
            "SELECT * FROM mob WHERE within(pos, :focus, 5)",
            Some([0.0, 0.0, 0.0]),
        )
        .await
        .unwrap();
    assert_eq!(near.rows.len(), 1, "(3, 4) is 5 from the origin");
    let far = cp
        .sql(
            &me.token,
            "SELECT * FROM mob WHERE within(pos, :focus, 4.9)",
            Some([0.0, 0.0, 0.0]),
        )
        .await
        .unwrap();
    assert!(far.rows.is_empty());
    match cp.sql(&me.token, "SELECT * FROM presence", None).await {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 400);
            assert!(message.contains("presence"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await.unwrap();
}
