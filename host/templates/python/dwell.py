"""{{name}}: a dwell rule that notices abandoned carts. A cart is a member
from `cart.created` until `cart.checked_out`; every other cart event
restarts its clock. After 30 minutes without one (see rule.toml) the
handler emits `cart.abandoned`."""

from typing import Optional

from sluice_rule import Batch, DwellReason, Event, Fatal, Membership, Rule, emit, export, reason_name

MEMBERSHIP = {
    "cart.created": Membership.ENTER,
    "cart.checked_out": Membership.LEAVE,
}


class {{Type}}(Rule):
    def filter(self, event: Event) -> bool:
        return event.kind.startswith("cart.")

    def partition_key(self, event: Event) -> Optional[str]:
        # One membership per cart.
        # Declared in rule.toml ([select] fields): the engine has parsed it.
        cart = event.field("/cart")
        return cart if isinstance(cart, str) else None

    def membership(self, event: Event) -> Membership:
        # Any other cart event is a sign of life: the clock restarts.
        return MEMBERSHIP.get(event.kind, Membership.REFRESH)

    def handle_batch(self, batch: Batch) -> list:
        if batch.partition is None:
            raise Fatal("a cart event without a cart id")
        dwell = getattr(batch.reason, "value", None)
        if not isinstance(dwell, DwellReason):
            raise Fatal(f"unexpected reason {reason_name(batch.reason)}")
        return [
            emit(
                "cart.abandoned",
                {
                    "cart": batch.partition,
                    "label": dwell.label,
                    "idle_since": dwell.member_since,
                },
            )
        ]


Guest = export({{Type}})
