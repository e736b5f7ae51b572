// orrery/client.hpp — a C++17 RAII wrapper of the orrery-client-ffi C ABI (orrery_client.h),
// header-only and exception-free, for Unreal modules and other C++ programs. A Client owns one
// handle (destroyed with it; movable, not copyable). Connect (blocking for the control-plane
// HTTP calls), then once a frame update(): it polls the socket and hands each event to the
// std::function callbacks (or drain events yourself with poll() and next_event()). Rows arrive
// as row-format bytes with their table id: decode them with generated code
// (`orrery generate --lang cpp`) or orrery/value.hpp.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "orrery_client.h"
#include "row.hpp"

namespace orrery {

/// Status codes of the C ABI.
enum class Status : int32_t {
    Ok = ORRERY_STATUS_OK,
    NullArgument = ORRERY_STATUS_NULL_ARGUMENT,
    InvalidArgument = ORRERY_STATUS_INVALID_ARGUMENT,
    InvalidHandle = ORRERY_STATUS_INVALID_HANDLE,
    ControlPlane = ORRERY_STATUS_CONTROL_PLANE,
    Connect = ORRERY_STATUS_CONNECT,
    UnknownReducer = ORRERY_STATUS_UNKNOWN_REDUCER,
    BadArguments = ORRERY_STATUS_BAD_ARGUMENTS,
    NotConnected = ORRERY_STATUS_NOT_CONNECTED,
    UnknownQuery = ORRERY_STATUS_UNKNOWN_QUERY,
    Io = ORRERY_STATUS_IO,
    Panic = ORRERY_STATUS_PANIC,
};

/// The text of the calling thread's last failure.
inline std::string last_error() {
    const char* e = orrery_last_error();
    return e ? std::string(e) : std::string();
}

/// A value or a failure (status and message).
template <class T>
class Result {
public:
    static Result ok(T value) {
        Result r;
        r.value_ = std::move(value);
        return r;
    }
    static Result fail(Status status, std::string message) {
        Result r;
        r.status_ = status;
        r.message_ = std::move(message);
        return r;
    }
    explicit operator bool() const { return value_.has_value(); }
    T& value() { return *value_; }
    const T& value() const { return *value_; }
    T* operator->() { return &*value_; }
    Status status() const { return status_; }
    const std::string& error() const { return message_; }

private:
    std::optional<T> value_;
    Status status_ = Status::Ok;
    std::string message_;
};

/// What an event reports.
enum class EventKind : uint32_t {
    None = ORRERY_EVENT_KIND_NONE,
    Connected = ORRERY_EVENT_KIND_CONNECTED,
    Disconnected = ORRERY_EVENT_KIND_DISCONNECTED,
    RowInsert = ORRERY_EVENT_KIND_ROW_INSERT,
    RowUpdate = ORRERY_EVENT_KIND_ROW_UPDATE,
    RowDelete = ORRERY_EVENT_KIND_ROW_DELETE,
    ReducerReply = ORRERY_EVENT_KIND_REDUCER_REPLY,
    SubscriptionApplied = ORRERY_EVENT_KIND_SUBSCRIPTION_APPLIED,
    SubscriptionError = ORRERY_EVENT_KIND_SUBSCRIPTION_ERROR,
    UpdateRejected = ORRERY_EVENT_KIND_UPDATE_REJECTED,
    ZoneMove = ORRERY_EVENT_KIND_ZONE_MOVE,  // id: the zone; the connection follows by itself
};

/// One event, copied out of the library (see OrreryEvent in orrery_client.h).
struct Event {
    EventKind kind = EventKind::None;
    uint32_t table_id = 0;
    uint32_t id = 0;  // request id (reply), query id (subscription) or zone (zone move)
    bool ok = false;  // reducer reply: committed
    uint64_t tick = 0;
    uint64_t connection_id = 0;
    Identity identity;
    std::vector<uint8_t> row;      // the row (new version for an update)
    std::vector<uint8_t> old_row;  // update: the previous version
    std::vector<uint8_t> pk;
    std::string message;  // disconnect reason or error text
};

/// One connection (see the file header).
class Client {
public:
    /// Callbacks run by update(), on the thread calling it.
    std::function<void(const Event&)> on_event;  // every event, before the specific callback
    std::function<void(const Identity&, uint64_t connection_id)> on_connected;
    std::function<void(const std::string& reason)> on_disconnected;
    std::function<void(uint32_t table_id, const std::vector<uint8_t>& row)> on_row_insert;
    std::function<void(uint32_t table_id, const std::vector<uint8_t>& old_row, const std::vector<uint8_t>& row)> on_row_update;
    std::function<void(uint32_t table_id, const std::vector<uint8_t>& row)> on_row_delete;
    std::function<void(uint32_t request_id, bool ok, const std::string& error)> on_reducer_reply;
    std::function<void(uint32_t query_id)> on_subscription_applied;
    std::function<void(uint32_t query_id, const std::string& error)> on_subscription_error;

    /// Connects through the control plane at `url` (empty `token`: a new identity); the UDP
    /// handshake completes through update()/poll() with a Connected event.
    static Result<Client> connect(const std::string& url, const std::string& token = "", uint32_t timeout_ms = 0) {
        OrreryClientHandle h = 0;
        auto s = orrery_client_connect(url.c_str(), token.empty() ? nullptr : token.c_str(), timeout_ms, &h);
        if (s != ORRERY_STATUS_OK) return Result<Client>::fail(static_cast<Status>(s), last_error());
        return Result<Client>::ok(Client(h));
    }

    Client(Client&& o) noexcept { *this = std::move(o); }
    Client& operator=(Client&& o) noexcept {
        if (this != &o) {
            reset();
            handle_ = o.handle_;
            o.handle_ = 0;
            on_event = std::move(o.on_event);
            on_connected = std::move(o.on_connected);
            on_disconnected = std::move(o.on_disconnected);
            on_row_insert = std::move(o.on_row_insert);
            on_row_update = std::move(o.on_row_update);
            on_row_delete = std::move(o.on_row_delete);
            on_reducer_reply = std::move(o.on_reducer_reply);
            on_subscription_applied = std::move(o.on_subscription_applied);
            on_subscription_error = std::move(o.on_subscription_error);
        }
        return *this;
    }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;
    ~Client() { reset(); }

    OrreryClientHandle handle() const { return handle_; }

    /// The module schema JSON.
    std::string schema_json() const {
        const char* p = nullptr;
        size_t n = 0;
        if (orrery_client_schema_json(handle_, &p, &n) != ORRERY_STATUS_OK) return {};
        return std::string(p, n);
    }

    /// The identity token (save it to play the same identity again).
    std::string token() const {
        const char* p = nullptr;
        size_t n = 0;
        if (orrery_client_token(handle_, &p, &n) != ORRERY_STATUS_OK) return {};
        return std::string(p, n);
    }

    /// Socket I/O; returns the number of queued events.
    Result<uint32_t> poll() {
        uint32_t pending = 0;
        auto s = orrery_client_poll(handle_, &pending);
        if (s != ORRERY_STATUS_OK) return Result<uint32_t>::fail(static_cast<Status>(s), last_error());
        return Result<uint32_t>::ok(pending);
    }

    /// Takes the next queued event; false when there is none (or the handle is dead).
    bool next_event(Event& out) {
        OrreryEvent e{};
        if (orrery_client_next_event(handle_, &e) != ORRERY_STATUS_OK || e.kind == ORRERY_EVENT_KIND_NONE) return false;
        out.kind = static_cast<EventKind>(e.kind);
        out.table_id = e.table_id;
        out.id = e.id;
        out.ok = e.ok == 1;
        out.tick = e.tick;
        out.connection_id = e.connection_id;
        for (size_t i = 0; i < 32; i++) out.identity.bytes[i] = e.identity[i];
        out.row.assign(e.row, e.row + e.row_len);
        out.old_row.assign(e.old_row, e.old_row + e.old_row_len);
        out.pk.assign(e.pk, e.pk + e.pk_len);
        out.message.assign(e.message ? e.message : "", e.message_len);
        return true;
    }

    /// poll(), then every queued event to the callbacks. Returns the events handled.
    size_t update() {
        poll();
        size_t handled = 0;
        Event e;
        while (next_event(e)) {
            handled++;
            dispatch(e);
        }
        return handled;
    }

    /// Calls a reducer with arguments in the row format (generated encode_* functions);
    /// returns the request id of its reply.
    Result<uint32_t> call_raw(const std::string& reducer, const std::vector<uint8_t>& args, bool durable = false) {
        uint32_t id = 0;
        auto s = orrery_client_call(handle_, reducer.c_str(), args.empty() ? nullptr : args.data(), args.size(),
                                    durable ? ORRERY_CALL_DURABLE : 0, &id);
        if (s != ORRERY_STATUS_OK) return Result<uint32_t>::fail(static_cast<Status>(s), last_error());
        return Result<uint32_t>::ok(id);
    }

    /// Calls a reducer with JSON arguments (array by position or object by name).
    Result<uint32_t> call_json(const std::string& reducer, const std::string& args_json, bool durable = false) {
        uint32_t id = 0;
        auto s = orrery_client_call_json(handle_, reducer.c_str(), args_json.c_str(), durable ? ORRERY_CALL_DURABLE : 0, &id);
        if (s != ORRERY_STATUS_OK) return Result<uint32_t>::fail(static_cast<Status>(s), last_error());
        return Result<uint32_t>::ok(id);
    }

    /// Subscribes to the rows `sql` selects; returns the query id.
    Result<uint32_t> subscribe(const std::string& sql) {
        uint32_t id = 0;
        auto s = orrery_client_subscribe(handle_, sql.c_str(), &id);
        if (s != ORRERY_STATUS_OK) return Result<uint32_t>::fail(static_cast<Status>(s), last_error());
        return Result<uint32_t>::ok(id);
    }

    Status unsubscribe(uint32_t query_id) { return static_cast<Status>(orrery_client_unsubscribe(handle_, query_id)); }

    /// Tells the server; a Disconnected event follows.
    Status disconnect() { return static_cast<Status>(orrery_client_disconnect(handle_)); }

private:
    explicit Client(OrreryClientHandle h) : handle_(h) {}

    void reset() {
        if (handle_ != 0) orrery_client_destroy(handle_);
        handle_ = 0;
    }

    void dispatch(const Event& e) {
        if (on_event) on_event(e);
        switch (e.kind) {
            case EventKind::Connected:
                if (on_connected) on_connected(e.identity, e.connection_id);
                break;
            case EventKind::Disconnected:
                if (on_disconnected) on_disconnected(e.message);
                break;
            case EventKind::RowInsert:
                if (on_row_insert) on_row_insert(e.table_id, e.row);
                break;
            case EventKind::RowUpdate:
                if (on_row_update) on_row_update(e.table_id, e.old_row, e.row);
                break;
            case EventKind::RowDelete:
                if (on_row_delete) on_row_delete(e.table_id, e.row);
                break;
            case EventKind::ReducerReply:
                if (on_reducer_reply) on_reducer_reply(e.id, e.ok, e.message);
                break;
            case EventKind::SubscriptionApplied:
                if (on_subscription_applied) on_subscription_applied(e.id);
                break;
            case EventKind::SubscriptionError:
                if (on_subscription_error) on_subscription_error(e.id, e.message);
                break;
            default:
                break;
        }
    }

    OrreryClientHandle handle_ = 0;
};

}  // namespace orrery
