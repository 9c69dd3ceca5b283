//! Checks events as clients send them and turns them into [`NewEvent`]s.
//!
//! Every error names the field (and, in a batch, the line) and what was
//! wrong with it. A batch is all-or-nothing: one bad line rejects the whole
//! request before anything is written.

use std::fmt;

use serde_json::{Map, Value};

use super::NewEvent;
use crate::records::{ENGINE_ID_PREFIX, ENGINE_SOURCE, RULE_SOURCE_PREFIX};

/// Size limits on incoming events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLimits {
    /// Most bytes of a payload, as JSON text.
    pub max_payload_bytes: usize,
    /// Most characters of `id`, `source` and `kind`, each.
    pub max_name_chars: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 << 10,
            max_name_chars: 256,
        }
    }
}

/// What is wrong with an incoming event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// 1-based line of the request body, for NDJSON batches.
    pub line: Option<usize>,
    /// The offending field (`payload`, `time`, …), or `event` for the whole.
    pub field: String,
    /// What is wrong, with the value seen where it helps.
    pub problem: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ValidationError {}

fn err(field: &str, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        line: None,
        field: field.into(),
        problem: problem.into(),
    }
}

/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
const MAX_TIME: i64 = 253_402_300_799_999;

/// Parse one event (a JSON object) for `tenant`.
pub fn parse_event(
    tenant: &str,
    text: &str,
    limits: &EventLimits,
) -> Result<NewEvent, ValidationError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| err("event", format!("not valid JSON: {e}")))?;
    parse_event_value(tenant, value, limits)
}

/// [`parse_event`] for an event already parsed as JSON (one validation,
/// whoever parsed the text).
pub fn parse_event_value(
    tenant: &str,
    value: Value,
    limits: &EventLimits,
) -> Result<NewEvent, ValidationError> {
    let Value::Object(map) = value else {
        return Err(err(
            "event",
            format!("expected a JSON object, got {}", type_name(&value)),
        ));
    };
    from_map(tenant, map, limits)
}

/// Parse a request body: one JSON object, a JSON array of objects, or
/// NDJSON (one object per line; blank lines are ignored). Errors carry the
/// line (NDJSON) or the 1-based position (array) of the bad event.
pub fn parse_batch(
    tenant: &str,
    body: &str,
    limits: &EventLimits,
) -> Result<Vec<NewEvent>, ValidationError> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(body)
            .map_err(|e| err("events", format!("not a valid JSON array: {e}")))?;
        if items.is_empty() {
            return Err(err("events", "the request holds no events"));
        }
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let at = |mut e: ValidationError| {
                    e.line = Some(i + 1);
                    e
                };
                match item {
                    Value::Object(map) => from_map(tenant, map, limits).map_err(at),
                    other => Err(at(err(
                        "event",
                        format!("expected a JSON object, got {}", type_name(&other)),
                    ))),
                }
            })
            .collect();
    }
    let mut events = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event = parse_event(tenant, line, limits).map_err(|mut e| {
            e.line = Some(i + 1);
            e
        })?;
        events.push(event);
    }
    if events.is_empty() {
        return Err(err("events", "the request holds no events"));
    }
    Ok(events)
}

fn from_map(
    tenant: &str,
    mut map: Map<String, Value>,
    limits: &EventLimits,
) -> Result<NewEvent, ValidationError> {
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(name("id", v, limits)?),
    };
    let source = match map.remove("source") {
        None => return Err(err("source", "missing")),
        Some(v) => name("source", v, limits)?,
    };
    if source == ENGINE_SOURCE || source.starts_with(RULE_SOURCE_PREFIX) {
        return Err(err(
            "source",
            format!(
                "{source:?} is reserved: `{ENGINE_SOURCE}` is the engine's records and `rule:<name>` a rule's outputs"
            ),
        ));
    }
    if let Some(id) = &id
        && id.starts_with(ENGINE_ID_PREFIX)
    {
        return Err(err(
            "id",
            format!(
                "ids starting with {ENGINE_ID_PREFIX:?} are reserved for the engine's outputs and records"
            ),
        ));
    }
    let kind = match map.remove("kind") {
        None => return Err(err("kind", "missing")),
        Some(v) => name("kind", v, limits)?,
    };
    let time = match map.remove("time") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(&v)?),
    };
    let payload = match map.remove("payload") {
        None => return Err(err("payload", "missing (use {} for an empty payload)")),
        Some(Value::Object(p)) => Value::Object(p).to_string(),
        Some(other) => {
            return Err(err(
                "payload",
                format!("must be a JSON object, got {}", type_name(&other)),
            ));
        }
    };
    if payload.len() > limits.max_payload_bytes {
        return Err(err(
            "payload",
            format!(
                "{} bytes is over the limit of {} bytes",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    if let Some(unknown) = map.keys().next() {
        return Err(err(
            unknown,
            "unknown field (expected id, source, kind, time, payload)",
        ));
    }
    Ok(NewEvent {
        tenant: tenant.to_owned(),
        id,
        source,
        kind,
        time,
        payload,
        hops: 0,
        ingested: None,
    })
}

fn name(field: &str, value: Value, limits: &EventLimits) -> Result<String, ValidationError> {
    let Value::String(s) = value else {
        return Err(err(
            field,
            format!("must be a string, got {}", type_name(&value)),
        ));
    };
    if s.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    let chars = s.chars().count();
    if chars > limits.max_name_chars {
        return Err(err(
            field,
            format!(
                "{chars} characters is over the limit of {} characters",
                limits.max_name_chars
            ),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(err(field, "must not contain control characters"));
    }
    Ok(s)
}

/// An RFC 3339 timestamp (`2026-01-01T12:00:00Z`) or integer milliseconds
/// since the Unix epoch.
fn parse_time(value: &Value) -> Result<i64, ValidationError> {
    let millis = crate::time::parse_value(value).map_err(|m| err("time", m))?;
    if !(0..=MAX_TIME).contains(&millis) {
        return Err(err(
            "time",
            format!("{millis} ms is outside 1970-01-01 .. 9999-12-31"),
        ));
    }
    Ok(millis)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<NewEvent, ValidationError> {
        parse_event("t", text, &EventLimits::default())
    }

    fn problem(text: &str) -> String {
        one(text).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_full_event() {
        let e = one(r#"{"id":"a1","source":"gh","kind":"push","time":"2026-01-01T00:00:01Z","payload":{"x":1}}"#)
            .unwrap();
        assert_eq!(e.id.as_deref(), Some("a1"));
        assert_eq!(e.time, Some(1_767_225_601_000));
        assert_eq!(e.payload, r#"{"x":1}"#);
        let e = one(r#"{"source":"gh","kind":"push","time":5,"payload":{}}"#).unwrap();
        assert_eq!((e.id, e.time), (None, Some(5)));
    }

    #[test]
    fn every_rule_has_a_named_error() {
        let cases = [
            ("[1]", "event: expected a JSON object, got an array"),
            ("{", "event: not valid JSON"),
            (r#"{"kind":"k","payload":{}}"#, "source: missing"),
            (r#"{"source":"s","payload":{}}"#, "kind: missing"),
            (r#"{"source":"s","kind":"k"}"#, "payload: missing"),
            (
                r#"{"source":"","kind":"k","payload":{}}"#,
                "source: must not be empty",
            ),
            (
                r#"{"source":"s","kind":7,"payload":{}}"#,
                "kind: must be a string, got a number",
            ),
            (
                r#"{"source":"s","kind":"k","payload":[1]}"#,
                "payload: must be a JSON object, got an array",
            ),
            (
                r#"{"source":"s","kind":"k","payload":"{}"}"#,
                "payload: must be a JSON object, got a string",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"time":"yesterday"}"#,
                "time: \"yesterday\" is not an RFC 3339 timestamp",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"time":-1}"#,
                "time: -1 ms is outside",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"time":1.5}"#,
                "time: 1.5 is not a whole number",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"time":true}"#,
                "time: must be an RFC 3339 string or milliseconds, got a boolean",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"id":""}"#,
                "id: must not be empty",
            ),
            (
                r#"{"source":"sluice","kind":"fire.completed","payload":{}}"#,
                "source: \"sluice\" is reserved",
            ),
            (
                r#"{"source":"rule:pr-digest","kind":"pr.digest","payload":{}}"#,
                "source: \"rule:pr-digest\" is reserved",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"id":"sluice:f_0123.0"}"#,
                "id: ids starting with \"sluice:\" are reserved",
            ),
            (
                r#"{"source":"s","kind":"k\n","payload":{}}"#,
                "kind: must not contain control characters",
            ),
            (
                r#"{"source":"s","kind":"k","payload":{},"tenant":"x"}"#,
                "tenant: unknown field",
            ),
        ];
        for (input, expected) in cases {
            let got = problem(input);
            assert!(
                got.starts_with(expected),
                "{input}: got {got:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn oversized_fields_are_rejected() {
        let limits = EventLimits {
            max_payload_bytes: 20,
            max_name_chars: 4,
        };
        let big = r#"{"source":"s","kind":"k","payload":{"data":"0123456789abcdef"}}"#;
        let e = parse_event("t", big, &limits).unwrap_err();
        assert_eq!(e.field, "payload");
        assert!(e.problem.contains("over the limit of 20 bytes"), "{e}");
        let e = parse_event(
            "t",
            r#"{"source":"sssss","kind":"k","payload":{}}"#,
            &limits,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "source: 5 characters is over the limit of 4 characters"
        );
    }

    #[test]
    fn batches_name_the_line_and_are_all_or_nothing() {
        let limits = EventLimits::default();
        let body = "{\"source\":\"s\",\"kind\":\"a\",\"payload\":{}}\n\n{\"source\":\"s\",\"payload\":{}}\n";
        let e = parse_batch("t", body, &limits).unwrap_err();
        assert_eq!(e.to_string(), "line 3: kind: missing");
        let ok = "{\"source\":\"s\",\"kind\":\"a\",\"payload\":{}}\n{\"source\":\"s\",\"kind\":\"b\",\"payload\":{}}";
        assert_eq!(parse_batch("t", ok, &limits).unwrap().len(), 2);
        let array = r#"[{"source":"s","kind":"a","payload":{}}, 3]"#;
        assert_eq!(
            parse_batch("t", array, &limits).unwrap_err().to_string(),
            "line 2: event: expected a JSON object, got a number"
        );
        assert!(parse_batch("t", " \n", &limits).is_err());
    }
}
