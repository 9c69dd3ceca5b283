//! Benchmark rule (a): keep events whose kind is "keep"; global partition.

use sluice_sdk::prelude::*;

struct KindFilter;

impl Rule for KindFilter {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "keep"
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        Emit::json("kept", &json!({ "count": batch.events().len() })).map(|e| vec![e])
    }
}

export_rule!(KindFilter);
