//! The stream decoder on untrusted and on synthetic streams: arbitrary bytes (raw, or inside
//! well-formed LZ4 frames) in pieces of any size never panic and stay within the session's
//! limits; a synthetic client stream (threads, nested zones with time deltas in every encoding,
//! frame marks, plots, the answers to the session's queries, LZ4 blocks that refer back into
//! earlier frames) decodes to exactly the zones, durations, frames and plots it encodes.

use std::collections::BTreeMap;

use orrery_profiler::protocol::{ServerQuery, WELCOME_SIZE, queue};
use orrery_profiler::{DecodeError, Limits, Session};
use proptest::prelude::*;

const TIMER_MUL: f64 = 0.5;

/// The handshake status and a welcome message (on demand, program `synthetic`).
fn preamble() -> Vec<u8> {
    let mut w = vec![0u8; WELCOME_SIZE];
    w[0..8].copy_from_slice(&TIMER_MUL.to_le_bytes());
    w[48..56].copy_from_slice(&4242u64.to_le_bytes()); // pid
    w[64] = 1; // on demand
    w[82..91].copy_from_slice(b"synthetic");
    let mut out = vec![1u8]; // HandshakeWelcome
    out.extend_from_slice(&w);
    out.extend_from_slice(&[0u8; 16]); // on-demand payload: no earlier frames, time 0
    out
}

/// Compresses `frames` (each at most 256 KiB) as one LZ4 stream with the client's framing.
fn frames(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut history: Vec<u8> = Vec::new();
    for data in frames {
        let dict = &history[history.len().saturating_sub(64 * 1024)..];
        let block = lz4_flex::block::compress_with_dict(data, dict);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
        history.extend_from_slice(data);
    }
    out
}

/// Feeds `bytes` in pieces of the given sizes (cycled).
fn feed_in_pieces(
    session: &mut Session,
    bytes: &[u8],
    pieces: &[usize],
) -> Result<(), DecodeError> {
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = pieces
            .get(i % pieces.len().max(1))
            .copied()
            .unwrap_or(bytes.len())
            .max(1);
        let end = (at + n).min(bytes.len());
        session.feed(&bytes[at..end])?;
        at = end;
        i += 1;
    }
    Ok(())
}

/// Writes items as the client does.
#[derive(Default)]
struct Items(Vec<u8>);

impl Items {
    fn thread(&mut self, id: u32) {
        self.0.push(queue::THREAD_CONTEXT);
        self.0.extend_from_slice(&id.to_le_bytes());
    }

    /// A zone begin with time delta `dt` in the encoding the client picks for it.
    fn begin(&mut self, srcloc: u64, dt: i64) {
        const OFFSET_32: i64 = (1 << 16) + (1 << 32);
        if (0..1 << 16).contains(&dt) {
            self.0.push(queue::ZONE_BEGIN_16);
            self.0.extend_from_slice(&(dt as u16).to_le_bytes());
        } else if (1 << 16..OFFSET_32).contains(&dt) {
            self.0.push(queue::ZONE_BEGIN_32);
            self.0
                .extend_from_slice(&((dt - (1 << 16)) as u32).to_le_bytes());
        } else {
            self.0.push(queue::ZONE_BEGIN);
            let wire = if dt >= 0 { dt - OFFSET_32 } else { dt };
            self.0.extend_from_slice(&wire.to_le_bytes());
        }
        self.0.extend_from_slice(&srcloc.to_le_bytes());
    }

    fn end(&mut self, dt: i64) {
        const OFFSET_32: i64 = (1 << 16) + (1 << 32);
        if (0..1 << 16).contains(&dt) {
            self.0.push(queue::ZONE_END_16);
            self.0.extend_from_slice(&(dt as u16).to_le_bytes());
        } else if (1 << 16..OFFSET_32).contains(&dt) {
            self.0.push(queue::ZONE_END_32);
            self.0
                .extend_from_slice(&((dt - (1 << 16)) as u32).to_le_bytes());
        } else {
            self.0.push(queue::ZONE_END);
            let wire = if dt >= 0 { dt - OFFSET_32 } else { dt };
            self.0.extend_from_slice(&wire.to_le_bytes());
        }
    }

    fn frame_mark(&mut self, time: i64) {
        self.0.push(queue::FRAME_MARK);
        self.0.extend_from_slice(&time.to_le_bytes());
        self.0.extend_from_slice(&0u64.to_le_bytes());
    }

    fn plot(&mut self, name: u64, dt: i64, value: f64) {
        self.0.push(queue::PLOT_DATA_DOUBLE);
        self.0.extend_from_slice(&name.to_le_bytes());
        self.0.extend_from_slice(&dt.to_le_bytes());
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn string_answer(&mut self, kind: u8, ptr: u64, text: &str) {
        self.0.push(kind);
        self.0.extend_from_slice(&ptr.to_le_bytes());
        self.0.extend_from_slice(&(text.len() as u16).to_le_bytes());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn source_location_answer(&mut self, name: u64, function: u64, file: u64, line: u32) {
        self.0.push(queue::SOURCE_LOCATION);
        for p in [name, function, file] {
            self.0.extend_from_slice(&p.to_le_bytes());
        }
        self.0.extend_from_slice(&line.to_le_bytes());
        self.0.extend_from_slice(&[0, 0, 0]);
    }
}

/// One generated zone: which location, and the deltas before its begin and its end (its
/// children in between).
#[derive(Clone, Debug)]
struct Zone {
    kind: usize,
    before: i64,
    length_gap: i64,
    children: Vec<Zone>,
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..(1 << 16),
        3 => (1i64 << 16)..(1 << 24),
        1 => (1i64 << 32)..(1 << 34),
    ]
}

fn zone_tree() -> impl Strategy<Value = Zone> {
    let leaf = (0usize..3, delta(), delta()).prop_map(|(kind, before, length_gap)| Zone {
        kind,
        before,
        length_gap,
        children: Vec::new(),
    });
    leaf.prop_recursive(3, 16, 3, |inner| {
        (
            0usize..3,
            delta(),
            delta(),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(kind, before, length_gap, children)| Zone {
                kind,
                before,
                length_gap,
                children,
            })
    })
}

const SRCLOC: u64 = 0x7f00_0000_1000;

/// Encodes `zone` at `clock` (absolute ticks, advanced); records each zone's duration.
fn encode(zone: &Zone, items: &mut Items, clock: &mut i64, out: &mut BTreeMap<usize, Vec<i64>>) {
    *clock += zone.before;
    let start = *clock;
    items.begin(SRCLOC + zone.kind as u64 * 0x40, zone.before);
    for child in &zone.children {
        encode(child, items, clock, out);
    }
    *clock += zone.length_gap;
    items.end(zone.length_gap);
    out.entry(zone.kind).or_default().push(*clock - start);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn arbitrary_bytes_never_panic(
        with_preamble in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        pieces in prop::collection::vec(1usize..600, 1..8),
    ) {
        let mut session = Session::new(Limits::default());
        let mut stream = if with_preamble { preamble() } else { Vec::new() };
        stream.extend_from_slice(&bytes);
        let _ = feed_in_pieces(&mut session, &stream, &pieces);
        let _ = session.summary();
        let _ = session.take_queries();
    }

    #[test]
    fn arbitrary_items_in_valid_frames_never_panic_and_stay_bounded(
        data in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..2048), 1..6),
        pieces in prop::collection::vec(1usize..5000, 1..4),
    ) {
        let limits = Limits {
            strings: 8,
            string_bytes: 512,
            source_locations: 8,
            threads: 4,
            zone_depth: 8,
            series: 4,
            messages_kept: 4,
            samples_per_zone: 4,
            query_space: 16,
        };
        let mut session = Session::new(limits);
        let mut stream = preamble();
        stream.extend_from_slice(&frames(&data));
        let _ = feed_in_pieces(&mut session, &stream, &pieces);
        let summary = session.summary();
        prop_assert!(summary.threads.len() <= 4);
        prop_assert!(summary.plots.len() <= 4);
        prop_assert!(summary.messages.len() <= 4);
        prop_assert!(session.take_queries().len() <= 16);
    }

    #[test]
    fn synthetic_streams_decode_to_what_they_encode(
        threads in prop::collection::vec(prop::collection::vec(zone_tree(), 1..5), 1..4),
        frame_gaps in prop::collection::vec(1i64..10_000_000, 2..30),
        plot_values in prop::collection::vec(-1e6f64..1e6, 0..20),
        split in 1usize..6,
        pieces in prop::collection::vec(1usize..3000, 1..5),
    ) {
        let mut items = Items::default();
        let mut expected: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for (t, zones) in threads.iter().enumerate() {
            items.thread(100 + t as u32);
            let mut clock = 0i64;
            for zone in zones {
                encode(zone, &mut items, &mut clock, &mut expected);
            }
            if t == 0 {
                for v in &plot_values {
                    items.plot(0xabc0, 5, *v);
                }
            }
        }
        let mut time = 1_000i64;
        for gap in &frame_gaps {
            time += gap;
            items.frame_mark(time);
        }
        // The client answers the session's queries; here the answers ride along in the stream.
        // Source locations are answered in the order the session asked: first use.
        let mut order: Vec<u64> = Vec::new();
        {
            let mut walk: Vec<&Zone> = threads.iter().flatten().collect();
            walk.reverse();
            while let Some(z) = walk.pop() {
                if !order.contains(&(z.kind as u64)) {
                    order.push(z.kind as u64);
                }
                walk.extend(z.children.iter().rev());
            }
        }
        for &kind in &order {
            items.source_location_answer(0x9000 + kind, 0x9100, 0x9200, kind as u32);
        }
        for kind in 0..3u64 {
            items.string_answer(queue::STRING_DATA, 0x9000 + kind, &format!("zone{kind}"));
        }
        items.string_answer(queue::STRING_DATA, 0x9100, "function");
        items.string_answer(queue::STRING_DATA, 0x9200, "file.rs");
        items.string_answer(queue::PLOT_NAME, 0xabc0, "the_plot");
        for t in 0..threads.len() as u64 {
            items.string_answer(queue::THREAD_NAME, 100 + t, &format!("thread{t}"));
        }
        items.0.push(queue::TERMINATE);

        // Cut into frames at item boundaries: re-walk the items to find them.
        let bytes = items.0;
        let mut cuts = vec![0];
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let kind = bytes[at] as usize;
            let size = if kind >= queue::STRING_DATA as usize {
                let len = u16::from_le_bytes([bytes[at + 9], bytes[at + 10]]) as usize;
                11 + len
            } else {
                orrery_profiler::protocol::ITEM_SIZES[kind] as usize
            };
            at += size;
            n += 1;
            if n % split == 0 || at == bytes.len() {
                cuts.push(at);
            }
        }
        let chunks: Vec<Vec<u8>> = cuts.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();

        let mut session = Session::new(Limits::default());
        let mut stream = preamble();
        stream.extend_from_slice(&frames(&chunks));
        feed_in_pieces(&mut session, &stream, &pieces).expect("a well-formed stream decodes");
        let summary = session.summary();

        prop_assert!(summary.terminated);
        prop_assert_eq!(summary.pid, Some(4242));
        prop_assert_eq!(summary.program.as_deref(), Some("synthetic"));
        prop_assert_eq!(summary.frame_count(), frame_gaps.len() as u64);
        let frame = summary.frames.iter().find(|f| f.name == "Frame").expect("frames");
        let intervals: Vec<i64> = frame_gaps[1..].to_vec();
        let mean = intervals.iter().sum::<i64>() as f64 / intervals.len() as f64 * TIMER_MUL;
        prop_assert!((frame.mean_ns - mean).abs() <= 1e-6 * mean.max(1.0));

        for (kind, durations) in &expected {
            let name = format!("zone{kind}");
            let zone = summary.zone(&name).expect("every generated kind has a zone");
            prop_assert_eq!(zone.count, durations.len() as u64);
            prop_assert_eq!(&zone.function, "function");
            prop_assert_eq!(&zone.file, "file.rs");
            prop_assert_eq!(zone.line, *kind as u32);
            let total = durations.iter().sum::<i64>() as f64 * TIMER_MUL;
            prop_assert!((zone.total_ns - total).abs() <= 1e-9 * total.max(1.0), "{} vs {}", zone.total_ns, total);
            let max = *durations.iter().max().expect("some") as f64 * TIMER_MUL;
            prop_assert!((zone.max_ns - max).abs() <= 1e-9 * max.max(1.0));
        }
        prop_assert_eq!(summary.zones.len(), expected.len());
        if plot_values.is_empty() {
            prop_assert!(summary.plot("the_plot").is_none());
        } else {
            let plot = summary.plot("the_plot").expect("the plot");
            prop_assert_eq!(plot.points, plot_values.len() as u64);
            let min = plot_values.iter().copied().fold(f64::INFINITY, f64::min);
            prop_assert_eq!(plot.min, min);
        }
        for t in 0..threads.len() {
            let name = format!("thread{t}");
            prop_assert!(summary.threads.iter().any(|th| th.name == name));
        }
    }
}

#[test]
fn the_session_asks_for_each_name_once_within_its_budget() {
    let mut items = Items::default();
    items.thread(7);
    for i in 0..40u64 {
        items.begin(SRCLOC + (i % 20) * 8, 10);
        items.end(10);
    }
    let mut stream = preamble();
    stream.extend_from_slice(&frames(&[items.0]));
    let mut session = Session::new(Limits {
        query_space: 8,
        ..Limits::default()
    });
    session.feed(&stream).expect("decodes");
    // One thread name and 20 source locations, 8 at a time.
    assert_eq!(session.outstanding_queries(), 21);
    let first = session.take_queries();
    assert_eq!(first.len(), 8);
    assert_eq!(first[0].kind, ServerQuery::ThreadString);
    assert_eq!(first[0].ptr, 7);
    assert!(
        first[1..]
            .iter()
            .all(|q| q.kind == ServerQuery::SourceLocation)
    );
    assert!(session.take_queries().is_empty(), "no budget left");
    // An answer frees one slot.
    let mut answer = Items::default();
    answer.source_location_answer(0, 0x10, 0x20, 1);
    session
        .feed(&frames_after(&stream, &answer.0))
        .expect("decodes");
    let next = session.take_queries();
    assert_eq!(next.len(), 1, "{next:?}");
}

/// One more frame continuing the LZ4 stream of `stream` (a preamble and one frame).
fn frames_after(stream: &[u8], data: &[u8]) -> Vec<u8> {
    // The first frame's decompressed content is the dictionary: recover it.
    let body = &stream[preamble().len()..];
    let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let first = lz4_flex::block::decompress(&body[4..4 + len], 256 * 1024).expect("own frame");
    let block = lz4_flex::block::compress_with_dict(data, &first);
    let mut out = (block.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&block);
    out
}

#[test]
fn blocks_that_refer_into_earlier_frames_decode() {
    // The same 40 KiB of items twice: the second block is mostly a match into the first.
    let mut items = Items::default();
    items.thread(1);
    let mut x = 12345u64;
    for _ in 0..2000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.begin(SRCLOC + (x >> 58) * 8, ((x >> 20) % 60_000) as i64);
        items.end(1000);
    }
    let data = items.0;
    let stream = frames(&[data.clone(), data.clone()]);
    let first = u32::from_le_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
    let second_at = 4 + first;
    let second = u32::from_le_bytes([
        stream[second_at],
        stream[second_at + 1],
        stream[second_at + 2],
        stream[second_at + 3],
    ]) as usize;
    assert!(
        second * 10 < first,
        "the second block refers back: {second} vs {first}"
    );
    // Without the first frame the second does not decode on its own.
    assert!(lz4_flex::block::decompress(&stream[second_at + 4..], data.len()).is_err());

    let mut session = Session::default();
    let mut all = preamble();
    all.extend_from_slice(&stream);
    session
        .feed(&all)
        .expect("decodes with the stream's history");
    let summary = session.summary();
    assert_eq!(summary.stream_frames, 2);
    assert_eq!(summary.zones.iter().map(|z| z.count).sum::<u64>(), 4000);
    assert!(
        summary
            .zones
            .iter()
            .all(|z| z.mean_ns == 1000.0 * TIMER_MUL)
    );
}

#[test]
fn limits_turn_into_errors_not_growth() {
    let mut items = Items::default();
    items.thread(1);
    for i in 0..100u64 {
        items.begin(SRCLOC + i * 8, 1);
    }
    let mut stream = preamble();
    stream.extend_from_slice(&frames(&[items.0]));
    let mut session = Session::new(Limits {
        source_locations: 50,
        zone_depth: 1000,
        ..Limits::default()
    });
    let err = session.feed(&stream).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Limit {
                what: "source locations",
                limit: 50
            }
        ),
        "{err}"
    );
    assert!(matches!(session.feed(&[0]), Err(DecodeError::Failed)));

    let mut deep = Session::new(Limits {
        zone_depth: 10,
        ..Limits::default()
    });
    let mut items = Items::default();
    items.thread(1);
    for _ in 0..11 {
        items.begin(SRCLOC, 1);
    }
    let mut stream = preamble();
    stream.extend_from_slice(&frames(&[items.0]));
    let err = deep.feed(&stream).unwrap_err();
    assert!(matches!(err, DecodeError::Limit { limit: 10, .. }), "{err}");
}

#[test]
fn malformed_streams_are_named_errors() {
    // A refused handshake.
    let mut s = Session::default();
    assert!(matches!(
        s.feed(&[2]),
        Err(DecodeError::Refused(
            orrery_profiler::protocol::HandshakeStatus::ProtocolMismatch
        ))
    ));
    // A frame longer than the protocol allows.
    let mut s = Session::default();
    let mut bytes = preamble();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        s.feed(&bytes),
        Err(DecodeError::FrameLength { len: u32::MAX, .. })
    ));
    // An unknown item type.
    let mut s = Session::default();
    let mut bytes = preamble();
    bytes.extend_from_slice(&frames(&[vec![200]]));
    assert!(matches!(
        s.feed(&bytes),
        Err(DecodeError::UnknownItem { kind: 200, .. })
    ));
    // An item cut short by the end of its frame.
    let mut s = Session::default();
    let mut bytes = preamble();
    bytes.extend_from_slice(&frames(&[vec![queue::ZONE_BEGIN, 1, 2]]));
    assert!(matches!(
        s.feed(&bytes),
        Err(DecodeError::Truncated {
            kind: queue::ZONE_BEGIN,
            ..
        })
    ));
    // A string longer than what is left.
    let mut s = Session::default();
    let mut bytes = preamble();
    let mut item = vec![queue::STRING_DATA];
    item.extend_from_slice(&[0; 8]);
    item.extend_from_slice(&1000u16.to_le_bytes());
    item.extend_from_slice(b"short");
    bytes.extend_from_slice(&frames(&[item]));
    assert!(matches!(s.feed(&bytes), Err(DecodeError::Truncated { .. })));
    // Garbage where an LZ4 block should be.
    let mut s = Session::default();
    let mut bytes = preamble();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert!(matches!(s.feed(&bytes), Err(DecodeError::Lz4 { .. })));
}
