//! Kill the real process with SIGKILL while it ingests, again and again:
//! every acknowledged event must be there exactly once, seqs gap-free, and
//! no event ever stored twice.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use sluice::log::{Durability, EventQuery};

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn line(id: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"source\":\"crash-test\",\"kind\":\"tick\",\"payload\":{{\"id\":\"{id}\",\"pad\":\"{}\"}}}}\n",
        "x".repeat(150)
    )
}

/// One run of `sluice ingest`: sends `resend` then fresh ids; kills the
/// process after `kill_after` acks (or lets it finish when `None`).
/// Returns (ids sent, acks as id → seq).
fn run(
    db: &std::path::Path,
    resend: &[String],
    fresh: std::ops::Range<u64>,
    kill_after: Option<usize>,
) -> (Vec<String>, HashMap<String, u64>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "ingest",
            "--tenant",
            "t",
            "--batch",
            "40",
            "--durability",
            "normal",
        ])
        .args(crate::store_args(db))
        .env("SLUICE_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut stdin = child.stdin.take().unwrap();
    let to_send: Vec<String> = resend
        .iter()
        .cloned()
        .chain(fresh.map(|n| format!("ev-{n:06}")))
        .collect();
    let sent_by_writer = sent.clone();
    let writer = std::thread::spawn(move || {
        for id in to_send {
            // Record before writing: a line may be read even if the write
            // call then fails.
            sent_by_writer.lock().unwrap().push(id.clone());
            if stdin.write_all(line(&id).as_bytes()).is_err() {
                return;
            }
        }
    });
    let mut acks = HashMap::new();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for l in stdout.lines() {
        let Ok(l) = l else { break };
        let ack: serde_json::Value = serde_json::from_str(&l).unwrap();
        acks.insert(
            ack["id"].as_str().unwrap().to_owned(),
            ack["seq"].as_u64().unwrap(),
        );
        if kill_after.is_some_and(|k| acks.len() >= k) {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    writer.join().unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "the final run should finish cleanly");
    }
    let sent = sent.lock().unwrap().clone();
    (sent, acks)
}

#[test]
fn acknowledged_events_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut rng = Lcg(0x5eed_1234);
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut outstanding: Vec<String> = Vec::new();
    let mut sent_all: HashSet<String> = HashSet::new();
    let mut next = 0u64;
    let kills = 24;
    for _ in 0..kills {
        let fresh = next..next + 3_000;
        next += 3_000;
        let kill_after = 1 + rng.below(1_500) as usize;
        let (sent, acks) = run(&db, &outstanding, fresh, Some(kill_after));
        for (id, seq) in &acks {
            if let Some(before) = acked.insert(id.clone(), *seq) {
                assert_eq!(before, *seq, "{id} acknowledged at two seqs");
            }
        }
        sent_all.extend(sent.iter().cloned());
        // Unacknowledged ids are sent again, as a client would retry.
        outstanding = sent_all
            .iter()
            .filter(|id| !acked.contains_key(*id))
            .cloned()
            .collect();
        outstanding.sort();
        eprintln!(
            "killed after {} acks ({kill_after} asked); {} sent, {} outstanding",
            acks.len(),
            sent.len(),
            outstanding.len()
        );
    }
    // A clean run delivers whatever is still outstanding.
    let (_, acks) = run(&db, &outstanding, 0..0, None);
    acked.extend(acks);

    let backend = crate::store_at(&db).open(Durability::Normal).unwrap();
    let events = backend
        .read(&EventQuery::tenant("t", usize::MAX >> 1))
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seqs are gap-free"
    );
    let mut stored: HashMap<&str, u64> = HashMap::new();
    for e in &events {
        assert!(
            stored.insert(&e.id, e.seq).is_none(),
            "{} stored twice",
            e.id
        );
    }
    for (id, seq) in &acked {
        assert_eq!(
            stored.get(id.as_str()),
            Some(seq),
            "acknowledged {id} missing or moved"
        );
    }
    assert_eq!(
        stored.len(),
        sent_all.len(),
        "every sent event is stored exactly once"
    );
    assert!(acked.len() > kills, "the kills happened mid-stream");
    eprintln!(
        "{kills} kills; {} events stored, {} acknowledged before a kill or at the end",
        events.len(),
        acked.len()
    );
}

/// One `sluice run` over `db`: sends `lines` (skipping ids already
/// acknowledged), and either lets it finish (`kill_after: None`) or kills
/// it after that long. Returns the ids acknowledged, and whether the kill
/// hit a process still at work (it exits by itself once idle).
fn run_engine(
    db: &std::path::Path,
    manifest: &std::path::Path,
    lines: &[(String, String)],
    acked: &HashSet<String>,
    kill_after: Option<std::time::Duration>,
) -> (HashSet<String>, bool) {
    use sluice_test_components::components::SLOW_DIGEST;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--tenant",
            "t",
            "--batch",
            "50",
            "--durability",
            "normal",
            "--exit-when-idle",
        ])
        .args(crate::store_args(db))
        .arg("--rule")
        .arg(format!("{}={SLOW_DIGEST}", manifest.display()))
        .env("SLUICE_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let to_send: Vec<String> = lines
        .iter()
        .filter(|(id, _)| !acked.contains(id))
        .map(|(_, l)| l.clone())
        .collect();
    let writer = std::thread::spawn(move || {
        for l in to_send {
            if stdin.write_all(l.as_bytes()).is_err() {
                return;
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = HashSet::new();
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            let ack: serde_json::Value = serde_json::from_str(&l).unwrap();
            acks.insert(ack["id"].as_str().unwrap().to_owned());
        }
        acks
    });
    let interrupted = match kill_after {
        Some(delay) => {
            std::thread::sleep(delay);
            let running = child.try_wait().unwrap().is_none();
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            running
        }
        None => {
            assert!(child.wait().unwrap().success());
            false
        }
    };
    writer.join().unwrap();
    (reader.join().unwrap(), interrupted)
}

/// The digests a run produced: (customer, order ids), sorted.
fn digests(db: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let backend = crate::store_at(db).open(Durability::Normal).unwrap();
    let outputs = backend
        .read(&EventQuery {
            source: Some("rule:slow-digest".into()),
            ..EventQuery::tenant("t", usize::MAX >> 1)
        })
        .unwrap();
    let ids: HashSet<&str> = outputs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), outputs.len(), "an output appears twice");
    let completed = backend
        .read(&EventQuery {
            kind: Some("fire.completed".into()),
            ..EventQuery::tenant("t", usize::MAX >> 1)
        })
        .unwrap();
    assert_eq!(completed.len(), outputs.len(), "one completion per fire");
    let mut out: Vec<(String, Vec<String>)> = outputs
        .iter()
        .map(|e| {
            let p: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            let orders = p["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap().to_owned())
                .collect();
            (p["customer"].as_str().unwrap().to_owned(), orders)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn batch_rules_survive_repeated_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rule.toml");
    std::fs::write(
        &manifest,
        "name = \"slow-digest\"\nversion = 1\n\n[trigger.batch]\ncount = 10\nwindow = \"24h\"\n",
    )
    .unwrap();
    let customers = 100;
    let lines: Vec<(String, String)> = (0..10_000)
        .map(|i| {
            let id = format!("o{i:05}");
            let line = format!(
                "{{\"id\":\"{id}\",\"source\":\"shop\",\"kind\":\"order\",\"payload\":{{\"customer\":\"c{:03}\"}}}}\n",
                i % customers
            );
            (id, line)
        })
        .collect();
    // What any correct run must produce: per customer, its orders in send
    // order, ten to a fire.
    let mut expected: Vec<(String, Vec<String>)> = Vec::new();
    for c in 0..customers {
        let mine: Vec<String> = (0..10_000)
            .filter(|i| i % customers == c)
            .map(|i| format!("o{i:05}"))
            .collect();
        for chunk in mine.chunks(10) {
            expected.push((format!("c{c:03}"), chunk.to_vec()));
        }
    }
    expected.sort();

    // A crash-free run of the same events.
    let clean = dir.path().join("clean.db");
    run_engine(&clean, &manifest, &lines, &HashSet::new(), None);
    assert_eq!(digests(&clean), expected);

    // The same with SIGKILL at random points, over and over.
    let db = dir.path().join("crash.db");
    let mut rng = Lcg(0xc0ffee);
    let mut acked = HashSet::new();
    // Kill until 20 kills have landed on a working process (a fast
    // machine may finish before some of them), at most 60 times; count
    // what happened rather than require a figure of the machine's speed.
    let (mut interrupted, mut kills) = (0, 0);
    while interrupted < 20 && kills < 60 {
        let delay = std::time::Duration::from_millis(20 + rng.below(400));
        let (acks, hit) = run_engine(&db, &manifest, &lines, &acked, Some(delay));
        acked.extend(acks);
        interrupted += usize::from(hit);
        kills += 1;
    }
    let partial = digests(&db).len();
    eprintln!(
        "after {kills} kills ({interrupted} on a working process): {} orders acknowledged, {partial} of 1000 fires done",
        acked.len()
    );
    assert!(
        interrupted > 0,
        "no kill hit a working process in {kills} tries"
    );
    run_engine(&db, &manifest, &lines, &acked, None);
    assert_eq!(
        digests(&db),
        expected,
        "every window closed exactly once, as in the crash-free run"
    );
    let backend = crate::store_at(&db).open(Durability::Normal).unwrap();
    let orders = backend
        .read(&EventQuery {
            source: Some("shop".into()),
            ..EventQuery::tenant("t", usize::MAX >> 1)
        })
        .unwrap();
    assert_eq!(orders.len(), 10_000, "every order stored exactly once");
}

/// A `sluice run` of the `echo` rule under `manifest` on `db`, fed `input`
/// on stdin, stopped after `run_for`: with SIGKILL (`kill`), or SIGINT (a
/// clean shutdown).
fn run_echo(
    db: &std::path::Path,
    manifest: &std::path::Path,
    input: &str,
    run_for: std::time::Duration,
    kill: bool,
) {
    use sluice_test_components::components::ECHO;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--tenant", "t", "--durability", "normal"])
        .args(crate::store_args(db))
        .arg("--rule")
        .arg(format!("{}={ECHO}", manifest.display()))
        .env("SLUICE_LOG", "error")
        // Compiled once, loaded from the cache at every start-up after.
        .env("SLUICE_CACHE_DIR", db.parent().unwrap().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(run_for);
    if kill {
        let _ = child.kill(); // SIGKILL
    } else {
        let pid = child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
    }
    drop(stdin);
    child.wait().unwrap();
}

/// The `echo` outputs in `db`: (output id, payload), in log order; no id
/// twice.
fn echoes(db: &std::path::Path) -> Vec<(String, serde_json::Value)> {
    let backend = crate::store_at(db).open(Durability::Normal).unwrap();
    let outputs = backend
        .read(&EventQuery {
            source: Some("rule:echo".into()),
            ..EventQuery::tenant("t", usize::MAX >> 1)
        })
        .unwrap();
    let ids: HashSet<&str> = outputs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), outputs.len(), "an output appears twice");
    outputs
        .into_iter()
        .map(|e| (e.id, serde_json::from_str(&e.payload).unwrap()))
        .collect()
}

#[test]
fn dwell_memberships_survive_sigkill_and_fire_once_after_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rule.toml");
    std::fs::write(
        &manifest,
        "name = \"echo\"\nversion = 1\n\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"silent\"\nafter = \"2s\"\n",
    )
    .unwrap();
    let devices = 200;
    let input: String = (0..devices)
        .map(|d| {
            format!(
                "{{\"id\":\"hb-{d}\",\"source\":\"dev\",\"kind\":\"heartbeat.ping\",\"payload\":{{\"key\":\"d{d:03}\"}}}}\n"
            )
        })
        .collect();
    let short = std::time::Duration::from_millis(700);
    // Each database: memberships start, the engine is killed before any
    // is due, and stays down past their deadline.
    let (clean, crashed) = (dir.path().join("clean.db"), dir.path().join("crash.db"));
    run_echo(&clean, &manifest, &input, short, true);
    run_echo(&crashed, &manifest, &input, short, true);
    assert!(echoes(&clean).is_empty(), "nothing was due before the kill");
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    // Clean: one start-up that fires what fell due while down.
    run_echo(
        &clean,
        &manifest,
        "",
        std::time::Duration::from_secs(3),
        false,
    );
    // Crashed again and again while firing them at start-up.
    for ms in [5, 40, 120, 300] {
        run_echo(
            &crashed,
            &manifest,
            "",
            std::time::Duration::from_millis(ms),
            true,
        );
    }
    run_echo(
        &crashed,
        &manifest,
        "",
        std::time::Duration::from_secs(3),
        false,
    );
    let (a, b) = (echoes(&clean), echoes(&crashed));
    assert_eq!(a.len(), devices, "every silent device reported once");
    let partitions: HashSet<&str> = a
        .iter()
        .map(|(_, p)| p["partition"].as_str().unwrap())
        .collect();
    assert_eq!(partitions.len(), devices);
    let ids = |v: &[(String, serde_json::Value)]| -> Vec<String> {
        let mut ids: Vec<String> = v.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&a),
        ids(&b),
        "the crashed run fired exactly what the clean one did"
    );
    // A later start fires nothing again.
    run_echo(
        &crashed,
        &manifest,
        "",
        std::time::Duration::from_millis(800),
        false,
    );
    assert_eq!(echoes(&crashed).len(), devices);
}

#[test]
fn schedules_survive_sigkill_and_catch_up_without_a_tick_twice() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rule.toml");
    std::fs::write(
        &manifest,
        // Every tick runs (`buffer-all`): with the default `skip`, a tick
        // due while the previous fire still runs is skipped, which depends
        // on how fast the handler is, not on the crashes.
        "name = \"echo\"\nversion = 1\n\n[trigger.schedule]\ncron = \"* * * * * *\"\ntimezone = \"UTC\"\ncatch_up = \"all\"\ncatch_up_window = \"1h\"\noverlap = \"buffer-all\"\n",
    )
    .unwrap();
    let db = dir.path().join("sched.db");
    let second = std::time::Duration::from_secs(1);
    // Up, killed, down, up and killed mid-tick a few times, down, and up
    // to a clean stop.
    run_echo(&db, &manifest, "", 2 * second, true);
    std::thread::sleep(2 * second);
    for ms in [1_300, 900, 1_100] {
        run_echo(
            &db,
            &manifest,
            "",
            std::time::Duration::from_millis(ms),
            true,
        );
    }
    std::thread::sleep(2 * second);
    run_echo(&db, &manifest, "", 3 * second, false);
    let mut ticks: Vec<(i64, bool)> = echoes(&db)
        .iter()
        .map(|(_, p)| {
            (
                p["tick"].as_i64().unwrap(),
                p["catch_up"].as_bool().unwrap(),
            )
        })
        .collect();
    ticks.sort();
    assert!(ticks.len() >= 8, "{ticks:?}");
    // Every second from the first tick to the last, each exactly once.
    for w in ticks.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 1_000, "a tick missing or twice: {ticks:?}");
    }
    assert!(
        ticks.iter().any(|t| t.1),
        "ticks missed while down ran as catch-up: {ticks:?}"
    );
}
