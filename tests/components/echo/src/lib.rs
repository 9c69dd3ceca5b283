//! The echo rule (`echo.rs`): it skips events of kind `noise`.

/// The kinds the rule skips.
const SKIPPED: &[&str] = &["noise"];

include!("echo.rs");
