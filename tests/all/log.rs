//! The durable event log: ingest, dedupe, queries, feed and retention.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::clock::ManualClock;
use sluice::log::{
    AppendOutcome, Durability, EventLog, EventQuery, FeedItem, LogConfig, NewEvent,
    RetentionPolicy, SqliteBackend, StateOp,
};

const START: i64 = 1_767_225_600_000;

struct Fixture {
    log: EventLog,
    clock: ManualClock,
    dir: tempfile::TempDir,
}

fn open_with(config: LogConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let log =
        crate::open_log_at(&dir.path().join("log.db"), config, Arc::new(clock.clone())).unwrap();
    Fixture { log, clock, dir }
}

fn open() -> Fixture {
    open_with(LogConfig::default())
}

/// Close the log and open its file again, as after a restart.
fn reopen(f: Fixture) -> EventLog {
    let path = f.dir.path().join("log.db");
    f.log.close();
    crate::open_log_at(&path, LogConfig::default(), Arc::new(f.clock.clone())).unwrap()
}

fn new_event(tenant: &str, id: Option<&str>, kind: &str) -> NewEvent {
    NewEvent {
        tenant: tenant.into(),
        id: id.map(str::to_owned),
        source: "tests".into(),
        kind: kind.into(),
        time: None,
        payload: r#"{"n":1}"#.into(),
        hops: 0,
        ingested: None,
    }
}

fn all(log: &EventLog, tenant: &str) -> Vec<sluice::event::Event> {
    log.query(&EventQuery::tenant(tenant, usize::MAX >> 1))
        .unwrap()
}

#[test]
fn seqs_are_gap_free_and_ids_are_generated() {
    let f = open();
    let r = f
        .log
        .append_blocking(vec![
            new_event("t", None, "a"),
            new_event("t", Some("x"), "b"),
        ])
        .unwrap();
    assert_eq!(r.seqs, vec![1, 2]);
    assert_eq!((r.accepted, r.duplicates), (2, 0));
    f.clock.advance(5);
    let r = f
        .log
        .append_blocking(vec![new_event("u", None, "c")])
        .unwrap();
    assert_eq!(r.seqs, vec![3]);
    let events = all(&f.log, "t");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id.len(), 26, "a ULID");
    assert_eq!(events[0].time, START, "time defaults to ingest time");
    assert_eq!(events[1].id, "x");
    // Generated ids sort by time.
    let later = &all(&f.log, "u")[0];
    assert!(later.id > events[0].id);
    assert_eq!(f.log.last_seq(), 3);
}

#[test]
fn reports_carry_the_stored_id_of_every_event() {
    let f = open();
    let r = f
        .log
        .append_blocking(vec![
            new_event("t", None, "a"),
            new_event("t", Some("x"), "b"),
            new_event("t", Some("x"), "c"),
            new_event("t", None, "d"),
        ])
        .unwrap();
    assert_eq!(r.seqs, vec![1, 2, 2, 3]);
    let stored: Vec<String> = all(&f.log, "t").into_iter().map(|e| e.id).collect();
    assert_eq!(stored.len(), 3);
    assert_eq!(
        r.ids,
        vec![stored[0].clone(), "x".into(), "x".into(), stored[2].clone()],
        "generated ids as stored; a duplicate's is the original's"
    );
    assert_ne!(r.ids[0], r.ids[3]);
    // Transactions report ids too.
    let r = f
        .log
        .transact_blocking(vec![new_event("t", None, "e")], Vec::new())
        .unwrap();
    assert_eq!(r.ids, vec![all(&f.log, "t")[3].id.clone()]);
    assert_eq!(r.ids[0].len(), 26, "a ULID");
}

#[test]
fn duplicates_report_the_original_seq_within_the_window() {
    let f = open();
    let r = f
        .log
        .append_blocking(vec![
            new_event("t", Some("a"), "k"),
            new_event("t", Some("a"), "k"),
            new_event("other", Some("a"), "k"),
        ])
        .unwrap();
    assert_eq!(
        r.outcomes,
        vec![
            AppendOutcome::Accepted(1),
            AppendOutcome::Duplicate(1),
            AppendOutcome::Accepted(2)
        ]
    );
    f.clock.advance(23 * 3_600_000);
    let r = f
        .log
        .append_blocking(vec![new_event("t", Some("a"), "k")])
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Duplicate(1)]);
    // After the window the same id is a new event.
    f.clock.advance(2 * 3_600_000);
    let r = f
        .log
        .append_blocking(vec![new_event("t", Some("a"), "k")])
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Accepted(3)]);
    let r = f
        .log
        .append_blocking(vec![new_event("t", Some("a"), "k")])
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Duplicate(3)]);
}

#[test]
fn queries_filter_and_keep_seq_order() {
    let f = open();
    let mut batch = Vec::new();
    for i in 0..30 {
        let mut e = new_event(
            if i % 3 == 0 { "u" } else { "t" },
            None,
            if i % 2 == 0 { "even" } else { "odd" },
        );
        e.source = if i < 15 {
            "early".into()
        } else {
            "late".into()
        };
        e.time = Some(START + i * 1_000);
        batch.push(e);
    }
    f.log.append_blocking(batch).unwrap();
    let q = |edit: &dyn Fn(&mut EventQuery)| {
        let mut q = EventQuery::tenant("t", 1_000);
        edit(&mut q);
        f.log
            .query(&q)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&|_| {}).len(), 20);
    assert_eq!(
        q(&|q| q.kind = Some("even".into())),
        vec![3, 5, 9, 11, 15, 17, 21, 23, 27, 29]
    );
    assert_eq!(q(&|q| q.source = Some("late".into())).len(), 10);
    assert_eq!(q(&|q| q.after_seq = Some(25)), vec![26, 27, 29, 30]);
    assert_eq!(
        q(&|q| {
            q.since = Some(START + 4_000);
            q.until = Some(START + 8_000)
        }),
        vec![5, 6, 8]
    );
    assert_eq!(q(&|q| q.limit = 3), vec![2, 3, 5]);
    assert_eq!(
        q(&|q| {
            q.kind = Some("odd".into());
            q.source = Some("early".into());
            q.after_seq = Some(5)
        }),
        vec![6, 8, 12, 14]
    );
}

#[test]
fn sqlite_queries_are_served_from_indexes() {
    let f = open();
    let backend = SqliteBackend::open(f.dir.path().join("log.db"), Durability::Normal).unwrap();
    type Edit = Box<dyn Fn(&mut EventQuery)>;
    let variants: Vec<(&str, Edit)> = vec![
        ("after_seq", Box::new(|q| q.after_seq = Some(10))),
        ("kind", Box::new(|q| q.kind = Some("k".into()))),
        ("source", Box::new(|q| q.source = Some("s".into()))),
        (
            "time range",
            Box::new(|q| {
                q.since = Some(1);
                q.until = Some(2)
            }),
        ),
        (
            "kind after",
            Box::new(|q| {
                q.kind = Some("k".into());
                q.after_seq = Some(3)
            }),
        ),
    ];
    for (name, edit) in variants {
        let mut q = EventQuery::tenant("t", 100);
        edit(&mut q);
        let plan = backend.explain(&q).unwrap().join(" | ");
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
            "{name}: {plan}"
        );
        assert!(
            !plan.contains("SCAN events"),
            "{name} scans the table: {plan}"
        );
    }
    // The engine's own cross-tenant read walks the primary key.
    let q = EventQuery {
        tenant: None,
        after_seq: Some(5),
        ..EventQuery::tenant("t", 10)
    };
    let plan = backend.explain(&q).unwrap().join(" | ");
    assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
}

#[test]
fn the_log_survives_a_restart() {
    let f = open();
    f.log
        .append_blocking(vec![
            new_event("t", Some("a"), "k"),
            new_event("t", None, "k"),
        ])
        .unwrap();
    let log = reopen(f);
    assert_eq!(log.last_seq(), 2);
    let r = log
        .append_blocking(vec![
            new_event("t", Some("a"), "k"),
            new_event("t", None, "k"),
        ])
        .unwrap();
    assert_eq!(
        r.outcomes,
        vec![AppendOutcome::Duplicate(1), AppendOutcome::Accepted(3)]
    );
}

fn seqs(items: &[FeedItem]) -> Vec<u64> {
    items.iter().map(FeedItem::seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_replays_then_tails_without_gap_or_duplicate() {
    let f = open_with(LogConfig {
        feed_ring: 8,
        ..LogConfig::default()
    });
    for i in 0..20 {
        f.log
            .append(vec![new_event(
                if i % 4 == 0 { "u" } else { "t" },
                None,
                "k",
            )])
            .await
            .unwrap();
    }
    let mut sub = f.log.subscribe(Some("t"), 3);
    let mut got = Vec::new();
    for _ in 0..13 {
        got.push(sub.next().await.unwrap());
    }
    assert_eq!(
        seqs(&got),
        (4..=20).filter(|s| (s - 1) % 4 != 0).collect::<Vec<_>>()
    );
    assert!(sub.log_reads() >= 1, "the start was older than the ring");

    // Live: the subscriber waits for the next commit.
    let log = f.log.clone();
    let waiter = tokio::spawn(async move { sub.next().await.unwrap().seq() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.append(vec![new_event("u", None, "k"), new_event("t", None, "k")])
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_falls_back_to_the_log_and_loses_nothing() {
    let f = open_with(LogConfig {
        feed_ring: 16,
        ..LogConfig::default()
    });
    let mut sub = f.log.subscribe(None, 0);
    // The writer never waits for the subscriber: 5 000 events pass the
    // 16-slot ring while it reads nothing.
    for chunk in 0..50 {
        let batch = (0..100)
            .map(|i| new_event("t", Some(&format!("{chunk}-{i}")), "k"))
            .collect();
        f.log.append(batch).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 5_000 {
        seen.push(sub.next().await.unwrap().seq());
    }
    assert_eq!(seen, (1..=5_000).collect::<Vec<_>>());
    assert!(sub.log_reads() >= 4);
    assert!(sub.try_next().unwrap().is_none());
}

#[tokio::test]
async fn retention_prunes_by_count_and_age_but_never_pinned_events() {
    let f = open();
    for _ in 0..10 {
        f.log.append(vec![new_event("t", None, "k")]).await.unwrap();
        f.clock.advance(60_000);
    }
    // A pin at 4: events 4.. stay whatever the policy says.
    f.log.pin("rule:r/cursor", Some(4)).await.unwrap();
    let report = f
        .log
        .prune(RetentionPolicy {
            max_events: Some(2),
            max_age: None,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 3);
    assert!(report.held_by_pin);
    assert_eq!(report.first_seq, Some(4));
    // The pin moves on: age now decides (events older than 5 minutes).
    f.log.pin("rule:r/cursor", Some(9)).await.unwrap();
    assert_eq!(f.log.low_water().unwrap(), Some(9));
    let report = f
        .log
        .prune(RetentionPolicy {
            max_age: Some(Duration::from_secs(300)),
            max_events: None,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 2, "events 4 and 5 are older than 5 minutes");
    assert_eq!(all(&f.log, "t").first().unwrap().seq, 6);
    f.log.pin("rule:r/cursor", None).await.unwrap();
    let report = f
        .log
        .prune(RetentionPolicy {
            max_events: Some(1),
            max_age: None,
        })
        .await
        .unwrap();
    assert_eq!((report.deleted, report.held_by_pin), (4, false));
    assert_eq!(
        all(&f.log, "t").iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![10]
    );
}

#[tokio::test]
async fn dedupe_outlives_pruning_within_the_window() {
    let f = open();
    f.log
        .append(vec![new_event("t", Some("once"), "k")])
        .await
        .unwrap();
    f.log.append(vec![new_event("t", None, "k")]).await.unwrap();
    let report = f
        .log
        .prune(RetentionPolicy {
            max_events: Some(1),
            max_age: None,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    let r = f
        .log
        .append(vec![new_event("t", Some("once"), "k")])
        .await
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Duplicate(1)]);
    // Past the window the tombstone goes and the id is new again.
    f.clock.advance(25 * 3_600_000);
    f.log.prune(RetentionPolicy::default()).await.unwrap();
    let r = f
        .log
        .append(vec![new_event("t", Some("once"), "k")])
        .await
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Accepted(3)]);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, Option<u8>)>),
    Subscribe { tenant: Option<u8>, back: u64 },
    Drain { sub: usize, max: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0u8..3, prop::option::of(0u8..20)), 1..12).prop_map(Op::Append),
        1 => (prop::option::of(0u8..3), 0u64..30).prop_map(|(tenant, back)| Op::Subscribe { tenant, back }),
        3 => (0usize..8, 0usize..25).prop_map(|(sub, max)| Op::Drain { sub, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Whatever the interleaving of appends, subscriptions and reads, a
    /// subscriber sees exactly the log after its cursor, in order.
    #[test]
    fn feed_equals_the_log(ops in prop::collection::vec(op(), 1..40)) {
        let f = open_with(LogConfig { feed_ring: 7, ..LogConfig::default() });
        let mut subs: Vec<(Option<String>, u64, sluice::log::Subscription, Vec<u64>)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(events) => {
                    let batch = events.into_iter()
                        .map(|(t, id)| new_event(&format!("t{t}"), id.map(|i| format!("id{i}")).as_deref(), "k"))
                        .collect();
                    f.log.append_blocking(batch).unwrap();
                }
                Op::Subscribe { tenant, back } => {
                    let tenant = tenant.map(|t| format!("t{t}"));
                    let after = f.log.last_seq().saturating_sub(back);
                    let sub = f.log.subscribe(tenant.as_deref(), after);
                    subs.push((tenant, after, sub, Vec::new()));
                }
                Op::Drain { sub, max } => {
                    if let Some((_, _, s, got)) = subs.get_mut(sub) {
                        for _ in 0..max {
                            match s.try_next().unwrap() {
                                Some(item) => got.push(item.seq()),
                                None => break,
                            }
                        }
                    }
                }
            }
        }
        for (tenant, after, mut sub, mut got) in subs {
            while let Some(item) = sub.try_next().unwrap() {
                got.push(item.seq());
            }
            let expected: Vec<u64> = f.log.query(&EventQuery {
                tenant: tenant.clone(),
                after_seq: Some(after),
                ..EventQuery::tenant("", 1 << 20)
            }).unwrap().iter().map(|e| e.seq).collect();
            prop_assert_eq!(got, expected, "tenant {:?} after {}", tenant, after);
        }
    }

    /// Random duplicates across and within requests: each (tenant, id) is
    /// stored once, and every repeat reports the first one's seq.
    #[test]
    fn dedupe_stores_each_key_once(
        keys in prop::collection::vec((0u8..3, 0u8..15), 1..80),
        cuts in prop::collection::vec(1usize..10, 1..20),
    ) {
        let f = open();
        let mut first: HashMap<(u8, u8), u64> = HashMap::new();
        let mut rest = &keys[..];
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap().min(rest.len());
            let (now, later) = rest.split_at(n);
            rest = later;
            let batch = now.iter()
                .map(|(t, i)| new_event(&format!("t{t}"), Some(&format!("k{i}")), "k"))
                .collect();
            let report = f.log.append_blocking(batch).unwrap();
            for (key, outcome) in now.iter().zip(report.outcomes) {
                match (first.get(key), outcome) {
                    (None, AppendOutcome::Accepted(seq)) => { first.insert(*key, seq); }
                    (Some(&seq), AppendOutcome::Duplicate(dup)) => prop_assert_eq!(seq, dup),
                    (seen, outcome) => prop_assert!(false, "{:?}: seen {:?}, got {:?}", key, seen, outcome),
                }
            }
        }
        let stored: usize = (0..3).map(|t| all(&f.log, &format!("t{t}")).len()).sum();
        prop_assert_eq!(stored, first.len());
        prop_assert_eq!(f.log.last_seq() as usize, first.len());
    }
}

#[tokio::test]
async fn state_moves_with_events_in_one_transaction() {
    let f = open();
    let report = f
        .log
        .transact(
            vec![new_event("t", Some("out-1"), "digest")],
            vec![
                StateOp::Put {
                    ns: "rule:r".into(),
                    key: "cursor".into(),
                    value: b"41".to_vec(),
                },
                StateOp::Put {
                    ns: "rule:r".into(),
                    key: "window/acme".into(),
                    value: b"[1,2]".to_vec(),
                },
                StateOp::Pin {
                    owner: "rule:r".into(),
                    min_seq: Some(1),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.seqs, vec![1]);
    assert_eq!(
        f.log.state_get("rule:r", "cursor").unwrap(),
        Some(b"41".to_vec())
    );
    assert_eq!(f.log.low_water().unwrap(), Some(1));
    // The same outputs again (a re-run): deduplicated; state still moves.
    let report = f
        .log
        .transact(
            vec![new_event("t", Some("out-1"), "digest")],
            vec![
                StateOp::Delete {
                    ns: "rule:r".into(),
                    key: "window/acme".into(),
                },
                StateOp::Put {
                    ns: "rule:r".into(),
                    key: "cursor".into(),
                    value: b"42".to_vec(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.outcomes, vec![AppendOutcome::Duplicate(1)]);
    assert_eq!(
        f.log.state_scan("rule:r").unwrap(),
        vec![("cursor".to_string(), b"42".to_vec())]
    );
    // Survives a restart.
    let log = reopen(f);
    assert_eq!(
        log.state_get("rule:r", "cursor").unwrap(),
        Some(b"42".to_vec())
    );
    log.transact(
        vec![],
        vec![StateOp::Clear {
            ns: "rule:r".into(),
        }],
    )
    .await
    .unwrap();
    assert!(log.state_scan("rule:r").unwrap().is_empty());
}

#[tokio::test]
async fn the_retention_task_prunes_in_the_background() {
    let f = open();
    for _ in 0..50 {
        f.log.append(vec![new_event("t", None, "k")]).await.unwrap();
    }
    let task = f.log.spawn_retention(
        RetentionPolicy {
            max_events: Some(10),
            max_age: None,
        },
        Duration::from_secs(3600),
    );
    // The first pass runs at once; wait for its effect, not for a timer.
    let mut remaining = all(&f.log, "t").len();
    for _ in 0..500 {
        if remaining == 10 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        remaining = all(&f.log, "t").len();
    }
    assert_eq!(remaining, 10);
    assert_eq!(all(&f.log, "t")[0].seq, 41);
    task.abort();
}

fn open_at(path: &std::path::Path, clock: &ManualClock) -> Result<EventLog, String> {
    crate::open_log_at(path, LogConfig::default(), Arc::new(clock.clone()))
        .map_err(|e| e.to_string())
}

/// How a refusal names the store at `path`: the SQLite file, or the
/// PostgreSQL schema.
fn names_store(path: &std::path::Path) -> String {
    match crate::store_at(path) {
        sluice::log::Store::Sqlite(p) => format!("database {} is in use by", p.display()),
        sluice::log::Store::Postgres(url) => {
            let schema = url.rsplit("%3D").next().unwrap().to_owned();
            format!("schema {schema} of postgres://")
        }
    }
}

#[test]
fn sqlite_a_second_writer_is_refused_naming_the_database_and_the_holder() {
    let f = open();
    let path = f.dir.path().join("log.db");
    f.log
        .append_blocking(vec![new_event("t", None, "k")])
        .unwrap();
    let err = open_at(&path, &f.clock).unwrap_err();
    assert!(err.contains(&names_store(&path)), "{err}");
    assert!(err.contains("is in use by"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // Reading needs no lock: a backend opens and reads beside the writer,
    // but cannot become a second writer.
    let backend = crate::store_at(&path).open(Durability::Normal).unwrap();
    assert_eq!(backend.last_seq().unwrap(), 1);
    let err = backend.open_writer().err().unwrap().to_string();
    assert!(err.contains("is in use by"), "{err}");
    // The writer is unharmed.
    let r = f
        .log
        .append_blocking(vec![new_event("t", None, "k")])
        .unwrap();
    assert_eq!(r.seqs, vec![2]);
}

#[test]
fn sqlite_closing_the_log_releases_the_database() {
    let f = open();
    let path = f.dir.path().join("log.db");
    f.log
        .append_blocking(vec![new_event("t", None, "k")])
        .unwrap();
    // Closing one of two handles leaves the writer to the other.
    let other = f.log.clone();
    other.close();
    assert!(open_at(&path, &f.clock).is_err());
    f.log.close();
    let log = open_at(&path, &f.clock).unwrap();
    assert_eq!(log.last_seq(), 1);
    let r = log
        .append_blocking(vec![new_event("t", None, "k")])
        .unwrap();
    assert_eq!(r.seqs, vec![2]);
    log.close();
    assert_eq!(open_at(&path, &f.clock).unwrap().last_seq(), 2);
}

#[test]
fn sqlite_a_killed_writer_process_does_not_block_the_next() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let ingest = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.env("SLUICE_LOG", "warn")
            .args(["ingest", "--batch", "1", "--durability", "normal"])
            .args(crate::store_args(&db));
        cmd
    };
    let line = |id: &str| format!(r#"{{"id":"{id}","source":"s","kind":"k","payload":{{}}}}"#);

    // A writer that stays up: stdin open, one event acknowledged.
    let mut first = ingest()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = first.stdin.take().unwrap();
    writeln!(stdin, "{}", line("a")).unwrap();
    let mut acks = BufReader::new(first.stdout.take().unwrap()).lines();
    let ack: serde_json::Value = serde_json::from_str(&acks.next().unwrap().unwrap()).unwrap();
    assert_eq!(ack["seq"], 1);

    // A second process is refused at start, naming the database and the
    // holder, with the exit code for "could not do its work".
    let second = ingest().stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&names_store(&db)), "{stderr}");
    assert!(stderr.contains("in use by another sluice"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");

    // SIGKILL: the lock goes with the process.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(stdin);
    let mut third = ingest()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(third.stdin.take().unwrap(), "{}\n{}", line("a"), line("b")).unwrap();
    let out = third.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, u64)> = acks
        .iter()
        .map(|a| (a["outcome"].as_str().unwrap(), a["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("duplicate", 1), ("accepted", 2)]);
}

/// Write events at these seqs straight into the database, as a process
/// that ignores the writer lock would.
fn intrude(raw: &rusqlite::Connection, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        raw.execute(
            "INSERT INTO events (seq, tenant, id, source, kind, time, ingested_at, payload)
             VALUES (?1, 't', ?2, 'intruder', 'k', 0, 0, '{}')",
            rusqlite::params![seq as i64, format!("intruder-{seq}")],
        )
        .unwrap();
    }
}

#[test]
fn sqlite_a_contradicted_seq_counter_fails_one_request_then_resynchronises() {
    let f = open();
    f.log
        .append_blocking(vec![new_event("t", None, "k"), new_event("t", None, "k")])
        .unwrap();
    let mut feed = f.log.subscribe(None, 0);
    let raw = rusqlite::Connection::open(f.dir.path().join("log.db")).unwrap();
    raw.busy_timeout(Duration::from_secs(10)).unwrap();
    intrude(&raw, 3..=4);

    // The request that finds its seq taken fails, saying why...
    let err = f
        .log
        .append_blocking(vec![new_event("t", Some("late"), "k")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the log was written by another process: expected seq 2, store has 4"),
        "{err}"
    );
    assert_eq!(f.log.failed_writes(), 1);
    assert_eq!(f.log.last_seq(), 4, "the writer re-read the store");
    // ...and nothing else does: the retry and everything after it are
    // written after the store's seq.
    let r = f
        .log
        .append_blocking(vec![new_event("t", Some("late"), "k")])
        .unwrap();
    assert_eq!(r.outcomes, vec![AppendOutcome::Accepted(5)]);
    for n in 0..100 {
        let r = f
            .log
            .append_blocking(vec![new_event("t", None, "k")])
            .unwrap();
        assert_eq!(r.seqs, vec![6 + n]);
    }
    assert_eq!(f.log.failed_writes(), 1, "one failure, not one per request");

    // A transaction that finds its seq taken writes none of its state.
    intrude(&raw, 106..=106);
    let put = || StateOp::Put {
        ns: "rule:r".into(),
        key: "cursor".into(),
        value: b"106".to_vec(),
    };
    let err = f
        .log
        .transact_blocking(vec![new_event("t", None, "k")], vec![put()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected seq 105, store has 106"), "{err}");
    assert_eq!(f.log.state_get("rule:r", "cursor").unwrap(), None);
    let r = f
        .log
        .transact_blocking(vec![new_event("t", None, "k")], vec![put()])
        .unwrap();
    assert_eq!(r.seqs, vec![107]);
    assert_eq!(f.log.failed_writes(), 2);

    // The feed has every event once and in order, the intruder's too.
    let mut seen = Vec::new();
    while let Some(item) = feed.try_next().unwrap() {
        seen.push(item.seq());
    }
    assert_eq!(seen, (1..=107).collect::<Vec<_>>());
}

/// An event of a step: tenant, id from a small pool or none, kind, own
/// time.
type StepEvent = (u8, Option<u8>, u8, Option<i64>);

/// One step of [`memory_store_keeps_the_sqlite_contract`].
#[derive(Debug, Clone)]
enum StoreStep {
    /// Groups of events, and state ops (what, namespace, key).
    Append(Vec<Vec<StepEvent>>, Vec<(u8, u8, u8)>),
    /// Move the clock on (ms).
    Wait(i64),
    /// Prune: keep at most this many events / drop those older than this.
    Prune(Option<u64>, Option<u64>),
}

fn store_step() -> impl Strategy<Value = StoreStep> {
    let event = (
        0u8..2,
        prop::option::of(0u8..6),
        0u8..2,
        prop::option::of(0i64..100),
    );
    // (what, namespace, key): put, delete, prefix, range, clear, pin.
    let op = (0u8..7, 0u8..2, 0u8..4);
    prop_oneof![
        4 => (prop::collection::vec(prop::collection::vec(event, 0..5), 1..3),
              prop::collection::vec(op, 0..4))
            .prop_map(|(g, o)| StoreStep::Append(g, o)),
        2 => (0i64..40).prop_map(StoreStep::Wait),
        1 => (prop::option::of(0u64..6), prop::option::of(0u64..60))
            .prop_map(|(n, a)| StoreStep::Prune(n, a)),
    ]
}

fn state_op(what: u8, ns: u8, k: u8, n: usize) -> StateOp {
    let (ns, key) = (format!("ns{ns}"), format!("k{k}"));
    match what {
        0 | 1 => StateOp::Put {
            ns,
            key,
            value: n.to_le_bytes().to_vec(),
        },
        2 => StateOp::Delete { ns, key },
        3 => StateOp::DeletePrefix {
            ns,
            prefix: "k".into(),
        },
        4 => StateOp::DeleteRange {
            ns,
            from: "k1".into(),
            to: key,
        },
        5 => StateOp::Clear { ns },
        _ => StateOp::Pin {
            owner: ns,
            min_seq: (k > 0).then_some(n as u64 / 2 + k as u64),
        },
    }
}

/// An event as both stores must give it back: a generated id is random,
/// so only its presence is compared.
fn comparable(e: &sluice::event::Event) -> (u64, String, String, String, i64, i64) {
    let id = if e.id.starts_with("id") {
        e.id.clone()
    } else {
        "<generated>".into()
    };
    (
        e.seq,
        e.tenant.clone(),
        id,
        e.kind.clone(),
        e.time,
        e.ingested,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// The in-memory store (offline runs' log) keeps the SQLite store's
    /// contract: the same outcomes, seqs, stamps, dedupe window and
    /// tombstones, state, pins, retention and reads, step by step.
    #[test]
    fn memory_store_keeps_the_sqlite_contract(steps in prop::collection::vec(store_step(), 1..30)) {
        use sluice::log::{LogBackend, MemoryBackend, Stamp};
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteBackend::open(dir.path().join("log.db"), Durability::Normal).unwrap();
        let memory = MemoryBackend::new();
        let stores: [&dyn LogBackend; 2] = [&sqlite, &memory];
        let mut writers: Vec<_> = stores.iter().map(|s| s.open_writer().unwrap()).collect();
        // A second writer is refused while one is open.
        prop_assert!(memory.open_writer().is_err());
        let window = Duration::from_millis(50);
        let mut now = START;
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                StoreStep::Wait(ms) => now += ms,
                StoreStep::Append(groups, ops) => {
                    let groups: Vec<Vec<NewEvent>> = groups.iter().map(|g| g.iter().map(|&(t, id, k, time)| NewEvent {
                        time: time.map(|t| now + t - 50),
                        ..new_event(&format!("t{t}"), id.map(|i| format!("id{i}")).as_deref(), &format!("k{k}"))
                    }).collect()).collect();
                    let ops: Vec<StateOp> = ops.iter().map(|&(w, ns, k)| state_op(w, ns, k, n)).collect();
                    let stamp = Stamp { at: now, follow_event_time: n % 2 == 0 };
                    let done: Vec<_> = writers.iter_mut()
                        .map(|w| w.write(groups.clone(), ops.clone(), stamp, window).unwrap())
                        .collect();
                    prop_assert_eq!(&done[0].outcomes, &done[1].outcomes);
                    let stored: Vec<Vec<_>> = done.iter()
                        .map(|c| c.stored.iter().map(|e| comparable(e)).collect())
                        .collect();
                    prop_assert_eq!(&stored[0], &stored[1]);
                }
                StoreStep::Prune(max_events, max_age) => {
                    let policy = RetentionPolicy {
                        max_events,
                        max_age: max_age.map(Duration::from_millis),
                    };
                    let reports: Vec<_> = writers.iter_mut()
                        .map(|w| w.prune(&policy, now, window, 3).unwrap())
                        .collect();
                    prop_assert_eq!(&reports[0], &reports[1]);
                }
            }
            prop_assert_eq!(writers[0].last_seq(), writers[1].last_seq());
            prop_assert_eq!(writers[0].last_ingested(), writers[1].last_ingested());
            let mut queries = vec![EventQuery { tenant: None, ..EventQuery::tenant("", 1000) }];
            for t in ["t0", "t1"] {
                queries.push(EventQuery::tenant(t, 1000));
                queries.push(EventQuery { kind: Some("k1".into()), after_seq: Some(2), ..EventQuery::tenant(t, 3) });
                queries.push(EventQuery { newest_first: true, until_seq: Some(9), ..EventQuery::tenant(t, 2) });
                queries.push(EventQuery { id_prefix: Some("id1".into()), ..EventQuery::tenant(t, 10) });
                queries.push(EventQuery { since: Some(START), until: Some(now - 10), ..EventQuery::tenant(t, 10) });
            }
            for q in &queries {
                let got: Vec<Vec<_>> = stores.iter()
                    .map(|s| s.read(q).unwrap().iter().map(comparable).collect())
                    .collect();
                prop_assert_eq!(&got[0], &got[1], "query {:?}", q);
            }
            let seqs: Vec<u64> = (0..20).rev().collect();
            let got: Vec<Vec<_>> = stores.iter()
                .map(|s| s.read_seqs("t0", &seqs).unwrap().iter().map(comparable).collect())
                .collect();
            prop_assert_eq!(&got[0], &got[1]);
            prop_assert_eq!(sqlite.low_water().unwrap(), memory.low_water().unwrap());
            for ns in ["ns0", "ns1"] {
                prop_assert_eq!(sqlite.state_scan(ns, "").unwrap(), memory.state_scan(ns, "").unwrap());
                prop_assert_eq!(sqlite.state_scan(ns, "k1").unwrap(), memory.state_scan(ns, "k1").unwrap());
                prop_assert_eq!(sqlite.state_get(ns, "k2").unwrap(), memory.state_get(ns, "k2").unwrap());
            }
        }
        drop(writers);
        // The writer's drop frees the store for the next.
        prop_assert!(memory.open_writer().is_ok());
    }
}
