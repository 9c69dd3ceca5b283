"""User inactive for 7 days: a dwell rule whose activity events refresh the
membership clock (absence detection; see rule.toml)."""

from typing import Optional

from sluice_rule import (
    Batch,
    DwellReason,
    Event,
    Fatal,
    Membership,
    Rule,
    emit,
    export,
    now,
    reason_name,
)

MEMBERSHIP = {
    "user.signed_up": Membership.ENTER,
    "user.deleted": Membership.LEAVE,
}


class UserInactive(Rule):
    def filter(self, event: Event) -> bool:
        return event.kind.startswith("user.")

    def partition_key(self, event: Event) -> Optional[str]:
        user = event.json().get("user_id")
        return user if isinstance(user, str) else None

    def membership(self, event: Event) -> Membership:
        # Any other sign of life re-anchors the clock.
        return MEMBERSHIP.get(event.kind, Membership.REFRESH)

    def handle_batch(self, batch: Batch) -> list:
        if batch.partition is None:
            raise Fatal("dwell fire without a user partition")
        dwell: DwellReason = getattr(batch.reason, "value", None)
        if not isinstance(dwell, DwellReason):
            raise Fatal(f"unexpected reason {reason_name(batch.reason)}")
        return [
            emit(
                "user.inactive",
                {
                    "user_id": batch.partition,
                    "label": dwell.label,
                    "last_seen": dwell.member_since,
                    "detected_at": now(),
                },
            )
        ]


Guest = export(UserInactive)
