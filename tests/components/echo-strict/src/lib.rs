//! The echo rule (`../echo/src/echo.rs`) with a stricter filter: it also
//! skips events of kind `extra`. The "changed filter" next version of
//! the shadow tests.

/// The kinds the rule skips.
const SKIPPED: &[&str] = &["noise", "extra"];

include!("../../echo/src/echo.rs");
