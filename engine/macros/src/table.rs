//! `#[table]`: row component, row-format codec, keys/indexes types, `Table` impl and the typed
//! accessors (`ctx.db.account().id().find(..)`).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Field, Fields, Ident, ItemStruct, LitFloat, Meta, Token, Type};

use crate::derive::field_code;

enum Visibility {
    Private,
    Public,
    Owner(Ident),
}

struct TableArgs {
    name: Ident,
    visibility: Visibility,
    transient: bool,
    event: bool,
    scheduled: Option<Ident>,
}

fn parse_table_args(args: TokenStream) -> syn::Result<TableArgs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut name = None;
    let mut visibility = None;
    let mut transient = false;
    let mut event = false;
    let mut scheduled = None;
    let mut set_visibility = |v: Visibility, span: Span| {
        if visibility.replace(v).is_some() {
            Err(syn::Error::new(
                span,
                "choose one of `public`, `private`, `owner = column`",
            ))
        } else {
            Ok(())
        }
    };
    for meta in metas {
        let span = syn::spanned::Spanned::span(&meta);
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("name") => {
                name = Some(expr_ident(&nv.value)?);
            }
            Meta::NameValue(nv) if nv.path.is_ident("owner") => {
                set_visibility(Visibility::Owner(expr_ident(&nv.value)?), span)?;
            }
            Meta::Path(p) if p.is_ident("public") => set_visibility(Visibility::Public, span)?,
            Meta::Path(p) if p.is_ident("private") => set_visibility(Visibility::Private, span)?,
            Meta::Path(p) if p.is_ident("transient") => transient = true,
            Meta::Path(p) if p.is_ident("event") => event = true,
            Meta::List(list) if list.path.is_ident("scheduled") => {
                scheduled = Some(list.parse_args::<Ident>()?);
            }
            _ => {
                return Err(syn::Error::new(
                    span,
                    "unknown table option; expected `name = ..`, `public`, `private`, \
                     `owner = column`, `transient`, `event` or `scheduled(reducer)`",
                ));
            }
        }
    }
    let name = name
        .ok_or_else(|| syn::Error::new(Span::call_site(), "missing `name = ..` in #[table(..)]"))?;
    Ok(TableArgs {
        name,
        visibility: visibility.unwrap_or(Visibility::Private),
        transient,
        event,
        scheduled,
    })
}

fn expr_ident(expr: &syn::Expr) -> syn::Result<Ident> {
    match expr {
        syn::Expr::Path(p) if p.path.get_ident().is_some() => Ok(p
            .path
            .get_ident()
            .cloned()
            .unwrap_or_else(|| Ident::new("_", Span::call_site()))),
        other => Err(syn::Error::new_spanned(other, "expected an identifier")),
    }
}

#[derive(Default)]
struct ColumnAttrs {
    primary_key: bool,
    auto_inc: bool,
    unique: bool,
    btree: bool,
    /// `#[spatial]` cell size.
    spatial: Option<f32>,
    quantize: Option<f32>,
}

/// Default grid cell edge for a bare `#[spatial]`.
const DEFAULT_SPATIAL_CELL: f32 = 32.0;

fn parse_spatial(attr: &syn::Attribute) -> syn::Result<f32> {
    if matches!(attr.meta, Meta::Path(_)) {
        return Ok(DEFAULT_SPATIAL_CELL);
    }
    let mut cell = None;
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("cell") {
            let value: syn::Lit = meta.value()?.parse()?;
            let parsed = match &value {
                syn::Lit::Float(f) => f.base10_parse::<f32>()?,
                syn::Lit::Int(i) => i.base10_parse::<f32>()?,
                other => return Err(syn::Error::new_spanned(other, "expected a number")),
            };
            cell = Some(parsed);
            Ok(())
        } else {
            Err(meta.error("expected `cell = <size>`"))
        }
    })?;
    let cell = cell.unwrap_or(DEFAULT_SPATIAL_CELL);
    if !(cell.is_finite() && cell > 0.0) {
        return Err(syn::Error::new_spanned(
            attr,
            "spatial cell size must be a positive finite number",
        ));
    }
    Ok(cell)
}

fn take_column_attrs(field: &mut Field) -> syn::Result<ColumnAttrs> {
    let mut attrs = ColumnAttrs::default();
    let mut kept = Vec::new();
    for attr in field.attrs.drain(..) {
        let path = attr.path();
        if path.is_ident("primary_key") {
            attrs.primary_key = true;
        } else if path.is_ident("auto_inc") {
            attrs.auto_inc = true;
        } else if path.is_ident("unique") {
            attrs.unique = true;
        } else if path.is_ident("index") {
            let kind: Ident = attr.parse_args()?;
            if kind != "btree" {
                return Err(syn::Error::new_spanned(kind, "expected `#[index(btree)]`"));
            }
            attrs.btree = true;
        } else if path.is_ident("spatial") {
            attrs.spatial = Some(parse_spatial(&attr)?);
        } else if path.is_ident("quantize") {
            let step: LitFloat = attr.parse_args()?;
            let step: f32 = step.base10_parse()?;
            if !(step.is_finite() && step > 0.0) {
                return Err(syn::Error::new_spanned(
                    &attr,
                    "quantize step must be a positive finite number",
                ));
            }
            attrs.quantize = Some(step);
        } else {
            kept.push(attr);
        }
    }
    field.attrs = kept;
    Ok(attrs)
}

fn is_schedule_at(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "ScheduleAt"))
}

struct Column {
    ident: Ident,
    ty: Type,
    attrs: ColumnAttrs,
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_table_args(args)?;
    let mut item: ItemStruct = syn::parse2(input)?;
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "tables cannot be generic",
        ));
    }
    let Fields::Named(named) = &mut item.fields else {
        return Err(syn::Error::new_spanned(
            &item.fields,
            "a table needs named fields",
        ));
    };
    let mut columns = Vec::new();
    for field in named.named.iter_mut() {
        let attrs = take_column_attrs(field)?;
        columns.push(Column {
            ident: field
                .ident
                .clone()
                .ok_or_else(|| syn::Error::new_spanned(&*field, "unnamed field"))?,
            ty: field.ty.clone(),
            attrs,
        });
    }
    let pk_positions: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.attrs.primary_key)
        .map(|(i, _)| i)
        .collect();
    let pk_index = match pk_positions.as_slice() {
        [one] => *one,
        [] => {
            return Err(syn::Error::new_spanned(
                &item.ident,
                "every table needs exactly one #[primary_key] column",
            ));
        }
        [_, second, ..] => {
            return Err(syn::Error::new_spanned(
                &columns[*second].ident,
                "only one #[primary_key] column is allowed",
            ));
        }
    };
    for c in &columns {
        if c.attrs.primary_key && (c.attrs.unique || c.attrs.btree) {
            return Err(syn::Error::new_spanned(
                &c.ident,
                "the primary key is already unique and indexed",
            ));
        }
        let kinds = [c.attrs.unique, c.attrs.btree, c.attrs.spatial.is_some()];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            return Err(syn::Error::new_spanned(
                &c.ident,
                "choose one index kind per column: #[unique], #[index(btree)] or #[spatial]",
            ));
        }
        if c.attrs.primary_key && c.attrs.spatial.is_some() {
            return Err(syn::Error::new_spanned(
                &c.ident,
                "a spatial column cannot be the primary key",
            ));
        }
    }
    if let Visibility::Owner(owner) = &args.visibility
        && !columns.iter().any(|c| c.ident == *owner)
    {
        return Err(syn::Error::new_spanned(
            owner,
            "owner column does not exist in this table",
        ));
    }
    let schedule_column = if let Some(reducer) = &args.scheduled {
        let found = columns
            .iter()
            .position(|c| is_schedule_at(&c.ty))
            .ok_or_else(|| {
                syn::Error::new_spanned(
                    reducer,
                    "a schedule table needs a `scheduled_at: ScheduleAt` column",
                )
            })?;
        Some(found)
    } else {
        None
    };

    let p = quote!(::orrery_engine::__private);
    let vis = &item.vis;
    let row = &item.ident;
    let row_name = row.to_string();
    let table = &args.name;
    let table_name = table.to_string();
    let pk = &columns[pk_index];
    let pk_ident = &pk.ident;
    let pk_ty = &pk.ty;
    let pk_name = pk_ident.to_string();

    // Columns whose values are kept in `Keys`: the primary key, unique and btree columns and the
    // schedule column (so rescheduling is detected like a key change).
    let key_columns: Vec<&Column> = columns
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            c.attrs.primary_key
                || c.attrs.unique
                || c.attrs.btree
                || c.attrs.spatial.is_some()
                || Some(*i) == schedule_column
        })
        .map(|(_, c)| c)
        .collect();
    let keys_ty = format_ident!("__{}Keys", row);
    let indexes_ty = format_ident!("{}Indexes", row);
    let handle_ty = format_ident!("{}TableHandle", row);
    let key_idents: Vec<&Ident> = key_columns.iter().map(|c| &c.ident).collect();
    let key_tys: Vec<&Type> = key_columns.iter().map(|c| &c.ty).collect();

    // Row codec.
    let codec = field_code(&item.fields, quote!(Self), |f, _| {
        let name = &f.ident;
        quote!(&self.#name)
    });
    let field_descs = codec.descs;
    let encodes = codec.encodes;
    let construct = codec.construct;
    // A row's encoding is its columns' in declaration order; with the primary key first, the
    // change log encodes the key and appends the other columns to make the row.
    let encode_after_pk_fn = (pk_index == 0).then(|| {
        let rest = &encodes[1..];
        quote! {
            #[inline]
            fn encode_after_pk(&self, out: &mut ::std::vec::Vec<u8>) -> bool {
                #(#rest)*
                true
            }
        }
    });

    // Secondary indexes.
    let mut index_fields = Vec::new();
    let mut index_defaults = Vec::new();
    let mut index_getters = Vec::new();
    let mut drain_moves = Vec::new();
    let mut defer_moves = Vec::new();
    let mut check_insert = Vec::new();
    let mut insert = Vec::new();
    let mut remove = Vec::new();
    let mut check_update = Vec::new();
    let mut update = Vec::new();
    let mut verify = Vec::new();
    let mut counts = Vec::new();
    let mut markers = Vec::new();
    let mut accessors = Vec::new();
    let mut index_schemas = vec![quote! {
        #p::IndexSchema { column: #pk_name.into(), kind: #p::IndexKind::Primary }
    }];
    for c in &columns {
        let col = &c.ident;
        let ty = &c.ty;
        let col_name = col.to_string();
        let slot = format_ident!("{}", col);
        let marker = format_ident!("__{}_{}_index", row, col);
        if c.attrs.unique {
            index_fields.push(quote! { #slot: #p::UniqueIndex<#ty> });
            index_defaults.push(quote! { #slot: ::std::default::Default::default() });
            let doc = format!("The unique index on `{col_name}`.");
            index_getters.push(quote! {
                #[doc = #doc]
                pub fn #col(&self) -> &#p::UniqueIndex<#ty> { &self.#slot }
            });
            check_insert.push(quote! {
                if self.#slot.contains(&keys.#col) {
                    return Err(#p::unique_violation::<#row>(#col_name, &keys.#col));
                }
            });
            insert.push(quote! { self.#slot.insert(keys.#col.clone(), entity); });
            remove.push(quote! { self.#slot.remove(&keys.#col); });
            check_update.push(quote! {
                if old.#col != new.#col && self.#slot.taken_by_other(&new.#col, entity) {
                    return Err(#p::unique_violation::<#row>(#col_name, &new.#col));
                }
            });
            update.push(quote! {
                if old.#col != new.#col {
                    self.#slot.remove(&old.#col);
                    self.#slot.insert(new.#col.clone(), entity);
                }
            });
            verify.push(quote! {
                if self.#slot.get(&keys.#col) != Some(entity) {
                    return Err(#p::index_mismatch::<#row>(#col_name, &keys.#col));
                }
            });
            counts.push(quote! { (#col_name, self.#slot.len()) });
            index_schemas.push(quote! {
                #p::IndexSchema { column: #col_name.into(), kind: #p::IndexKind::Unique }
            });
            markers.push(quote! {
                #[doc(hidden)]
                #[allow(non_camel_case_types)]
                #vis struct #marker;
                impl #p::UniqueIndexColumn<#row> for #marker {
                    type Key = #ty;
                    const COLUMN: &'static str = #col_name;
                    fn key(row: &#row) -> &#ty { &row.#col }
                    fn index(indexes: &#indexes_ty) -> &#p::UniqueIndex<#ty> { &indexes.#slot }
                }
            });
            let doc = format!("The unique column `{col_name}` of table `{table_name}`.");
            accessors.push(quote! {
                #[doc = #doc]
                pub fn #col(&mut self) -> #p::UniqueColumn<'_, 'a, #row, #marker> {
                    #p::UniqueColumn::new(&mut self.0)
                }
            });
        } else if c.attrs.btree {
            index_fields.push(quote! { #slot: #p::BTreeIndex<#ty, #pk_ty> });
            index_defaults.push(quote! { #slot: ::std::default::Default::default() });
            let doc = format!("The btree index on `{col_name}`.");
            index_getters.push(quote! {
                #[doc = #doc]
                pub fn #col(&self) -> &#p::BTreeIndex<#ty, #pk_ty> { &self.#slot }
            });
            insert.push(
                quote! { self.#slot.insert(keys.#col.clone(), keys.#pk_ident.clone(), entity); },
            );
            remove.push(quote! { self.#slot.remove(&keys.#col, &keys.#pk_ident); });
            update.push(quote! {
                if old.#col != new.#col || old.#pk_ident != new.#pk_ident {
                    self.#slot.remove(&old.#col, &old.#pk_ident);
                    self.#slot.insert(new.#col.clone(), new.#pk_ident.clone(), entity);
                }
            });
            verify.push(quote! {
                if self.#slot.get(&keys.#col, &keys.#pk_ident) != Some(entity) {
                    return Err(#p::index_mismatch::<#row>(#col_name, &keys.#col));
                }
            });
            counts.push(quote! { (#col_name, self.#slot.len()) });
            index_schemas.push(quote! {
                #p::IndexSchema { column: #col_name.into(), kind: #p::IndexKind::Btree }
            });
            markers.push(quote! {
                #[doc(hidden)]
                #[allow(non_camel_case_types)]
                #vis struct #marker;
                impl #p::BTreeIndexColumn<#row> for #marker {
                    type Key = #ty;
                    const COLUMN: &'static str = #col_name;
                    fn index(indexes: &#indexes_ty) -> &#p::BTreeIndex<#ty, #pk_ty> { &indexes.#slot }
                }
            });
            let doc = format!("The btree-indexed column `{col_name}` of table `{table_name}`.");
            accessors.push(quote! {
                #[doc = #doc]
                pub fn #col(&mut self) -> #p::BTreeColumn<'_, 'a, #row, #marker> {
                    #p::BTreeColumn::new(&mut self.0)
                }
            });
        } else if let Some(cell) = c.attrs.spatial {
            index_fields.push(quote! { #slot: #p::SpatialIndex<#ty> });
            index_defaults.push(quote! { #slot: #p::SpatialIndex::new(#cell) });
            let doc = format!("The spatial index on `{col_name}`.");
            index_getters.push(quote! {
                #[doc = #doc]
                pub fn #col(&self) -> &#p::SpatialIndex<#ty> { &self.#slot }
            });
            check_insert.push(quote! {
                #p::SpatialIndex::<#ty>::check(keys.#col, #table_name, #col_name)?;
            });
            insert.push(quote! { self.#slot.insert(entity, keys.#col); });
            remove.push(quote! { self.#slot.remove(entity); });
            check_update.push(quote! {
                if old.#col != new.#col {
                    #p::SpatialIndex::<#ty>::check(new.#col, #table_name, #col_name)?;
                }
            });
            update.push(quote! {
                if old.#col != new.#col {
                    self.#slot.update(entity, new.#col);
                }
            });
            verify.push(quote! {
                if self.#slot.get(entity) != Some(keys.#col) {
                    return Err(#p::index_mismatch::<#row>(#col_name, &keys.#col));
                }
            });
            counts.push(quote! { (#col_name, self.#slot.len()) });
            drain_moves.push(quote! { self.#slot.drain_cell_moves_into(#col_name, out); });
            defer_moves.push(quote! { self.#slot.set_deferred(defer); });
            index_schemas.push(quote! {
                #p::IndexSchema { column: #col_name.into(), kind: #p::IndexKind::Spatial { cell: #cell } }
            });
            markers.push(quote! {
                #[doc(hidden)]
                #[allow(non_camel_case_types)]
                #vis struct #marker;
                impl #p::SpatialIndexColumn<#row> for #marker {
                    type Point = #ty;
                    const COLUMN: &'static str = #col_name;
                    fn index(indexes: &#indexes_ty) -> &#p::SpatialIndex<#ty> { &indexes.#slot }
                }
            });
            let doc = format!("The spatial column `{col_name}` of table `{table_name}`.");
            accessors.push(quote! {
                #[doc = #doc]
                pub fn #col(&mut self) -> #p::SpatialColumn<'_, 'a, #row, #marker> {
                    #p::SpatialColumn::new(&mut self.0)
                }
            });
        }
    }
    let pk_doc = format!("The primary key `{pk_name}` of table `{table_name}`.");
    accessors.insert(
        0,
        quote! {
            #[doc = #pk_doc]
            pub fn #pk_ident(&mut self) -> #p::PrimaryColumn<'_, 'a, #row> {
                #p::PrimaryColumn::new(&mut self.0)
            }
        },
    );

    // Auto-increment.
    let auto_inc_columns: Vec<&Column> = columns.iter().filter(|c| c.attrs.auto_inc).collect();
    let auto_inc_count = auto_inc_columns.len();
    let auto_inc_code = auto_inc_columns.iter().enumerate().map(|(i, c)| {
        let col = &c.ident;
        let col_name = col.to_string();
        quote! { #p::auto_inc::<Self, _>(&mut self.#col, &mut sequences[#i], #col_name)?; }
    });

    // Schema.
    let column_schemas = columns.iter().map(|c| {
        let name = c.ident.to_string();
        let ty = &c.ty;
        let auto_inc = c.attrs.auto_inc;
        let quantize = match c.attrs.quantize {
            Some(step) => quote!(Some(#step)),
            None => quote!(None),
        };
        quote! {
            #p::ColumnSchema {
                name: #name.into(),
                ty: <#ty as #p::OrreryType>::type_desc(),
                auto_inc: #auto_inc,
                quantize: #quantize,
            }
        }
    });
    let visibility = match &args.visibility {
        Visibility::Private => quote!(#p::Visibility::Private),
        Visibility::Public => quote!(#p::Visibility::Public),
        Visibility::Owner(col) => {
            let col = col.to_string();
            quote!(#p::Visibility::Owner { column: #col.into() })
        }
    };
    let durability = if args.transient || args.event {
        quote!(#p::Durability::Transient)
    } else {
        quote!(#p::Durability::Durable)
    };
    let event = args.event;
    let (scheduled_schema, schedule_at_fn) = match (&args.scheduled, schedule_column) {
        (Some(reducer), Some(col)) => {
            let reducer = reducer.to_string();
            let col_ident = &columns[col].ident;
            let col_name = col_ident.to_string();
            (
                quote!(Some(#p::ScheduleSchema { reducer: #reducer.into(), at_column: #col_name.into() })),
                quote! {
                    fn schedule_at(&self) -> ::std::option::Option<::orrery_engine::ScheduleAt> {
                        Some(self.#col_ident)
                    }
                },
            )
        }
        _ => (quote!(None), quote!()),
    };

    let accessor_doc = format!("Opens table `{table_name}` (rows of [`{row_name}`]).");
    let indexes_doc = format!(
        "Secondary indexes of table `{table_name}`; systems read them through `Res<TableStore<{row_name}>>`."
    );
    let handle_doc =
        format!("Table `{table_name}` opened in a transaction; derefs to `TableHandle`.");
    let check_insert_unused = check_insert.is_empty();
    let check_update_unused = check_update.is_empty();
    let allow_unused_ci = if check_insert_unused {
        quote!(#[allow(unused_variables)])
    } else {
        quote!()
    };
    let allow_unused_cu = if check_update_unused {
        quote!(#[allow(unused_variables)])
    } else {
        quote!()
    };

    Ok(quote! {
        #item

        impl #p::Component for #row {
            const STORAGE_TYPE: #p::StorageType = #p::StorageType::Table;
            type Mutability = #p::Mutable;
            fn on_discard() -> ::std::option::Option<#p::RowHook> {
                Some(#p::on_row_discarded::<Self>)
            }
        }

        impl #p::OrreryType for #row {
            fn type_desc() -> #p::TypeDesc {
                #p::TypeDesc::Struct { name: #row_name.into(), fields: vec![#(#field_descs),*] }
            }
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) { #(#encodes)* }
            fn decode(input: &mut &[u8]) -> ::std::result::Result<Self, #p::RowDecodeError> {
                Ok(#construct)
            }
        }

        #[doc(hidden)]
        #[derive(Clone, Debug, PartialEq)]
        #vis struct #keys_ty { #(pub #key_idents: #key_tys),* }

        #[doc = #indexes_doc]
        #vis struct #indexes_ty { #(#index_fields),* }

        impl ::std::default::Default for #indexes_ty {
            fn default() -> Self {
                #indexes_ty { #(#index_defaults),* }
            }
        }

        impl #indexes_ty {
            #(#index_getters)*
        }

        impl #p::TableIndexes<#row> for #indexes_ty {
            #allow_unused_ci
            fn check_insert(&self, keys: &#keys_ty) -> ::std::result::Result<(), ::orrery_engine::TableError> {
                #(#check_insert)*
                Ok(())
            }
            #[allow(unused_variables)]
            fn insert(&mut self, keys: &#keys_ty, entity: #p::Entity) { #(#insert)* }
            #[allow(unused_variables)]
            fn remove(&mut self, keys: &#keys_ty, entity: #p::Entity) { #(#remove)* }
            #allow_unused_cu
            fn check_update(&self, old: &#keys_ty, new: &#keys_ty, entity: #p::Entity)
                -> ::std::result::Result<(), ::orrery_engine::TableError> {
                #(#check_update)*
                Ok(())
            }
            #[allow(unused_variables)]
            fn update(&mut self, old: &#keys_ty, new: &#keys_ty, entity: #p::Entity) { #(#update)* }
            #[allow(unused_variables)]
            fn verify(&self, keys: &#keys_ty, entity: #p::Entity) -> ::std::result::Result<(), ::std::string::String> {
                #(#verify)*
                Ok(())
            }
            fn entry_counts(&self) -> ::std::vec::Vec<(&'static str, usize)> {
                vec![#(#counts),*]
            }
            #[allow(unused_variables)]
            fn drain_cell_moves(
                &mut self,
                out: &mut ::std::vec::Vec<(&'static str, #p::CellMove<[i32; 3]>)>,
            ) {
                #(#drain_moves)*
            }
            #[allow(unused_variables)]
            fn defer_spatial_moves(&mut self, defer: bool) {
                #(#defer_moves)*
            }
        }

        impl ::orrery_engine::Table for #row {
            const NAME: &'static str = #table_name;
            const PRIMARY_KEY: &'static str = #pk_name;
            const AUTO_INC_COLUMNS: usize = #auto_inc_count;
            type Pk = #pk_ty;
            type Keys = #keys_ty;
            type Indexes = #indexes_ty;

            fn schema() -> #p::TableSchema {
                #p::TableSchema {
                    id: 0,
                    name: #table_name.into(),
                    rust_type: #row_name.into(),
                    columns: vec![#(#column_schemas),*],
                    primary_key: #pk_index,
                    indexes: vec![#(#index_schemas),*],
                    visibility: #visibility,
                    durability: #durability,
                    event: #event,
                    scheduled: #scheduled_schema,
                }
            }
            #[inline]
            fn pk(&self) -> &#pk_ty { &self.#pk_ident }
            #[inline]
            fn keys(&self) -> #keys_ty { #keys_ty { #(#key_idents: self.#key_idents.clone()),* } }
            #[inline]
            fn keys_pk(keys: &#keys_ty) -> &#pk_ty { &keys.#pk_ident }
            #[inline]
            fn same_keys(&self, keys: &#keys_ty) -> bool { true #(&& self.#key_idents == keys.#key_idents)* }
            #[inline]
            fn same_keys_as(&self, other: &Self) -> bool { true #(&& self.#key_idents == other.#key_idents)* }
            fn restore_keys(&mut self, keys: &#keys_ty) { #(self.#key_idents = keys.#key_idents.clone();)* }
            #[allow(unused_variables)]
            fn apply_auto_inc(&mut self, sequences: &mut [u64]) -> ::std::result::Result<(), ::orrery_engine::TableError> {
                #(#auto_inc_code)*
                Ok(())
            }
            #schedule_at_fn
            #encode_after_pk_fn
        }

        #(#markers)*

        #[doc = #accessor_doc]
        #[allow(non_camel_case_types)]
        #vis trait #table {
            #[doc = #accessor_doc]
            fn #table(&mut self) -> #handle_ty<'_>;
        }

        impl #table for ::orrery_engine::Db<'_> {
            #[inline]
            fn #table(&mut self) -> #handle_ty<'_> {
                #handle_ty(self.table::<#row>())
            }
        }

        #[doc = #handle_doc]
        #vis struct #handle_ty<'a>(::orrery_engine::TableHandle<'a, #row>);

        impl<'a> ::std::ops::Deref for #handle_ty<'a> {
            type Target = ::orrery_engine::TableHandle<'a, #row>;
            fn deref(&self) -> &Self::Target { &self.0 }
        }

        impl<'a> ::std::ops::DerefMut for #handle_ty<'a> {
            fn deref_mut(&mut self) -> &mut Self::Target { &mut self.0 }
        }

        impl<'a> #handle_ty<'a> {
            #(#accessors)*
        }
    })
}
