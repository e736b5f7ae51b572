//! `#[derive(OrreryType)]`: row-format encoding for structs and enums, field by field.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, parse_quote};

/// Encode/decode/type_desc bodies for a list of fields, shared by structs, enum variants and
/// `#[table]` rows.
pub(crate) struct FieldCode {
    pub(crate) descs: Vec<TokenStream>,
    pub(crate) encodes: Vec<TokenStream>,
    pub(crate) construct: TokenStream,
}

/// `access` turns a field (name or index) into the expression to encode from; `path` is what
/// the decoder constructs (`Self`, `Self::Variant`).
pub(crate) fn field_code(
    fields: &Fields,
    path: TokenStream,
    access: impl Fn(&syn::Field, usize) -> TokenStream,
) -> FieldCode {
    let p = quote!(::orrery_engine::__private);
    let mut descs = Vec::new();
    let mut encodes = Vec::new();
    let mut decodes = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let ty = &field.ty;
        let name = field
            .ident
            .as_ref()
            .map_or_else(|| i.to_string(), |id| id.to_string());
        descs.push(quote! {
            #p::FieldDesc { name: #name.into(), ty: <#ty as #p::OrreryType>::type_desc() }
        });
        let value = access(field, i);
        encodes.push(quote! { #p::OrreryType::encode(#value, out); });
        decodes.push(quote! { <#ty as #p::OrreryType>::decode(input)? });
    }
    let construct = match fields {
        Fields::Named(_) => {
            let names = fields.iter().map(|f| f.ident.as_ref());
            quote! { #path { #(#names: #decodes),* } }
        }
        Fields::Unnamed(_) => quote! { #path ( #(#decodes),* ) },
        Fields::Unit => quote! { #path },
    };
    FieldCode {
        descs,
        encodes,
        construct,
    }
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let p = quote!(::orrery_engine::__private);
    let ident = &input.ident;
    let type_name = ident.to_string();
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(parse_quote!(#p::OrreryType));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

    let (desc, encode, decode) = match &input.data {
        Data::Struct(data) => {
            let code = field_code(&data.fields, quote!(Self), |f, i| match &f.ident {
                Some(name) => quote!(&self.#name),
                None => {
                    let index = syn::Index::from(i);
                    quote!(&self.#index)
                }
            });
            let descs = code.descs;
            let encodes = code.encodes;
            let construct = code.construct;
            (
                quote! { #p::TypeDesc::Struct { name: #type_name.into(), fields: vec![#(#descs),*] } },
                quote! { #(#encodes)* },
                quote! { Ok(#construct) },
            )
        }
        Data::Enum(data) => {
            let mut variant_descs = Vec::new();
            let mut encode_arms = Vec::new();
            let mut decode_arms = Vec::new();
            for (tag, variant) in data.variants.iter().enumerate() {
                let tag = tag as u64;
                let vname = &variant.ident;
                let vname_str = vname.to_string();
                let bindings: Vec<_> = (0..variant.fields.len())
                    .map(|i| format_ident!("__f{}", i))
                    .collect();
                let code = field_code(&variant.fields, quote!(Self::#vname), |_, i| {
                    let b = &bindings[i];
                    quote!(#b)
                });
                let descs = code.descs;
                let encodes = code.encodes;
                let construct = code.construct;
                variant_descs.push(quote! {
                    #p::VariantDesc { name: #vname_str.into(), fields: vec![#(#descs),*] }
                });
                let pattern = match &variant.fields {
                    Fields::Named(_) => {
                        let names = variant.fields.iter().map(|f| f.ident.as_ref());
                        quote! { Self::#vname { #(#names: #bindings),* } }
                    }
                    Fields::Unnamed(_) => quote! { Self::#vname ( #(#bindings),* ) },
                    Fields::Unit => quote! { Self::#vname },
                };
                encode_arms.push(quote! {
                    #pattern => { #p::write_varint(out, #tag); #(#encodes)* }
                });
                decode_arms.push(quote! { #tag => Ok(#construct), });
            }
            (
                quote! { #p::TypeDesc::Enum { name: #type_name.into(), variants: vec![#(#variant_descs),*] } },
                quote! { match self { #(#encode_arms)* } },
                quote! {
                    match #p::read_varint(input, #type_name)? {
                        #(#decode_arms)*
                        tag => Err(#p::RowDecodeError::InvalidTag { what: #type_name, tag }),
                    }
                },
            )
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "OrreryType cannot be derived for unions",
            ));
        }
    };

    Ok(quote! {
        impl #impl_generics #p::OrreryType for #ident #ty_generics #where_clause {
            fn type_desc() -> #p::TypeDesc { #desc }
            #[allow(unused_variables)]
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) { #encode }
            #[allow(unused_variables)]
            fn decode(input: &mut &[u8]) -> ::std::result::Result<Self, #p::RowDecodeError> { #decode }
        }
    })
}
