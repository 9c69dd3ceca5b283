//! "User inactive for 7 days": a dwell rule whose activity events refresh
//! the membership clock. When a user has shown no activity for the
//! reaction's duration, the handler emits `user.inactive`.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct User<'a> {
    // Cow, not &str: a user id may carry JSON escapes.
    #[serde(borrow)]
    user_id: Cow<'a, str>,
}

struct UserInactive;

impl Rule for UserInactive {
    fn filter(event: &Event<'_>) -> bool {
        event.kind().starts_with("user.")
    }

    fn partition_key(event: &Event<'_>) -> Option<String> {
        event
            .json::<User<'_>>()
            .ok()
            .map(|u| u.user_id.into_owned())
    }

    fn membership(event: &Event<'_>) -> Membership {
        match event.kind() {
            "user.signed_up" => Membership::Enter,
            "user.deleted" => Membership::Leave,
            // Any other sign of life re-anchors the clock.
            _ => Membership::Refresh,
        }
    }

    fn handle_batch(batch: &Batch<'_>) -> Result<Vec<Emit>, RuleError> {
        let Some(user) = batch.partition() else {
            return Err(RuleError::fatal("dwell fire without a user partition"));
        };
        let (label, since) = match batch.reason() {
            Reason::Dwell {
                label,
                member_since,
                ..
            } => (label.as_str(), *member_since),
            other => {
                return Err(RuleError::fatal(format!(
                    "unexpected reason {}",
                    other.name()
                )));
            }
        };
        Ok(vec![Emit::json(
            "user.inactive",
            &json!({
                "user_id": user,
                "label": label,
                "last_seen": since,
                "detected_at": sluice_sdk::now(),
            }),
        )?])
    }
}

export_rule!(UserInactive);
