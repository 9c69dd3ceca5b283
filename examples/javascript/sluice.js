// Write Sluice rules in JavaScript.
//
// A rule is an object with `filter`, `partitionKey`, `membership` (all
// optional) and `handleBatch`; `exportRule(rule)` returns the five
// functions of the `sluice:rule/rule` world, which the rule's module
// re-exports:
//
//     import { exportRule, emit } from "../sluice.js";
//     export const { filter, partitionKey, membership, select, handleBatch } =
//       exportRule({
//         filter: (event) => event.kind === "pull_request.merged",
//         handleBatch: (batch) => [emit("digest", { merged: batch.events.length })],
//       });
//
// The engine calls the world's batched `select` on its hot path; it is
// implemented here with the per-event functions, so a rule never sees the
// packed layout. Rules are stateless: the engine may run any call on a
// fresh instance.

import { log as hostLog, now as hostNow } from "sluice:rule/host@0.1.0";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** One event of the tenant's log; `json()` parses the payload (an object). */
export class Event {
  constructor(seq, time, id, source, kind, payload) {
    this.seq = seq; // BigInt: log positions are u64
    this.time = time; // Number: milliseconds since the epoch
    this.id = id;
    this.source = source;
    this.kind = kind;
    this.payload = payload;
  }

  json() {
    return JSON.parse(this.payload);
  }
}

/** Fail the fire for good: it goes to the dead-letter list. */
export class Fatal extends Error {}

/** Fail the fire for now: it is retried with backoff. */
export class Retryable extends Error {}

/** An event to emit; `payload` must be a plain object. */
export function emit(kind, payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new TypeError(`emit ${JSON.stringify(kind)}: payload must be an object`);
  }
  return { kind, payload: JSON.stringify(payload) };
}

/** Write a line to the engine's logs: level is "trace" … "error". */
export function log(level, message) {
  hostLog(level, String(message));
}

/** The engine's clock in milliseconds since the epoch (virtual in tests). */
export function now() {
  return Number(hostNow());
}

/** The events of a pack (see `event-pack` in wit/rule.wit). */
export function unpack(pack) {
  const { seqs, times, ends, text } = pack;
  if (ends.length !== 4 * seqs.length || times.length !== seqs.length) {
    throw new Error(
      `malformed event pack: ${seqs.length} seqs, ${times.length} times, ${ends.length} ends`,
    );
  }
  const events = new Array(seqs.length);
  let start = 0;
  const field = (end) => {
    const s = utf8.decode(text.subarray(start, end));
    start = end;
    return s;
  };
  for (let i = 0; i < seqs.length; i++) {
    const id = field(ends[4 * i]);
    const source = field(ends[4 * i + 1]);
    const kind = field(ends[4 * i + 2]);
    const payload = field(ends[4 * i + 3]);
    events[i] = new Event(seqs[i], Number(times[i]), id, source, kind, payload);
  }
  return events;
}

function fromRecord(e) {
  return new Event(e.seq, Number(e.time), e.id, e.source, e.kind, e.payload);
}

const MEMBERSHIPS = new Set(["enter", "leave", "refresh", "ignore"]);

/**
 * The world's exports for `rule`. Its functions receive `Event`s and a
 * batch `{fireId, rule, partition, reason, attempt, events}` where
 * `reason` is `{tag: "count-reached" | "window-expired" | "dwell" |
 * "schedule" | "drained", val}`.
 */
export function exportRule(rule) {
  if (typeof rule.handleBatch !== "function") {
    throw new TypeError("a rule must define handleBatch(batch)");
  }
  const filter = rule.filter ?? (() => true);
  const partitionKey = rule.partitionKey ?? (() => undefined);
  const membership = rule.membership ?? (() => "enter");
  const place =
    rule.place ??
    ((event) => (filter(event) ? [partitionKey(event), membership(event)] : undefined));
  const key = (k) => (k === null || k === undefined ? undefined : String(k));
  const effect = (m) => {
    if (!MEMBERSHIPS.has(m)) {
      throw new TypeError(`membership must be one of enter, leave, refresh, ignore; got ${m}`);
    }
    return m;
  };

  return {
    filter: (e) => Boolean(filter(fromRecord(e))),
    partitionKey: (e) => key(partitionKey(fromRecord(e))),
    membership: (e) => effect(membership(fromRecord(e))),
    select(pack) {
      const verdicts = [];
      const partitions = [];
      for (const event of unpack(pack)) {
        const placed = place(event);
        if (placed === undefined || placed === null) {
          verdicts.push("skip");
        } else {
          verdicts.push(effect(placed[1]));
          partitions.push(key(placed[0]));
        }
      }
      return { verdicts, partitions };
    },
    handleBatch(batch) {
      const b = {
        fireId: batch.fireId,
        rule: batch.rule,
        partition: batch.partition ?? null,
        reason: batch.reason,
        attempt: batch.attempt,
        events: unpack(batch.events),
      };
      try {
        return rule.handleBatch(b);
      } catch (e) {
        // A result's error crosses as the thrown value's `payload`.
        if (e instanceof Fatal) throw { payload: { tag: "fatal", val: e.message } };
        if (e instanceof Retryable) throw { payload: { tag: "retryable", val: e.message } };
        throw e;
      }
    },
  };
}
