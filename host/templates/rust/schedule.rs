//! {{name}}: a schedule rule. At the top of every hour (see rule.toml) the
//! handler gets the sign-ups since the previous tick and emits one
//! `signups.hourly` count, also for an hour without any.

use sluice_sdk::prelude::*;

struct {{Type}};

impl Rule for {{Type}} {
    fn filter(event: &Event<'_>) -> bool {
        event.kind() == "user.signed_up"
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        // A tick, or (tick null) the last sign-ups when the rule is
        // undeployed with `drain = "fire"`.
        let (tick, catch_up) = match batch.reason() {
            Reason::Schedule { tick, catch_up } => (Some(*tick), *catch_up),
            _ => (None, false),
        };
        Ok(vec![Emit::json(
            "signups.hourly",
            &json!({
                "tick": tick,
                "catch_up": catch_up,
                "signups": batch.events().len(),
            }),
        )?])
    }
}

export_rule!({{Type}});
