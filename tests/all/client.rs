//! The client commands as a newcomer types them, against a real `sluice
//! serve`: every mistake — a wrong, admin or ingest-only token on a large
//! deploy, a server that is down, a missing file, a URL without its
//! scheme, a manifest sent as the component, a kind change — is one
//! sentence on stderr with the exit code of whose mistake it was (2
//! usage, 3 refused, 4 unreachable), and the tables speak to people.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_test_components::components;

use crate::server::{ADMIN, Fixture, Server, echo_manifest, ok};

/// The one sentence a failed command printed, checked: one line,
/// `error: `, no transport jargon.
fn sentence(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    for jargon in [
        "body error",
        "builder error",
        "error sending request",
        "[",
        "0x",
    ] {
        assert!(!err.contains(jargon), "{jargon:?} in {err:?}");
    }
    err
}

/// Run `sluice ARGS` against `server` with `token`; the exit code and
/// the output.
fn run(server: &Server, token: &str, args: &[&str]) -> (i32, Output) {
    let out = server.cli(token, args);
    (out.status.code().unwrap_or(-1), out)
}

/// `want` code with one sentence containing each of `says`.
fn fails(server: &Server, token: &str, args: &[&str], want: i32, says: &[&str]) {
    let (code, out) = run(server, token, args);
    let err = sentence(&out);
    assert_eq!(code, want, "sluice {args:?}: {err}");
    for s in says {
        assert!(err.contains(s), "sluice {args:?}: {s:?} not in {err:?}");
    }
}

/// The echo component with a 12 MB custom section: the size of a Python
/// or JavaScript rule, still valid.
fn large_component(path: &std::path::Path) {
    let mut bytes = std::fs::read(components::ECHO).unwrap();
    let name = b"padding";
    let payload = vec![0u8; 12 << 20];
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    bytes.push(0); // a custom section
    let mut n = body.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&body);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_newcomers_mistakes_are_each_one_sentence_with_its_exit_code() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let ingest_only = server.post(
        "/v1/tenants/acme/tokens",
        ADMIN,
        json!({"scopes": ["ingest"]}),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = f.path("big");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("rule.toml"), echo_manifest("big", 1, 3)).unwrap();
    large_component(&dir.join("big.wasm"));
    let big = dir.to_str().unwrap();

    // A large deploy with the wrong token, the admin token, an
    // ingest-only token: the refusal, not a broken upload.
    for _ in 0..3 {
        fails(
            &server,
            "sluice_0000000000000000_nope",
            &["deploy", big],
            3,
            &["refused the token"],
        );
    }
    fails(
        &server,
        ADMIN,
        &["deploy", big],
        3,
        &["not the admin token"],
    );
    fails(
        &server,
        &ingest_only,
        &["deploy", big],
        3,
        &["deploy scope", "has ingest"],
    );
    // With the tenant's token the same 12 MB deploy goes through.
    let (code, out) = run(&server, &token, &["deploy", big]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("created big@1"));

    // Files that are not there, or not what they should be: usage (2),
    // naming the file.
    let missing = f.path("nowhere");
    fails(
        &server,
        &token,
        &["deploy", missing.to_str().unwrap()],
        2,
        &["nowhere: no such file or directory"],
    );
    fails(
        &server,
        &token,
        &["deploy", big, "--manifest", "missing-rule.toml"],
        2,
        &["--manifest missing-rule.toml: no such file"],
    );
    let manifest = dir.join("rule.toml");
    fails(
        &server,
        &token,
        &["deploy", manifest.to_str().unwrap()],
        2,
        &["is a manifest"],
    );
    let text = f.path("rule.wasm");
    std::fs::copy(&manifest, &text).unwrap();
    fails(
        &server,
        &token,
        &[
            "deploy",
            text.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
        2,
        &["rule.wasm is not a Wasm component"],
    );
    let empty = f.path("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        &server,
        &token,
        &["deploy", empty.to_str().unwrap()],
        2,
        &["has no rule.toml", "rule.toml"],
    );
    fails(
        &server,
        &token,
        &["emit", "-f", f.path("events.ndjson").to_str().unwrap()],
        2,
        &["events.ndjson"],
    );
    // The same mistake through the API: one line, naming the problem.
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", echo_manifest("txt", 1, 3))
        .part(
            "component",
            reqwest::blocking::multipart::Part::bytes(echo_manifest("txt", 1, 3).into_bytes())
                .file_name("rule.wasm"),
        );
    let r = server
        .req(reqwest::Method::PUT, "/v1/rules/txt", Some(&token))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("the file is text"), "{message}");
    assert!(!message.contains('\n'), "{message}");

    // A URL without its scheme: say how to write it (usage).
    for (url, hint) in [
        ("127.0.0.1:7878", "http://127.0.0.1:7878"),
        ("localhost:7878", "http://localhost:7878"),
    ] {
        fails(
            &server,
            &token,
            &["rules", "--url", url],
            2,
            &["is not", hint],
        );
    }
    // Nothing there: unreachable (4).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nobody = format!("http://{closed}");
    fails(
        &server,
        &token,
        &["rules", "--url", &nobody],
        4,
        &["cannot reach a Sluice server", &nobody],
    );
    fails(
        &server,
        &token,
        &["deploy", big, "--url", &nobody],
        4,
        &["cannot reach"],
    );

    // A kind change names the CLI's flag.
    let dwell = "name = \"big\"\nversion = 2\n[trigger.dwell]\n[[trigger.dwell.reactions]]\nlabel = \"idle\"\nafter = \"5m\"\n";
    std::fs::write(dir.join("rule.toml"), dwell).unwrap();
    fails(&server, &token, &["deploy", big], 3, &["--reset"]);
    let (code, out) = run(&server, &token, &["deploy", big, "--reset"]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    // Clap's own usage errors are 2 as well.
    let (code, _) = run(&server, &token, &["deploy"]);
    assert_eq!(code, 2);
    server.stop();
}

#[test]
fn tables_speak_to_people_and_tokens_name_their_id() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    // `sluice tenants` alone lists, as a table with dates, not epoch ms.
    let (code, out) = run(&server, ADMIN, &["tenants"]);
    assert_eq!(code, 0);
    let table = String::from_utf8(out.stdout).unwrap();
    let first = table.lines().next().unwrap();
    assert!(first.starts_with("TENANT"), "{table}");
    let acme = table.lines().find(|l| l.starts_with("acme ")).unwrap();
    assert!(acme.contains("2026-01-01T00:00:00Z"), "{table}");
    assert!(!table.contains("1767225600000"), "{table}");
    let (_, out) = run(&server, ADMIN, &["tenants", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "acme");

    // A new token: alone on stdout, its id on stderr; revoke takes the id.
    let (code, out) = run(
        &server,
        ADMIN,
        &["tenants", "tokens", "acme", "create", "--scope", "read"],
    );
    assert_eq!(code, 0);
    let made = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(made.starts_with("sluice_"), "{made}");
    let id = made.split('_').nth(1).unwrap().to_owned();
    let note = String::from_utf8(out.stderr).unwrap();
    assert!(note.contains(&format!("revoke {id}")), "{note}");
    assert!(note.contains("scopes: read"), "{note}");
    let (_, out) = run(&server, ADMIN, &["tenants", "tokens", "acme"]);
    let tokens = String::from_utf8(out.stdout).unwrap();
    assert!(tokens.starts_with("ID"), "{tokens}");
    let row = tokens.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("read") && row.contains("2026-01-01T00:00:00Z"),
        "{tokens}"
    );
    let (code, _) = run(
        &server,
        ADMIN,
        &["tenants", "tokens", "acme", "revoke", &id],
    );
    assert_eq!(code, 0);
    assert_eq!(
        server.status(reqwest::Method::GET, "/v1/rules", Some(&made)),
        401
    );

    // The rules table shows what a tenant can read: partitions and the
    // next deadline, not a server-wide seq.
    server.deployed(
        &token,
        "echo",
        &echo_manifest("echo", 1, 3),
        components::ECHO,
    );
    server.post(
        "/v1/events",
        &token,
        json!({"source": "app", "kind": "thing", "payload": {"key": "k"}}),
    );
    server.until("a partition open", || {
        server.get("/v1/rules/echo", &token)["partitions"] == 1
    });
    let (_, out) = run(&server, &token, &["rules"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(!table.contains("CURSOR"), "{table}");
    assert!(
        table.contains("PARTITIONS") && table.contains("NEXT DUE"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("echo ")).unwrap();
    // The window (1 h) closes at 01:00.
    assert!(row.contains("2026-01-01T01:00:00Z"), "{table}");

    // The OpenAPI document lists the two routes outside /v1.
    let doc = ok(server
        .req(reqwest::Method::GET, "/v1/openapi.json", None)
        .send()
        .unwrap());
    for path in ["/metrics", "/healthz"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    server.stop();
}

#[test]
fn tail_says_once_that_the_server_went_away_and_once_that_it_is_back() {
    let f = Fixture::new();
    let (server, token) = f.acme();
    let listen = server.url.strip_prefix("http://").unwrap().to_owned();
    server.post(
        "/v1/events",
        &token,
        json!({"id": "a", "source": "app", "kind": "thing", "payload": {}}),
    );
    let mut tail = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tail", "--json", "--after-seq", "0", "--count", "2"])
        .env("SLUICE_URL", &server.url)
        .env("SLUICE_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it follows (the first event is out), the server stops for
    // about four seconds: with a retry every 0.6 s that was half a dozen
    // lines.
    let mut stdout = std::io::BufReader::new(tail.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    server.stop();
    std::thread::sleep(Duration::from_secs(4));
    let server = Server::start_on(&f.db(), &listen, &[]);
    server.post(
        "/v1/events",
        &token,
        json!({"id": "b", "source": "app", "kind": "thing", "payload": {}}),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tail never saw the second event");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    tail.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut out = first;
    stdout.read_to_string(&mut out).unwrap();
    let ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"]["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"a\"", "\"b\""], "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].contains("trying again until it is back"), "{err}");
    assert!(lines[1].contains("reconnected"), "{err}");
    server.stop();
}
