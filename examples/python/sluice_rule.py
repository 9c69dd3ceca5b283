"""Write Sluice rules in Python.

A rule is a subclass of `Rule` that overrides `filter`, `partition_key`,
`membership` (all with defaults) and `handle_batch`; `export(MyRule)` turns
it into the `Guest` class that componentize-py exports (the interface
`sluice:rule-python/guest`, which the build's adapter re-exports as the
`sluice:rule/rule` world; see wit/rule-python.wit):

    from sluice_rule import Rule, export

    class Digest(Rule):
        def filter(self, event):
            return event.kind == "pull_request.merged"

        def handle_batch(self, batch):
            return [emit("digest", {"merged": len(batch.events)})]

    Guest = export(Digest)

The engine calls the world's batched `select` on its hot path; `export`
implements it with the per-event methods, so a rule never sees the packed
layout. Rules are stateless: the engine may run any call on a fresh
instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Type

from componentize_py_types import Err
from wit_world.imports import host, types

Membership = types.Membership
Level = host.Level
DwellReason = types.DwellReason
ScheduleReason = types.ScheduleReason

__all__ = [
    "Batch",
    "DwellReason",
    "Event",
    "Fatal",
    "Level",
    "Membership",
    "Retryable",
    "Rule",
    "ScheduleReason",
    "emit",
    "export",
    "log",
    "now",
    "reason_name",
]


@dataclass(frozen=True)
class Event:
    """One event of the tenant's log."""

    seq: int
    time: int
    id: str
    source: str
    kind: str
    payload: str

    def json(self) -> Any:
        """The payload parsed: always a dict (the engine only accepts objects)."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class Batch:
    """One handler invocation: the events of a ready group and why it fired."""

    fire_id: str
    rule: str
    partition: Optional[str]
    reason: types.Reason
    attempt: int
    events: List[Event]


class Fatal(Exception):
    """Raise from `handle_batch` to fail the fire for good (dead letter)."""


class Retryable(Exception):
    """Raise from `handle_batch` to have the fire retried with backoff."""


class Rule:
    """Base class of a rule; override what the rule needs."""

    def filter(self, event: Event) -> bool:
        """Does the event concern the rule? Default: every event does."""
        return True

    def partition_key(self, event: Event) -> Optional[str]:
        """The event's partition; None (the default) is the global one."""
        return None

    def membership(self, event: Event) -> types.Membership:
        """Dwell rules: what the event does to its membership. Default: enter."""
        return Membership.ENTER

    def place(self, event: Event) -> Optional[Tuple[Optional[str], types.Membership]]:
        """`select` for one event: None to skip it, else (partition, membership).

        Override it to parse the payload once instead of once per method.
        """
        if not self.filter(event):
            return None
        return (self.partition_key(event), self.membership(event))

    def handle_batch(self, batch: Batch) -> List[types.Emit]:
        """Required: the events to emit for a ready batch."""
        raise NotImplementedError(f"{type(self).__name__} does not define handle_batch")


def emit(kind: str, payload: dict) -> types.Emit:
    """An event to emit; `payload` must be a JSON object (a dict)."""
    if not isinstance(payload, dict):
        raise TypeError(f"emit {kind!r}: payload must be a dict, got {type(payload).__name__}")
    return types.Emit(kind=kind, payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def log(level: host.Level, message: str) -> None:
    """Write a line to the engine's logs, tagged with tenant and rule."""
    host.log(level, message)


def now() -> int:
    """The engine's clock (milliseconds since the epoch), virtual in tests."""
    return host.now()


_REASON_NAMES = {
    types.Reason_CountReached: "count-reached",
    types.Reason_WindowExpired: "window-expired",
    types.Reason_Dwell: "dwell",
    types.Reason_Schedule: "schedule",
    types.Reason_Drained: "drained",
}


def reason_name(reason: types.Reason) -> str:
    """The WIT case name of a reason: "count-reached", "dwell", ..."""
    return _REASON_NAMES[type(reason)]


def _event(e: types.Event) -> Event:
    return Event(e.seq, e.time, e.id, e.source, e.kind, e.payload)


def unpack(pack: types.EventPack) -> List[Event]:
    """The events of a pack (see `event-pack` in wit/rule.wit)."""
    text, ends, seqs, times = pack.text, pack.ends, pack.seqs, pack.times
    if len(ends) != 4 * len(seqs) or len(times) != len(seqs):
        raise ValueError(
            f"malformed event pack: {len(seqs)} seqs, {len(times)} times, {len(ends)} ends"
        )
    events = []
    start = 0
    for i in range(len(seqs)):
        a, b, c, d = ends[4 * i : 4 * i + 4]
        events.append(
            Event(
                seqs[i],
                times[i],
                text[start:a].decode(),
                text[a:b].decode(),
                text[b:c].decode(),
                text[c:d].decode(),
            )
        )
        start = d
    return events


_VERDICTS = {
    Membership.ENTER: types.Verdict.ENTER,
    Membership.LEAVE: types.Verdict.LEAVE,
    Membership.REFRESH: types.Verdict.REFRESH,
    Membership.IGNORE: types.Verdict.IGNORE,
}


def export(rule_class: Type[Rule]) -> type:
    """The `Guest` class componentize-py exports, driving `rule_class`."""
    if not (isinstance(rule_class, type) and issubclass(rule_class, Rule)):
        raise TypeError(f"export() takes a subclass of sluice_rule.Rule, got {rule_class!r}")
    if rule_class.handle_batch is Rule.handle_batch:
        raise TypeError(f"{rule_class.__name__} must define handle_batch")
    rule = rule_class()

    class Guest:
        def filter(self, event: types.Event) -> bool:
            return bool(rule.filter(_event(event)))

        def partition_key(self, event: types.Event) -> Optional[str]:
            return rule.partition_key(_event(event))

        def membership(self, event: types.Event) -> types.Membership:
            return rule.membership(_event(event))

        def select(self, events: types.EventPack) -> types.Selection:
            verdicts = []
            partitions = []
            for event in unpack(events):
                placed = rule.place(event)
                if placed is None:
                    verdicts.append(types.Verdict.SKIP)
                else:
                    verdicts.append(_VERDICTS[placed[1]])
                    partitions.append(placed[0])
            return types.Selection(verdicts=verdicts, partitions=partitions)

        def handle_batch(self, batch: types.Batch) -> List[types.Emit]:
            b = Batch(
                batch.fire_id,
                batch.rule,
                batch.partition,
                batch.reason,
                batch.attempt,
                unpack(batch.events),
            )
            try:
                return list(rule.handle_batch(b))
            except Fatal as e:
                raise Err(types.RuleError_Fatal(str(e)))
            except Retryable as e:
                raise Err(types.RuleError_Retryable(str(e)))

    return Guest
