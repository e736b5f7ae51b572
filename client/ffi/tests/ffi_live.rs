//! The C ABI from Rust against a live sample-mmo server (real HTTP and UDP): connect, enter
//! the world, subscribe near the player, move and see the own avatar's row change, get an
//! error reply for a bad call; and the boundary's checks: NULL arguments, bad UTF-8, bad JSON,
//! unknown reducers and stale handles are status codes with a last-error text.

use std::ffi::{CStr, CString, c_char};
use std::time::{Duration, Instant};

use orrery_client::row::{ModuleSchema, Value, decode_row};
use orrery_client_ffi::*;
use support::Server;

mod support;

fn last_error() -> String {
    // SAFETY: orrery_last_error returns this thread's NUL-terminated text.
    unsafe { CStr::from_ptr(orrery_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the event's pointers are valid for their lengths until the next next_event.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

fn message(event: &OrreryEvent) -> String {
    if event.message.is_null() {
        return String::new();
    }
    // SAFETY: a non-NULL message is NUL-terminated and lives until the next next_event.
    unsafe { CStr::from_ptr(event.message) }
        .to_string_lossy()
        .into_owned()
}

/// A client over the C ABI, with its events copied out as they are drained.
struct Ffi {
    handle: OrreryClientHandle,
    schema: ModuleSchema,
    identity: Option<[u8; 32]>,
}

/// An event copied out of the library's memory.
#[derive(Debug, Clone)]
struct Copied {
    kind: u32,
    table_id: u32,
    id: u32,
    ok: bool,
    row: Vec<u8>,
    message: String,
}

impl Ffi {
    fn connect(url: &str) -> Ffi {
        let url = CString::new(url).unwrap();
        let mut handle = 0;
        // SAFETY: valid C strings (token NULL) and a writable out-pointer.
        let status =
            unsafe { orrery_client_connect(url.as_ptr(), std::ptr::null(), 0, &mut handle) };
        assert_eq!(status, OrreryStatus::Ok, "{}", last_error());
        let (mut json, mut len): (*const c_char, usize) = (std::ptr::null(), 0);
        // SAFETY: writable out-pointers.
        let status = unsafe { orrery_client_schema_json(handle, &mut json, &mut len) };
        assert_eq!(status, OrreryStatus::Ok);
        // SAFETY: valid for the handle's lifetime, `len` bytes plus a NUL.
        let text = unsafe { CStr::from_ptr(json) }.to_str().unwrap();
        assert_eq!(text.len(), len);
        let schema = ModuleSchema::from_json_str(text).unwrap();
        Ffi {
            handle,
            schema,
            identity: None,
        }
    }

    /// Polls and drains until `want` matches an event (returned with everything before it).
    fn until(&mut self, what: &str, mut want: impl FnMut(&Ffi, &Copied) -> bool) -> Vec<Copied> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            // SAFETY: `pending` may be NULL.
            let status = unsafe { orrery_client_poll(self.handle, std::ptr::null_mut()) };
            assert_eq!(status, OrreryStatus::Ok, "{}", last_error());
            loop {
                let mut event = OrreryEvent::NONE;
                // SAFETY: a writable event.
                let status = unsafe { orrery_client_next_event(self.handle, &mut event) };
                assert_eq!(status, OrreryStatus::Ok);
                if event.kind == OrreryEventKind::None as u32 {
                    break;
                }
                if event.kind == OrreryEventKind::Connected as u32 {
                    self.identity = Some(event.identity);
                }
                let copied = Copied {
                    kind: event.kind,
                    table_id: event.table_id,
                    id: event.id,
                    ok: event.ok == 1,
                    row: bytes(event.row, event.row_len).to_vec(),
                    message: message(&event),
                };
                let done = want(self, &copied);
                seen.push(copied);
                if done {
                    return seen;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}; saw {seen:#?}");
    }

    fn call_json(&self, reducer: &str, json: &str) -> u32 {
        let (reducer, json) = (CString::new(reducer).unwrap(), CString::new(json).unwrap());
        let mut id = 0;
        // SAFETY: valid C strings and a writable request id.
        let status = unsafe {
            orrery_client_call_json(self.handle, reducer.as_ptr(), json.as_ptr(), 0, &mut id)
        };
        assert_eq!(status, OrreryStatus::Ok, "{}", last_error());
        id
    }

    fn reply(&mut self, id: u32) -> Copied {
        let seen = self.until("a reducer reply", |_, e| {
            e.kind == OrreryEventKind::ReducerReply as u32 && e.id == id
        });
        seen.last().unwrap().clone()
    }

    /// The avatar row's values if `e` is an insert or update of this client's own avatar.
    fn own_avatar(&self, e: &Copied) -> Option<Vec<Value>> {
        let row_event = e.kind == OrreryEventKind::RowInsert as u32
            || e.kind == OrreryEventKind::RowUpdate as u32;
        let table = self.schema.table_by_id(e.table_id)?;
        if !row_event || table.name != "avatar" {
            return None;
        }
        let values = decode_row(table, &e.row).expect("avatar row decodes");
        let (owner, _) = table.column("owner").unwrap();
        match (&values[owner], self.identity) {
            (Value::Identity(id), Some(me)) if id.0 == me => Some(values),
            _ => None,
        }
    }
}

impl Drop for Ffi {
    fn drop(&mut self) {
        let _ = orrery_client_destroy(self.handle);
    }
}

fn x_of(values: &[Value], schema: &ModuleSchema) -> f32 {
    let (i, _) = schema.table("avatar").unwrap().column("position").unwrap();
    match &values[i] {
        Value::Vec2(p) => p.x,
        other => panic!("position is {other:?}"),
    }
}

#[test]
fn plays_the_sample_over_the_c_abi() {
    let server = Server::start();
    let mut client = Ffi::connect(&server.url);
    client.until("connected", |_, e| {
        e.kind == OrreryEventKind::Connected as u32
    });
    assert!(client.identity.is_some());

    let id = client.call_json("enter_world", r#"["ffi_rust"]"#);
    let reply = client.reply(id);
    assert!(reply.ok, "enter_world failed: {}", reply.message);

    let sql = CString::new("SELECT * FROM avatar WHERE within(position, :focus, 100)").unwrap();
    let mut query = 0;
    // SAFETY: a valid C string and a writable query id.
    let status = unsafe { orrery_client_subscribe(client.handle, sql.as_ptr(), &mut query) };
    assert_eq!(status, OrreryStatus::Ok, "{}", last_error());
    let seen = client.until("the own avatar", |c, e| c.own_avatar(e).is_some());
    let start = x_of(
        &client.own_avatar(seen.last().unwrap()).unwrap(),
        &client.schema,
    );
    assert!(
        seen.iter()
            .any(|e| e.kind == OrreryEventKind::SubscriptionApplied as u32 && e.id == query)
            || client
                .until("applied", |_, e| e.kind
                    == OrreryEventKind::SubscriptionApplied as u32)
                .iter()
                .any(|e| e.id == query)
    );

    let id = client.call_json("set_input", "[[1, 0], false]");
    assert!(client.reply(id).ok);
    let schema = client.schema.clone();
    client.until("the own avatar to move east", |c, e| {
        c.own_avatar(e)
            .is_some_and(|v| x_of(&v, &schema) > start + 0.5)
    });

    let id = client.call_json("enter_world", r#"["x"]"#);
    let reply = client.reply(id);
    assert!(!reply.ok);
    assert!(reply.message.contains("name"), "{}", reply.message);

    // Raw arguments: `say("hello from the ABI", false)` encoded by hand (§4).
    let reducer = CString::new("say").unwrap();
    let mut args = vec![19];
    args.extend_from_slice(b"hello from the ABI");
    args.push(0);
    let mut id = 0;
    // SAFETY: a valid C string, `args` readable for its length, a writable id.
    let status = unsafe {
        orrery_client_call(
            client.handle,
            reducer.as_ptr(),
            args.as_ptr(),
            args.len(),
            0,
            &mut id,
        )
    };
    assert_eq!(status, OrreryStatus::Ok);
    let reply = client.reply(id);
    assert!(!reply.ok, "19 is not the length of an 18-byte string");

    assert_eq!(orrery_client_disconnect(client.handle), OrreryStatus::Ok);
    let seen = client.until("disconnected", |_, e| {
        e.kind == OrreryEventKind::Disconnected as u32
    });
    assert!(!seen.last().unwrap().message.is_empty());
}

#[test]
fn the_boundary_checks_its_arguments_and_handles() {
    let server = Server::start();
    let client = Ffi::connect(&server.url);
    let handle = client.handle;

    let reducer = CString::new("no_such_reducer").unwrap();
    let args = CString::new("[]").unwrap();
    // SAFETY: valid C strings; the request id may be NULL.
    let status = unsafe {
        orrery_client_call_json(
            handle,
            reducer.as_ptr(),
            args.as_ptr(),
            0,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(status, OrreryStatus::UnknownReducer);
    assert!(last_error().contains("no_such_reducer"), "{}", last_error());

    let reducer = CString::new("enter_world").unwrap();
    for (json, status) in [
        ("[1]", OrreryStatus::BadArguments),
        ("[", OrreryStatus::InvalidArgument),
    ] {
        let json = CString::new(json).unwrap();
        // SAFETY: as above.
        let got = unsafe {
            orrery_client_call_json(
                handle,
                reducer.as_ptr(),
                json.as_ptr(),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(got, status, "{}", last_error());
    }
    // SAFETY: NULL is an allowed input to check; it is reported, not read.
    let status = unsafe { orrery_client_subscribe(handle, std::ptr::null(), std::ptr::null_mut()) };
    assert_eq!(status, OrreryStatus::NullArgument);
    assert_eq!(last_error(), "argument `sql` is NULL");
    let bad_utf8 = [0x53u8, 0xff, 0x00];
    // SAFETY: a NUL-terminated byte string.
    let status =
        unsafe { orrery_client_subscribe(handle, bad_utf8.as_ptr().cast(), std::ptr::null_mut()) };
    assert_eq!(status, OrreryStatus::InvalidArgument);
    assert_eq!(
        orrery_client_unsubscribe(handle, 999),
        OrreryStatus::UnknownQuery
    );

    // A destroyed handle is dead for every function, and destroying it again is an error.
    let stale = handle;
    std::mem::forget(client);
    assert_eq!(orrery_client_destroy(stale), OrreryStatus::Ok);
    assert_eq!(orrery_client_destroy(stale), OrreryStatus::InvalidHandle);
    let mut event = OrreryEvent::NONE;
    // SAFETY: a writable event.
    let status = unsafe { orrery_client_next_event(stale, &mut event) };
    assert_eq!(status, OrreryStatus::InvalidHandle);
    assert!(last_error().starts_with("invalid client handle"));
    // SAFETY: `pending` may be NULL.
    let status = unsafe { orrery_client_poll(stale, std::ptr::null_mut()) };
    assert_eq!(status, OrreryStatus::InvalidHandle);
    // A new client may reuse the slot, under another generation.
    let other = Ffi::connect(&server.url);
    assert_ne!(other.handle, stale);
    assert_eq!(orrery_client_disconnect(stale), OrreryStatus::InvalidHandle);
    assert_eq!(orrery_client_disconnect(0), OrreryStatus::InvalidHandle);

    // A control plane that is not there is a status, not a crash.
    let url = CString::new("http://127.0.0.1:1").unwrap();
    let mut out = 0;
    // SAFETY: valid C strings and a writable out-pointer.
    let status = unsafe { orrery_client_connect(url.as_ptr(), std::ptr::null(), 2000, &mut out) };
    assert_eq!(status, OrreryStatus::ControlPlane, "{}", last_error());
    let url = CString::new("ftp://nowhere").unwrap();
    // SAFETY: as above.
    let status = unsafe { orrery_client_connect(url.as_ptr(), std::ptr::null(), 0, &mut out) };
    assert_eq!(status, OrreryStatus::InvalidArgument);
    // SAFETY: a valid C string; the out-pointer NULL is what is checked.
    let status =
        unsafe { orrery_client_connect(url.as_ptr(), std::ptr::null(), 0, std::ptr::null_mut()) };
    assert_eq!(status, OrreryStatus::NullArgument);
    // SAFETY: the version is a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(orrery_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
