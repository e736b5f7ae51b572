// orrery/value.hpp — the module schema (GET /v1/schema, netcode/ROW_FORMAT.md §6) and
// schema-driven values in C++17, header-only: decode any row or argument list by its TypeDesc
// without generated code (tools, inspectors, tests) and encode values back. Includes a small
// JSON reader (numbers keep their text, so 64-bit integers stay exact). Generated code
// (`orrery generate --lang cpp`) is the typed path for game code. No exceptions.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "row.hpp"

namespace orrery {

/// A parsed JSON value.
struct Json {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    std::string text;  // a string's value or a number's text
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> fields;

    /// The field `key` of an object, or nullptr.
    const Json* get(const std::string& key) const {
        for (const auto& f : fields)
            if (f.first == key) return &f.second;
        return nullptr;
    }

    /// Parses `s`; on malformed input returns false and sets `error`.
    static bool parse(const std::string& s, Json& out, std::string& error) {
        size_t i = 0;
        if (!value(s, i, out, error)) return false;
        ws(s, i);
        if (i != s.size()) {
            error = "JSON: trailing characters at " + std::to_string(i);
            return false;
        }
        return true;
    }

private:
    static void ws(const std::string& s, size_t& i) {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    }
    static bool word(const std::string& s, size_t& i, const char* w) {
        size_t n = std::char_traits<char>::length(w);
        if (s.compare(i, n, w) != 0) return false;
        i += n;
        return true;
    }
    static bool str(const std::string& s, size_t& i, std::string& out, std::string& error) {
        if (i >= s.size() || s[i] != '"') {
            error = "JSON: expected a string at " + std::to_string(i);
            return false;
        }
        i++;
        while (i < s.size()) {
            char c = s[i++];
            if (c == '"') return true;
            if (c != '\\') {
                out.push_back(c);
                continue;
            }
            if (i >= s.size()) break;
            char e = s[i++];
            switch (e) {
                case 'n': out.push_back('\n'); break;
                case 't': out.push_back('\t'); break;
                case 'r': out.push_back('\r'); break;
                case 'b': out.push_back('\b'); break;
                case 'f': out.push_back('\f'); break;
                case 'u': {
                    if (i + 4 > s.size()) break;
                    unsigned cp = static_cast<unsigned>(std::stoul(s.substr(i, 4), nullptr, 16));
                    i += 4;
                    if (cp < 0x80) out.push_back(static_cast<char>(cp));
                    else if (cp < 0x800) {
                        out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
                        out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
                    } else {
                        out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
                        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
                        out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
                    }
                    break;
                }
                default: out.push_back(e);
            }
        }
        error = "JSON: unterminated string";
        return false;
    }
    static bool value(const std::string& s, size_t& i, Json& out, std::string& error) {
        ws(s, i);
        if (i >= s.size()) {
            error = "JSON: unexpected end";
            return false;
        }
        char c = s[i];
        if (c == '{') {
            i++;
            out.kind = Kind::Object;
            ws(s, i);
            if (i < s.size() && s[i] == '}') return ++i, true;
            while (true) {
                ws(s, i);
                std::string key;
                if (!str(s, i, key, error)) return false;
                ws(s, i);
                if (i >= s.size() || s[i] != ':') return error = "JSON: expected ':'", false;
                i++;
                Json v;
                if (!value(s, i, v, error)) return false;
                out.fields.emplace_back(std::move(key), std::move(v));
                ws(s, i);
                if (i < s.size() && s[i] == ',') { i++; continue; }
                if (i < s.size() && s[i] == '}') return ++i, true;
                return error = "JSON: expected ',' or '}'", false;
            }
        }
        if (c == '[') {
            i++;
            out.kind = Kind::Array;
            ws(s, i);
            if (i < s.size() && s[i] == ']') return ++i, true;
            while (true) {
                Json v;
                if (!value(s, i, v, error)) return false;
                out.items.push_back(std::move(v));
                ws(s, i);
                if (i < s.size() && s[i] == ',') { i++; continue; }
                if (i < s.size() && s[i] == ']') return ++i, true;
                return error = "JSON: expected ',' or ']'", false;
            }
        }
        if (c == '"') {
            out.kind = Kind::String;
            return str(s, i, out.text, error);
        }
        if (word(s, i, "true")) return out.kind = Kind::Bool, out.boolean = true, true;
        if (word(s, i, "false")) return out.kind = Kind::Bool, true;
        if (word(s, i, "null")) return out.kind = Kind::Null, true;
        size_t start = i;
        while (i < s.size() && std::string("+-0123456789.eE").find(s[i]) != std::string::npos) i++;
        if (i == start) return error = "JSON: unexpected character at " + std::to_string(i), false;
        out.kind = Kind::Number;
        out.text = s.substr(start, i - start);
        return true;
    }
};

struct TypeDesc;

/// A named field of a struct or variant (tuple fields are "0", "1", …).
struct FieldDesc {
    std::string name;
    std::shared_ptr<TypeDesc> type;
};

struct VariantDesc {
    std::string name;
    std::vector<FieldDesc> fields;
};

/// A type in the schema: kind is "u32", "string", "option", "struct", ...
struct TypeDesc {
    std::string kind;
    std::shared_ptr<TypeDesc> of;  // option / array item
    std::string name;              // struct / enum
    std::vector<FieldDesc> fields;
    std::vector<VariantDesc> variants;

    static std::shared_ptr<TypeDesc> from_json(const Json& j) {
        auto t = std::make_shared<TypeDesc>();
        if (const Json* k = j.get("kind")) t->kind = k->text;
        if (const Json* of = j.get("of")) t->of = from_json(*of);
        if (const Json* n = j.get("name")) t->name = n->text;
        if (const Json* fs = j.get("fields")) t->fields = fields_from_json(*fs);
        if (const Json* vs = j.get("variants"))
            for (const auto& v : vs->items) {
                VariantDesc vd;
                if (const Json* n = v.get("name")) vd.name = n->text;
                if (const Json* fs = v.get("fields")) vd.fields = fields_from_json(*fs);
                t->variants.push_back(std::move(vd));
            }
        return t;
    }
    static std::vector<FieldDesc> fields_from_json(const Json& j) {
        std::vector<FieldDesc> out;
        for (const auto& f : j.items) {
            FieldDesc fd;
            if (const Json* n = f.get("name")) fd.name = n->text;
            if (const Json* t = f.get("type")) fd.type = from_json(*t);
            out.push_back(std::move(fd));
        }
        return out;
    }
};

/// A schema-driven value. Unsigned integers (u8..u64, connection_id, duration) are in `u`,
/// signed ones (i8..i64, timestamp) in `i`, f32/f64 in `f`, strings in `s`; option: `some` and
/// `items[0]`; array and struct: `items`; enum: `tag` and `items` (its fields).
struct Value {
    bool b = false;
    uint64_t u = 0;
    int64_t i = 0;
    double f = 0;
    std::string s;
    Identity identity;
    Vec2 v2;
    Vec3 v3;
    ScheduleAt at;
    bool some = false;
    uint32_t tag = 0;
    std::vector<Value> items;
};

/// Decodes one value of type `t` (check `r.ok()` afterwards).
inline Value decode(const TypeDesc& t, RowReader& r) {
    Value v;
    const std::string& k = t.kind;
    if (k == "bool") v.b = r.read_bool();
    else if (k == "u8") v.u = r.read_u8();
    else if (k == "u16") v.u = r.read_u16();
    else if (k == "u32") v.u = r.read_u32();
    else if (k == "u64") v.u = r.read_u64();
    else if (k == "i8") v.i = r.read_i8();
    else if (k == "i16") v.i = r.read_i16();
    else if (k == "i32") v.i = r.read_i32();
    else if (k == "i64") v.i = r.read_i64();
    else if (k == "f32") v.f = r.read_f32();
    else if (k == "f64") v.f = r.read_f64();
    else if (k == "string") v.s = r.read_string();
    else if (k == "identity") v.identity = r.read_identity();
    else if (k == "connection_id") v.u = r.read_connection_id();
    else if (k == "timestamp") v.i = r.read_timestamp();
    else if (k == "duration") v.u = r.read_duration();
    else if (k == "schedule_at") v.at = r.read_schedule_at();
    else if (k == "vec2") v.v2 = r.read_vec2();
    else if (k == "vec3") v.v3 = r.read_vec3();
    else if (k == "option") {
        v.some = r.read_option_tag();
        if (v.some && r.ok()) v.items.push_back(decode(*t.of, r));
    } else if (k == "array") {
        size_t n = r.read_length(1, "array");
        for (size_t i = 0; i < n && r.ok(); i++) v.items.push_back(decode(*t.of, r));
    } else if (k == "struct") {
        for (const auto& f : t.fields) {
            if (!r.ok()) break;
            v.items.push_back(decode(*f.type, r));
        }
    } else if (k == "enum") {
        v.tag = r.read_enum_tag(static_cast<uint32_t>(t.variants.size()), t.name.c_str());
        if (r.ok())
            for (const auto& f : t.variants[v.tag].fields) {
                if (!r.ok()) break;
                v.items.push_back(decode(*f.type, r));
            }
    } else {
        r.fail("unknown type kind " + k);
    }
    return v;
}

/// Encodes `v` as type `t`.
inline void encode(const TypeDesc& t, const Value& v, RowWriter& w) {
    const std::string& k = t.kind;
    if (k == "bool") w.write_bool(v.b);
    else if (k == "u8") w.write_u8(static_cast<uint8_t>(v.u));
    else if (k == "u16" || k == "u32" || k == "u64" || k == "connection_id" || k == "duration") w.write_varint(v.u);
    else if (k == "i8") w.write_i8(static_cast<int8_t>(v.i));
    else if (k == "i16" || k == "i32" || k == "i64" || k == "timestamp") w.write_zigzag(v.i);
    else if (k == "f32") w.write_f32(static_cast<float>(v.f));
    else if (k == "f64") w.write_f64(v.f);
    else if (k == "string") w.write_string(v.s);
    else if (k == "identity") w.write_identity(v.identity);
    else if (k == "schedule_at") w.write_schedule_at(v.at);
    else if (k == "vec2") w.write_vec2(v.v2);
    else if (k == "vec3") w.write_vec3(v.v3);
    else if (k == "option") {
        w.write_option_tag(v.some);
        if (v.some) encode(*t.of, v.items.at(0), w);
    } else if (k == "array") {
        w.write_varint(v.items.size());
        for (const auto& x : v.items) encode(*t.of, x, w);
    } else if (k == "struct") {
        for (size_t i = 0; i < t.fields.size(); i++) encode(*t.fields[i].type, v.items.at(i), w);
    } else if (k == "enum") {
        w.write_enum_tag(v.tag);
        const auto& fs = t.variants.at(v.tag).fields;
        for (size_t i = 0; i < fs.size(); i++) encode(*fs[i].type, v.items.at(i), w);
    }
}

/// One table of the schema; a row is its columns back to back (`row_type`).
struct TableSchema {
    uint32_t id = 0;
    std::string name;
    std::vector<FieldDesc> columns;
    size_t primary_key = 0;
    bool event = false;
    TypeDesc row_type;

    int column(const std::string& n) const {
        for (size_t i = 0; i < columns.size(); i++)
            if (columns[i].name == n) return static_cast<int>(i);
        return -1;
    }
};

/// The module schema (tables; reducers are for code generators and not parsed here).
struct ModuleSchema {
    std::string name;
    std::vector<TableSchema> tables;

    static bool parse(const std::string& json, ModuleSchema& out, std::string& error) {
        Json j;
        if (!Json::parse(json, j, error)) return false;
        if (const Json* n = j.get("name")) out.name = n->text;
        const Json* tables = j.get("tables");
        if (!tables) return error = "schema without tables", false;
        for (const auto& t : tables->items) {
            TableSchema ts;
            if (const Json* x = t.get("id")) ts.id = static_cast<uint32_t>(std::stoul(x->text));
            if (const Json* x = t.get("name")) ts.name = x->text;
            if (const Json* x = t.get("primary_key")) ts.primary_key = std::stoul(x->text);
            if (const Json* x = t.get("event")) ts.event = x->boolean;
            if (const Json* cs = t.get("columns")) ts.columns = TypeDesc::fields_from_json(*cs);
            ts.row_type.kind = "struct";
            ts.row_type.name = ts.name;
            ts.row_type.fields = ts.columns;
            out.tables.push_back(std::move(ts));
        }
        return true;
    }

    const TableSchema* table(uint32_t id) const {
        for (const auto& t : tables)
            if (t.id == id) return &t;
        return nullptr;
    }
    const TableSchema* table(const std::string& n) const {
        for (const auto& t : tables)
            if (t.name == n) return &t;
        return nullptr;
    }
};

}  // namespace orrery
