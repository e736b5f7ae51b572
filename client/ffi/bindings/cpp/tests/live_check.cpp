// Plays a live sample-mmo server through the C++ binding, over UDP: connects, enters the
// world, subscribes to avatars near its player, walks east and sees its own position change,
// and gets an error reply for a bad call; events go through the std::function callbacks.
// Usage: live_check http://127.0.0.1:PORT — prints "LIVE OK" and exits 0 on success, exits 1
// with the reason otherwise. Built against the staticlib with the generated header of the
// server's schema (orrery generate --lang cpp) by client/ffi/tests/cpp.rs.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "orrery/orrery.hpp"
#include "sample_mmo.hpp"

using namespace std::chrono;
namespace gen = orrery_generated;

[[noreturn]] static void fail(const std::string& why) {
    std::printf("FAIL: %s\n", why.c_str());
    std::fflush(stdout);
    std::exit(1);
}

// Runs update() until `done` holds (deadline 20 s).
static void wait_for(orrery::Client& client, const char* what, const std::function<bool()>& done) {
    auto until = steady_clock::now() + seconds(20);
    while (steady_clock::now() < until) {
        client.update();
        if (done()) return;
        std::this_thread::sleep_for(milliseconds(5));
    }
    fail(std::string("timed out waiting for ") + what);
}

int main(int argc, char** argv) {
    if (argc < 2) fail("usage: live_check URL");
    auto connected = orrery::Client::connect(argv[1]);
    if (!connected) fail("connect: " + connected.error());
    orrery::Client client = std::move(connected.value());
    std::printf("native library %s\n", orrery_version());

    std::optional<orrery::Identity> me;
    std::optional<std::string> disconnected;
    std::optional<gen::Avatar> own;
    uint32_t query = 0;
    bool applied = false;
    struct Reply {
        bool done = false, ok = false;
        std::string error;
    };
    uint32_t waiting_for = 0;
    Reply reply;

    client.on_connected = [&](const orrery::Identity& id, uint64_t) { me = id; };
    client.on_disconnected = [&](const std::string& reason) { disconnected = reason; };
    client.on_reducer_reply = [&](uint32_t id, bool ok, const std::string& error) {
        if (id == waiting_for) reply = Reply{true, ok, error};
    };
    client.on_subscription_applied = [&](uint32_t id) { applied |= id == query; };
    client.on_subscription_error = [&](uint32_t, const std::string& e) { fail("subscription: " + e); };
    auto on_row = [&](uint32_t table, const std::vector<uint8_t>& row) {
        if (table != gen::Avatar::table_id) return;
        std::string error;
        auto avatar = gen::Avatar::decode(row, &error);
        if (!avatar) fail("avatar row: " + error);
        if (me && avatar->owner == *me) own = *avatar;
    };
    client.on_row_insert = on_row;
    client.on_row_update = [&](uint32_t table, const std::vector<uint8_t>&, const std::vector<uint8_t>& row) {
        on_row(table, row);
    };
    auto call = [&](orrery::Result<uint32_t> sent, const char* what) {
        if (!sent) fail(std::string(what) + ": " + sent.error());
        waiting_for = sent.value();
        reply = Reply{};
        wait_for(client, what, [&] { return reply.done; });
        return reply;
    };

    wait_for(client, "connected", [&] { return me.has_value() || disconnected.has_value(); });
    if (!me) fail("disconnected: " + *disconnected);
    std::printf("connected as %s\n", me->to_hex().c_str());

    auto entered = call(gen::call_enter_world(client, "cpp_player"), "enter_world");
    if (!entered.ok) fail("enter_world: " + entered.error);

    auto sub = client.subscribe("SELECT * FROM avatar WHERE within(position, :focus, 100)");
    if (!sub) fail("subscribe: " + sub.error());
    query = sub.value();
    wait_for(client, "the subscription and the own avatar", [&] { return applied && own.has_value(); });
    float start_x = own->position.x;
    std::printf("own avatar %s at (%g, %g)\n", own->name.c_str(), own->position.x, own->position.y);

    auto walked = call(gen::call_set_input(client, orrery::Vec2{1, 0}, false), "set_input");
    if (!walked.ok) fail("set_input: " + walked.error);
    wait_for(client, "the own avatar to move east", [&] { return own->position.x > start_x + 0.5f; });
    std::printf("moved to (%g, %g)\n", own->position.x, own->position.y);

    auto bad = call(gen::call_enter_world(client, "x"), "enter_world(\"x\")");
    if (bad.ok) fail("enter_world(\"x\") was accepted");
    std::printf("bad call refused: %s\n", bad.error.c_str());
    auto bad_json = client.call_json("enter_world", "[1]");
    if (bad_json || bad_json.status() != orrery::Status::BadArguments) fail("mistyped JSON arguments were sent");

    if (client.disconnect() != orrery::Status::Ok) fail("disconnect: " + orrery::last_error());
    wait_for(client, "disconnected", [&] { return disconnected.has_value(); });
    std::printf("disconnected: %s\n", disconnected->c_str());

    // A moved-from client holds no handle; a destroyed handle is refused, not reused.
    orrery::Client other = std::move(client);
    OrreryClientHandle stale = other.handle();
    { orrery::Client gone = std::move(other); }
    if (orrery_client_poll(stale, nullptr) != ORRERY_STATUS_INVALID_HANDLE) fail("a destroyed handle was accepted");
    std::printf("LIVE OK\n");
    return 0;
}
