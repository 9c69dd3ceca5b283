//! The one place that generates host bindings from the WIT contract.
//!
//! Everything else in the engine uses the types re-exported from here, so
//! when `sluice:rule@0.2.0` arrives it is bound beside this version rather
//! than instead of it, and deployed components keep running.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "rule",
    path: "../wit",
    // Not `Eq`: `projected-pack` holds floats.
    additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
});

/// The host interface of `sluice:rule@0.1.0`.
pub use self::sluice::rule::host as wit_host;
/// The WIT types of `sluice:rule@0.1.0`, under a version-free name.
pub use self::sluice::rule::types as wit;
