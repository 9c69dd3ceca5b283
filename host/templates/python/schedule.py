"""{{name}}: a schedule rule. At the top of every hour (see rule.toml) the
handler gets the sign-ups since the previous tick and emits one
`signups.hourly` count, also for an hour without any."""

from sluice_rule import Batch, Event, Rule, ScheduleReason, emit, export


class {{Type}}(Rule):
    def filter(self, event: Event) -> bool:
        return event.kind == "user.signed_up"

    def handle_batch(self, batch: Batch) -> list:
        # A tick, or (tick None) the last sign-ups when the rule is
        # undeployed with `drain = "fire"`.
        schedule = getattr(batch.reason, "value", None)
        if isinstance(schedule, ScheduleReason):
            tick, catch_up = schedule.tick, schedule.catch_up
        else:
            tick, catch_up = None, False
        return [
            emit(
                "signups.hourly",
                {"tick": tick, "catch_up": catch_up, "signups": len(batch.events)},
            )
        ]


Guest = export({{Type}})
