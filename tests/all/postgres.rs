//! What is particular to the PostgreSQL store: its schema and migrations,
//! lost connections, and the errors a user sees. Everything else runs on
//! both stores (`scripts/test.sh` runs the engine, conformance and server
//! suites a second time on PostgreSQL).

use std::sync::Arc;

use sluice::clock::ManualClock;
use sluice::log::{
    Durability, EventLog, EventQuery, LogBackend, LogConfig, NewEvent, PostgresBackend, Store,
};

use crate::{pg_store, pg_url};

fn event(id: &str) -> NewEvent {
    NewEvent {
        tenant: "t".into(),
        id: Some(id.into()),
        source: "tests".into(),
        kind: "k".into(),
        time: None,
        payload: "{}".into(),
        hops: 0,
        ingested: None,
    }
}

/// Run SQL on the test database, outside any store.
pub(crate) fn sql(url: &str, statement: &str) -> Vec<tokio_postgres::Row> {
    let url = url.to_owned();
    let statement = statement.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.query(&statement, &[]).await.unwrap()
        })
    })
    .join()
    .unwrap()
}

#[test]
fn the_schema_is_created_migrated_and_a_newer_one_refused() {
    let url = pg_store("migrate");
    let backend = PostgresBackend::open(&url, Durability::Normal).unwrap();
    let schema = backend.schema().to_owned();
    assert!(schema.starts_with("s_migrate_"), "{schema}");
    let tables: Vec<String> = sql(
        &url,
        &format!(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = '{schema}' ORDER BY 1"
        ),
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(
        tables,
        [
            "dedupe_tombstones",
            "events",
            "leases",
            "log_head",
            "nodes",
            "pins",
            "schema_version",
            "state"
        ]
    );
    // Opening again migrates nothing and keeps what is there.
    let log = EventLog::open(
        Arc::new(backend),
        LogConfig::default(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    log.append_blocking(vec![event("a")]).unwrap();
    log.close();
    let again = PostgresBackend::open(&url, Durability::Normal).unwrap();
    assert_eq!(again.last_seq().unwrap(), 1);

    // A schema from a newer build is refused, saying so.
    sql(
        &url,
        &format!("INSERT INTO {schema}.schema_version VALUES (99, 0)"),
    );
    let err = PostgresBackend::open(&url, Durability::Normal)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "schema {schema} is at version 99, newer than this build knows"
        )),
        "{err}"
    );
}

#[test]
fn a_terminated_connection_costs_at_most_one_request_and_loses_nothing() {
    // Its own application name, so that only this test's connections go.
    let url = format!("{}&application_name=terminate-me", pg_store("terminate"));
    let log = EventLog::open_store(
        &Store::Postgres(url.clone()),
        Durability::Normal,
        LogConfig::default(),
        Arc::new(ManualClock::new(1_000)),
    )
    .unwrap();
    log.append_blocking(vec![event("a"), event("b")]).unwrap();
    let killed = sql(
        &pg_url(),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'terminate-me'",
    );
    assert!(!killed.is_empty(), "the log's connections were found");
    // The next request may fail (its connection was gone); the one after
    // runs on a new connection, which takes the writer lock again.
    let mut acknowledged = vec!["a".to_owned(), "b".to_owned()];
    let mut failures = 0;
    for id in ["c", "d", "e"] {
        match log.append_blocking(vec![event(id)]) {
            Ok(report) => {
                assert_eq!(report.accepted, 1);
                acknowledged.push(id.to_owned());
            }
            Err(e) => {
                failures += 1;
                let e = e.to_string();
                assert!(e.contains("terminat") || e.contains("closed"), "{e}");
            }
        }
    }
    assert!(failures <= 1, "{failures} requests failed");
    let stored = log.query(&EventQuery::tenant("t", 100)).unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, acknowledged);
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=acknowledged.len() as u64).collect::<Vec<_>>());
    log.close();
}

#[test]
fn an_unreachable_or_misspelt_store_is_named() {
    let err = PostgresBackend::open("postgres://sluice@127.0.0.1:1/nowhere", Durability::Normal)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("open postgres://sluice@127.0.0.1:1/nowhere") && err.contains("connect"),
        "{err}"
    );
    let err = PostgresBackend::open("postgres://x@127.0.0.1/db?colour=red", Durability::Normal)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PostgreSQL URL") && err.contains("colour"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--store", "mysql://localhost/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--store: store mysql:// is not known"),
        "{stderr}"
    );
}

#[test]
fn the_server_runs_on_postgres_and_shows_no_password() {
    let url = pg_store("serve");
    let with_password = url.replacen("sluice@", "sluice:secret@", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .env("SLUICE_STORE", &with_password)
        .env("SLUICE_ADMIN_TOKEN", "admin")
        .env("SLUICE_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let http = reqwest::blocking::Client::new();
    let tenant: serde_json::Value = http
        .post(format!("{addr}/v1/tenants"))
        .bearer_auth("admin")
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = tenant["token"]["token"].as_str().unwrap();
    let sent: serde_json::Value = http
        .post(format!("{addr}/v1/events"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": "e1", "source": "s", "kind": "k", "payload": {}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(sent["accepted"], 1, "{sent}");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let logs = String::from_utf8_lossy(&done.stderr);
    assert!(!logs.contains("secret"), "{logs}");
    // What the server acknowledged is in the database.
    let backend = PostgresBackend::open(&url, Durability::Normal).unwrap();
    let events = backend.read(&EventQuery::tenant("acme", 10)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, "e1");
}

#[test]
fn two_writers_interleave_gap_free_and_a_follower_skips_nothing() {
    let url = pg_store("writers");
    let clock = Arc::new(ManualClock::new(1_000));
    let open = || {
        EventLog::open_store(
            &Store::Postgres(url.clone()),
            Durability::Normal,
            LogConfig::default(),
            clock.clone(),
        )
        .unwrap()
    };
    let (a, b) = (open(), open());
    // A follower on `a` from the start, reading while both write.
    let mut feed = a.subscribe(None, 0);
    let writers: Vec<_> = [
        (a.clone(), "a"),
        (b.clone(), "b"),
        (a.clone(), "c"),
        (b.clone(), "d"),
    ]
    .into_iter()
    .map(|(log, name)| {
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            for i in 0..60 {
                let events = (0..3).map(|j| event(&format!("{name}-{i}-{j}"))).collect();
                seqs.extend(log.append_blocking(events).unwrap().seqs);
            }
            seqs
        })
    })
    .collect();
    let mut acked: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    acked.sort_unstable();
    let total = acked.len() as u64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "seqs gap-free and unique"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Vec::new();
    rt.block_on(async {
        while (seen.len() as u64) < total {
            let item = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
                .await
                .expect("the follower saw every commit")
                .unwrap();
            seen.push(item.seq());
        }
    });
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "in seq order, none skipped"
    );
    // Ingest stamps never go back along seq, whichever writer stamped.
    let stored = b.query(&EventQuery::tenant("t", 10_000)).unwrap();
    assert!(stored.windows(2).all(|w| w[0].ingested <= w[1].ingested));
    a.close();
    b.close();
}
