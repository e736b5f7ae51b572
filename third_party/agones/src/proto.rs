// Orrery patch (see PATCHES.md): the generated gRPC code of the SDK protos, checked in.

//! The messages and gRPC stubs generated from `proto/sdk` (tonic-build 0.12.3). Client stubs
//! always; server stubs (`*::sdk_server`) with the `server` feature.

/// `agones.dev.sdk`: the stable SDK service and the `GameServer` message.
#[allow(missing_docs, dead_code, clippy::all)]
pub mod sdk {
    include!("generated/agones.dev.sdk.rs");
}

/// `agones.dev.sdk.alpha`: the alpha SDK service (player tracking).
#[allow(missing_docs, dead_code, clippy::all)]
pub mod alpha {
    include!("generated/agones.dev.sdk.alpha.rs");
}

/// `agones.dev.sdk.beta`: the beta SDK service (counters and lists).
#[allow(missing_docs, dead_code, clippy::all)]
pub mod beta {
    include!("generated/agones.dev.sdk.beta.rs");
}
