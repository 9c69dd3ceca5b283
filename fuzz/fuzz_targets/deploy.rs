#![no_main]
//! See `sluice_fuzz::deploy`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::deploy(data));
