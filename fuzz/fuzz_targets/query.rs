#![no_main]
//! See `sluice_fuzz::query`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::query(data));
