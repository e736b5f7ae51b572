//! Identities, bearer tokens and the admin token.
//!
//! A bearer token says "this holder is identity X until time T". It is
//! `base64url(version 1 | identity (32) | issued at (u64 LE, s) | expires at (u64 LE, s) |
//! HMAC-SHA256 tag (32))` under a 32-byte server secret kept in `<data dir>/server-secret`
//! (generated at first start, mode 0600). Nothing in it is secret, only unforgeable; anyone
//! holding it can act as the identity, so clients must keep it private.
//!
//! The admin token is 32 random bytes in hex in `<data dir>/admin-token` (mode 0600, written at
//! first start); admin endpoints require `Authorization: Bearer <admin token>`.

use orrery_engine::Identity;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::error::ServerError;

const TOKEN_VERSION: u8 = 1;
const TAG_BYTES: usize = 32;
const BODY_BYTES: usize = 1 + 32 + 8 + 8;
const TOKEN_BYTES: usize = BODY_BYTES + TAG_BYTES;

/// File names in the data directory.
pub const SECRET_FILE: &str = "server-secret";
/// The admin token's file name in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer ..` header.
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    /// Not a token of this server's format.
    #[error("malformed bearer token: {0}")]
    Malformed(String),
    /// The tag does not match: issued by another server or altered.
    #[error("bearer token is forged or from another server")]
    Forged,
    /// The token's lifetime is over.
    #[error("bearer token expired at {expired_at} (now {now}, seconds since the Unix epoch)")]
    Expired {
        /// Expiry, seconds since the Unix epoch.
        expired_at: u64,
        /// The server's time.
        now: u64,
    },
    /// Not the admin token.
    #[error("admin token required")]
    NotAdmin,
}

/// What a valid bearer token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerClaims {
    /// The holder's identity.
    pub identity: Identity,
    /// Issue time, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// The server's secrets: the bearer-token key and the admin token.
pub struct Secrets {
    key: hmac::Key,
    zone_peer: Identity,
    admin_token: String,
    admin_token_path: PathBuf,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin_token_path", &self.admin_token_path)
            .finish_non_exhaustive()
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Random(e.to_string()))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Reads `path`, or creates it with `make()` (mode 0600, never overwriting a file another
/// process created meanwhile).
fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, ServerError> {
    let io = |op, source| ServerError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    let text = make();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write as _;
            file.write_all(format!("{text}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io("writing", e))?;
            tracing::info!(path = %path.display(), "created secret file");
            Ok(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| io("reading", e)),
        Err(e) => Err(io("creating", e)),
    }
}

impl Secrets {
    /// Loads the secrets from `data_dir`, creating the directory and the files at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, ServerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ServerError::Io {
            op: "creating",
            path: data_dir.to_owned(),
            source,
        })?;
        let secret_path = data_dir.join(SECRET_FILE);
        let fresh_secret = random_bytes::<32>()?;
        let secret_hex = read_or_create(&secret_path, || hex(&fresh_secret))?;
        let secret = unhex(&secret_hex)
            .filter(|s| s.len() == 32)
            .ok_or_else(|| ServerError::BadSecret {
                path: secret_path.clone(),
                reason: format!(
                    "expected 64 hex characters, found {} characters",
                    secret_hex.len()
                ),
            })?;
        let admin_token_path = data_dir.join(ADMIN_TOKEN_FILE);
        let fresh_admin = random_bytes::<32>()?;
        let admin_token = read_or_create(&admin_token_path, || hex(&fresh_admin))?;
        if admin_token.len() < 32 {
            return Err(ServerError::BadSecret {
                path: admin_token_path,
                reason: format!(
                    "an admin token needs at least 32 characters, found {}",
                    admin_token.len()
                ),
            });
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let tag = hmac::sign(&key, b"orrery zone peer v1");
        let mut zone_peer = [0u8; 32];
        zone_peer.copy_from_slice(&tag.as_ref()[..32]);
        Ok(Secrets {
            key,
            zone_peer: Identity(zone_peer),
            admin_token,
            admin_token_path,
        })
    }

    /// Where the admin token is stored.
    pub fn admin_token_path(&self) -> &Path {
        &self.admin_token_path
    }

    /// The admin token (for the binary's own tooling and tests).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Issues a bearer token for `identity` at `now` (since the Unix epoch), valid `lifetime`.
    pub fn issue(&self, identity: &Identity, now: Duration, lifetime: Duration) -> String {
        let issued_at = now.as_secs();
        let expires_at = issued_at.saturating_add(lifetime.as_secs().max(1));
        let mut bytes = Vec::with_capacity(TOKEN_BYTES);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(identity.as_bytes());
        bytes.extend_from_slice(&issued_at.to_le_bytes());
        bytes.extend_from_slice(&expires_at.to_le_bytes());
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks a bearer token at `now`: authentic and not expired.
    pub fn verify(&self, token: &str, now: Duration) -> Result<BearerClaims, AuthError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|e| AuthError::Malformed(format!("not base64url: {e}")))?;
        if bytes.len() != TOKEN_BYTES {
            return Err(AuthError::Malformed(format!(
                "{} bytes, a token has {TOKEN_BYTES}",
                bytes.len()
            )));
        }
        if bytes[0] != TOKEN_VERSION {
            return Err(AuthError::Malformed(format!(
                "version {}, expected {TOKEN_VERSION}",
                bytes[0]
            )));
        }
        let (body, tag) = bytes.split_at(BODY_BYTES);
        hmac::verify(&self.key, body, tag).map_err(|_| AuthError::Forged)?;
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&body[1..33]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let claims = BearerClaims {
            identity: Identity(identity),
            issued_at: u64_at(33),
            expires_at: u64_at(41),
        };
        let now = now.as_secs();
        if now >= claims.expires_at {
            return Err(AuthError::Expired {
                expired_at: claims.expires_at,
                now,
            });
        }
        Ok(claims)
    }

    /// The identity zone processes act as towards each other (handoffs, `docs/zones.md`).
    /// It is derived from the token key, so every process sharing the key agrees on it, and
    /// nobody holds a bearer token for it without the key.
    /// The zones' relays are trusted peers: the control plane does not rate-limit it.
    pub fn zone_peer(&self) -> Identity {
        self.zone_peer
    }

    /// Whether `token` is the admin token (constant-time comparison).
    pub fn is_admin(&self, token: &str) -> bool {
        let (a, b) = (token.trim().as_bytes(), self.admin_token.as_bytes());
        // Compare MACs of both so the time does not depend on where they first differ.
        let ta = hmac::sign(&self.key, a);
        hmac::verify(&self.key, b, ta.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_forgery() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        let now = Duration::from_secs(1_000_000);
        let t = s.issue(&Identity([7; 32]), now, Duration::from_secs(60));
        let c = s.verify(&t, now).unwrap();
        assert_eq!(c.identity, Identity([7; 32]));
        assert_eq!(c.expires_at, 1_000_060);
        assert!(matches!(
            s.verify(&t, now + Duration::from_secs(60)),
            Err(AuthError::Expired { .. })
        ));
        // Flip one bit of the identity: forged.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[5] ^= 1;
        assert_eq!(
            s.verify(&URL_SAFE_NO_PAD.encode(&raw), now),
            Err(AuthError::Forged)
        );
        assert!(matches!(s.verify("abc", now), Err(AuthError::Malformed(_))));
        // Another server's secret: forged.
        let other = tempfile::tempdir().unwrap();
        let s2 = Secrets::load_or_create(other.path()).unwrap();
        assert_eq!(s2.verify(&t, now), Err(AuthError::Forged));
        // The same directory gives the same secrets.
        let again = Secrets::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t, now).is_ok());
        assert!(again.is_admin(s.admin_token()));
        assert!(!again.is_admin("nope"));
        // Zones sharing the secret agree on the peer identity; another secret's differs.
        assert_eq!(again.zone_peer(), s.zone_peer());
        assert_ne!(s2.zone_peer(), s.zone_peer());
        assert_ne!(s.zone_peer(), Identity::ZERO);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(s.admin_token_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
