"""{{name}}: a batch rule. Orders are grouped per customer; a batch fires
after 3 orders, or an hour after its first order (see rule.toml), and the
handler emits one `orders.batch` summary per batch."""

from typing import Optional

from sluice_rule import Batch, Event, Fatal, Rule, emit, export, reason_name


class {{Type}}(Rule):
    def filter(self, event: Event) -> bool:
        return event.kind == "order.placed"

    def partition_key(self, event: Event) -> Optional[str]:
        # One batch per customer; orders without one share the global batch.
        # Declared in rule.toml ([select] fields): the engine has parsed it.
        customer = event.field("/customer")
        return customer if isinstance(customer, str) else None

    def handle_batch(self, batch: Batch) -> list:
        total = 0
        for event in batch.events:
            cents = event.json().get("amount_cents")
            # bool is an int in Python; a JSON true is not an amount.
            if not isinstance(cents, int) or isinstance(cents, bool) or cents < 0:
                # Fatal: retrying would not help; the fire goes to the dead
                # letters, where `sluice dead-letters` shows it.
                raise Fatal(f"event {event.id}: an order without amount_cents")
            total += cents
        return [
            emit(
                "orders.batch",
                {
                    "customer": batch.partition,
                    "orders": len(batch.events),
                    "total_cents": total,
                    "reason": reason_name(batch.reason),
                },
            )
        ]


Guest = export({{Type}})
