//! A deliberately slow, deterministic batch handler for crash tests:
//! orders grouped by customer; each fire burns some CPU, then emits the
//! order ids of its batch.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Order<'a> {
    customer: &'a str,
}

struct SlowDigest;

impl Rule for SlowDigest {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "order"
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        event
            .json::<Order<'_>>()
            .ok()
            .map(|o| o.customer.to_owned())
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        // A few milliseconds of work, so that kills land mid-handler.
        let mut x: u64 = 1;
        for i in 0..3_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        let orders: Vec<&str> = batch.events().iter().map(|e| e.id()).collect();
        Ok(vec![Emit::json(
            "digest",
            &json!({ "customer": batch.partition(), "orders": orders, "work": x % 2 }),
        )?])
    }
}

export_rule!(SlowDigest);
