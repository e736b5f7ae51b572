//! The Rust generator (one module file for `orrery-client` programs): structs and enums with
//! `decode`/`encode_into` over `orrery_client::row` (the same primitive codecs as the engine),
//! table constants, and a `reducers` module of `encode_*` argument encoders and async calls
//! through `orrery_client::Client`. Vec2/Vec3 are `[f32; 2]`/`[f32; 3]`, so the generated file
//! needs no glam.

use std::fmt::Write as _;

use orrery_client::row::{FieldDesc, TypeDesc};

use super::{Model, Named, pascal, quoted, snake};

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false",
    "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
    "return", "static", "struct", "trait", "true", "type", "unsafe", "use", "where", "while",
    "abstract", "become", "box", "do", "final", "macro", "override", "priv", "typeof", "unsized",
    "virtual", "yield", "try", "gen",
];

fn ident(name: &str) -> String {
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else if name == "input" || name == "out" || name == "client" {
        format!("{name}_")
    } else {
        name.to_owned()
    }
}

fn tuple(fields: &[FieldDesc]) -> bool {
    !fields.is_empty()
        && fields
            .iter()
            .enumerate()
            .all(|(i, f)| f.name == i.to_string())
}

fn ty(t: &TypeDesc) -> String {
    match t {
        TypeDesc::Bool => "bool".into(),
        TypeDesc::U8 => "u8".into(),
        TypeDesc::U16 => "u16".into(),
        TypeDesc::U32 => "u32".into(),
        TypeDesc::U64 => "u64".into(),
        TypeDesc::I8 => "i8".into(),
        TypeDesc::I16 => "i16".into(),
        TypeDesc::I32 => "i32".into(),
        TypeDesc::I64 => "i64".into(),
        TypeDesc::F32 => "f32".into(),
        TypeDesc::F64 => "f64".into(),
        TypeDesc::String => "String".into(),
        TypeDesc::Identity => "row::Identity".into(),
        TypeDesc::ConnectionId => "row::ConnectionId".into(),
        TypeDesc::Timestamp => "row::Timestamp".into(),
        TypeDesc::Duration => "std::time::Duration".into(),
        TypeDesc::ScheduleAt => "row::ScheduleAt".into(),
        TypeDesc::Vec2 => "[f32; 2]".into(),
        TypeDesc::Vec3 => "[f32; 3]".into(),
        TypeDesc::Option { of } => format!("Option<{}>", ty(of)),
        TypeDesc::Array { of } => format!("Vec<{}>", ty(of)),
        TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => pascal(name),
    }
}

/// An expression decoding a `t` from `input: &mut &[u8]` (in a fn returning
/// `Result<_, RowDecodeError>`).
fn read(t: &TypeDesc) -> String {
    match t {
        TypeDesc::Vec2 => "[<f32 as OrreryType>::decode(input)?, <f32 as OrreryType>::decode(input)?]".into(),
        TypeDesc::Vec3 => "[<f32 as OrreryType>::decode(input)?, <f32 as OrreryType>::decode(input)?, <f32 as OrreryType>::decode(input)?]".into(),
        TypeDesc::Option { of } => format!(
            "match <u8 as OrreryType>::decode(input)? {{ 0 => None, 1 => Some({}), tag => return Err(RowDecodeError::InvalidTag {{ what: \"option\", tag: u64::from(tag) }}) }}",
            read(of)
        ),
        TypeDesc::Array { of } => format!(
            "{{ let n = codec::read_len(input, 1, \"array\")?; let mut items = Vec::with_capacity(n); for _ in 0..n {{ items.push({}); }} items }}",
            read(of)
        ),
        TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => {
            format!("{}::decode_from(input)?", pascal(name))
        }
        other => format!("<{} as OrreryType>::decode(input)?", ty(other)),
    }
}

/// A statement encoding `v` (an expression of type `&T`) into `out: &mut Vec<u8>`.
fn write(t: &TypeDesc, v: &str, depth: usize) -> String {
    let x = format!("x{depth}");
    // `&self.f.method()` would borrow the call's result: parenthesize borrowed receivers.
    let recv = if v.starts_with('&') {
        format!("({v})")
    } else {
        v.to_owned()
    };
    match t {
        TypeDesc::String => format!("write_str(out, {v});"),
        TypeDesc::Vec2 | TypeDesc::Vec3 => {
            format!("for {x} in {v} {{ OrreryType::encode({x}, out); }}")
        }
        TypeDesc::Option { of } => format!(
            "match {v} {{ None => out.push(0), Some({x}) => {{ out.push(1); {} }} }}",
            write(of, &x, depth + 1)
        ),
        TypeDesc::Array { of } => format!(
            "codec::write_varint(out, {recv}.len() as u64); for {x} in {v} {{ {} }}",
            write(of, &x, depth + 1)
        ),
        TypeDesc::Struct { .. } | TypeDesc::Enum { .. } => format!("{recv}.encode_into(out);"),
        _ => format!("OrreryType::encode({v}, out);"),
    }
}

fn struct_def(out: &mut String, name: &str, fields: &[FieldDesc], doc: &str) {
    let _ = writeln!(out, "/// {doc}\n#[derive(Clone, Debug, PartialEq)]");
    if tuple(fields) {
        let tys: Vec<String> = fields
            .iter()
            .map(|f| format!("pub {}", ty(&f.ty)))
            .collect();
        let _ = writeln!(out, "pub struct {name}({});\n", tys.join(", "));
    } else {
        let _ = writeln!(out, "pub struct {name} {{");
        for f in fields {
            let _ = writeln!(out, "    pub {}: {},", ident(&f.name), ty(&f.ty));
        }
        let _ = writeln!(out, "}}\n");
    }
    let _ = writeln!(
        out,
        "impl {name} {{\n    /// Reads one value from the front of `input`.\n    \
         pub fn decode_from(input: &mut &[u8]) -> Result<Self, RowDecodeError> {{"
    );
    if fields.is_empty() {
        let _ = writeln!(out, "        let _ = input;");
    }
    if tuple(fields) {
        let items: Vec<String> = fields.iter().map(|f| read(&f.ty)).collect();
        let _ = writeln!(out, "        Ok({name}({}))", items.join(", "));
    } else {
        let _ = writeln!(out, "        Ok({name} {{");
        for f in fields {
            let _ = writeln!(out, "            {}: {},", ident(&f.name), read(&f.ty));
        }
        let _ = writeln!(out, "        }})");
    }
    let _ = writeln!(
        out,
        "    }}\n\n    /// Appends the value's bytes.\n    pub fn encode_into(&self, out: &mut Vec<u8>) {{"
    );
    if fields.is_empty() {
        let _ = writeln!(out, "        let _ = out;");
    }
    for (i, f) in fields.iter().enumerate() {
        let access = if tuple(fields) {
            format!("&self.{i}")
        } else {
            format!("&self.{}", ident(&f.name))
        };
        let _ = writeln!(out, "        {}", write(&f.ty, &access, 0));
    }
    let _ = writeln!(out, "    }}");
    whole(out);
    let _ = writeln!(out, "}}\n");
}

/// `decode` (exact) and `to_bytes`, for any type with `decode_from`/`encode_into`.
fn whole(out: &mut String) {
    let _ = writeln!(
        out,
        "\n    /// Decodes bytes that hold exactly one value (a row from an event).\n    \
         pub fn decode(bytes: &[u8]) -> Result<Self, RowDecodeError> {{\n        \
         let mut input = bytes;\n        let value = Self::decode_from(&mut input)?;\n        \
         if input.is_empty() {{ Ok(value) }} else {{ Err(RowDecodeError::TrailingBytes(input.len())) }}\n    }}\n\n    \
         /// The value's bytes.\n    pub fn to_bytes(&self) -> Vec<u8> {{\n        \
         let mut out = Vec::new();\n        self.encode_into(&mut out);\n        out\n    }}"
    );
}

pub(super) fn generate(model: &Model<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! Generated by `orrery generate --lang rust` from the schema of module {}: do not edit.\n\
         //! Rows and reducer arguments in the row format (`netcode/ROW_FORMAT.md`), for programs on\n\
         //! `orrery-client`. Use it as a module: `#[path = \"...\"] mod {};`.\n\n\
         #![allow(missing_docs, dead_code, unused_imports, clippy::all)]\n\n\
         use orrery_client::row::{{self, OrreryType, RowDecodeError, codec}};\n\n\
         fn write_str(out: &mut Vec<u8>, s: &str) {{\n    codec::write_varint(out, s.len() as u64);\n    out.extend_from_slice(s.as_bytes());\n}}\n",
        quoted(model.module),
        snake(model.module)
    );
    for t in &model.types {
        match t {
            Named::Struct { name, fields } => {
                struct_def(&mut out, &pascal(name), fields, &format!("`{name}`."));
            }
            Named::Enum { name, variants } => {
                let ename = pascal(name);
                let _ = writeln!(
                    out,
                    "/// `{name}`.\n#[derive(Clone, Debug, PartialEq)]\npub enum {ename} {{"
                );
                for v in variants.iter() {
                    let vname = pascal(&v.name);
                    if v.fields.is_empty() {
                        let _ = writeln!(out, "    {vname},");
                    } else if tuple(&v.fields) {
                        let tys: Vec<String> = v.fields.iter().map(|f| ty(&f.ty)).collect();
                        let _ = writeln!(out, "    {vname}({}),", tys.join(", "));
                    } else {
                        let fs: Vec<String> = v
                            .fields
                            .iter()
                            .map(|f| format!("{}: {}", ident(&f.name), ty(&f.ty)))
                            .collect();
                        let _ = writeln!(out, "    {vname} {{ {} }},", fs.join(", "));
                    }
                }
                let _ = writeln!(
                    out,
                    "}}\n\nimpl {ename} {{\n    /// Reads one value from the front of `input`.\n    \
                     pub fn decode_from(input: &mut &[u8]) -> Result<Self, RowDecodeError> {{\n        \
                     Ok(match codec::read_varint(input, {})? {{",
                    quoted(name)
                );
                for (i, v) in variants.iter().enumerate() {
                    let vname = pascal(&v.name);
                    let value = if v.fields.is_empty() {
                        format!("{ename}::{vname}")
                    } else if tuple(&v.fields) {
                        let items: Vec<String> = v.fields.iter().map(|f| read(&f.ty)).collect();
                        format!("{ename}::{vname}({})", items.join(", "))
                    } else {
                        let items: Vec<String> = v
                            .fields
                            .iter()
                            .map(|f| format!("{}: {}", ident(&f.name), read(&f.ty)))
                            .collect();
                        format!("{ename}::{vname} {{ {} }}", items.join(", "))
                    };
                    let _ = writeln!(out, "            {i} => {value},");
                }
                let _ = writeln!(
                    out,
                    "            tag => return Err(RowDecodeError::InvalidTag {{ what: {}, tag }}),\n        }})\n    }}\n\n    \
                     /// Appends the value's bytes.\n    pub fn encode_into(&self, out: &mut Vec<u8>) {{\n        match self {{",
                    quoted(name)
                );
                for (i, v) in variants.iter().enumerate() {
                    let vname = pascal(&v.name);
                    let binds: Vec<String> = (0..v.fields.len()).map(|k| format!("f{k}")).collect();
                    let pattern = if v.fields.is_empty() {
                        format!("{ename}::{vname}")
                    } else if tuple(&v.fields) {
                        format!("{ename}::{vname}({})", binds.join(", "))
                    } else {
                        let items: Vec<String> = v
                            .fields
                            .iter()
                            .zip(&binds)
                            .map(|(f, b)| format!("{}: {b}", ident(&f.name)))
                            .collect();
                        format!("{ename}::{vname} {{ {} }}", items.join(", "))
                    };
                    let mut body = format!("codec::write_varint(out, {i});");
                    for (f, b) in v.fields.iter().zip(&binds) {
                        body.push(' ');
                        body.push_str(&write(&f.ty, b, 0));
                    }
                    let _ = writeln!(out, "            {pattern} => {{ {body} }}");
                }
                let _ = writeln!(out, "        }}\n    }}");
                whole(&mut out);
                let _ = writeln!(out, "}}\n");
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
        struct_def(
            &mut out,
            &name,
            &fields,
            &format!("A row of table `{}`.", t.name),
        );
        let _ = writeln!(
            out,
            "impl {name} {{\n    /// The table's id on the wire.\n    pub const TABLE_ID: u32 = {};\n    \
             /// The table's name.\n    pub const TABLE_NAME: &'static str = {};\n}}\n",
            t.id,
            quoted(&t.name)
        );
    }
    let _ = writeln!(
        out,
        "/// Typed reducer calls: `encode_*` gives the argument bytes, the async functions call.\n\
         pub mod reducers {{\n    use super::*;\n"
    );
    for r in &model.reducers {
        let name = snake(&r.name);
        let params: Vec<String> = r
            .params
            .iter()
            .map(|p| match &p.ty {
                TypeDesc::String => format!("{}: &str", ident(&p.name)),
                other => format!("{}: &{}", ident(&p.name), ty(other)),
            })
            .collect();
        let args: Vec<String> = r.params.iter().map(|p| ident(&p.name)).collect();
        let _ = writeln!(
            out,
            "    /// The arguments of `{}` in the row format.\n    pub fn encode_{name}({}) -> Vec<u8> {{\n        let mut bytes = Vec::new();\n        let out = &mut bytes;",
            r.name,
            params.join(", ")
        );
        for p in &r.params {
            let _ = writeln!(out, "        {}", write(&p.ty, &ident(&p.name), 0));
        }
        let mut call = vec!["client: &orrery_client::Client".to_owned()];
        call.extend(params);
        let _ = writeln!(
            out,
            "        let _ = out;\n        bytes\n    }}\n\n    /// Calls `{}` and waits for its answer.\n    \
             pub async fn {}({}) -> Result<orrery_client::Reply, orrery_client::CallError> {{\n        \
             client.call_raw({}, encode_{name}({}), false).await\n    }}\n",
            r.name,
            ident(&name),
            call.join(", "),
            quoted(&r.name),
            args.join(", ")
        );
    }
    let _ = writeln!(out, "}}");
    out
}
