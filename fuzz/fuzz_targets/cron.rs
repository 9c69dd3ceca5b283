#![no_main]
//! See `sluice_fuzz::cron`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::cron(data));
