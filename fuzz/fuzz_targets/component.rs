#![no_main]
//! See `sluice_fuzz::component`. Half the inputs are raw bytes; the other
//! half become a valid core module from `wasm-smith`, wrapped as a
//! component that instantiates it: valid but odd, never a Sluice rule.

use arbitrary::Unstructured;
use wasm_encoder::{Component, ComponentSectionId, RawSection};

fn wrapped(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let module = wasm_smith::Module::new(wasm_smith::Config::default(), &mut u).ok()?;
    let bytes = module.to_bytes();
    // A component's core module section holds the module's bytes whole.
    let mut component = Component::new();
    component.section(&RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: &bytes,
    });
    Some(component.finish())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((flag, rest)) if flag % 2 == 0 => {
            if let Some(bytes) = wrapped(rest) {
                sluice_fuzz::component(&bytes);
            }
        }
        _ => sluice_fuzz::component(data),
    }
});
