//! The crash points of `host/src/crash.rs`, each × many seeds: the real
//! `sluice serve` runs one workload — ingest from four tenants at once,
//! windows, dwell reactions, a schedule paused and caught up, a hot swap,
//! an undeploy that drains, retention pruning, the manual clock moving —
//! and is killed (SIGKILL, from inside) the K-th time it reaches the
//! point, K chosen by the seed. The test restarts it, resends what was
//! not acknowledged, carries on, and checks at the end:
//!
//! - every acknowledged event is in the log exactly once;
//! - no fire completed twice, no output written twice;
//! - the outputs (what each fire was handed and why) are those of a run
//!   of the same workload without a crash.
//!
//! `SLUICE_FAILPOINT_SEEDS` sets the seeds per point (default 50). On the
//! PostgreSQL pass a restarted server is a new node that takes the rules
//! over once the dead one's leases expire; the lease points run there only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response, multipart};
use serde_json::{Value, json};
use sluice_test_components::components::ECHO;

const ADMIN: &str = "failpoint-admin-token";
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
/// Workload phases; the clock moves 4 minutes in each.
const PHASES: u64 = 10;
const STEP_MS: i64 = 4 * 60_000;

/// One rule per tenant (outputs feed the tenant's other rules, which
/// would make every rule's work depend on every other's).
const RULES: &[(&str, &str)] = &[
    (
        "win",
        "name = \"win\"\nversion = 1\n[trigger.batch]\ncount = 3\nwindow = \"10m\"\nexpire = \"fire\"\n",
    ),
    (
        "dwell",
        "name = \"dwell\"\nversion = 1\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"idle\"\nafter = \"5m\"\n",
    ),
    (
        "sched",
        "name = \"sched\"\nversion = 1\n[trigger.schedule]\ncron = \"*/10 * * * *\"\ntimezone = \"UTC\"\ncatch_up = \"all\"\ncatch_up_window = \"1h\"\n",
    ),
    (
        "gone",
        "name = \"gone\"\nversion = 1\n[trigger.batch]\ncount = 100\nwindow = \"2h\"\nexpire = \"fire\"\n",
    ),
];

/// Version 2 of `win`, swapped in at phase 4.
const WIN_V2: &str = "name = \"win\"\nversion = 2\n[trigger.batch]\ncount = 4\nwindow = \"10m\"\nexpire = \"fire\"\n";

fn tenant(rule: &str) -> String {
    format!("t-{rule}")
}

/// What a run ends with (compared across runs without seqs or ids,
/// which depend on where engine records fell).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Outcome {
    /// Per tenant, the outputs' payloads, sorted.
    outputs: BTreeMap<String, Vec<String>>,
    /// Per tenant, the client events' ids, sorted.
    inputs: BTreeMap<String, Vec<String>>,
}

/// What was read of the log so far, per tenant.
#[derive(Debug, Default)]
struct Seen {
    after: HashMap<String, u64>,
    /// id → seq of every event read.
    ids: HashMap<(String, String), u64>,
    outputs: BTreeMap<String, Vec<String>>,
    inputs: BTreeMap<String, Vec<String>>,
    completed: HashSet<String>,
}

/// The store a run uses: a SQLite file, or on the PostgreSQL pass a
/// schema of its own.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn db(&self) -> PathBuf {
        self.dir.path().join("fp.db")
    }
    fn stderr(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }
}

struct Node {
    child: Child,
    url: String,
}

impl Node {
    /// Start a server; `None` when it was killed at its crash point before
    /// it listened (a take-over in its first tick).
    fn start(store: &Store, clock: i64, failpoints: Option<&str>) -> Option<Node> {
        let err = File::options()
            .create(true)
            .append(true)
            .open(store.stderr())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--manual-clock", &clock.to_string()])
            .args(["--durability", "normal", "--lease-ttl", "1s"])
            .args(["--retain", "30m", "--retain-every", "100ms"])
            .args(crate::store_args(&store.db()))
            .arg("--cache-dir")
            .arg(store.db().with_extension("cache"))
            .env("SLUICE_ADMIN_TOKEN", ADMIN)
            .env("SLUICE_LOG", "error")
            .env_remove("FAILPOINTS")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        let mut child = cmd.spawn().expect("start sluice serve");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let url = loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait().unwrap();
                let log = std::fs::read_to_string(store.stderr()).unwrap_or_default();
                if failpoints.is_some() && log.contains(": killing the process") {
                    return None;
                }
                panic!("sluice serve exited ({status}) before listening: {log}");
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        // Keep reading stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in out.lines() {});
        Some(Node { child, url })
    }

    /// Start a server without crash points.
    fn unarmed(store: &Store, clock: i64) -> Node {
        Self::start(store, clock, None).expect("an unarmed server starts")
    }

    /// Stop the server (SIGTERM); `true` when it was killed at its crash
    /// point on the way out (its rules' last commits merged, say).
    fn stop(mut self, store: &Store) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let log = std::fs::read_to_string(store.stderr()).unwrap_or_default();
            assert!(
                log.contains(": killing the process"),
                "sluice serve exited with {status}"
            );
            return true;
        }
        false
    }

    /// Whether the process is gone (killed at its crash point).
    fn died(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workload run against one store.
struct Run<'a> {
    store: &'a Store,
    node: Node,
    http: Client,
    /// The engine time the test last set (a restart starts there).
    clock: i64,
    tokens: HashMap<String, String>,
    /// The highest acknowledged seq per tenant.
    acked: HashMap<String, u64>,
    crashes: u32,
    seen: Seen,
}

/// Set up the tenants and rules on `store` with a server without crash
/// points, and stop it: the tenants' tokens.
fn set_up(store: &Store, http: &Client) -> HashMap<String, String> {
    let node = Node::unarmed(store, T0);
    let mut tokens = HashMap::new();
    for (rule, manifest) in RULES {
        let t = tenant(rule);
        let r = http
            .post(format!("{}/v1/tenants", node.url))
            .bearer_auth(ADMIN)
            .json(&json!({"name": t}))
            .send()
            .unwrap();
        let v = ok(r);
        let token = v["token"]["token"].as_str().unwrap().to_owned();
        let r = deploy(http, &node.url, &token, rule, manifest);
        assert_eq!(r.status(), 201, "deploy {rule}: {}", r.text().unwrap());
        tokens.insert(t, token);
    }
    assert!(!node.stop(store), "the set-up server stops cleanly");
    tokens
}

/// A SQLite store set up once and copied for every run (files and compile
/// cache): its tokens. On PostgreSQL every run sets up its own.
fn copy_of_set_up(store: &Store, http: &Client) -> HashMap<String, String> {
    static TEMPLATE: OnceLock<(Store, HashMap<String, String>)> = OnceLock::new();
    let (template, tokens) = TEMPLATE.get_or_init(|| {
        let template = Store::new();
        let tokens = set_up(&template, http);
        (template, tokens)
    });
    for entry in std::fs::read_dir(template.dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("fp.db") && !name.ends_with(".lock") {
            std::fs::copy(entry.path(), store.dir.path().join(&*name)).unwrap();
        }
    }
    let cache = template.db().with_extension("cache");
    let into = store.db().with_extension("cache");
    std::fs::create_dir_all(&into).unwrap();
    for entry in std::fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
        }
    }
    tokens.clone()
}

impl<'a> Run<'a> {
    /// Set up the tenants and rules, and start a server with
    /// `failpoints`.
    fn new(store: &'a Store, failpoints: &str) -> Self {
        let http = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let tokens = match crate::postgres() {
            None => copy_of_set_up(store, &http),
            Some(_) => set_up(store, &http),
        };
        let (node, crashes) = match Node::start(store, T0, Some(failpoints)) {
            Some(node) => (node, 0),
            None => (Node::unarmed(store, T0), 1),
        };
        Run {
            store,
            node,
            http,
            clock: T0,
            tokens,
            acked: HashMap::new(),
            crashes,
            seen: Seen::default(),
        }
    }

    /// Send a request until it is answered: when the server died at its
    /// crash point, start it again (unarmed) and send it again.
    fn call(&mut self, send: impl Fn(&Client, &str) -> reqwest::Result<Response>) -> Response {
        let mut tries = 0;
        loop {
            match send(&self.http, &self.node.url) {
                Ok(r) => return r,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 20, "no answer: {e}");
                    self.recover();
                }
            }
        }
    }

    fn recover(&mut self) {
        if self.node.died() {
            self.crashes += 1;
            self.node = Node::unarmed(self.store, self.clock);
        }
    }

    fn token(&self, t: &str) -> String {
        self.tokens[t].clone()
    }

    /// Phase `k`'s events, sent for every tenant at once (one request per
    /// tenant, so the writer commits several requests together).
    fn ingest(&mut self, k: u64) {
        let tenants: Vec<(String, String)> = RULES
            .iter()
            .map(|(r, _)| (tenant(r), self.token(&tenant(r))))
            .collect();
        let body: String = (0..6u64)
            .map(|i| {
                let key = ["a", "b", "c"][((k + i) % 3) as usize];
                let kind = ["m.enter", "thing", "m.ping", "m.leave", "thing", "m.enter"]
                    [((k * 7 + i) % 6) as usize];
                format!(
                    "{}\n",
                    json!({"id": format!("p{k}-{i}"), "source": "fp", "kind": kind,
                        "payload": {"key": key, "phase": k}})
                )
            })
            .collect();
        loop {
            let url = self.node.url.clone();
            let answers: Vec<Option<(String, u64)>> = std::thread::scope(|s| {
                let handles: Vec<_> = tenants
                    .iter()
                    .map(|(t, token)| {
                        let (http, body, url) = (&self.http, body.clone(), url.clone());
                        s.spawn(move || {
                            let r = http
                                .post(format!("{url}/v1/events"))
                                .bearer_auth(token)
                                .header("content-type", "application/x-ndjson")
                                .body(body)
                                .send()
                                .ok()?;
                            let v = ok(r);
                            let top = v["seqs"]
                                .as_array()?
                                .iter()
                                .filter_map(Value::as_u64)
                                .max()?;
                            Some((t.clone(), top))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (t, seq) in answers.iter().flatten() {
                let top = self.acked.entry(t.clone()).or_default();
                *top = (*top).max(*seq);
            }
            if answers.iter().all(Option::is_some) {
                return;
            }
            // Some were not acknowledged: the server died. Send all again
            // (ids make the acknowledged ones duplicates).
            self.recover();
        }
    }

    /// Move the clock to `to` (the same request again after a crash).
    fn clock_to(&mut self, to: i64) {
        let r = self.call(|http, url| {
            http.post(format!("{url}/v1/clock"))
                .bearer_auth(ADMIN)
                .json(&json!({"to": to.to_string()}))
                .send()
        });
        ok(r);
        self.clock = to;
    }

    /// A rule request of tenant `t`.
    fn rule_call(&mut self, method: reqwest::Method, t: &str, path: &str) -> Response {
        let token = self.token(t);
        self.call(|http, url| {
            http.request(method.clone(), format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
        })
    }

    /// Wait until every rule is idle: caught up with what its tenant
    /// acknowledged, no fire pending, no deadline due.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for (rule, _) in RULES {
            let t = tenant(rule);
            loop {
                assert!(Instant::now() < deadline, "rule {rule} never settled");
                let r = self.rule_call(reqwest::Method::GET, &t, &format!("/v1/rules/{rule}"));
                if r.status() == 404 {
                    break; // undeployed
                }
                let v = ok(r);
                let status = v["status"].as_str().unwrap_or_default().to_owned();
                assert!(
                    !matches!(status.as_str(), "failed" | "suspended"),
                    "rule {rule}: {v}"
                );
                let caught_up =
                    v["cursor"].as_u64().unwrap_or(0) >= self.acked.get(&t).copied().unwrap_or(0);
                let due = v["next_due"].as_i64().is_some_and(|d| d <= self.clock);
                let quiet = v["pending_fires"] == 0 && v["running_fires"] == 0;
                if status == "paused" || (status == "active" && caught_up && quiet && !due) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        }
        self.collect();
    }

    /// Read what each tenant's log holds past what was read, before
    /// retention prunes it.
    fn collect(&mut self) {
        for (rule, _) in RULES {
            let t = tenant(rule);
            loop {
                let after = self.seen.after.get(&t).copied().unwrap_or(0);
                let token = self.token(&t);
                let r = self.call(|http, url| {
                    http.get(format!("{url}/v1/events?after_seq={after}&limit=1000"))
                        .bearer_auth(&token)
                        .send()
                });
                let page = ok(r);
                for e in page["events"].as_array().unwrap() {
                    self.take(&t, e);
                }
                match page["next_after_seq"].as_u64() {
                    Some(n) => {
                        self.seen.after.insert(t.clone(), n);
                    }
                    None => {
                        if let Some(last) = page["events"].as_array().unwrap().last() {
                            self.seen
                                .after
                                .insert(t.clone(), last["seq"].as_u64().unwrap());
                        }
                        break;
                    }
                }
            }
        }
    }

    fn take(&mut self, t: &str, e: &Value) {
        let seq = e["seq"].as_u64().unwrap();
        let id = e["id"].as_str().unwrap().to_owned();
        if let Some(before) = self.seen.ids.insert((t.to_owned(), id.clone()), seq) {
            assert_eq!(
                before, seq,
                "tenant {t}: id {id} stored twice (seqs {before} and {seq})"
            );
            return;
        }
        let source = e["source"].as_str().unwrap();
        let kind = e["kind"].as_str().unwrap();
        if source == "fp" {
            self.seen.inputs.entry(t.to_owned()).or_default().push(id);
        } else if source.starts_with("rule:") {
            self.seen
                .outputs
                .entry(t.to_owned())
                .or_default()
                .push(e["payload"].to_string());
        } else if kind == "fire.completed" {
            let fire = e["payload"]["fire_id"]
                .as_str()
                .unwrap_or_else(|| panic!("fire.completed without its fire: {e}"))
                .to_owned();
            assert!(
                self.seen.completed.insert(format!("{t}/{fire}")),
                "tenant {t}: fire {fire} completed twice"
            );
        }
    }

    /// The workload.
    fn workload(&mut self) -> Outcome {
        for k in 0..PHASES {
            match k {
                3 => {
                    let r =
                        self.rule_call(reqwest::Method::POST, "t-sched", "/v1/rules/sched/pause");
                    ok(r);
                }
                4 => {
                    let token = self.token("t-win");
                    let r = self.call(|http, url| deploy_send(http, url, &token, "win", WIN_V2));
                    let status = r.status();
                    assert!(status.is_success(), "swap: {status} {}", r.text().unwrap());
                }
                6 => {
                    let r =
                        self.rule_call(reqwest::Method::POST, "t-sched", "/v1/rules/sched/resume");
                    ok(r);
                }
                7 => {
                    let r = self.rule_call(
                        reqwest::Method::DELETE,
                        "t-gone",
                        "/v1/rules/gone?drain=fire",
                    );
                    // A 404 is an undeploy the crash interrupted and the
                    // restart finished.
                    assert!(
                        r.status().is_success() || r.status() == 404,
                        "undeploy: {}",
                        r.status()
                    );
                }
                _ => {}
            }
            self.ingest(k);
            self.settle();
            self.clock_to(self.clock + STEP_MS);
            self.settle();
        }
        // Every window expires, every reaction and tick falls due.
        for _ in 0..4 {
            self.clock_to(self.clock + 20 * 60_000);
            self.settle();
        }
        for (t, top) in &self.acked {
            let seen = self.seen.inputs.get(t).map_or(0, Vec::len);
            assert_eq!(
                seen as u64,
                PHASES * 6,
                "tenant {t}: {seen} client events read back (highest ack {top})"
            );
        }
        let sorted = |m: &BTreeMap<String, Vec<String>>| {
            m.iter()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    v.sort();
                    (k.clone(), v)
                })
                .collect()
        };
        Outcome {
            outputs: sorted(&self.seen.outputs),
            inputs: sorted(&self.seen.inputs),
        }
    }

    fn finish(self) -> u32 {
        let mut crashes = self.crashes;
        if self.node.stop(self.store) {
            // Killed while shutting down: it starts again and stops cleanly.
            crashes += 1;
            let node = Node::unarmed(self.store, self.clock);
            assert!(!node.stop(self.store), "the unarmed server stops cleanly");
        }
        crashes
    }
}

fn ok(r: Response) -> Value {
    let status = r.status();
    let body = r.text().unwrap_or_default();
    assert!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

fn deploy_send(
    http: &Client,
    url: &str,
    token: &str,
    name: &str,
    manifest: &str,
) -> reqwest::Result<Response> {
    let form = multipart::Form::new()
        .text("manifest", manifest.to_owned())
        .part(
            "component",
            multipart::Part::bytes(std::fs::read(ECHO).unwrap()).file_name("rule.wasm"),
        );
    http.put(format!("{url}/v1/rules/{name}"))
        .bearer_auth(token)
        .multipart(form)
        .send()
}

fn deploy(http: &Client, url: &str, token: &str, name: &str, manifest: &str) -> Response {
    deploy_send(http, url, token, name, manifest).unwrap()
}

/// The run without a crash, and how often it reached each point.
fn reference() -> &'static (Outcome, HashMap<String, u64>) {
    static REF: OnceLock<(Outcome, HashMap<String, u64>)> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    REF.get_or_init(|| {
        let store = Store::new();
        let count: String = sluice::crash::POINTS
            .iter()
            .map(|p| format!("{p}=return(count)"))
            .collect::<Vec<_>>()
            .join(";");
        let mut run = Run::new(&store, &count);
        let outcome = run.workload();
        assert_eq!(run.finish(), 0, "the reference run crashed");
        let mut hits: HashMap<String, u64> = HashMap::new();
        for line in std::fs::read_to_string(store.stderr()).unwrap().lines() {
            if let Some(p) = line
                .strip_prefix("crash point ")
                .and_then(|l| l.strip_suffix(" reached"))
            {
                *hits.entry(p.to_owned()).or_default() += 1;
            }
        }
        assert!(
            outcome.outputs.values().map(Vec::len).sum::<usize>() > 20,
            "the workload fires: {outcome:?}"
        );
        (outcome, hits)
    })
}

fn seeds() -> u64 {
    std::env::var("SLUICE_FAILPOINT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// Crash at `point` once per seed, at the K-th time it is reached.
fn crash_at(point: &str) {
    let (expected, hits) = reference();
    let n = hits.get(point).copied().unwrap_or(0);
    assert!(
        n > 0,
        "the workload never reaches crash point {point} (reached: {hits:?})"
    );
    let mut crashed = 0u64;
    for seed in 0..seeds() {
        // Spread over the run: K from 1 to n (a small LCG, so a failure
        // names a seed that replays).
        let k = 1
            + (seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 33)
                % n;
        let spec = match k {
            1 => format!("{point}=return"),
            k => format!("{point}={}*off->return", k - 1),
        };
        let store = Store::new();
        let mut run = Run::new(&store, &spec);
        let got = run.workload();
        let crashes = run.finish();
        crashed += u64::from(crashes.min(1));
        assert_eq!(
            &got, expected,
            "{point}, seed {seed} (crash at hit {k} of {n}, {crashes} crash(es)): \
             the outcome differs from the run without a crash"
        );
    }
    eprintln!(
        "crash point {point}: {} seeds, {crashed} crashed and recovered",
        seeds()
    );
    // Background points (a group of several requests, a retention pass)
    // are reached as timing has it, not as the workload goes: a run may
    // end before its K-th time. A quarter of the seeds at least crash.
    assert!(
        crashed * 4 >= seeds(),
        "{point}: only {crashed} of {} seeds reached their crash",
        seeds()
    );
}

macro_rules! points {
    ($($test:ident => $point:literal,)*) => {
        $(
            #[test]
            fn $test() {
                crash_at($point);
            }
        )*
    };
}

points! {
    append_before_commit => "log.append.before_commit",
    append_mid_group => "log.append.mid_group",
    append_before_ack => "log.append.before_ack",
    transact_between_records_and_state => "log.transact.between_records_and_state",
    transact_merged => "log.transact.merged",
    fire_before_completion => "fire.before_completion",
    fire_before_grouped_completion => "fire.before_grouped_completion",
    timer_before_commit => "timer.before_commit",
    schedule_before_commit => "schedule.before_commit",
    schedule_catch_up_before_commit => "schedule.catch_up.before_commit",
    swap_old_stopped => "swap.old_stopped",
    undeploy_mid_drain => "undeploy.mid_drain",
    retention_mid_prune => "retention.mid_prune",
}

/// The lease points (PostgreSQL only: a SQLite store has no leases).
#[test]
fn lease_mid_renewal() {
    if crate::postgres().is_some() {
        crash_at("lease.mid_renewal");
    }
}

#[test]
fn lease_mid_takeover() {
    if crate::postgres().is_some() {
        crash_at("lease.mid_takeover");
    }
}

#[test]
fn every_crash_point_has_a_test() {
    let src = include_str!("failpoints.rs");
    for p in sluice::crash::POINTS {
        assert!(src.contains(&format!("\"{p}\"")), "no test crashes at {p}");
    }
}
