//! `sluice serve` end to end: the real binary on a loopback port, driven
//! only through HTTP and the client commands. Time moves by the server's
//! manual clock (`--manual-clock`, `POST /v1/clock`), never by sleeps
//! standing in for it; waits poll for what must eventually be there.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response, multipart};
use serde_json::{Value, json};
use sluice_test_components::components;

pub(crate) const ADMIN: &str = "test-admin-token";

/// A running server on a loopback port.
/// A test's directory and database; servers start on it, again after a
/// stop or a kill.
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The database.
    pub(crate) fn db(&self) -> std::path::PathBuf {
        self.path("s.db")
    }

    /// A file of the test's own.
    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A server on the database.
    pub(crate) fn start(&self) -> Server {
        Server::start(&self.db())
    }

    /// A server on a fresh database with tenant `acme`, and its token.
    pub(crate) fn acme(&self) -> (Server, String) {
        let server = self.start();
        let token = server.tenant("acme");
        (server, token)
    }

    /// [`Self::acme`] with the echo rule deployed (`count = 3`).
    fn acme_with_echo(&self) -> (Server, String) {
        let (server, token) = self.acme();
        server.deployed(
            &token,
            "echo",
            &echo_manifest("echo", 1, 3),
            components::ECHO,
        );
        (server, token)
    }
}

pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) url: String,
    http: Client,
}

impl Server {
    pub(crate) fn start(db: &Path) -> Self {
        Self::start_with(db, &[])
    }

    pub(crate) fn start_with(db: &Path, extra: &[&str]) -> Self {
        Self::start_on(db, "127.0.0.1:0", extra)
    }

    /// A server listening on `listen` (a restart on the same address).
    pub(crate) fn start_on(db: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--listen", listen, "--heartbeat", "200ms"])
            .args([
                "--manual-clock",
                "2026-01-01T00:00:00Z",
                "--durability",
                "normal",
            ])
            .args(crate::store_args(db))
            // On PostgreSQL a restarted server is a new node: the old one's
            // leases expire quickly.
            .args(["--lease-ttl", "1s"])
            .arg("--cache-dir")
            .arg(db.with_extension("cache"))
            .args(extra)
            .env("SLUICE_ADMIN_TOKEN", ADMIN)
            .env("SLUICE_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let url = loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sluice serve exited before listening"
            );
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        Self {
            child: Some(child),
            url,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub(crate) fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub(crate) fn get(&self, path: &str, token: &str) -> Value {
        ok(self
            .req(reqwest::Method::GET, path, Some(token))
            .send()
            .unwrap())
    }

    pub(crate) fn post(&self, path: &str, token: &str, body: Value) -> Value {
        ok(self
            .req(reqwest::Method::POST, path, Some(token))
            .json(&body)
            .send()
            .unwrap())
    }

    pub(crate) fn tenant(&self, name: &str) -> String {
        self.tenant_with(name, json!({}))
    }

    pub(crate) fn tenant_with(&self, name: &str, quotas: Value) -> String {
        let v = self.post(
            "/v1/tenants",
            ADMIN,
            json!({"name": name, "quotas": quotas}),
        );
        v["token"]["token"].as_str().unwrap().to_owned()
    }

    /// Deploy a new rule, which must be created (201).
    pub(crate) fn deployed(&self, token: &str, name: &str, manifest: &str, wasm: &str) {
        let r = self.deploy(token, name, manifest, wasm);
        let status = r.status();
        assert_eq!(
            status,
            201,
            "deploy {name}: {}",
            r.text().unwrap_or_default()
        );
    }

    pub(crate) fn deploy(&self, token: &str, name: &str, manifest: &str, wasm: &str) -> Response {
        self.deploy_q(token, name, manifest, wasm, "")
    }

    pub(crate) fn deploy_q(
        &self,
        token: &str,
        name: &str,
        manifest: &str,
        wasm: &str,
        q: &str,
    ) -> Response {
        let form = multipart::Form::new()
            .text("manifest", manifest.to_owned())
            .part(
                "component",
                multipart::Part::bytes(std::fs::read(wasm).unwrap()).file_name("rule.wasm"),
            );
        self.req(
            reqwest::Method::PUT,
            &format!("/v1/rules/{name}{q}"),
            Some(token),
        )
        .multipart(form)
        .send()
        .unwrap()
    }

    pub(crate) fn emit(&self, token: &str, events: &[Value]) -> Value {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        ok(self
            .req(reqwest::Method::POST, "/v1/events", Some(token))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap())
    }

    pub(crate) fn advance(&self, by: &str) {
        self.post("/v1/clock", ADMIN, json!({"advance": by}));
    }

    /// Every event of `source` (all pages).
    pub(crate) fn events(&self, token: &str, source: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(
                &format!("/v1/events?after_seq={after}&source={source}&limit=1000"),
                token,
            );
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_after_seq"].as_u64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    /// The OpenAPI document the server serves.
    fn openapi(&self) -> Value {
        ok(self
            .req(reqwest::Method::GET, "/v1/openapi.json", None)
            .send()
            .unwrap())
    }

    /// The status of a request with no body.
    pub(crate) fn status(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> u16 {
        self.req(method, path, token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    /// Wait until `f` holds (the engine works in the background).
    pub(crate) fn until(&self, what: &str, f: impl FnMut() -> bool) {
        self.until_within(what, Duration::from_secs(60), f);
    }

    /// [`Self::until`], waiting at most `within`.
    pub(crate) fn until_within(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub(crate) fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "sluice serve exited with {status}");
    }

    pub(crate) fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_URL", &self.url)
            .env("SLUICE_TOKEN", token)
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn ok(r: Response) -> Value {
    let status = r.status();
    let body = r.text().unwrap();
    assert!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

pub(crate) fn echo_manifest(name: &str, version: u32, count: u32) -> String {
    format!(
        "name = \"{name}\"\nversion = {version}\n[trigger.batch]\ncount = {count}\nwindow = \"1h\"\nexpire = \"fire\"\n"
    )
}

fn ev(key: &str, id: &str) -> Value {
    json!({"id": id, "source": "app", "kind": "thing", "payload": {"key": key}})
}

fn payload(e: &Value) -> &Value {
    &e["payload"]
}

/// The event ids the echo rule's outputs report, output by output.
fn echoed_ids(outputs: &[Value]) -> Vec<String> {
    outputs
        .iter()
        .flat_map(|o| {
            payload(o)["events"]
                .as_array()
                .unwrap_or_else(|| panic!("echo output without ids: {o}"))
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn tenants_deploy_emit_tail_and_inspect() {
    let f = Fixture::new();
    let server = f.start();
    // The CLI creates the tenant with the admin token.
    let out = server.cli(ADMIN, &["tenants", "create", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("sluice_"), "{text}");
    // Deploy with the CLI: a component and its manifest.
    let rule_dir = f.path("rule");
    std::fs::create_dir(&rule_dir).unwrap();
    std::fs::write(rule_dir.join("rule.toml"), echo_manifest("echo", 1, 3)).unwrap();
    std::fs::copy(components::ECHO, rule_dir.join("echo.wasm")).unwrap();
    let out = server.cli(&token, &["deploy", rule_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("created echo@1"));
    // Tail from the start, in the background, until 8 items: 6 events, 2
    // outputs (and records in between, which count too).
    let tail = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "tail",
            "--json",
            "--after-seq",
            "0",
            "--source",
            "rule:echo",
            "--count",
            "2",
        ])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Emit with the CLI from a file.
    let file = f.path("events.ndjson");
    let lines: String = (0..6)
        .map(|i| format!("{}\n", ev("k", &format!("e{i}"))))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out = server.cli(&token, &["emit", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ack, json!({"lines": 6, "accepted": 6, "duplicates": 0}));
    let tailed = tail.wait_with_output().unwrap();
    let items: Vec<Value> = String::from_utf8(tailed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 2);
    for (item, want) in items.iter().zip([["e0", "e1", "e2"], ["e3", "e4", "e5"]]) {
        assert_eq!(item["type"], "output");
        assert_eq!(item["event"]["payload"]["events"], json!(want));
    }
    // The rule's status.
    let rule = server.get("/v1/rules/echo", &token);
    assert_eq!(rule["status"], "active");
    assert_eq!(rule["version"], 1);
    assert_eq!(rule["kind"], "batch");
    assert_eq!(rule["counters"]["matched"], 6);
    server.until("fires counted", || {
        server.get("/v1/rules/echo", &token)["counters"]["fires_ok"] == 2
    });
    assert!(
        server.get("/v1/rules/echo", &token)["fuel_used"]
            .as_u64()
            .unwrap()
            > 0
    );
    let out = server.cli(&token, &["rules"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.lines().nth(1).unwrap().starts_with("echo "),
        "{table}"
    );
    // Completed fires are listed from the engine's records.
    let done = server.get("/v1/fires?status=completed", &token);
    assert_eq!(done.as_array().unwrap().len(), 2, "{done}");
    let seqs: Vec<u64> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["record_seq"].as_u64().unwrap())
        .collect();
    assert!(seqs[0] < seqs[1], "oldest first: {seqs:?}");
    let newest = server.get("/v1/fires?status=completed&limit=1&rule=echo", &token);
    assert_eq!(
        newest[0]["record_seq"].as_u64(),
        Some(seqs[1]),
        "the newest one"
    );
    // Metrics and the OpenAPI document need no token.
    let metrics = server
        .req(reqwest::Method::GET, "/metrics", None)
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "sluice_ingest_events_total{tenant=\"acme\"} 6",
        "sluice_handler_seconds_bucket",
        "sluice_rule_open_partitions{tenant=\"acme\",rule=\"echo\"}",
        "sluice_fires_total{tenant=\"acme\",rule=\"echo\",status=\"ok\"} 2",
        "sluice_fuel_used_total",
        "sluice_log_last_seq",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let doc = server.openapi();
    // Every operation has its own id; query parameters are in the query.
    let mut ids = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(
                ids.insert(id),
                "{method} {path}: operationId missing or repeated"
            );
            // The refusals every route shares are listed where they apply.
            let schemes = op["security"].as_array().map_or(0, Vec::len);
            let has = |code: &str| op["responses"][code].is_object();
            if schemes > 0 {
                assert!(has("401"), "{method} {path}: 401 not listed");
            }
            if schemes == 1 {
                assert!(has("403"), "{method} {path}: 403 not listed");
            }
            if op["parameters"].as_array().is_some_and(|p| !p.is_empty())
                || op["requestBody"].is_object()
            {
                assert!(has("400"), "{method} {path}: 400 not listed");
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let want = if path.contains(&format!("{{{name}}}")) {
                    "path"
                } else {
                    "query"
                };
                let at = p["in"].as_str().unwrap();
                assert!(
                    at == want || at == "header",
                    "{method} {path}: {name} in {at}"
                );
            }
        }
    }
    // The ingest body is described as the server reads it.
    assert_eq!(
        doc["components"]["schemas"]["EventIn"]["required"],
        json!(["source", "kind", "payload"])
    );
    let r = server
        .req(reqwest::Method::POST, "/v1/events", Some(token.as_str()))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "an empty array holds no events");
    // What the document bounds, the server refuses past the bound.
    let fires = &doc["paths"]["/v1/fires"]["get"]["parameters"];
    assert!(fires.to_string().contains("FireStatusParam"), "{fires}");
    assert_eq!(
        doc["components"]["schemas"]["FireStatusParam"]["enum"],
        json!(["pending", "dead", "completed", "failed"])
    );
    for path in [
        "/v1/events?after_seq=9223372036854775808",
        "/v1/feed?after_seq=9223372036854775808",
        "/v1/events?limit=10001",
    ] {
        let r = server
            .req(reqwest::Method::GET, path, Some(token.as_str()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    for path in [
        "/v1/events",
        "/v1/rules/{name}",
        "/v1/feed",
        "/v1/tenants",
        "/v1/fires",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    server.stop();
}

#[test]
fn hot_swap_under_ingest_loses_and_doubles_nothing() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let r = server.deploy(
        &token,
        "echo",
        &echo_manifest("echo", 1, 7),
        components::ECHO,
    );
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    // Ingest from another thread while versions are swapped in.
    let total = 1_200;
    std::thread::scope(|s| {
        let ingest = s.spawn(|| {
            for chunk in 0..(total / 20) {
                let events: Vec<Value> = (0..20)
                    .map(|i| {
                        let n = chunk * 20 + i;
                        ev(&format!("k{}", n % 13), &format!("e{n}"))
                    })
                    .collect();
                server.emit(&token, &events);
            }
        });
        for version in 2..=6 {
            std::thread::sleep(Duration::from_millis(30));
            let r = server.deploy(
                &token,
                "echo",
                &echo_manifest("echo", version, 7),
                components::ECHO,
            );
            assert_eq!(r.status(), 200, "{}", r.text().unwrap());
            let v: Value = r.json().unwrap();
            assert_eq!(v["outcome"], "swapped");
            assert_eq!(v["compile"], "hit");
        }
        ingest.join().unwrap();
    });
    // Windows still open close when their hour is up.
    let mut last = Value::Null;
    let caught_up = (0..3000).any(|_| {
        last = server.get("/v1/rules/echo", &token);
        let done = last["pending_fires"] == 0 && last["cursor"].as_u64().unwrap() >= total as u64;
        if !done {
            std::thread::sleep(Duration::from_millis(20));
        }
        done
    });
    assert!(caught_up, "not caught up: {last:#}");
    server.advance("61m");
    server.until("every event echoed", || {
        echoed_ids(&server.events(&token, "rule:echo")).len() >= total
    });
    let ids = echoed_ids(&server.events(&token, "rule:echo"));
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), total, "an event was echoed twice");
    assert_eq!(unique.len(), total);
    // Each fire completed once, and every swap is on the feed.
    let records = server.events(&token, "sluice");
    let completed: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "fire.completed")
        .map(|r| payload(r)["fire_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        completed.len(),
        completed.iter().collect::<BTreeSet<_>>().len(),
        "a fire completed twice"
    );
    let swaps: Vec<u64> = records
        .iter()
        .filter(|r| r["kind"] == "rule.swapped")
        .map(|r| payload(r)["version"].as_u64().unwrap())
        .collect();
    assert_eq!(swaps, vec![2, 3, 4, 5, 6]);
    let rule = server.get("/v1/rules/echo", &token);
    assert_eq!(rule["version"], 6);
    // Counters carry over the swaps.
    assert_eq!(rule["counters"]["matched"], total);
    server.stop();
}

#[test]
fn bad_uploads_change_nothing_and_kind_changes_need_a_reset() {
    let f = Fixture::new();
    let server = f.start();
    let token = server.tenant_with(
        "acme",
        json!({"max_rules": 1, "max_fuel": 3_000_000_000u64}),
    );
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 2),
        components::ECHO,
    );
    server.emit(&token, &[ev("k", "a")]);
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("echo", echo_manifest("echo", 2, 2), components::NOT_A_RULE, 422, "invalid_component"),
        ("echo", echo_manifest("echo", 2, 2).replace("count = 2", "count = -1"), components::ECHO, 400, "invalid_manifest"),
        ("echo", echo_manifest("other", 2, 2), components::ECHO, 400, "invalid_manifest"),
        ("echo", echo_manifest("echo", 1, 3), components::ECHO, 409, "version_not_raised"),
        ("echo", format!("{}[limits]\nfuel = 5_000_000_000\n", echo_manifest("echo", 2, 2)), components::ECHO, 422, "quota_exceeded"),
        ("second", echo_manifest("second", 1, 2), components::ECHO, 422, "quota_exceeded"),
        ("echo", "name = \"echo\"\nversion = 2\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"x\"\nafter = \"1m\"\n".into(), components::ECHO, 409, "kind_changed"),
        ("Bad Name", echo_manifest("echo", 2, 2), components::ECHO, 400, "invalid_name"),
    ];
    for (name, manifest, wasm, status, code) in &cases {
        let r = server.deploy(&token, &name.replace(' ', "%20"), manifest, wasm);
        let got = r.status().as_u16();
        let body: Value = r.json().unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap()),
            (*status, *code),
            "{name}: {body}"
        );
    }
    // Still version 1, with its open window.
    let rule = server.get("/v1/rules/echo", &token);
    assert_eq!(
        (rule["version"].as_u64(), rule["status"].as_str()),
        (Some(1), Some("active"))
    );
    server.until("the window holds a", || {
        server.get("/v1/rules/echo", &token)["partitions"] == 1
    });
    server.emit(&token, &[ev("k", "b")]);
    server.until("a and b fire together", || {
        echoed_ids(&server.events(&token, "rule:echo")) == ["a", "b"]
    });
    // A reset changes the kind.
    let dwell = "name = \"echo\"\nversion = 2\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"x\"\nafter = \"1m\"\n";
    let r = server.deploy_q(&token, "echo", dwell, components::ECHO, "?reset=true");
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(server.get("/v1/rules/echo", &token)["kind"], "dwell");
    server.stop();
}

#[test]
fn undeploy_drains_by_firing_or_discarding() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    for name in ["keep", "drop"] {
        server.deployed(&token, name, &echo_manifest(name, 1, 100), components::ECHO);
    }
    server.emit(&token, &[ev("a", "1"), ev("b", "2")]);
    server.until("both windows open", || {
        ["keep", "drop"]
            .iter()
            .all(|n| server.get(&format!("/v1/rules/{n}"), &token)["partitions"] == 2)
    });
    let out = server.cli(&token, &["rules", "rm", "keep", "--drain", "fire"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = server
        .req(
            reqwest::Method::DELETE,
            "/v1/rules/drop?drain=discard",
            Some(&token),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let outputs = server.events(&token, "rule:keep");
    assert_eq!(outputs.len(), 2, "both windows fire when drained");
    assert!(
        outputs.iter().all(|o| payload(o)["reason"] == "drained"),
        "{outputs:?}"
    );
    assert!(server.events(&token, "rule:drop").is_empty());
    let records = server.events(&token, "sluice");
    let discarded: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "windows.discarded")
        .collect();
    assert_eq!(discarded.len(), 1, "{records:?}");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "rule.undeployed")
            .count(),
        2
    );
    // Gone: 404 and not listed.
    let r = server
        .req(reqwest::Method::GET, "/v1/rules/keep", Some(&token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(server.get("/v1/rules", &token), json!([]));
    let gone: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "rule.undeployed")
        .collect();
    assert!(
        gone.iter()
            .all(|r| payload(r)["dropped"]["partitions"] == 0),
        "{gone:?}"
    );
    // The name deployed again starts afresh, at the log's end: the old
    // events are not read again.
    server.deployed(
        &token,
        "drop",
        &echo_manifest("drop", 1, 100),
        components::ECHO,
    );
    server.emit(&token, &[ev("c", "3")]);
    server.until("the new event read", || {
        server.get("/v1/rules/drop", &token)["counters"]["matched"] == 1
    });
    assert_eq!(server.get("/v1/rules/drop", &token)["partitions"], 1);
    let r = server
        .req(
            reqwest::Method::DELETE,
            "/v1/rules/keep?drain=sideways",
            Some(&token),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop();
}

#[test]
fn pause_resume_and_restart_keep_rules_and_state() {
    let f = Fixture::new();
    let db = f.db();
    let (server, token) = f.acme_with_echo();
    let out = server.cli(&token, &["rules", "pause", "echo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer is the new status, and a read right after agrees.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echo is paused"
    );
    assert_eq!(server.get("/v1/rules/echo", &token)["status"], "paused");
    let answer = server.post("/v1/rules/echo/resume", &token, json!(null));
    assert_eq!(answer["status"], "active");
    assert_eq!(server.get("/v1/rules/echo", &token)["status"], "active");
    let answer = server.post("/v1/rules/echo/pause", &token, json!(null));
    assert_eq!(answer["status"], "paused");
    server.emit(&token, &[ev("k", "1"), ev("k", "2")]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        server.get("/v1/rules/echo", &token)["cursor"],
        0,
        "a paused rule reads nothing"
    );
    // Paused across a restart; then resumed, with its window intact.
    server.stop();
    let server = Server::start(&db);
    let rule = server.get("/v1/rules/echo", &token);
    assert_eq!(
        (rule["status"].as_str(), rule["version"].as_u64()),
        (Some("paused"), Some(1))
    );
    server.post("/v1/rules/echo/resume", &token, json!(null));
    server.until("the window holds two", || {
        server.get("/v1/rules/echo", &token)["counters"]["matched"] == 2
    });
    server.stop();
    // A restart mid-window: the third event completes it.
    let server = Server::start(&db);
    server.emit(&token, &[ev("k", "3")]);
    server.until("the window fires", || {
        !server.events(&token, "rule:echo").is_empty()
    });
    assert_eq!(
        echoed_ids(&server.events(&token, "rule:echo")),
        ["1", "2", "3"]
    );
    // The counters carried over both restarts.
    server.until("counted", || {
        let c = &server.get("/v1/rules/echo", &token)["counters"];
        c["matched"] == 3 && c["fires_ok"] == 1
    });
    server.stop();
}

/// Read SSE messages until `n` with ids have come: (id, event, data).
fn sse(
    server: &Server,
    token: &str,
    query: &str,
    last_id: Option<u64>,
    n: usize,
) -> Vec<(u64, String, Value)> {
    let mut rb = server.req(
        reqwest::Method::GET,
        &format!("/v1/feed{query}"),
        Some(token),
    );
    if let Some(id) = last_id {
        rb = rb.header("Last-Event-ID", id.to_string());
    }
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = BufReader::new(r);
    let (mut out, mut id, mut event, mut data) = (Vec::new(), None, String::new(), String::new());
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the feed ended");
        let l = line.trim_end();
        if l.is_empty() {
            if let Some(i) = id.take() {
                out.push((
                    i,
                    std::mem::take(&mut event),
                    serde_json::from_str(&data).unwrap(),
                ));
            }
            data.clear();
        } else if let Some(v) = l.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    out
}

#[test]
fn feed_replays_then_tails_and_resumes_with_last_event_id() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let other = server.tenant("other");
    server.emit(&other, &[ev("x", "theirs")]);
    server.emit(
        &token,
        &(0..5)
            .map(|i| ev("k", &format!("m{i}")))
            .collect::<Vec<_>>(),
    );
    let first = sse(&server, &token, "?after_seq=0", None, 3);
    let seqs: Vec<u64> = first.iter().map(|m| m.0).collect();
    assert_eq!(
        first
            .iter()
            .map(|m| m.2["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    assert!(first.iter().all(|m| m.1 == "event"));
    // Resume after the third: the rest, then live items, no gap, no
    // duplicate; the other tenant's event never shows.
    let last = *seqs.last().unwrap();
    let s = std::thread::scope(|sc| {
        let reader = sc.spawn(|| sse(&server, &token, "?after_seq=0", Some(last), 4));
        std::thread::sleep(Duration::from_millis(100));
        server.emit(&token, &[ev("k", "live0"), ev("k", "live1")]);
        reader.join().unwrap()
    });
    let ids: Vec<&str> = s.iter().map(|m| m.2["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m3", "m4", "live0", "live1"]);
    assert!(s.windows(2).all(|w| w[1].0 > w[0].0) && s[0].0 > last);
    // Filters.
    let kinds = sse(
        &server,
        &token,
        "?after_seq=0&kind=thing&source=app",
        None,
        7,
    );
    assert_eq!(kinds.len(), 7);
    let r = server
        .req(reqwest::Method::GET, "/v1/feed", Some(&token))
        .header("Last-Event-ID", "soon")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    server.stop();
}

#[test]
fn every_route_needs_a_token_and_hides_other_tenants() {
    let f = Fixture::new();
    let server = f.start();
    let a = server.tenant("alpha");
    let b = server.tenant("beta");
    // Alpha has a rule, events, an output, and a dead letter.
    let manifest = "name = \"bad\"\nversion = 1\n[trigger.batch]\ncount = 1\nwindow = \"1h\"\n[retry]\nmax_attempts = 1\n";
    server.deployed(&a, "bad", manifest, components::HOSTILE);
    let ack = server.emit(
        &a,
        &[json!({"source": "app", "kind": "handler-fatal", "payload": {}})],
    );
    let seq = ack["seqs"][0].as_u64().unwrap();
    server.until("a dead letter", || {
        server
            .get("/v1/fires?status=dead", &a)
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let dead = server.get("/v1/fires?status=dead", &a)[0]["fire_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rule = server.get("/v1/rules/bad", &a);
    let failure = &rule["last_failure"];
    assert!(
        failure["message"].as_str().unwrap().contains("fatal"),
        "{rule}"
    );
    // (method, path) over the whole tenant route list.
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, "/v1/events".into()),
        (reqwest::Method::POST, "/v1/events".into()),
        (reqwest::Method::GET, format!("/v1/events/{seq}")),
        (reqwest::Method::GET, "/v1/rules".into()),
        (reqwest::Method::GET, "/v1/rules/bad".into()),
        (reqwest::Method::PUT, "/v1/rules/bad".into()),
        (reqwest::Method::DELETE, "/v1/rules/bad".into()),
        (reqwest::Method::POST, "/v1/rules/bad/pause".into()),
        (reqwest::Method::POST, "/v1/rules/bad/resume".into()),
        (reqwest::Method::GET, "/v1/rules/bad/partitions".into()),
        (reqwest::Method::GET, "/v1/rules/bad/history".into()),
        (reqwest::Method::GET, "/v1/stats".into()),
        (reqwest::Method::GET, "/v1/whoami".into()),
        (reqwest::Method::GET, "/v1/fires".into()),
        (reqwest::Method::GET, format!("/v1/fires/{dead}")),
        (reqwest::Method::POST, format!("/v1/fires/{dead}/redrive")),
        (reqwest::Method::DELETE, format!("/v1/fires/{dead}")),
        (reqwest::Method::GET, "/v1/feed".into()),
        (reqwest::Method::GET, "/v1/tenants".into()),
        (reqwest::Method::POST, "/v1/tenants".into()),
        (reqwest::Method::GET, "/v1/tenants/alpha".into()),
        (reqwest::Method::DELETE, "/v1/tenants/alpha".into()),
        (reqwest::Method::PUT, "/v1/tenants/alpha/quotas".into()),
        (reqwest::Method::GET, "/v1/tenants/alpha/tokens".into()),
        (reqwest::Method::POST, "/v1/tenants/alpha/tokens".into()),
        (reqwest::Method::DELETE, "/v1/tenants/alpha/tokens/x".into()),
        (reqwest::Method::GET, "/v1/clock".into()),
        (reqwest::Method::POST, "/v1/clock".into()),
        (reqwest::Method::GET, "/v1/cluster".into()),
    ];
    // A third tenant's token, revoked.
    let created = server.post("/v1/tenants", ADMIN, json!({"name": "gamma"}));
    let (revoked, id) = (
        created["token"]["token"].as_str().unwrap(),
        created["token"]["id"].as_str().unwrap(),
    );
    let r = server
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/tenants/gamma/tokens/{id}"),
            Some(ADMIN),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for (method, path) in &routes {
        for token in [
            None,
            Some(revoked),
            Some("sluice_0000_forged"),
            Some("not even close"),
        ] {
            let r = server.req(method.clone(), path, token).send().unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            let body: Value = r.json().unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // Beta asks for alpha's objects: 404, as for what does not exist.
    let theirs: Vec<&(reqwest::Method, String)> = routes
        .iter()
        .filter(|(m, p)| {
            *m != reqwest::Method::PUT
                && (p.contains("/bad") || p.contains(&dead) || p.ends_with(&format!("/{seq}")))
        })
        .collect();
    assert_eq!(theirs.len(), 10);
    for (method, path) in theirs {
        let r = server.req(method.clone(), path, Some(&b)).send().unwrap();
        assert_eq!(r.status(), 404, "beta: {method} {path}");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    // A PUT of a name beta does not have makes beta's own rule, beside
    // alpha's, which it does not touch.
    server.deployed(&b, "bad", manifest, components::ECHO);
    assert_eq!(
        server.get("/v1/rules/bad", &b)["digest"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_ne!(
        server.get("/v1/rules/bad", &b)["digest"],
        server.get("/v1/rules/bad", &a)["digest"]
    );
    // Alpha's rule, dead letter and events are untouched; beta sees only
    // its own.
    assert_eq!(server.get("/v1/rules/bad", &a)["version"], 1);
    assert_eq!(
        server
            .get("/v1/fires?status=dead", &a)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        server.get("/v1/events", &b)["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"] == "sluice" || e["kind"] != "handler-fatal")
    );
    assert!(
        server
            .get("/v1/fires?status=dead", &b)
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Tenant routes refuse the admin token, admin routes a tenant's.
    let r = server
        .req(reqwest::Method::GET, "/v1/rules", Some(ADMIN))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = server
        .req(reqwest::Method::GET, "/v1/tenants", Some(&a))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    // Alpha re-drives its dead letter; discards it after it dies again.
    server.post(&format!("/v1/fires/{dead}/redrive"), &a, json!(null));
    server.until("dead again", || {
        server
            .get("/v1/fires?status=dead", &a)
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let out = server.cli(&a, &["fires", "discard", &dead]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        server
            .get("/v1/fires?status=dead", &a)
            .as_array()
            .unwrap()
            .is_empty()
    );
    server.stop();
}

#[test]
fn ingest_refuses_reserved_sources_forged_ids_and_bad_bodies() {
    let f = Fixture::new();
    let server = f.start();
    let token = server.tenant_with("acme", json!({"ingest_per_second": 5, "ingest_burst": 40}));
    let bad: Vec<(&str, String, u16, &str)> = vec![
        (
            "application/json",
            json!({"source": "sluice", "kind": "fire.completed", "payload": {}}).to_string(),
            400,
            "source",
        ),
        (
            "application/json",
            json!({"source": "rule:echo", "kind": "echo", "payload": {}}).to_string(),
            400,
            "source",
        ),
        (
            "application/json",
            json!({"id": "sluice:f_00.0", "source": "app", "kind": "x", "payload": {}}).to_string(),
            400,
            "id",
        ),
        (
            "application/x-ndjson",
            format!(
                "{}\n{}\n",
                ev("k", "ok1"),
                json!({"source": "rule:x", "kind": "y", "payload": {}})
            ),
            400,
            "line 2",
        ),
        (
            "application/json",
            format!(
                "[{}, {}]",
                ev("k", "ok2"),
                json!({"id": "sluice:x", "source": "a", "kind": "b", "payload": {}})
            ),
            400,
            "line 2",
        ),
        ("application/json", "{not json".into(), 400, "JSON"),
        (
            "application/json",
            json!({"source": "app", "kind": "x", "payload": [1]}).to_string(),
            400,
            "payload",
        ),
        (
            "application/json",
            json!({"source": "app", "kind": "x", "payload": {"big": "x".repeat(300 << 10)}})
                .to_string(),
            400,
            "payload",
        ),
    ];
    for (ct, body, status, names) in &bad {
        let r = server
            .req(reqwest::Method::POST, "/v1/events", Some(&token))
            .header("content-type", *ct)
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            *status,
            "{}",
            &body[..body.len().min(120)]
        );
        let v: Value = r.json().unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(names),
            "{v}"
        );
    }
    // A body past the limit: 413 as soon as its length is known (the
    // server does not read it; a raw request shows the answer without
    // racing the upload).
    {
        use std::io::{Read, Write};
        let addr = server.url.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{",
            17 << 20
        )
        .unwrap();
        // Read the answer (the connection may stay open for the unsent
        // body: stop at the end of the JSON error).
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with("}}") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    }
    // Nothing of a refused request was stored; the server is fine.
    assert_eq!(server.get("/v1/events", &token)["events"], json!([]));
    let r = server
        .req(reqwest::Method::GET, "/healthz", None)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Over the rate: 429 with Retry-After, after the burst.
    let batch: Vec<Value> = (0..40).map(|i| ev("k", &format!("r{i}"))).collect();
    server.emit(&token, &batch);
    let r = server
        .req(reqwest::Method::POST, "/v1/events", Some(&token))
        .json(&ev("k", "late"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    server.stop();
}

#[test]
fn partition_quota_skips_and_records() {
    let f = Fixture::new();
    let server = f.start();
    let token = server.tenant_with("acme", json!({"max_partitions_per_rule": 2}));
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 100),
        components::ECHO,
    );
    server.emit(
        &token,
        &[ev("a", "1"), ev("b", "2"), ev("c", "3"), ev("a", "4")],
    );
    server.until("read", || {
        server.get("/v1/rules/echo", &token)["cursor"].as_u64() >= Some(4)
    });
    let rule = server.get("/v1/rules/echo", &token);
    assert_eq!(rule["partitions"], 2);
    assert_eq!(rule["counters"]["matched"], 3);
    let skipped: Vec<Value> = server
        .events(&token, "sluice")
        .into_iter()
        .filter(|r| r["kind"] == "event.skipped")
        .collect();
    assert_eq!(skipped.len(), 1);
    let item = &payload(&skipped[0])["items"][0];
    assert_eq!(
        (item["seq"].as_u64(), item["partition"].as_str()),
        (Some(3), Some("c"))
    );
    server.stop();
}

#[test]
fn dwell_memberships_carry_over_a_swap() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let dwell = |version: u32| {
        format!(
            "name = \"idle\"\nversion = {version}\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"quiet\"\nafter = \"10m\"\n"
        )
    };
    server.deployed(&token, "idle", &dwell(1), components::ECHO);
    server.emit(
        &token,
        &[json!({"id": "in", "source": "app", "kind": "user.enter", "payload": {"key": "u1"}})],
    );
    server.until("a member", || {
        server.get("/v1/rules/idle", &token)["partitions"] == 1
    });
    // A new version takes over the membership; its reaction fires on time.
    assert_eq!(
        server
            .deploy(&token, "idle", &dwell(2), components::ECHO)
            .status(),
        200
    );
    assert_eq!(server.get("/v1/rules/idle", &token)["partitions"], 1);
    server.advance("11m");
    server.until("the reaction", || {
        !server.events(&token, "rule:idle").is_empty()
    });
    let out = server.events(&token, "rule:idle");
    assert_eq!(out.len(), 1);
    assert_eq!(payload(&out[0])["label"], "quiet");
    assert_eq!(payload(&out[0])["partition"], "u1");
    server.stop();
}

#[test]
fn handler_failures_show_the_guest_backtrace_and_heartbeats_flow() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let manifest = "name = \"crash\"\nversion = 1\n[trigger.batch]\ncount = 1\nwindow = \"1h\"\n[retry]\nmax_attempts = 1\n";
    server.deployed(&token, "crash", manifest, components::HOSTILE);
    server.emit(
        &token,
        &[json!({"source": "app", "kind": "handler-panic", "payload": {}})],
    );
    server.until("the failure", || {
        !server.get("/v1/rules/crash", &token)["last_failure"].is_null()
    });
    let failure = server.get("/v1/rules/crash", &token)["last_failure"].clone();
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("handle-batch"),
        "{failure}"
    );
    let trace = failure["backtrace"].as_str().unwrap_or_default();
    assert!(!trace.is_empty(), "no guest backtrace: {failure}");
    assert_eq!(failure["attempt"], 1);
    // The feed marks it an error; a quiet feed sends heartbeats.
    let r = server
        .req(
            reqwest::Method::GET,
            "/v1/feed?after_seq=0&source=sluice&kind=fire.dead_lettered",
            Some(&token),
        )
        .send()
        .unwrap();
    let mut lines = BufReader::new(r);
    let (mut saw_error, mut heartbeats, mut line) = (false, 0, String::new());
    while heartbeats < 2 {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0);
        saw_error |= line.trim() == "event: error";
        heartbeats += usize::from(line.starts_with(":"));
    }
    assert!(saw_error);
    server.stop();
}

#[test]
fn client_errors_are_one_sentence() {
    let f = Fixture::new();
    // Exit 4: nothing answered; 3: the server refused.
    let run = |url: &str, token: Option<&str>, args: &[&str], code: i32| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(args)
            .env("SLUICE_URL", url)
            .env_remove("SLUICE_TOKEN");
        if let Some(t) = token {
            cmd.env("SLUICE_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run(
        &format!("http://127.0.0.1:{port}"),
        Some("x"),
        &["rules"],
        4,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach a Sluice server at"),
        "{err}"
    );
    let server = f.start();
    let err = run(&server.url, Some("sluice_nope_nope"), &["rules"], 3);
    assert_eq!(
        err.trim(),
        "error: the server refused the token (unknown or revoked): check --token or SLUICE_TOKEN"
    );
    let err = run(&server.url, None, &["fires"], 3);
    assert_eq!(
        err.trim(),
        "error: the server needs a token: set --token or SLUICE_TOKEN"
    );
    let token = server.tenant("acme");
    let err = run(&server.url, Some(&token), &["rules", "show", "ghost"], 3);
    assert_eq!(err.trim(), "error: no rule \"ghost\" (404 Not Found)");
    let err = run(
        &server.url,
        Some(&token),
        &["emit", "--source", "sluice", "--kind", "x"],
        3,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("source: \"sluice\" is reserved"), "{err}");
    server.stop();
}

#[test]
fn json_logs_and_a_second_server_on_one_database() {
    let f = Fixture::new();
    let db = f.db();
    let server = Server::start(&db);
    // A second server on the same SQLite database is refused, naming the
    // holder (on PostgreSQL a second server joins as a node: see the
    // cluster tests).
    if crate::postgres().is_none() {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(crate::store_args(&db))
            .env("SLUICE_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("pid"), "{err}");
    }
    server.stop();
    // JSON log lines, one object each.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(crate::store_args(&db))
        .env("SLUICE_ADMIN_TOKEN", ADMIN)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let logs = String::from_utf8(done.stderr).unwrap();
    assert!(logs.lines().count() >= 2, "{logs}");
    for l in logs.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
}

#[test]
fn a_guest_whose_fuel_outlasts_its_deadline_cannot_spin_forever() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    // Fuel for far longer than the deadline: every call ends by the clock.
    let manifest = "name = \"spin\"\nversion = 1\n[trigger.batch]\ncount = 1\nwindow = \"1h\"\n[limits]\nfuel = 10_000_000_000\ndeadline = \"50ms\"\n[select]\nattempts = 1\non_poison = \"skip\"\n";
    server.deployed(&token, "spin", manifest, components::HOSTILE);
    let ack = server.emit(
        &token,
        &[
            json!({"source": "app", "kind": "loop", "payload": {}}),
            json!({"source": "app", "kind": "fine", "payload": {}}),
        ],
    );
    let looping = ack["seqs"][0].as_u64().unwrap();
    // A timeout counts a third: three of them give the event up, and the
    // rule goes on to the next one.
    server.until("the spinning event skipped", || {
        server
            .events(&token, "sluice")
            .iter()
            .any(|r| r["kind"] == "event.skipped" && payload(r)["seq"] == looping)
    });
    server.until("the next event's fire", || {
        server.events(&token, "rule:spin").len() == 1
    });
    let skipped = server.events(&token, "sluice");
    let record = skipped
        .iter()
        .find(|r| r["kind"] == "event.skipped")
        .unwrap();
    assert_eq!(payload(record)["attempts"], 3);
    assert!(
        payload(record)["error"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{record}"
    );
    assert_eq!(
        server.get("/v1/rules/spin", &token)["counters"]["skipped_events"],
        1
    );
    server.stop();
}

#[test]
fn ingest_takes_one_event_an_array_or_ndjson_and_dedupes() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let post = |ct: &str, body: String| {
        ok(server
            .req(reqwest::Method::POST, "/v1/events", Some(&token))
            .header("content-type", ct)
            .body(body)
            .send()
            .unwrap())
    };
    let pretty = serde_json::to_string_pretty(&ev("k", "p1")).unwrap();
    assert_eq!(post("application/json", pretty)["accepted"], 1);
    let array = format!("[{}, {}]", ev("k", "a1"), ev("k", "a2"));
    assert_eq!(post("application/json", array)["accepted"], 2);
    // NDJSON, with its media type or without.
    let lines = format!("{}\n\n{}\n", ev("k", "n1"), ev("k", "n2"));
    let v = post("application/x-ndjson", lines.clone());
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(v["results"][1]["line"], 2);
    let again = post("application/json", lines);
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        again["seqs"], v["seqs"],
        "duplicates report the original seqs"
    );
    assert_eq!(again["results"][0]["outcome"], "duplicate");
    // Generated ids are in the answer.
    let v = post(
        "application/json",
        json!({"source": "app", "kind": "x", "payload": {}}).to_string(),
    );
    assert!(!v["results"][0]["id"].as_str().unwrap().is_empty());
    // Reads: filters and paging.
    let page = server.get("/v1/events?kind=thing&limit=2", &token);
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next_after_seq"].as_u64().unwrap();
    let rest = server.get(&format!("/v1/events?kind=thing&after_seq={next}"), &token);
    assert_eq!(rest["events"].as_array().unwrap().len(), 3);
    assert!(rest["next_after_seq"].is_null());
    // Each event says when the log took it, never earlier along seq.
    let stamps: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["events"].as_array().unwrap())
        .map(|e| e["ingested"].as_i64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(
        stamps[0] >= 1_767_225_600_000,
        "the server's clock: {stamps:?}"
    );
    let r = server
        .req(
            reqwest::Method::GET,
            "/v1/events?since=yesterday",
            Some(&token),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since:"),
        "{body}"
    );
    server.stop();
}

#[test]
fn deleting_a_tenant_undeploys_its_rules_and_revokes_its_tokens() {
    let f = Fixture::new();
    let db = f.db();
    let server = Server::start(&db);
    let token = server.tenant("acme");
    let other = server.tenant("other");
    for t in [&token, &other] {
        server.deployed(t, "echo", &echo_manifest("echo", 1, 5), components::ECHO);
    }
    server.emit(&token, &[ev("k", "1")]);
    server.until("the window open", || {
        server.get("/v1/rules/echo", &token)["partitions"] == 1
    });
    let out = server.cli(ADMIN, &["tenants", "rm", "acme", "--drain", "fire"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its window fired on the way out; its token no longer works.
    let r = server
        .req(reqwest::Method::GET, "/v1/rules", Some(&token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = server
        .req(reqwest::Method::GET, "/v1/tenants/acme", Some(ADMIN))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let names: Vec<Value> = server
        .get("/v1/tenants", ADMIN)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("other")]);
    // The name is not given out again (the log still holds its events).
    let r = server
        .req(reqwest::Method::POST, "/v1/tenants", Some(ADMIN))
        .json(&json!({"name": "acme"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    // The other tenant is untouched, and nothing of acme comes back after
    // a restart.
    assert_eq!(server.get("/v1/rules/echo", &other)["status"], "active");
    server.stop();
    let server = Server::start(&db);
    let r = server
        .req(reqwest::Method::GET, "/v1/rules", Some(&token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(server.get("/v1/rules", &other).as_array().unwrap().len(), 1);
    let rules = String::from_utf8(server.cli(ADMIN, &["tenants", "ls"]).stdout).unwrap();
    assert!(!rules.contains("acme"), "{rules}");
    server.stop();
}

#[test]
fn concurrent_deploys_keep_the_rule_quota() {
    let f = Fixture::new();
    let server = f.start();
    let token = server.tenant_with("acme", json!({"max_rules": 2}));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (server, token) = (&server, &token);
                s.spawn(move || {
                    let name = format!("r{i}");
                    server
                        .deploy(token, &name, &echo_manifest(&name, 1, 5), components::ECHO)
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(server.get("/v1/rules", &token).as_array().unwrap().len(), 2);
    server.stop();
}

#[test]
fn a_feed_ends_when_its_token_is_revoked() {
    let f = Fixture::new();
    let server = f.start();
    let created = server.post("/v1/tenants", ADMIN, json!({"name": "acme"}));
    let (token, id) = (
        created["token"]["token"].as_str().unwrap().to_owned(),
        created["token"]["id"].as_str().unwrap().to_owned(),
    );
    server.emit(&token, &[ev("k", "1")]);
    let r = server
        .req(reqwest::Method::GET, "/v1/feed?after_seq=0", Some(&token))
        .send()
        .unwrap();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    while !line.starts_with("data:") {
        line.clear();
        lines.read_line(&mut line).unwrap();
    }
    let r = server
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/tenants/acme/tokens/{id}"),
            Some(ADMIN),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The stream ends (within a heartbeat): reading reaches its end.
    let started = Instant::now();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut lines, &mut rest);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!rest.contains("data:"), "{rest}");
    server.stop();
}

#[test]
fn retention_prunes_what_no_rule_holds() {
    let f = Fixture::new();
    let db = f.db();
    let server = Server::start(&db);
    let token = server.tenant("acme");
    // Noise nothing holds, then an event a rule's open window holds, then
    // more noise: retention prunes a prefix of the log, up to the first
    // event something still holds.
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 100),
        components::ECHO,
    );
    let noise = |from: usize, n: usize| -> Vec<Value> {
        (from..from + n)
            .map(
                |i| json!({"id": format!("n{i}"), "source": "app", "kind": "noise", "payload": {}}),
            )
            .collect()
    };
    server.emit(&token, &noise(0, 20));
    server.emit(&token, &[ev("held", "h")]);
    server.emit(&token, &noise(20, 10));
    server.until("read", || {
        server.get("/v1/rules/echo", &token)["cursor"].as_u64() >= Some(31)
    });
    server.stop();
    let server = Server::start_with(&db, &["--retain-events", "5"]);
    server.until("pruned", || {
        server.get("/v1/events?limit=100", &token)["events"]
            .as_array()
            .unwrap()
            .len()
            < 21
    });
    let left: Vec<String> = server.get("/v1/events?limit=100", &token)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        left.contains(&"h".to_owned()),
        "the open window's event stays: {left:?}"
    );
    server.stop();
}

/// A dead letter keeps its batch with it: retention prunes the log past
/// its events (it used to stop at the oldest dead letter, for every
/// tenant), and a re-drive still hands the handler that batch.
#[test]
fn a_dead_letter_keeps_its_batch_so_retention_prunes_past_it() {
    let f = Fixture::new();
    let server = Server::start_with(&f.db(), &["--retain-events", "5", "--retain-every", "50ms"]);
    let token = server.tenant("acme");
    let manifest = format!("{}[retry]\nmax_attempts = 1\n", echo_manifest("echo", 1, 1));
    server.deployed(&token, "echo", &manifest, components::ECHO);
    // Fails its first attempt: dead at once.
    server.emit(
        &token,
        &[json!({"id": "doomed", "source": "app", "kind": "thing", "payload": {"key": "k", "fail": 1}})],
    );
    let dead = |server: &Server| server.get("/v1/fires?status=dead", &token);
    server.until("the dead letter", || {
        dead(&server).as_array().is_some_and(|d| d.len() == 1)
    });
    let id = dead(&server)[0]["fire_id"].as_str().unwrap().to_owned();
    let noise: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("n{i}"), "source": "app", "kind": "noise", "payload": {}}))
        .collect();
    server.emit(&token, &noise);
    server.until("pruned past the dead letter's event", || {
        let ids: Vec<String> = server.get("/v1/events?limit=100", &token)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        !ids.contains(&"doomed".to_owned()) && ids.len() < 20
    });
    // The fire still shows its batch, from what it keeps.
    let shown = server.get(&format!("/v1/fires/{id}"), &token);
    assert_eq!(shown["events"][0]["id"], "doomed", "{shown}");
    // Re-driven, the handler gets the batch again (and fails again, as
    // the event asks): never "events missing from the log".
    server.post(&format!("/v1/fires/{id}/redrive"), &token, json!({}));
    // (Retention keeps only the newest events: the first round's records
    // may be gone; a re-driven round's ids carry `.r1.`.)
    let again = || {
        server.events(&token, "sluice").into_iter().find(|e| {
            e["kind"] == "fire.dead_lettered" && e["id"].as_str().unwrap().contains(".r1.")
        })
    };
    server.until("dead again", || again().is_some());
    let last = again().unwrap();
    assert!(
        last["payload"]["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{last}"
    );
    server.stop();
}

#[test]
fn a_new_rule_reads_history_unless_it_starts_at_the_end() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    server.emit(&token, &[ev("k", "old1"), ev("k", "old2")]);
    // A first deploy reads the tenant's log from its start.
    server.deployed(&token, "all", &echo_manifest("all", 1, 2), components::ECHO);
    server.until("history echoed", || {
        server.events(&token, "rule:all").len() == 1
    });
    // `?reset=true` starts it at the log's end instead.
    let r = server.deploy_q(
        &token,
        "fresh",
        &echo_manifest("fresh", 1, 2),
        components::ECHO,
        "?reset=true",
    );
    assert_eq!(r.status(), 201);
    server.emit(&token, &[ev("k", "new1"), ev("k", "new2")]);
    server.until("new events echoed", || {
        server.events(&token, "rule:fresh").len() == 1
    });
    assert_eq!(
        echoed_ids(&server.events(&token, "rule:fresh")),
        ["new1", "new2"]
    );
    server.stop();
}

/// A hot swap killed at any moment of its `PUT` comes back at restart as
/// one version or the other — and the version the registry holds is the
/// one the feed's `rule.swapped` records say took over: the record
/// commits with the registry's write.
#[test]
fn a_swap_killed_midway_comes_back_with_its_record() {
    let f = Fixture::new();
    let db = f.db();
    let (mut server, token) = f.acme_with_echo();
    let mut running = 1;
    for attempt in 0..12u64 {
        let version = running + 1;
        let url = server.url.clone();
        let t = token.clone();
        let put = std::thread::spawn(move || {
            let form = multipart::Form::new()
                .text("manifest", echo_manifest("echo", version as u32, 3))
                .part(
                    "component",
                    multipart::Part::bytes(std::fs::read(components::ECHO).unwrap())
                        .file_name("echo.wasm"),
                );
            let _ = Client::new()
                .put(format!("{url}/v1/rules/echo"))
                .bearer_auth(t)
                .multipart(form)
                .send();
        });
        std::thread::sleep(Duration::from_millis(attempt * 3));
        drop(server);
        let _ = put.join();
        server = Server::start(&db);
        let rule = server.get("/v1/rules/echo", &token);
        let now = rule["version"].as_u64().unwrap();
        assert!(now == running || now == version, "{rule}");
        let swaps: Vec<u64> = server
            .events(&token, "sluice")
            .iter()
            .filter(|e| e["kind"] == "rule.swapped")
            .map(|e| payload(e)["version"].as_u64().unwrap())
            .collect();
        let to_now = swaps.iter().filter(|v| **v == now).count();
        assert_eq!(
            to_now,
            usize::from(now > 1),
            "attempt {attempt}: version {now} runs; swaps recorded: {swaps:?}"
        );
        assert!(
            !swaps.contains(&version) || now == version,
            "a swap to {version} is recorded but {now} runs"
        );
        running = now;
    }
}

fn digest_manifest(version: u32, count: u32) -> String {
    format!(
        "name = \"digest\"\nversion = {version}\n[trigger.batch]\ncount = {count}\nwindow = \"1h\"\nexpire = \"fire\"\n[retry]\nmax_attempts = 1\n"
    )
}

fn merge(repo: &str, number: u64) -> Value {
    json!({"source": "github", "kind": "pull_request.merged",
        "payload": {"repo": repo, "number": number, "title": format!("PR {number}")}})
}

#[test]
fn the_dashboards_routes_show_a_fire_whole_a_rules_partitions_history_and_stats() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    server.deployed(
        &token,
        "digest",
        &digest_manifest(1, 2),
        components::PR_DIGEST,
    );
    // Two merges close acme/api's window; acme/web and acme/ops stay open.
    server.emit(
        &token,
        &[
            merge("acme/api", 1),
            merge("acme/web", 2),
            merge("acme/api", 3),
            merge("acme/ops", 4),
        ],
    );
    server.until("the digest", || {
        server
            .get("/v1/fires?status=completed", &token)
            .as_array()
            .is_some_and(|f| f.len() == 1)
    });
    let id = server.get("/v1/fires?status=completed", &token)[0]["fire_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The fire, whole: its batch, records, outputs and the guest's logs.
    let fire = server.get(&format!("/v1/fires/{id}"), &token);
    assert_eq!(fire["status"], "completed", "{fire}");
    assert_eq!(fire["partition"], "acme/api");
    assert_eq!(fire["reason"], "count-reached");
    assert_eq!(fire["batch_size"], 2);
    let numbers: Vec<&Value> = fire["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["number"])
        .collect();
    assert_eq!(numbers, [&json!(1), &json!(3)]);
    assert_eq!(fire["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(fire["outputs"][0]["source"], "rule:digest");
    let kinds: Vec<&str> = fire["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["fire.completed"]);
    let logs = fire["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.as_str().unwrap().starts_with("info: digest for acme/api")),
        "{logs:?}"
    );
    let missing = server
        .req(reqwest::Method::GET, "/v1/fires/f_nope", Some(&token))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The open partitions, in key order, a page at a time.
    let first = server.get("/v1/rules/digest/partitions?limit=1", &token);
    assert_eq!(first["total"], 2, "{first}");
    assert_eq!(first["partitions"][0]["partition"], "acme/ops");
    assert_eq!(first["partitions"][0]["state"]["events"], 1);
    let opened = first["partitions"][0]["state"]["opened_at"]
        .as_i64()
        .unwrap();
    assert_eq!(
        first["partitions"][0]["deadline"].as_i64(),
        Some(opened + 3_600_000)
    );
    assert_eq!(first["next_after"], "acme/ops");
    let second = server.get("/v1/rules/digest/partitions?limit=1&after=acme/ops", &token);
    assert_eq!(second["partitions"][0]["partition"], "acme/web");
    assert!(second["next_after"].is_null(), "{second}");
    assert_eq!(second["next_ticks"], json!([]));
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a&nope=1"] {
        assert_eq!(
            server.status(
                reqwest::Method::GET,
                &format!("/v1/rules/digest/partitions?{bad}"),
                Some(&token)
            ),
            400,
            "{bad}"
        );
    }
    assert_eq!(
        server.status(
            reqwest::Method::GET,
            "/v1/rules/nope/partitions",
            Some(&token)
        ),
        404
    );

    // The trigger in words; a swap in the history.
    let rule = server.get("/v1/rules/digest", &token);
    assert_eq!(
        rule["trigger_text"],
        "batches of 2 per partition; a window still short 1h after it opens fires what it has"
    );
    assert_eq!(server.get("/v1/rules/digest/history", &token), json!([]));
    let r = server.deploy(
        &token,
        "digest",
        &digest_manifest(2, 3),
        components::PR_DIGEST,
    );
    assert_eq!(r.status(), 200);
    let history = server.get("/v1/rules/digest/history", &token);
    assert_eq!(history[0]["kind"], "rule.swapped", "{history}");
    assert_eq!(history[0]["payload"]["version"], 2);
    assert_eq!(history[0]["payload"]["previous"]["version"], 1);

    // The last minutes: ingest and fires, by rule.
    let stats = server.get("/v1/stats?minutes=5", &token);
    assert_eq!(stats["minutes"].as_array().unwrap().len(), 5);
    let sum = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum(&stats["ingest"]), 4, "{stats}");
    assert_eq!(stats["rules"][0]["rule"], "digest");
    assert_eq!(sum(&stats["rules"][0]["fires"]), 1);
    assert_eq!(
        server.status(reqwest::Method::GET, "/v1/stats?minutes=61", Some(&token)),
        400
    );

    // Who a token is; the page itself needs none.
    assert_eq!(
        server.get("/v1/whoami", &token),
        json!({"role": "tenant", "tenant": "acme", "scopes": ["ingest", "read", "deploy"]})
    );
    assert_eq!(server.get("/v1/whoami", ADMIN)["role"], "admin");
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/vendor/uplot.min.js", "text/javascript"),
    ] {
        let r = server.req(reqwest::Method::GET, path, None).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(r.headers().contains_key("content-security-policy"));
    }
    assert_eq!(
        server.status(reqwest::Method::GET, "/ui/../Cargo.toml", None),
        404
    );
    server.stop();
}

#[test]
fn metrics_can_sit_behind_a_token_or_on_an_address_of_their_own() {
    let f = Fixture::new();
    let server = Server::start_with(&f.db(), &["--metrics-token", "scrape-me"]);
    let tenant = server.tenant("acme");
    let scrape = |token: Option<&str>| {
        server
            .req(reqwest::Method::GET, "/metrics", token)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(scrape(None), 401);
    assert_eq!(scrape(Some("wrong")), 401);
    assert_eq!(
        scrape(Some(&tenant)),
        401,
        "a tenant reads no one's metrics"
    );
    assert_eq!(scrape(Some("scrape-me")), 200);
    assert_eq!(scrape(Some(ADMIN)), 200);
    server.stop();

    // On an address of its own, the API's answers 404 and says where.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{port}");
    let server = Server::start_with(&f.db(), &["--metrics-listen", &at]);
    let r = server
        .req(reqwest::Method::GET, "/metrics", None)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains(&at),
        "{body}"
    );
    let text = reqwest::blocking::get(format!("http://{at}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("sluice_log_last_seq"), "{text}");
    let health = reqwest::blocking::get(format!("http://{at}/healthz")).unwrap();
    assert_eq!(health.status(), 200);
    server.stop();
}

#[test]
fn token_scopes_are_enforced_on_every_tenant_route() {
    let f = Fixture::new();
    let (server, full) = f.acme_with_echo();
    let token_with = |scopes: Value| -> String {
        let r = server
            .req(
                reqwest::Method::POST,
                "/v1/tenants/acme/tokens",
                Some(ADMIN),
            )
            .json(&json!({ "scopes": scopes }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ingest = token_with(json!(["ingest"]));
    let read = token_with(json!(["read"]));
    let deploy = token_with(json!(["deploy"]));
    // Every route a tenant's token opens, as the OpenAPI document has it,
    // with the scope it needs.
    let table: Vec<(&str, &str, &str)> = vec![
        ("POST", "/v1/events", "ingest"),
        ("GET", "/v1/events", "read"),
        ("GET", "/v1/events/{seq}", "read"),
        ("GET", "/v1/rules", "read"),
        ("GET", "/v1/rules/{name}", "read"),
        ("PUT", "/v1/rules/{name}", "deploy"),
        ("DELETE", "/v1/rules/{name}", "deploy"),
        ("POST", "/v1/rules/{name}/pause", "deploy"),
        ("POST", "/v1/rules/{name}/resume", "deploy"),
        ("POST", "/v1/rules/{name}/replay", "deploy"),
        ("GET", "/v1/rules/{name}/shadow", "read"),
        ("DELETE", "/v1/rules/{name}/shadow", "deploy"),
        ("GET", "/v1/rules/{name}/shadow/diff", "read"),
        ("POST", "/v1/rules/{name}/shadow/promote", "deploy"),
        ("GET", "/v1/rules/{name}/partitions", "read"),
        ("GET", "/v1/rules/{name}/history", "read"),
        ("GET", "/v1/fires", "read"),
        ("GET", "/v1/fires/{id}", "read"),
        ("POST", "/v1/fires/{id}/redrive", "deploy"),
        ("DELETE", "/v1/fires/{id}", "deploy"),
        ("GET", "/v1/feed", "read"),
        ("GET", "/v1/stats", "read"),
    ];
    let doc = server.openapi();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let schemes = op["security"].to_string();
            if schemes.contains("tenant") && !schemes.contains("admin") {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let listed: BTreeSet<(String, String)> = table
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(listed, documented, "the table covers every tenant route");
    for (method, template, need) in &table {
        let path = template
            .replace("{seq}", "1")
            .replace("{name}", "echo")
            .replace("{id}", "f_none");
        for (scope, token) in [("ingest", &ingest), ("read", &read), ("deploy", &deploy)] {
            if scope == *need {
                continue;
            }
            let r = server
                .req(method.parse().unwrap(), &path, Some(token.as_str()))
                .send()
                .unwrap();
            assert_eq!(r.status(), 403, "{method} {path} with a {scope} token");
            let body: Value = r.json().unwrap();
            assert_eq!(body["error"]["code"], "scope_needed", "{body}");
            assert!(
                body["error"]["message"].as_str().unwrap().contains(need),
                "{body}"
            );
        }
    }
    // What a scope allows, it allows: an ingest token sends, a read token
    // reads, a deploy token pauses and resumes; nothing was changed above.
    server.emit(&ingest, &[ev("a", "scoped-1")]);
    assert_eq!(server.get("/v1/rules/echo", &read)["status"], "active");
    assert_eq!(
        server.status(reqwest::Method::POST, "/v1/rules/echo/pause", Some(&deploy)),
        200
    );
    assert_eq!(server.get("/v1/rules/echo", &full)["status"], "paused");
    // A token needs a scope, and only known ones.
    for bad in [
        json!({"scopes": []}),
        json!({"scopes": ["write"]}),
        json!({"nope": 1}),
    ] {
        let r = server
            .req(
                reqwest::Method::POST,
                "/v1/tenants/acme/tokens",
                Some(ADMIN),
            )
            .json(&bad)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let tokens = server.get("/v1/tenants/acme/tokens", ADMIN);
    let scopes: Vec<&Value> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["scopes"])
        .collect();
    // (All made at one instant of the manual clock: their order is not
    // the point.)
    assert!(
        scopes.contains(&&json!(["ingest", "read", "deploy"])),
        "{tokens}"
    );
    assert!(scopes.contains(&&json!(["ingest"])), "{tokens}");
    // The CLI makes scoped tokens too.
    let out = server.cli(
        ADMIN,
        &[
            "tenants", "tokens", "acme", "create", "--scope", "ingest", "--scope", "read",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let made = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        server.status(reqwest::Method::POST, "/v1/rules/echo/resume", Some(&made)),
        403
    );
    server.stop();
}
