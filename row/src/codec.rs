//! The row codec: how column values, rows and reducer arguments become bytes, the
//! [`TypeDesc`] that describes a type to schema-driven (non-Rust) decoders, and the
//! [`OrreryType`] trait that Rust types implement (derived by `#[table]` and
//! `#[derive(OrreryType)]`).
//!
//! Columns are written in declaration order with no framing: unsigned integers wider than a byte
//! as LEB128 varints, signed ones zigzag-encoded first, `u8`/`i8`/`bool` as one byte, floats as
//! raw little-endian IEEE-754, strings and arrays as a varint length followed by their items.
//! The format is specified for non-Rust clients in `netcode/ROW_FORMAT.md`; every decoder here
//! treats its input as hostile: it never panics and never allocates more than the input could
//! possibly describe.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why bytes could not be decoded into a value. Decoders treat their input as hostile: any
/// byte string yields a value or one of these, never a panic, and never an allocation larger
/// than the input could describe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowDecodeError {
    /// The input ended before the value did.
    #[error("unexpected end of input: needed {needed} more byte(s) for {what}")]
    UnexpectedEof {
        /// What was being decoded.
        what: &'static str,
        /// How many more bytes were needed (at least).
        needed: usize,
    },
    /// A varint ran longer than its type allows.
    #[error("varint too long or out of range for {what}")]
    VarintOverflow {
        /// The type being decoded.
        what: &'static str,
    },
    /// A `bool` byte that is neither 0 nor 1.
    #[error("invalid bool byte {0:#04x}")]
    InvalidBool(u8),
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A length prefix larger than the remaining input could hold.
    #[error("length {len} exceeds the {remaining} byte(s) left in the input")]
    LengthTooLarge {
        /// The declared length.
        len: u64,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// An enum/option tag with no matching variant.
    #[error("invalid tag {tag} for {what}")]
    InvalidTag {
        /// The type being decoded.
        what: &'static str,
        /// The tag found.
        tag: u64,
    },
    /// Input left over after the value was complete.
    #[error("{0} trailing byte(s) after the value")]
    TrailingBytes(usize),
    /// A value that decoded but breaks an invariant of its type.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The type being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Describes a value's type, for the schema export and for schema-driven (non-Rust) codecs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeDesc {
    /// One byte, 0 or 1.
    Bool,
    /// One raw byte.
    U8,
    /// LEB128 varint.
    U16,
    /// LEB128 varint.
    U32,
    /// LEB128 varint.
    U64,
    /// One raw byte, two's complement.
    I8,
    /// Zigzag LEB128 varint.
    I16,
    /// Zigzag LEB128 varint.
    I32,
    /// Zigzag LEB128 varint.
    I64,
    /// 4 bytes little-endian IEEE-754.
    F32,
    /// 8 bytes little-endian IEEE-754.
    F64,
    /// Varint byte length, then UTF-8 bytes.
    String,
    /// 32 raw bytes.
    Identity,
    /// LEB128 varint.
    ConnectionId,
    /// Zigzag varint microseconds since the Unix epoch.
    Timestamp,
    /// Varint microseconds.
    Duration,
    /// Varint tag (0 = interval, 1 = at) then a duration or a timestamp.
    ScheduleAt,
    /// Two f32 (x, y).
    Vec2,
    /// Three f32 (x, y, z).
    Vec3,
    /// Tag byte 0 (none) or 1 (some) then the value.
    Option {
        /// The inner type.
        of: Box<TypeDesc>,
    },
    /// Varint count then the items (an array of `u8` is a byte string).
    Array {
        /// The item type.
        of: Box<TypeDesc>,
    },
    /// Fields in declaration order.
    Struct {
        /// Rust type name.
        name: String,
        /// The fields.
        fields: Vec<FieldDesc>,
    },
    /// Varint variant index then that variant's fields in order.
    Enum {
        /// Rust type name.
        name: String,
        /// The variants in declaration order.
        variants: Vec<VariantDesc>,
    },
}

/// A named field of a struct type or enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDesc {
    /// Field name (`"0"`, `"1"`, … for tuple fields).
    pub name: String,
    /// Field type.
    #[serde(rename = "type")]
    pub ty: TypeDesc,
}

/// One variant of an enum type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantDesc {
    /// Variant name.
    pub name: String,
    /// Its fields (empty for unit variants).
    pub fields: Vec<FieldDesc>,
}

impl TypeDesc {
    /// A short human-readable name (`u64`, `Option<String>`, `Vec<u8>`, `Account`).
    pub fn display_name(&self) -> String {
        match self {
            TypeDesc::Bool => "bool".into(),
            TypeDesc::U8 => "u8".into(),
            TypeDesc::U16 => "u16".into(),
            TypeDesc::U32 => "u32".into(),
            TypeDesc::U64 => "u64".into(),
            TypeDesc::I8 => "i8".into(),
            TypeDesc::I16 => "i16".into(),
            TypeDesc::I32 => "i32".into(),
            TypeDesc::I64 => "i64".into(),
            TypeDesc::F32 => "f32".into(),
            TypeDesc::F64 => "f64".into(),
            TypeDesc::String => "String".into(),
            TypeDesc::Identity => "Identity".into(),
            TypeDesc::ConnectionId => "ConnectionId".into(),
            TypeDesc::Timestamp => "Timestamp".into(),
            TypeDesc::Duration => "Duration".into(),
            TypeDesc::ScheduleAt => "ScheduleAt".into(),
            TypeDesc::Vec2 => "Vec2".into(),
            TypeDesc::Vec3 => "Vec3".into(),
            TypeDesc::Option { of } => format!("Option<{}>", of.display_name()),
            TypeDesc::Array { of } => format!("Vec<{}>", of.display_name()),
            TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => name.clone(),
        }
    }

    /// How many `f32`/`f64` components a quantizable type has (`f32`/`f64`: 1, `Vec2`: 2,
    /// `Vec3`: 3); `None` for types `#[quantize]` does not apply to.
    pub fn float_components(&self) -> Option<usize> {
        match self {
            TypeDesc::F32 | TypeDesc::F64 => Some(1),
            TypeDesc::Vec2 => Some(2),
            TypeDesc::Vec3 => Some(3),
            _ => None,
        }
    }
}

/// A type that has a place in the Orrery row format: table rows, their columns, reducer
/// arguments. Implemented for the primitive column types here and derived for structs and enums
/// with `#[derive(OrreryType)]` (tables get it from `#[table]`).
pub trait OrreryType: Sized {
    /// The type's description for the schema.
    fn type_desc() -> TypeDesc;
    /// Appends the value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one value from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError>;

    /// Encodes into a fresh buffer.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a value that must span all of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Result<Self, RowDecodeError> {
        let mut input = bytes;
        let value = Self::decode(&mut input)?;
        if input.is_empty() {
            Ok(value)
        } else {
            Err(RowDecodeError::TrailingBytes(input.len()))
        }
    }
}

/// Low 7 bits of every byte of a little-endian word.
const PAYLOAD_BITS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// High (continuation) bit of every byte of a little-endian word.
const CONTINUATION_BITS: u64 = 0x8080_8080_8080_8080;

/// Packs the 7-bit groups of eight little-endian varint bytes (continuation bits already
/// cleared) into one 56-bit value: three shift-and-mask steps instead of a loop per byte.
#[inline(always)]
fn pack_groups(x: u64) -> u64 {
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// Inverse of [`pack_groups`]: spreads the low 56 bits of `x` into eight 7-bit groups, one per
/// byte, continuation bits clear.
#[inline(always)]
fn spread_groups(x: u64) -> u64 {
    let x = x & 0x00ff_ffff_ffff_ffff;
    let x = (x & 0x0000_0000_0fff_ffff) | ((x << 4) & 0x0fff_ffff_0000_0000);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x << 2) & 0x3fff_0000_3fff_0000);
    (x & 0x007f_007f_007f_007f) | ((x << 1) & 0x7f00_7f00_7f00_7f00)
}

/// Appends `value` as an unsigned LEB128 varint.
// Always inlined, one byte (lengths, tags, small numbers) pushed directly: rows and reducer
// arguments are encoded on every write, and the call costs as much as a short varint.
#[inline(always)]
pub fn write_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        write_varint_long(out, value);
    }
}

/// Varint length and continuation bits by the value's leading zeros, for [`write_varint_long`]:
/// one load each instead of a division by seven and a variable shift.
const VARINT_SHAPE: [(u64, usize); 65] = {
    let mut shape = [(0, 0); 65];
    let mut zeros: usize = 0;
    while zeros <= 64 {
        let bits = 64 - zeros;
        let len = if bits == 0 { 1 } else { bits.div_ceil(7) };
        // Continuation bits on every byte before the last one: bytes 0..len-1 of the word
        // (all eight when the varint goes on past it).
        let before_last = if len > 9 { 8 } else { len - 1 };
        let mask = if before_last == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * before_last)) - 1
        };
        shape[zeros] = (CONTINUATION_BITS & mask, len);
        zeros += 1;
    }
    shape
};

/// [`write_varint`] for values of two to ten bytes.
#[inline]
fn write_varint_long(out: &mut Vec<u8>, value: u64) {
    // All ten bytes built in registers without a branch on the length, appended as a fixed-size
    // copy (two stores, no `memcpy` call for a variable length) and the unused tail cut off (a
    // random u64 takes ten bytes; an account balance three).
    let (continuation, len) = VARINT_SHAPE[value.leading_zeros() as usize];
    let word = spread_groups(value) | continuation;
    let tenth = (value >> 63) as u8;
    // The ninth byte carries bits 56..63, with a continuation bit when bit 63 follows.
    let ninth = ((value >> 56) as u8 & 0x7f) | (tenth << 7);
    let [b0, b1, b2, b3, b4, b5, b6, b7] = word.to_le_bytes();
    let start = out.len();
    out.extend_from_slice(&[b0, b1, b2, b3, b4, b5, b6, b7, ninth, tenth]);
    out.truncate(start + len);
}

/// Reads an unsigned LEB128 varint of at most 10 bytes that fits in a `u64`.
// Always inlined: returning the `Result` from a call costs as much as the decode itself.
#[inline(always)]
pub fn read_varint(input: &mut &[u8], what: &'static str) -> Result<u64, RowDecodeError> {
    // With ten bytes at hand no byte needs a bounds check, and the first eight are read as one
    // word: the end is the first byte without a continuation bit (reducer arguments and rows
    // are decoded on every call).
    if let Some(bytes) = input.first_chunk::<10>() {
        let word = u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]);
        let ends = !word & CONTINUATION_BITS;
        if ends != 0 {
            // The last byte's bit 7 is bit `8 * last + 7` of the word.
            let end_bit = ends.trailing_zeros();
            let len = (end_bit as usize + 1) / 8;
            let kept = word & PAYLOAD_BITS & (u64::MAX >> (63 - end_bit));
            *input = &input[len..];
            return Ok(pack_groups(kept));
        }
        let low = pack_groups(word & PAYLOAD_BITS);
        let (b8, b9) = (bytes[8], bytes[9]);
        if b8 & 0x80 == 0 {
            *input = &input[9..];
            return Ok(low | (u64::from(b8) << 56));
        }
        if b9 > 1 {
            return Err(RowDecodeError::VarintOverflow { what });
        }
        *input = &input[10..];
        return Ok(low | (u64::from(b8 & 0x7f) << 56) | (u64::from(b9) << 63));
    }
    // Near the end of the input: a one-byte value (the last argument of a call is often a
    // small number, a flag or a tag) without the call to the byte-at-a-time path.
    if let Some((&first, rest)) = input.split_first()
        && first & 0x80 == 0
    {
        *input = rest;
        return Ok(u64::from(first));
    }
    read_varint_short(input, what)
}

/// [`read_varint`] with fewer than ten bytes left: one byte at a time.
#[inline(never)]
fn read_varint_short(input: &mut &[u8], what: &'static str) -> Result<u64, RowDecodeError> {
    let mut result: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err(RowDecodeError::VarintOverflow { what });
        }
        result |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(result);
        }
    }
    if input.len() >= 10 {
        Err(RowDecodeError::VarintOverflow { what })
    } else {
        Err(RowDecodeError::UnexpectedEof { what, needed: 1 })
    }
}

/// Zigzag-maps a signed integer so small magnitudes get short varints.
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Splits `n` bytes off the front of `input`.
#[inline]
pub fn take_bytes<'a>(
    input: &mut &'a [u8],
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], RowDecodeError> {
    if input.len() < n {
        return Err(RowDecodeError::UnexpectedEof {
            what,
            needed: n - input.len(),
        });
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// Reads a varint length and checks that at least `len * min_item_size` bytes remain, so a
/// hostile length can never trigger a huge allocation.
#[inline]
pub fn read_len(
    input: &mut &[u8],
    min_item_size: usize,
    what: &'static str,
) -> Result<usize, RowDecodeError> {
    let len = read_varint(input, what)?;
    let need = len.saturating_mul(min_item_size.max(1) as u64);
    if need > input.len() as u64 {
        return Err(RowDecodeError::LengthTooLarge {
            len,
            remaining: input.len(),
        });
    }
    Ok(len as usize)
}

macro_rules! impl_unsigned {
    ($($t:ty => $desc:ident),*) => {$(
        impl OrreryType for $t {
            fn type_desc() -> TypeDesc { TypeDesc::$desc }
            #[inline]
            fn encode(&self, out: &mut Vec<u8>) { write_varint(out, u64::from(*self)) }
            #[inline]
            fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
                let v = read_varint(input, stringify!($t))?;
                <$t>::try_from(v).map_err(|_| RowDecodeError::VarintOverflow { what: stringify!($t) })
            }
        }
    )*};
}
impl_unsigned!(u16 => U16, u32 => U32, u64 => U64);

macro_rules! impl_signed {
    ($($t:ty => $desc:ident),*) => {$(
        impl OrreryType for $t {
            fn type_desc() -> TypeDesc { TypeDesc::$desc }
            #[inline]
            fn encode(&self, out: &mut Vec<u8>) { write_varint(out, zigzag(i64::from(*self))) }
            #[inline]
            fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
                let v = unzigzag(read_varint(input, stringify!($t))?);
                <$t>::try_from(v).map_err(|_| RowDecodeError::VarintOverflow { what: stringify!($t) })
            }
        }
    )*};
}
impl_signed!(i16 => I16, i32 => I32, i64 => I64);

impl OrreryType for u8 {
    fn type_desc() -> TypeDesc {
        TypeDesc::U8
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(take_bytes(input, 1, "u8")?[0])
    }
}

impl OrreryType for i8 {
    fn type_desc() -> TypeDesc {
        TypeDesc::I8
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(take_bytes(input, 1, "i8")?[0] as i8)
    }
}

impl OrreryType for bool {
    fn type_desc() -> TypeDesc {
        TypeDesc::Bool
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        match take_bytes(input, 1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(RowDecodeError::InvalidBool(other)),
        }
    }
}

impl OrreryType for f32 {
    fn type_desc() -> TypeDesc {
        TypeDesc::F32
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        let b = take_bytes(input, 4, "f32")?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl OrreryType for f64 {
    fn type_desc() -> TypeDesc {
        TypeDesc::F64
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        let b = take_bytes(input, 8, "f64")?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(f64::from_le_bytes(raw))
    }
}

impl OrreryType for String {
    fn type_desc() -> TypeDesc {
        TypeDesc::String
    }
    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        let len = read_len(input, 1, "String")?;
        let bytes = take_bytes(input, len, "String")?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(RowDecodeError::InvalidUtf8 {
                valid_up_to: e.valid_up_to(),
            }),
        }
    }
}

impl<T: OrreryType> OrreryType for Vec<T> {
    fn type_desc() -> TypeDesc {
        TypeDesc::Array {
            of: Box::new(T::type_desc()),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, self.len() as u64);
        for item in self {
            item.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        // Every item takes at least one byte on the wire, so this bounds the allocation.
        let len = read_len(input, 1, "Vec")?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(T::decode(input)?);
        }
        Ok(items)
    }
}

impl<T: OrreryType> OrreryType for Option<T> {
    fn type_desc() -> TypeDesc {
        TypeDesc::Option {
            of: Box::new(T::type_desc()),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        match take_bytes(input, 1, "Option")?[0] {
            0 => Ok(None),
            1 => Ok(Some(T::decode(input)?)),
            tag => Err(RowDecodeError::InvalidTag {
                what: "Option",
                tag: u64::from(tag),
            }),
        }
    }
}

impl<T: OrreryType> OrreryType for Box<T> {
    fn type_desc() -> TypeDesc {
        T::type_desc()
    }
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        T::decode(input).map(Box::new)
    }
}

impl OrreryType for Duration {
    fn type_desc() -> TypeDesc {
        TypeDesc::Duration
    }
    fn encode(&self, out: &mut Vec<u8>) {
        write_varint(out, u64::try_from(self.as_micros()).unwrap_or(u64::MAX));
    }
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(Duration::from_micros(read_varint(input, "Duration")?))
    }
}

impl OrreryType for glam::Vec2 {
    fn type_desc() -> TypeDesc {
        TypeDesc::Vec2
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.x.encode(out);
        self.y.encode(out);
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(glam::Vec2::new(f32::decode(input)?, f32::decode(input)?))
    }
}

impl OrreryType for glam::Vec3 {
    fn type_desc() -> TypeDesc {
        TypeDesc::Vec3
    }
    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.x.encode(out);
        self.y.encode(out);
        self.z.encode(out);
    }
    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(glam::Vec3::new(
            f32::decode(input)?,
            f32::decode(input)?,
            f32::decode(input)?,
        ))
    }
}

impl OrreryType for () {
    fn type_desc() -> TypeDesc {
        TypeDesc::Struct {
            name: "()".into(),
            fields: Vec::new(),
        }
    }
    fn encode(&self, _out: &mut Vec<u8>) {}
    fn decode(_input: &mut &[u8]) -> Result<Self, RowDecodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: OrreryType + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = value.to_bytes();
        assert_eq!(T::from_bytes(&bytes).unwrap(), value);
    }

    #[test]
    fn varint_lengths_match_leb128() {
        let cases: [(u64, usize); 6] = [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ];
        for (value, len) in cases {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(read_varint(&mut out.as_slice(), "t").unwrap(), value);
        }
    }

    #[test]
    fn overlong_varints_are_rejected() {
        let eleven = [0xffu8; 11];
        assert!(matches!(
            read_varint(&mut &eleven[..], "t"),
            Err(RowDecodeError::VarintOverflow { .. })
        ));
        // Ten bytes whose last carries more than the 64th bit.
        let mut too_big = [0xffu8; 10];
        too_big[9] = 0x02;
        assert!(matches!(
            read_varint(&mut &too_big[..], "t"),
            Err(RowDecodeError::VarintOverflow { .. })
        ));
        assert!(matches!(
            u8::decode(&mut &[][..]),
            Err(RowDecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            u16::from_bytes(&[0xff, 0xff, 0x04]),
            Err(RowDecodeError::VarintOverflow { what: "u16" })
        ));
    }

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_codes() {
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(-2), 3);
        assert_eq!(unzigzag(zigzag(i64::MIN)), i64::MIN);
        assert_eq!(unzigzag(zigzag(i64::MAX)), i64::MAX);
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // Claims 2^40 strings but carries three bytes.
        let mut bytes = Vec::new();
        write_varint(&mut bytes, 1 << 40);
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            Vec::<String>::from_bytes(&bytes),
            Err(RowDecodeError::LengthTooLarge { .. })
        ));
        assert!(matches!(
            String::from_bytes(&bytes),
            Err(RowDecodeError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn invalid_bool_utf8_and_option_tags_are_errors() {
        assert_eq!(bool::from_bytes(&[2]), Err(RowDecodeError::InvalidBool(2)));
        assert!(matches!(
            String::from_bytes(&[2, 0xc3, 0x28]),
            Err(RowDecodeError::InvalidUtf8 { valid_up_to: 0 })
        ));
        assert!(matches!(
            Option::<u8>::from_bytes(&[7]),
            Err(RowDecodeError::InvalidTag { tag: 7, .. })
        ));
        assert_eq!(
            u8::from_bytes(&[1, 2]),
            Err(RowDecodeError::TrailingBytes(1))
        );
    }

    fn bytewise_leb128(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    /// A byte-by-byte LEB128 reader: the value and the bytes left, or `None` when the varint
    /// is unterminated, longer than ten bytes or above `u64::MAX`.
    fn bytewise_read(bytes: &[u8]) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for (i, &byte) in bytes.iter().enumerate().take(10) {
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((value, bytes.len() - i - 1));
            }
        }
        None
    }

    proptest! {
        #[test]
        fn primitives_round_trip(
            a in any::<u64>(), b in any::<i64>(), c in any::<i32>(), d in any::<u16>(),
            e in any::<i8>(), f in any::<f32>(), g in any::<f64>(), s in ".*",
            v in proptest::collection::vec(any::<u32>(), 0..20),
            o in proptest::option::of(any::<i16>()), flag in any::<bool>(),
        ) {
            round_trip(a);
            round_trip(b);
            round_trip(c);
            round_trip(d);
            round_trip(e);
            round_trip(s);
            round_trip(v);
            round_trip(o);
            round_trip(flag);
            // Floats compare by bits so NaN payloads must survive too.
            prop_assert_eq!(f32::from_bytes(&f.to_bytes()).unwrap().to_bits(), f.to_bits());
            prop_assert_eq!(f64::from_bytes(&g.to_bytes()).unwrap().to_bits(), g.to_bits());
        }

        /// The word-at-a-time varint writer and reader agree with plain byte-by-byte LEB128,
        /// at every length, with and without bytes following (the reader's ten-byte fast path
        /// and its short-input path).
        #[test]
        fn varints_match_bytewise_leb128(
            raw in any::<u64>(), shift in 0u32..64, tail in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let value = raw >> shift;
            let expected = bytewise_leb128(value);
            let mut out = Vec::new();
            write_varint(&mut out, value);
            prop_assert_eq!(&out, &expected);
            let mut with_tail = out.clone();
            with_tail.extend_from_slice(&tail);
            let mut input = with_tail.as_slice();
            prop_assert_eq!(read_varint(&mut input, "t").unwrap(), value);
            prop_assert_eq!(input, tail.as_slice());
        }

        /// On arbitrary bytes the reader gives what a byte-by-byte LEB128 reader gives:
        /// the same value and length, or an error where it errs.
        #[test]
        fn varint_reader_matches_bytewise_on_garbage(
            bytes in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut input = bytes.as_slice();
            let fast = read_varint(&mut input, "t").ok().map(|v| (v, input.len()));
            prop_assert_eq!(fast, bytewise_read(&bytes));
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = u64::from_bytes(&bytes);
            let _ = i32::from_bytes(&bytes);
            let _ = String::from_bytes(&bytes);
            let _ = Vec::<Vec<String>>::from_bytes(&bytes);
            let _ = Option::<glam::Vec3>::from_bytes(&bytes);
            let _ = Duration::from_bytes(&bytes);
        }
    }
}
