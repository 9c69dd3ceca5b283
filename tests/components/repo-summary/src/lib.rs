//! Benchmark rule for the shapes users have: read the payload's `ok` and
//! `repo`, keep `ok == true`, key by `repo`; the handler emits one summary
//! per batch. Under `[select] fields = ["/repo", "/ok"]` the engine parses
//! the payload; without, the SDK does, in the guest.

use sluice_sdk::prelude::*;

struct RepoSummary;

impl Rule for RepoSummary {
    fn select(event: &Event<'_>) -> Option<Placement> {
        if event.field("/ok").as_bool() != Some(true) {
            return None;
        }
        Some(Placement {
            partition: Some(event.field("/repo").as_str()?.to_owned()),
            membership: Membership::Enter,
        })
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
