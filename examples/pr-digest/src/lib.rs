//! PR-merge digest: collects merged pull requests per repository and emits
//! one digest per batch (after 10 merges, or when the hour is up).

use sluice_sdk::prelude::*;

/// The part of a `pull_request.merged` payload this rule reads.
///
/// Strings are `Cow<str>`: borrowed from the payload when they have no
/// JSON escapes, copied when they do (`"Fix \"quoted\" names"`,
/// `"caf\u00e9"`). A plain `&'a str` would fail on those payloads.
#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Merged<'a> {
    #[serde(default)]
    number: Option<u64>,
    #[serde(borrow, default)]
    author: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
}

struct PrDigest;

impl Rule for PrDigest {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "pull_request.merged"
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        // `repo` is declared in rule.toml (`[select] fields`), so the engine
        // has parsed it already. A payload without a string `repo` goes to
        // the global partition rather than being dropped: the digest then
        // says "unknown repository".
        event.field("/repo").as_str().map(str::to_owned)
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let mut prs = Vec::new();
        let mut authors: Vec<Cow<'_, str>> = Vec::new();
        for event in batch.events() {
            let m: Merged<'_> = event.json()?;
            let Some(number) = m.number else {
                return Err(RuleError::fatal(format!(
                    "event {}: no pull request number",
                    event.id()
                )));
            };
            prs.push(json!({ "number": number, "title": m.title }));
            if let Some(a) = m.author
                && !authors.contains(&a)
            {
                authors.push(a);
            }
        }
        let why = match batch.reason() {
            Reason::CountReached => "count reached",
            Reason::WindowExpired => "window expired",
            _ => "flushed",
        };
        log::info(format!(
            "digest for {}: {} merges ({why})",
            batch.partition().unwrap_or("unknown repository"),
            prs.len()
        ));
        Ok(vec![Emit::json(
            "pr.digest",
            &json!({
                "repo": batch.partition(),
                "merged": prs.len(),
                "pull_requests": prs,
                "authors": authors,
                "reason": why,
            }),
        )?])
    }
}

export_rule!(PrDigest);
