//! {{name}}: a batch rule. Orders are grouped per customer; a batch fires
//! after 3 orders, or an hour after its first order (see rule.toml), and
//! the handler emits one `orders.batch` summary per batch.

use sluice_sdk::prelude::*;

/// The field of an `order.placed` payload the handler reads.
#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Order {
    amount_cents: Option<u64>,
}

struct {{Type}};

impl Rule for {{Type}} {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "order.placed"
    }

    /// One batch per customer; orders without one share the global batch.
    fn partition_key(event: &Event<'_>) -> Option<String> {
        // Declared in rule.toml (`[select] fields`): the engine has parsed it.
        event.field("/customer").as_str().map(str::to_owned)
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let mut total = 0u64;
        for event in batch.events() {
            let Some(cents) = event.json::<Order>()?.amount_cents else {
                // Fatal: retrying would not help; the fire goes to the
                // dead letters, where `sluice dead-letters` shows it.
                return Err(RuleError::fatal(format!(
                    "event {}: an order without amount_cents",
                    event.id()
                )));
            };
            total = total.saturating_add(cents);
        }
        Ok(vec![Emit::json(
            "orders.batch",
            &json!({
                "customer": batch.partition(),
                "orders": batch.events().len(),
                "total_cents": total,
                "reason": batch.reason().name(),
            }),
        )?])
    }
}

export_rule!({{Type}});
