// orrery/row.hpp — the row format (netcode/ROW_FORMAT.md) in C++17, header-only: RowReader
// decodes values front to back, RowWriter encodes them (reducer arguments). No exceptions (so
// it builds in Unreal modules): a failed read puts the reader in a sticky error state, later
// reads return zero values, and ok()/error() tell the caller. Decoding follows the spec's
// hostile-input rules: every read checks the remaining length, varints are at most 10 bytes
// and range-checked, tags and UTF-8 are validated, lengths are checked before allocating.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace orrery {

/// A 32-byte identity; printed as 64 lower-case hex characters.
struct Identity {
    std::array<uint8_t, 32> bytes{};

    std::string to_hex() const {
        static const char digits[] = "0123456789abcdef";
        std::string s;
        s.reserve(64);
        for (uint8_t b : bytes) {
            s.push_back(digits[b >> 4]);
            s.push_back(digits[b & 15]);
        }
        return s;
    }
    bool operator==(const Identity& o) const { return bytes == o.bytes; }
    bool operator!=(const Identity& o) const { return bytes != o.bytes; }
};

/// Two f32 components (convert to FVector2D etc. in game code).
struct Vec2 {
    float x = 0, y = 0;
    bool operator==(const Vec2& o) const { return x == o.x && y == o.y; }
};

/// Three f32 components.
struct Vec3 {
    float x = 0, y = 0, z = 0;
    bool operator==(const Vec3& o) const { return x == o.x && y == o.y && z == o.z; }
};

/// When a scheduled row fires: an interval of `micros` µs, or at `micros` µs since the epoch.
struct ScheduleAt {
    bool is_interval = true;
    int64_t micros = 0;
    bool operator==(const ScheduleAt& o) const { return is_interval == o.is_interval && micros == o.micros; }
};

/// Reads row-format values from a byte range (see the file header for errors).
class RowReader {
public:
    RowReader(const uint8_t* data, size_t len) : p_(data), end_(data + len) {}
    explicit RowReader(const std::vector<uint8_t>& v) : RowReader(v.data(), v.size()) {}

    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }
    size_t remaining() const { return ok() ? static_cast<size_t>(end_ - p_) : 0; }

    /// Records a failure (the first one wins); later reads return zero values.
    void fail(const std::string& why) {
        if (error_.empty()) error_ = why.empty() ? "invalid input" : why;
        p_ = end_;
    }

    /// Fails unless every byte was read (a row or argument list consumes its input exactly).
    bool finish() {
        if (ok() && p_ != end_) fail(std::to_string(end_ - p_) + " trailing byte(s) after the value");
        return ok();
    }

    uint64_t read_varint(const char* what = "varint") {
        uint64_t result = 0;
        for (int i = 0; i < 10; i++) {
            if (!need(1, what)) return 0;
            uint8_t b = *p_;
            if (i == 9 && b > 1) {
                fail(std::string("varint too long or out of range for ") + what);
                return 0;
            }
            result |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
            ++p_;
            if ((b & 0x80) == 0) return result;
        }
        fail(std::string("varint too long or out of range for ") + what);
        return 0;
    }

    bool read_bool() {
        if (!need(1, "bool")) return false;
        uint8_t b = *p_++;
        if (b > 1) fail("invalid bool byte");
        return b == 1;
    }
    uint8_t read_u8() { return need(1, "u8") ? *p_++ : 0; }
    uint16_t read_u16() { return static_cast<uint16_t>(unsigned_max(0xffff, "u16")); }
    uint32_t read_u32() { return static_cast<uint32_t>(unsigned_max(0xffffffffu, "u32")); }
    uint64_t read_u64() { return read_varint("u64"); }
    int8_t read_i8() { return need(1, "i8") ? static_cast<int8_t>(*p_++) : 0; }
    int16_t read_i16() { return static_cast<int16_t>(signed_range(INT16_MIN, INT16_MAX, "i16")); }
    int32_t read_i32() { return static_cast<int32_t>(signed_range(INT32_MIN, INT32_MAX, "i32")); }
    int64_t read_i64() { return signed_range(INT64_MIN, INT64_MAX, "i64"); }

    float read_f32() {
        if (!need(4, "f32")) return 0;
        uint32_t bits = 0;
        for (int i = 0; i < 4; i++) bits |= static_cast<uint32_t>(p_[i]) << (8 * i);
        p_ += 4;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    double read_f64() {
        if (!need(8, "f64")) return 0;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++) bits |= static_cast<uint64_t>(p_[i]) << (8 * i);
        p_ += 8;
        double d;
        std::memcpy(&d, &bits, 8);
        return d;
    }

    /// A length prefix checked against the bytes left (each item takes at least `min_item` bytes).
    size_t read_length(size_t min_item = 1, const char* what = "length") {
        uint64_t len = read_varint(what);
        if (!ok()) return 0;
        if (min_item == 0) min_item = 1;
        uint64_t left = static_cast<uint64_t>(end_ - p_);
        if (len > left / min_item) {
            fail("length " + std::to_string(len) + " exceeds the " + std::to_string(left) +
                 " byte(s) left in the input");
            return 0;
        }
        return static_cast<size_t>(len);
    }

    std::string read_string() {
        size_t n = read_length(1, "string");
        if (!ok()) return {};
        std::string s(reinterpret_cast<const char*>(p_), n);
        p_ += n;
        if (!valid_utf8(s)) {
            fail("string is not valid UTF-8");
            return {};
        }
        return s;
    }

    /// A Vec<u8>: varint length, then the bytes.
    std::vector<uint8_t> read_bytes() {
        size_t n = read_length(1, "bytes");
        if (!ok()) return {};
        std::vector<uint8_t> v(p_, p_ + n);
        p_ += n;
        return v;
    }

    Identity read_identity() {
        Identity id;
        if (!need(32, "identity")) return id;
        std::memcpy(id.bytes.data(), p_, 32);
        p_ += 32;
        return id;
    }
    uint64_t read_connection_id() { return read_varint("connection id"); }
    /// Microseconds since the Unix epoch.
    int64_t read_timestamp() { return signed_range(INT64_MIN, INT64_MAX, "timestamp"); }
    /// Microseconds.
    uint64_t read_duration() { return read_varint("duration"); }

    ScheduleAt read_schedule_at() {
        ScheduleAt s;
        if (!need(1, "schedule_at")) return s;
        uint8_t tag = *p_++;
        if (tag == 0) {
            s.is_interval = true;
            s.micros = static_cast<int64_t>(read_duration());
        } else if (tag == 1) {
            s.is_interval = false;
            s.micros = read_timestamp();
        } else {
            fail("invalid tag for schedule_at");
        }
        return s;
    }

    Vec2 read_vec2() {
        Vec2 v;
        v.x = read_f32();
        v.y = read_f32();
        return v;
    }
    Vec3 read_vec3() {
        Vec3 v;
        v.x = read_f32();
        v.y = read_f32();
        v.z = read_f32();
        return v;
    }

    /// An option's tag byte: true when a value follows.
    bool read_option_tag() {
        if (!need(1, "option")) return false;
        uint8_t tag = *p_++;
        if (tag > 1) fail("invalid tag for option");
        return tag == 1;
    }

    /// An enum's variant index, checked against the number of variants.
    uint32_t read_enum_tag(uint32_t variants, const char* what = "enum") {
        uint64_t tag = read_varint(what);
        if (ok() && tag >= variants) {
            fail("invalid tag " + std::to_string(tag) + " for " + what);
            return 0;
        }
        return static_cast<uint32_t>(tag);
    }

    /// An array: a checked count, then `item(reader)` per item (stops at the first failure).
    template <class F>
    auto read_vector(F item, size_t min_item = 1) -> std::vector<decltype(item(*this))> {
        std::vector<decltype(item(*this))> out;
        size_t n = read_length(min_item, "array");
        out.reserve(n);
        for (size_t i = 0; i < n && ok(); i++) out.push_back(item(*this));
        return out;
    }

    /// An option: a tag, then `item(reader)` if some.
    template <class F>
    auto read_optional(F item) -> std::optional<decltype(item(*this))> {
        if (read_option_tag() && ok()) return item(*this);
        return std::nullopt;
    }

    static bool valid_utf8(const std::string& s) {
        size_t i = 0, n = s.size();
        while (i < n) {
            auto c = static_cast<unsigned char>(s[i]);
            size_t len;
            uint32_t cp;
            if (c < 0x80) { i++; continue; }
            else if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; }
            else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; }
            else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; }
            else return false;
            if (i + len > n) return false;
            for (size_t k = 1; k < len; k++) {
                auto d = static_cast<unsigned char>(s[i + k]);
                if ((d & 0xc0) != 0x80) return false;
                cp = (cp << 6) | (d & 0x3f);
            }
            if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return false;
            i += len;
        }
        return true;
    }

private:
    bool need(size_t n, const char* what) {
        if (!ok()) return false;
        if (static_cast<size_t>(end_ - p_) < n) {
            fail("unexpected end of input: needed " + std::to_string(n - (end_ - p_)) + " more byte(s) for " + what);
            return false;
        }
        return true;
    }
    uint64_t unsigned_max(uint64_t max, const char* what) {
        uint64_t v = read_varint(what);
        if (v > max) {
            fail(std::string("varint too long or out of range for ") + what);
            return 0;
        }
        return v;
    }
    int64_t signed_range(int64_t min, int64_t max, const char* what) {
        uint64_t z = read_varint(what);
        int64_t v = static_cast<int64_t>(z >> 1) ^ -static_cast<int64_t>(z & 1);
        if (v < min || v > max) {
            fail(std::string("varint too long or out of range for ") + what);
            return 0;
        }
        return v;
    }

    const uint8_t* p_;
    const uint8_t* end_;
    std::string error_;
};

/// Writes row-format values into a growing buffer.
class RowWriter {
public:
    const std::vector<uint8_t>& bytes() const { return buf_; }
    std::vector<uint8_t> take() { return std::move(buf_); }

    void write_varint(uint64_t v) {
        while (v >= 0x80) {
            buf_.push_back(static_cast<uint8_t>(v | 0x80));
            v >>= 7;
        }
        buf_.push_back(static_cast<uint8_t>(v));
    }
    void write_zigzag(int64_t v) {
        write_varint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63));
    }
    void write_bool(bool v) { buf_.push_back(v ? 1 : 0); }
    void write_u8(uint8_t v) { buf_.push_back(v); }
    void write_u16(uint16_t v) { write_varint(v); }
    void write_u32(uint32_t v) { write_varint(v); }
    void write_u64(uint64_t v) { write_varint(v); }
    void write_i8(int8_t v) { buf_.push_back(static_cast<uint8_t>(v)); }
    void write_i16(int16_t v) { write_zigzag(v); }
    void write_i32(int32_t v) { write_zigzag(v); }
    void write_i64(int64_t v) { write_zigzag(v); }
    void write_f32(float f) {
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        for (int i = 0; i < 4; i++) buf_.push_back(static_cast<uint8_t>(bits >> (8 * i)));
    }
    void write_f64(double d) {
        uint64_t bits;
        std::memcpy(&bits, &d, 8);
        for (int i = 0; i < 8; i++) buf_.push_back(static_cast<uint8_t>(bits >> (8 * i)));
    }
    void write_string(const std::string& s) {
        write_varint(s.size());
        buf_.insert(buf_.end(), s.begin(), s.end());
    }
    void write_bytes(const std::vector<uint8_t>& b) {
        write_varint(b.size());
        buf_.insert(buf_.end(), b.begin(), b.end());
    }
    void write_identity(const Identity& id) { buf_.insert(buf_.end(), id.bytes.begin(), id.bytes.end()); }
    void write_connection_id(uint64_t v) { write_varint(v); }
    void write_timestamp(int64_t micros) { write_zigzag(micros); }
    void write_duration(uint64_t micros) { write_varint(micros); }
    void write_schedule_at(const ScheduleAt& s) {
        if (s.is_interval) {
            write_u8(0);
            write_duration(static_cast<uint64_t>(s.micros));
        } else {
            write_u8(1);
            write_timestamp(s.micros);
        }
    }
    void write_vec2(const Vec2& v) {
        write_f32(v.x);
        write_f32(v.y);
    }
    void write_vec3(const Vec3& v) {
        write_f32(v.x);
        write_f32(v.y);
        write_f32(v.z);
    }
    void write_option_tag(bool some) { write_u8(some ? 1 : 0); }
    void write_enum_tag(uint32_t tag) { write_varint(tag); }

    template <class T, class F>
    void write_vector(const std::vector<T>& items, F item) {
        write_varint(items.size());
        for (const auto& x : items) item(*this, x);
    }
    template <class T, class F>
    void write_optional(const std::optional<T>& v, F item) {
        write_option_tag(v.has_value());
        if (v) item(*this, *v);
    }

private:
    std::vector<uint8_t> buf_;
};

}  // namespace orrery
