//! Benchmark rule for the shapes users have: parse the payload, keep
//! `ok == true`, key by `repo`; the handler emits one summary per batch.

use std::borrow::Cow;

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Payload<'a> {
    #[serde(borrow)]
    repo: Cow<'a, str>,
    ok: bool,
}

struct RepoSummary;

impl Rule for RepoSummary {
    fn select(event: &Event<'_>) -> Option<Placement> {
        match event.json::<Payload<'_>>() {
            Ok(p) if p.ok => Some(Placement {
                partition: Some(p.repo.into_owned()),
                membership: Membership::Enter,
            }),
            _ => None,
        }
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let events = batch.events();
        let first = events.first().map(|e| e.seq());
        let last = events.last().map(|e| e.seq());
        Ok(vec![Emit::json(
            "repo.summary",
            &json!({ "repo": batch.partition(), "events": events.len(),
                     "first_seq": first, "last_seq": last }),
        )?])
    }
}

export_rule!(RepoSummary);
