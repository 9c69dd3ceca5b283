//! The client commands: `deploy`, `emit`, `tail`, `rules`, `fires`,
//! `tenants` — each one or a few HTTP requests to a running `sluice
//! serve`. Failures are one sentence: an unreachable server, a refused
//! token, or the server's own error message.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use serde_json::{Value, json};

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    pub url: String,
    /// A bearer token: a tenant's, or the admin token for `tenants`.
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// One server, one token.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
}

impl Client {
    /// A client of `conn`'s server.
    pub fn new(conn: &Conn) -> anyhow::Result<Self> {
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .build()
            .context("set up the HTTP client")?;
        Ok(Self {
            base: conn.url.trim_end_matches('/').to_owned(),
            token: conn.token.clone(),
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send, and turn every failure into one sentence.
    fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let response = rb.send().map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refused(response))
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach a Sluice server at {}: is `sluice serve` running there? (set --url or SLUICE_URL)",
                self.base
            )
        } else if e.is_timeout() {
            anyhow::anyhow!("the Sluice server at {} did not answer in time", self.base)
        } else {
            anyhow::anyhow!("request to {} failed: {e}", self.base)
        }
    }

    fn refused(&self, response: Response) -> anyhow::Error {
        let status = response.status();
        let body: Value = response.json().unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        match status.as_u16() {
            401 if self.token.is_none() => {
                anyhow::anyhow!("the server needs a token: set --token or SLUICE_TOKEN")
            }
            401 => anyhow::anyhow!(
                "the server refused the token (unknown or revoked): check --token or SLUICE_TOKEN"
            ),
            403 => anyhow::anyhow!("{message}"),
            _ => anyhow::anyhow!("{message} ({status})"),
        }
    }

    fn json(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        let r = self.send(rb)?;
        r.json().context("the server's answer is not JSON")
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(reqwest::Method::GET, path))
    }

    fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let rb = self.request(reqwest::Method::POST, path);
        self.json(match body {
            Some(b) => rb.json(&b),
            None => rb,
        })
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---- deploy ----------------------------------------------------------

/// Find a rule's manifest and component from what the user named.
pub fn locate(path: &Path, manifest: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    if path.is_file() {
        let m = match manifest {
            Some(m) => m.to_owned(),
            None => path.with_file_name("rule.toml"),
        };
        if !m.is_file() {
            bail!(
                "no manifest for {}: pass --manifest PATH/rule.toml",
                path.display()
            );
        }
        return Ok((m, path.to_owned()));
    }
    if !path.is_dir() {
        bail!("{}: no such file or directory", path.display());
    }
    let m = manifest.map_or_else(|| path.join("rule.toml"), Path::to_owned);
    if !m.is_file() {
        bail!("{} has no rule.toml: pass --manifest PATH", path.display());
    }
    let wasm: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    if let [one] = wasm.as_slice() {
        return Ok((m, one.clone()));
    }
    if wasm.len() > 1 {
        bail!(
            "{} holds {} .wasm files: name the component to deploy",
            path.display(),
            wasm.len()
        );
    }
    // A Rust rule's crate: its build output.
    if let Ok(text) = std::fs::read_to_string(path.join("Cargo.toml"))
        && let Ok(cargo) = text.parse::<toml::Table>()
        && let Some(name) = cargo
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
    {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let mut roots = vec![path.join("target"), path.join("../target")];
        if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
            roots.insert(0, PathBuf::from(t));
        }
        for root in roots {
            let candidate = root.join("wasm32-wasip2/release").join(&file);
            if candidate.is_file() {
                return Ok((m, candidate));
            }
        }
        bail!(
            "{} is a Rust rule whose component is not built: run `cargo build --release --target wasm32-wasip2` there, or pass the .wasm",
            path.display()
        );
    }
    bail!(
        "{} has no .wasm component: build it and pass its path",
        path.display()
    )
}

/// `sluice deploy`.
pub fn deploy(
    conn: &Conn,
    path: &Path,
    manifest: Option<&Path>,
    reset: bool,
) -> anyhow::Result<()> {
    let (manifest_path, component_path) = locate(path, manifest)?;
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("read {}", manifest_path.display()))?;
    let parsed = crate::manifest::Manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    let bytes = std::fs::read(&component_path)
        .with_context(|| format!("read {}", component_path.display()))?;
    let client = Client::new(conn)?;
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "manifest",
            reqwest::blocking::multipart::Part::text(text).file_name("rule.toml"),
        )
        .part(
            "component",
            reqwest::blocking::multipart::Part::bytes(bytes)
                .file_name("rule.wasm")
                .mime_str("application/wasm")?,
        );
    let path = format!(
        "/v1/rules/{}{}",
        encode(&parsed.name),
        if reset { "?reset=true" } else { "" }
    );
    let v = client.json(client.request(reqwest::Method::PUT, &path).multipart(form))?;
    println!(
        "{} {}@{} ({}, {}; compile {}, load {} ms, swap {} ms)",
        v["outcome"].as_str().unwrap_or("deployed"),
        v["rule"].as_str().unwrap_or_default(),
        v["version"],
        v["kind"].as_str().unwrap_or_default(),
        &v["digest"].as_str().unwrap_or_default()
            [..12.min(v["digest"].as_str().unwrap_or_default().len())],
        v["compile"].as_str().unwrap_or_default(),
        v["load_ms"],
        v["swap_ms"],
    );
    Ok(())
}

// ---- emit ------------------------------------------------------------

/// What `sluice emit` sends.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// NDJSON events from this file (`-` for stdin) instead of one event.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// The event's source.
    #[arg(long, required_unless_present = "file")]
    pub source: Option<String>,
    /// The event's kind.
    #[arg(long, required_unless_present = "file")]
    pub kind: Option<String>,
    /// The payload, a JSON object.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// The idempotency key.
    #[arg(long)]
    pub id: Option<String>,
    /// When it happened (RFC 3339 or ms).
    #[arg(long)]
    pub time: Option<String>,
    /// Events per request when sending a file.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
}

/// `sluice emit`.
pub fn emit(conn: &Conn, args: &EmitArgs) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    let Some(file) = &args.file else {
        let payload: Value = serde_json::from_str(&args.payload)
            .map_err(|e| anyhow::anyhow!("--payload: not JSON: {e}"))?;
        let mut event = json!({"source": args.source, "kind": args.kind, "payload": payload});
        if let Some(id) = &args.id {
            event["id"] = json!(id);
        }
        if let Some(t) = &args.time {
            event["time"] = match t.parse::<i64>() {
                Ok(ms) => json!(ms),
                Err(_) => json!(t),
            };
        }
        let v = send_events(&client, event.to_string(), false)?;
        println!("{}", v);
        return Ok(());
    };
    let (input, size): (Box<dyn Read>, Option<u64>) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let bar = match size {
        Some(n) if n > 1 << 20 => indicatif::ProgressBar::new(n),
        _ => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut lines = BufReader::new(input);
    let (mut accepted, mut duplicates, mut sent_lines, mut line_no) = (0u64, 0u64, 0u64, 0usize);
    let mut batch = String::new();
    let mut batch_first = 1usize;
    let mut n = 0usize;
    let mut flush = |batch: &mut String, n: &mut usize, first: usize| -> anyhow::Result<()> {
        if *n == 0 {
            return Ok(());
        }
        let v = send_events(&client, std::mem::take(batch), true).map_err(|e| {
            anyhow::anyhow!(
                "{e} (in the batch starting at line {first}; the batches before it were stored)"
            )
        })?;
        accepted += v["accepted"].as_u64().unwrap_or(0);
        duplicates += v["duplicates"].as_u64().unwrap_or(0);
        sent_lines += *n as u64;
        *n = 0;
        Ok(())
    };
    let mut buf = String::new();
    loop {
        buf.clear();
        let read = lines
            .read_line(&mut buf)
            .with_context(|| format!("read line {}", line_no + 1))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        bar.inc(read as u64);
        if buf.trim().is_empty() {
            continue;
        }
        if n == 0 {
            batch_first = line_no;
        }
        batch.push_str(buf.trim_end());
        batch.push('\n');
        n += 1;
        if n >= args.batch.max(1) {
            flush(&mut batch, &mut n, batch_first)?;
            bar.set_message(format!("{line_no} lines"));
        }
    }
    flush(&mut batch, &mut n, batch_first)?;
    bar.finish_and_clear();
    println!(
        "{}",
        json!({"lines": sent_lines, "accepted": accepted, "duplicates": duplicates})
    );
    Ok(())
}

/// POST events, waiting out 429s as the server asks.
fn send_events(client: &Client, body: String, ndjson: bool) -> anyhow::Result<Value> {
    loop {
        let rb = client
            .request(reqwest::Method::POST, "/v1/events")
            .header(
                reqwest::header::CONTENT_TYPE,
                if ndjson {
                    "application/x-ndjson"
                } else {
                    "application/json"
                },
            )
            .body(body.clone());
        let response = rb.send().map_err(|e| client.unreachable(&e))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            std::thread::sleep(Duration::from_secs(wait));
            continue;
        }
        if !response.status().is_success() {
            return Err(client.refused(response));
        }
        return response.json().context("the server's answer is not JSON");
    }
}

// ---- tail ------------------------------------------------------------

/// What `sluice tail` follows.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start after this seq (default: only what comes from now on; 0 for
    /// the whole log).
    #[arg(long)]
    pub after_seq: Option<u64>,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this rule's outputs and records.
    #[arg(long)]
    pub rule: Option<String>,
    /// Print each item as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many items.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `sluice tail`: follow the feed, reconnecting with the last seq seen.
pub fn tail(conn: &Conn, args: &TailArgs) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    // Without --after-seq: only what comes from now on (until the first
    // item arrives, a reconnect starts from the end again).
    let mut last = args.after_seq;
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let mut query = vec![match last {
            Some(seq) => format!("after_seq={seq}"),
            None => "live=true".to_owned(),
        }];
        for (k, v) in [
            ("source", &args.source),
            ("kind", &args.kind),
            ("rule", &args.rule),
        ] {
            if let Some(v) = v {
                query.push(format!("{k}={}", encode(v)));
            }
        }
        let rb = client.request(
            reqwest::Method::GET,
            &format!("/v1/feed?{}", query.join("&")),
        );
        let response = match rb.send() {
            Ok(r) if r.status().is_client_error() => return Err(client.refused(r)),
            Ok(r) if r.status().is_success() => r,
            Ok(r) if seen > 0 => {
                eprintln!("sluice tail: {}; reconnecting", client.refused(r));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Ok(r) => return Err(client.refused(r)),
            Err(e) if seen > 0 => {
                let e = client.unreachable(&e);
                eprintln!("sluice tail: {e}; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(client.unreachable(&e)),
        };
        let mut reader = BufReader::new(response);
        let (mut event, mut id, mut data) = (String::new(), None::<u64>, String::new());
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if let Some(seq) = id.take() {
                    last = Some(seq);
                    let item: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if args.json {
                        writeln!(out, "{}", json!({"type": event, "event": item}))?;
                    } else {
                        writeln!(out, "{}", pretty(&event, &item))?;
                    }
                    out.flush()?;
                    seen += 1;
                    if args.count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
                event.clear();
                data.clear();
                continue;
            }
            if let Some(v) = l.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        // The server closed the stream (a restart, say): follow on.
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pretty(event: &str, e: &Value) -> String {
    let time = e["time"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    format!(
        "#{:<6} {time} {:<6} {:<18} {:<22} {}",
        e["seq"].to_string(),
        event,
        e["source"].as_str().unwrap_or_default(),
        e["kind"].as_str().unwrap_or_default(),
        e["payload"]
    )
}

// ---- rules, fires, tenants -------------------------------------------

/// `sluice rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// List the tenant's rules.
    Ls,
    /// Show one rule: version, trigger, status, counters, last error.
    Show {
        /// The rule.
        name: String,
    },
    /// Pause a rule.
    Pause {
        /// The rule.
        name: String,
    },
    /// Resume a paused or suspended rule.
    Resume {
        /// The rule.
        name: String,
    },
    /// Undeploy a rule.
    Rm {
        /// The rule.
        name: String,
        /// fire (open windows fire now) or discard (they are dropped).
        #[arg(long, default_value = "fire")]
        drain: String,
    },
}

/// `sluice rules`.
pub fn rules(conn: &Conn, cmd: Option<&RulesCmd>, as_json: bool) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    match cmd.unwrap_or(&RulesCmd::Ls) {
        RulesCmd::Ls => {
            let v = client.get("/v1/rules")?;
            if as_json {
                print_json(&v);
                return Ok(());
            }
            let rules: Vec<&Value> = v.as_array().into_iter().flatten().collect();
            // The node column shows on several nodes only.
            let nodes = rules.iter().any(|r| r["node"].is_string());
            let node = |r: &Value| {
                if nodes {
                    format!(" {}", r["node"].as_str().unwrap_or("-"))
                } else {
                    String::new()
                }
            };
            println!(
                "{:<24} {:>7} {:<9} {:<10} {:>8} {:>8} {:>6}{}",
                "NAME",
                "VERSION",
                "KIND",
                "STATUS",
                "CURSOR",
                "PENDING",
                "DEAD",
                if nodes { " NODE" } else { "" }
            );
            for r in rules {
                println!(
                    "{:<24} {:>7} {:<9} {:<10} {:>8} {:>8} {:>6}{}",
                    r["name"].as_str().unwrap_or_default(),
                    r["version"].to_string(),
                    r["kind"].as_str().unwrap_or_default(),
                    r["status"].as_str().unwrap_or_default(),
                    r["cursor"].to_string(),
                    r["pending_fires"].to_string(),
                    r["dead_letters"].to_string(),
                    node(r)
                );
            }
        }
        RulesCmd::Show { name } => print_json(&client.get(&format!("/v1/rules/{}", encode(name)))?),
        RulesCmd::Pause { name } => {
            let v = client.post(&format!("/v1/rules/{}/pause", encode(name)), None)?;
            println!("{} is {}", name, v["status"].as_str().unwrap_or("paused"));
        }
        RulesCmd::Resume { name } => {
            let v = client.post(&format!("/v1/rules/{}/resume", encode(name)), None)?;
            println!("{} is {}", name, v["status"].as_str().unwrap_or("active"));
        }
        RulesCmd::Rm { name, drain } => {
            client.json(client.request(
                reqwest::Method::DELETE,
                &format!("/v1/rules/{}?drain={}", encode(name), encode(drain)),
            ))?;
            println!("{name} undeployed (drain = {drain})");
        }
    }
    Ok(())
}

/// `sluice cluster`: one line per node — id, address, live, seconds since
/// its heartbeat, how many rules it runs — then the rules by node.
pub fn cluster(conn: &Conn, as_json: bool) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    let v = client.get("/v1/cluster")?;
    if as_json {
        print_json(&v);
        return Ok(());
    }
    let newest = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["heartbeat"].as_i64())
        .max()
        .unwrap_or(0);
    println!(
        "{:<16} {:<28} {:<5} {:>10} {:>6}",
        "NODE", "ADDRESS", "LIVE", "HEARTBEAT", "RULES"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let me = if n["id"] == v["node"] {
            " (this one)"
        } else {
            ""
        };
        println!(
            "{:<16} {:<28} {:<5} {:>9.1}s {:>6}{me}",
            n["id"].as_str().unwrap_or_default(),
            n["addr"].as_str().unwrap_or_default(),
            if n["live"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            (newest - n["heartbeat"].as_i64().unwrap_or(newest)) as f64 / 1000.0,
            n["rules"].as_array().map_or(0, Vec::len)
        );
    }
    for n in v["nodes"].as_array().into_iter().flatten() {
        let rules: Vec<&str> = n["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !rules.is_empty() {
            println!(
                "{}: {}",
                n["id"].as_str().unwrap_or_default(),
                rules.join(" ")
            );
        }
    }
    Ok(())
}

/// `sluice fires …`.
#[derive(Debug, Subcommand)]
pub enum FiresCmd {
    /// Run a dead letter again.
    Redrive {
        /// The fire id.
        id: String,
    },
    /// Drop a dead letter.
    Discard {
        /// The fire id.
        id: String,
    },
}

/// `sluice fires`.
pub fn fires(
    conn: &Conn,
    cmd: Option<&FiresCmd>,
    dead: bool,
    rule: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    match cmd {
        Some(FiresCmd::Redrive { id }) => {
            client.post(&format!("/v1/fires/{}/redrive", encode(id)), None)?;
            println!("{id} re-driven");
        }
        Some(FiresCmd::Discard { id }) => {
            client.json(client.request(
                reqwest::Method::DELETE,
                &format!("/v1/fires/{}", encode(id)),
            ))?;
            println!("{id} discarded");
        }
        None => {
            let mut path = String::from("/v1/fires?");
            if dead {
                path.push_str("status=dead&");
            }
            if let Some(r) = rule {
                path.push_str(&format!("rule={}&", encode(r)));
            }
            let v = client.get(path.trim_end_matches(['&', '?']))?;
            if as_json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<36} {:<20} {:<8} {:>8} {:<16} ERROR",
                "FIRE", "RULE", "STATUS", "ATTEMPTS", "PARTITION"
            );
            for f in v.as_array().into_iter().flatten() {
                println!(
                    "{:<36} {:<20} {:<8} {:>8} {:<16} {}",
                    f["fire_id"].as_str().unwrap_or_default(),
                    f["rule"].as_str().unwrap_or_default(),
                    f["status"].as_str().unwrap_or_default(),
                    f["attempts"].to_string(),
                    f["partition"].as_str().unwrap_or("-"),
                    f["error"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// `sluice tenants …` (admin token).
#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    /// Create a tenant; prints its first token.
    Create {
        /// The tenant's name.
        name: String,
        /// Quotas as JSON (defaults for what is left out).
        #[arg(long)]
        quotas: Option<String>,
    },
    /// List tenants.
    Ls,
    /// Delete a tenant: its rules are undeployed, its tokens revoked; its
    /// name is not given out again.
    Rm {
        /// The tenant.
        name: String,
        /// fire (open windows fire now) or discard (they are dropped).
        #[arg(long, default_value = "fire")]
        drain: String,
    },
    /// A tenant's tokens: list them, make one, or revoke one.
    Tokens {
        /// The tenant.
        name: String,
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<TokenCmd>,
    },
}

/// `sluice tenants tokens NAME …`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List the tenant's tokens.
    Ls,
    /// Make a new token; it is printed this once.
    Create {
        /// What it may do: ingest (send events), read, deploy (change
        /// rules). Repeat for several; default: all three.
        #[arg(long = "scope", value_parser = ["ingest", "read", "deploy"])]
        scopes: Vec<String>,
    },
    /// Revoke a token; it stops working at once.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `sluice tenants`.
pub fn tenants(conn: &Conn, cmd: &TenantsCmd) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    match cmd {
        TenantsCmd::Create { name, quotas } => {
            let mut body = json!({"name": name});
            if let Some(q) = quotas {
                body["quotas"] = serde_json::from_str(q)
                    .map_err(|e| anyhow::anyhow!("--quotas: not JSON: {e}"))?;
            }
            let v = client.post("/v1/tenants", Some(body))?;
            println!("tenant {name} created; its token (shown once):");
            println!("{}", v["token"]["token"].as_str().unwrap_or_default());
        }
        TenantsCmd::Ls => print_json(&client.get("/v1/tenants")?),
        TenantsCmd::Rm { name, drain } => {
            client.json(client.request(
                reqwest::Method::DELETE,
                &format!("/v1/tenants/{}?drain={}", encode(name), encode(drain)),
            ))?;
            println!("tenant {name} deleted (its rules drained: {drain})");
        }
        TenantsCmd::Tokens { name, action } => {
            let base = format!("/v1/tenants/{}/tokens", encode(name));
            match action.as_ref().unwrap_or(&TokenCmd::Ls) {
                TokenCmd::Ls => print_json(&client.get(&base)?),
                TokenCmd::Create { scopes } => {
                    let body = (!scopes.is_empty()).then(|| json!({"scopes": scopes}));
                    let v = client.post(&base, body)?;
                    println!("{}", v["token"].as_str().unwrap_or_default());
                }
                TokenCmd::Revoke { id } => {
                    client.json(
                        client.request(reqwest::Method::DELETE, &format!("{base}/{}", encode(id))),
                    )?;
                    println!("token {id} of {name} revoked");
                }
            }
        }
    }
    Ok(())
}
