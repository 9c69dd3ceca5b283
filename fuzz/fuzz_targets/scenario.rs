#![no_main]
//! See `sluice_fuzz::scenario`. The echo test component comes from
//! `SLUICE_FUZZ_ECHO` (`scripts/fuzz.sh` builds it).

use std::sync::OnceLock;

fn echo() -> &'static [u8] {
    static ECHO: OnceLock<Vec<u8>> = OnceLock::new();
    ECHO.get_or_init(|| {
        let path =
            std::env::var("SLUICE_FUZZ_ECHO").expect("SLUICE_FUZZ_ECHO names the echo component");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::scenario(data, echo()));
