// Checks the C++ row-format reader and writer against the shared vectors
// (client/ffi/tests/vectors/row_vectors.json): each vector decodes to its value or fails, and
// canonical ones encode back to their bytes. Usage: vectors_check row_vectors.json
// Prints "N passed, M failed"; exits 1 on any failure. Run by client/ffi/tests/cpp.rs.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "orrery/value.hpp"

using orrery::Json;
using orrery::TypeDesc;
using orrery::Value;

static std::vector<uint8_t> unhex(const std::string& h) {
    std::vector<uint8_t> b;
    for (size_t i = 0; i + 1 < h.size(); i += 2) b.push_back(static_cast<uint8_t>(std::stoul(h.substr(i, 2), nullptr, 16)));
    return b;
}

static bool num(const Json& e, double got) {
    if (e.kind == Json::Kind::Null) return std::isnan(got) || std::isinf(got);
    return e.kind == Json::Kind::Number && std::strtod(e.text.c_str(), nullptr) == got;
}

static bool floats(const Json& e, std::initializer_list<float> xs) {
    if (e.kind != Json::Kind::Array || e.items.size() != xs.size()) return false;
    size_t i = 0;
    for (float x : xs)
        if (!num(e.items[i++], x)) return false;
    return true;
}

// Whether decoded value v of type t is the expected JSON e (ROW_FORMAT.md §5).
static bool matches(const TypeDesc& t, const Value& v, const Json& e) {
    const std::string& k = t.kind;
    if (k == "bool") return e.kind == Json::Kind::Bool && e.boolean == v.b;
    if (k == "u8" || k == "u16" || k == "u32" || k == "u64" || k == "connection_id" || k == "duration")
        return e.kind == Json::Kind::Number && std::strtoull(e.text.c_str(), nullptr, 10) == v.u;
    if (k == "i8" || k == "i16" || k == "i32" || k == "i64" || k == "timestamp")
        return e.kind == Json::Kind::Number && std::strtoll(e.text.c_str(), nullptr, 10) == v.i;
    if (k == "f32") return num(e, static_cast<float>(v.f));
    if (k == "f64") return num(e, v.f);
    if (k == "string") return e.kind == Json::Kind::String && e.text == v.s;
    if (k == "identity") return e.kind == Json::Kind::String && e.text == v.identity.to_hex();
    if (k == "schedule_at") {
        const Json* x = e.get(v.at.is_interval ? "interval" : "at");
        return e.fields.size() == 1 && x && std::strtoll(x->text.c_str(), nullptr, 10) == v.at.micros;
    }
    if (k == "vec2") return floats(e, {v.v2.x, v.v2.y});
    if (k == "vec3") return floats(e, {v.v3.x, v.v3.y, v.v3.z});
    if (k == "option") return v.some ? matches(*t.of, v.items[0], e) : e.kind == Json::Kind::Null;
    if (k == "array") {
        if (e.kind != Json::Kind::Array || e.items.size() != v.items.size()) return false;
        for (size_t i = 0; i < v.items.size(); i++)
            if (!matches(*t.of, v.items[i], e.items[i])) return false;
        return true;
    }
    if (k == "struct") {
        if (e.kind != Json::Kind::Object || e.fields.size() != t.fields.size()) return false;
        for (size_t i = 0; i < t.fields.size(); i++) {
            const Json* x = e.get(t.fields[i].name);
            if (!x || !matches(*t.fields[i].type, v.items[i], *x)) return false;
        }
        return true;
    }
    if (k == "enum") {
        const auto& variant = t.variants[v.tag];
        if (variant.fields.empty()) return e.kind == Json::Kind::String && e.text == variant.name;
        const Json* items = e.get(variant.name);
        if (e.kind != Json::Kind::Object || e.fields.size() != 1 || !items || items->items.size() != v.items.size())
            return false;
        for (size_t i = 0; i < v.items.size(); i++)
            if (!matches(*variant.fields[i].type, v.items[i], items->items[i])) return false;
        return true;
    }
    return false;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: vectors_check row_vectors.json\n");
        return 2;
    }
    std::ifstream in(argv[1]);
    std::stringstream text;
    text << in.rdbuf();
    Json doc;
    std::string error;
    if (!Json::parse(text.str(), doc, error)) {
        std::fprintf(stderr, "%s\n", error.c_str());
        return 2;
    }
    int passed = 0, failed = 0;
    for (const auto& v : doc.get("vectors")->items) {
        const std::string& name = v.get("name")->text;
        auto type = TypeDesc::from_json(*v.get("type"));
        auto bytes = unhex(v.get("hex")->text);
        bool want_error = v.get("error") != nullptr;
        orrery::RowReader r(bytes);
        Value value = orrery::decode(*type, r);
        r.finish();
        std::string problem;
        if (!r.ok()) {
            if (!want_error) problem = "failed: " + r.error();
        } else if (want_error) {
            problem = "decoded, expected an error (" + v.get("error")->text + ")";
        } else if (!matches(*type, value, *v.get("value"))) {
            problem = "decoded to a different value";
        } else if (!v.get("canonical") || v.get("canonical")->boolean) {
            orrery::RowWriter w;
            orrery::encode(*type, value, w);
            if (w.bytes() != bytes) problem = "re-encoded differently";
        }
        if (problem.empty()) {
            passed++;
        } else {
            failed++;
            std::printf("FAIL %s: %s\n", name.c_str(), problem.c_str());
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
