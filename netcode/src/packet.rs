//! Netcode 1.02 packets: framing, AEAD encryption, challenge tokens and replay protection.
//!
//! The byte layout is the one of the netcode 1.02 standard as implemented by `renetcode` 2.0
//! (a test checks that a `renetcode` client can connect to our server), but every decoder here
//! is total: any byte string yields a value or a [`PacketError`], never a panic. (`renetcode`
//! 2.0.0 indexes an 8-byte array with the sequence length taken from the packet's prefix byte,
//! so one spoofed 18-byte datagram from a connected client's address panics its server.)
//!
//! Packet = `prefix` (low nibble: type, high nibble: bytes of sequence) `sequence`
//! (little-endian, 0..=8 bytes) `body` `MAC` (16 bytes). The body of every packet but the
//! connection request is encrypted with ChaCha20-Poly1305 (nonce = 4 zero bytes + sequence,
//! additional data = version info + protocol id + prefix byte). A connection request is
//! sent in the clear and carries the connect token's private part, itself encrypted with
//! XChaCha20-Poly1305 under the server's private key.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// "NETCODE 1.02" with a NUL terminator.
pub(crate) const VERSION_INFO: &[u8; 13] = b"NETCODE 1.02\0";
/// Bytes of every symmetric key.
pub(crate) const KEY_BYTES: usize = 32;
/// Bytes of a Poly1305 tag.
pub(crate) const MAC_BYTES: usize = 16;
/// Bytes of user data carried in a connect token.
pub(crate) const USER_DATA_BYTES: usize = 256;
/// Bytes of an encrypted challenge token.
pub(crate) const CHALLENGE_TOKEN_BYTES: usize = 300;
/// Bytes of the encrypted private part of a connect token.
pub(crate) const PRIVATE_TOKEN_BYTES: usize = 1024;
/// Bytes of the XChaCha20 nonce of a connect token.
pub(crate) const XNONCE_BYTES: usize = 24;
/// Largest datagram either side accepts or sends.
pub(crate) const MAX_PACKET_BYTES: usize = 1400;
/// Largest payload carried in one payload packet.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1300;
/// Exact size of a connection request packet.
pub(crate) const CONNECTION_REQUEST_BYTES: usize =
    1 + 13 + 8 + 8 + XNONCE_BYTES + PRIVATE_TOKEN_BYTES;

/// Packet types of netcode 1.02.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request = 0,
    Denied = 1,
    Challenge = 2,
    Response = 3,
    KeepAlive = 4,
    Payload = 5,
    Disconnect = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Kind::Request,
            1 => Kind::Denied,
            2 => Kind::Challenge,
            3 => Kind::Response,
            4 => Kind::KeepAlive,
            5 => Kind::Payload,
            6 => Kind::Disconnect,
            _ => return None,
        })
    }

    /// Packets that may only be accepted once per sequence number.
    fn replay_protected(self) -> bool {
        matches!(self, Kind::KeepAlive | Kind::Payload | Kind::Disconnect)
    }
}

/// Why a datagram was not a valid packet. Counted by the sessions, never surfaced per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    #[error("datagram of {0} bytes is outside the valid packet sizes")]
    Size(usize),
    #[error("unknown packet type {0}")]
    Type(u8),
    #[error("sequence length {0} is over 8 bytes")]
    SequenceLength(usize),
    #[error("body of {len} bytes is invalid for a {kind:?} packet")]
    Body { kind: Kind, len: usize },
    #[error("authentication failed (wrong key, wrong protocol id or tampered bytes)")]
    Crypto,
    #[error("sequence {0} was already received")]
    Replayed(u64),
    #[error("connection request with version info other than NETCODE 1.02")]
    Version,
    #[error("packet type {0:?} was not expected here")]
    Unexpected(Kind),
}

/// A decoded packet. Bodies borrow from the (decrypted) datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    Denied,
    Challenge {
        token_sequence: u64,
        token: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    Response {
        token_sequence: u64,
        token: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    KeepAlive {
        client_index: u32,
        max_clients: u32,
    },
    Payload(&'a [u8]),
    Disconnect,
}

/// The cleartext fields of a connection request (private token data still encrypted).
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub protocol_id: u64,
    pub expire_timestamp: u64,
    pub xnonce: &'a [u8; XNONCE_BYTES],
    pub private: &'a [u8; PRIVATE_TOKEN_BYTES],
}

/// Returns the packet type of a datagram without validating the rest.
pub(crate) fn kind_of(bytes: &[u8]) -> Result<Kind, PacketError> {
    let prefix = *bytes.first().ok_or(PacketError::Size(0))?;
    Kind::from_u8(prefix & 0x0f).ok_or(PacketError::Type(prefix & 0x0f))
}

/// Decodes a connection request. Only its size, type and version are checked here.
pub(crate) fn decode_request(bytes: &[u8]) -> Result<Request<'_>, PacketError> {
    if bytes.len() != CONNECTION_REQUEST_BYTES {
        return Err(PacketError::Size(bytes.len()));
    }
    if kind_of(bytes)? != Kind::Request {
        return Err(PacketError::Unexpected(kind_of(bytes)?));
    }
    if &bytes[1..14] != VERSION_INFO {
        return Err(PacketError::Version);
    }
    let protocol_id = u64_at(bytes, 14);
    let expire_timestamp = u64_at(bytes, 22);
    let size = PacketError::Size(bytes.len());
    let xnonce = array_at::<XNONCE_BYTES>(bytes, 30).ok_or(size)?;
    let private = array_at::<PRIVATE_TOKEN_BYTES>(bytes, 30 + XNONCE_BYTES).ok_or(size)?;
    Ok(Request {
        protocol_id,
        expire_timestamp,
        xnonce,
        private,
    })
}

/// Writes a connection request for a token's public fields into `out` (cleared first).
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    protocol_id: u64,
    expire_timestamp: u64,
    xnonce: &[u8; XNONCE_BYTES],
    private: &[u8; PRIVATE_TOKEN_BYTES],
) {
    out.clear();
    out.push(Kind::Request as u8);
    out.extend_from_slice(VERSION_INFO);
    out.extend_from_slice(&protocol_id.to_le_bytes());
    out.extend_from_slice(&expire_timestamp.to_le_bytes());
    out.extend_from_slice(xnonce);
    out.extend_from_slice(private);
}

/// Encodes and encrypts a packet other than a connection request into `out` (cleared first).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    packet: &Packet<'_>,
    sequence: u64,
    protocol_id: u64,
    key: &[u8; KEY_BYTES],
) -> Result<(), PacketError> {
    let kind = match packet {
        Packet::Denied => Kind::Denied,
        Packet::Challenge { .. } => Kind::Challenge,
        Packet::Response { .. } => Kind::Response,
        Packet::KeepAlive { .. } => Kind::KeepAlive,
        Packet::Payload(p) => {
            if p.is_empty() || p.len() > MAX_PAYLOAD_BYTES {
                return Err(PacketError::Body {
                    kind: Kind::Payload,
                    len: p.len(),
                });
            }
            Kind::Payload
        }
        Packet::Disconnect => Kind::Disconnect,
    };
    let seq_len = sequence_bytes(sequence);
    let prefix = kind as u8 | ((seq_len as u8) << 4);
    out.clear();
    out.push(prefix);
    out.extend_from_slice(&sequence.to_le_bytes()[..seq_len]);
    let start = out.len();
    match packet {
        Packet::Challenge {
            token_sequence,
            token,
        }
        | Packet::Response {
            token_sequence,
            token,
        } => {
            out.extend_from_slice(&token_sequence.to_le_bytes());
            out.extend_from_slice(&token[..]);
        }
        Packet::KeepAlive {
            client_index,
            max_clients,
        } => {
            out.extend_from_slice(&client_index.to_le_bytes());
            out.extend_from_slice(&max_clients.to_le_bytes());
        }
        Packet::Payload(p) => out.extend_from_slice(p),
        Packet::Denied | Packet::Disconnect => {}
    }
    let aad = additional_data(prefix, protocol_id);
    let tag = seal(key, sequence, &aad, &mut out[start..])?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Decrypts and decodes a packet in place. With `replay`, keep-alive, payload and disconnect
/// packets whose sequence was seen before are refused, and the sequence is recorded once the
/// packet authenticated.
pub(crate) fn decode<'a>(
    bytes: &'a mut [u8],
    protocol_id: u64,
    key: &[u8; KEY_BYTES],
    replay: Option<&mut ReplayProtection>,
) -> Result<(u64, Packet<'a>), PacketError> {
    let len = bytes.len();
    if !(1 + MAC_BYTES..=MAX_PACKET_BYTES).contains(&len) {
        return Err(PacketError::Size(len));
    }
    let prefix = bytes[0];
    let kind = kind_of(bytes)?;
    if kind == Kind::Request {
        return Err(PacketError::Unexpected(kind));
    }
    let seq_len = (prefix >> 4) as usize;
    if seq_len > 8 {
        return Err(PacketError::SequenceLength(seq_len));
    }
    if len < 1 + seq_len + MAC_BYTES {
        return Err(PacketError::Size(len));
    }
    let mut seq = [0u8; 8];
    seq[..seq_len].copy_from_slice(&bytes[1..1 + seq_len]);
    let sequence = u64::from_le_bytes(seq);
    let body_len = len - 1 - seq_len - MAC_BYTES;
    let body_ok = match kind {
        Kind::Denied | Kind::Disconnect => body_len == 0,
        Kind::Challenge | Kind::Response => body_len == 8 + CHALLENGE_TOKEN_BYTES,
        Kind::KeepAlive => body_len == 8,
        Kind::Payload => (1..=MAX_PAYLOAD_BYTES).contains(&body_len),
        Kind::Request => false,
    };
    if !body_ok {
        return Err(PacketError::Body {
            kind,
            len: body_len,
        });
    }
    let protect = kind.replay_protected();
    if let Some(replay) = replay.as_deref()
        && protect
        && replay.already_received(sequence)
    {
        return Err(PacketError::Replayed(sequence));
    }
    let aad = additional_data(prefix, protocol_id);
    let (_, rest) = bytes.split_at_mut(1 + seq_len);
    let body = open(key, sequence, &aad, rest)?;
    if let Some(replay) = replay
        && protect
    {
        replay.advance(sequence);
    }
    let body: &'a [u8] = body;
    let bad = PacketError::Body {
        kind,
        len: body_len,
    };
    let packet = match kind {
        Kind::Denied => Packet::Denied,
        Kind::Disconnect => Packet::Disconnect,
        Kind::Challenge => Packet::Challenge {
            token_sequence: u64_at(body, 0),
            token: array_at::<CHALLENGE_TOKEN_BYTES>(body, 8).ok_or(bad)?,
        },
        Kind::Response => Packet::Response {
            token_sequence: u64_at(body, 0),
            token: array_at::<CHALLENGE_TOKEN_BYTES>(body, 8).ok_or(bad)?,
        },
        Kind::KeepAlive => Packet::KeepAlive {
            client_index: u32::from_le_bytes(*array_at::<4>(body, 0).ok_or(bad)?),
            max_clients: u32::from_le_bytes(*array_at::<4>(body, 4).ok_or(bad)?),
        },
        Kind::Payload => Packet::Payload(body),
        Kind::Request => return Err(PacketError::Unexpected(kind)),
    };
    Ok((sequence, packet))
}

/// Encrypts a challenge token (client id + user data) under the server's challenge key.
pub(crate) fn seal_challenge(
    client_id: u64,
    user_data: &[u8; USER_DATA_BYTES],
    sequence: u64,
    key: &[u8; KEY_BYTES],
) -> Result<[u8; CHALLENGE_TOKEN_BYTES], PacketError> {
    let mut token = [0u8; CHALLENGE_TOKEN_BYTES];
    token[..8].copy_from_slice(&client_id.to_le_bytes());
    token[8..8 + USER_DATA_BYTES].copy_from_slice(user_data);
    let (data, tag) = token.split_at_mut(CHALLENGE_TOKEN_BYTES - MAC_BYTES);
    tag.copy_from_slice(&seal(key, sequence, b"", data)?);
    Ok(token)
}

/// Decrypts a challenge token; returns the client id and user data it carries.
pub(crate) fn open_challenge(
    token: &[u8; CHALLENGE_TOKEN_BYTES],
    sequence: u64,
    key: &[u8; KEY_BYTES],
) -> Result<(u64, [u8; USER_DATA_BYTES]), PacketError> {
    let mut copy = *token;
    let data = open(key, sequence, b"", &mut copy)?;
    let client_id = u64_at(data, 0);
    let user_data = *array_at::<USER_DATA_BYTES>(data, 8).ok_or(PacketError::Crypto)?;
    Ok((client_id, user_data))
}

/// ChaCha20-Poly1305 (IETF, RFC 8439; ring's implementation) over `data` in place with the
/// netcode nonce for `sequence`; returns the tag. ring rather than RustCrypto's
/// `chacha20poly1305` here: on small packets the latter's AVX2 Poly1305 costs ~2 µs per
/// packet, ring ~0.2 µs (both give the same bytes; the interop tests check against renetcode).
fn seal(
    key: &[u8; KEY_BYTES],
    sequence: u64,
    aad: &[u8],
    data: &mut [u8],
) -> Result<[u8; MAC_BYTES], PacketError> {
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| PacketError::Crypto)?,
    );
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce(sequence)),
            Aad::from(aad),
            data,
        )
        .map_err(|_| PacketError::Crypto)?;
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Inverse of [`seal`] over `data || tag`; returns the decrypted data.
fn open<'a>(
    key: &[u8; KEY_BYTES],
    sequence: u64,
    aad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], PacketError> {
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| PacketError::Crypto)?,
    );
    key.open_in_place(
        Nonce::assume_unique_for_key(nonce(sequence)),
        Aad::from(aad),
        sealed,
    )
    .map_err(|_| PacketError::Crypto)
}

/// XChaCha20-Poly1305 in place over `buf` whose last 16 bytes receive the tag.
pub(crate) fn seal_x(
    buf: &mut [u8],
    xnonce: &[u8; XNONCE_BYTES],
    key: &[u8; KEY_BYTES],
    aad: &[u8],
) -> Result<(), PacketError> {
    if buf.len() < MAC_BYTES {
        return Err(PacketError::Size(buf.len()));
    }
    let split = buf.len() - MAC_BYTES;
    let (data, tag) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(key.into());
    let t = cipher
        .encrypt_in_place_detached(xnonce.into(), aad, data)
        .map_err(|_| PacketError::Crypto)?;
    tag.copy_from_slice(&t);
    Ok(())
}

/// Inverse of [`seal_x`].
pub(crate) fn open_x(
    buf: &mut [u8],
    xnonce: &[u8; XNONCE_BYTES],
    key: &[u8; KEY_BYTES],
    aad: &[u8],
) -> Result<(), PacketError> {
    if buf.len() < MAC_BYTES {
        return Err(PacketError::Size(buf.len()));
    }
    let split = buf.len() - MAC_BYTES;
    let (data, tag) = buf.split_at_mut(split);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_in_place_detached(xnonce.into(), aad, data, Tag::from_slice(tag))
        .map_err(|_| PacketError::Crypto)
}

/// Netcode's window of recently received sequence numbers.
#[derive(Debug, Clone)]
pub(crate) struct ReplayProtection {
    most_recent: u64,
    received: Box<[u64; REPLAY_WINDOW]>,
}

const REPLAY_WINDOW: usize = 256;
const EMPTY: u64 = u64::MAX;

impl ReplayProtection {
    pub(crate) fn new() -> Self {
        Self {
            most_recent: 0,
            received: Box::new([EMPTY; REPLAY_WINDOW]),
        }
    }

    pub(crate) fn already_received(&self, sequence: u64) -> bool {
        if sequence.saturating_add(REPLAY_WINDOW as u64) <= self.most_recent || sequence == EMPTY {
            return true;
        }
        let seen = self.received[(sequence % REPLAY_WINDOW as u64) as usize];
        seen != EMPTY && seen >= sequence
    }

    pub(crate) fn advance(&mut self, sequence: u64) {
        self.most_recent = self.most_recent.max(sequence);
        self.received[(sequence % REPLAY_WINDOW as u64) as usize] = sequence;
    }
}

/// Fills `buf` with operating-system randomness.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

fn additional_data(prefix: u8, protocol_id: u64) -> [u8; 22] {
    let mut aad = [0u8; 22];
    aad[..13].copy_from_slice(VERSION_INFO);
    aad[13..21].copy_from_slice(&protocol_id.to_le_bytes());
    aad[21] = prefix;
    aad
}

fn nonce(sequence: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&sequence.to_le_bytes());
    n
}

fn sequence_bytes(sequence: u64) -> usize {
    8 - (sequence.leading_zeros() / 8) as usize
}

/// Reads a little-endian u64 at `at` (zero if out of range; callers check lengths first).
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    array_at::<8>(bytes, at).map_or(0, |a| u64::from_le_bytes(*a))
}

/// Borrows `N` bytes at `at` as an array, or `None` if out of range.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<&[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "measurement"]
    #[allow(clippy::print_stderr)]
    fn aead_cost() {
        let key = [7u8; 32];
        let payload = [3u8; 120];
        let mut out = Vec::new();
        let n = 200_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            encode(&mut out, &Packet::Payload(&payload), i, 5, &key).unwrap();
        }
        let enc = t.elapsed() / n as u32;
        let mut buf = out.clone();
        let t = std::time::Instant::now();
        for _ in 0..n {
            buf.copy_from_slice(&out);
            let _ = decode(&mut buf, 5, &key, None).unwrap();
        }
        eprintln!(
            "encode {enc:?}, decode {:?} per 120-byte payload",
            t.elapsed() / n as u32
        );
    }
}
