//! Benchmark rule (b): parse the payload, keep `ok == true`, key by `repo`.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Payload<'a> {
    #[serde(borrow)]
    repo: &'a str,
    ok: bool,
}

struct JsonKey;

impl Rule for JsonKey {
    fn filter(event: &Event<'_>) -> bool {
        matches!(event.json::<Payload<'_>>(), Ok(p) if p.ok)
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        event.json::<Payload<'_>>().ok().map(|p| p.repo.to_owned())
    }

    // Parse once on the hot path instead of once per method.
    fn select(event: &Event<'_>) -> Option<Placement> {
        match event.json::<Payload<'_>>() {
            Ok(p) if p.ok => Some(Placement {
                partition: Some(p.repo.to_owned()),
                membership: Membership::Enter,
            }),
            _ => None,
        }
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let mut emits = Vec::new();
        for event in batch.events() {
            let p: Payload<'_> = event.json()?;
            emits.push(Emit::json("seen", &json!({ "repo": p.repo }))?);
        }
        Ok(emits)
    }
}

export_rule!(JsonKey);
