#![no_main]
//! See `sluice_fuzz::projection`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::projection(data));
