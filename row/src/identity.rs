//! Who is calling: [`Identity`] (a player's global, zone-independent id) and [`ConnectionId`]
//! (one live connection of that identity).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{OrreryType, RowDecodeError, TypeDesc, read_varint, take_bytes, write_varint};

/// A 32-byte identity, global across zones. Minted by the control plane; the engine only
/// compares and stores it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Identity(pub [u8; 32]);

impl Identity {
    /// The all-zero identity, used as the sender of engine-internal calls (init, schedules).
    pub const ZERO: Identity = Identity([0; 32]);

    /// Builds an identity from raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Identity(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A deterministic identity derived from a number, handy in tests and bots.
    pub fn from_u64(n: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[24..].copy_from_slice(&n.to_be_bytes());
        Identity(bytes)
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(hex: &str) -> Result<Self, RowDecodeError> {
        let invalid = || RowDecodeError::Invalid {
            what: "Identity",
            detail: format!("expected 64 hex characters, got {hex:?}"),
        };
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Identity(bytes))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Identity::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

impl OrreryType for Identity {
    fn type_desc() -> TypeDesc {
        TypeDesc::Identity
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(take_bytes(input, 32, "Identity")?);
        Ok(Identity(bytes))
    }
}

/// One live connection. An identity may hold several at once (two devices).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

impl OrreryType for ConnectionId {
    fn type_desc() -> TypeDesc {
        TypeDesc::ConnectionId
    }
    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.0);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(ConnectionId(read_varint(input, "ConnectionId")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = Identity::from_u64(0xdead_beef);
        assert_eq!(Identity::from_hex(&id.to_hex()).unwrap(), id);
        assert!(Identity::from_hex("zz").is_err());
        assert!(Identity::from_hex(&"g".repeat(64)).is_err());
        assert!(Identity::from_hex(&"é".repeat(32)).is_err());
        assert_eq!(Identity::from_hex(&id.to_hex().to_uppercase()).unwrap(), id);
        assert_eq!(
            Identity::from_u64(0xab).to_hex(),
            format!("{}ab", "0".repeat(62))
        );
        assert_eq!(Identity::from_bytes(*id.as_bytes()), id);
    }
}
