//! Connect tokens: issued by the control plane, presented by a client to the UDP server.
//!
//! A token is netcode 1.02's: a public part the client reads (server addresses, the two
//! session keys, timestamps, timeout) and a private part only the server can read, encrypted
//! with XChaCha20-Poly1305 under the server's [`PrivateKey`] with the protocol id and the
//! expiry as additional data. The private part holds the client id, the session keys, the
//! server addresses the token is valid for, and 256 bytes of user data, of which Orrery uses
//! the first 32 for the client's identity. So a token is encrypted, expiring, bound to the
//! server's addresses and protocol id, and (server side) usable once.
//!
//! The byte layout of [`ConnectToken::to_bytes`] is `renetcode` 2.0's `ConnectToken::write`.

use orrery_row::{ConnectionId, Identity};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::error::TokenError;
use crate::packet::{
    KEY_BYTES, MAC_BYTES, PRIVATE_TOKEN_BYTES, USER_DATA_BYTES, VERSION_INFO, XNONCE_BYTES, open_x,
    random_bytes, seal_x,
};

const ADDRESS_IPV4: u8 = 1;
const ADDRESS_IPV6: u8 = 2;
const MAX_SERVER_ADDRESSES: usize = 32;

/// Bytes of identity placed at the start of the token's user data.
pub const IDENTITY_BYTES: usize = 32;

/// The server's secret key for connect tokens. Shared by the control plane (which issues
/// tokens) and the UDP server (which reads them); never sent to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_BYTES]);

impl PrivateKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, TokenError> {
        random_bytes()
            .map(Self)
            .map_err(|e| TokenError::Random(e.to_string()))
    }

    /// A key from its bytes (e.g. loaded from configuration).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// A connect token as handed to a client (serialize with [`ConnectToken::to_bytes`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// The connection's id (unique among live connections; the server refuses duplicates).
    pub client_id: u64,
    /// Protocol id the server checks.
    pub protocol_id: u64,
    /// Issue time, seconds since the Unix epoch.
    pub create_timestamp: u64,
    /// Expiry, seconds since the Unix epoch; the server refuses the token from then on.
    pub expire_timestamp: u64,
    /// Nonce of the private part.
    pub xnonce: [u8; XNONCE_BYTES],
    /// The encrypted private part.
    pub private_data: Box<[u8; PRIVATE_TOKEN_BYTES]>,
    /// Seconds without traffic before either side drops the connection (negative: never).
    pub timeout_seconds: i32,
    /// Server addresses to try, in order.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for client → server packets.
    pub client_to_server_key: [u8; KEY_BYTES],
    /// Key for server → client packets.
    pub server_to_client_key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectToken")
            .field("client_id", &self.client_id)
            .field("protocol_id", &self.protocol_id)
            .field("create_timestamp", &self.create_timestamp)
            .field("expire_timestamp", &self.expire_timestamp)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("server_addresses", &self.server_addresses)
            .finish_non_exhaustive()
    }
}

impl ConnectToken {
    /// Serializes the token (about 1.2 KB) for the control plane's HTTP answer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1300);
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(VERSION_INFO);
        out.extend_from_slice(&self.protocol_id.to_le_bytes());
        out.extend_from_slice(&self.create_timestamp.to_le_bytes());
        out.extend_from_slice(&self.expire_timestamp.to_le_bytes());
        out.extend_from_slice(&self.xnonce);
        out.extend_from_slice(&self.private_data[..]);
        out.extend_from_slice(&self.timeout_seconds.to_le_bytes());
        write_addresses(&mut out, &self.server_addresses);
        out.extend_from_slice(&self.client_to_server_key);
        out.extend_from_slice(&self.server_to_client_key);
        out
    }

    /// Parses a token from [`ConnectToken::to_bytes`]. Never panics on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(bytes);
        let client_id = r.u64()?;
        let version: [u8; 13] = r.array()?;
        if &version != VERSION_INFO {
            return Err(TokenError::Version(version.to_vec()));
        }
        let protocol_id = r.u64()?;
        let create_timestamp = r.u64()?;
        let expire_timestamp = r.u64()?;
        let xnonce = r.array()?;
        let private_data = Box::new(r.array()?);
        let timeout_seconds = r.u32()? as i32;
        let server_addresses = read_addresses(&mut r)?;
        let client_to_server_key = r.array()?;
        let server_to_client_key = r.array()?;
        if expire_timestamp <= create_timestamp {
            return Err(TokenError::Timestamps {
                create: create_timestamp,
                expire: expire_timestamp,
            });
        }
        Ok(Self {
            client_id,
            protocol_id,
            create_timestamp,
            expire_timestamp,
            xnonce,
            private_data,
            timeout_seconds,
            server_addresses,
            client_to_server_key,
            server_to_client_key,
        })
    }
}

/// Issues connect tokens for one server (the control plane owns one).
#[derive(Debug, Clone)]
pub struct ConnectTokenIssuer {
    /// The server's key.
    pub private_key: PrivateKey,
    /// The server's protocol id.
    pub protocol_id: u64,
    /// The server's public UDP addresses (what clients send to); at most 32.
    pub server_addresses: Vec<SocketAddr>,
    /// How long a token stays valid for connecting (rounded to whole seconds, at least 1).
    pub expire_after: Duration,
    /// Connection timeout put in the token: silence for this long drops the connection.
    pub timeout: Duration,
}

impl ConnectTokenIssuer {
    /// An issuer with 30 s token lifetime and 10 s connection timeout.
    pub fn new(
        private_key: PrivateKey,
        protocol_id: u64,
        server_addresses: Vec<SocketAddr>,
    ) -> Self {
        Self {
            private_key,
            protocol_id,
            server_addresses,
            expire_after: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }

    /// Issues a token for `identity` as connection `connection` at `now` (time since the Unix
    /// epoch). Connection ids must be unique among live connections; a counter or a random u64
    /// does.
    pub fn issue(
        &self,
        identity: &Identity,
        connection: ConnectionId,
        now: Duration,
    ) -> Result<ConnectToken, TokenError> {
        let client_id = connection.0;
        let n = self.server_addresses.len();
        if n == 0 || n > MAX_SERVER_ADDRESSES {
            return Err(TokenError::ServerAddressCount(n));
        }
        let timeout_seconds = i32::try_from(self.timeout.as_secs())
            .map_err(|_| TokenError::Timeout(self.timeout.as_secs()))?;
        let random = |e: getrandom::Error| TokenError::Random(e.to_string());
        let client_to_server_key: [u8; KEY_BYTES] = random_bytes().map_err(random)?;
        let server_to_client_key: [u8; KEY_BYTES] = random_bytes().map_err(random)?;
        let xnonce: [u8; XNONCE_BYTES] = random_bytes().map_err(random)?;
        let create_timestamp = now.as_secs();
        let expire_timestamp = create_timestamp + self.expire_after.as_secs().max(1);

        let mut user_data = [0u8; USER_DATA_BYTES];
        user_data[..IDENTITY_BYTES].copy_from_slice(identity.as_bytes());
        let private = PrivateToken {
            client_id,
            timeout_seconds,
            server_addresses: self.server_addresses.clone(),
            client_to_server_key,
            server_to_client_key,
            user_data,
        };
        let mut private_data = Box::new([0u8; PRIVATE_TOKEN_BYTES]);
        let mut plain = Vec::with_capacity(PRIVATE_TOKEN_BYTES);
        private.write(&mut plain);
        private_data[..plain.len()].copy_from_slice(&plain);
        let aad = token_aad(self.protocol_id, expire_timestamp);
        seal_x(
            &mut private_data[..],
            &xnonce,
            self.private_key.as_bytes(),
            &aad,
        )
        .map_err(|_| TokenError::Crypto)?;
        Ok(ConnectToken {
            client_id,
            protocol_id: self.protocol_id,
            create_timestamp,
            expire_timestamp,
            xnonce,
            private_data,
            timeout_seconds,
            server_addresses: self.server_addresses.clone(),
            client_to_server_key,
            server_to_client_key,
        })
    }
}

/// The decrypted private part of a token (server side).
#[derive(Debug)]
pub(crate) struct PrivateToken {
    pub client_id: u64,
    pub timeout_seconds: i32,
    pub server_addresses: Vec<SocketAddr>,
    pub client_to_server_key: [u8; KEY_BYTES],
    pub server_to_client_key: [u8; KEY_BYTES],
    pub user_data: [u8; USER_DATA_BYTES],
}

/// Why a private token did not open.
pub(crate) enum OpenError {
    Forged,
    Malformed(TokenError),
}

impl PrivateToken {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.timeout_seconds.to_le_bytes());
        write_addresses(out, &self.server_addresses);
        out.extend_from_slice(&self.client_to_server_key);
        out.extend_from_slice(&self.server_to_client_key);
        out.extend_from_slice(&self.user_data);
    }

    /// Decrypts and parses a token's private part.
    pub(crate) fn open(
        data: &[u8; PRIVATE_TOKEN_BYTES],
        protocol_id: u64,
        expire_timestamp: u64,
        xnonce: &[u8; XNONCE_BYTES],
        key: &PrivateKey,
    ) -> Result<Self, OpenError> {
        let mut plain = *data;
        let aad = token_aad(protocol_id, expire_timestamp);
        open_x(&mut plain[..], xnonce, key.as_bytes(), &aad).map_err(|_| OpenError::Forged)?;
        let mut r = Reader::new(&plain[..PRIVATE_TOKEN_BYTES - MAC_BYTES]);
        let parse = |r: &mut Reader<'_>| -> Result<Self, TokenError> {
            Ok(Self {
                client_id: r.u64()?,
                timeout_seconds: r.u32()? as i32,
                server_addresses: read_addresses(r)?,
                client_to_server_key: r.array()?,
                server_to_client_key: r.array()?,
                user_data: r.array()?,
            })
        };
        parse(&mut r).map_err(OpenError::Malformed)
    }

    /// The identity in the user data.
    #[cfg(test)]
    pub(crate) fn identity(&self) -> [u8; IDENTITY_BYTES] {
        identity_of(&self.user_data)
    }
}

/// The identity stored in a token's user data.
pub(crate) fn identity_of(user_data: &[u8; USER_DATA_BYTES]) -> [u8; IDENTITY_BYTES] {
    let mut id = [0u8; IDENTITY_BYTES];
    id.copy_from_slice(&user_data[..IDENTITY_BYTES]);
    id
}

fn token_aad(protocol_id: u64, expire_timestamp: u64) -> [u8; 29] {
    let mut aad = [0u8; 29];
    aad[..13].copy_from_slice(VERSION_INFO);
    aad[13..21].copy_from_slice(&protocol_id.to_le_bytes());
    aad[21..].copy_from_slice(&expire_timestamp.to_le_bytes());
    aad
}

fn write_addresses(out: &mut Vec<u8>, addresses: &[SocketAddr]) {
    out.extend_from_slice(&(addresses.len() as u32).to_le_bytes());
    for a in addresses {
        match a.ip() {
            IpAddr::V4(ip) => {
                out.push(ADDRESS_IPV4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(ADDRESS_IPV6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&a.port().to_le_bytes());
    }
}

fn read_addresses(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, TokenError> {
    let n = r.u32()? as usize;
    if n == 0 || n > MAX_SERVER_ADDRESSES {
        return Err(TokenError::ServerAddressCount(n));
    }
    let mut out = Vec::with_capacity(n);
    for index in 0..n {
        let kind = r.u8()?;
        let ip = match kind {
            ADDRESS_IPV4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            ADDRESS_IPV6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            _ => return Err(TokenError::AddressType { index, kind }),
        };
        let port = u16::from_le_bytes(r.array()?);
        out.push(SocketAddr::new(ip, port));
    }
    Ok(out)
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let end = self.pos + N;
        let slice = self.bytes.get(self.pos..end).ok_or(TokenError::Truncated {
            len: self.bytes.len(),
            needed: end,
        })?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, TokenError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> ConnectTokenIssuer {
        ConnectTokenIssuer::new(
            PrivateKey::from_bytes([7; 32]),
            42,
            vec!["127.0.0.1:4000".parse().unwrap()],
        )
    }

    #[test]
    fn token_round_trips_and_opens() {
        let token = issuer()
            .issue(
                &Identity([9; 32]),
                ConnectionId(5),
                Duration::from_secs(1_000),
            )
            .unwrap();
        let bytes = token.to_bytes();
        let back = ConnectToken::from_bytes(&bytes).unwrap();
        assert_eq!(back, token);
        let private = PrivateToken::open(
            &back.private_data,
            42,
            back.expire_timestamp,
            &back.xnonce,
            &issuer().private_key,
        )
        .ok()
        .unwrap();
        assert_eq!(private.client_id, 5);
        assert_eq!(private.identity(), [9; 32]);
        assert_eq!(private.client_to_server_key, token.client_to_server_key);
        // Wrong key, protocol id or expiry: forged.
        let other = PrivateKey::from_bytes([8; 32]);
        assert!(matches!(
            PrivateToken::open(
                &back.private_data,
                42,
                back.expire_timestamp,
                &back.xnonce,
                &other
            ),
            Err(OpenError::Forged)
        ));
        assert!(matches!(
            PrivateToken::open(
                &back.private_data,
                42,
                back.expire_timestamp + 1,
                &back.xnonce,
                &issuer().private_key
            ),
            Err(OpenError::Forged)
        ));
    }

    #[test]
    fn truncated_tokens_are_errors() {
        let bytes = issuer()
            .issue(&Identity([1; 32]), ConnectionId(1), Duration::from_secs(10))
            .unwrap()
            .to_bytes();
        for len in 0..bytes.len() {
            assert!(
                ConnectToken::from_bytes(&bytes[..len]).is_err(),
                "len {len}"
            );
        }
    }
}
