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
layout. When rule.toml declares `[select] fields = ["/repo"]`, the engine
parses those fields natively and calls the projection's `select` instead:
its events carry no payload, and `event.field("/repo")` reads the engine's
value (elsewhere it reads the payload, with the same result). Rules are stateless: the engine may run any call on a fresh
instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type

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
    # Under [select] fields: the declared fields' values by pointer (and
    # no payload).
    fields: Optional[Dict[str, Any]] = None

    def json(self) -> Any:
        """The payload parsed: always a dict (the engine only accepts objects)."""
        if self.fields is not None:
            raise ValueError(
                f"event {self.id} has no payload here: rule.toml declares [select] fields, "
                'so select sees only those; read them with event.field("/...")'
            )
        return json.loads(self.payload)

    def field(self, pointer: str) -> Any:
        """The value a JSON pointer (e.g. "/repo") finds in the payload; None
        when it leads nowhere (or to null). Under [select] fields the pointer
        must be one of the declared fields."""
        if self.fields is not None:
            if pointer not in self.fields:
                raise KeyError(
                    f"event.field({pointer!r}): rule.toml declares [select] fields = "
                    f"{list(self.fields)}; add it there to read it in select"
                )
            return self.fields[pointer]
        value: Any = self.json()
        for token in _tokens(pointer):
            if isinstance(value, dict):
                value = value.get(token)
            elif isinstance(value, list) and token.isdigit() and (token == "0" or token[0] != "0"):
                index = int(token)
                value = value[index] if index < len(value) else None
            else:
                value = None
            if value is None:
                return None
        return value


def _tokens(pointer: str) -> List[str]:
    """The reference tokens of a JSON pointer (RFC 6901), decoded."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer: it must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


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


def unpack_projected(pack: types.ProjectedPack) -> List[Event]:
    """The events of a projected pack (see `projected-pack` in wit/rule.wit):
    no payloads, the declared fields' values instead."""
    fields, seqs, ends, text = pack.fields, pack.seqs, pack.ends, pack.text
    n = len(fields)
    stride = 3 + n
    if len(ends) != stride * len(seqs) or len(pack.kinds) != n * len(seqs):
        raise ValueError(f"malformed projected pack: {len(seqs)} seqs, {n} fields")
    kinds, integers, floats = pack.kinds, pack.integers, pack.floats
    K = types.FieldKind
    events = []
    start = 0
    for i in range(len(seqs)):
        base = stride * i
        a, b, c = ends[base : base + 3]
        values: Dict[str, Any] = {}
        prev = c
        for j in range(n):
            end = ends[base + 3 + j]
            slot = n * i + j
            kind = kinds[slot]
            if kind == K.TEXT:
                value: Any = text[prev:end].decode()
            elif kind == K.JSON:
                value = json.loads(text[prev:end].decode())
            elif kind == K.INTEGER:
                value = integers[slot]
            elif kind == K.FLOAT:
                value = floats[slot]
            elif kind == K.BOOLEAN:
                value = integers[slot] != 0
            else:
                value = None  # absent or null
            values[fields[j]] = value
            prev = end
        events.append(
            Event(
                seqs[i],
                pack.times[i],
                text[start:a].decode(),
                text[a:b].decode(),
                text[b:c].decode(),
                "",
                values,
            )
        )
        start = prev
    return events


_VERDICTS = {
    Membership.ENTER: types.Verdict.ENTER,
    Membership.LEAVE: types.Verdict.LEAVE,
    Membership.REFRESH: types.Verdict.REFRESH,
    Membership.IGNORE: types.Verdict.IGNORE,
}


def _selection(rule: Rule, events: List[Event]) -> types.Selection:
    verdicts = []
    partitions = []
    for event in events:
        placed = rule.place(event)
        if placed is None:
            verdicts.append(types.Verdict.SKIP)
        else:
            verdicts.append(_VERDICTS[placed[1]])
            partitions.append(placed[0])
    return types.Selection(verdicts=verdicts, partitions=partitions)


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
            return _selection(rule, unpack(events))

        def select_projected(self, events: types.ProjectedPack) -> types.Selection:
            return _selection(rule, unpack_projected(events))

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
