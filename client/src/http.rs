//! The control plane over HTTP/1.1, as `http://` or, for anything but loopback, `https://`
//! (rustls; server certificates are checked against the Mozilla roots bundled by
//! `webpki-roots`, or against roots you give with [`ControlPlane::with_root_certificates_pem`]
//! for a private CA or a self-signed development certificate).
//!
//! | call | request | answer |
//! |---|---|---|
//! | [`ControlPlane::create_identity`] | `POST /v1/identity` (no body) | `{"identity": "<64 hex>", "token": "<opaque>"}` |
//! | [`ControlPlane::connect_token`] | `POST /v1/connect-token`, `Authorization: Bearer <token>` (no body) | `{"connect_token": "<base64>", "server_addresses": ["ip:port"], "identity": "<hex>", "client_id": <u64>}`; 401 `{"error": ..}` for a bad token |
//! | [`ControlPlane::schema`] | `GET /v1/schema` | the module schema JSON |
//! | [`ControlPlane::call`] | `POST /v1/call/{reducer}`, bearer, JSON arguments | `{"ok": true, "tick": n}` once durable; 422 when the reducer failed |
//! | [`ControlPlane::sql`] | `POST /v1/sql`, bearer, `{"sql": .., "focus": [..]}` | `{"table", "tick", "rows": [{column: value}]}` |
//!
//! Any non-2xx answer is [`ClientError::Status`] with the `error` field of a JSON body (or
//! the body text).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use orrery_row::ModuleSchema;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Most bytes of an answer's body read; a longer answer is an error, so a hostile or broken
/// server cannot make the client allocate without bound. SQL reads are the largest answers.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// `POST /v1/identity`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityResponse {
    /// The new identity, 64 hex characters.
    pub identity: String,
    /// The identity's token: keep it to connect as the same identity later.
    pub token: String,
}

/// `POST /v1/connect-token`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectTokenResponse {
    /// The netcode connect token, standard base64 with padding.
    pub connect_token: String,
    /// The UDP addresses in the token (informational; the token's own list is used).
    pub server_addresses: Vec<String>,
    /// The identity the token connects as, 64 hex characters.
    pub identity: String,
    /// The connection id the token carries.
    pub client_id: u64,
}

impl ConnectTokenResponse {
    /// The token's bytes (for `ClientSession::from_token_bytes`).
    pub fn token_bytes(&self) -> Result<Vec<u8>, ClientError> {
        base64::engine::general_purpose::STANDARD
            .decode(self.connect_token.trim())
            .map_err(|e| ClientError::TokenEncoding {
                len: self.connect_token.len(),
                error: e.to_string(),
            })
    }
}

/// `POST /v1/sql`'s answer: the rows the query selects for the caller, under the same
/// visibility rules as a subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SqlResponse {
    /// The table read.
    pub table: String,
    /// The tick sequence the rows are as of.
    pub tick: u64,
    /// One JSON object per row (column name → value), ordered by primary key.
    pub rows: Vec<serde_json::Value>,
}

impl SqlResponse {
    /// The rows as a Rust row type (the same JSON form as [`crate::Client::rows`]).
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, ClientError> {
        self.rows
            .iter()
            .map(|row| {
                T::deserialize(row).map_err(|e| ClientError::BadResponse {
                    url: "/v1/sql".to_owned(),
                    error: format!("row of {:?}: {e}", self.table),
                })
            })
            .collect()
    }
}

/// `POST /v1/call/{reducer}`'s answer when the reducer committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResponse {
    /// The tick sequence the call committed in (durable when answered).
    pub tick: u64,
}

/// A control-plane endpoint (see the module docs).
#[derive(Clone)]
pub struct ControlPlane {
    base: String,
    authority: String,
    host: String,
    port: u16,
    prefix: String,
    timeout: Duration,
    /// `Some` for `https://`: the TLS settings and the name the certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    // ring rather than aws-lc-rs: it builds without cmake in seconds. rustls deprecates it
    // for lacking post-quantum key exchange, which the control plane can do without.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS settings with the bundled public roots, built once per process.
fn public_roots_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            tls_config(roots).map_err(|e| e.to_string())
        })
        .clone()
}

impl ControlPlane {
    /// An endpoint at `base` (`http://host:port`, optionally with a path prefix), with a 10 s
    /// timeout per request.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = base
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("expected an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = if https {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| invalid(&format!("not a TLS server name: {e}")))?;
            Some((public_roots_config().map_err(|e| invalid(&e))?, name))
        } else {
            None
        };
        Ok(ControlPlane {
            base: base.trim_end_matches('/').to_owned(),
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(10),
            tls,
        })
    }

    /// For `https://`: trust only the certificates in `pem` (one or more PEM `CERTIFICATE`
    /// blocks: a private CA, or a self-signed development certificate) instead of the public
    /// roots. Ignored for `http://`.
    pub fn with_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidCertificate { reason };
        let Some((_, name)) = self.tls.take() else {
            return Ok(self);
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| invalid(format!("bad PEM: {e}")))?;
            roots
                .add(certificate)
                .map_err(|e| invalid(format!("unusable certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid("no CERTIFICATE block in the PEM text".to_owned()));
        }
        let config = tls_config(roots).map_err(|e| invalid(e.to_string()))?;
        self.tls = Some((config, name));
        Ok(self)
    }

    /// Whether requests go over TLS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The same endpoint with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/identity`: a new identity and its token.
    pub async fn create_identity(&self) -> Result<IdentityResponse, ClientError> {
        self.json(Method::POST, "/v1/identity", None).await
    }

    /// `POST /v1/connect-token` with the identity's token as bearer: a connect token for the
    /// UDP server.
    pub async fn connect_token(&self, token: &str) -> Result<ConnectTokenResponse, ClientError> {
        self.json(Method::POST, "/v1/connect-token", Some(token))
            .await
    }

    /// `GET /v1/schema`: the module schema.
    pub async fn schema(&self) -> Result<ModuleSchema, ClientError> {
        self.json(Method::GET, "/v1/schema", None).await
    }

    /// `POST /v1/call/{reducer}` with the identity's token: runs `reducer` with JSON
    /// arguments (an array in parameter order, or an object by name) without a UDP
    /// connection. A failing reducer is [`ClientError::Status`] 422 with its message.
    pub async fn call(
        &self,
        token: &str,
        reducer: &str,
        args: &serde_json::Value,
    ) -> Result<CallResponse, ClientError> {
        let body = serde_json::to_vec(args).map_err(|e| ClientError::BadResponse {
            url: format!("{}/v1/call/{reducer}", self.base),
            error: format!("arguments do not serialize: {e}"),
        })?;
        self.json_with_body(
            Method::POST,
            &format!("/v1/call/{reducer}"),
            Some(token),
            Some(Bytes::from(body)),
        )
        .await
    }

    /// `POST /v1/sql` with the identity's token: a one-off read of `sql` (the subscription
    /// subset); `focus` is the point `:focus` stands for in `within(..)`.
    pub async fn sql(
        &self,
        token: &str,
        sql: &str,
        focus: Option<[f32; 3]>,
    ) -> Result<SqlResponse, ClientError> {
        let body = match focus {
            Some(f) => serde_json::json!({"sql": sql, "focus": f}),
            None => serde_json::json!({ "sql": sql }),
        };
        let body = Bytes::from(body.to_string());
        self.json_with_body(Method::POST, "/v1/sql", Some(token), Some(body))
            .await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        self.json_with_body(method, path, bearer, None).await
    }

    async fn json_with_body<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let body = self.request_ok(method, path, bearer, json_body).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
            url,
            error: e.to_string(),
        })
    }

    /// `GET {path}` (with a bearer token if given): the body of a 2xx answer as text. For the
    /// plain-text endpoints: `/metrics` (parse it with [`crate::metrics::Exposition`]) and
    /// `/health`.
    pub async fn get_text(&self, path: &str, bearer: Option<&str>) -> Result<String, ClientError> {
        let body = self.request_ok(Method::GET, path, bearer, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ClientError::BadResponse {
            url: format!("{}{path}", self.base),
            error: e.to_string(),
        })
    }

    /// One request whose answer must be 2xx; else [`ClientError::Status`] with the JSON
    /// `error` field or the start of the body.
    async fn request_ok(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<Bytes>,
    ) -> Result<Bytes, ClientError> {
        let method_name = method_name(&method);
        let (status, body) = self.request(method, path, bearer, json_body).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(512).collect());
            return Err(ClientError::Status {
                method: method_name,
                url: format!("{}{path}", self.base),
                status,
                message,
            });
        }
        Ok(body)
    }

    /// One request on a fresh connection; returns the status and the body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<Bytes>,
    ) -> Result<(u16, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let method_name = method_name(&method);
        let http_error = |error: String| ClientError::Http {
            method: method_name,
            url: url.clone(),
            error,
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| http_error(format!("connect: {e}")))?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                Some((config, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| http_error(format!("TLS: {e}")))?;
                    self.exchange(stream, method, path, bearer, json_body, &http_error)
                        .await
                }
                None => {
                    self.exchange(stream, method, path, bearer, json_body, &http_error)
                        .await
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: format!("{method_name} {url}"),
                after: self.timeout,
            }),
        }
    }

    /// One request and its answer over an open connection.
    async fn exchange<Io>(
        &self,
        stream: Io,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<Bytes>,
        http_error: &impl Fn(String) -> ClientError,
    ) -> Result<(u16, Bytes), ClientError>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http_error(format!("handshake: {e}")))?;
            let driver = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "control-plane connection ended");
                }
            });
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.prefix))
                .header(hyper::header::HOST, &self.authority)
                .header(hyper::header::ACCEPT, "application/json");
            request = match &json_body {
                Some(body) => request
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header(hyper::header::CONTENT_LENGTH, body.len()),
                None => request.header(hyper::header::CONTENT_LENGTH, "0"),
            };
            if let Some(token) = bearer {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Full::new(json_body.unwrap_or_default()))
                .map_err(|e| http_error(format!("request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http_error(format!("request: {e}")))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| http_error(format!("body: {e}")))?
                .to_bytes();
            driver.abort();
            Ok((status, body))
        }
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let cp = ControlPlane::new("http://127.0.0.1:3000/").unwrap();
        assert_eq!(
            (cp.host.as_str(), cp.port, cp.prefix.as_str()),
            ("127.0.0.1", 3000, "")
        );
        let cp = ControlPlane::new("http://[::1]:8080/game").unwrap();
        assert_eq!(
            (cp.host.as_str(), cp.port, cp.prefix.as_str()),
            ("::1", 8080, "/game")
        );
        assert_eq!(ControlPlane::new("http://localhost").unwrap().port, 80);
        let secure = ControlPlane::new("https://example.org").unwrap();
        assert!(secure.is_https());
        assert_eq!(secure.port, 443);
        assert!(!cp.is_https());
        assert!(matches!(
            ControlPlane::new("ftp://example.org"),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            ControlPlane::new("https://example.org")
                .unwrap()
                .with_root_certificates_pem(b"not pem"),
            Err(ClientError::InvalidCertificate { .. })
        ));
        assert!(matches!(
            ControlPlane::new("not a url"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn decodes_padded_base64_tokens() {
        let r = ConnectTokenResponse {
            connect_token: "AAEC".into(),
            server_addresses: vec![],
            identity: String::new(),
            client_id: 1,
        };
        assert_eq!(r.token_bytes().unwrap(), [0, 1, 2]);
        let bad = ConnectTokenResponse {
            connect_token: "!!".into(),
            ..r
        };
        assert!(matches!(
            bad.token_bytes(),
            Err(ClientError::TokenEncoding { len: 2, .. })
        ));
    }
}
