//! The commit log on disk: segment file naming and listing, the writer thread (group commit,
//! fsync policy, segment rotation, failure handling) and the reader that recovery uses
//! (validation of every record, the torn-tail rule, truncation of a torn tail).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use super::materializer::Written;
use super::record::{
    self, Frame, HeaderProblem, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, TickRecord,
};
use super::{DurabilityError, FsyncPolicy, Shared};

/// Extension of segment files; the stem is the first tick sequence, zero-padded to 20 digits.
const SEGMENT_EXT: &str = "log";

/// One segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    pub(crate) first_seq: u64,
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

/// The segments in `dir`, by first sequence.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, DurabilityError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| DurabilityError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DurabilityError::io("list", dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let Some(first_seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(SegmentFile { path, first_seq });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Fsyncs a directory, so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One tick's framed record on its way to the writer (CRC not yet filled in).
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) frame: Vec<u8>,
}

/// Where the writer appends.
pub(crate) enum AppendAt {
    /// An existing segment, already truncated to its valid length.
    Existing { path: PathBuf, len: u64 },
    /// Start a new segment with the next record.
    New,
}

pub(crate) struct WriterConfig {
    pub(crate) dir: PathBuf,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) segment_max_bytes: u64,
    pub(crate) fail_after_bytes: Option<u64>,
    /// The module schema's fingerprint, written into each new segment's header.
    pub(crate) schema: u32,
}

struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
}

/// The writer thread's state.
pub(crate) struct LogWriter {
    config: WriterConfig,
    shared: Arc<Shared>,
    recycle: Sender<Vec<u8>>,
    /// Where written records go next (the snapshot materializer), if anywhere.
    materializer: Option<Sender<Written>>,
    segment: Option<Segment>,
    /// Bytes left before the injected fault, if any.
    budget: Option<u64>,
    written: u64,
    synced: u64,
    last_sync: Instant,
}

/// Buffers bigger than this are not recycled.
const RECYCLE_MAX: usize = 64 << 20;
/// A batch stops growing at this many bytes.
const BATCH_MAX: usize = 64 << 20;

impl LogWriter {
    pub(crate) fn open(
        config: WriterConfig,
        at: AppendAt,
        last_seq: u64,
        shared: Arc<Shared>,
        recycle: Sender<Vec<u8>>,
        materializer: Option<Sender<Written>>,
    ) -> Result<LogWriter, DurabilityError> {
        let segment = match at {
            AppendAt::Existing { path, len } => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| DurabilityError::io("open segment", &path, e))?;
                Some(Segment { file, path, len })
            }
            AppendAt::New => None,
        };
        Ok(LogWriter {
            budget: config.fail_after_bytes,
            config,
            shared,
            recycle,
            materializer,
            segment,
            written: last_seq,
            synced: last_seq,
            last_sync: Instant::now(),
        })
    }

    /// The thread body: runs until the engine drops its sender, then fsyncs and returns. Stops
    /// at the first error, leaving the shared state failed.
    pub(crate) fn run(mut self, records: Receiver<Record>) {
        let mut batch: Vec<Record> = Vec::new();
        loop {
            let first = match self.config.fsync {
                FsyncPolicy::Interval(every) if self.synced < self.written => {
                    let wait = every.saturating_sub(self.last_sync.elapsed());
                    match records.recv_timeout(wait) {
                        Ok(record) => Some(record),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match records.recv() {
                    Ok(record) => Some(record),
                    Err(_) => break,
                },
            };
            let mut bytes = 0;
            if let Some(record) = first {
                bytes += record.frame.len();
                batch.push(record);
                while bytes < BATCH_MAX {
                    let Ok(record) = records.try_recv() else {
                        break;
                    };
                    bytes += record.frame.len();
                    batch.push(record);
                }
            }
            if let Err(error) = self.write_batch(&mut batch) {
                self.shared.fail(error);
                return;
            }
            let due = match self.config.fsync {
                FsyncPolicy::EveryTick => true,
                FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
            let result = if due {
                self.sync()
            } else {
                if self.config.fsync == FsyncPolicy::Never {
                    self.shared.set_durable(self.written);
                }
                Ok(())
            };
            if let Err(error) = result {
                self.shared.fail(error);
                return;
            }
        }
        if let Err(error) = self.sync() {
            self.shared.fail(error);
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Record>) -> Result<(), String> {
        let _span = tracing::trace_span!("log_write", records = batch.len()).entered();
        for mut record in batch.drain(..) {
            if record.seq != self.written + 1 {
                return Err(format!(
                    "commit log writer got tick {} after tick {}",
                    record.seq, self.written
                ));
            }
            let rotate = self.segment.as_ref().is_none_or(|s| {
                s.len > SEGMENT_HEADER_LEN as u64
                    && s.len + record.frame.len() as u64 > self.config.segment_max_bytes
            });
            if rotate {
                self.rotate(record.seq)?;
            }
            record::set_synced_before(&mut record.frame, self.synced);
            record::seal_record(&mut record.frame);
            let Some(segment) = self.segment.as_mut() else {
                return Err("no open segment".to_owned());
            };
            write_limited(&mut segment.file, &record.frame, &mut self.budget).map_err(|e| {
                format!(
                    "writing tick {} to {}: {e}",
                    record.seq,
                    segment.path.display()
                )
            })?;
            segment.len += record.frame.len() as u64;
            self.written = record.seq;
            // The materializer applies the record to its copy and recycles the buffer.
            let frame = match &self.materializer {
                Some(materializer) => match materializer.send(Written {
                    seq: record.seq,
                    frame: record.frame,
                }) {
                    Ok(()) => continue,
                    Err(returned) => returned.0.frame,
                },
                None => record.frame,
            };
            if frame.capacity() <= RECYCLE_MAX {
                let _ = self.recycle.send(frame);
            }
        }
        Ok(())
    }

    /// Closes the current segment (fsynced) and starts a new one whose first record is `seq`.
    fn rotate(&mut self, seq: u64) -> Result<(), String> {
        if self.segment.is_some() {
            self.sync()?;
        }
        let path = segment_path(&self.config.dir, seq);
        let fail = |op: &str, e: io::Error| format!("{op} {}: {e}", path.display());
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| fail("create segment", e))?;
        write_limited(
            &mut file,
            &record::segment_header(seq, self.config.schema),
            &mut self.budget,
        )
        .map_err(|e| fail("write segment header", e))?;
        file.sync_all().map_err(|e| fail("fsync segment", e))?;
        sync_dir(&self.config.dir).map_err(|e| fail("fsync directory of", e))?;
        self.segment = Some(Segment {
            file,
            path,
            len: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        if self.synced == self.written {
            self.last_sync = Instant::now();
            return Ok(());
        }
        if let Some(segment) = self.segment.as_mut() {
            let _span = tracing::trace_span!("log_fsync").entered();
            segment
                .file
                .sync_data()
                .map_err(|e| format!("fsync {}: {e}", segment.path.display()))?;
        }
        self.synced = self.written;
        self.last_sync = Instant::now();
        self.shared.set_durable(self.synced);
        Ok(())
    }
}

/// Writes `bytes`, honouring an injected fault budget: past it, the write is cut short and
/// fails as a full disk would.
fn write_limited(file: &mut File, bytes: &[u8], budget: &mut Option<u64>) -> io::Result<()> {
    if let Some(left) = budget.as_mut() {
        if (bytes.len() as u64) > *left {
            let cut = *left as usize;
            file.write_all(&bytes[..cut])?;
            *left = 0;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected fault)",
            ));
        }
        *left -= bytes.len() as u64;
    }
    file.write_all(bytes)
}

/// What reading the log found.
#[derive(Debug, Default)]
pub(crate) struct LogScan {
    /// Sequence and timestamp of the newest record applied, if any.
    pub(crate) last: Option<(u64, i64)>,
    /// The newest valid sequence seen, applied or not (0: none).
    pub(crate) last_seen: u64,
    /// Records applied (newer than the snapshot).
    pub(crate) replayed: u64,
    /// Bytes cut off a torn tail.
    pub(crate) truncated_bytes: u64,
    /// Records (at least partly) present in the torn tail.
    pub(crate) truncated_ticks: u64,
    /// Where the writer continues: the last segment, its valid length, format version and
    /// schema fingerprint.
    pub(crate) append: Option<(PathBuf, u64, u32, u32)>,
}

/// Reads every segment, applies each valid record with a sequence above `after` in order, and
/// truncates a torn tail. See `docs/durability.md` for the torn-tail rule.
pub(crate) fn replay(
    dir: &Path,
    after: u64,
    check_schema: &dyn Fn(u32, &Path) -> Result<(), DurabilityError>,
    apply: &mut dyn FnMut(&TickRecord<'_>) -> Result<(), String>,
) -> Result<LogScan, DurabilityError> {
    let segments = list_segments(dir)?;
    let mut scan = LogScan::default();
    let mut expected: Option<u64> = None;
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        // A segment whose successor starts at or before the first needed record is covered.
        if segments
            .get(i + 1)
            .is_some_and(|next| next.first_seq <= after.saturating_add(1))
        {
            continue;
        }
        let corrupt = |offset: usize, detail: String| DurabilityError::Corrupt {
            segment: segment.path.clone(),
            offset: offset as u64,
            detail,
        };
        let data =
            fs::read(&segment.path).map_err(|e| DurabilityError::io("read", &segment.path, e))?;
        let (version, segment_schema) = match record::parse_segment_header(&data) {
            Ok(header) if header.first_seq == segment.first_seq => {
                check_schema(header.schema, &segment.path)?;
                (header.version, header.schema)
            }
            Ok(SegmentHeader {
                first_seq: first, ..
            }) => {
                return Err(corrupt(
                    0,
                    format!(
                        "header says first tick {first}, file name says {}",
                        segment.first_seq
                    ),
                ));
            }
            Err(HeaderProblem::Version(version)) => {
                return Err(DurabilityError::Version {
                    path: segment.path.clone(),
                    version,
                });
            }
            Err(problem) => {
                let next = expected.unwrap_or(segment.first_seq);
                if !is_last || find_valid_record(&data, 0, next).is_some() {
                    return Err(corrupt(0, format!("segment header is {problem:?}")));
                }
                // A segment whose creation was cut short: nothing in it was ever durable.
                scan.truncated_bytes += data.len() as u64;
                scan.truncated_ticks += count_torn(&data, next);
                fs::remove_file(&segment.path)
                    .map_err(|e| DurabilityError::io("remove torn segment", &segment.path, e))?;
                sync_dir(dir).map_err(|e| DurabilityError::io("fsync", dir, e))?;
                warn_truncated(&segment.path, 0, &scan);
                break;
            }
        };
        let mut offset = SEGMENT_HEADER_LEN;
        let mut torn = false;
        while offset < data.len() {
            match record::read_frame(&data[offset..]) {
                Frame::Valid { seq, payload, len } => {
                    match expected {
                        Some(want) if seq != want => {
                            return Err(corrupt(
                                offset,
                                format!("expected tick {want}, found tick {seq}"),
                            ));
                        }
                        None if seq > after.saturating_add(1) => {
                            return Err(DurabilityError::Gap {
                                missing: after + 1,
                                found: seq,
                                segment: segment.path.clone(),
                            });
                        }
                        _ => {}
                    }
                    if offset == SEGMENT_HEADER_LEN && seq != segment.first_seq {
                        return Err(corrupt(
                            offset,
                            format!(
                                "first record is tick {seq}, segment starts at {}",
                                segment.first_seq
                            ),
                        ));
                    }
                    expected = Some(seq + 1);
                    if seq > after {
                        let decoded = record::decode_payload(seq, payload, version)
                            .map_err(|e| corrupt(offset, format!("tick {seq}: {e}")))?;
                        apply(&decoded).map_err(|detail| DurabilityError::Mismatch {
                            path: segment.path.clone(),
                            seq,
                            detail: format!("record at byte {offset}: {detail}"),
                        })?;
                        scan.replayed += 1;
                        scan.last = Some((seq, decoded.micros));
                    }
                    scan.last_seen = seq;
                    offset += len;
                }
                Frame::Invalid => {
                    let next = expected.unwrap_or(segment.first_seq);
                    if !is_last {
                        return Err(corrupt(
                            offset,
                            "record fails its length/CRC check in a closed segment".to_owned(),
                        ));
                    }
                    // Valid records after the bad one: if any says that tick `next` had been
                    // synced before it was written, the bad record is damage to synced data.
                    // If none does, the bad bytes belong to a group that was never synced, whose
                    // pages reached the disk out of order in a crash: a torn tail (format 1
                    // records carry no watermark, so any valid record after is corruption).
                    let mut vouched = None;
                    let mut from = offset + 1;
                    while let Some(valid) = find_valid_record(&data, from, next) {
                        let Frame::Valid { payload, len, .. } = record::read_frame(&data[valid..])
                        else {
                            break;
                        };
                        let synced = record::synced_before(payload, version);
                        if version < 2 || synced >= next {
                            vouched = Some((valid, synced));
                            break;
                        }
                        from = valid + len;
                    }
                    if let Some((valid, synced)) = vouched {
                        return Err(corrupt(
                            offset,
                            format!(
                                "record of tick {next} fails its length/CRC check, and the valid \
                                 record at byte {valid} was written after ticks up to {synced} \
                                 were synced: damage to synced data"
                            ),
                        ));
                    }
                    scan.truncated_bytes += (data.len() - offset) as u64;
                    scan.truncated_ticks += count_torn(&data[offset..], next);
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&segment.path)
                        .map_err(|e| DurabilityError::io("open", &segment.path, e))?;
                    file.set_len(offset as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| DurabilityError::io("truncate", &segment.path, e))?;
                    warn_truncated(&segment.path, offset, &scan);
                    torn = true;
                    break;
                }
            }
        }
        if is_last {
            let len = if torn { offset } else { data.len() };
            scan.append = Some((segment.path.clone(), len as u64, version, segment_schema));
        }
    }
    Ok(scan)
}

fn warn_truncated(path: &Path, offset: usize, scan: &LogScan) {
    tracing::warn!(
        segment = %path.display(),
        offset,
        dropped_bytes = scan.truncated_bytes,
        dropped_ticks = scan.truncated_ticks,
        "commit log had a torn tail: dropped {} byte(s) holding {} tick(s) that were never \
         acknowledged as durable",
        scan.truncated_bytes,
        scan.truncated_ticks
    );
}

/// The offset of the first valid record at or after `from` whose sequence is at least `min`,
/// if any. Candidates are filtered by a plausible sequence before their CRC is computed, so
/// scanning zeros or garbage is linear.
fn find_valid_record(data: &[u8], from: usize, min: u64) -> Option<usize> {
    let max = min.saturating_add(data.len() as u64);
    let last = data.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last).find(|&offset| {
        let seq = record::u64_at(data, offset + 8);
        (min..=max).contains(&seq)
            && matches!(record::read_frame(&data[offset..]), Frame::Valid { .. })
    })
}

/// How many records the torn bytes hold at least partly: the frames whose headers carry the
/// expected consecutive sequences, and at least one if any byte is there.
fn count_torn(tail: &[u8], first: u64) -> u64 {
    let mut count = 0u64;
    let mut offset = 0usize;
    while offset + RECORD_HEADER_LEN <= tail.len() {
        if record::u64_at(tail, offset + 8) != first + count {
            break;
        }
        count += 1;
        let len = record::u32_at(tail, offset) as usize;
        offset = offset.saturating_add(RECORD_HEADER_LEN).saturating_add(len);
    }
    if count == 0 && !tail.is_empty() {
        1
    } else {
        count
    }
}

/// Deletes segments whose every record is at or below `covered` (each one's successor starts
/// at or before `covered + 1`). The newest segment is never deleted.
pub(crate) fn prune_segments(dir: &Path, covered: u64) -> Result<usize, DurabilityError> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        if pair[1].first_seq <= covered.saturating_add(1) {
            fs::remove_file(&pair[0].path)
                .map_err(|e| DurabilityError::io("remove segment", &pair[0].path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir).map_err(|e| DurabilityError::io("fsync", dir, e))?;
    }
    Ok(removed)
}
