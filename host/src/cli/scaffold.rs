//! `sluice new` and `sluice build`: a rule project from a template, and
//! its component built with its language's own tools.
//!
//! A template is one trigger (`batch`, `dwell`, `schedule`) written in one
//! language (Rust, Python, JavaScript, C): the manifest, sample events and
//! the scenario with its expected report are the trigger's and the same in
//! every language; the source is the language's. The project carries the
//! SDK of the binary that wrote it (`sdk/`), so it builds on its own,
//! wherever it is.
//!
//! The expected reports (`templates/triggers/*/expected.ndjson`) are the
//! Rust template's run under the name `example`. A project of another name
//! gets the same lines with its name and its fire ids, which are derived
//! from the rule's name ([`crate::records::fire_id`]); rendering checks
//! that it derives the stored ids before it derives new ones. To write
//! them again after a template changes: `sluice new example --lang rust
//! --trigger T`, then `sluice build example` and `sluice test example
//! --expect example/expected.ndjson --bless`, and copy the file here.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::records::{fire_id, partition_part};

/// The language of a rule project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `sluice-sdk` crate (cargo).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Javascript,
    /// C, with clang, wasi-libc and wit-bindgen.
    C,
}

/// The trigger a template is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Trigger {
    /// Events grouped per partition, fired by count or by a window.
    Batch,
    /// Memberships, fired after a time without a sign of life.
    Dwell,
    /// A cron schedule, fired with the events since the last tick.
    Schedule,
}

/// `sluice new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The rule's name (a-z, 0-9, - and _, starting with a letter); also
    /// the project's directory unless --dir says otherwise.
    pub name: String,
    /// The language the rule is written in.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// What runs the rule.
    #[arg(long, value_enum, default_value = "batch")]
    pub trigger: Trigger,
    /// Where to write the project (default: ./NAME). It must not exist,
    /// or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `sluice build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The rule project (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

// ---- the templates ---------------------------------------------------

struct TriggerFiles {
    manifest: &'static str,
    scenario: &'static str,
    events: &'static str,
    expected: &'static str,
    /// One sentence for the README.
    what: &'static str,
}

fn trigger_files(t: Trigger) -> TriggerFiles {
    match t {
        Trigger::Batch => TriggerFiles {
            manifest: include_str!("../../templates/triggers/batch/rule.toml"),
            scenario: include_str!("../../templates/triggers/batch/scenario.ndjson"),
            events: include_str!("../../templates/triggers/batch/events.ndjson"),
            expected: include_str!("../../templates/triggers/batch/expected.ndjson"),
            what: "a batch rule: orders are grouped per customer, and a batch fires after 3 orders or an hour after its first, whichever comes first; the handler emits one `orders.batch` summary per batch",
        },
        Trigger::Dwell => TriggerFiles {
            manifest: include_str!("../../templates/triggers/dwell/rule.toml"),
            scenario: include_str!("../../templates/triggers/dwell/scenario.ndjson"),
            events: include_str!("../../templates/triggers/dwell/events.ndjson"),
            expected: include_str!("../../templates/triggers/dwell/expected.ndjson"),
            what: "a dwell rule that notices abandoned carts: a cart is a member from `cart.created` until `cart.checked_out`, every other cart event restarts its clock, and 30 minutes without one fires; the handler emits `cart.abandoned`",
        },
        Trigger::Schedule => TriggerFiles {
            manifest: include_str!("../../templates/triggers/schedule/rule.toml"),
            scenario: include_str!("../../templates/triggers/schedule/scenario.ndjson"),
            events: include_str!("../../templates/triggers/schedule/events.ndjson"),
            expected: include_str!("../../templates/triggers/schedule/expected.ndjson"),
            what: "a schedule rule: at the top of every hour (UTC) the handler gets the sign-ups since the previous tick and emits one `signups.hourly` count, also for an hour without any",
        },
    }
}

/// The rule's source: its path in the project and its text.
fn source(lang: Lang, t: Trigger) -> (&'static str, &'static str) {
    use Trigger::*;
    match lang {
        Lang::Rust => (
            "src/lib.rs",
            match t {
                Batch => include_str!("../../templates/rust/batch.rs"),
                Dwell => include_str!("../../templates/rust/dwell.rs"),
                Schedule => include_str!("../../templates/rust/schedule.rs"),
            },
        ),
        Lang::Python => (
            "app.py",
            match t {
                Batch => include_str!("../../templates/python/batch.py"),
                Dwell => include_str!("../../templates/python/dwell.py"),
                Schedule => include_str!("../../templates/python/schedule.py"),
            },
        ),
        Lang::Javascript => (
            "app.js",
            match t {
                Batch => include_str!("../../templates/javascript/batch.js"),
                Dwell => include_str!("../../templates/javascript/dwell.js"),
                Schedule => include_str!("../../templates/javascript/schedule.js"),
            },
        ),
        Lang::C => (
            "rule.c",
            match t {
                Batch => include_str!("../../templates/c/batch.c"),
                Dwell => include_str!("../../templates/c/dwell.c"),
                Schedule => include_str!("../../templates/c/schedule.c"),
            },
        ),
    }
}

/// The SDK and build files of a language, as (path, text): the SDK as
/// it is, the build files for rule `name`.
fn language_files(lang: Lang, name: &str) -> Vec<(&'static str, String)> {
    let rule_wit = include_str!("../../../wit/rule.wit");
    let version = env!("CARGO_PKG_VERSION");
    let mut files = vec![("sdk/wit/rule.wit", rule_wit.to_owned())];
    match lang {
        Lang::Rust => {
            files.push((
                "Cargo.toml",
                fill(include_str!("../../templates/rust/Cargo.toml"), name),
            ));
            files.push((
                "sdk/rust/Cargo.toml",
                include_str!("../../templates/rust/sdk-Cargo.toml").replace("{{version}}", version),
            ));
            // Its bindings are generated from "../wit": sdk/wit.
            files.push((
                "sdk/rust/src/lib.rs",
                include_str!("../../../guest-sdk/src/lib.rs").into(),
            ));
            // What the SDK reads JSON pointers with (`Event::field`).
            files.push((
                "sdk/fields/Cargo.toml",
                include_str!("../../templates/rust/fields-Cargo.toml")
                    .replace("{{version}}", version),
            ));
            files.push((
                "sdk/fields/src/lib.rs",
                include_str!("../../../fields/src/lib.rs").into(),
            ));
        }
        Lang::Python => {
            files.push((
                "requirements.txt",
                include_str!("../../../examples/python/requirements.txt").into(),
            ));
            files.push((
                "sdk/sluice_rule.py",
                include_str!("../../../examples/python/sluice_rule.py").into(),
            ));
            files.push((
                "sdk/wit-python/rule-python.wit",
                include_str!("../../../examples/python/wit/rule-python.wit").into(),
            ));
            files.push((
                "sdk/adapter/Cargo.toml",
                include_str!("../../templates/python/adapter-Cargo.toml").into(),
            ));
            let adapter = include_str!("../../../examples/python/adapter/src/lib.rs");
            let from = r#"path: ["../../../wit", "../wit"]"#;
            assert!(adapter.contains(from), "the adapter's WIT paths moved");
            files.push((
                "sdk/adapter/src/lib.rs",
                adapter.replace(from, r#"path: ["../wit", "../wit-python"]"#),
            ));
        }
        Lang::Javascript => {
            files.push((
                "package.json",
                fill(
                    include_str!("../../templates/javascript/package.json"),
                    name,
                ),
            ));
            files.push((
                "sdk/sluice.js",
                include_str!("../../../examples/javascript/sluice.js").into(),
            ));
        }
        Lang::C => {
            for (path, text) in [
                ("sdk/sluice.h", include_str!("../../../examples/c/sluice.h")),
                ("sdk/sluice.c", include_str!("../../../examples/c/sluice.c")),
                ("sdk/json.h", include_str!("../../../examples/c/json.h")),
                ("sdk/json.c", include_str!("../../../examples/c/json.c")),
            ] {
                files.push((path, text.into()));
            }
        }
    }
    files
}

/// How to build and what it needs, for the README.
fn build_notes(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => {
            "Needs Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`). `sluice build` runs `cargo build --release --target wasm32-wasip2`; the component is `target/wasm32-wasip2/release/{{crate}}.wasm` (or under `$CARGO_TARGET_DIR`), where `sluice test` and `sluice deploy` find it."
        }
        Lang::Python => {
            "Needs Python 3.11 or later, and Rust with the `wasm32-wasip2` target (for the adapter in `sdk/adapter`, see `sdk/wit-python/rule-python.wit`). Install the tools once:\n\n```sh\npython3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # componentize-py, pinned\ncargo install wac-cli --version 0.12.0 --no-default-features --locked\n```\n\n`sluice build` runs componentize-py (from `.venv` or `PATH`), builds the adapter with cargo and joins the two with `wac plug` into `{{name}}.wasm`."
        }
        Lang::Javascript => {
            "Needs Node.js 18 or later. Install the tools once with `npm install` (`package.json` pins componentize-js). `sluice build` runs componentize-js (from `node_modules` or `PATH`) without the WASI features a rule may not use (`--disable http fetch-event`) into `{{name}}.wasm`."
        }
        Lang::C => {
            "Needs clang with the wasm32 WASI target, wasi-libc and lld (on Debian: `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`), `wit-bindgen` (`cargo install wit-bindgen-cli --version 0.61.1 --locked`) and Rust's stable toolchain, whose `wasm-component-ld` links the component. `sluice build` generates the bindings from `sdk/wit`, compiles `rule.c` with the SDK (`sdk/`) and links `{{name}}.wasm`."
        }
    }
}

/// Language names as the user types them.
fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Javascript => "JavaScript",
        Lang::C => "C",
    }
}

/// `my-rule` -> `MyRule`: the rule's type or class name.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{Type}}", &type_name(name))
        .replace("{{crate}}", &name.replace('-', "_"))
}

/// Every file of a new project, as (path, text).
pub fn project(name: &str, lang: Lang, t: Trigger) -> anyhow::Result<Vec<(String, String)>> {
    crate::names::check("the rule's name", name).map_err(anyhow::Error::msg)?;
    let tf = trigger_files(t);
    let (src_path, src) = source(lang, t);
    let mut files: Vec<(String, String)> = vec![
        ("rule.toml".into(), fill(tf.manifest, name)),
        (src_path.into(), fill(src, name)),
        ("scenario.ndjson".into(), tf.scenario.into()),
        ("events.ndjson".into(), tf.events.into()),
        ("expected.ndjson".into(), expected_for(tf.expected, name)?),
        (".gitignore".into(), GITIGNORE.into()),
        ("README.md".into(), readme(name, lang, t, src_path, tf.what)),
    ];
    for (path, text) in language_files(lang, name) {
        files.push((path.into(), text));
    }
    Ok(files)
}

const GITIGNORE: &str = "# Build output and tools (sluice build, npm install, the virtualenv).\n/target/\n/*.wasm\n/node_modules/\n/.venv/\n__pycache__/\n";

fn readme(name: &str, lang: Lang, t: Trigger, src: &str, what: &str) -> String {
    let trigger = match t {
        Trigger::Batch => "batch",
        Trigger::Dwell => "dwell",
        Trigger::Schedule => "schedule",
    };
    let sdk = match lang {
        Lang::Rust => "`sdk/rust` (the `sluice-sdk` crate)",
        Lang::Python => "`sdk/sluice_rule.py`",
        Lang::Javascript => "`sdk/sluice.js`",
        Lang::C => "`sdk/sluice.h` and `sdk/json.h`",
    };
    let notes = fill(build_notes(lang), name);
    format!(
        "# {name}

{what_cap}. Written in {lang} by `sluice new {name} --lang {lang_arg} --trigger {trigger}`.

| file | what it is |
| --- | --- |
| `rule.toml` | the manifest: the rule's name, its trigger, its limits and retries |
| `{src}` | the rule: which events it takes, their partition, and the handler |
| `scenario.ndjson` | events on a virtual clock (`{{\"advance\": …}}` moves it) for `sluice test` |
| `expected.ndjson` | what the scenario must give: fires and outputs, one JSON line each |
| `events.ndjson` | the same events without times, to send to a server |
| `sdk/` | the SDK: {sdk}, and the WIT interface the engine speaks |

## Build and test

```sh
sluice build
sluice test . --expect expected.ndjson      # ok: N lines as expected
sluice test .                               # the run as a timeline
sluice test . --watch                       # build and run again on every change
```

{notes}

After a change that should change the report, look at the timeline,
then take the run as expected with `sluice test . --expect expected.ndjson --bless`.

## Deploy

With a server running (`sluice serve`) and a tenant's token with the
deploy scope in `SLUICE_TOKEN`:

```sh
sluice deploy .
sluice emit -f events.ndjson
sluice tail
```
",
        what_cap = capitalise(what),
        lang = lang_name(lang),
        lang_arg = lang_arg(lang),
    )
}

fn lang_arg(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Javascript => "javascript",
        Lang::C => "c",
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The name the stored expected reports were written under.
const TEMPLATE_NAME: &str = "example";

/// The stored expected report, for a rule named `name`.
fn expected_for(template: &str, name: &str) -> anyhow::Result<String> {
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut lines = Vec::new();
    for line in template.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: Value = serde_json::from_str(line).context("a template's expected report")?;
        if v["type"] == "fire" {
            let old = v["fire_id"].as_str().unwrap_or_default().to_owned();
            let derived = report_fire_id(TEMPLATE_NAME, &v);
            if derived.as_deref() != Some(old.as_str()) {
                bail!(
                    "a template's expected report is out of date: cannot derive fire {old} (write it again, see cli/scaffold.rs)"
                );
            }
            let new = report_fire_id(name, &v).unwrap_or_default();
            renamed.push((old, new));
        }
        if v["rule"] == TEMPLATE_NAME {
            v["rule"] = name.into();
        }
        if let Some(id) = v["fire_id"].as_str()
            && let Some((_, new)) = renamed.iter().find(|(old, _)| old == id)
        {
            v["fire_id"] = new.clone().into();
        }
        lines.push(v.to_string());
    }
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// A fire line's id, derived as the trigger derives it from the fire's
/// partition and reason (the parts `triggers/{batch,dwell,schedule}.rs`
/// give [`fire_id`]).
fn report_fire_id(rule: &str, fire: &Value) -> Option<String> {
    let partition = fire["partition"].as_str().map(str::to_owned);
    let part = partition_part(&partition);
    let events: Vec<u64> = fire["events"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let parts: Vec<String> = match fire["reason"].as_str()? {
        "count-reached" | "window-expired" => vec![part, events.first()?.to_string()],
        "schedule" => vec![part, fire["tick"].as_i64()?.to_string()],
        "dwell" => vec![
            part,
            fire["epoch"].as_u64()?.to_string(),
            events.last()?.to_string(),
            fire["label"].as_str()?.to_owned(),
            fire["ordinal"].as_u64()?.to_string(),
        ],
        _ => return None,
    };
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Some(fire_id(rule, &parts))
}

/// `sluice new`.
pub fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let files = project(&args.name, args.lang, args.trigger)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && (!dir.is_dir()
            || std::fs::read_dir(&dir)
                .with_context(|| format!("read {}", dir.display()))?
                .next()
                .is_some())
    {
        bail!(
            "{} already exists and is not empty: choose another name, or --dir",
            dir.display()
        );
    }
    for (path, text) in &files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    }
    let shown = dir.display();
    println!(
        "wrote {} ({} rule in {}, {} files)",
        shown,
        match args.trigger {
            Trigger::Batch => "a batch",
            Trigger::Dwell => "a dwell",
            Trigger::Schedule => "a schedule",
        },
        lang_name(args.lang),
        files.len()
    );
    println!("next:");
    println!("  cd {shown}");
    if let Some(setup) = setup_hint(args.lang) {
        println!("  {setup}");
    }
    println!("  sluice build");
    println!("  sluice test . --expect expected.ndjson");
    Ok(ExitCode::SUCCESS)
}

/// The one-time tool install a language needs, if any.
fn setup_hint(lang: Lang) -> Option<&'static str> {
    match lang {
        Lang::Rust | Lang::C => None,
        Lang::Python => Some("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"),
        Lang::Javascript => Some("npm install"),
    }
}

// ---- sluice build ----------------------------------------------------

/// `sluice build`.
pub fn build_command(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let out = build(&args.dir)?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("built {} ({} KiB)", out.display(), size.div_ceil(1024));
    Ok(ExitCode::SUCCESS)
}

/// The language of the project at `dir`, from its files.
pub fn detect(dir: &Path) -> anyhow::Result<Lang> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    for (file, lang) in [
        ("Cargo.toml", Lang::Rust),
        ("app.py", Lang::Python),
        ("app.js", Lang::Javascript),
        ("rule.c", Lang::C),
    ] {
        if dir.join(file).is_file() {
            return Ok(lang);
        }
    }
    bail!(
        "{}: no rule to build (looked for Cargo.toml, app.py, app.js and rule.c; `sluice new` writes a project)",
        dir.display()
    )
}

/// Build the project at `dir` with its language's tools; the component's
/// path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let lang = detect(dir)?;
    eprintln!("building {} ({})", dir.display(), lang_name(lang));
    let dir = &std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    match lang {
        Lang::Rust => cargo_component(dir, &dir.join("Cargo.toml")),
        Lang::Python => build_python(dir),
        Lang::Javascript => build_javascript(dir),
        Lang::C => build_c(dir),
    }
}

/// The rule's name from its manifest: the component's file name.
fn rule_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("rule.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    table
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: no name", path.display()))
}

/// Run a tool; its output goes to the terminal. `what` names it in errors.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// A tool: the first of `local` that exists, else `name` on PATH.
fn tool(name: &str, local: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = local.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `cargo build --release --target wasm32-wasip2` of a crate; the
/// component cargo reports having written.
fn cargo_component(dir: &Path, manifest: &Path) -> anyhow::Result<PathBuf> {
    if tool("cargo", &[]).is_none() {
        bail!(
            "cargo was not found: install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`"
        );
    }
    if let Some(rustup) = tool("rustup", &[])
        && let Ok(out) = Command::new(rustup)
            .args(["target", "list", "--installed"])
            .current_dir(dir)
            .output()
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
    {
        bail!(
            "Rust's wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`"
        );
    }
    let mut child = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(manifest)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("could not run cargo")?;
    let mut wasm = None;
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("read cargo's output")?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let Some(files) = msg["filenames"].as_array()
            && let Some(f) = files
                .iter()
                .filter_map(Value::as_str)
                .find(|f| f.ends_with(".wasm"))
        {
            wasm = Some(PathBuf::from(f));
        }
    }
    let status = child.wait().context("wait for cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    wasm.context("cargo built no .wasm (is the crate's type cdylib?)")
}

fn build_python(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = rule_name(dir)?;
    let componentize = tool(
        "componentize-py",
        &[dir.join(".venv/bin/componentize-py")],
    )
    .context("componentize-py was not found: install it once with `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt` (in the project), or put it on PATH")?;
    let wac = tool("wac", &[]).context(
        "wac was not found: install it with `cargo install wac-cli --version 0.12.0 --no-default-features --locked`",
    )?;
    let adapter = cargo_component(dir, &dir.join("sdk/adapter/Cargo.toml"))
        .context("building the Python adapter (sdk/adapter)")?;
    let inner = dir.join(format!("target/{name}.inner.wasm"));
    std::fs::create_dir_all(dir.join("target"))?;
    run(
        Command::new(componentize)
            .args(["--quiet", "-d", "sdk/wit", "-d", "sdk/wit-python"])
            .args([
                "-w",
                "sluice:rule-python/python-rule@0.1.0",
                "componentize",
                "app",
            ])
            .args(["-p", ".", "-p", "sdk", "-o"])
            .arg(&inner)
            .current_dir(dir),
        "componentize-py",
    )?;
    let out = dir.join(format!("{name}.wasm"));
    run(
        Command::new(wac)
            .arg("plug")
            .arg(&adapter)
            .arg("--plug")
            .arg(&inner)
            .arg("-o")
            .arg(&out)
            .current_dir(dir),
        "wac plug",
    )?;
    let _ = std::fs::remove_file(&inner);
    Ok(out)
}

fn build_javascript(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = rule_name(dir)?;
    let componentize = tool(
        "componentize-js",
        &[dir.join("node_modules/.bin/componentize-js")],
    )
    .context("componentize-js was not found: run `npm install` in the project (package.json pins it), or put it on PATH")?;
    let out = dir.join(format!("{name}.wasm"));
    run(
        Command::new(componentize)
            .args([
                "app.js",
                "--wit",
                "sdk/wit",
                "--world-name",
                "projected-rule",
            ])
            .args(["--disable", "http", "fetch-event", "-o"])
            .arg(&out)
            .current_dir(dir),
        "componentize-js",
    )?;
    Ok(out)
}

fn build_c(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = rule_name(dir)?;
    let clang = tool("clang", &[]).context(
        "clang was not found: install clang with the wasm32 WASI target (on Debian: `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`)",
    )?;
    let wit_bindgen = tool("wit-bindgen", &[]).context(
        "wit-bindgen was not found: install it with `cargo install wit-bindgen-cli --version 0.61.1 --locked`",
    )?;
    let component_ld = component_ld()?;
    let work = dir.join("target/c");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    run(
        Command::new(wit_bindgen)
            .args([
                "c",
                "sdk/wit",
                "--world",
                "projected-rule",
                "--rename-world",
                "rule",
            ])
            .arg("--out-dir")
            .arg(&work)
            .current_dir(dir),
        "wit-bindgen c",
    )?;
    let strict = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11"];
    let mut objects = vec![work.join("rule_component_type.o")];
    for (src, obj, flags) in [
        ("sdk/json.c", "json.o", &strict[..]),
        ("sdk/sluice.c", "sluice.o", &strict[..]),
        ("rule.c", "rule.o", &strict[..]),
        // The generated bindings are not held to -Werror.
        ("target/c/rule.c", "bindings.o", &["-O2"][..]),
    ] {
        let o = work.join(obj);
        run(
            Command::new(&clang)
                .arg("--target=wasm32-wasi")
                .args(flags)
                .args(["-Isdk", "-Itarget/c", "-c", src, "-o"])
                .arg(&o)
                .current_dir(dir),
            &format!("clang ({src})"),
        )
        .with_context(|| {
            "if clang says it cannot find stdbool.h, string.h or the wasm32 runtime, install wasi-libc and libclang-rt-14-dev-wasm32 (Debian)"
        })?;
        objects.push(o);
    }
    let out = dir.join(format!("{name}.wasm"));
    run(
        Command::new(&clang)
            .args(["--target=wasm32-wasi", "-mexec-model=reactor"])
            .arg(format!("-fuse-ld={}", component_ld.display()))
            .args(["-Wl,--wasi-adapter=reactor", "-Wl,--strip-all"])
            .args(&objects)
            .arg("-o")
            .arg(&out)
            .current_dir(dir),
        "clang (linking the component)",
    )?;
    Ok(out)
}

/// rustup's `wasm-component-ld`, which links C objects into a component.
fn component_ld() -> anyhow::Result<PathBuf> {
    let rustc = |arg: &[&str]| -> Option<String> {
        let out = Command::new("rustc").args(arg).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = rustc(&["--print", "sysroot"]);
    let host = rustc(&["-vV"]).and_then(|v| {
        v.lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
    });
    let (Some(sysroot), Some(host)) = (sysroot, host) else {
        bail!(
            "rustc was not found: C rules are linked with Rust's wasm-component-ld; install Rust with rustup (https://rustup.rs)"
        );
    };
    let ld = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/wasm-component-ld");
    if !ld.is_file() {
        bail!(
            "wasm-component-ld was not found at {} (it ships with rustup's stable toolchain)",
            ld.display()
        );
    }
    Ok(ld)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_with_its_fire_ids() {
        for lang in [Lang::Rust, Lang::Python, Lang::Javascript, Lang::C] {
            for t in [Trigger::Batch, Trigger::Dwell, Trigger::Schedule] {
                let files = project("cart-watch", lang, t).unwrap();
                for (path, text) in &files {
                    assert!(!text.contains("{{"), "{path}: an unfilled placeholder");
                }
                let expected = &files
                    .iter()
                    .find(|(p, _)| p == "expected.ndjson")
                    .unwrap()
                    .1;
                assert!(
                    expected.lines().count() >= 2,
                    "{lang:?} {t:?}: no expected report"
                );
                assert!(!expected.contains("\"rule\":\"example\""));
            }
        }
    }

    #[test]
    fn fire_ids_follow_the_name() {
        let t = trigger_files(Trigger::Batch).expected;
        let a = expected_for(t, "a").unwrap();
        let b = expected_for(t, "b").unwrap();
        assert_ne!(a, b);
        assert_eq!(expected_for(t, TEMPLATE_NAME).unwrap().trim(), {
            let lines: Vec<String> = t
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
                .collect();
            lines.join("\n")
        });
    }

    #[test]
    fn names_and_types() {
        assert_eq!(type_name("cart-watch_2"), "CartWatch2");
        assert!(project("Bad Name", Lang::Rust, Trigger::Batch).is_err());
    }
}
