//! Benchmark rule (b) with input projection: keep `ok == true`, key by
//! `repo`, reading both through `event.field`. Its manifest declares
//! `[select] fields = ["/repo", "/ok"]`, and then the engine parses the
//! payload; without `fields` the SDK reads the payload itself. Both must
//! agree.

use sluice_sdk::prelude::*;

struct JsonFields;

impl Rule for JsonFields {
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
        let repos: Vec<String> = batch
            .events()
            .iter()
            .filter_map(|e| e.field("/repo").as_str().map(str::to_owned))
            .collect();
        Ok(vec![Emit::json("seen", &json!({ "repos": repos }))?])
    }
}

export_rule!(JsonFields);
