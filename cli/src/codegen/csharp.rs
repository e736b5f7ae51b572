//! The C# generator: classes for tables and structs, C# enums for unit-only enums and class
//! hierarchies for enums with data, `Read`/`Write` over `Orrery.RowReader`/`RowWriter`, and a
//! static `Reducers` class of `Encode*` argument encoders and `OrreryClient` extension methods.
//! Options of value types are `T?`, of reference types `null`; `Option<Option<T>>` reads its
//! `Some(None)` as `null` (as the JSON mapping does). C# 7.2, no Unity API.

use std::fmt::Write as _;

use orrery_client::row::{FieldDesc, TypeDesc, VariantDesc};

use super::{Model, Named, Options, pascal, quoted};

const KEYWORDS: &[&str] = &[
    "abstract",
    "as",
    "base",
    "bool",
    "break",
    "byte",
    "case",
    "catch",
    "char",
    "checked",
    "class",
    "const",
    "continue",
    "decimal",
    "default",
    "delegate",
    "do",
    "double",
    "else",
    "enum",
    "event",
    "explicit",
    "extern",
    "false",
    "finally",
    "fixed",
    "float",
    "for",
    "foreach",
    "goto",
    "if",
    "implicit",
    "in",
    "int",
    "interface",
    "internal",
    "is",
    "lock",
    "long",
    "namespace",
    "new",
    "null",
    "object",
    "operator",
    "out",
    "override",
    "params",
    "private",
    "protected",
    "public",
    "readonly",
    "ref",
    "return",
    "sbyte",
    "sealed",
    "short",
    "sizeof",
    "stackalloc",
    "static",
    "string",
    "struct",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "uint",
    "ulong",
    "unchecked",
    "unsafe",
    "ushort",
    "using",
    "virtual",
    "void",
    "volatile",
    "while",
    "global",
];

/// A parameter or local name: camelCase, `@`-escaped when it is a keyword.
fn param(name: &str) -> String {
    let p = pascal(name);
    let mut c = p[..1].to_lowercase();
    c.push_str(&p[1..]);
    if KEYWORDS.contains(&c.as_str()) || c == "client" || c == "durable" {
        format!("@{c}")
    } else {
        c
    }
}

/// A member name: PascalCase, suffixed when it would clash with the generated members
/// (`reserved`: a variant's `Tag`, a table's `TableId`, `TableName` and `Decode`).
fn member(name: &str, owner: &str, reserved: &[&str]) -> String {
    let m = pascal(name);
    if ["Read", "Write", owner].contains(&m.as_str()) || reserved.contains(&m.as_str()) {
        format!("{m}_")
    } else {
        m
    }
}

/// The members a table class adds to its columns.
const TABLE_MEMBERS: &[&str] = &["TableId", "TableName", "Decode"];

fn unit_enum(variants: &[VariantDesc]) -> bool {
    variants.iter().all(|v| v.fields.is_empty())
}

fn value_type(ty: &TypeDesc) -> bool {
    match ty {
        TypeDesc::String | TypeDesc::Array { .. } | TypeDesc::Struct { .. } => false,
        TypeDesc::Option { of } => value_type(of),
        TypeDesc::Enum { variants, .. } => unit_enum(variants),
        _ => true,
    }
}

fn ty(t: &TypeDesc) -> String {
    match t {
        TypeDesc::Bool => "bool".into(),
        TypeDesc::U8 => "byte".into(),
        TypeDesc::U16 => "ushort".into(),
        TypeDesc::U32 => "uint".into(),
        TypeDesc::U64 | TypeDesc::ConnectionId | TypeDesc::Duration => "ulong".into(),
        TypeDesc::I8 => "sbyte".into(),
        TypeDesc::I16 => "short".into(),
        TypeDesc::I32 => "int".into(),
        TypeDesc::I64 | TypeDesc::Timestamp => "long".into(),
        TypeDesc::F32 => "float".into(),
        TypeDesc::F64 => "double".into(),
        TypeDesc::String => "string".into(),
        TypeDesc::Identity => "Identity".into(),
        TypeDesc::ScheduleAt => "ScheduleAt".into(),
        TypeDesc::Vec2 => "Vec2".into(),
        TypeDesc::Vec3 => "Vec3".into(),
        TypeDesc::Option { of } => match &**of {
            TypeDesc::Option { .. } => ty(of),
            inner if value_type(inner) => format!("{}?", ty(inner)),
            inner => ty(inner),
        },
        TypeDesc::Array { of } if **of == TypeDesc::U8 => "byte[]".into(),
        TypeDesc::Array { of } => format!("List<{}>", ty(of)),
        TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => pascal(name),
    }
}

/// An expression reading a `t` from reader `r`; `depth` keeps lambda names unique.
fn read(t: &TypeDesc, r: &str, depth: usize) -> String {
    let simple = |m: &str| format!("{r}.Read{m}()");
    match t {
        TypeDesc::Bool => simple("Bool"),
        TypeDesc::U8 => simple("U8"),
        TypeDesc::U16 => simple("U16"),
        TypeDesc::U32 => simple("U32"),
        TypeDesc::U64 => simple("U64"),
        TypeDesc::I8 => simple("I8"),
        TypeDesc::I16 => simple("I16"),
        TypeDesc::I32 => simple("I32"),
        TypeDesc::I64 => simple("I64"),
        TypeDesc::F32 => simple("F32"),
        TypeDesc::F64 => simple("F64"),
        TypeDesc::String => simple("String"),
        TypeDesc::Identity => simple("Identity"),
        TypeDesc::ConnectionId => simple("ConnectionId"),
        TypeDesc::Timestamp => simple("Timestamp"),
        TypeDesc::Duration => simple("Duration"),
        TypeDesc::ScheduleAt => simple("ScheduleAt"),
        TypeDesc::Vec2 => simple("Vec2"),
        TypeDesc::Vec3 => simple("Vec3"),
        TypeDesc::Option { of } => {
            let cast = if value_type(of) && !matches!(**of, TypeDesc::Option { .. }) {
                format!("({})", ty(t))
            } else {
                String::new()
            };
            format!(
                "({r}.ReadOptionTag() ? {cast}{} : null)",
                read(of, r, depth)
            )
        }
        TypeDesc::Array { of } if **of == TypeDesc::U8 => simple("ByteArray"),
        TypeDesc::Array { of } => {
            let rr = format!("r{depth}");
            format!(
                "{r}.ReadList<{}>({rr} => {})",
                ty(of),
                read(of, &rr, depth + 1)
            )
        }
        TypeDesc::Struct { name, .. } => format!("{}.Read({r})", pascal(name)),
        TypeDesc::Enum { name, variants } if unit_enum(variants) => format!(
            "({}){r}.ReadEnumTag({}, {})",
            pascal(name),
            variants.len(),
            quoted(name)
        ),
        TypeDesc::Enum { name, .. } => format!("{}.Read({r})", pascal(name)),
    }
}

/// A statement writing value `v` of type `t` to writer `w`.
fn write(t: &TypeDesc, w: &str, v: &str, depth: usize) -> String {
    let simple = |m: &str| format!("{w}.Write{m}({v});");
    match t {
        TypeDesc::Bool => simple("Bool"),
        TypeDesc::U8 => simple("U8"),
        TypeDesc::U16 => simple("U16"),
        TypeDesc::U32 => simple("U32"),
        TypeDesc::U64 => simple("U64"),
        TypeDesc::I8 => simple("I8"),
        TypeDesc::I16 => simple("I16"),
        TypeDesc::I32 => simple("I32"),
        TypeDesc::I64 => simple("I64"),
        TypeDesc::F32 => simple("F32"),
        TypeDesc::F64 => simple("F64"),
        TypeDesc::String => simple("String"),
        TypeDesc::Identity => simple("Identity"),
        TypeDesc::ConnectionId => simple("ConnectionId"),
        TypeDesc::Timestamp => simple("Timestamp"),
        TypeDesc::Duration => simple("Duration"),
        TypeDesc::ScheduleAt => simple("ScheduleAt"),
        TypeDesc::Vec2 => simple("Vec2"),
        TypeDesc::Vec3 => simple("Vec3"),
        TypeDesc::Option { of } => {
            let nullable_value = value_type(of);
            let some = if nullable_value {
                format!("{v}.HasValue")
            } else {
                format!("{v} != null")
            };
            let inner = match &**of {
                TypeDesc::Option { .. } => v.to_owned(),
                _ if nullable_value => format!("{v}.Value"),
                _ => v.to_owned(),
            };
            format!(
                "{w}.WriteOptionTag({some}); if ({some}) {{ {} }}",
                write(of, w, &inner, depth)
            )
        }
        TypeDesc::Array { of } if **of == TypeDesc::U8 => simple("ByteArray"),
        TypeDesc::Array { of } => {
            let (ww, x) = (format!("w{depth}"), format!("x{depth}"));
            format!(
                "{w}.WriteList({v}, ({ww}, {x}) => {{ {} }});",
                write(of, &ww, &x, depth + 1)
            )
        }
        TypeDesc::Enum { variants, .. } if unit_enum(variants) => {
            format!("{w}.WriteEnumTag((int){v});")
        }
        TypeDesc::Struct { .. } | TypeDesc::Enum { .. } => format!("{v}.Write({w});"),
    }
}

/// Fields, `Read` and `Write` of a class holding `fields`, indented by `ind`.
/// `hides`: a variant class, whose `Read` hides its base class's.
fn class_body(
    out: &mut String,
    class: &str,
    fields: &[FieldDesc],
    ind: &str,
    hides: bool,
    reserved: &[&str],
) {
    for f in fields {
        let _ = writeln!(
            out,
            "{ind}public {} {};",
            ty(&f.ty),
            member(&f.name, class, reserved)
        );
    }
    let new = if hides { "new " } else { "" };
    let _ = writeln!(
        out,
        "\n{ind}public static {new}{class} Read(RowReader r)\n{ind}{{"
    );
    let _ = writeln!(out, "{ind}    var v = new {class}();");
    for f in fields {
        let m = member(&f.name, class, reserved);
        let _ = writeln!(out, "{ind}    v.{m} = {};", read(&f.ty, "r", 0));
    }
    let _ = writeln!(out, "{ind}    return v;\n{ind}}}");
}

fn write_body(out: &mut String, class: &str, fields: &[FieldDesc], ind: &str, reserved: &[&str]) {
    for f in fields {
        let m = member(&f.name, class, reserved);
        let _ = writeln!(out, "{ind}    {}", write(&f.ty, "w", &m, 0));
    }
}

pub(super) fn generate(model: &Model<'_>, options: &Options) -> String {
    let ns = options
        .namespace
        .clone()
        .unwrap_or_else(|| "Orrery.Generated".to_owned());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by `orrery generate --lang csharp` from the schema of module {}: do not edit.\n\
         // Rows and reducer arguments in the row format (netcode/ROW_FORMAT.md), read and written\n\
         // with the Orrery C# binding (client/ffi/bindings/csharp).\n\
         using System;\nusing System.Collections.Generic;\nusing Orrery;\n\nnamespace {ns}\n{{",
        quoted(model.module)
    );
    for t in &model.types {
        match t {
            Named::Struct { name, fields } => {
                let class = pascal(name);
                let _ = writeln!(out, "    public sealed partial class {class}\n    {{");
                class_body(&mut out, &class, fields, "        ", false, &[]);
                let _ = writeln!(out, "\n        public void Write(RowWriter w)\n        {{");
                write_body(&mut out, &class, fields, "        ", &[]);
                let _ = writeln!(out, "        }}\n    }}\n");
            }
            Named::Enum { name, variants } if unit_enum(variants) => {
                let names: Vec<String> = variants
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{} = {i}", pascal(&v.name)))
                    .collect();
                let _ = writeln!(
                    out,
                    "    public enum {} {{ {} }}\n",
                    pascal(name),
                    names.join(", ")
                );
            }
            Named::Enum { name, variants } => {
                let base = pascal(name);
                let _ = writeln!(
                    out,
                    "    public abstract partial class {base}\n    {{\n        \
                     /// <summary>The variant index.</summary>\n        \
                     public abstract int Tag {{ get; }}\n        \
                     public abstract void Write(RowWriter w);\n"
                );
                for (i, v) in variants.iter().enumerate() {
                    let class = pascal(&v.name);
                    let _ = writeln!(
                        out,
                        "        public sealed class {class} : {base}\n        {{"
                    );
                    let _ = writeln!(
                        out,
                        "            public override int Tag {{ get {{ return {i}; }} }}"
                    );
                    class_body(&mut out, &class, &v.fields, "            ", true, &["Tag"]);
                    let _ = writeln!(
                        out,
                        "\n            public override void Write(RowWriter w)\n            {{\n                w.WriteEnumTag({i});"
                    );
                    write_body(&mut out, &class, &v.fields, "            ", &["Tag"]);
                    let _ = writeln!(out, "            }}\n        }}\n");
                }
                let _ = writeln!(
                    out,
                    "        public static {base} Read(RowReader r)\n        {{\n            switch (r.ReadEnumTag({}, {}))\n            {{",
                    variants.len(),
                    quoted(name)
                );
                for (i, v) in variants.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "                case {i}: return {}.Read(r);",
                        pascal(&v.name)
                    );
                }
                let _ = writeln!(
                    out,
                    "                default: throw new RowFormatException(\"invalid tag for {name}\");\n            }}\n        }}\n    }}\n"
                );
            }
        }
    }
    for t in &model.tables {
        let class = pascal(&t.rust_type);
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
            "    /// <summary>A row of table `{}`.</summary>\n    public sealed partial class {class}\n    {{\n        \
             public const uint TableId = {};\n        public const string TableName = {};\n",
            t.name,
            t.id,
            quoted(&t.name)
        );
        class_body(&mut out, &class, &fields, "        ", false, TABLE_MEMBERS);
        let _ = writeln!(
            out,
            "\n        /// <summary>Decodes a whole row (an event's Row bytes).</summary>\n        \
             public static {class} Decode(byte[] row)\n        {{\n            \
             var r = new RowReader(row);\n            var v = Read(r);\n            r.EnsureEnd();\n            return v;\n        }}"
        );
        let _ = writeln!(out, "\n        public void Write(RowWriter w)\n        {{");
        write_body(&mut out, &class, &fields, "        ", TABLE_MEMBERS);
        let _ = writeln!(out, "        }}\n    }}\n");
    }
    let _ = writeln!(
        out,
        "    /// <summary>Typed reducer calls: Encode* gives the argument bytes, the extension methods call.</summary>\n    public static class Reducers\n    {{"
    );
    for r in &model.reducers {
        let name = pascal(&r.name);
        let params: Vec<String> = r
            .params
            .iter()
            .map(|p| format!("{} {}", ty(&p.ty), param(&p.name)))
            .collect();
        let args: Vec<String> = r.params.iter().map(|p| param(&p.name)).collect();
        let _ = writeln!(
            out,
            "        public static byte[] Encode{name}({})\n        {{\n            var w = new RowWriter();",
            params.join(", ")
        );
        for p in &r.params {
            let _ = writeln!(out, "            {}", write(&p.ty, "w", &param(&p.name), 0));
        }
        let _ = writeln!(out, "            return w.ToArray();\n        }}\n");
        let mut ext = vec!["this OrreryClient client".to_owned()];
        ext.extend(params);
        ext.push("bool durable = false".to_owned());
        let _ = writeln!(
            out,
            "        /// <summary>Calls `{}`; returns the request id of its ReducerReply event.</summary>\n        \
             public static uint {name}({})\n        {{\n            return client.CallRaw({}, Encode{name}({}), durable);\n        }}\n",
            r.name,
            ext.join(", "),
            quoted(&r.name),
            args.join(", ")
        );
    }
    let _ = writeln!(out, "    }}\n}}");
    out
}
