//! `sluice shadow`: a rule's shadow (deployed with `sluice deploy
//! --shadow`) — show it, diff it with the live rule, promote or discard
//! it.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::client::{Client, Conn, encode, print_json};

/// `sluice shadow …`.
#[derive(Debug, Subcommand)]
pub enum ShadowCmd {
    /// The rule's shadow: version, status, where it started.
    Show {
        /// The rule.
        name: String,
    },
    /// Where the rule and its shadow disagree since the shadow started:
    /// fires one has and the other lacks, batches or outputs that differ.
    /// Exits 1 when they disagree (as diff does).
    Diff {
        /// The rule.
        name: String,
        /// Differences shown at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Make the shadow's version the live one; the shadow goes.
    Promote {
        /// The rule.
        name: String,
        /// The state the promoted version carries on from: live (the
        /// live rule's, a hot swap) or shadow (the shadow's; what it kept
        /// aside is not emitted).
        #[arg(long, default_value = "live", value_parser = ["live", "shadow"])]
        state: String,
    },
    /// Stop the shadow and drop its state and what it kept aside.
    Discard {
        /// The rule.
        name: String,
    },
}

/// `sluice shadow`.
pub fn shadow(conn: &Conn, cmd: &ShadowCmd, as_json: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(conn)?;
    match cmd {
        ShadowCmd::Show { name } => {
            let v = client.get(&format!("/v1/rules/{}/shadow", encode(name)))?;
            if as_json {
                print_json(&v);
            } else {
                println!(
                    "{name}: shadow v{} beside live v{}, {}; started after seq {}, at seq {}; {} pending fires, {} dead letters",
                    v["version"],
                    v["live_version"],
                    v["status"].as_str().unwrap_or_default(),
                    v["from_seq"],
                    v["cursor"],
                    v["pending_fires"],
                    v["dead_letters"],
                );
                if let Some(e) = v["last_error"].as_str() {
                    println!("last error: {e}");
                }
            }
        }
        ShadowCmd::Diff { name, limit } => {
            let v = client.get(&format!(
                "/v1/rules/{}/shadow/diff?limit={}",
                encode(name),
                (*limit).clamp(1, 1000)
            ))?;
            if as_json {
                print_json(&v);
            } else {
                for line in diff_text(&v) {
                    println!("{line}");
                }
            }
            if v["differences"].as_u64().unwrap_or(0) > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        ShadowCmd::Promote { name, state } => {
            let v = client.post(
                &format!("/v1/rules/{}/shadow/promote", encode(name)),
                Some(serde_json::json!({ "state": state })),
            )?;
            println!(
                "promoted {name}@{} (on the {state} state); the shadow is gone",
                v["version"]
            );
        }
        ShadowCmd::Discard { name } => {
            client.json(client.request(
                reqwest::Method::DELETE,
                &format!("/v1/rules/{}/shadow", encode(name)),
            ))?;
            println!("discarded the shadow of {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A diff for people: a summary, then one line per difference.
fn diff_text(v: &Value) -> Vec<String> {
    let mut out = vec![
        format!(
            "{}: live v{} and shadow v{}, since seq {} (live at seq {}, shadow at seq {})",
            v["rule"].as_str().unwrap_or_default(),
            v["live_version"],
            v["shadow_version"],
            v["from_seq"],
            v["live_cursor"],
            v["shadow_cursor"],
        ),
        format!(
            "fires: {} live, {} shadow; {} alike, {} not compared yet{}; {} difference{}",
            v["live_fires"],
            v["shadow_fires"],
            v["same"],
            v["pending"],
            if v["settled"] == true {
                ""
            } else {
                " (the two are not level: diff again later)"
            },
            v["differences"],
            if v["differences"] == 1 { "" } else { "s" },
        ),
    ];
    let fire = |f: &Value| {
        let seqs: Vec<String> = f["seqs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("#{s}"))
            .collect();
        let outputs: Vec<String> = f["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let text = format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["payload"]
                );
                match text.char_indices().nth(100) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text,
                }
            })
            .collect();
        format!(
            "[{}] {} {} {} → {}",
            f["partition"].as_str().unwrap_or("all"),
            f["reason"]
                .as_str()
                .map_or_else(|| f["reason"].to_string(), str::to_owned),
            seqs.join(" "),
            f["outcome"].as_str().unwrap_or_default(),
            if outputs.is_empty() {
                "no outputs".to_owned()
            } else {
                outputs.join("; ")
            }
        )
    };
    for d in v["shown"].as_array().into_iter().flatten() {
        out.push(format!(
            "{:<12} {}",
            d["what"].as_str().unwrap_or_default(),
            d["fire_id"].as_str().unwrap_or_default()
        ));
        for side in ["live", "shadow"] {
            if d[side].is_object() {
                out.push(format!("    {side:<6} {}", fire(&d[side])));
            }
        }
    }
    let shown = v["shown"].as_array().map_or(0, Vec::len) as u64;
    let all = v["differences"].as_u64().unwrap_or(0);
    if all > shown {
        out.push(format!("… and {} more (--limit)", all - shown));
    }
    out
}
