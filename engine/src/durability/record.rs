//! The commit log's byte format: the segment header, the record frame (length, CRC32C, tick
//! sequence) and the record payload (a tick's changes to durable tables). Encoding happens on
//! the tick thread into a reusable buffer; the CRC is filled in by the writer thread; decoding
//! is used by recovery and never panics on hostile bytes.
//!
//! The layout is specified in `docs/durability.md`; keep the two in sync.

use crate::changes::{ChangeKind, RowChange};
use crate::codec::{RowDecodeError, read_len, read_varint, take_bytes, write_varint};
use crate::identity::{ConnectionId, Identity};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"ORRYLOG\0";
/// Version of the segment and record format written. Version 2 added the synced watermark
/// to every record payload, version 3 the input-log section; versions 1 and 2 are still read.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub(crate) const OLDEST_READABLE_VERSION: u32 = 1;
/// Segment header: magic (8) + version (4) + reserved (4) + first sequence (8) + CRC32C (4).
pub(crate) const SEGMENT_HEADER_LEN: usize = 28;
/// Record frame header: payload length (4) + CRC32C (4) + tick sequence (8).
pub(crate) const RECORD_HEADER_LEN: usize = 16;

/// Encodes a segment header for a segment whose first record has sequence `first_seq`.
pub(crate) fn segment_header(first_seq: u64, schema: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&schema.to_le_bytes());
    header[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// Fewer bytes than a header.
    Short,
    /// Magic or CRC wrong.
    Corrupt,
    /// A valid header of a format version this build cannot read.
    Version(u32),
}

/// A valid segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) first_seq: u64,
    pub(crate) version: u32,
    /// Fingerprint of the schema that wrote the segment (0: unknown, an older file).
    pub(crate) schema: u32,
}

/// Parses a segment header.
pub(crate) fn parse_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderProblem::Short);
    }
    let crc = u32_at(bytes, 24);
    if bytes[..8] != SEGMENT_MAGIC || crc32c::crc32c(&bytes[..24]) != crc {
        return Err(HeaderProblem::Corrupt);
    }
    let version = u32_at(bytes, 8);
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(HeaderProblem::Version(version));
    }
    Ok(SegmentHeader {
        first_seq: u64_at(bytes, 16),
        version,
        schema: u32_at(bytes, 12),
    })
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// The CRC32C of a framed record: over the length field, the sequence field and the payload
/// (everything except the CRC field itself).
pub(crate) fn record_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

/// Fills in the CRC of a framed record whose length and sequence are already written.
pub(crate) fn seal_record(frame: &mut [u8]) {
    let crc = record_crc(frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Builds one record in a reusable buffer: frame header first (length, CRC placeholder,
/// sequence), then the payload.
pub(crate) struct RecordBuilder {
    buf: Vec<u8>,
    tables: u64,
    tables_at: usize,
}

/// Kind byte of an entry in a record.
fn kind_byte(kind: ChangeKind) -> u8 {
    match kind {
        ChangeKind::Insert => 0,
        ChangeKind::Update => 1,
        ChangeKind::Delete => 2,
    }
}

/// Flag bit of a table section: the table's auto-increment sequences follow.
const HAS_SEQUENCES: u8 = 1;

impl RecordBuilder {
    /// Starts the record of tick `seq` with timestamp `micros` in `buf` (cleared first).
    pub(crate) fn new(mut buf: Vec<u8>, seq: u64, micros: i64) -> Self {
        buf.clear();
        buf.extend_from_slice(&[0u8; 8]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&micros.to_le_bytes());
        // The synced watermark is filled in by the writer thread ([`set_synced_before`]).
        buf.extend_from_slice(&[0u8; 8]);
        let tables_at = buf.len();
        // The table count is patched in `finish`; reserve a fixed 4 bytes for it.
        buf.extend_from_slice(&[0u8; 4]);
        RecordBuilder {
            buf,
            tables: 0,
            tables_at,
        }
    }

    /// Starts a table section.
    pub(crate) fn table(&mut self, table: u32, sequences: Option<&[u64]>, entries: usize) {
        self.tables += 1;
        write_varint(&mut self.buf, u64::from(table));
        match sequences {
            Some(values) => {
                self.buf.push(HAS_SEQUENCES);
                write_varint(&mut self.buf, values.len() as u64);
                for &value in values {
                    write_varint(&mut self.buf, value);
                }
            }
            None => self.buf.push(0),
        }
        write_varint(&mut self.buf, entries as u64);
    }

    /// Appends one entry to the current table section.
    pub(crate) fn entry(&mut self, kind: ChangeKind, pk: &[u8], row: Option<&[u8]>) {
        self.buf.push(kind_byte(kind));
        write_varint(&mut self.buf, pk.len() as u64);
        self.buf.extend_from_slice(pk);
        if kind != ChangeKind::Delete {
            let row = row.unwrap_or(&[]);
            write_varint(&mut self.buf, row.len() as u64);
            self.buf.extend_from_slice(row);
        }
    }

    /// Ends the table sections with the tick's connection events (format 2): which
    /// connections `client_connected` admitted and which went away, in order.
    pub(crate) fn connections(&mut self, events: &[ConnectionEvent]) {
        write_varint(&mut self.buf, events.len() as u64);
        for event in events {
            self.buf.push(u8::from(!event.connected));
            self.buf
                .extend_from_slice(&event.connection.0.to_le_bytes());
            self.buf.extend_from_slice(event.identity.as_bytes());
        }
    }

    /// Ends the payload with the input-log section (format 3): nothing but a zero flag byte
    /// when inputs are not recorded.
    pub(crate) fn replay(&mut self, section: Option<&ReplayRef<'_>>) {
        let Some(section) = section else {
            self.buf.push(0);
            return;
        };
        self.buf.push(
            REPLAY_PRESENT
                | if section.session_start {
                    REPLAY_SESSION_START
                } else {
                    0
                },
        );
        self.buf.extend_from_slice(&section.seed.to_le_bytes());
        write_varint(&mut self.buf, section.dt_micros);
        self.buf
            .extend_from_slice(&section.state_hash.to_le_bytes());
        write_varint(&mut self.buf, section.count);
        write_varint(&mut self.buf, section.inputs.len() as u64);
        self.buf.extend_from_slice(section.inputs);
    }

    /// Writes the frame's length field; returns the framed record (CRC still zero: the writer
    /// thread seals it), or the payload length if it does not fit a `u32`.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, usize> {
        let tables = u32::try_from(self.tables).unwrap_or(u32::MAX);
        self.buf[self.tables_at..self.tables_at + 4].copy_from_slice(&tables.to_le_bytes());
        let payload = self.buf.len() - RECORD_HEADER_LEN;
        let len = u32::try_from(payload).map_err(|_| payload)?;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        Ok(self.buf)
    }
}

/// Where the synced watermark sits in a framed record (version 2).
const SYNCED_AT: usize = RECORD_HEADER_LEN + 8;

/// Stores in a framed record (before it is sealed) the **synced watermark**: the newest tick
/// whose record was fsynced before this record was written. Recovery uses it to tell a
/// record lost because it was never synced (a torn or out-of-order tail after power loss)
/// from damage to a record that had been synced.
pub(crate) fn set_synced_before(frame: &mut [u8], synced: u64) {
    if let Some(field) = frame.get_mut(SYNCED_AT..SYNCED_AT + 8) {
        field.copy_from_slice(&synced.to_le_bytes());
    }
}

/// The synced watermark of a valid record's payload (0 for format version 1, which has none).
pub(crate) fn synced_before(payload: &[u8], version: u32) -> u64 {
    if version < 2 || payload.len() < 16 {
        return 0;
    }
    u64_at(payload, 8)
}

/// Input-log section flag: seed, tick interval, state hash and inputs follow.
const REPLAY_PRESENT: u8 = 1;
/// Input-log section flag: the first tick of an engine opened on an existing database (a
/// restart: replay must do what recovery did before this tick's inputs).
const REPLAY_SESSION_START: u8 = 2;

/// A record's input-log section (format 3): what entered the engine during the tick and the
/// state hash after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplayRef<'a> {
    /// The first tick after the engine was recovered from this directory.
    pub(crate) session_start: bool,
    /// The engine seed the tick's reducer RNGs were derived from.
    pub(crate) seed: u64,
    /// The engine's `tick_interval` (`TickInfo::dt`), µs.
    pub(crate) dt_micros: u64,
    /// The state hash after the tick.
    pub(crate) state_hash: u64,
    /// Number of encoded inputs.
    pub(crate) count: u64,
    /// The encoded inputs (`crate::replay::RecordedInput`).
    pub(crate) inputs: &'a [u8],
}

/// One entry of a decoded record, borrowing the record's bytes.
pub(crate) type EntryRef<'a> = RowChange<'a>;

/// One table section of a decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableRef<'a> {
    pub(crate) table: u32,
    pub(crate) sequences: Option<Vec<u64>>,
    pub(crate) entries: Vec<EntryRef<'a>>,
}

/// A connection admitted (`client_connected` committed) or gone (`client_disconnected` ran).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionEvent {
    pub(crate) connected: bool,
    pub(crate) connection: ConnectionId,
    pub(crate) identity: Identity,
}

/// A decoded record payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TickRecord<'a> {
    pub(crate) seq: u64,
    pub(crate) micros: i64,
    pub(crate) tables: Vec<TableRef<'a>>,
    pub(crate) connections: Vec<ConnectionEvent>,
    /// The input-log section, if inputs were recorded (format 3).
    pub(crate) replay: Option<ReplayRef<'a>>,
}

fn decode_replay<'a>(input: &mut &'a [u8]) -> Result<Option<ReplayRef<'a>>, RowDecodeError> {
    let flags = take_bytes(input, 1, "input-log flags")?[0];
    if flags & !(REPLAY_PRESENT | REPLAY_SESSION_START) != 0
        || (flags & REPLAY_PRESENT == 0 && flags != 0)
    {
        return Err(RowDecodeError::InvalidTag {
            what: "input-log flags",
            tag: u64::from(flags),
        });
    }
    if flags == 0 {
        return Ok(None);
    }
    let seed = u64_at(take_bytes(input, 8, "seed")?, 0);
    let dt_micros = read_varint(input, "tick interval")?;
    let state_hash = u64_at(take_bytes(input, 8, "state hash")?, 0);
    let count = read_varint(input, "input count")?;
    let len = read_len(input, 1, "inputs")?;
    let inputs = take_bytes(input, len, "inputs")?;
    Ok(Some(ReplayRef {
        session_start: flags & REPLAY_SESSION_START != 0,
        seed,
        dt_micros,
        state_hash,
        count,
        inputs,
    }))
}

/// Decodes a record payload (the bytes after the frame header) of sequence `seq`, written in
/// format `version`.
pub(crate) fn decode_payload(
    seq: u64,
    payload: &[u8],
    version: u32,
) -> Result<TickRecord<'_>, RowDecodeError> {
    let mut input = payload;
    let head_len = if version >= 2 { 20 } else { 12 };
    let head = take_bytes(&mut input, head_len, "record header")?;
    let micros = u64_at(head, 0) as i64;
    let count = u32_at(head, head_len - 4);
    // Every table section takes at least three bytes, so this bounds the allocation.
    if u64::from(count) * 3 > input.len() as u64 {
        return Err(RowDecodeError::LengthTooLarge {
            len: u64::from(count),
            remaining: input.len(),
        });
    }
    let mut tables = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let table = u32::try_from(read_varint(&mut input, "table id")?)
            .map_err(|_| RowDecodeError::VarintOverflow { what: "table id" })?;
        let flags = take_bytes(&mut input, 1, "table flags")?[0];
        let sequences = if flags & HAS_SEQUENCES != 0 {
            let n = read_len(&mut input, 1, "sequences")?;
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(read_varint(&mut input, "sequence")?);
            }
            Some(values)
        } else if flags != 0 {
            return Err(RowDecodeError::InvalidTag {
                what: "table flags",
                tag: u64::from(flags),
            });
        } else {
            None
        };
        let n = read_len(&mut input, 2, "entries")?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match take_bytes(&mut input, 1, "entry kind")?[0] {
                0 => ChangeKind::Insert,
                1 => ChangeKind::Update,
                2 => ChangeKind::Delete,
                tag => {
                    return Err(RowDecodeError::InvalidTag {
                        what: "entry kind",
                        tag: u64::from(tag),
                    });
                }
            };
            let pk_len = read_len(&mut input, 1, "primary key")?;
            let pk = take_bytes(&mut input, pk_len, "primary key")?;
            let row = if kind == ChangeKind::Delete {
                None
            } else {
                let row_len = read_len(&mut input, 1, "row")?;
                Some(take_bytes(&mut input, row_len, "row")?)
            };
            entries.push(EntryRef {
                kind,
                pk,
                row,
                entity: None,
            });
        }
        tables.push(TableRef {
            table,
            sequences,
            entries,
        });
    }
    let mut connections = Vec::new();
    if version >= 2 {
        let n = read_len(&mut input, 41, "connection events")?;
        for _ in 0..n {
            let event = take_bytes(&mut input, 41, "connection event")?;
            let connected = match event[0] {
                0 => true,
                1 => false,
                tag => {
                    return Err(RowDecodeError::InvalidTag {
                        what: "connection event",
                        tag: u64::from(tag),
                    });
                }
            };
            let mut identity = [0u8; 32];
            identity.copy_from_slice(&event[9..41]);
            connections.push(ConnectionEvent {
                connected,
                connection: ConnectionId(u64_at(event, 1)),
                identity: Identity::from_bytes(identity),
            });
        }
    }
    let replay = if version >= 3 {
        decode_replay(&mut input)?
    } else {
        None
    };
    if !input.is_empty() {
        return Err(RowDecodeError::TrailingBytes(input.len()));
    }
    Ok(TickRecord {
        seq,
        micros,
        tables,
        connections,
        replay,
    })
}

/// Outcome of reading the frame at the front of `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete record with a correct CRC.
    Valid {
        /// Its sequence.
        seq: u64,
        /// Its payload.
        payload: &'a [u8],
        /// Total framed length.
        len: usize,
    },
    /// Not a valid record (short, overlong or CRC mismatch).
    Invalid,
}

/// Reads the record frame at the front of `bytes`.
pub(crate) fn read_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Frame::Invalid;
    }
    let len = u32_at(bytes, 0) as usize;
    let Some(total) = len.checked_add(RECORD_HEADER_LEN) else {
        return Frame::Invalid;
    };
    if total > bytes.len() || len < 12 {
        return Frame::Invalid;
    }
    let frame = &bytes[..total];
    if record_crc(frame) != u32_at(frame, 4) {
        return Frame::Invalid;
    }
    Frame::Valid {
        seq: u64_at(frame, 8),
        payload: &frame[RECORD_HEADER_LEN..],
        len: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Vec<u8> {
        record_with(seq, None)
    }

    fn record_with(seq: u64, replay: Option<&ReplayRef<'_>>) -> Vec<u8> {
        let mut builder = RecordBuilder::new(Vec::new(), seq, -7);
        builder.table(3, Some(&[5, 1 << 40]), 3);
        builder.entry(ChangeKind::Insert, &[1], Some(&[10, 11]));
        builder.entry(ChangeKind::Update, &[2], Some(&[]));
        builder.entry(ChangeKind::Delete, &[3, 3], None);
        builder.table(0, None, 0);
        builder.connections(&[ConnectionEvent {
            connected: true,
            connection: ConnectionId(9),
            identity: Identity::from_u64(4),
        }]);
        builder.replay(replay);
        let mut frame = builder.finish().unwrap();
        seal_record(&mut frame);
        frame
    }

    #[test]
    fn records_round_trip() {
        let frame = record(42);
        let Frame::Valid { seq, payload, len } = read_frame(&frame) else {
            panic!("valid frame expected");
        };
        assert_eq!((seq, len), (42, frame.len()));
        let decoded = decode_payload(seq, payload, FORMAT_VERSION).unwrap();
        assert_eq!(decoded.micros, -7);
        assert_eq!(decoded.tables.len(), 2);
        assert_eq!(
            decoded.connections,
            [ConnectionEvent {
                connected: true,
                connection: ConnectionId(9),
                identity: Identity::from_u64(4),
            }]
        );
        assert_eq!(decoded.tables[0].table, 3);
        assert_eq!(decoded.tables[0].sequences, Some(vec![5, 1 << 40]));
        assert_eq!(
            decoded.tables[0].entries,
            vec![
                EntryRef {
                    kind: ChangeKind::Insert,
                    pk: &[1],
                    row: Some(&[10, 11]),
                    entity: None,
                },
                EntryRef {
                    kind: ChangeKind::Update,
                    pk: &[2],
                    row: Some(&[]),
                    entity: None,
                },
                EntryRef {
                    kind: ChangeKind::Delete,
                    pk: &[3, 3],
                    row: None,
                    entity: None,
                },
            ]
        );
        assert_eq!(decoded.tables[1].sequences, None);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_detected() {
        let frame = record(9);
        for cut in 0..frame.len() {
            assert_eq!(read_frame(&frame[..cut]), Frame::Invalid, "cut at {cut}");
        }
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(read_frame(&bad), Frame::Invalid, "bit {bit}");
        }
    }

    #[test]
    fn segment_headers_round_trip_and_detect_damage() {
        let header = segment_header(77, 0xabcd);
        assert_eq!(
            parse_segment_header(&header),
            Ok(SegmentHeader {
                first_seq: 77,
                version: FORMAT_VERSION,
                schema: 0xabcd
            })
        );
        assert_eq!(
            parse_segment_header(&header[..10]),
            Err(HeaderProblem::Short)
        );
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut bad = header;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_segment_header(&bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let frame = record(1);
        let payload = &frame[RECORD_HEADER_LEN..];
        for cut in 0..payload.len() {
            assert!(
                decode_payload(1, &payload[..cut], FORMAT_VERSION).is_err(),
                "cut at {cut}"
            );
        }
        let mut huge = payload.to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_payload(1, &huge, FORMAT_VERSION).is_err());
    }

    #[test]
    fn version_one_payloads_without_a_watermark_still_decode() {
        let mut frame = record(5);
        set_synced_before(&mut frame, 4);
        // Format 2: no input-log section (the last byte, a zero flag).
        let payload = &frame[RECORD_HEADER_LEN..frame.len() - 1];
        assert_eq!(synced_before(payload, 2), 4);
        // Format 1: no watermark, no connection events.
        let mut old = payload[..8].to_vec();
        old.extend_from_slice(&payload[16..payload.len() - 42]);
        assert_eq!(synced_before(&old, 1), 0);
        let (new, old) = (
            decode_payload(5, payload, 2).unwrap(),
            decode_payload(5, &old, 1).unwrap(),
        );
        assert_eq!(new.tables, old.tables);
        assert_eq!(new.connections.len(), 1);
        assert!(old.connections.is_empty());
    }

    fn section() -> ReplayRef<'static> {
        ReplayRef {
            session_start: true,
            seed: u64::MAX - 3,
            dt_micros: 50_000,
            state_hash: 0x1234_5678_9abc_def0,
            count: 2,
            inputs: &[1, 2, 3, 4, 5],
        }
    }

    #[test]
    fn input_log_sections_round_trip_and_cuts_fail() {
        let section = section();
        let frame = record_with(3, Some(&section));
        let payload = &frame[RECORD_HEADER_LEN..];
        let decoded = decode_payload(3, payload, FORMAT_VERSION).unwrap();
        assert_eq!(decoded.replay, Some(section));
        assert_eq!(decoded.connections.len(), 1);
        for cut in 0..payload.len() {
            assert!(decode_payload(3, &payload[..cut], FORMAT_VERSION).is_err());
        }
        let none = record(3);
        let decoded = decode_payload(3, &none[RECORD_HEADER_LEN..], FORMAT_VERSION).unwrap();
        assert_eq!(decoded.replay, None);
        // Unknown flag bits are an error, not ignored.
        let mut bad = none[RECORD_HEADER_LEN..].to_vec();
        *bad.last_mut().unwrap() = 4;
        assert!(decode_payload(3, &bad, FORMAT_VERSION).is_err());
    }

    proptest::proptest! {
        /// The record decoder is total: a payload with any byte changed or any bytes at all
        /// decodes or fails, never panics.
        #[test]
        fn the_payload_decoder_never_panics(
            at in 0usize..400,
            value in proptest::prelude::any::<u8>(),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let section = section();
            let frame = record_with(3, Some(&section));
            let mut payload = frame[RECORD_HEADER_LEN..].to_vec();
            let at = at % payload.len();
            payload[at] = value;
            for version in 1..=FORMAT_VERSION {
                let _ = decode_payload(3, &payload, version);
                let _ = decode_payload(3, &garbage, version);
            }
        }
    }
}
