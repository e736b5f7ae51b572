//! Primitives of the Orrery row format: LEB128 varints, zigzag, bounded reads, and the
//! decode error every row-format decoder returns.
//!
//! These are byte-for-byte the engine's (`orrery_engine::codec`); the conformance tests in
//! `tests/tests/row_format.rs` hold them to it.

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
    /// An enum, option or record tag with no meaning.
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
    /// A value that decoded but breaks an invariant of its type or record.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The type or record being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Appends `value` as an unsigned LEB128 varint (7 bits per byte, low bits first, high bit set
/// on every byte but the last; 1 to 10 bytes).
#[inline]
pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint of at most 10 bytes whose value fits in a `u64`, advancing
/// `input`. Non-minimal encodings (`0x80 0x00` for 0) are accepted, as the engine does.
#[inline]
pub fn read_varint(input: &mut &[u8], what: &'static str) -> Result<u64, RowDecodeError> {
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

/// Zigzag-maps a signed integer so small magnitudes get short varints
/// (0 → 0, -1 → 1, 1 → 2, -2 → 3, ...).
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

/// Reads a varint length and checks that at least `len * min_item_size` bytes remain (with
/// `min_item_size` at least 1), so a hostile length never triggers a huge allocation.
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

/// Reads one byte.
#[inline]
pub(crate) fn read_u8(input: &mut &[u8], what: &'static str) -> Result<u8, RowDecodeError> {
    Ok(take_bytes(input, 1, what)?[0])
}

/// Reads a little-endian `f32`.
#[inline]
pub(crate) fn read_f32(input: &mut &[u8], what: &'static str) -> Result<f32, RowDecodeError> {
    let b = take_bytes(input, 4, what)?;
    Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian `f64`.
#[inline]
pub(crate) fn read_f64(input: &mut &[u8], what: &'static str) -> Result<f64, RowDecodeError> {
    let b = take_bytes(input, 8, what)?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(b);
    Ok(f64::from_le_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_leb128() {
        for (value, len) in [
            (0u64, 1usize),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(read_varint(&mut out.as_slice(), "t"), Ok(value));
        }
    }

    #[test]
    fn overlong_and_truncated_varints_are_errors() {
        assert!(matches!(
            read_varint(&mut &[0xffu8; 11][..], "t"),
            Err(RowDecodeError::VarintOverflow { .. })
        ));
        let mut too_big = [0xffu8; 10];
        too_big[9] = 0x02;
        assert!(matches!(
            read_varint(&mut &too_big[..], "t"),
            Err(RowDecodeError::VarintOverflow { .. })
        ));
        assert!(matches!(
            read_varint(&mut &[0x80u8][..], "t"),
            Err(RowDecodeError::UnexpectedEof { .. })
        ));
    }

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_codes() {
        assert_eq!([zigzag(0), zigzag(-1), zigzag(1), zigzag(-2)], [0, 1, 2, 3]);
        assert_eq!(unzigzag(zigzag(i64::MIN)), i64::MIN);
        assert_eq!(unzigzag(zigzag(i64::MAX)), i64::MAX);
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut bytes = Vec::new();
        write_varint(&mut bytes, 1 << 40);
        bytes.extend_from_slice(b"abc");
        assert_eq!(
            read_len(&mut bytes.as_slice(), 1, "t"),
            Err(RowDecodeError::LengthTooLarge {
                len: 1 << 40,
                remaining: 3
            })
        );
    }
}
