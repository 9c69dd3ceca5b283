#![no_main]
//! See `sluice_fuzz::ingest`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::ingest(data));
