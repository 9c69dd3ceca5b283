//! The client: how the commands talk to a running `sluice serve`, and
//! the commands that move data — `deploy`, `emit`, `tail`. Failures are
//! one sentence — an unreachable server, a refused token, or the
//! server's own error message — and exit with their own code
//! ([`Failure`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
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

/// Why a command that talks to a server failed, for its exit code: the
/// server refused (3) or could not be reached (4). Every other failure —
/// a bad flag, a missing file — is a usage error (2).
#[derive(Debug)]
pub enum Failure {
    /// The server answered with an error.
    Refused(String),
    /// No answer: nothing listens there, or the connection broke.
    Unreachable(String),
}

impl Failure {
    /// The exit code for `e`: 3 or 4 for a [`Failure`], else 2.
    pub fn exit_code(e: &anyhow::Error) -> u8 {
        match e.chain().find_map(|c| c.downcast_ref::<Failure>()) {
            Some(Failure::Refused(_)) => 3,
            Some(Failure::Unreachable(_)) => 4,
            None => 2,
        }
    }

    /// `e` with `note` appended to its sentence, of the same kind.
    fn noted(e: anyhow::Error, note: &str) -> anyhow::Error {
        match e.downcast::<Failure>() {
            Ok(Failure::Refused(m)) => Failure::Refused(format!("{m} {note}")).into(),
            Ok(Failure::Unreachable(m)) => Failure::Unreachable(format!("{m} {note}")).into(),
            Err(e) => anyhow::anyhow!("{e:#} {note}"),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) | Failure::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// One server, one token.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
}

/// `--url` as a base URL, or a sentence saying how to write it.
fn base_url(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let hint = |why: &str| {
        anyhow::anyhow!(
            "--url {raw:?} {why}: write the server's URL with its scheme, as http://{}",
            trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest)
        )
    };
    match url::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(trimmed.to_owned())
        }
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Err(hint(&format!(
            "is not an http:// or https:// URL (it reads as scheme {:?})",
            u.scheme()
        ))),
        Ok(_) => Err(hint("names no host")),
        Err(e) => Err(hint(&format!("is not a URL ({e})"))),
    }
}

impl Client {
    /// A client of `conn`'s server.
    pub fn new(conn: &Conn) -> anyhow::Result<Self> {
        let base = base_url(&conn.url)?;
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .build()
            .context("set up the HTTP client")?;
        Ok(Self {
            base,
            token: conn.token.clone(),
            http,
        })
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send, and turn every failure into one sentence.
    pub(super) fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let response = rb.send().map_err(|e| self.failed(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refused(response))
    }

    /// A request that got no answer. A server that refuses a request
    /// (a bad token, say) answers before reading a large body and closes
    /// the connection, and the client only sees the connection break: ask
    /// the server who the token is, so the refusal is not lost.
    pub(super) fn failed(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() || e.is_builder() {
            return self.unreachable(e);
        }
        match self.request(reqwest::Method::GET, "/v1/whoami").send() {
            Ok(r) if !r.status().is_success() => self.refused(r),
            _ => self.unreachable(e),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        Failure::Unreachable(if e.is_connect() {
            format!(
                "cannot reach a Sluice server at {}: is `sluice serve` running there? (set --url or SLUICE_URL)",
                self.base
            )
        } else if e.is_timeout() {
            format!("the Sluice server at {} did not answer in time", self.base)
        } else {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            format!(
                "the connection to the Sluice server at {} broke before it answered ({cause})",
                self.base
            )
        })
        .into()
    }

    pub(super) fn refused(&self, response: Response) -> anyhow::Error {
        let status = response.status();
        let body: Value = response.json().unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        Failure::Refused(match status.as_u16() {
            401 if self.token.is_none() => {
                "the server needs a token: set --token or SLUICE_TOKEN".to_owned()
            }
            401 => {
                "the server refused the token (unknown or revoked): check --token or SLUICE_TOKEN"
                    .to_owned()
            }
            403 => message,
            _ => format!("{message} ({status})"),
        })
        .into()
    }

    /// Before a large upload, check that the token may do what it is
    /// for (`scope`, for `what`), so the refusal comes before the bytes.
    fn check_scope(&self, scope: &str, what: &str) -> anyhow::Result<()> {
        let me = self.get("/v1/whoami")?;
        if me["role"] == "admin" {
            return Err(Failure::Refused(format!(
                "{what} acts for a tenant: use one of the tenant's tokens, not the admin token (make one with `sluice tenants tokens TENANT create`)"
            ))
            .into());
        }
        // A server that does not list scopes lets the request say.
        let Some(scopes) = me["scopes"].as_array() else {
            return Ok(());
        };
        if scopes.iter().any(|s| s == scope) {
            return Ok(());
        }
        let has: Vec<&str> = scopes.iter().filter_map(Value::as_str).collect();
        Err(Failure::Refused(format!(
            "{what} needs a token with the {scope} scope; this token of tenant {} has {}",
            me["tenant"].as_str().unwrap_or("?"),
            if has.is_empty() {
                "none".to_owned()
            } else {
                has.join(", ")
            }
        ))
        .into())
    }

    pub(super) fn json(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        let r = self.send(rb)?;
        r.json().context("the server's answer is not JSON")
    }

    pub(super) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(reqwest::Method::GET, path))
    }

    pub(super) fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let rb = self.request(reqwest::Method::POST, path);
        self.json(match body {
            Some(b) => rb.json(&b),
            None => rb,
        })
    }
}

pub(super) fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub(super) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---- deploy ----------------------------------------------------------

/// Find a rule's manifest and component from what the user named.
pub fn locate(path: &Path, manifest: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(m) = manifest
        && !m.is_file()
    {
        bail!("--manifest {}: no such file", m.display());
    }
    if path.is_file() {
        if path.extension().is_some_and(|x| x == "toml") {
            bail!(
                "{} is a manifest: pass the rule's directory, or its component (.wasm) with --manifest {}",
                path.display(),
                path.display()
            );
        }
        let m = match manifest {
            Some(m) => m.to_owned(),
            None => path.with_file_name("rule.toml"),
        };
        if !m.is_file() {
            bail!(
                "no rule.toml beside {} (looked for {}): pass --manifest PATH",
                path.display(),
                m.display()
            );
        }
        return Ok((m, path.to_owned()));
    }
    if !path.is_dir() {
        bail!("{}: no such file or directory", path.display());
    }
    let m = manifest.map_or_else(|| path.join("rule.toml"), Path::to_owned);
    if !m.is_file() {
        bail!(
            "{} has no rule.toml (looked for {}): pass --manifest PATH",
            path.display(),
            m.display()
        );
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
        let looked = build_outputs(path);
        for root in &looked {
            let candidate = root.join(&file);
            if candidate.is_file() {
                return Ok((m, candidate));
            }
        }
        let searched = if looked.is_empty() {
            "found no build directory".to_owned()
        } else {
            let dirs: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
            format!("looked for {file} in {}", dirs.join(", "))
        };
        bail!(
            "{} is a Rust rule whose component is not built ({searched}): run `cargo build --release --target wasm32-wasip2` there, or pass the .wasm",
            path.display(),
        );
    }
    bail!(
        "{} has no .wasm component: build it and pass its path",
        path.display()
    )
}

/// Where a Rust rule's crate at `dir` may have built its component: its
/// own `target`, a workspace's above it, `CARGO_TARGET_DIR`, and the
/// demo's and tests' build directory (`<target>/wasm-guests`).
fn build_outputs(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(&t));
        roots.push(PathBuf::from(t).join("wasm-guests"));
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    for up in dir.ancestors().take(4) {
        roots.push(up.join("target"));
        roots.push(up.join("target/wasm-guests"));
    }
    roots
        .into_iter()
        .map(|r| r.join("wasm32-wasip2/release"))
        .filter(|r| r.is_dir())
        .collect()
}

/// `sluice deploy`.
pub fn deploy(
    conn: &Conn,
    path: &Path,
    manifest: Option<&Path>,
    reset: bool,
    shadow: bool,
) -> anyhow::Result<()> {
    let (manifest_path, component_path) = locate(path, manifest)?;
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("read {}", manifest_path.display()))?;
    let parsed = crate::manifest::Manifest::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    let bytes = std::fs::read(&component_path)
        .with_context(|| format!("read {}", component_path.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!(
            "{} is not a Wasm component (it does not start with \\0asm): build the rule and pass the .wasm it produced",
            component_path.display()
        );
    }
    let client = Client::new(conn)?;
    client.check_scope("deploy", "deploying a rule")?;
    // On a terminal: the upload's progress, then the server's compile
    // (a Python or JavaScript component is 12-19 MB and compiles for
    // seconds).
    let size = bytes.len() as u64;
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{}@{}", parsed.name, parsed.version));
    let upload = Upload {
        bytes: std::io::Cursor::new(bytes),
        bar: bar.clone(),
        ended: false,
    };
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "manifest",
            reqwest::blocking::multipart::Part::text(text).file_name("rule.toml"),
        )
        .part(
            "component",
            reqwest::blocking::multipart::Part::reader_with_length(upload, size)
                .file_name("rule.wasm")
                .mime_str("application/wasm")?,
        );
    let path = format!(
        "/v1/rules/{}{}",
        encode(&parsed.name),
        match (reset, shadow) {
            (true, _) => "?reset=true",
            (_, true) => "?shadow=true",
            _ => "",
        }
    );
    let answer = client.json(client.request(reqwest::Method::PUT, &path).multipart(form));
    bar.finish_and_clear();
    let v = answer?;
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

/// A component being uploaded: moves the progress bar, and once every
/// byte is sent turns it into a spinner while the server compiles.
struct Upload {
    bytes: std::io::Cursor<Vec<u8>>,
    bar: indicatif::ProgressBar,
    ended: bool,
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(buf)?;
        self.bar.inc(n as u64);
        if n == 0 && !self.ended {
            self.ended = true;
            self.bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} uploaded {total_bytes}; the server is compiling and loading {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            self.bar.enable_steady_tick(Duration::from_millis(120));
        }
        Ok(n)
    }
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
        let v = send_events(&client, event.to_string(), false, None)?;
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
    client.check_scope("ingest", "sending events")?;
    // On a terminal: bytes, rate and time left for a file; lines and rate
    // for stdin.
    let bar = match size {
        Some(n) => {
            let bar = indicatif::ProgressBar::new(n);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }
        None => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        }
    };
    let started = std::time::Instant::now();
    let mut lines = BufReader::new(input);
    let (mut accepted, mut duplicates, mut sent_lines, mut line_no) = (0u64, 0u64, 0u64, 0usize);
    let mut batch = String::new();
    let mut batch_first = 1usize;
    let mut n = 0usize;
    let mut flush = |batch: &mut String, n: &mut usize, first: usize| -> anyhow::Result<()> {
        if *n == 0 {
            return Ok(());
        }
        let v = send_events(&client, std::mem::take(batch), true, Some(&bar)).map_err(|e| {
            Failure::noted(
                e,
                &format!(
                    "(in the batch starting at line {first}; the batches before it were stored)"
                ),
            )
        })?;
        accepted += v["accepted"].as_u64().unwrap_or(0);
        duplicates += v["duplicates"].as_u64().unwrap_or(0);
        sent_lines += *n as u64;
        *n = 0;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!(
            "{sent_lines} events sent, {:.0}/s",
            sent_lines as f64 / secs
        ));
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

/// POST events, waiting out 429s as the server asks (and saying so: on
/// the progress bar, or once per wait on stderr).
fn send_events(
    client: &Client,
    body: String,
    ndjson: bool,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Value> {
    let mut waited = 0u64;
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
        let response = rb.send().map_err(|e| client.failed(&e))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            let note = format!(
                "the server is over the tenant's ingest rate (429): waiting {wait} s as it asks"
            );
            match bar {
                Some(bar) if !bar.is_hidden() => bar.set_message(note),
                _ if waited == 0 => eprintln!("sluice emit: {note}"),
                _ => {}
            }
            waited += wait;
            std::thread::sleep(Duration::from_secs(wait));
            continue;
        }
        if waited > 0 && bar.is_none_or(|b| b.is_hidden()) {
            eprintln!("sluice emit: sending again after waiting {waited} s");
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
    // Since when, and how long the next pause is, while the server is
    // away.
    let mut down: Option<(std::time::Instant, Duration)> = None;
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
        // While the server is away (a restart), say so once, try again
        // with a growing pause, and say when it is back.
        let response = match rb.send() {
            Ok(r) if r.status().is_client_error() => return Err(client.refused(r)),
            Ok(r) if r.status().is_success() => r,
            Ok(r) if seen > 0 => {
                away(&mut down, client.refused(r));
                continue;
            }
            Ok(r) => return Err(client.refused(r)),
            Err(e) if seen > 0 => {
                away(&mut down, client.failed(&e));
                continue;
            }
            Err(e) => return Err(client.failed(&e)),
        };
        if let Some((since, _)) = down.take() {
            eprintln!(
                "sluice tail: reconnected after {:.0} s; following on from where it stopped",
                since.elapsed().as_secs_f64()
            );
        }
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

/// The feed is away: say so the first time, then wait (1 s, doubling
/// up to 10 s) before trying again.
fn away(down: &mut Option<(std::time::Instant, Duration)>, why: anyhow::Error) {
    let pause = match down {
        None => {
            eprintln!("sluice tail: {why}; trying again until it is back");
            Duration::from_secs(1)
        }
        Some((_, pause)) => (*pause * 2).min(Duration::from_secs(10)),
    };
    let since = down.map_or_else(std::time::Instant::now, |(at, _)| at);
    *down = Some((since, pause));
    std::thread::sleep(pause);
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
