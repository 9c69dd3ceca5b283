//! PR-merge digest: collects merged pull requests per repository and emits
//! one digest per batch (after 10 merges, or when the hour is up).

use sluice_sdk::prelude::*;

/// The part of a `pull_request.merged` payload this rule reads.
#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Merged<'a> {
    repo: &'a str,
    number: u64,
    #[serde(default)]
    author: Option<&'a str>,
    #[serde(default)]
    title: Option<&'a str>,
}

struct PrDigest;

impl Rule for PrDigest {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "pull_request.merged"
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        // A payload without `repo` goes to the global partition rather than
        // being dropped: the digest then says "unknown repository".
        event.json::<Merged<'_>>().ok().map(|m| m.repo.to_owned())
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let mut prs = Vec::new();
        let mut authors: Vec<&str> = Vec::new();
        for event in batch.events() {
            let m: Merged<'_> = event.json()?;
            prs.push(json!({ "number": m.number, "title": m.title }));
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
