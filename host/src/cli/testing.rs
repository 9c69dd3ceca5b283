//! `sluice test` for people: the run as a timeline on a terminal (JSON
//! lines otherwise, or with `--json`), compared with an expected file
//! (`--expect`, a diff and exit 1 when they differ; `--bless` writes it),
//! and again on every change (`--watch`, rebuilding a Rust rule first).
//! The run itself is [`crate::offline`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde_json::Value;

use super::client::locate;

/// What `sluice test` runs, and how it reports.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The rule: its directory (rule.toml, the component or a Rust
    /// crate, scenario.ndjson) or its component (.wasm).
    pub rule: PathBuf,
    /// The rule's manifest (default: rule.toml in the rule's directory).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Events and directives, as NDJSON (default: scenario.ndjson in the
    /// rule's directory).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// More rules to run alongside, as MANIFEST=COMPONENT (repeatable):
    /// their outputs and the first rule's feed each other.
    #[arg(long = "rule")]
    pub also: Vec<String>,
    /// Where compiled components are cached.
    #[arg(long, env = "SLUICE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How the report prints.
    #[command(flatten)]
    pub format: Format,
    /// Compare the run's JSON lines with this file: print where they
    /// differ and exit 1 when they do (key order and spacing aside).
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Write the run's JSON lines to the --expect file instead.
    #[arg(long, requires = "expect")]
    pub bless: bool,
    /// Run again each time the rule's files change; a Rust rule's crate
    /// is rebuilt first when its sources change. Stop with Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

/// How a report prints: the timeline for people, JSON lines for
/// programs (`sluice test`, `sluice replay`).
#[derive(Debug, clap::Args)]
pub struct Format {
    /// Print JSON lines, one per fire, output, error… (the default when
    /// stdout is not a terminal).
    #[arg(long, conflicts_with = "timeline")]
    pub json: bool,
    /// Print the readable timeline (the default on a terminal).
    #[arg(long)]
    pub timeline: bool,
}

impl Format {
    /// Whether to print the timeline.
    pub fn timeline(&self) -> bool {
        self.timeline || (!self.json && std::io::stdout().is_terminal())
    }
}

/// The files one run reads.
#[derive(Debug, Clone)]
struct Inputs {
    manifest: PathBuf,
    component: PathBuf,
    events: PathBuf,
}

fn inputs(args: &TestArgs) -> anyhow::Result<Inputs> {
    let dir = args.rule.is_dir().then(|| args.rule.clone());
    let (manifest, component) = locate(&args.rule, args.manifest.as_deref())?;
    let events = match &args.events {
        Some(e) => e.clone(),
        None => {
            let home = dir
                .clone()
                .unwrap_or_else(|| manifest.parent().unwrap_or(Path::new(".")).to_owned());
            let e = home.join("scenario.ndjson");
            if !e.is_file() {
                bail!(
                    "no --events, and no scenario.ndjson in {}: pass the events to run",
                    home.display()
                );
            }
            e
        }
    };
    // (A named pipe will do: the run reads lines as they come.)
    if !events.exists() || events.is_dir() {
        bail!("--events {}: no such file", events.display());
    }
    Ok(Inputs {
        manifest,
        component,
        events,
    })
}

/// `sluice test`.
pub fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let timeline = args.format.timeline();
    if !args.watch {
        return run_once(args, &inputs(args)?, timeline);
    }
    let mut last: Option<Snapshot> = None;
    loop {
        let mut now = Snapshot::take(args);
        // A rule project is built again when a source changed (and at
        // the start); then the run, unless the build failed.
        let built = match &args.rule {
            dir if dir.is_dir() && last.as_ref().is_none_or(|l| l.sources_differ(&now)) => {
                let built = rebuild(dir);
                // What the build wrote is not a change to run again for.
                now.refresh_components(args);
                built
            }
            _ => Ok(()),
        };
        match built.and_then(|()| inputs(args)) {
            Ok(files) => {
                println!("── {} ──", chrono::Local::now().format("%H:%M:%S"));
                if let Err(e) = run_once(args, &files, timeline) {
                    eprintln!("error: {e:#}");
                }
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
        eprintln!("watching for changes (Ctrl-C to stop)");
        // Against the files as they were when this run began: a change
        // made while it ran starts the next one.
        while Snapshot::take(args) == now {
            std::thread::sleep(Duration::from_millis(300));
        }
        last = Some(now);
    }
}

fn run_once(args: &TestArgs, files: &Inputs, timeline: bool) -> anyhow::Result<ExitCode> {
    let mut rules = vec![super::read_rule(&files.manifest, &files.component)?];
    for spec in &args.also {
        let (m, c) = spec
            .split_once('=')
            .with_context(|| format!("--rule {spec:?}: expected MANIFEST=COMPONENT"))?;
        rules.push(super::read_rule(Path::new(m), Path::new(c))?);
    }
    let input = std::fs::File::open(&files.events)
        .with_context(|| format!("open {}", files.events.display()))?;
    let options = crate::offline::Options {
        cache_dir: args.cache_dir.clone(),
        ..Default::default()
    };
    // Errors about the input name the events file; a rule that does not
    // load is about the rule, and says so itself.
    let context = |e: anyhow::Error| {
        if e.downcast_ref::<crate::engine::rule::SetupError>()
            .is_some()
        {
            e
        } else {
            e.context(files.events.display().to_string())
        }
    };
    let Some(expect) = &args.expect else {
        // Lines go out as they happen, not at the end.
        let mut out = std::io::LineWriter::new(std::io::stdout().lock());
        let mut view = Timeline::default();
        let streamed = crate::offline::stream_rules(rules, input, &options, &mut |line| {
            if timeline {
                for l in view.render(&line) {
                    writeln!(out, "{l}")?;
                }
                Ok(())
            } else {
                writeln!(out, "{line}")
            }
        })
        .and_then(|failed| {
            if timeline {
                writeln!(out, "{}", view.summary())?;
            }
            out.flush()?;
            Ok(failed)
        });
        return match streamed {
            Ok(failed) => Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }),
            // Whoever read the output stopped (`| head`): so does the run.
            Err(e) if output_closed(&e) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(context(e)),
        };
    };
    let report = crate::offline::run_rules(rules, input, &options).map_err(context)?;
    let got: Vec<String> = report.lines.iter().map(Value::to_string).collect();
    if args.bless {
        let mut text = got.join("\n");
        text.push('\n');
        std::fs::write(expect, text).with_context(|| format!("write {}", expect.display()))?;
        println!("wrote {} lines to {}", got.len(), expect.display());
        return Ok(ExitCode::SUCCESS);
    }
    let want = expected(expect)?;
    if want == got {
        println!(
            "ok: {} lines as expected in {}",
            got.len(),
            expect.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let (removed, added) = diff(&want, &got, &mut out)?;
    writeln!(
        out,
        "{}: the run differs from what is expected ({removed} expected line{} not produced, {added} new line{}); --bless takes the run as expected",
        expect.display(),
        if removed == 1 { "" } else { "s" },
        if added == 1 { "" } else { "s" },
    )?;
    Ok(ExitCode::FAILURE)
}

/// The run's output was closed by its reader: only a write to a pipe
/// fails so (the events are read, never written).
fn output_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The expected file's lines as the run writes them (each line parsed and
/// written again, so key order and spacing do not count).
fn expected(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--expect {}: cannot read it (--bless writes it)",
            path.display()
        )
    })?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
        lines.push(v.to_string());
    }
    Ok(lines)
}

/// A unified diff of the expected lines (`-`) and the run's (`+`), with
/// three lines of context; how many lines went and came.
fn diff(want: &[String], got: &[String], out: &mut impl Write) -> std::io::Result<(usize, usize)> {
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let got: Vec<&str> = got.iter().map(String::as_str).collect();
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, &want, &got);
    let (mut removed, mut added) = (0, 0);
    for group in similar::group_diff_ops(ops, 3) {
        let (first, last) = (&group[0], &group[group.len() - 1]);
        writeln!(
            out,
            "@@ expected line {} / run line {} @@",
            first.old_range().start + 1,
            first.new_range().start + 1
        )?;
        let _ = last;
        for op in &group {
            for change in similar::DiffOp::iter_changes(op, &want, &got) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => {
                        removed += 1;
                        '-'
                    }
                    similar::ChangeTag::Insert => {
                        added += 1;
                        '+'
                    }
                };
                writeln!(out, "{sign} {}", change.value())?;
            }
        }
    }
    Ok((removed, added))
}

/// Build a rule project again (`sluice build`): a Rust crate, or a
/// project `sluice new` wrote in another language (it has `sdk/`). Other
/// rules are built by their own build and picked up when their
/// component changes.
fn rebuild(dir: &Path) -> anyhow::Result<()> {
    match super::scaffold::detect(dir) {
        Ok(super::scaffold::Lang::Rust) => {}
        Ok(_) if dir.join("sdk").is_dir() => {}
        _ => return Ok(()),
    }
    super::scaffold::build(dir)
        .map(|_| ())
        .context("the build failed; fix it and save again")
}

/// What `--watch` looks at, with the files' times: every file of the
/// rule's directory but build output, and the files named on the
/// command line (not the expected file while blessing it).
#[derive(Debug, Default, PartialEq, Eq)]
struct Snapshot {
    files: BTreeMap<PathBuf, Option<SystemTime>>,
}

impl Snapshot {
    fn take(args: &TestArgs) -> Self {
        let mut snap = Snapshot::default();
        let expect = args.expect.as_ref().filter(|_| !args.bless);
        for f in [args.manifest.as_ref(), args.events.as_ref(), expect]
            .into_iter()
            .flatten()
        {
            snap.add(f);
        }
        if args.rule.is_dir() {
            snap.walk(&args.rule, 0);
        } else {
            snap.add(&args.rule);
        }
        snap
    }

    /// Take the components (`.wasm`) as they are now.
    fn refresh_components(&mut self, args: &TestArgs) {
        let wasm = |p: &PathBuf| p.extension().is_some_and(|x| x == "wasm");
        self.files.retain(|p, _| !wasm(p));
        let fresh = Snapshot::take(args);
        self.files
            .extend(fresh.files.into_iter().filter(|(p, _)| wasm(p)));
    }

    fn add(&mut self, path: &Path) {
        let time = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        self.files.insert(path.to_owned(), time);
    }

    fn walk(&mut self, dir: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || matches!(
                    name.as_ref(),
                    "target" | "node_modules" | "__pycache__" | "dist" | "build"
                )
            {
                continue;
            }
            if path.is_dir() {
                if depth < 4 {
                    self.walk(&path, depth + 1);
                }
            } else {
                self.add(&path);
            }
        }
    }

    /// Whether a source changed between this snapshot and `now`: a file
    /// that is not the manifest, a scenario or expectation (`.ndjson`) or
    /// a component (`.wasm`).
    fn sources_differ(&self, now: &Snapshot) -> bool {
        let source = |p: &&PathBuf| {
            p.file_name().is_some_and(|n| n != "rule.toml")
                && !p.extension().is_some_and(|x| x == "ndjson" || x == "wasm")
        };
        let differs = |p: &PathBuf| self.files.get(p) != now.files.get(p);
        now.files.keys().filter(source).any(differs)
            || self.files.keys().filter(source).any(differs)
    }
}

/// The report as a timeline for people: one line per fire, output,
/// error and note, under the day it happened.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    day: Option<String>,
    fires: usize,
    outputs: usize,
    errors: usize,
    dead: usize,
}

/// A payload on one line, cut at `max` characters.
fn short(v: &Value, max: usize) -> String {
    let text = v.to_string();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn clock(ms: &Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| "?".into(), |t| t.format("%H:%M:%S").to_string())
}

fn stamp(ms: &Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

impl Timeline {
    /// The lines `line` (a report line) shows as.
    pub(super) fn render(&mut self, line: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let day = line["at"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d (%A, UTC)").to_string());
        if day.is_some() && day != self.day {
            out.push(format!("── {} ──", day.clone().unwrap_or_default()));
            self.day = day;
        }
        let at = clock(&line["at"]);
        let rule = line["rule"].as_str().unwrap_or("?");
        let partition = match line["partition"].as_str() {
            Some(p) => format!("[{p}]"),
            None => "[all]".to_owned(),
        };
        let what = match line["type"].as_str().unwrap_or("?") {
            "fire" => {
                self.fires += 1;
                let why = match line["reason"].as_str().unwrap_or("?") {
                    "dwell" => format!(
                        "dwell {} (ordinal {}, member since {})",
                        line["label"].as_str().unwrap_or("?"),
                        line["ordinal"],
                        stamp(&line["member_since"])
                    ),
                    "schedule" => format!(
                        "tick {}{}",
                        stamp(&line["tick"]),
                        if line["catch_up"] == true {
                            " (catch-up)"
                        } else {
                            ""
                        }
                    ),
                    other => other.to_owned(),
                };
                let seqs: Vec<String> = line["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                match seqs.len() {
                    0 => format!("fire {partition} {why}: no events"),
                    1 => format!("fire {partition} {why}: 1 event (#{})", seqs[0]),
                    n => format!("fire {partition} {why}: {n} events (#{})", seqs.join(", #")),
                }
            }
            "output" => {
                self.outputs += 1;
                format!(
                    "  → {} {}",
                    line["kind"].as_str().unwrap_or("?"),
                    short(&line["payload"], 160)
                )
            }
            "error" => {
                self.errors += 1;
                format!(
                    "✗ attempt {} failed: {}; retry at {}",
                    line["attempt"],
                    line["error"].as_str().unwrap_or("?"),
                    clock(&line["retry_at"])
                )
            }
            "dead_letter" => {
                self.dead += 1;
                format!(
                    "✗ dead letter after attempt {}: {}",
                    line["attempt"],
                    line["error"].as_str().unwrap_or("?")
                )
            }
            "discard" => format!("discard {partition}: its window expired (expire = \"discard\")"),
            "missed" if line["ticks"] == 1 => format!(
                "missed the tick at {} while not running",
                stamp(&line["first"])
            ),
            "missed" => format!(
                "missed {}{} ticks from {} to {} while not running",
                if line["at_least"] == true {
                    "at least "
                } else {
                    ""
                },
                line["ticks"],
                stamp(&line["first"]),
                stamp(&line["last"])
            ),
            "skipped" => format!(
                "skip tick {} {partition}: the previous fire still runs (overlap = {})",
                stamp(&line["tick"]),
                line["overlap"]
            ),
            "leave" => format!("leave {partition}: max_dwell reached"),
            "quota" => format!(
                "over quota {partition}: event #{} opens no partition (max {})",
                line["seq"], line["max_partitions"]
            ),
            "dropped" => format!(
                "dropped {} output(s): past the output hop limit",
                line["outputs"]
            ),
            "cancelled" => format!(
                "cancel fire {partition} {}",
                line["fire_id"].as_str().unwrap_or("?")
            ),
            other => other.to_owned(),
        };
        out.push(format!("{at}  {rule:<16} {what}"));
        out
    }

    fn summary(&self) -> String {
        format!(
            "{} fire{}, {} output{}, {} failed attempt{}, {} dead letter{}",
            self.fires,
            if self.fires == 1 { "" } else { "s" },
            self.outputs,
            if self.outputs == 1 { "" } else { "s" },
            self.errors,
            if self.errors == 1 { "" } else { "s" },
            self.dead,
            if self.dead == 1 { "" } else { "s" },
        )
    }
}
