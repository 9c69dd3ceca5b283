//! Guest components for Sluice's integration tests and benchmarks, compiled
//! from source by `build.rs` (see `tests/components` and `examples`).

#![deny(missing_docs)]

/// Paths of the compiled guest components, one constant per component
/// (`KIND_FILTER`, `HOSTILE`, `PR_DIGEST`, …) and [`components::ALL`].
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// Read a component's bytes.
pub fn component_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read component {path}: {e}"))
}
