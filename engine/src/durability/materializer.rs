//! The snapshot materializer: a thread that keeps its own copy of every durable table, fed
//! by the commit records the log writer has written, and writes snapshots from that copy.
//! The tick thread never encodes a snapshot: its only durability work per tick stays the
//! record it already builds for the log.
//!
//! Why a materialized copy rather than copy-on-write of the world: the world's rows live in
//! bevy's tables, which only the tick thread may touch, and a consistent dump would have to
//! either stop the world or keep pre-images of every row written while the dump runs. The
//! records already hold every durable change in its stored form, in order, off the tick
//! thread; applying them to a compact copy costs the materializer about what the log writer
//! costs, and a snapshot is then a sequential write of that copy.
//!
//! Memory: per table, rows in 1 MiB chunks as `[status][varint pk length][varint row
//! length][pk][row]` entries, and a hash table of entry positions keyed by the primary key
//! bytes in the chunks: about 3 bytes of header and 9–18 bytes of index per row besides the
//! row and its key. Updates of the same length are written in place; others append and leave
//! a dead entry, compacted when dead bytes pass an eighth of the table. A snapshot is
//! streamed from the chunks to the file in write order, never built in memory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::record::{self, TickRecord};
use super::snapshot::{self, snapshot_path};
use super::{DurabilityError, Shared};
use crate::changes::ChangeKind;
use crate::codec::write_varint;
use crate::identity::{ConnectionId, Identity};

/// When the materializer writes a snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SnapshotPolicy {
    /// After this many ticks since the last snapshot (0: never by ticks).
    pub(crate) every_ticks: u64,
    /// After this many bytes of log records since the last snapshot (0: never by bytes).
    pub(crate) every_log_bytes: u64,
    /// Delete what the two newest snapshots make unnecessary.
    pub(crate) prune: bool,
}

/// Rows live in chunks of this many bytes (a row longer than that gets a chunk of its own), so
/// the copy never holds more than one chunk of growth slack.
const CHUNK: usize = 1 << 20;
const LIVE: u8 = 1;
const DEAD: u8 = 0;

/// Where an entry starts: chunk index in the high 32 bits, offset in the chunk in the low.
type EntryRef = u64;

fn entry_ref(chunk: usize, offset: usize) -> EntryRef {
    ((chunk as u64) << 32) | offset as u64
}

/// An entry: status byte, varint pk length, varint row length, pk, row.
struct Entry<'a> {
    live: bool,
    pk: &'a [u8],
    row: &'a [u8],
    /// Total bytes the entry takes.
    len: usize,
}

fn read_varint_at(bytes: &[u8], at: &mut usize) -> usize {
    let mut value = 0usize;
    let mut shift = 0;
    while let Some(&byte) = bytes.get(*at) {
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    value
}

fn entry_in(chunk: &[u8], offset: usize) -> Entry<'_> {
    let mut at = offset + 1;
    let pk_len = read_varint_at(chunk, &mut at);
    let row_len = read_varint_at(chunk, &mut at);
    Entry {
        live: chunk[offset] == LIVE,
        pk: &chunk[at..at + pk_len],
        row: &chunk[at + pk_len..at + pk_len + row_len],
        len: at + pk_len + row_len - offset,
    }
}

fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// One durable table's rows in stored form.
pub(crate) struct TableCopy {
    id: u32,
    name: String,
    sequences: Vec<u64>,
    chunks: Vec<Vec<u8>>,
    index: HashTable<EntryRef>,
    hasher: foldhash::fast::RandomState,
    live: u64,
    bytes: usize,
    garbage: usize,
}

impl TableCopy {
    /// An empty copy of durable table `id`.
    pub(crate) fn new(id: u32, name: String) -> Self {
        TableCopy {
            id,
            name,
            sequences: Vec::new(),
            chunks: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            live: 0,
            bytes: 0,
            garbage: 0,
        }
    }

    fn entry(chunks: &[Vec<u8>], at: EntryRef) -> Entry<'_> {
        entry_in(&chunks[(at >> 32) as usize], (at & 0xffff_ffff) as usize)
    }

    fn append(&mut self, pk: &[u8], row: &[u8]) -> EntryRef {
        let len = 1 + varint_len(pk.len()) + varint_len(row.len()) + pk.len() + row.len();
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= len);
        if !fits {
            self.chunks.push(Vec::with_capacity(CHUNK.max(len)));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let offset = chunk.len();
        chunk.push(LIVE);
        write_varint(chunk, pk.len() as u64);
        write_varint(chunk, row.len() as u64);
        chunk.extend_from_slice(pk);
        chunk.extend_from_slice(row);
        self.bytes += len;
        entry_ref(index, offset)
    }

    fn kill(&mut self, at: EntryRef) {
        let len = Self::entry(&self.chunks, at).len;
        self.chunks[(at >> 32) as usize][(at & 0xffff_ffff) as usize] = DEAD;
        self.garbage += len;
    }

    /// Inserts or replaces the row with primary key `pk`.
    pub(crate) fn upsert(&mut self, pk: &[u8], row: &[u8]) {
        let hash = self.hasher.hash_one(pk);
        let chunks = &self.chunks;
        if let Some(&at) = self
            .index
            .find(hash, |&at| Self::entry(chunks, at).pk == pk)
        {
            let old = Self::entry(&self.chunks, at);
            if old.row.len() == row.len() {
                let start = (at & 0xffff_ffff) as usize + old.len - row.len();
                self.chunks[(at >> 32) as usize][start..start + row.len()].copy_from_slice(row);
                return;
            }
            self.kill(at);
            let new = self.append(pk, row);
            if let Some(slot) = self.index.find_mut(hash, |&r| r == at) {
                *slot = new;
            }
            self.maybe_compact();
            return;
        }
        let at = self.append(pk, row);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index
            .insert_unique(hash, at, |&r| hasher.hash_one(Self::entry(chunks, r).pk));
        self.live += 1;
    }

    /// Removes the row with primary key `pk`, if present.
    pub(crate) fn delete(&mut self, pk: &[u8]) {
        let hash = self.hasher.hash_one(pk);
        let chunks = &self.chunks;
        let Ok(found) = self
            .index
            .find_entry(hash, |&at| Self::entry(chunks, at).pk == pk)
        else {
            return;
        };
        let (at, _) = found.remove();
        self.kill(at);
        self.live -= 1;
        self.maybe_compact();
    }

    /// Rewrites the chunks without dead entries once they are an eighth of the bytes, and
    /// re-indexes (entry positions change).
    fn maybe_compact(&mut self) {
        if self.garbage < CHUNK || self.garbage * 8 < self.bytes {
            return;
        }
        let old = std::mem::take(&mut self.chunks);
        self.bytes = 0;
        self.garbage = 0;
        self.index.clear();
        for chunk in &old {
            let mut offset = 0;
            while offset < chunk.len() {
                let entry = entry_in(chunk, offset);
                offset += entry.len;
                if entry.live {
                    let at = self.append(entry.pk, entry.row);
                    let hash = self.hasher.hash_one(entry.pk);
                    let (chunks, hasher) = (&self.chunks, &self.hasher);
                    self.index
                        .insert_unique(hash, at, |&r| hasher.hash_one(Self::entry(chunks, r).pk));
                }
            }
        }
    }

    /// The live rows, in the order they were written (deterministic for a given history).
    fn rows(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().flat_map(|chunk| {
            let mut offset = 0;
            std::iter::from_fn(move || {
                while offset < chunk.len() {
                    let entry = entry_in(chunk, offset);
                    offset += entry.len;
                    if entry.live {
                        return Some(entry.row);
                    }
                }
                None
            })
        })
    }

    /// Sets the table's auto-increment sequences.
    pub(crate) fn set_sequences(&mut self, sequences: &[u64]) {
        self.sequences = sequences.to_vec();
    }

    /// Bytes the copy holds (chunks and index), for the memory report.
    pub(crate) fn memory(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>() + self.index.capacity() * 9
    }
}

/// The durable state as of the last applied record.
pub(crate) struct Materialized {
    pub(crate) seq: u64,
    pub(crate) micros: i64,
    pub(crate) tables: Vec<TableCopy>,
    pub(crate) connections: BTreeMap<ConnectionId, Identity>,
    /// Position of each durable table id in `tables`.
    by_id: Vec<Option<usize>>,
}

impl Materialized {
    /// A copy with `tables` (durable tables, in id order) as of tick `seq`.
    pub(crate) fn new(
        seq: u64,
        micros: i64,
        tables: Vec<TableCopy>,
        connections: BTreeMap<ConnectionId, Identity>,
    ) -> Self {
        let mut by_id = Vec::new();
        for (position, table) in tables.iter().enumerate() {
            let id = table.id as usize;
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            by_id[id] = Some(position);
        }
        Materialized {
            seq,
            micros,
            tables,
            connections,
            by_id,
        }
    }

    /// The table copy of durable table `id`.
    pub(crate) fn table_mut(&mut self, id: u32) -> Option<&mut TableCopy> {
        let position = (*self.by_id.get(id as usize)?)?;
        self.tables.get_mut(position)
    }

    /// Applies one tick's record.
    pub(crate) fn apply(&mut self, record: &TickRecord<'_>) {
        for section in &record.tables {
            let Some(table) = self.table_mut(section.table) else {
                continue;
            };
            if let Some(sequences) = &section.sequences {
                table.sequences.clone_from(sequences);
            }
            for entry in &section.entries {
                match (entry.kind, entry.row) {
                    (ChangeKind::Delete, _) => table.delete(entry.pk),
                    (_, Some(row)) => table.upsert(entry.pk, row),
                    (_, None) => {}
                }
            }
        }
        for event in &record.connections {
            if event.connected {
                self.connections.insert(event.connection, event.identity);
            } else {
                self.connections.remove(&event.connection);
            }
        }
        self.seq = record.seq;
        self.micros = record.micros;
    }

    /// Bytes held by all table copies.
    pub(crate) fn memory(&self) -> usize {
        self.tables.iter().map(TableCopy::memory).sum()
    }

    /// Streams the snapshot of this state to `out` (the format of [`snapshot::encode`]).
    fn write_snapshot(&self, out: &mut impl Write, schema: u32) -> std::io::Result<()> {
        let mut crc = 0u32;
        let mut put = |out: &mut dyn Write, bytes: &[u8]| -> std::io::Result<()> {
            crc = crc32c::crc32c_append(crc, bytes);
            out.write_all(bytes)
        };
        let mut head = Vec::with_capacity(64);
        head.extend_from_slice(&snapshot::MAGIC);
        head.extend_from_slice(&snapshot::VERSION.to_le_bytes());
        head.extend_from_slice(&schema.to_le_bytes());
        head.extend_from_slice(&self.seq.to_le_bytes());
        head.extend_from_slice(&self.micros.to_le_bytes());
        head.extend_from_slice(&(self.tables.len() as u32).to_le_bytes());
        put(out, &head)?;
        let mut chunk = Vec::with_capacity(1 << 16);
        for table in &self.tables {
            chunk.clear();
            write_varint(&mut chunk, u64::from(table.id));
            write_varint(&mut chunk, table.name.len() as u64);
            chunk.extend_from_slice(table.name.as_bytes());
            write_varint(&mut chunk, table.sequences.len() as u64);
            for &value in &table.sequences {
                write_varint(&mut chunk, value);
            }
            let rows_len: u64 = table.rows().map(|r| 4 + r.len() as u64).sum();
            chunk.extend_from_slice(&table.live.to_le_bytes());
            chunk.extend_from_slice(&rows_len.to_le_bytes());
            put(out, &chunk)?;
            chunk.clear();
            for row in table.rows() {
                chunk.extend_from_slice(&(row.len() as u32).to_le_bytes());
                chunk.extend_from_slice(row);
                if chunk.len() >= 1 << 16 {
                    put(out, &chunk)?;
                    chunk.clear();
                }
            }
            put(out, &chunk)?;
        }
        chunk.clear();
        write_varint(&mut chunk, self.connections.len() as u64);
        for (connection, identity) in &self.connections {
            chunk.extend_from_slice(&connection.0.to_le_bytes());
            chunk.extend_from_slice(identity.as_bytes());
        }
        put(out, &chunk)?;
        out.write_all(&crc.to_le_bytes())
    }
}

/// A record the writer has written, for the materializer.
pub(crate) struct Written {
    pub(crate) seq: u64,
    pub(crate) frame: Vec<u8>,
}

/// The materializer thread's handle.
pub(crate) struct Materializer {
    thread: Option<JoinHandle<()>>,
}

impl Materializer {
    /// Starts the thread with `state` (the recovered durable state); it applies every record
    /// received on `records` and returns their buffers on `recycle`.
    pub(crate) fn spawn(
        dir: PathBuf,
        mut state: Materialized,
        records: Receiver<Written>,
        recycle: Sender<Vec<u8>>,
        shared: Arc<Shared>,
        policy: SnapshotPolicy,
        schema: u32,
    ) -> Result<Materializer, DurabilityError> {
        let thread = std::thread::Builder::new()
            .name("orrery-snapshot".into())
            .spawn(move || {
                let mut since = (state.seq, 0u64);
                for written in records {
                    match record::read_frame(&written.frame) {
                        record::Frame::Valid { payload, .. } => {
                            match record::decode_payload(
                                written.seq,
                                payload,
                                record::FORMAT_VERSION,
                            ) {
                                Ok(decoded) => state.apply(&decoded),
                                Err(error) => {
                                    // Cannot happen for a record this build encoded; the log
                                    // stays authoritative, snapshots stop.
                                    tracing::error!(seq = written.seq, %error, "materializer could not decode a record; no more snapshots");
                                    return;
                                }
                            }
                        }
                        record::Frame::Invalid => {
                            tracing::error!(seq = written.seq, "materializer got an invalid frame; no more snapshots");
                            return;
                        }
                    }
                    since.1 += written.frame.len() as u64;
                    shared.set_materialized_bytes(state.memory() as u64);
                    let _ = recycle.send(written.frame);
                    let due = (policy.every_ticks > 0
                        && state.seq.saturating_sub(since.0) >= policy.every_ticks)
                        || (policy.every_log_bytes > 0 && since.1 >= policy.every_log_bytes);
                    if due && shared.failure().is_none() {
                        write_snapshot(&dir, &state, &shared, policy.prune, schema);
                        since = (state.seq, 0);
                    }
                }
            })
            .map_err(|e| DurabilityError::io("spawn snapshot thread for", Path::new("."), e))?;
        Ok(Materializer {
            thread: Some(thread),
        })
    }

    /// Waits for the thread (after the writer, its only sender, has stopped).
    pub(crate) fn close(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_snapshot(dir: &Path, state: &Materialized, shared: &Shared, prune: bool, schema: u32) {
    let seq = state.seq;
    let started = Instant::now();
    let _span = tracing::debug_span!("snapshot_write", seq).entered();
    // A snapshot never gets ahead of the log: recovery relies on every record up to a
    // snapshot's tick being in the log (or pruned because a snapshot covers it).
    while !shared.wait(seq, Duration::from_secs(1)) {
        if shared.failure().is_some() {
            return;
        }
    }
    let temp = snapshot::temp_path(dir, seq);
    let path = snapshot_path(dir, seq);
    let fail = |op: &str, p: &Path, e: std::io::Error| format!("{op} {}: {e}", p.display());
    let result = (|| {
        let file = File::create(&temp).map_err(|e| fail("create", &temp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        state
            .write_snapshot(&mut out, schema)
            .map_err(|e| fail("write", &temp, e))?;
        let file = out
            .into_inner()
            .map_err(|e| fail("write", &temp, e.into_error()))?;
        file.sync_all().map_err(|e| fail("fsync", &temp, e))?;
        drop(file);
        fs::rename(&temp, &path).map_err(|e| fail("rename", &temp, e))?;
        super::log::sync_dir(dir).map_err(|e| fail("fsync", dir, e))
    })();
    match result {
        Ok(()) => {
            tracing::debug!(
                path = %path.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot written"
            );
            shared.set_snapshot(seq);
            if prune && let Err(error) = snapshot::prune(dir) {
                tracing::warn!(%error, "pruning after snapshot failed");
            }
        }
        // The log stays authoritative: a failed snapshot costs replay time, not data.
        Err(error) => {
            let _ = fs::remove_file(&temp);
            tracing::error!(seq, %error, "snapshot failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Random upserts (same and other lengths) and deletes, enough to compact several times:
    /// the copy always holds exactly the model's rows, in a deterministic order.
    #[test]
    fn the_copy_matches_a_model_through_updates_deletes_and_compaction() {
        let run = || {
            let mut copy = TableCopy::new(0, "t".into());
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for step in 0..60_000u64 {
                let key = (next() % 3_000).to_le_bytes().to_vec();
                if next() % 5 == 0 {
                    copy.delete(&key);
                    model.remove(&key);
                } else {
                    let len = 100 + (next() % 3) as usize * 200;
                    let row = vec![(step % 251) as u8; len];
                    copy.upsert(&key, &row);
                    model.insert(key, row);
                }
            }
            assert_eq!(copy.live, model.len() as u64);
            let mut rows: Vec<Vec<u8>> = copy.rows().map(<[u8]>::to_vec).collect();
            let order = rows.clone();
            rows.sort();
            let mut expected: Vec<Vec<u8>> = model.values().cloned().collect();
            expected.sort();
            assert_eq!(rows, expected);
            for (key, row) in &model {
                let hash = copy.hasher.hash_one(key.as_slice());
                let at = copy
                    .index
                    .find(hash, |&at| {
                        TableCopy::entry(&copy.chunks, at).pk == key.as_slice()
                    })
                    .copied()
                    .expect("indexed");
                assert_eq!(TableCopy::entry(&copy.chunks, at).row, row.as_slice());
            }
            assert!(copy.garbage * 8 < copy.bytes + 8 * CHUNK, "compacted");
            order
        };
        assert_eq!(run(), run(), "row order does not depend on the hash seed");
    }
}
