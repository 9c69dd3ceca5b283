//! The commands that look after a server's rules, fires, tenants and
//! nodes — `rules`, `fires`, `tenants`, `cluster` — as tables for people
//! (times in UTC, RFC 3339) or `--json`.

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, Conn, encode, print_json};

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
                "{:<24} {:>7} {:<9} {:<10} {:>10} {:>8} {:>6} {:<20}{}",
                "NAME",
                "VERSION",
                "KIND",
                "STATUS",
                "PARTITIONS",
                "PENDING",
                "DEAD",
                "NEXT DUE",
                if nodes { " NODE" } else { "" }
            );
            for r in rules {
                // A shadow shows beside the version: `1 (2)`.
                let version = match r["shadow_version"].as_u64() {
                    Some(s) => format!("{} ({s})", r["version"]),
                    None => r["version"].to_string(),
                };
                println!(
                    "{:<24} {:>7} {:<9} {:<10} {:>10} {:>8} {:>6} {:<20}{}",
                    r["name"].as_str().unwrap_or_default(),
                    version,
                    r["kind"].as_str().unwrap_or_default(),
                    r["status"].as_str().unwrap_or_default(),
                    r["partitions"].to_string(),
                    r["pending_fires"].to_string(),
                    r["dead_letters"].to_string(),
                    time(&r["next_due"]),
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

/// `sluice tenants` (alone: the list).
pub fn tenants(conn: &Conn, cmd: Option<&TenantsCmd>, as_json: bool) -> anyhow::Result<()> {
    let client = Client::new(conn)?;
    match cmd.unwrap_or(&TenantsCmd::Ls) {
        TenantsCmd::Create { name, quotas } => {
            let mut body = json!({"name": name});
            if let Some(q) = quotas {
                body["quotas"] = serde_json::from_str(q)
                    .map_err(|e| anyhow::anyhow!("--quotas: not JSON: {e}"))?;
            }
            let v = client.post("/v1/tenants", Some(body))?;
            // The token alone on stdout, as `tokens create` prints it:
            // `SLUICE_TOKEN=$(sluice tenants create acme)`.
            eprintln!(
                "tenant {name} created; its token (id {}) follows, shown once",
                v["token"]["id"].as_str().unwrap_or_default()
            );
            println!("{}", v["token"]["token"].as_str().unwrap_or_default());
        }
        TenantsCmd::Ls => {
            let v = client.get("/v1/tenants")?;
            if as_json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<24} {:<20} {:>6} {:>11} {:>10}",
                "TENANT", "CREATED", "RULES", "PARTITIONS", "EVENTS/S"
            );
            for t in v.as_array().into_iter().flatten() {
                let q = &t["quotas"];
                println!(
                    "{:<24} {:<20} {:>6} {:>11} {:>10}",
                    t["name"].as_str().unwrap_or_default(),
                    time(&t["created_at"]),
                    q["max_rules"].to_string(),
                    q["max_partitions_per_rule"].to_string(),
                    q["ingest_per_second"].to_string(),
                );
            }
            println!(
                "(quotas: RULES deployed, PARTITIONS per rule, EVENTS/S ingested; `--json` shows them all)"
            );
        }
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
                TokenCmd::Ls => {
                    let v = client.get(&base)?;
                    if as_json {
                        print_json(&v);
                        return Ok(());
                    }
                    println!(
                        "{:<16} {:<22} {:<20} {:<20}",
                        "ID", "SCOPES", "CREATED", "REVOKED"
                    );
                    for t in v.as_array().into_iter().flatten() {
                        let scopes: Vec<&str> = t["scopes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        println!(
                            "{:<16} {:<22} {:<20} {:<20}",
                            t["id"].as_str().unwrap_or_default(),
                            scopes.join(","),
                            time(&t["created_at"]),
                            time(&t["revoked_at"]),
                        );
                    }
                }
                TokenCmd::Create { scopes } => {
                    let body = (!scopes.is_empty()).then(|| json!({"scopes": scopes}));
                    let v = client.post(&base, body)?;
                    let id = v["id"].as_str().unwrap_or_default();
                    let scopes = if scopes.is_empty() {
                        "ingest, read, deploy".to_owned()
                    } else {
                        scopes.join(", ")
                    };
                    // The token alone on stdout (for scripts); the rest on
                    // stderr.
                    eprintln!(
                        "token {id} of {name} (scopes: {scopes}); shown once — revoke it with `sluice tenants tokens {name} revoke {id}`"
                    );
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

/// An engine time (ms since the epoch) as UTC RFC 3339 to the second;
/// `-` for none.
fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}
