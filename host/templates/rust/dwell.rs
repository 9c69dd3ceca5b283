//! {{name}}: a dwell rule that notices abandoned carts. A cart is a member
//! from `cart.created` until `cart.checked_out`; every other cart event
//! restarts its clock. After 30 minutes without one (see rule.toml) the
//! handler emits `cart.abandoned`.

use sluice_sdk::prelude::*;

struct {{Type}};

impl Rule for {{Type}} {
    fn filter(event: &Event<'_>) -> bool {
        event.kind().starts_with("cart.")
    }

    /// One membership per cart.
    fn partition_key(event: &Event<'_>) -> Option<String> {
        // Declared in rule.toml (`[select] fields`): the engine has parsed it.
        event.field("/cart").as_str().map(str::to_owned)
    }

    fn membership(event: &Event<'_>) -> Membership {
        match event.kind() {
            "cart.created" => Membership::Enter,
            "cart.checked_out" => Membership::Leave,
            // Any other cart event is a sign of life: the clock restarts.
            _ => Membership::Refresh,
        }
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let Some(cart) = batch.partition() else {
            return Err(RuleError::fatal("a cart event without a cart id"));
        };
        let Reason::Dwell {
            label,
            member_since,
            ..
        } = batch.reason()
        else {
            return Err(RuleError::fatal(format!(
                "unexpected reason {}",
                batch.reason().name()
            )));
        };
        Ok(vec![Emit::json(
            "cart.abandoned",
            &json!({
                "cart": cart,
                "label": label,
                "idle_since": member_since,
            }),
        )?])
    }
}

export_rule!({{Type}});
