//! Times and durations as the engine reads and writes them: milliseconds
//! since the Unix epoch, parsed from RFC 3339 or a whole number of
//! milliseconds — one parser for the API, the CLI, event validation and
//! `sluice test`.

use std::time::Duration;

use serde_json::Value;

/// `d` in whole milliseconds, saturating at `i64::MAX`.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A duration as people write it in a manifest: `7d`, `1h 30m`, `500ms`.
pub fn human(d: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut left = d.as_millis();
    if left == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (unit, ms) in UNITS {
        if left >= ms {
            parts.push(format!("{}{unit}", left / ms));
            left %= ms;
        }
    }
    parts.join(" ")
}

/// A time written as RFC 3339 (`2026-01-01T12:00:00Z`) or as whole
/// milliseconds since the epoch. The error says what was seen.
pub fn parse(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time or milliseconds since the epoch ({e})")
        })
}

/// A time in JSON: an RFC 3339 string or a whole number of milliseconds.
pub fn parse_value(value: &Value) -> Result<i64, String> {
    match value {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp: {e}")),
        // A whole number written with a fraction (`346.0`) is still whole,
        // as JSON Schema's `integer` has it.
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        other => Err(format!(
            "must be an RFC 3339 string or milliseconds, got {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "an array",
                _ => "an object",
            }
        )),
    }
}

/// `ms` as RFC 3339 (UTC), or the number when it is out of range.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |d| d.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_carry_a_zero_fraction() {
        assert_eq!(parse_value(&serde_json::json!(346.0)), Ok(346));
        assert!(parse_value(&serde_json::json!(346.5)).is_err());
        assert_eq!(parse_value(&serde_json::json!(7)), Ok(7));
    }

    #[test]
    fn durations_read_as_written() {
        let h = |ms: u64| human(Duration::from_millis(ms));
        assert_eq!(h(0), "0s");
        assert_eq!(h(500), "500ms");
        assert_eq!(h(3_600_000), "1h");
        assert_eq!(h(5_400_000), "1h 30m");
        assert_eq!(h(7 * 86_400_000), "7d");
        assert_eq!(h(86_400_000 + 1_800_000), "1d 30m");
    }

    #[test]
    fn one_parser_for_every_front_door() {
        assert_eq!(parse("1767225600000"), Ok(1_767_225_600_000));
        assert_eq!(parse("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        assert_eq!(
            parse_value(&serde_json::json!("2026-01-01T00:00:01+00:00")),
            Ok(1_767_225_601_000)
        );
        assert_eq!(parse_value(&serde_json::json!(5)), Ok(5));
        assert!(parse("yesterday").unwrap_err().contains("\"yesterday\""));
        assert!(parse_value(&serde_json::json!(1.5)).is_err());
        assert!(
            parse_value(&serde_json::json!(null))
                .unwrap_err()
                .contains("null")
        );
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(rfc3339(1_767_225_600_000), "2026-01-01T00:00:00+00:00");
    }
}
