//! Shadow deploys against the real server: a rule's next version runs
//! beside it on the same events, from a copy of its state; its outputs
//! are kept aside (never in the log, so never on the feed, which is the
//! log's); the diff shows exactly where the two disagree; a kill -9 while
//! a shadow runs loses nothing and emits nothing; promote and discard.

use serde_json::{Value, json};
use sluice_test_components::components;

use crate::server::{Fixture, Server, echo_manifest, ok};

/// Deploy `wasm` under `manifest` as the shadow of `name`.
fn shadow(server: &Server, token: &str, name: &str, manifest: &str, wasm: &str) -> Value {
    ok(server.deploy_q(token, name, manifest, wasm, "?shadow=true"))
}

/// The echo rule (`count = 3`) with a shadow: `wasm` as version 2.
fn echo_with_shadow(server: &Server, token: &str, wasm: &str) {
    server.deployed(
        token,
        "echo",
        &echo_manifest("echo", 1, 3),
        components::ECHO,
    );
    shadow(server, token, "echo", &echo_manifest("echo", 2, 3), wasm);
}

/// The event ids of an echo output's batch.
fn batch_of(output: &Value) -> Vec<String> {
    output["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

fn diff(server: &Server, token: &str, name: &str) -> Value {
    server.get(&format!("/v1/rules/{name}/shadow/diff?limit=1000"), token)
}

/// The diff once both sides have read everything (nothing in the log
/// after the live cursor) and nothing is pending. (A shadow takes turns
/// on one slot: under the whole suite's load on PostgreSQL, ten thousand
/// events take it a while.)
fn settled_diff(server: &Server, token: &str, name: &str) -> Value {
    let mut last = Value::Null;
    let within = std::time::Duration::from_secs(300);
    server.until_within("the rule and its shadow are level", within, || {
        last = diff(server, token, name);
        let after = last["live_cursor"].as_u64().unwrap_or(0);
        let more = server.get(&format!("/v1/events?after_seq={after}&limit=1"), token)["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty());
        last["settled"] == true && !more
    });
    last
}

/// Wait until `name` of `token`'s tenant has read every event and has no
/// fire pending (a rule without a shadow).
fn settled(server: &Server, token: &str, name: &str) {
    let within = std::time::Duration::from_secs(300);
    server.until_within("the rule has caught up", within, || {
        let view = server.get(&format!("/v1/rules/{name}"), token);
        let after = view["cursor"].as_u64().unwrap_or(0);
        let more = server.get(&format!("/v1/events?after_seq={after}&limit=1"), token)["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty());
        view["pending_fires"] == 0 && view["running_fires"] == 0 && !more
    });
}

/// A fire's batch as event ids, if that side has the fire.
type Batch = Option<Vec<String>>;

fn thing(key: &str, id: &str, kind: &str) -> Value {
    json!({"id": id, "source": "app", "kind": kind, "payload": {"key": key}})
}

/// Client events in `n` keys, with a `noise` now and then.
fn stream(from: usize, to: usize) -> Vec<Value> {
    (from..to)
        .map(|i| {
            let kind = if i % 17 == 0 { "noise" } else { "thing" };
            thing(&format!("k{}", i % 50), &format!("e{i}"), kind)
        })
        .collect()
}

/// Echo outputs in the log: their payloads, sorted.
fn outputs(server: &Server, token: &str) -> Vec<String> {
    let mut v: Vec<String> = server
        .events(token, "rule:echo")
        .iter()
        .map(|e| e["payload"].to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn identical_versions_agree_over_ten_thousand_events_and_leave_live_outputs_alone() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    // A tenant without a shadow gets the same stream: its outputs are what
    // the shadowed rule's must be.
    let plain = server.tenant("plain");
    for t in [&token, &plain] {
        server.deployed(t, "echo", &echo_manifest("echo", 1, 3), components::ECHO);
    }
    // Open windows before the shadow starts: it copies them.
    for t in [&token, &plain] {
        server.emit(t, &stream(0, 100));
    }
    let d = shadow(
        &server,
        &token,
        "echo",
        &echo_manifest("echo", 2, 3),
        components::ECHO,
    );
    assert_eq!(
        (d["outcome"].as_str(), d["version"].as_u64()),
        (Some("shadow"), Some(2))
    );
    let view = server.get("/v1/rules/echo/shadow", &token);
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(view["live_version"], 1);
    for chunk in (100..10_100).step_by(1000) {
        for t in [&token, &plain] {
            server.emit(t, &stream(chunk, chunk + 1000));
        }
        if chunk % 3000 == 100 {
            // Windows of an hour expire too.
            server.advance("61m");
        }
    }
    server.advance("61m");
    let d = settled_diff(&server, &token, "echo");
    assert_eq!(d["differences"], 0, "{d:#}");
    assert_eq!(d["pending"], 0, "{d:#}");
    let same = d["same"].as_u64().unwrap();
    assert!(same > 3000, "{d:#}");
    assert_eq!(d["live_fires"].as_u64(), Some(same));
    // The live rule's outputs are the plain tenant's, the shadow's are
    // nowhere in the log (once the plain tenant's rule has caught up too).
    settled(&server, &plain, "echo");
    let (mine, theirs) = (outputs(&server, &token), outputs(&server, &plain));
    assert_eq!(mine.len(), theirs.len());
    assert!(mine == theirs, "a shadow changed the live rule's outputs");
    let rules = server.get("/v1/rules", &token);
    assert_eq!(
        rules.as_array().unwrap().len(),
        1,
        "a shadow is not a rule of the list"
    );
    assert_eq!(
        (&rules[0]["version"], &rules[0]["shadow_version"]),
        (&json!(1), &json!(2))
    );
    let out = server.cli(&token, &["rules"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo ") && l.contains(" 1 (2) ")),
        "{table}"
    );
    server.stop();
}

#[test]
fn a_changed_filter_shows_exactly_the_expected_differences() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    echo_with_shadow(&server, &token, components::ECHO_STRICT);
    // The shadow also skips `extra`. Per key, count 3:
    // - a: thing ×3 — both fire the same batch;
    // - b: extra, thing ×3 — live fires [b1 b2 b3] (one fire id), the
    //   shadow [b2 b3 b4] (another);
    // - c: thing, extra, thing, thing — both fire a batch starting at c1
    //   (one fire id), live [c1 c2 c3], the shadow [c1 c3 c4].
    let events = [
        thing("a", "a1", "thing"),
        thing("b", "b1", "extra"),
        thing("c", "c1", "thing"),
        thing("a", "a2", "thing"),
        thing("b", "b2", "thing"),
        thing("c", "c2", "extra"),
        thing("a", "a3", "thing"),
        thing("b", "b3", "thing"),
        thing("c", "c3", "thing"),
        thing("b", "b4", "thing"),
        thing("c", "c4", "thing"),
    ];
    server.emit(&token, &events);
    let d = settled_diff(&server, &token, "echo");
    assert_eq!(
        (d["same"].as_u64(), d["pending"].as_u64()),
        (Some(1), Some(0)),
        "{d:#}"
    );
    let ids = |f: &Value| batch_of(&f["outputs"][0]["payload"]);
    let mut got: Vec<(String, Batch, Batch)> = d["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let side = |s: &str| x[s].is_object().then(|| ids(&x[s]));
            (
                x["what"].as_str().unwrap().to_owned(),
                side("live"),
                side("shadow"),
            )
        })
        .collect();
    got.sort();
    let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(
        got,
        vec![
            (
                "batch".into(),
                v(&["c1", "c2", "c3"]),
                v(&["c1", "c3", "c4"])
            ),
            ("only_live".into(), v(&["b1", "b2", "b3"]), None),
            ("only_shadow".into(), None, v(&["b2", "b3", "b4"])),
        ],
        "{d:#}"
    );
    assert_eq!(d["differences"], 3);
    // Only the live rule's three outputs are in the log: the shadow's
    // fires of other ids would show here had they been appended.
    let logged: Vec<Vec<String>> = server
        .events(&token, "rule:echo")
        .iter()
        .map(|e| batch_of(&e["payload"]))
        .collect();
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(!logged.contains(&vec!["b2".into(), "b3".into(), "b4".into()]));
    // `sluice shadow diff` says so, and exits 1.
    let out = server.cli(&token, &["shadow", "diff", "echo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("3 differences"), "{text}");
    assert!(text.contains("only_shadow"), "{text}");

    // Promote on the shadow's state: the new version carries on from its
    // windows (b4 and c4 are in no open live window; in the shadow's, the
    // leftovers differ), and the shadow is gone.
    let p = ok(server
        .req(
            reqwest::Method::POST,
            "/v1/rules/echo/shadow/promote",
            Some(&token),
        )
        .json(&json!({"state": "shadow"}))
        .send()
        .unwrap());
    assert_eq!(
        (p["outcome"].as_str(), p["version"].as_u64()),
        (Some("promoted"), Some(2))
    );
    assert_eq!(server.get("/v1/rules/echo", &token)["version"], 2);
    assert_eq!(
        server.status(reqwest::Method::GET, "/v1/rules/echo/shadow", Some(&token)),
        404
    );
    // The promoted version skips `extra`, and fires what the shadow held:
    // a's fourth event completes nothing, b's window is empty in the
    // shadow's state (b2-b4 fired), so b5 b6 b7 make one batch.
    server.emit(
        &token,
        &[
            thing("b", "b5", "thing"),
            thing("b", "b6", "extra"),
            thing("b", "b7", "thing"),
            thing("b", "b8", "thing"),
        ],
    );
    server.until("the promoted version fires", || {
        server.events(&token, "rule:echo").len() == 4
    });
    let last = server.events(&token, "rule:echo").pop().unwrap();
    assert_eq!(
        last["payload"]["events"],
        json!(["b5", "b7", "b8"]),
        "{last}"
    );
    server.stop();
}

#[test]
fn a_kill_while_a_shadow_runs_loses_nothing_and_emits_nothing() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    echo_with_shadow(&server, &token, components::ECHO);
    for chunk in (0..3000).step_by(500) {
        server.emit(&token, &stream(chunk, chunk + 500));
    }
    // kill -9, whatever the shadow (on its slot of its own) is doing.
    drop(server);
    let server = f.start();
    assert_eq!(
        server.get("/v1/rules/echo/shadow", &token)["status"],
        "active"
    );
    for chunk in (3000..6000).step_by(500) {
        server.emit(&token, &stream(chunk, chunk + 500));
    }
    server.advance("61m");
    let d = settled_diff(&server, &token, "echo");
    assert_eq!(
        (d["differences"].as_u64(), d["pending"].as_u64()),
        (Some(0), Some(0)),
        "{d:#}"
    );
    // Every client event but `noise` is in exactly one live output, each
    // output once: nothing lost, nothing twice, nothing of the shadow's.
    let outs = server.events(&token, "rule:echo");
    let mut seen = std::collections::BTreeSet::new();
    for o in &outs {
        for id in o["payload"]["events"].as_array().unwrap() {
            assert!(seen.insert(id.as_str().unwrap().to_owned()), "{id} twice");
        }
    }
    let wanted: std::collections::BTreeSet<String> = stream(0, 6000)
        .iter()
        .filter(|e| e["kind"] == "thing")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, wanted);
    let completed = server
        .events(&token, "sluice")
        .iter()
        .filter(|e| e["kind"] == "fire.completed" && e["payload"]["rule"] == "echo")
        .count();
    assert_eq!(outs.len(), completed, "an output without its fire");
    assert_eq!(d["shadow_fires"], d["live_fires"]);
    // Discarded: gone, and a second discard is a 404.
    let r = server
        .req(
            reqwest::Method::DELETE,
            "/v1/rules/echo/shadow",
            Some(&token),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        server.status(
            reqwest::Method::DELETE,
            "/v1/rules/echo/shadow",
            Some(&token)
        ),
        404
    );
    assert_eq!(
        server.status(
            reqwest::Method::GET,
            "/v1/rules/echo/shadow/diff",
            Some(&token)
        ),
        404
    );
    server.stop();
}

#[test]
fn shadows_are_refused_when_they_cannot_be_and_the_cli_drives_them() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let refused = |manifest: &str, name: &str| {
        let r = server.deploy_q(&token, name, manifest, components::ECHO, "?shadow=true");
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    // No rule to shadow.
    assert_eq!(
        refused(&echo_manifest("echo", 2, 3), "echo"),
        (404, "not_found".into())
    );
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 3),
        components::ECHO,
    );
    // The version must be raised; the kind kept.
    assert_eq!(
        refused(&echo_manifest("echo", 1, 3), "echo"),
        (409, "version_not_raised".into())
    );
    let dwell = "name = \"echo\"\nversion = 2\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"idle\"\nafter = \"5m\"\n";
    assert_eq!(refused(dwell, "echo"), (409, "kind_changed".into()));
    // A shadow counts as a rule in the quota.
    let small = server.tenant_with("small", json!({"max_rules": 1}));
    server.deployed(
        &small,
        "echo",
        &echo_manifest("echo", 1, 3),
        components::ECHO,
    );
    let r = server.deploy_q(
        &small,
        "echo",
        &echo_manifest("echo", 2, 3),
        components::ECHO,
        "?shadow=true",
    );
    assert_eq!(r.status(), 422);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a shadow counts as a rule"),
        "{body}"
    );

    // The CLI: deploy --shadow, diff (level: exit 0), promote.
    let dir = f.path("rule");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rule.toml"), echo_manifest("echo", 2, 3)).unwrap();
    std::fs::copy(components::ECHO, dir.join("echo.wasm")).unwrap();
    let out = server.cli(&token, &["deploy", "--shadow", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("shadow echo@2"), "{text}");
    // A reset while a shadow runs would pull the state from under it.
    let r = server.deploy_q(
        &token,
        "echo",
        &echo_manifest("echo", 3, 3),
        components::ECHO,
        "?reset=true",
    );
    assert_eq!(r.status(), 409);
    server.emit(&token, &stream(0, 30));
    settled_diff(&server, &token, "echo");
    let out = server.cli(&token, &["shadow", "diff", "echo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0 differences"), "{text}");
    let out = server.cli(&token, &["shadow", "promote", "echo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.get("/v1/rules/echo", &token)["version"], 2);
    let out = server.cli(&token, &["shadow", "show", "echo"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shadow of rule \"echo\""), "{err}");
    server.stop();
}

/// A hostile shadow (its handler spins until its deadline) takes slots of
/// its own: the live rule's fires do not wait for it.
#[test]
fn a_hostile_shadow_does_not_hold_up_the_live_rule() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 1),
        components::ECHO,
    );
    let spinning = format!(
        "{}[limits]\ndeadline = \"1s\"\n[retry]\nmax_attempts = 1\n",
        echo_manifest("echo", 2, 1)
    );
    shadow(&server, &token, "echo", &spinning, components::HOSTILE);
    // No key: both versions fire them in the global partition.
    let events: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("h{i}"), "source": "app", "kind": "handler-loop", "payload": {}}))
        .collect();
    server.emit(&token, &events);
    // Eight live fires, while the shadow spends a second on each of its.
    server.until("the live rule's fires", || {
        server.events(&token, "rule:echo").len() == 8
    });
    let view = server.get("/v1/rules/echo/shadow", &token);
    assert!(
        view["dead_letters"].as_u64().unwrap() < 8,
        "the live rule waited for its shadow: {view}"
    );
    // The shadow gets there on its own time: each fire dead-lettered
    // (an `outputs` difference), none of it in the log.
    let d = settled_diff(&server, &token, "echo");
    assert_eq!(d["differences"], 8, "{d:#}");
    assert!(
        d["shown"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["what"] == "outputs" && x["shadow"]["outcome"] == "dead_lettered")
    );
    assert_eq!(server.events(&token, "rule:echo").len(), 8);
    server.stop();
}
