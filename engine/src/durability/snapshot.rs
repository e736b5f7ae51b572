//! Snapshots: the file format, reading and validating a snapshot file, listing and pruning.
//! Snapshots are written by the materializer thread (`materializer.rs`) from its own copy
//! of the durable tables, never by the tick thread.

use std::fs;
use std::path::{Path, PathBuf};

use super::DurabilityError;
use super::log::prune_segments;
use super::record::{u32_at, u64_at};
use crate::codec::{read_len, read_varint, take_bytes};
use crate::identity::{ConnectionId, Identity};

/// First bytes of every snapshot file.
pub(crate) const MAGIC: [u8; 8] = *b"ORRYSNAP";
/// Version 2 added the open connections after the tables; version 1 files are still read.
pub(crate) const VERSION: u32 = 2;
/// Magic (8) + version (4) + reserved (4) + sequence (8) + timestamp (8) + table count (4).
const HEADER_LEN: usize = 36;
const EXT: &str = "snapshot";
/// How many snapshots pruning keeps (the newest may be damaged; the one before backs it up).
const KEEP: usize = 2;

pub(crate) fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

pub(crate) fn temp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}.tmp"))
}

/// The snapshots in `dir`, newest first.
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DurabilityError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| DurabilityError::io("list", dir, e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| DurabilityError::io("list", dir, e))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, path));
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(found)
}

/// Removes temp files of snapshots whose writing was interrupted.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), DurabilityError> {
    let entries = fs::read_dir(dir).map_err(|e| DurabilityError::io("list", dir, e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| DurabilityError::io("list", dir, e))?
            .path();
        if path.to_str().is_some_and(|p| p.ends_with(".snapshot.tmp")) {
            tracing::info!(path = %path.display(), "removing an unfinished snapshot");
            fs::remove_file(&path).map_err(|e| DurabilityError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// One table of a snapshot.
pub(crate) struct SnapshotTable<'a> {
    pub(crate) id: u32,
    pub(crate) name: &'a str,
    pub(crate) sequences: Vec<u64>,
    pub(crate) rows: u64,
    pub(crate) row_bytes: &'a [u8],
}

/// A snapshot file, validated (magic, version, CRC, structure).
pub(crate) struct Snapshot {
    pub(crate) path: PathBuf,
    pub(crate) seq: u64,
    pub(crate) micros: i64,
    version: u32,
    /// Fingerprint of the schema that wrote it (0: an older file without one).
    pub(crate) schema: u32,
    bytes: Vec<u8>,
}

impl Snapshot {
    /// Reads and validates a snapshot file.
    pub(crate) fn read(path: &Path) -> Result<Snapshot, DurabilityError> {
        let bytes = fs::read(path).map_err(|e| DurabilityError::io("read", path, e))?;
        let invalid = |detail: String| DurabilityError::Snapshot {
            path: path.to_owned(),
            detail,
        };
        if bytes.len() < HEADER_LEN + 4 || bytes[..8] != MAGIC {
            return Err(invalid(
                "not a snapshot file (bad magic or too short)".into(),
            ));
        }
        let body = bytes.len() - 4;
        if crc32c::crc32c(&bytes[..body]) != u32_at(&bytes, body) {
            return Err(invalid("CRC mismatch".into()));
        }
        let version = u32_at(&bytes, 8);
        if !(1..=VERSION).contains(&version) {
            return Err(DurabilityError::Version {
                path: path.to_owned(),
                version,
            });
        }
        let snapshot = Snapshot {
            path: path.to_owned(),
            seq: u64_at(&bytes, 16),
            micros: u64_at(&bytes, 24) as i64,
            version,
            schema: u32_at(&bytes, 12),
            bytes,
        };
        snapshot.contents().map_err(invalid)?;
        Ok(snapshot)
    }

    /// The tables, in file order.
    pub(crate) fn tables(&self) -> Result<Vec<SnapshotTable<'_>>, String> {
        self.contents().map(|(tables, _)| tables)
    }

    /// The connections open at the snapshot's tick (none in a version 1 file).
    pub(crate) fn connections(&self) -> Result<Vec<(ConnectionId, Identity)>, String> {
        self.contents().map(|(_, connections)| connections)
    }

    #[allow(clippy::type_complexity)]
    fn contents(&self) -> Result<(Vec<SnapshotTable<'_>>, Vec<(ConnectionId, Identity)>), String> {
        let body = &self.bytes[..self.bytes.len() - 4];
        let count = u32_at(body, 32);
        let mut input = &body[HEADER_LEN..];
        let mut tables = Vec::new();
        for _ in 0..count {
            let id = u32::try_from(read_varint(&mut input, "table id").map_err(|e| e.to_string())?)
                .map_err(|_| "table id out of range".to_owned())?;
            let name_len = read_len(&mut input, 1, "table name").map_err(|e| e.to_string())?;
            let name = std::str::from_utf8(
                take_bytes(&mut input, name_len, "table name").map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let n = read_len(&mut input, 1, "sequences").map_err(|e| e.to_string())?;
            let mut sequences = Vec::with_capacity(n);
            for _ in 0..n {
                sequences.push(read_varint(&mut input, "sequence").map_err(|e| e.to_string())?);
            }
            let counts = take_bytes(&mut input, 16, "row counts").map_err(|e| e.to_string())?;
            let rows = u64_at(counts, 0);
            let rows_len = usize::try_from(u64_at(counts, 8)).unwrap_or(usize::MAX);
            let row_bytes = take_bytes(&mut input, rows_len, "rows").map_err(|e| e.to_string())?;
            tables.push(SnapshotTable {
                id,
                name,
                sequences,
                rows,
                row_bytes,
            });
        }
        let mut connections = Vec::new();
        if self.version >= 2 {
            let n = read_len(&mut input, 40, "connections").map_err(|e| e.to_string())?;
            for _ in 0..n {
                let entry = take_bytes(&mut input, 40, "connection").map_err(|e| e.to_string())?;
                let mut identity = [0u8; 32];
                identity.copy_from_slice(&entry[8..40]);
                connections.push((
                    ConnectionId(u64_at(entry, 0)),
                    Identity::from_bytes(identity),
                ));
            }
        }
        if !input.is_empty() {
            return Err(format!("{} bytes after the last section", input.len()));
        }
        Ok((tables, connections))
    }
}

/// Deletes all but the newest [`KEEP`] snapshots and the segments the oldest kept one covers.
pub(crate) fn prune(dir: &Path) -> Result<(), DurabilityError> {
    let snapshots = list_snapshots(dir)?;
    let Some(&(covered, _)) = snapshots.get(KEEP - 1) else {
        return Ok(());
    };
    for (_, path) in snapshots.iter().skip(KEEP) {
        fs::remove_file(path).map_err(|e| DurabilityError::io("remove snapshot", path, e))?;
    }
    prune_segments(dir, covered)?;
    Ok(())
}
