//! [`Session`]: the profiler's side of one Tracy connection, sans-IO. It takes the bytes the
//! instrumented process sends (handshake status, welcome, on-demand payload, LZ4 frames) in
//! pieces of any size, decompresses the frames as one LZ4 stream, walks the queue items by
//! their wire sizes, and keeps what a summary needs: frames, zones per source location with
//! their durations, plots, messages and thread names. It tells the caller which
//! [`Query`]s to send so the client resolves pointers into names, within Tracy's query budget.
//!
//! The bytes are untrusted: every length is checked against what is left and against the
//! protocol's bounds, every table the session grows has a limit ([`Limits`]), and a malformed
//! stream is an error, never a panic. After an error the session takes no more bytes.
//!
//! Time: the client sends zone and plot times as deltas against a per-thread reference that
//! restarts at each thread switch (`ThreadContext`), zone deltas in 16, 32 or 64 bits with
//! offsets (as Tracy's `Worker` decodes them); frame marks and messages carry absolute times.
//! Times are timer ticks, turned into nanoseconds with the welcome's `timer_mul`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use thiserror::Error;

use crate::protocol::{
    HandshakeStatus, ITEM_SIZES, LZ4_WINDOW, MAX_COMPRESSED_FRAME, ON_DEMAND_SIZE, Query, Reader,
    STRING_16_OFFSET, ServerQuery, ShortRead, TARGET_FRAME_SIZE, TIME_32_OFFSET, TIME_64_OFFSET,
    WELCOME_SIZE, Welcome, queue,
};
use crate::summary::{
    FrameSummary, MessageSummary, PlotSummary, Summary, ThreadSummary, ZoneSummary,
};

/// Bounds on what a session keeps, so a hostile or broken stream cannot exhaust memory.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Strings resolved (source location names, files, functions, literals).
    pub strings: usize,
    /// Total bytes of those strings.
    pub string_bytes: usize,
    /// Source locations, static and allocated (Tracy's own limit is 32,767 of each).
    pub source_locations: usize,
    /// Threads.
    pub threads: usize,
    /// Open zones on one thread.
    pub zone_depth: usize,
    /// Plots and frame sets.
    pub series: usize,
    /// Messages whose text is kept (all are counted).
    pub messages_kept: usize,
    /// Durations kept per zone for percentiles (beyond it, a uniform sample of that size).
    pub samples_per_zone: usize,
    /// Queries sent and not answered yet (Tracy's server allows up to 8 Ki).
    pub query_space: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            strings: 65_536,
            string_bytes: 32 << 20,
            source_locations: 32_767,
            threads: 4_096,
            zone_depth: 1_024,
            series: 4_096,
            messages_kept: 10_000,
            samples_per_zone: 200_000,
            query_space: 8 * 1024 - 4,
        }
    }
}

/// Why a stream could not be decoded.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The handshake status byte is not one Tracy defines.
    #[error("unknown handshake status byte {0}")]
    BadStatus(u8),
    /// The client did not welcome the profiler.
    #[error("the client refused the connection: {0:?}")]
    Refused(HandshakeStatus),
    /// A frame's length is zero or above the protocol's bound.
    #[error("frame {frame}: compressed length {len} is outside 1..={max}")]
    FrameLength {
        /// The frame's number (from 0).
        frame: u64,
        /// The length read.
        len: u32,
        /// The bound.
        max: usize,
    },
    /// A frame does not decompress.
    #[error("frame {frame}: LZ4 block does not decompress: {reason}")]
    Lz4 {
        /// The frame's number.
        frame: u64,
        /// The decompressor's error.
        reason: String,
    },
    /// An item type the protocol does not have.
    #[error("frame {frame}, byte {offset}: unknown item type {kind}")]
    UnknownItem {
        /// The frame's number.
        frame: u64,
        /// Offset of the item in the decompressed frame.
        offset: usize,
        /// The type byte.
        kind: u8,
    },
    /// An item that does not fit in what is left of its frame.
    #[error("frame {frame}, byte {offset}: item type {kind} is cut short: {short}")]
    Truncated {
        /// The frame's number.
        frame: u64,
        /// Offset of the item.
        offset: usize,
        /// The type byte.
        kind: u8,
        /// The failed read.
        short: ShortRead,
    },
    /// A table of the session would outgrow its [`Limits`].
    #[error("more than {limit} {what}")]
    Limit {
        /// What grew.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Bytes arrived after an error.
    #[error("the session already failed")]
    Failed,
}

/// Where the session is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Status,
    Welcome,
    OnDemand,
    FrameLength,
    Frame(usize),
    Failed,
}

/// Which source location a zone has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ZoneKey {
    /// A static location, by its pointer in the client.
    Static(u64),
    /// A location sent inline (zones with runtime names), by index.
    Alloc(usize),
}

/// A static source location's pointers, once the client answered.
#[derive(Clone, Copy, Debug)]
struct StaticLocation {
    name: u64,
    function: u64,
    file: u64,
    line: u32,
}

/// An inline source location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InlineLocation {
    name: Option<String>,
    function: String,
    file: String,
    line: u32,
}

/// Count, sum, extremes and a bounded sample of durations or values.
#[derive(Clone, Debug, Default)]
struct Series {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    samples: Vec<f64>,
    rng: u64,
}

impl Series {
    fn record(&mut self, value: f64, keep: usize) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
        self.last = value;
        if self.samples.len() < keep {
            self.samples.push(value);
        } else if keep > 0 {
            // Reservoir sampling (xorshift64*): every value seen has the same chance to be kept.
            let mut x = self.rng.max(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            let pick = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.count;
            if let Ok(pick) = usize::try_from(pick)
                && pick < keep
            {
                self.samples[pick] = value;
            }
        }
    }

    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// Nearest-rank percentile of the kept sample.
    fn percentile(&self, percent: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

#[derive(Debug, Default)]
struct ThreadState {
    name: Option<String>,
    /// Open zones: where they started and their location.
    stack: Vec<(ZoneKey, i64)>,
    zones: u64,
    /// The reference for time deltas.
    ref_time: i64,
}

#[derive(Debug, Default)]
struct FrameSet {
    marks: u64,
    last: Option<i64>,
    intervals: Series,
}

/// One Tracy connection's decoding state (see the module docs).
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    stage: Stage,
    /// Bytes of the unit being read (status, welcome, length or frame).
    unit: Vec<u8>,
    welcome: Option<Welcome>,
    /// Frames the client had marked before the connection (on-demand mode).
    frames_before: u64,
    /// The last [`LZ4_WINDOW`] (or more) decompressed bytes: the dictionary of the next block.
    history: Vec<u8>,
    out: Vec<u8>,
    frame_count: u64,
    bytes_in: u64,
    bytes_decompressed: u64,
    items: u64,
    thread: u32,
    threads: BTreeMap<u32, ThreadState>,
    pending_string: Option<Vec<u8>>,
    pending_location: Option<usize>,
    strings: HashMap<u64, String>,
    string_bytes: usize,
    asked_strings: HashSet<u64>,
    static_locations: HashMap<u64, Option<StaticLocation>>,
    location_queue: VecDeque<u64>,
    inline_locations: Vec<InlineLocation>,
    inline_index: HashMap<InlineLocation, usize>,
    zones: HashMap<ZoneKey, Series>,
    frames: HashMap<u64, FrameSet>,
    frame_names: HashMap<u64, String>,
    plots: HashMap<u64, Series>,
    plot_names: HashMap<u64, String>,
    messages: Vec<(i64, u32, String)>,
    message_count: u64,
    queries: VecDeque<Query>,
    space_left: usize,
    terminated: bool,
    crashed: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session::new(Limits::default())
    }
}

impl Session {
    /// A session expecting the handshake status byte (the caller sent the shibboleth and the
    /// protocol version).
    pub fn new(limits: Limits) -> Self {
        let space_left = limits.query_space;
        Session {
            limits,
            stage: Stage::Status,
            unit: Vec::new(),
            welcome: None,
            frames_before: 0,
            history: Vec::new(),
            out: vec![0; TARGET_FRAME_SIZE],
            frame_count: 0,
            bytes_in: 0,
            bytes_decompressed: 0,
            items: 0,
            thread: 0,
            threads: BTreeMap::new(),
            pending_string: None,
            pending_location: None,
            strings: HashMap::new(),
            string_bytes: 0,
            asked_strings: HashSet::new(),
            static_locations: HashMap::new(),
            location_queue: VecDeque::new(),
            inline_locations: Vec::new(),
            inline_index: HashMap::new(),
            zones: HashMap::new(),
            frames: HashMap::new(),
            frame_names: HashMap::new(),
            plots: HashMap::new(),
            plot_names: HashMap::new(),
            messages: Vec::new(),
            message_count: 0,
            queries: VecDeque::new(),
            space_left,
            terminated: false,
            crashed: false,
        }
    }

    /// The welcome message, once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// Whether the client sent `Terminate` (it has sent everything).
    pub fn terminated(&self) -> bool {
        self.terminated
    }

    /// Decompressed frames so far.
    pub fn frames_received(&self) -> u64 {
        self.frame_count
    }

    /// Queries not yet answered, sent or not.
    pub fn outstanding_queries(&self) -> usize {
        self.queries.len() + (self.limits.query_space - self.space_left)
    }

    /// The queries to send now (as many as the budget allows); each answer frees its slot.
    pub fn take_queries(&mut self) -> Vec<Query> {
        let n = self.space_left.min(self.queries.len());
        self.space_left -= n;
        self.queries.drain(..n).collect()
    }

    /// Takes the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), DecodeError> {
        if self.stage == Stage::Failed {
            return Err(DecodeError::Failed);
        }
        self.bytes_in += bytes.len() as u64;
        while !bytes.is_empty() {
            let need = match self.stage {
                Stage::Status => 1,
                Stage::Welcome => WELCOME_SIZE,
                Stage::OnDemand => ON_DEMAND_SIZE,
                Stage::FrameLength => 4,
                Stage::Frame(len) => len,
                Stage::Failed => return Err(DecodeError::Failed),
            };
            let take = (need - self.unit.len()).min(bytes.len());
            self.unit.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.unit.len() == need {
                let unit = std::mem::take(&mut self.unit);
                let done = self.unit_complete(&unit);
                self.unit = unit;
                self.unit.clear();
                if let Err(e) = done {
                    self.stage = Stage::Failed;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn unit_complete(&mut self, unit: &[u8]) -> Result<(), DecodeError> {
        match self.stage {
            Stage::Status => {
                let status =
                    HandshakeStatus::from_byte(unit[0]).ok_or(DecodeError::BadStatus(unit[0]))?;
                if status != HandshakeStatus::Welcome {
                    return Err(DecodeError::Refused(status));
                }
                self.stage = Stage::Welcome;
            }
            Stage::Welcome => {
                let mut bytes = [0u8; WELCOME_SIZE];
                bytes.copy_from_slice(unit);
                let welcome = Welcome::parse(&bytes);
                self.stage = if welcome.on_demand() {
                    Stage::OnDemand
                } else {
                    Stage::FrameLength
                };
                self.welcome = Some(welcome);
            }
            Stage::OnDemand => {
                let mut r = Reader::new(unit);
                self.frames_before = r.u64().unwrap_or(0);
                self.stage = Stage::FrameLength;
            }
            Stage::FrameLength => {
                let mut len = [0u8; 4];
                len.copy_from_slice(unit);
                let len = u32::from_le_bytes(len);
                if len == 0 || len as usize > MAX_COMPRESSED_FRAME {
                    return Err(DecodeError::FrameLength {
                        frame: self.frame_count,
                        len,
                        max: MAX_COMPRESSED_FRAME,
                    });
                }
                self.stage = Stage::Frame(len as usize);
            }
            Stage::Frame(_) => {
                self.frame(unit)?;
                self.stage = Stage::FrameLength;
            }
            Stage::Failed => return Err(DecodeError::Failed),
        }
        Ok(())
    }

    /// Decompresses one frame against the stream's history and walks its items.
    fn frame(&mut self, compressed: &[u8]) -> Result<(), DecodeError> {
        let frame = self.frame_count;
        let dict = &self.history[self.history.len().saturating_sub(LZ4_WINDOW)..];
        let n = lz4_flex::block::decompress_into_with_dict(compressed, &mut self.out, dict)
            .map_err(|e| DecodeError::Lz4 {
                frame,
                reason: e.to_string(),
            })?;
        self.frame_count += 1;
        self.bytes_decompressed += n as u64;
        let out = std::mem::take(&mut self.out);
        let walked = self.items_of(frame, &out[..n]);
        self.history.extend_from_slice(&out[..n]);
        if self.history.len() > 2 * LZ4_WINDOW {
            let cut = self.history.len() - LZ4_WINDOW;
            self.history.drain(..cut);
        }
        self.out = out;
        walked
    }

    fn items_of(&mut self, frame: u64, data: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(data);
        while r.remaining() > 0 {
            let offset = r.position();
            let kind = r.u8().unwrap_or(0);
            let short = |short| DecodeError::Truncated {
                frame,
                offset,
                kind,
                short,
            };
            if kind as usize >= queue::COUNT {
                return Err(DecodeError::UnknownItem {
                    frame,
                    offset,
                    kind,
                });
            }
            self.items += 1;
            if kind >= queue::STRING_DATA {
                let ptr = r.u64().map_err(short)?;
                let len = match kind {
                    queue::FRAME_IMAGE_DATA | queue::SYMBOL_CODE | queue::SOURCE_CODE => {
                        r.u32().map_err(short)? as usize
                    }
                    _ => usize::from(r.u16().map_err(short)?),
                };
                let bytes = r.bytes(len).map_err(short)?;
                self.pointer_payload(kind, ptr, bytes)?;
                continue;
            }
            let len = match kind {
                queue::SINGLE_STRING_DATA | queue::SECOND_STRING_DATA => {
                    Some(usize::from(r.u16().map_err(short)?) + STRING_16_OFFSET)
                }
                queue::SINGLE_STRING_DATA_8 | queue::SECOND_STRING_DATA_8 => {
                    Some(usize::from(r.u8().map_err(short)?))
                }
                _ => None,
            };
            if let Some(len) = len {
                let bytes = r.bytes(len).map_err(short)?;
                if matches!(
                    kind,
                    queue::SINGLE_STRING_DATA | queue::SINGLE_STRING_DATA_8
                ) {
                    self.pending_string = Some(bytes.to_vec());
                }
                continue;
            }
            let body = r
                .bytes(usize::from(ITEM_SIZES[kind as usize]) - 1)
                .map_err(short)?;
            self.item(kind, body).map_err(|e| match e {
                ItemError::Short(s) => short(s),
                ItemError::Decode(d) => d,
            })?;
        }
        Ok(())
    }

    fn ask(&mut self, kind: ServerQuery, ptr: u64) {
        self.queries.push_back(Query::new(kind, ptr));
    }

    fn answered(&mut self) {
        self.space_left = (self.space_left + 1).min(self.limits.query_space);
    }

    fn ask_string(&mut self, ptr: u64) -> Result<(), DecodeError> {
        if ptr != 0 && !self.strings.contains_key(&ptr) {
            if self.asked_strings.len() >= self.limits.strings {
                return Err(DecodeError::Limit {
                    what: "strings",
                    limit: self.limits.strings,
                });
            }
            if self.asked_strings.insert(ptr) {
                self.ask(ServerQuery::String, ptr);
            }
        }
        Ok(())
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn keep_string(&mut self, bytes: &[u8]) -> Result<String, DecodeError> {
        if self.string_bytes + bytes.len() > self.limits.string_bytes {
            return Err(DecodeError::Limit {
                what: "bytes of strings",
                limit: self.limits.string_bytes,
            });
        }
        self.string_bytes += bytes.len();
        Ok(Self::text(bytes))
    }

    /// An item carrying a pointer (or id) and a payload: answers to queries, inline source
    /// locations, code and images.
    fn pointer_payload(&mut self, kind: u8, ptr: u64, bytes: &[u8]) -> Result<(), DecodeError> {
        match kind {
            queue::STRING_DATA => {
                self.answered();
                if self.asked_strings.contains(&ptr) && !self.strings.contains_key(&ptr) {
                    let text = self.keep_string(bytes)?;
                    self.strings.insert(ptr, text);
                }
            }
            queue::THREAD_NAME => {
                self.answered();
                let thread = ptr as u32;
                if u64::from(thread) == ptr && self.threads.contains_key(&thread) {
                    let name = self.keep_string(bytes)?;
                    if let Some(t) = self.threads.get_mut(&thread) {
                        t.name = Some(name);
                    }
                }
            }
            queue::PLOT_NAME => {
                self.answered();
                if self.plots.contains_key(&ptr) && !self.plot_names.contains_key(&ptr) {
                    let name = self.keep_string(bytes)?;
                    self.plot_names.insert(ptr, name);
                }
            }
            queue::FRAME_NAME => {
                self.answered();
                if self.frames.contains_key(&ptr) && !self.frame_names.contains_key(&ptr) {
                    let name = self.keep_string(bytes)?;
                    self.frame_names.insert(ptr, name);
                }
            }
            queue::SOURCE_LOCATION_PAYLOAD => self.inline_location(bytes)?,
            queue::EXTERNAL_NAME | queue::SYMBOL_CODE | queue::SOURCE_CODE => self.answered(),
            // Callstacks, images, external thread names, fiber names: not summarized.
            _ => {}
        }
        Ok(())
    }

    /// `color u32, line u32, function NUL, file NUL, name` (the name may be empty).
    fn inline_location(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let mut parts = bytes.get(8..).unwrap_or_default().splitn(3, |&b| b == 0);
        let function = Self::text(parts.next().unwrap_or_default());
        let file = Self::text(parts.next().unwrap_or_default());
        let name = parts
            .next()
            .filter(|n| !n.is_empty())
            .map(|n| Self::text(n.split(|&b| b == 0).next().unwrap_or_default()));
        let line = bytes
            .get(4..8)
            .map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]));
        let location = InlineLocation {
            name,
            function,
            file,
            line,
        };
        let index = match self.inline_index.get(&location) {
            Some(&i) => i,
            None => {
                if self.inline_locations.len() >= self.limits.source_locations {
                    return Err(DecodeError::Limit {
                        what: "inline source locations",
                        limit: self.limits.source_locations,
                    });
                }
                let size = location.function.len()
                    + location.file.len()
                    + location.name.as_ref().map_or(0, String::len);
                if self.string_bytes + size > self.limits.string_bytes {
                    return Err(DecodeError::Limit {
                        what: "bytes of strings",
                        limit: self.limits.string_bytes,
                    });
                }
                self.string_bytes += size;
                let i = self.inline_locations.len();
                self.inline_locations.push(location.clone());
                self.inline_index.insert(location, i);
                i
            }
        };
        self.pending_location = Some(index);
        Ok(())
    }

    fn current(&mut self) -> Result<&mut ThreadState, DecodeError> {
        self.thread_state(self.thread)
    }

    fn thread_state(&mut self, thread: u32) -> Result<&mut ThreadState, DecodeError> {
        if !self.threads.contains_key(&thread) {
            if self.threads.len() >= self.limits.threads {
                return Err(DecodeError::Limit {
                    what: "threads",
                    limit: self.limits.threads,
                });
            }
            self.threads.insert(thread, ThreadState::default());
            self.ask(ServerQuery::ThreadString, u64::from(thread));
        }
        self.threads.get_mut(&thread).ok_or(DecodeError::Limit {
            what: "threads",
            limit: 0,
        })
    }

    /// A delta against the current thread's reference; returns the absolute time.
    fn thread_time(&mut self, delta: i64) -> Result<i64, DecodeError> {
        let t = self.current()?;
        t.ref_time = t.ref_time.wrapping_add(delta);
        Ok(t.ref_time)
    }

    fn zone_begin(&mut self, key: ZoneKey, delta: i64) -> Result<(), DecodeError> {
        let depth = self.limits.zone_depth;
        let time = self.thread_time(delta)?;
        let t = self.current()?;
        if t.stack.len() >= depth {
            return Err(DecodeError::Limit {
                what: "open zones on one thread",
                limit: depth,
            });
        }
        t.stack.push((key, time));
        Ok(())
    }

    fn zone_end(&mut self, delta: i64) -> Result<(), DecodeError> {
        let time = self.thread_time(delta)?;
        let t = self.current()?;
        // An end without a begin (a zone opened before the connection) is dropped, as Tracy
        // does in on-demand mode.
        let Some((key, start)) = t.stack.pop() else {
            return Ok(());
        };
        t.zones += 1;
        let ticks = time.saturating_sub(start).max(0);
        let keep = self.limits.samples_per_zone;
        self.zones
            .entry(key)
            .or_default()
            .record(ticks as f64, keep);
        Ok(())
    }

    fn static_location(&mut self, ptr: u64) -> Result<ZoneKey, DecodeError> {
        if !self.static_locations.contains_key(&ptr) {
            if self.static_locations.len() >= self.limits.source_locations {
                return Err(DecodeError::Limit {
                    what: "source locations",
                    limit: self.limits.source_locations,
                });
            }
            self.static_locations.insert(ptr, None);
            self.location_queue.push_back(ptr);
            self.ask(ServerQuery::SourceLocation, ptr);
        }
        Ok(ZoneKey::Static(ptr))
    }

    fn series_slot(
        map: &mut HashMap<u64, impl Default>,
        limit: usize,
        ptr: u64,
    ) -> Result<bool, DecodeError> {
        if map.contains_key(&ptr) {
            return Ok(false);
        }
        if map.len() >= limit {
            return Err(DecodeError::Limit {
                what: "plots or frame sets",
                limit,
            });
        }
        map.insert(ptr, Default::default());
        Ok(true)
    }

    fn plot(&mut self, ptr: u64, delta: i64, value: f64) -> Result<(), DecodeError> {
        self.thread_time(delta)?;
        if Self::series_slot(&mut self.plots, self.limits.series, ptr)? {
            self.ask(ServerQuery::PlotName, ptr);
        }
        if value.is_finite()
            && let Some(plot) = self.plots.get_mut(&ptr)
        {
            plot.record(value, 0);
        }
        Ok(())
    }

    fn frame_mark(&mut self, name: u64, time: i64) -> Result<(), DecodeError> {
        if Self::series_slot(&mut self.frames, self.limits.series, name)? && name != 0 {
            self.ask(ServerQuery::FrameName, name);
        }
        let keep = self.limits.samples_per_zone;
        if let Some(set) = self.frames.get_mut(&name) {
            set.marks += 1;
            if let Some(last) = set.last {
                set.intervals
                    .record(time.saturating_sub(last).max(0) as f64, keep);
            }
            set.last = Some(time);
        }
        Ok(())
    }

    fn message(&mut self, time: i64, color: u32, text: String) {
        self.message_count += 1;
        if self.messages.len() < self.limits.messages_kept {
            self.messages.push((time, color, text));
        }
    }

    fn item(&mut self, kind: u8, body: &[u8]) -> Result<(), ItemError> {
        let mut r = Reader::new(body);
        match kind {
            queue::THREAD_CONTEXT => {
                let thread = r.u32()?;
                self.thread = thread;
                self.thread_state(thread)?.ref_time = 0;
            }
            queue::ZONE_BEGIN | queue::ZONE_BEGIN_CALLSTACK => {
                let raw = r.i64()?;
                let delta = if raw >= 0 {
                    raw.wrapping_add(TIME_64_OFFSET)
                } else {
                    raw
                };
                let key = self.static_location(r.u64()?)?;
                self.zone_begin(key, delta)?;
            }
            queue::ZONE_BEGIN_32 | queue::ZONE_BEGIN_CALLSTACK_32 => {
                let delta = i64::from(r.u32()?) + TIME_32_OFFSET;
                let key = self.static_location(r.u64()?)?;
                self.zone_begin(key, delta)?;
            }
            queue::ZONE_BEGIN_16 | queue::ZONE_BEGIN_CALLSTACK_16 => {
                let delta = i64::from(r.u16()?);
                let key = self.static_location(r.u64()?)?;
                self.zone_begin(key, delta)?;
            }
            queue::ZONE_BEGIN_ALLOC_SRCLOC | queue::ZONE_BEGIN_ALLOC_SRCLOC_CALLSTACK => {
                let delta = r.i64()?;
                match self.pending_location.take() {
                    Some(index) => self.zone_begin(ZoneKey::Alloc(index), delta)?,
                    // No location payload before it: keep the time reference right anyway.
                    None => {
                        self.thread_time(delta)?;
                    }
                }
            }
            queue::ZONE_END => {
                let raw = r.i64()?;
                let delta = if raw >= 0 {
                    raw.wrapping_add(TIME_64_OFFSET)
                } else {
                    raw
                };
                self.zone_end(delta)?;
            }
            queue::ZONE_END_32 => self.zone_end(i64::from(r.u32()?) + TIME_32_OFFSET)?,
            queue::ZONE_END_16 => self.zone_end(i64::from(r.u16()?))?,
            queue::ZONE_TEXT | queue::ZONE_NAME => {
                self.pending_string = None;
            }
            queue::FRAME_MARK | queue::FRAME_MARK_START => {
                let time = r.i64()?;
                let name = r.u64()?;
                self.frame_mark(name, time)?;
            }
            queue::FRAME_MARK_END => {}
            queue::PLOT_DATA_INT => {
                let name = r.u64()?;
                let delta = r.i64()?;
                let value = r.i64()? as f64;
                self.plot(name, delta, value)?;
            }
            queue::PLOT_DATA_FLOAT => {
                let name = r.u64()?;
                let delta = r.i64()?;
                let value = f64::from(r.f32()?);
                self.plot(name, delta, value)?;
            }
            queue::PLOT_DATA_DOUBLE => {
                let name = r.u64()?;
                let delta = r.i64()?;
                let value = r.f64()?;
                self.plot(name, delta, value)?;
            }
            queue::PLOT_CONFIG => {
                let name = r.u64()?;
                if Self::series_slot(&mut self.plots, self.limits.series, name)? {
                    self.ask(ServerQuery::PlotName, name);
                }
            }
            queue::MESSAGE
            | queue::MESSAGE_CALLSTACK
            | queue::MESSAGE_COLOR
            | queue::MESSAGE_COLOR_CALLSTACK => {
                let time = r.i64()?;
                let color = if matches!(kind, queue::MESSAGE_COLOR | queue::MESSAGE_COLOR_CALLSTACK)
                {
                    let (b, g, red) = (r.u8()?, r.u8()?, r.u8()?);
                    u32::from(red) << 16 | u32::from(g) << 8 | u32::from(b)
                } else {
                    0xff_ff_ff
                };
                let text = self.pending_string.take().unwrap_or_default();
                let text = Self::text(&text);
                self.current()?;
                self.message(time, color, text);
            }
            queue::MESSAGE_LITERAL
            | queue::MESSAGE_LITERAL_CALLSTACK
            | queue::MESSAGE_LITERAL_COLOR
            | queue::MESSAGE_LITERAL_COLOR_CALLSTACK => {
                let time = r.i64()?;
                let color = if matches!(
                    kind,
                    queue::MESSAGE_LITERAL_COLOR | queue::MESSAGE_LITERAL_COLOR_CALLSTACK
                ) {
                    let (b, g, red) = (r.u8()?, r.u8()?, r.u8()?);
                    u32::from(red) << 16 | u32::from(g) << 8 | u32::from(b)
                } else {
                    0xff_ff_ff
                };
                // The pointer is tagged: the low byte holds the message's metadata.
                let ptr = r.u64()? >> 8;
                self.ask_string(ptr)?;
                self.message(time, color, format!("\u{0}{ptr}"));
            }
            queue::MESSAGE_APP_INFO => {
                self.pending_string = None;
            }
            queue::SOURCE_LOCATION => {
                self.answered();
                let name = r.u64()?;
                let function = r.u64()?;
                let file = r.u64()?;
                let line = r.u32()?;
                if let Some(ptr) = self.location_queue.pop_front() {
                    self.static_locations.insert(
                        ptr,
                        Some(StaticLocation {
                            name,
                            function,
                            file,
                            line,
                        }),
                    );
                    self.ask_string(name)?;
                    self.ask_string(function)?;
                    self.ask_string(file)?;
                }
            }
            queue::ACK_SERVER_QUERY_NOOP
            | queue::ACK_SOURCE_CODE_NOT_AVAILABLE
            | queue::ACK_SYMBOL_CODE_NOT_AVAILABLE
            | queue::SYMBOL_INFORMATION
            | queue::CALLSTACK_FRAME_SIZE => self.answered(),
            queue::TERMINATE => self.terminated = true,
            queue::CRASH | queue::CRASH_REPORT => self.crashed = true,
            // Everything else (locks, memory, GPU, samples, context switches, ...) is walked
            // over by its size.
            _ => {}
        }
        Ok(())
    }

    fn ticks_to_ns(&self, ticks: f64) -> f64 {
        ticks * self.welcome.as_ref().map_or(1.0, |w| w.timer_mul)
    }

    fn string(&self, ptr: u64) -> Option<&str> {
        self.strings.get(&ptr).map(String::as_str)
    }

    /// Name, function, file and line of a zone's source location, as far as resolved.
    fn location(&self, key: ZoneKey) -> (String, String, String, u32) {
        match key {
            ZoneKey::Static(ptr) => match self.static_locations.get(&ptr).copied().flatten() {
                Some(l) => {
                    let function = self.string(l.function).unwrap_or("?").to_owned();
                    let name = if l.name == 0 {
                        function.clone()
                    } else {
                        self.string(l.name).unwrap_or("?").to_owned()
                    };
                    let file = self.string(l.file).unwrap_or("?").to_owned();
                    (name, function, file, l.line)
                }
                None => (
                    format!("<unresolved {ptr:#x}>"),
                    String::new(),
                    String::new(),
                    0,
                ),
            },
            ZoneKey::Alloc(i) => match self.inline_locations.get(i) {
                Some(l) => (
                    l.name.clone().unwrap_or_else(|| l.function.clone()),
                    l.function.clone(),
                    l.file.clone(),
                    l.line,
                ),
                None => (format!("<inline {i}>"), String::new(), String::new(), 0),
            },
        }
    }

    /// What the session has seen so far.
    pub fn summary(&self) -> Summary {
        // Zones with the same name, function and file (static and inline) are merged.
        let mut merged: BTreeMap<(String, String, String, u32), Series> = BTreeMap::new();
        let mut keys: Vec<&ZoneKey> = self.zones.keys().collect();
        keys.sort();
        for key in keys {
            let series = &self.zones[key];
            let slot = merged.entry(self.location(*key)).or_default();
            if slot.count == 0 {
                *slot = series.clone();
            } else {
                slot.count += series.count;
                slot.sum += series.sum;
                slot.min = slot.min.min(series.min);
                slot.max = slot.max.max(series.max);
                slot.samples.extend_from_slice(&series.samples);
            }
        }
        let mut zones: Vec<ZoneSummary> = merged
            .into_iter()
            .map(|((name, function, file, line), s)| ZoneSummary {
                name,
                function,
                file,
                line,
                count: s.count,
                total_ns: self.ticks_to_ns(s.sum),
                mean_ns: self.ticks_to_ns(s.mean()),
                p99_ns: self.ticks_to_ns(s.percentile(99.0)),
                min_ns: self.ticks_to_ns(s.min),
                max_ns: self.ticks_to_ns(s.max),
            })
            .collect();
        zones.sort_by(|a, b| b.total_ns.total_cmp(&a.total_ns).then(a.name.cmp(&b.name)));

        let mut frames: Vec<FrameSummary> = self
            .frames
            .iter()
            .map(|(&ptr, set)| FrameSummary {
                name: if ptr == 0 {
                    "Frame".to_owned()
                } else {
                    self.frame_names
                        .get(&ptr)
                        .cloned()
                        .unwrap_or_else(|| format!("<unresolved {ptr:#x}>"))
                },
                count: set.marks,
                mean_ns: self.ticks_to_ns(set.intervals.mean()),
                p99_ns: self.ticks_to_ns(set.intervals.percentile(99.0)),
                max_ns: self.ticks_to_ns(set.intervals.max),
            })
            .collect();
        frames.sort_by(|a, b| a.name.cmp(&b.name));

        let mut plots: Vec<PlotSummary> = self
            .plots
            .iter()
            .map(|(&ptr, s)| PlotSummary {
                name: self
                    .plot_names
                    .get(&ptr)
                    .cloned()
                    .unwrap_or_else(|| format!("<unresolved {ptr:#x}>")),
                points: s.count,
                min: s.min,
                mean: s.mean(),
                max: s.max,
                last: s.last,
            })
            .collect();
        plots.sort_by(|a, b| a.name.cmp(&b.name));

        let origin = self.welcome.as_ref().map_or(0, |w| w.init_begin);
        let messages = self
            .messages
            .iter()
            .map(|(time, color, text)| MessageSummary {
                time_ms: self.ticks_to_ns(time.saturating_sub(origin) as f64) / 1e6,
                color: *color,
                text: match text.strip_prefix('\u{0}') {
                    // A literal: its text was asked for by pointer.
                    Some(ptr) => ptr
                        .parse::<u64>()
                        .ok()
                        .and_then(|p| self.string(p))
                        .unwrap_or("?")
                        .to_owned(),
                    None => text.clone(),
                },
            })
            .collect();

        let threads = self
            .threads
            .iter()
            .map(|(&id, t)| ThreadSummary {
                id,
                name: t.name.clone().unwrap_or_default(),
                zones: t.zones,
            })
            .collect();

        Summary {
            program: self.welcome.as_ref().map(|w| w.program_name.clone()),
            pid: self.welcome.as_ref().map(|w| w.pid),
            on_demand: self.welcome.as_ref().is_some_and(Welcome::on_demand),
            frames_before_capture: self.frames_before,
            stream_frames: self.frame_count,
            bytes_received: self.bytes_in,
            bytes_decompressed: self.bytes_decompressed,
            items: self.items,
            terminated: self.terminated,
            crashed: self.crashed,
            frames,
            zones,
            plots,
            messages_total: self.message_count,
            messages,
            threads,
        }
    }
}

/// An item's failure: a short read (turned into [`DecodeError::Truncated`] with the item's
/// place) or a decode error.
enum ItemError {
    Short(ShortRead),
    Decode(DecodeError),
}

impl From<ShortRead> for ItemError {
    fn from(s: ShortRead) -> Self {
        ItemError::Short(s)
    }
}

impl From<DecodeError> for ItemError {
    fn from(d: DecodeError) -> Self {
        ItemError::Decode(d)
    }
}
