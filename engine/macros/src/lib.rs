//! # orrery-macros
//!
//! Procedural macros for Orrery modules: `#[table]` turns a struct into a table row (a
//! bevy_ecs component with generated indexes and typed accessors), `#[reducer]` registers a
//! function as a transactional reducer callable by name with row-format arguments,
//! `reducers![..]` collects reducer definitions, and `#[derive(OrreryType)]` gives a struct or
//! enum a place in the Orrery row format.
//!
//! Generated code refers to `::orrery_engine::__private`; this crate must not depend on any
//! Orrery runtime crate (proc-macro crates cannot export anything else anyway).

mod derive;
mod reducer;
mod table;

use proc_macro::TokenStream;

/// Declares a table: `#[table(name = account, public)]` on a struct with named fields.
///
/// Table options: `name = ident` (required), `public` / `private` (default) / `owner = column`,
/// `transient`, `event`, `scheduled(reducer)`.
/// Column attributes: `#[primary_key]` (exactly one), `#[auto_inc]`, `#[unique]`,
/// `#[index(btree)]`, `#[quantize(step)]`.
#[proc_macro_attribute]
pub fn table(args: TokenStream, input: TokenStream) -> TokenStream {
    table::expand(args.into(), input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a reducer: `#[reducer]`, or `#[reducer(init)]`, `#[reducer(client_connected)]`,
/// `#[reducer(client_disconnected)]` for lifecycle reducers.
///
/// A parameter marked `#[key(Row)]` is the primary key of a row of table `Row` that the reducer
/// will touch (`#[key(Account)] from: u64`): when the tick runs queued calls as a batch, it looks
/// those rows up ahead of the calls so they are in cache when the calls run. It changes no
/// outcome; the parameter's type must be `Row`'s primary key type.
#[proc_macro_attribute]
pub fn reducer(args: TokenStream, input: TokenStream) -> TokenStream {
    reducer::expand(args.into(), input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Collects reducer definitions for `ModuleBuilder::reducers`: `reducers![transfer, bank::deposit]`.
#[proc_macro]
pub fn reducers(input: TokenStream) -> TokenStream {
    reducer::expand_list(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `OrreryType` for a struct or enum whose fields all implement it.
#[proc_macro_derive(OrreryType)]
pub fn derive_orrery_type(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
