// A rule for conformance cases of every trigger kind: it reports what it
// was handed, so a case's expected lines show the engine's decisions.
//
// - keeps every event whose kind is not in `SKIPPED` (the including
//   crate's: `noise` for `echo`);
// - partition: the payload's `"key"` (a string), else the global one;
// - membership by the kind's last dot-separated word: `enter`, `leave`,
//   `ping` (refresh), anything else `ignore`;
// - the handler emits one `echo` event: the reason and its details, the
//   attempt and the ids of the batch's events. An event whose payload has
//   `"fail": n` makes the handler fail (retryable) on its first n
//   attempts.

use sluice_sdk::prelude::*;

#[derive(Deserialize, Default)]
#[serde(crate = "sluice_sdk::serde")]
struct Fields<'a> {
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    fail: u32,
}

fn fields<'a>(event: &Event<'a>) -> Fields<'a> {
    event.json().unwrap_or_default()
}

struct Echo;

impl Rule for Echo {
    fn filter(event: &Event<'_>) -> bool {
        !SKIPPED.contains(&event.kind())
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        fields(event).key.map(Cow::into_owned)
    }

    fn membership(event: &Event<'_>) -> Membership {
        match event.kind().rsplit('.').next() {
            Some("enter") => Membership::Enter,
            Some("leave") => Membership::Leave,
            Some("ping") => Membership::Refresh,
            _ => Membership::Ignore,
        }
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let fail = batch.events().iter().map(|e| fields(e).fail).max();
        if fail.is_some_and(|n| batch.attempt() <= n) {
            return Err(RuleError::retryable(format!(
                "asked to fail attempt {}",
                batch.attempt()
            )));
        }
        let mut out = json!({
            "reason": batch.reason().name(),
            "partition": batch.partition(),
            "attempt": batch.attempt(),
            "events": batch.events().iter().map(|e| e.id()).collect::<Vec<_>>(),
        });
        match batch.reason() {
            Reason::Dwell {
                label,
                ordinal,
                member_since,
                epoch,
            } => {
                out["label"] = json!(label);
                out["ordinal"] = json!(ordinal);
                out["member_since"] = json!(member_since);
                out["epoch"] = json!(epoch);
            }
            Reason::Schedule { tick, catch_up } => {
                out["tick"] = json!(tick);
                out["catch_up"] = json!(catch_up);
            }
            _ => {}
        }
        Ok(vec![Emit::json("echo", &out)?])
    }
}

export_rule!(Echo);
