//! Code generation from a module schema (`GET /v1/schema`, [`ModuleSchema`]): typed row
//! structs with decoders, the named struct and enum types they use, and one typed call per
//! user reducer (its argument encoder plus a call through the client) for C# (the Unity
//! binding, `client/ffi/bindings/csharp`), C++17 (the Unreal binding,
//! `client/ffi/bindings/cpp`) and Rust (`orrery-client`).
//!
//! Every language gets the same shape: named types in dependency order, then one type per
//! table that clients can see (private tables are left out: their rows never leave the
//! server), then the reducers. Decoders follow `netcode/ROW_FORMAT.md` through each binding's
//! row reader; the generated code is compiled and run against a live server by the FFI's
//! tests and the CLI's tests.

mod cpp;
mod csharp;
mod rust;

use std::collections::BTreeSet;

use orrery_client::row::{FieldDesc, ModuleSchema, ReducerKind, TableSchema, TypeDesc, Visibility};

/// A target language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// C# for the Unity binding (one `.cs` file).
    Csharp,
    /// C++17 for the Unreal binding (one header).
    Cpp,
    /// Rust for `orrery-client` (one module file).
    Rust,
}

/// Generation settings.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The C# namespace or C++ namespace (default `Orrery.Generated` / `orrery_generated`).
    pub namespace: Option<String>,
}

/// One generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name, relative to the output directory.
    pub name: String,
    /// Its text.
    pub contents: String,
}

/// Why code could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// Two different types share a name, which every target language needs unique.
    #[error("two different types are both named `{0}`")]
    TypeNameClash(String),
    /// A table's primary key index is outside its columns.
    #[error("table `{table}`: primary key column {index} does not exist")]
    BadPrimaryKey {
        /// The table.
        table: String,
        /// The index the schema gave.
        index: usize,
    },
}

/// A named (struct or enum) type the tables and reducers use.
#[derive(Clone, Debug)]
pub(crate) enum Named<'a> {
    /// `kind: struct`.
    Struct {
        name: &'a str,
        fields: &'a [FieldDesc],
    },
    /// `kind: enum`.
    Enum {
        name: &'a str,
        variants: &'a [orrery_client::row::VariantDesc],
    },
}

impl Named<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Named::Struct { name, .. } | Named::Enum { name, .. } => name,
        }
    }
}

/// What the generators work from: the module, its visible tables, its user reducers and the
/// named types, dependencies first.
pub(crate) struct Model<'a> {
    pub module: &'a str,
    pub tables: Vec<&'a TableSchema>,
    pub reducers: Vec<&'a orrery_client::row::ReducerSchema>,
    pub types: Vec<Named<'a>>,
}

fn collect<'a>(
    ty: &'a TypeDesc,
    seen: &mut Vec<(&'a str, &'a TypeDesc)>,
    out: &mut Vec<Named<'a>>,
) -> Result<(), CodegenError> {
    match ty {
        TypeDesc::Option { of } | TypeDesc::Array { of } => collect(of, seen, out),
        TypeDesc::Struct { name, fields } => {
            if let Some((_, other)) = seen.iter().find(|(n, _)| n == name) {
                return if *other == ty {
                    Ok(())
                } else {
                    Err(CodegenError::TypeNameClash(name.clone()))
                };
            }
            seen.push((name, ty));
            for f in fields {
                collect(&f.ty, seen, out)?;
            }
            out.push(Named::Struct { name, fields });
            Ok(())
        }
        TypeDesc::Enum { name, variants } => {
            if let Some((_, other)) = seen.iter().find(|(n, _)| n == name) {
                return if *other == ty {
                    Ok(())
                } else {
                    Err(CodegenError::TypeNameClash(name.clone()))
                };
            }
            seen.push((name, ty));
            for f in variants.iter().flat_map(|v| &v.fields) {
                collect(&f.ty, seen, out)?;
            }
            out.push(Named::Enum { name, variants });
            Ok(())
        }
        _ => Ok(()),
    }
}

impl<'a> Model<'a> {
    fn new(schema: &'a ModuleSchema) -> Result<Self, CodegenError> {
        let tables: Vec<&TableSchema> = schema
            .tables
            .iter()
            .filter(|t| t.visibility != Visibility::Private)
            .collect();
        let reducers: Vec<_> = schema
            .reducers
            .iter()
            .filter(|r| r.kind == ReducerKind::User)
            .collect();
        let mut seen = Vec::new();
        let mut types = Vec::new();
        let mut table_names = BTreeSet::new();
        for t in &tables {
            if t.primary_key >= t.columns.len() {
                return Err(CodegenError::BadPrimaryKey {
                    table: t.name.clone(),
                    index: t.primary_key,
                });
            }
            if !table_names.insert(t.rust_type.as_str()) {
                return Err(CodegenError::TypeNameClash(t.rust_type.clone()));
            }
            for c in &t.columns {
                collect(&c.ty, &mut seen, &mut types)?;
            }
        }
        for r in &reducers {
            for p in &r.params {
                collect(&p.ty, &mut seen, &mut types)?;
            }
        }
        if let Some(t) = types.iter().find(|t| table_names.contains(t.name())) {
            return Err(CodegenError::TypeNameClash(t.name().to_owned()));
        }
        Ok(Model {
            module: &schema.name,
            tables,
            reducers,
            types,
        })
    }
}

/// Generates the code for `schema` in `lang`.
pub fn generate(
    schema: &ModuleSchema,
    lang: Lang,
    options: &Options,
) -> Result<Vec<GeneratedFile>, CodegenError> {
    let model = Model::new(schema)?;
    let base = snake(&schema.name);
    Ok(vec![match lang {
        Lang::Csharp => GeneratedFile {
            name: format!("{}.g.cs", pascal(&schema.name)),
            contents: csharp::generate(&model, options),
        },
        Lang::Cpp => GeneratedFile {
            name: format!("{base}.hpp"),
            contents: cpp::generate(&model, options),
        },
        Lang::Rust => GeneratedFile {
            name: format!("{base}.rs"),
            contents: rust::generate(&model),
        },
    }])
}

/// `max_hp` → `MaxHp`, `sample-mmo` → `SampleMmo`, `0` → `Item0`.
pub(crate) fn pascal(name: &str) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in name.chars() {
        if c == '_' || c == '-' || c == ' ' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert_str(0, "Item");
    }
    out
}

/// `sample-mmo` → `sample_mmo`.
pub(crate) fn snake(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        format!("m_{s}")
    } else {
        s
    }
}

/// A string literal in C-family syntax (all three targets accept these escapes).
pub(crate) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(pascal("max_hp"), "MaxHp");
        assert_eq!(pascal("sample-mmo"), "SampleMmo");
        assert_eq!(pascal("0"), "Item0");
        assert_eq!(snake("sample-mmo"), "sample_mmo");
    }

    #[test]
    fn clashing_type_names_are_refused() {
        let a = TypeDesc::Struct {
            name: "T".into(),
            fields: vec![],
        };
        let b = TypeDesc::Enum {
            name: "T".into(),
            variants: vec![],
        };
        let (mut seen, mut out) = (Vec::new(), Vec::new());
        collect(&a, &mut seen, &mut out).unwrap();
        collect(&a, &mut seen, &mut out).unwrap();
        assert!(matches!(
            collect(&b, &mut seen, &mut out),
            Err(CodegenError::TypeNameClash(n)) if n == "T"
        ));
        assert_eq!(out.len(), 1);
    }
}
