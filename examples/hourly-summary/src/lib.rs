//! Hourly order summary: a schedule rule. Every tick, the handler receives
//! the order events since the previous tick and emits one summary.

use std::collections::BTreeMap;

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Order {
    #[serde(default)]
    amount_cents: i64,
}

struct HourlySummary;

impl Rule for HourlySummary {
    fn filter(event: &Event<'_>) -> bool {
        event.kind().starts_with("order.")
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        let mut revenue = 0i64;
        for event in batch.events() {
            *by_kind.entry(event.kind()).or_default() += 1;
            if event.kind() == "order.paid" {
                revenue += event.json::<Order>()?.amount_cents;
            }
        }
        let (tick, catch_up) = match batch.reason() {
            Reason::Schedule { tick, catch_up } => (*tick, *catch_up),
            _ => (sluice_sdk::now(), false),
        };
        Ok(vec![Emit::json(
            "orders.hourly",
            &json!({
                "tick": tick,
                "catch_up": catch_up,
                "events": batch.events().len(),
                "by_kind": by_kind,
                "revenue_cents": revenue,
            }),
        )?])
    }
}

export_rule!(HourlySummary);
