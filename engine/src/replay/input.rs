//! The input log's entries: what entered the engine during one tick (`init`, reducer calls
//! with caller and argument bytes, connects, disconnects), their byte encoding inside a
//! commit-log record, and a total decoder (any bytes give a value or an error, never a panic).

use crate::codec::{RowDecodeError, read_len, take_bytes, write_varint};
use crate::engine::Caller;
use crate::identity::{ConnectionId, Identity};
use crate::time::Timestamp;

/// Kinds (low two bits of the tag byte).
const CALL: u8 = 0;
const CONNECT: u8 = 1;
const DISCONNECT: u8 = 2;
const INIT: u8 = 3;
/// Tag bit: the input was queued and ran inside `step` (otherwise it was a direct call made
/// before the step, which sees the previous tick's timestamp).
const QUEUED: u8 = 0x80;
/// The longest reducer name the decoder accepts.
pub const MAX_REDUCER_NAME: usize = 1024;

/// One input as recorded, in the order it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedInput {
    /// `Engine::init(now)` (the first tick of a new database).
    Init {
        /// The timestamp `init` ran with.
        timestamp: Timestamp,
    },
    /// A reducer call (by name, with its argument bytes in the row format).
    Call {
        /// Queued (ran in `step`) or made directly before it.
        queued: bool,
        /// Who called.
        caller: Caller,
        /// The reducer's name.
        reducer: String,
        /// The argument bytes.
        args: Vec<u8>,
    },
    /// `client_connected`.
    Connect {
        /// Queued or direct.
        queued: bool,
        /// The client.
        caller: Caller,
    },
    /// `client_disconnected`.
    Disconnect {
        /// Queued or direct.
        queued: bool,
        /// The client.
        caller: Caller,
    },
}

fn write_caller(out: &mut Vec<u8>, caller: Caller) {
    out.extend_from_slice(caller.identity.as_bytes());
    match caller.connection_id {
        Some(ConnectionId(id)) => {
            out.push(1);
            out.extend_from_slice(&id.to_le_bytes());
        }
        None => out.push(0),
    }
}

/// Appends an init entry.
pub(crate) fn encode_init(out: &mut Vec<u8>, timestamp: Timestamp) {
    out.push(INIT);
    out.extend_from_slice(&timestamp.as_micros().to_le_bytes());
}

/// Appends a call entry.
pub(crate) fn encode_call(
    out: &mut Vec<u8>,
    queued: bool,
    caller: Caller,
    reducer: &str,
    args: &[u8],
) {
    out.push(CALL | if queued { QUEUED } else { 0 });
    write_caller(out, caller);
    write_varint(out, reducer.len() as u64);
    out.extend_from_slice(reducer.as_bytes());
    write_varint(out, args.len() as u64);
    out.extend_from_slice(args);
}

/// Appends a connect (`connected = true`) or disconnect entry.
pub(crate) fn encode_lifecycle(out: &mut Vec<u8>, queued: bool, connected: bool, caller: Caller) {
    let kind = if connected { CONNECT } else { DISCONNECT };
    out.push(kind | if queued { QUEUED } else { 0 });
    write_caller(out, caller);
}

impl RecordedInput {
    /// Appends this input's encoding (the same bytes the engine records).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RecordedInput::Init { timestamp } => encode_init(out, *timestamp),
            RecordedInput::Call {
                queued,
                caller,
                reducer,
                args,
            } => encode_call(out, *queued, *caller, reducer, args),
            RecordedInput::Connect { queued, caller } => {
                encode_lifecycle(out, *queued, true, *caller)
            }
            RecordedInput::Disconnect { queued, caller } => {
                encode_lifecycle(out, *queued, false, *caller)
            }
        }
    }
}

fn read_caller(input: &mut &[u8]) -> Result<Caller, RowDecodeError> {
    let raw = take_bytes(input, 32, "caller identity")?;
    let mut identity = [0u8; 32];
    identity.copy_from_slice(raw);
    let connection_id = match take_bytes(input, 1, "caller connection flag")?[0] {
        0 => None,
        1 => {
            let raw = take_bytes(input, 8, "caller connection")?;
            let mut id = [0u8; 8];
            id.copy_from_slice(raw);
            Some(ConnectionId(u64::from_le_bytes(id)))
        }
        tag => {
            return Err(RowDecodeError::InvalidTag {
                what: "caller connection flag",
                tag: u64::from(tag),
            });
        }
    };
    Ok(Caller {
        identity: Identity::from_bytes(identity),
        connection_id,
    })
}

/// Decodes `count` entries that fill `bytes` exactly.
pub fn decode_inputs(count: u64, bytes: &[u8]) -> Result<Vec<RecordedInput>, RowDecodeError> {
    let mut input = bytes;
    // Every entry takes at least nine bytes: this bounds the allocation by the input.
    if count.saturating_mul(9) > input.len() as u64 {
        return Err(RowDecodeError::LengthTooLarge {
            len: count,
            remaining: input.len(),
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let tag = take_bytes(&mut input, 1, "input tag")?[0];
        let queued = tag & QUEUED != 0;
        if tag & !(QUEUED | 3) != 0 || (tag & 3 == INIT && queued) {
            return Err(RowDecodeError::InvalidTag {
                what: "input tag",
                tag: u64::from(tag),
            });
        }
        out.push(match tag & 3 {
            INIT => {
                let raw = take_bytes(&mut input, 8, "init timestamp")?;
                let mut micros = [0u8; 8];
                micros.copy_from_slice(raw);
                RecordedInput::Init {
                    timestamp: Timestamp::from_micros(i64::from_le_bytes(micros)),
                }
            }
            CONNECT => RecordedInput::Connect {
                queued,
                caller: read_caller(&mut input)?,
            },
            DISCONNECT => RecordedInput::Disconnect {
                queued,
                caller: read_caller(&mut input)?,
            },
            _ => {
                let caller = read_caller(&mut input)?;
                let len = read_len(&mut input, 1, "reducer name")?;
                if len > MAX_REDUCER_NAME {
                    return Err(RowDecodeError::LengthTooLarge {
                        len: len as u64,
                        remaining: MAX_REDUCER_NAME,
                    });
                }
                let name = take_bytes(&mut input, len, "reducer name")?;
                let reducer = std::str::from_utf8(name)
                    .map_err(|e| RowDecodeError::InvalidUtf8 {
                        valid_up_to: e.valid_up_to(),
                    })?
                    .to_owned();
                let len = read_len(&mut input, 1, "reducer arguments")?;
                let args = take_bytes(&mut input, len, "reducer arguments")?.to_vec();
                RecordedInput::Call {
                    queued,
                    caller,
                    reducer,
                    args,
                }
            }
        });
    }
    if !input.is_empty() {
        return Err(RowDecodeError::TrailingBytes(input.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caller(seed: u8, connection: Option<u64>) -> Caller {
        Caller {
            identity: Identity::from_bytes([seed; 32]),
            connection_id: connection.map(ConnectionId),
        }
    }

    fn samples() -> Vec<RecordedInput> {
        vec![
            RecordedInput::Init {
                timestamp: Timestamp::from_micros(-5),
            },
            RecordedInput::Connect {
                queued: true,
                caller: caller(1, Some(7)),
            },
            RecordedInput::Call {
                queued: true,
                caller: caller(1, Some(7)),
                reducer: "say".into(),
                args: vec![3, b'h', b'i', b'!', 0],
            },
            RecordedInput::Call {
                queued: false,
                caller: caller(9, None),
                reducer: String::new(),
                args: Vec::new(),
            },
            RecordedInput::Disconnect {
                queued: false,
                caller: caller(1, Some(u64::MAX)),
            },
        ]
    }

    #[test]
    fn inputs_round_trip() {
        let inputs = samples();
        let mut bytes = Vec::new();
        for input in &inputs {
            input.encode(&mut bytes);
        }
        assert_eq!(decode_inputs(inputs.len() as u64, &bytes).unwrap(), inputs);
        // Too few, too many, cut short: errors.
        assert!(decode_inputs(inputs.len() as u64 - 1, &bytes).is_err());
        assert!(decode_inputs(inputs.len() as u64 + 1, &bytes).is_err());
        for cut in 0..bytes.len() {
            assert!(decode_inputs(inputs.len() as u64, &bytes[..cut]).is_err());
        }
        assert!(decode_inputs(u64::MAX, &bytes).is_err());
    }

    proptest! {
        /// The decoder is total: any count and bytes decode or fail, never panic, and what
        /// decodes re-encodes to the same bytes.
        #[test]
        fn the_decoder_is_total(count in 0u64..8, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(inputs) = decode_inputs(count, &bytes) {
                let mut again = Vec::new();
                for input in &inputs {
                    input.encode(&mut again);
                }
                prop_assert_eq!(again, bytes);
            }
        }

        /// Flipping any byte of a valid encoding never panics the decoder.
        #[test]
        fn corrupted_encodings_never_panic(at in 0usize..200, value in any::<u8>()) {
            let inputs = samples();
            let mut bytes = Vec::new();
            for input in &inputs {
                input.encode(&mut bytes);
            }
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = decode_inputs(inputs.len() as u64, &bytes);
        }
    }
}
