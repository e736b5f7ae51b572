//! The constants and fixed layouts of Tracy's network protocol, version [`PROTOCOL_VERSION`],
//! as the pinned `tracy-client-sys` 0.30.1 (Tracy v0.14.1) speaks it: the handshake, the
//! welcome message, the server queries, and the queue item types with their wire sizes
//! (`TracyProtocol.hpp` and `TracyQueue.hpp`). Everything is little-endian and packed.
//!
//! The session, after the profiler connects to the instrumented process:
//!
//! 1. profiler → client: the shibboleth `TracyPrf` and the protocol version (`u32`);
//! 2. client → profiler: a [`HandshakeStatus`] byte, then (on welcome) the [`Welcome`] message
//!    (1,170 bytes) and, in on-demand mode, the on-demand payload (frame count, current time);
//! 3. client → profiler: frames, each a `u32` compressed length and an LZ4 block of at most
//!    [`TARGET_FRAME_SIZE`] bytes once decompressed, compressed as one LZ4 stream (a block may
//!    refer to the previous 64 KiB);
//! 4. profiler → client, at any time: [`ServerQuery`] packets of 13 bytes asking for names
//!    behind pointers (source locations, strings, thread, plot and frame names).

use thiserror::Error;

/// The protocol version of the pinned client (`tracy::ProtocolVersion`).
pub const PROTOCOL_VERSION: u32 = 82;
/// What the profiler sends first.
pub const SHIBBOLETH: [u8; 8] = *b"TracyPrf";
/// Most bytes one frame decompresses to (`tracy::TargetFrameSize`).
pub const TARGET_FRAME_SIZE: usize = 256 * 1024;
/// Most bytes of one compressed frame (`tracy::LZ4Size`, LZ4's bound for a target frame).
pub const MAX_COMPRESSED_FRAME: usize = TARGET_FRAME_SIZE + TARGET_FRAME_SIZE / 255 + 16;
/// How far back an LZ4 block may refer into earlier blocks of the stream.
pub const LZ4_WINDOW: usize = 64 * 1024;
/// Size of the welcome message.
pub const WELCOME_SIZE: usize = 1170;
/// Size of the on-demand payload that follows the welcome in on-demand mode.
pub const ON_DEMAND_SIZE: usize = 16;
/// Size of one server query packet.
pub const QUERY_SIZE: usize = 13;
/// Added back to the length of a `SingleStringData` / `SecondStringData` (16-bit length)
/// string: shorter strings use the 8-bit variants.
pub const STRING_16_OFFSET: usize = 256;
/// Added back to a zone time delta sent in 32 bits (`ProtocolOffset16Bit`).
pub const TIME_32_OFFSET: i64 = 1 << 16;
/// Added back to a non-negative zone time delta sent in 64 bits (`ProtocolOffset32Bit`).
pub const TIME_64_OFFSET: i64 = (1 << 16) + (1 << 32);

/// The client's answer to the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Not answered yet.
    Pending,
    /// Accepted: the welcome message follows.
    Welcome,
    /// The client speaks another protocol version.
    ProtocolMismatch,
    /// The client is not available (already profiled, or it stopped accepting).
    NotAvailable,
    /// The connection was dropped.
    Dropped,
}

impl HandshakeStatus {
    /// The status a byte stands for.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => HandshakeStatus::Pending,
            1 => HandshakeStatus::Welcome,
            2 => HandshakeStatus::ProtocolMismatch,
            3 => HandshakeStatus::NotAvailable,
            4 => HandshakeStatus::Dropped,
            _ => return None,
        })
    }
}

/// The welcome flag saying the client records only while a profiler is connected.
pub const FLAG_ON_DEMAND: u8 = 1;

/// The welcome message: what the client tells about itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Welcome {
    /// Nanoseconds per timer tick.
    pub timer_mul: f64,
    /// Timer value when the client started initializing.
    pub init_begin: i64,
    /// Timer value when it finished.
    pub init_end: i64,
    /// Timer resolution, in timer ticks.
    pub resolution: u64,
    /// Seconds since the Unix epoch at start.
    pub epoch: u64,
    /// The executable's modification time.
    pub exec_time: u64,
    /// Process id.
    pub pid: u64,
    /// Sampling period (0 without sampling).
    pub sampling_period: i64,
    /// `WelcomeFlag` bits.
    pub flags: u8,
    /// `CpuArchitecture`.
    pub cpu_arch: u8,
    /// The CPU vendor string.
    pub cpu_manufacturer: String,
    /// CPUID family/model.
    pub cpu_id: u32,
    /// The program's name.
    pub program_name: String,
    /// Host and OS description.
    pub host_info: String,
}

impl Welcome {
    /// Parses the welcome message.
    pub fn parse(bytes: &[u8; WELCOME_SIZE]) -> Welcome {
        let mut r = Reader::new(bytes);
        // Every read is within the fixed-size array, so none of these can fail.
        let timer_mul = f64::from_bits(r.u64().unwrap_or(0));
        let init_begin = r.i64().unwrap_or(0);
        let init_end = r.i64().unwrap_or(0);
        let resolution = r.u64().unwrap_or(0);
        let epoch = r.u64().unwrap_or(0);
        let exec_time = r.u64().unwrap_or(0);
        let pid = r.u64().unwrap_or(0);
        let sampling_period = r.i64().unwrap_or(0);
        let flags = r.u8().unwrap_or(0);
        let cpu_arch = r.u8().unwrap_or(0);
        let cpu_manufacturer = c_string(r.bytes(12).unwrap_or_default());
        let cpu_id = r.u32().unwrap_or(0);
        let program_name = c_string(r.bytes(64).unwrap_or_default());
        let host_info = c_string(r.bytes(1024).unwrap_or_default());
        Welcome {
            timer_mul,
            init_begin,
            init_end,
            resolution,
            epoch,
            exec_time,
            pid,
            sampling_period,
            flags,
            cpu_arch,
            cpu_manufacturer,
            cpu_id,
            program_name,
            host_info,
        }
    }

    /// Whether the client records only while connected.
    pub fn on_demand(&self) -> bool {
        self.flags & FLAG_ON_DEMAND != 0
    }
}

/// Text up to the first NUL, lossily decoded.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// What the profiler asks the client (`tracy::ServerQuery`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ServerQuery {
    /// Stop answering: the profiler is closing.
    Terminate = 0,
    /// The string at a pointer.
    String = 1,
    /// A thread's name, by thread id.
    ThreadString = 2,
    /// A source location (name, function, file, line, colour) at a pointer.
    SourceLocation = 3,
    /// A plot's name at a pointer.
    PlotName = 4,
    /// A frame set's name at a pointer.
    FrameName = 5,
    /// Set a parameter.
    Parameter = 6,
    /// A fiber's name.
    FiberName = 7,
    /// An external thread's name.
    ExternalName = 8,
    /// End the session: the client sends what it has, then `Terminate`.
    Disconnect = 9,
}

/// One query packet: type, pointer (or id) and an extra word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    /// What is asked.
    pub kind: ServerQuery,
    /// About what.
    pub ptr: u64,
    /// Extra argument (0 for everything the profiler asks).
    pub extra: u32,
}

impl Query {
    /// A query about `ptr`.
    pub fn new(kind: ServerQuery, ptr: u64) -> Query {
        Query {
            kind,
            ptr,
            extra: 0,
        }
    }

    /// The packet's bytes.
    pub fn encode(&self) -> [u8; QUERY_SIZE] {
        let mut out = [0u8; QUERY_SIZE];
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.ptr.to_le_bytes());
        out[9..13].copy_from_slice(&self.extra.to_le_bytes());
        out
    }
}

pub mod queue {
    //! The queue item types the decoder looks into (`tracy::QueueType` values, named as in
    //! `TracyQueue.hpp`); the others are walked over by their size ([`super::ITEM_SIZES`]).
    #![allow(missing_docs)]
    pub const ZONE_TEXT: u8 = 0;
    pub const ZONE_NAME: u8 = 1;
    pub const MESSAGE: u8 = 2;
    pub const MESSAGE_COLOR: u8 = 3;
    pub const MESSAGE_CALLSTACK: u8 = 4;
    pub const MESSAGE_COLOR_CALLSTACK: u8 = 5;
    pub const MESSAGE_APP_INFO: u8 = 6;
    pub const ZONE_BEGIN_ALLOC_SRCLOC: u8 = 7;
    pub const ZONE_BEGIN_ALLOC_SRCLOC_CALLSTACK: u8 = 8;
    pub const ZONE_BEGIN: u8 = 19;
    pub const ZONE_BEGIN_32: u8 = 20;
    pub const ZONE_BEGIN_16: u8 = 21;
    pub const ZONE_BEGIN_CALLSTACK: u8 = 22;
    pub const ZONE_BEGIN_CALLSTACK_32: u8 = 23;
    pub const ZONE_BEGIN_CALLSTACK_16: u8 = 24;
    pub const ZONE_END: u8 = 25;
    pub const ZONE_END_32: u8 = 26;
    pub const ZONE_END_16: u8 = 27;
    pub const PLOT_DATA_INT: u8 = 55;
    pub const PLOT_DATA_FLOAT: u8 = 56;
    pub const PLOT_DATA_DOUBLE: u8 = 57;
    pub const CALLSTACK_FRAME_SIZE: u8 = 63;
    pub const SYMBOL_INFORMATION: u8 = 64;
    pub const TERMINATE: u8 = 73;
    pub const KEEP_ALIVE: u8 = 74;
    pub const THREAD_CONTEXT: u8 = 75;
    pub const CRASH: u8 = 78;
    pub const CRASH_REPORT: u8 = 79;
    pub const FRAME_MARK: u8 = 83;
    pub const FRAME_MARK_START: u8 = 84;
    pub const FRAME_MARK_END: u8 = 85;
    pub const SOURCE_LOCATION: u8 = 87;
    pub const MESSAGE_LITERAL: u8 = 91;
    pub const MESSAGE_LITERAL_COLOR: u8 = 92;
    pub const MESSAGE_LITERAL_CALLSTACK: u8 = 93;
    pub const MESSAGE_LITERAL_COLOR_CALLSTACK: u8 = 94;
    pub const PLOT_CONFIG: u8 = 106;
    pub const ACK_SERVER_QUERY_NOOP: u8 = 108;
    pub const ACK_SOURCE_CODE_NOT_AVAILABLE: u8 = 109;
    pub const ACK_SYMBOL_CODE_NOT_AVAILABLE: u8 = 110;
    pub const SINGLE_STRING_DATA: u8 = 112;
    pub const SECOND_STRING_DATA: u8 = 113;
    pub const SINGLE_STRING_DATA_8: u8 = 114;
    pub const SECOND_STRING_DATA_8: u8 = 115;
    /// The first of the types that carry a pointer and a length-prefixed payload.
    pub const STRING_DATA: u8 = 119;
    pub const THREAD_NAME: u8 = 120;
    pub const PLOT_NAME: u8 = 121;
    pub const SOURCE_LOCATION_PAYLOAD: u8 = 122;
    pub const CALLSTACK_PAYLOAD: u8 = 123;
    pub const CALLSTACK_ALLOC_PAYLOAD: u8 = 124;
    pub const FRAME_NAME: u8 = 125;
    pub const FRAME_IMAGE_DATA: u8 = 126;
    pub const EXTERNAL_NAME: u8 = 127;
    pub const EXTERNAL_THREAD_NAME: u8 = 128;
    pub const SYMBOL_CODE: u8 = 129;
    pub const SOURCE_CODE: u8 = 130;
    pub const FIBER_NAME: u8 = 131;
    /// How many types there are (`QueueType::NUM_TYPES`).
    pub const COUNT: usize = 132;
}

/// The wire size of each queue item type, type byte included (`tracy::QueueDataSize`, generated
/// from `TracyQueue.hpp` of the pinned client). String types add a length and the bytes.
pub const ITEM_SIZES: [u8; queue::COUNT] = [
    1, 1, 10, 13, 10, 13, 9, 9, 9, 1, // 0..10
    1, 1, 13, 9, 7, 13, 9, 7, 10, 17, // 10..20
    13, 11, 17, 13, 11, 9, 5, 3, 17, 17, // 20..30
    13, 17, 17, 17, 5, 27, 27, 21, 21, 27, // 30..40
    27, 21, 21, 21, 21, 24, 24, 16, 16, 16, // 40..50
    24, 24, 16, 16, 16, 25, 21, 25, 23, 16, // 50..60
    12, 2, 10, 10, 13, 1, 1, 1, 25, 13, // 60..70
    15, 13, 3, 1, 1, 5, 26, 18, 1, 17, // 70..80
    5, 4, 9, 17, 17, 17, 13, 32, 22, 13, // 80..90
    17, 17, 20, 17, 20, 28, 17, 13, 25, 17, // 90..100
    17, 17, 17, 17, 17, 17, 16, 18, 1, 5, // 100..110
    1, 17, 1, 1, 1, 1, 9, 9, 24, 9, // 110..120
    9, 9, 9, 9, 9, 9, 9, 9, 9, 9, // 120..130
    9, 9, // 130..132
];

/// Reading past the end of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("needed {needed} more bytes at offset {at}, {left} left")]
pub struct ShortRead {
    /// Where the read started.
    pub at: usize,
    /// How many bytes it needed.
    pub needed: usize,
    /// How many were left.
    pub left: usize,
}

/// A little-endian cursor over a byte slice; every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The read position.
    pub fn position(&self) -> usize {
        self.at
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ShortRead> {
        if n > self.remaining() {
            return Err(ShortRead {
                at: self.at,
                needed: n,
                left: self.remaining(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ShortRead> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, ShortRead> {
        Ok(self.array::<1>()?[0])
    }

    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16, ShortRead> {
        self.array().map(u16::from_le_bytes)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, ShortRead> {
        self.array().map(u32::from_le_bytes)
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, ShortRead> {
        self.array().map(u64::from_le_bytes)
    }

    /// An `i64`.
    pub fn i64(&mut self) -> Result<i64, ShortRead> {
        self.array().map(i64::from_le_bytes)
    }

    /// An `f32`.
    pub fn f32(&mut self) -> Result<f32, ShortRead> {
        self.array().map(f32::from_le_bytes)
    }

    /// An `f64`.
    pub fn f64(&mut self) -> Result<f64, ShortRead> {
        self.array().map(f64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_packets_are_13_bytes_type_pointer_extra() {
        let q = Query {
            kind: ServerQuery::SourceLocation,
            ptr: 0x0102_0304_0506_0708,
            extra: 0xaabb_ccdd,
        };
        assert_eq!(
            q.encode(),
            [3, 8, 7, 6, 5, 4, 3, 2, 1, 0xdd, 0xcc, 0xbb, 0xaa]
        );
    }

    #[test]
    fn item_sizes_match_the_layouts_the_decoder_reads() {
        use queue::*;
        // Type byte + the packed struct the decoder reads for each type it looks into.
        assert_eq!(ITEM_SIZES[ZONE_BEGIN as usize], 1 + 8 + 8);
        assert_eq!(ITEM_SIZES[ZONE_BEGIN_32 as usize], 1 + 4 + 8);
        assert_eq!(ITEM_SIZES[ZONE_BEGIN_16 as usize], 1 + 2 + 8);
        assert_eq!(ITEM_SIZES[ZONE_END as usize], 1 + 8);
        assert_eq!(ITEM_SIZES[ZONE_END_16 as usize], 1 + 2);
        assert_eq!(ITEM_SIZES[ZONE_BEGIN_ALLOC_SRCLOC as usize], 1 + 8);
        assert_eq!(ITEM_SIZES[PLOT_DATA_DOUBLE as usize], 1 + 8 + 8 + 8);
        assert_eq!(ITEM_SIZES[PLOT_DATA_FLOAT as usize], 1 + 8 + 8 + 4);
        assert_eq!(ITEM_SIZES[FRAME_MARK as usize], 1 + 8 + 8);
        assert_eq!(ITEM_SIZES[SOURCE_LOCATION as usize], 1 + 8 * 3 + 4 + 3);
        assert_eq!(ITEM_SIZES[MESSAGE as usize], 1 + 8 + 1);
        assert_eq!(ITEM_SIZES[MESSAGE_COLOR as usize], 1 + 8 + 3 + 1);
        assert_eq!(ITEM_SIZES[MESSAGE_LITERAL as usize], 1 + 8 + 8);
        assert_eq!(ITEM_SIZES[THREAD_CONTEXT as usize], 1 + 4);
        for t in STRING_DATA..COUNT as u8 {
            assert_eq!(ITEM_SIZES[t as usize], 1 + 8, "type {t}");
        }
    }

    #[test]
    fn reader_refuses_to_read_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(
            r.u16(),
            Err(ShortRead {
                at: 2,
                needed: 2,
                left: 1
            })
        );
        assert_eq!(r.u8(), Ok(3));
    }
}
