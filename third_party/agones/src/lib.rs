// Copyright Contributors to Agones a Series of LF Projects, LLC.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! the Rust game server SDK

pub mod alpha;
pub mod beta;
pub mod errors;
// Orrery patch: the tonic/prost code generated from proto/ is checked in under
// src/generated/ (no build script, no protoc); public with the `server` feature, which also
// compiles the server stubs (for stand-ins of the SDK sidecar). See PATCHES.md.
#[cfg(feature = "server")]
pub mod proto;
#[cfg(not(feature = "server"))]
mod proto;
mod sdk;

pub use sdk::{GameServer, ObjectMeta, PlayerStatus, Port, Sdk, Spec, Status};
