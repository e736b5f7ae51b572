//! Status codes, the errors behind them, the thread-local last error and the guard every
//! entry point runs in (no panic crosses the C boundary).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use orrery_client::{ClientError, MirrorError};

/// What an `orrery_*` function returns. `ORRERY_STATUS_OK` is success; anything else is a
/// failure whose text [`crate::orrery_last_error`] returns.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrreryStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument was malformed: not UTF-8, bad JSON, out of range.
    InvalidArgument = 2,
    /// The handle is not (or no longer) a live client: destroyed, never issued, or forged.
    InvalidHandle = 3,
    /// The control plane (HTTP: identity, schema, connect token) failed or refused.
    ControlPlane = 4,
    /// The UDP connection could not be set up (bad connect token, socket error).
    Connect = 5,
    /// The schema has no such reducer, or clients may not call it.
    UnknownReducer = 6,
    /// Reducer arguments do not match the reducer's parameters.
    BadArguments = 7,
    /// The connection is closed, or the message could not be queued on it.
    NotConnected = 8,
    /// No active subscription has this query id.
    UnknownQuery = 9,
    /// A socket operation failed.
    Io = 10,
    /// A Rust panic was caught at the boundary (a bug in this library; the handle involved
    /// may be unusable).
    Panic = 11,
}

/// A failure inside the library, turned into an [`OrreryStatus`] and a message at the
/// boundary.
#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    /// A required pointer argument was NULL.
    #[error("argument `{0}` is NULL")]
    Null(&'static str),
    /// A string argument was not UTF-8.
    #[error("argument `{name}` is not valid UTF-8 (valid up to byte {valid_up_to})")]
    Utf8 {
        /// The argument.
        name: &'static str,
        /// Length of its valid prefix.
        valid_up_to: usize,
    },
    /// JSON arguments did not parse.
    #[error("argument `{name}` is not valid JSON: {error}")]
    Json {
        /// The argument.
        name: &'static str,
        /// The parser's message.
        error: String,
    },
    /// The handle is not a live client.
    #[error("invalid client handle {0:#x} (destroyed, never issued, or not a handle)")]
    InvalidHandle(u64),
    /// The library caught a panic.
    #[error("internal error (panic caught at the C boundary): {0}")]
    Panic(String),
    /// A failure of the Rust client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The private runtime for control-plane calls could not be started.
    #[error("could not start the control-plane runtime: {0}")]
    Runtime(std::io::Error),
}

impl FfiError {
    /// The status code a caller sees.
    pub fn status(&self) -> OrreryStatus {
        match self {
            FfiError::Null(_) => OrreryStatus::NullArgument,
            FfiError::Utf8 { .. } | FfiError::Json { .. } => OrreryStatus::InvalidArgument,
            FfiError::InvalidHandle(_) => OrreryStatus::InvalidHandle,
            FfiError::Panic(_) => OrreryStatus::Panic,
            FfiError::Runtime(_) => OrreryStatus::Io,
            FfiError::Client(e) => match e {
                ClientError::InvalidUrl { .. } | ClientError::InvalidCertificate { .. } => {
                    OrreryStatus::InvalidArgument
                }
                ClientError::Http { .. }
                | ClientError::Status { .. }
                | ClientError::BadResponse { .. }
                | ClientError::Timeout { .. } => OrreryStatus::ControlPlane,
                ClientError::Token(_) | ClientError::TokenEncoding { .. } => OrreryStatus::Connect,
                ClientError::Io { .. } => OrreryStatus::Io,
                ClientError::UnknownReducer(_) | ClientError::NotCallable { .. } => {
                    OrreryStatus::UnknownReducer
                }
                ClientError::Args { .. } => OrreryStatus::BadArguments,
                ClientError::Send(_) | ClientError::Disconnected(_) => OrreryStatus::NotConnected,
                ClientError::UnknownQuery(_) | ClientError::Subscription { .. } => {
                    OrreryStatus::UnknownQuery
                }
                ClientError::Mirror(MirrorError::UnknownTable(_) | MirrorError::Key { .. }) => {
                    OrreryStatus::InvalidArgument
                }
                ClientError::Mirror(_) => OrreryStatus::ControlPlane,
            },
        }
    }
}

thread_local! {
    /// The message of the last failure on this thread (empty before any).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
pub fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\u{fffd}")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// A pointer to this thread's last error text (NUL-terminated UTF-8), valid until the next
/// failing call on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs one entry point's body: a panic becomes [`OrreryStatus::Panic`], an error its status;
/// either sets the thread's last error.
pub fn guard(body: impl FnOnce() -> Result<(), FfiError>) -> OrreryStatus {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Err(FfiError::Panic(text))
    });
    match outcome {
        Ok(()) => OrreryStatus::Ok,
        Err(error) => {
            set_last_error(&error.to_string());
            error.status()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last_error() -> String {
        // SAFETY: the pointer is this thread's live, NUL-terminated last-error text.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        assert_eq!(guard(|| panic!("boom {}", 7)), OrreryStatus::Panic);
        assert!(last_error().contains("boom 7"), "{}", last_error());
        assert_eq!(guard(|| panic!("static")), OrreryStatus::Panic);
        assert!(last_error().ends_with("static"));
    }

    #[test]
    fn an_error_sets_the_last_error_and_success_keeps_it() {
        assert_eq!(
            guard(|| Err(FfiError::InvalidHandle(0x1_0000_0002))),
            OrreryStatus::InvalidHandle
        );
        assert_eq!(
            last_error(),
            "invalid client handle 0x100000002 (destroyed, never issued, or not a handle)"
        );
        assert_eq!(guard(|| Ok(())), OrreryStatus::Ok);
        assert!(last_error().starts_with("invalid client handle"));
        set_last_error("nul\0inside");
        assert_eq!(last_error(), "nul\u{fffd}inside");
    }
}
