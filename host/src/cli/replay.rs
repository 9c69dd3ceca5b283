//! `sluice replay NAME --from … [--to …] [--emit]`: the server replays a
//! deployed rule over a range of the tenant's log; this prints its report
//! as it comes (a timeline on a terminal, JSON lines otherwise), its
//! progress on stderr, and the summary.

use std::io::{BufRead, BufReader, Write};

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Client, Conn, encode};
use super::testing::{Format, Timeline};

/// What `sluice replay` replays.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The deployed rule.
    pub name: String,
    /// Ingest time the range starts at (RFC 3339, or ms since the epoch).
    #[arg(long)]
    pub from: String,
    /// Ingest time it ends at, exclusive (default: everything ingested so
    /// far).
    #[arg(long)]
    pub to: Option<String>,
    /// Append the outputs to the log as the rule's (a backfill, marked by
    /// its ids; a repeat writes nothing twice). Default: a dry run.
    #[arg(long)]
    pub emit: bool,
    /// How the report prints.
    #[command(flatten)]
    pub format: Format,
}

/// `sluice replay`.
pub fn replay(conn: &Conn, args: &ReplayArgs) -> anyhow::Result<()> {
    for (flag, t) in [("--from", Some(&args.from)), ("--to", args.to.as_ref())] {
        if let Some(t) = t {
            crate::time::parse(t).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
    }
    let timeline = args.format.timeline();
    let client = Client::new(conn)?;
    let mut body = json!({"from": args.from, "emit": args.emit});
    if let Some(to) = &args.to {
        body["to"] = json!(to);
    }
    let response = client.send(
        client
            .request(
                reqwest::Method::POST,
                &format!("/v1/rules/{}/replay", encode(&args.name)),
            )
            .json(&body),
    )?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "replaying {bar:30} {percent}% of the range ({msg}, {elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out = std::io::stdout().lock();
    let mut view = Timeline::default();
    let mut last = None;
    for line in BufReader::new(response).lines() {
        let line = line.context("the server's answer broke off")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("the server's answer is not JSON lines: {line:?}"))?;
        match v["type"].as_str() {
            Some("progress") => {
                let (start, end) = (v["start"].as_u64(), v["end"].as_u64());
                let position = v["position"].as_u64().unwrap_or(0);
                if let (Some(start), Some(end)) = (start, end) {
                    bar.set_length(end.saturating_sub(start).max(1));
                    bar.set_position(position.saturating_sub(start));
                }
                bar.set_message(format!("{} events", v["events"]));
            }
            Some("done" | "failed") => {
                last = Some(v);
            }
            _ if timeline => {
                bar.suspend(|| -> std::io::Result<()> {
                    for l in view.render(&v) {
                        writeln!(out, "{l}")?;
                    }
                    Ok(())
                })?;
            }
            _ => bar.suspend(|| writeln!(out, "{v}"))?,
        }
    }
    bar.finish_and_clear();
    let Some(last) = last else {
        anyhow::bail!("the server's answer ended before the replay did");
    };
    if last["type"] == "failed" {
        return Err(super::client::Failure::Refused(format!(
            "the replay failed: {}",
            last["error"].as_str().unwrap_or("?")
        ))
        .into());
    }
    let secs = last["millis"].as_f64().unwrap_or(0.0) / 1000.0;
    let events = last["events"].as_u64().unwrap_or(0);
    let mut summary = format!(
        "replayed {events} events in {secs:.1} s ({:.0}/s): {} fires, {} outputs, {} failed attempts",
        events as f64 / secs.max(0.001),
        last["fires"],
        last["outputs"],
        last["errors"]
    );
    if args.emit {
        summary.push_str(&format!(
            "; backfilled {} outputs ({} were there from an earlier backfill)",
            last["emitted"], last["duplicates"]
        ));
    } else {
        summary.push_str("; a dry run: nothing was written (--emit backfills the outputs)");
    }
    if timeline {
        writeln!(out, "{summary}")?;
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}
