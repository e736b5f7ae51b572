//! The C++17 generator (one header): structs for tables and struct types, `enum class` for
//! unit-only enums and a struct around a `std::variant` of variant structs for enums with
//! data, `read`/`write` over `orrery::RowReader`/`RowWriter` (exception-free: check the
//! reader's `ok()`), `decode` for whole rows, and per user reducer an `encode_*` argument
//! encoder and a `call_*` through `orrery::Client`.

use std::fmt::Write as _;

use orrery_client::row::{FieldDesc, TypeDesc, VariantDesc};

use super::{Model, Named, Options, pascal, quoted, snake};

const KEYWORDS: &[&str] = &[
    "alignas",
    "alignof",
    "and",
    "asm",
    "auto",
    "bool",
    "break",
    "case",
    "catch",
    "char",
    "class",
    "const",
    "constexpr",
    "continue",
    "decltype",
    "default",
    "delete",
    "do",
    "double",
    "else",
    "enum",
    "explicit",
    "export",
    "extern",
    "false",
    "float",
    "for",
    "friend",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "mutable",
    "namespace",
    "new",
    "noexcept",
    "not",
    "nullptr",
    "operator",
    "or",
    "private",
    "protected",
    "public",
    "register",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "template",
    "this",
    "throw",
    "true",
    "try",
    "typedef",
    "typeid",
    "typename",
    "union",
    "unsigned",
    "using",
    "virtual",
    "void",
    "volatile",
    "while",
    "xor",
    "read",
    "write",
    "decode",
    "value",
    "client",
    "durable",
];

/// A field or parameter name, suffixed with `_` when it is a keyword or a generated member.
fn ident(name: &str) -> String {
    let n = if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        format!("f{name}")
    } else {
        name.to_owned()
    };
    if KEYWORDS.contains(&n.as_str()) {
        format!("{n}_")
    } else {
        n
    }
}

fn unit_enum(variants: &[VariantDesc]) -> bool {
    variants.iter().all(|v| v.fields.is_empty())
}

fn ty(t: &TypeDesc) -> String {
    match t {
        TypeDesc::Bool => "bool".into(),
        TypeDesc::U8 => "uint8_t".into(),
        TypeDesc::U16 => "uint16_t".into(),
        TypeDesc::U32 => "uint32_t".into(),
        TypeDesc::U64 | TypeDesc::ConnectionId | TypeDesc::Duration => "uint64_t".into(),
        TypeDesc::I8 => "int8_t".into(),
        TypeDesc::I16 => "int16_t".into(),
        TypeDesc::I32 => "int32_t".into(),
        TypeDesc::I64 | TypeDesc::Timestamp => "int64_t".into(),
        TypeDesc::F32 => "float".into(),
        TypeDesc::F64 => "double".into(),
        TypeDesc::String => "std::string".into(),
        TypeDesc::Identity => "orrery::Identity".into(),
        TypeDesc::ScheduleAt => "orrery::ScheduleAt".into(),
        TypeDesc::Vec2 => "orrery::Vec2".into(),
        TypeDesc::Vec3 => "orrery::Vec3".into(),
        TypeDesc::Option { of } => format!("std::optional<{}>", ty(of)),
        TypeDesc::Array { of } => format!("std::vector<{}>", ty(of)),
        TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => pascal(name),
    }
}

fn read(t: &TypeDesc, r: &str, depth: usize) -> String {
    let simple = |m: &str| format!("{r}.read_{m}()");
    match t {
        TypeDesc::Bool => simple("bool"),
        TypeDesc::U8 => simple("u8"),
        TypeDesc::U16 => simple("u16"),
        TypeDesc::U32 => simple("u32"),
        TypeDesc::U64 => simple("u64"),
        TypeDesc::I8 => simple("i8"),
        TypeDesc::I16 => simple("i16"),
        TypeDesc::I32 => simple("i32"),
        TypeDesc::I64 => simple("i64"),
        TypeDesc::F32 => simple("f32"),
        TypeDesc::F64 => simple("f64"),
        TypeDesc::String => simple("string"),
        TypeDesc::Identity => simple("identity"),
        TypeDesc::ConnectionId => simple("connection_id"),
        TypeDesc::Timestamp => simple("timestamp"),
        TypeDesc::Duration => simple("duration"),
        TypeDesc::ScheduleAt => simple("schedule_at"),
        TypeDesc::Vec2 => simple("vec2"),
        TypeDesc::Vec3 => simple("vec3"),
        TypeDesc::Option { of } => {
            let rr = format!("r{depth}");
            format!(
                "{r}.read_optional([&](orrery::RowReader& {rr}) -> {} {{ return {}; }})",
                ty(of),
                read(of, &rr, depth + 1)
            )
        }
        TypeDesc::Array { of } if **of == TypeDesc::U8 => simple("bytes"),
        TypeDesc::Array { of } => {
            let rr = format!("r{depth}");
            format!(
                "{r}.read_vector([&](orrery::RowReader& {rr}) -> {} {{ return {}; }})",
                ty(of),
                read(of, &rr, depth + 1)
            )
        }
        TypeDesc::Enum { name, variants } if unit_enum(variants) => format!(
            "static_cast<{}>({r}.read_enum_tag({}, {}))",
            pascal(name),
            variants.len(),
            quoted(name)
        ),
        TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => {
            format!("{}::read({r})", pascal(name))
        }
    }
}

fn write(t: &TypeDesc, w: &str, v: &str, depth: usize) -> String {
    let simple = |m: &str| format!("{w}.write_{m}({v});");
    match t {
        TypeDesc::Bool => simple("bool"),
        TypeDesc::U8 => simple("u8"),
        TypeDesc::U16 => simple("u16"),
        TypeDesc::U32 => simple("u32"),
        TypeDesc::U64 => simple("u64"),
        TypeDesc::I8 => simple("i8"),
        TypeDesc::I16 => simple("i16"),
        TypeDesc::I32 => simple("i32"),
        TypeDesc::I64 => simple("i64"),
        TypeDesc::F32 => simple("f32"),
        TypeDesc::F64 => simple("f64"),
        TypeDesc::String => simple("string"),
        TypeDesc::Identity => simple("identity"),
        TypeDesc::ConnectionId => simple("connection_id"),
        TypeDesc::Timestamp => simple("timestamp"),
        TypeDesc::Duration => simple("duration"),
        TypeDesc::ScheduleAt => simple("schedule_at"),
        TypeDesc::Vec2 => simple("vec2"),
        TypeDesc::Vec3 => simple("vec3"),
        TypeDesc::Array { of } if **of == TypeDesc::U8 => simple("bytes"),
        TypeDesc::Option { of } | TypeDesc::Array { of } => {
            let (ww, x) = (format!("w{depth}"), format!("x{depth}"));
            let method = if matches!(t, TypeDesc::Option { .. }) {
                "write_optional"
            } else {
                "write_vector"
            };
            format!(
                "{w}.{method}({v}, [&](orrery::RowWriter& {ww}, const {}& {x}) {{ {} }});",
                ty(of),
                write(of, &ww, &x, depth + 1)
            )
        }
        TypeDesc::Enum { variants, .. } if unit_enum(variants) => {
            format!("{w}.write_enum_tag(static_cast<uint32_t>({v}));")
        }
        TypeDesc::Struct { .. } | TypeDesc::Enum { .. } => format!("{v}.write({w});"),
    }
}

/// Fields plus `read`/`write` of a struct holding `fields`.
fn struct_body(out: &mut String, name: &str, fields: &[FieldDesc], ind: &str) {
    for f in fields {
        let _ = writeln!(out, "{ind}{} {}{{}};", ty(&f.ty), ident(&f.name));
    }
    let _ = writeln!(
        out,
        "\n{ind}static {name} read(orrery::RowReader& r) {{\n{ind}    {name} v;"
    );
    if fields.is_empty() {
        let _ = writeln!(out, "{ind}    (void)r;");
    }
    for f in fields {
        let _ = writeln!(
            out,
            "{ind}    v.{} = {};",
            ident(&f.name),
            read(&f.ty, "r", 0)
        );
    }
    let _ = writeln!(out, "{ind}    return v;\n{ind}}}\n");
    let _ = writeln!(out, "{ind}void write(orrery::RowWriter& w) const {{");
    if fields.is_empty() {
        let _ = writeln!(out, "{ind}    (void)w;");
    }
    for f in fields {
        let field = format!("this->{}", ident(&f.name));
        let _ = writeln!(out, "{ind}    {}", write(&f.ty, "w", &field, 0));
    }
    let _ = writeln!(out, "{ind}}}");
}

pub(super) fn generate(model: &Model<'_>, options: &Options) -> String {
    let ns = options
        .namespace
        .clone()
        .unwrap_or_else(|| "orrery_generated".to_owned());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by `orrery generate --lang cpp` from the schema of module {}: do not edit.\n\
         // Rows and reducer arguments in the row format (netcode/ROW_FORMAT.md), read and written\n\
         // with the Orrery C++ binding (client/ffi/bindings/cpp/include).\n\
         #pragma once\n\n#include <cstdint>\n#include <optional>\n#include <string>\n#include <variant>\n#include <vector>\n\n\
         #include \"orrery/client.hpp\"\n#include \"orrery/row.hpp\"\n\nnamespace {ns} {{\n",
        quoted(model.module)
    );
    for t in &model.types {
        match t {
            Named::Struct { name, fields } => {
                let name = pascal(name);
                let _ = writeln!(out, "struct {name} {{");
                struct_body(&mut out, &name, fields, "    ");
                let _ = writeln!(out, "}};\n");
            }
            Named::Enum { name, variants } if unit_enum(variants) => {
                let names: Vec<String> = variants
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{} = {i}", pascal(&v.name)))
                    .collect();
                let _ = writeln!(
                    out,
                    "enum class {} : uint32_t {{ {} }};\n",
                    pascal(name),
                    names.join(", ")
                );
            }
            Named::Enum { name, variants } => {
                let base = pascal(name);
                let _ = writeln!(out, "struct {base} {{");
                let mut alts = Vec::new();
                for v in variants.iter() {
                    let class = pascal(&v.name);
                    let _ = writeln!(out, "    struct {class} {{");
                    struct_body(&mut out, &class, &v.fields, "        ");
                    let _ = writeln!(out, "    }};");
                    alts.push(class);
                }
                let _ = writeln!(
                    out,
                    "    /// The variant (its index is the wire tag).\n    std::variant<{}> value;\n",
                    alts.join(", ")
                );
                let _ = writeln!(
                    out,
                    "    static {base} read(orrery::RowReader& r) {{\n        {base} v;\n        switch (r.read_enum_tag({}, {})) {{",
                    variants.len(),
                    quoted(name)
                );
                for (i, alt) in alts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "            case {i}: v.value = {alt}::read(r); break;"
                    );
                }
                let _ = writeln!(
                    out,
                    "            default: break;\n        }}\n        return v;\n    }}\n"
                );
                let _ = writeln!(
                    out,
                    "    void write(orrery::RowWriter& w) const {{\n        w.write_enum_tag(static_cast<uint32_t>(value.index()));\n        switch (value.index()) {{"
                );
                for (i, _) in alts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "            case {i}: std::get<{i}>(value).write(w); break;"
                    );
                }
                let _ = writeln!(
                    out,
                    "            default: break;\n        }}\n    }}\n}};\n"
                );
            }
        }
    }
    for t in &model.tables {
        let name = pascal(&t.rust_type);
        let fields: Vec<FieldDesc> = t
            .columns
            .iter()
            .map(|c| FieldDesc {
                name: c.name.clone(),
                ty: c.ty.clone(),
            })
            .collect();
        let _ = writeln!(
            out,
            "/// A row of table `{}`.\nstruct {name} {{\n    static constexpr uint32_t table_id = {};\n    static constexpr const char* table_name = {};\n",
            t.name,
            t.id,
            quoted(&t.name)
        );
        struct_body(&mut out, &name, &fields, "    ");
        let _ = writeln!(
            out,
            "\n    /// Decodes a whole row (an event's row bytes); nullopt (and `error`) if malformed.\n    \
             static std::optional<{name}> decode(const std::vector<uint8_t>& row, std::string* error = nullptr) {{\n        \
             orrery::RowReader r(row);\n        {name} v = read(r);\n        if (r.finish()) return v;\n        \
             if (error) *error = r.error();\n        return std::nullopt;\n    }}\n}};\n"
        );
    }
    for r in &model.reducers {
        let name = snake(&r.name);
        let params: Vec<String> = r
            .params
            .iter()
            .map(|p| format!("const {}& {}", ty(&p.ty), ident(&p.name)))
            .collect();
        let args: Vec<String> = r.params.iter().map(|p| ident(&p.name)).collect();
        let _ = writeln!(
            out,
            "/// The arguments of `{}` in the row format.\ninline std::vector<uint8_t> encode_{name}({}) {{\n    orrery::RowWriter w;",
            r.name,
            params.join(", ")
        );
        for p in &r.params {
            let _ = writeln!(out, "    {}", write(&p.ty, "w", &ident(&p.name), 0));
        }
        let _ = writeln!(out, "    return w.take();\n}}\n");
        let mut call = vec!["orrery::Client& client".to_owned()];
        call.extend(params);
        call.push("bool durable = false".to_owned());
        let _ = writeln!(
            out,
            "/// Calls `{}`; the result is the request id of its reply event.\ninline orrery::Result<uint32_t> call_{name}({}) {{\n    \
             return client.call_raw({}, encode_{name}({}), durable);\n}}\n",
            r.name,
            call.join(", "),
            quoted(&r.name),
            args.join(", ")
        );
    }
    let _ = writeln!(out, "}}  // namespace {ns}");
    out
}
