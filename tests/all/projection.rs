//! Input projection: `[select] fields` parsed by the engine and passed to
//! the world `projected-rule`'s `projection.select`; components of the
//! first world `rule` keep working.

use proptest::prelude::*;
use sluice::event::Event;
use sluice::manifest::Manifest;
use sluice::runtime::{Limits, LoadError, LoadedRule, RuleLabel, Verdict};
use sluice_test_components::component_bytes;
use sluice_test_components::components::{PLAIN_RULE, REPO_SUMMARY};

use crate::{Harness, event_text};

fn load_fields(h: &Harness, path: &str, fields: &[&str]) -> Result<LoadedRule, LoadError> {
    let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    h.runtime.load_with_fields(
        RuleLabel::new("test", "r"),
        &component_bytes(path),
        Limits::default(),
        &fields,
    )
}

/// What `select` keeps: the partition of each kept event, `None` for a
/// skipped one.
fn kept(verdicts: &[Verdict]) -> Vec<Option<Option<String>>> {
    verdicts
        .iter()
        .map(|v| match v {
            Verdict::Skip => None,
            Verdict::Keep(p) => Some(p.partition.clone()),
        })
        .collect()
}

#[test]
fn a_component_of_the_first_world_keeps_working() {
    let h = Harness::new();
    let mut rule = h.load(PLAIN_RULE, Limits::default()).instance();
    let events = [
        event_text(1, "keep", "{}"),
        event_text(2, "drop", r#"{"a":1}"#),
        event_text(3, "keep", r#"{"b":"x"}"#),
    ];
    let verdicts = rule.select(&events).unwrap();
    assert_eq!(
        kept(&verdicts),
        [Some(Some("keep".into())), None, Some(Some("keep".into()))]
    );
}

#[test]
fn fields_for_a_component_without_the_projection_are_refused_by_name() {
    let h = Harness::new();
    let err = load_fields(&h, PLAIN_RULE, &["/repo", "/ok"]).unwrap_err();
    assert!(matches!(err, LoadError::NoProjection(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("[select] fields (`/repo`, `/ok`)"), "{text}");
    assert!(text.contains("sluice:rule/projected-rule@0.1.0"), "{text}");
    // The same component without fields loads.
    load_fields(&h, PLAIN_RULE, &[]).unwrap();
}

#[test]
fn manifests_name_a_bad_pointer() {
    let manifest = |fields: &str| {
        Manifest::parse(&format!(
            "name = \"r\"\nversion = 1\n[trigger.batch]\ncount = 1\nwindow = \"1m\"\n[select]\nfields = {fields}\n"
        ))
    };
    assert_eq!(
        manifest(r#"["/repo", "/pr/number"]"#).unwrap().fields,
        ["/repo", "/pr/number"]
    );
    for (fields, says) in [
        (
            r#"["repo"]"#,
            "select.fields: `repo` is not a JSON pointer: it must be empty or start with `/`",
        ),
        (r#"["/a", "/a"]"#, "select.fields: `/a` is declared twice"),
        (r#"["/a~x"]"#, "`~` must be followed by 0 or 1"),
        (r#""/repo""#, "select.fields"),
    ] {
        let err = manifest(fields).unwrap_err().to_string();
        assert!(err.contains(says), "{fields}: {err}");
    }
    let many: Vec<String> = (0..65).map(|i| format!("\"/f{i}\"")).collect();
    let err = manifest(&format!("[{}]", many.join(",")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 64"), "{err}");
}

#[test]
fn reading_an_undeclared_field_fails_the_call_naming_it() {
    let h = Harness::new();
    // repo-summary reads /ok and /repo; only /repo is declared.
    let mut rule = load_fields(&h, REPO_SUMMARY, &["/repo"])
        .unwrap()
        .instance();
    let err = rule
        .select(&[event_text(1, "k", r#"{"repo":"a","ok":true}"#)])
        .unwrap_err();
    assert_eq!(err.export, "projection.select");
    let stderr = err.stderr.join("\n");
    assert!(stderr.contains(r#"add "/ok" there"#), "{stderr}");
}

/// The values as serde_json reads the payload: what repo-summary keeps.
fn reference(payload: &str) -> Option<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(payload).unwrap();
    if v.pointer("/ok") != Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    Some(Some(v.pointer("/repo")?.as_str()?.to_owned()))
}

/// A string member's value as JSON text: plain, or with every character
/// escaped as `\uXXXX`.
fn string_text(s: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(s).unwrap();
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn member() -> impl Strategy<Value = String> {
    let text = "[a-z/ \"\\\\\u{e9}\u{1F680}\n]{0,8}";
    prop_oneof![
        (text, any::<bool>()).prop_map(|(s, esc)| format!("\"repo\":{}", string_text(&s, esc))),
        (text, any::<bool>())
            .prop_map(|(s, esc)| format!("\"re\\u0070o\":{}", string_text(&s, esc))),
        Just("\"repo\":42".to_string()),
        Just("\"repo\":null".to_string()),
        Just("\"repo\":{\"repo\":\"inner\"}".to_string()),
        Just("\"ok\":true".to_string()),
        Just("\"ok\":false".to_string()),
        Just("\"\\u006fk\" : true".to_string()),
        Just("\"ok\":\"true\"".to_string()),
        Just("\"ok\":1".to_string()),
        Just("\"x\":{\"repo\":\"decoy\",\"ok\":true}".to_string()),
        Just("\"note\":\"\\\"ok\\\":true,\\\"repo\\\":\\\"no\\\"\"".to_string()),
        Just("\"list\":[1,{\"ok\":true},[\"repo\"]]".to_string()),
        (-1e12f64..1e12).prop_map(|x| format!("\"n\":{x}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The engine's projection and the SDK's own reading of whole payloads
    /// keep the same events in the same partitions, and both agree with
    /// serde_json: escaped keys, escaped strings, duplicate keys (the last
    /// counts), decoys nested or inside strings, values of other types.
    #[test]
    fn projected_select_agrees_with_whole_payloads(
        payloads in prop::collection::vec(prop::collection::vec(member(), 0..7), 1..40)
    ) {
        let h = Harness::new();
        let events: Vec<Event> = payloads
            .iter()
            .enumerate()
            .map(|(i, members)| event_text(i as u64 + 1, "k", &format!("{{{}}}", members.join(","))))
            .collect();
        let mut whole = load_fields(&h, REPO_SUMMARY, &[]).unwrap().instance();
        let mut projected = load_fields(&h, REPO_SUMMARY, &["/repo", "/ok"]).unwrap().instance();
        let by_whole = kept(&whole.select(&events).unwrap());
        let by_projection = kept(&projected.select(&events).unwrap());
        let want: Vec<_> = events.iter().map(|e| reference(&e.payload)).collect();
        prop_assert_eq!(&by_projection, &want);
        prop_assert_eq!(&by_whole, &want);
    }
}
