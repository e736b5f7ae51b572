//! `#[reducer]` and `reducers![..]`: a reducer function gets a hidden sibling that builds its
//! `ReducerDef` (name, kind, parameter schema, an entry point that decodes row-format arguments
//! and calls the function, and for parameters marked `#[key(Row)]` a look-ahead that names the
//! rows they key so a batch of queued calls can bring them into cache first).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{FnArg, Ident, ItemFn, Pat, Path, Token, Type};

fn def_fn_name(reducer: &Ident) -> Ident {
    format_ident!("__orrery_reducer_{}", reducer)
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let p = quote!(::orrery_engine::__private);
    let kind = if args.is_empty() {
        quote!(#p::ReducerKind::User)
    } else {
        let kind: Ident = syn::parse2(args)?;
        match kind.to_string().as_str() {
            "init" => quote!(#p::ReducerKind::Init),
            "client_connected" => quote!(#p::ReducerKind::ClientConnected),
            "client_disconnected" => quote!(#p::ReducerKind::ClientDisconnected),
            _ => {
                return Err(syn::Error::new_spanned(
                    kind,
                    "expected `init`, `client_connected` or `client_disconnected`",
                ));
            }
        }
    };
    let mut item: ItemFn = syn::parse2(input)?;
    let keys = take_key_attrs(&mut item)?;
    let sig = &item.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "reducers must be plain, non-async, non-generic functions",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Typed(ctx)) if matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_some()) =>
            {}
        _ => {
            return Err(syn::Error::new_spanned(
                sig,
                "a reducer's first parameter must be `ctx: &mut ReducerContext`",
            ));
        }
    }
    let mut names = Vec::new();
    let mut tys = Vec::new();
    for (i, arg) in inputs.enumerate() {
        let FnArg::Typed(arg) = arg else {
            return Err(syn::Error::new_spanned(arg, "reducers cannot take self"));
        };
        let name = match &*arg.pat {
            Pat::Ident(id) => id.ident.to_string(),
            _ => format!("arg{i}"),
        };
        names.push(name);
        tys.push((*arg.ty).clone());
    }
    let fn_name = &sig.ident;
    let reducer_name = fn_name.to_string();
    let def_name = def_fn_name(fn_name);
    let vis = &item.vis;
    let count = tys.len();
    let indices = 0..count;
    let bindings: Vec<Ident> = (0..count).map(|i| format_ident!("__arg{}", i)).collect();
    let doc = format!("The definition of reducer `{reducer_name}`, for `reducers![..]`.");
    // Look-ahead: decode the arguments up to the last key and name the rows they key.
    let prefetch = match keys.iter().rposition(Option::is_some) {
        None => quote!(),
        Some(last) => {
            let steps = (0..=last).map(|i| {
                let binding = &bindings[i];
                let ty = &tys[i];
                let decode = quote! {
                    let ::std::result::Result::Ok(#binding) =
                        <#ty as #p::OrreryType>::decode(&mut input) else { return };
                };
                match &keys[i] {
                    Some(row) => quote! { #decode pf.row::<#row>(&#binding); },
                    None => decode,
                }
            });
            quote! {
                .with_prefetch({
                    fn __prefetch(pf: &mut ::orrery_engine::Prefetch<'_>, args: &[u8]) {
                        let mut input = args;
                        #(#steps)*
                    }
                    __prefetch
                })
            }
        }
    };

    Ok(quote! {
        #item

        #[doc = #doc]
        #[doc(hidden)]
        #vis fn #def_name() -> ::orrery_engine::ReducerDef {
            fn __invoke(
                ctx: &mut ::orrery_engine::ReducerContext<'_>,
                args: &[u8],
            ) -> ::std::result::Result<::std::result::Result<(), ::std::string::String>, #p::ArgsError> {
                let mut input = args;
                #(let #bindings = #p::decode_arg::<#tys>(&mut input, #indices, #names)?;)*
                #p::finish_args(input, #count)?;
                Ok(::orrery_engine::IntoReducerResult::into_reducer_result(#fn_name(ctx, #(#bindings),*)))
            }
            ::orrery_engine::ReducerDef::new(
                #reducer_name,
                #kind,
                vec![#(#p::param::<#tys>(#names)),*],
                __invoke,
            )
            #prefetch
        }
    })
}

/// Removes the `#[key(Row)]` attributes from the parameters (after the context), returning per
/// parameter the row type it keys, if any.
fn take_key_attrs(item: &mut ItemFn) -> syn::Result<Vec<Option<Type>>> {
    let mut keys = Vec::new();
    for arg in item.sig.inputs.iter_mut().skip(1) {
        let FnArg::Typed(arg) = arg else {
            keys.push(None);
            continue;
        };
        let mut key = None;
        let mut kept = Vec::new();
        for attr in arg.attrs.drain(..) {
            if attr.path().is_ident("key") {
                if key.is_some() {
                    return Err(syn::Error::new_spanned(
                        attr,
                        "one #[key(Row)] per parameter",
                    ));
                }
                key = Some(attr.parse_args::<Type>()?);
            } else {
                kept.push(attr);
            }
        }
        arg.attrs = kept;
        keys.push(key);
    }
    Ok(keys)
}

pub(crate) fn expand_list(input: TokenStream) -> syn::Result<TokenStream> {
    let paths = Punctuated::<Path, Token![,]>::parse_terminated.parse2(input)?;
    let calls = paths.into_iter().map(|mut path| {
        if let Some(last) = path.segments.last_mut() {
            last.ident = def_fn_name(&last.ident);
        }
        quote!(#path())
    });
    let _ = Span::call_site();
    Ok(quote! { ::std::vec![#(#calls),*] })
}
