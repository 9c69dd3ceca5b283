// Write Sluice rules in JavaScript.
//
// A rule is an object with `filter`, `partitionKey`, `membership` (all
// optional) and `handleBatch`; `exportRule(rule)` returns the exports of
// the `sluice:rule/projected-rule` world (the five functions of `rule` and
// the `projection` interface), which the rule's module re-exports:
//
//     import { exportRule, emit } from "../sluice.js";
//     export const { filter, partitionKey, membership, select, handleBatch, projection } =
//       exportRule({
//         filter: (event) => event.kind === "pull_request.merged",
//         partitionKey: (event) => event.field("/repo"),
//         handleBatch: (batch) => [emit("digest", { merged: batch.events.length })],
//       });
//
// The engine calls the batched `select` on its hot path; it is implemented
// here with the per-event functions, so a rule never sees the packed
// layout. When rule.toml declares `[select] fields = ["/repo"]`, the engine
// parses those fields natively and calls `projection.select` instead: the
// events then carry no payload, and `event.field("/repo")` reads the
// engine's value (the same value it reads from a whole payload elsewhere).
// Rules are stateless: the engine may run any call on a fresh instance.

import { log as hostLog, now as hostNow } from "sluice:rule/host@0.1.0";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * One event of the tenant's log; `json()` parses the payload (an object),
 * `field(pointer)` reads one value by JSON pointer (`undefined` when the
 * pointer leads nowhere).
 */
export class Event {
  constructor(seq, time, id, source, kind, payload, fields) {
    this.seq = seq; // BigInt: log positions are u64
    this.time = time; // Number: milliseconds since the epoch
    this.id = id;
    this.source = source;
    this.kind = kind;
    this.payload = payload; // undefined under [select] fields
    this.fields = fields; // Map pointer -> value under [select] fields
  }

  json() {
    if (this.payload === undefined) {
      throw new Error(
        `event ${this.id} has no payload here: rule.toml declares [select] fields, ` +
          'so select sees only those; read them with event.field("/...")',
      );
    }
    return JSON.parse(this.payload);
  }

  field(pointer) {
    if (this.fields !== undefined) {
      if (!this.fields.has(pointer)) {
        throw new Error(
          `event.field(${JSON.stringify(pointer)}): rule.toml declares [select] fields = ` +
            `${JSON.stringify([...this.fields.keys()])}; add it there to read it in select`,
        );
      }
      return this.fields.get(pointer);
    }
    let value = this.json();
    for (const token of pointerTokens(pointer)) {
      if (Array.isArray(value)) {
        value = /^(0|[1-9][0-9]*)$/.test(token) ? value[Number(token)] : undefined;
      } else if (value !== null && typeof value === "object" && Object.hasOwn(value, token)) {
        value = value[token];
      } else {
        value = undefined;
      }
      if (value === undefined) return undefined;
    }
    return value;
  }
}

/** The reference tokens of a JSON pointer (RFC 6901), decoded. */
function pointerTokens(pointer) {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) {
    throw new Error(`${JSON.stringify(pointer)} is not a JSON pointer: it must start with "/"`);
  }
  return pointer
    .slice(1)
    .split("/")
    .map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
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

/**
 * The events of a projected pack (see `projected-pack` in wit/rule.wit):
 * no payloads, the declared fields' values instead.
 */
export function unpackProjected(pack) {
  const { fields, seqs, times, ends, text, kinds, integers, floats } = pack;
  const n = fields.length;
  const stride = 3 + n;
  if (ends.length !== stride * seqs.length || kinds.length !== n * seqs.length) {
    throw new Error(`malformed projected pack: ${seqs.length} seqs, ${n} fields`);
  }
  const events = new Array(seqs.length);
  let start = 0;
  const next = (end) => {
    const s = utf8.decode(text.subarray(start, end));
    start = end;
    return s;
  };
  for (let i = 0; i < seqs.length; i++) {
    const id = next(ends[stride * i]);
    const source = next(ends[stride * i + 1]);
    const kind = next(ends[stride * i + 2]);
    const values = new Map();
    for (let j = 0; j < n; j++) {
      const slot = n * i + j;
      const raw = next(ends[stride * i + 3 + j]);
      let value;
      switch (kinds[slot]) {
        case "absent":
          value = undefined;
          break;
        case "null":
          value = null;
          break;
        case "boolean":
          value = integers[slot] !== 0n;
          break;
        case "integer":
          value = Number(integers[slot]);
          break;
        case "float":
          value = floats[slot];
          break;
        case "text":
          value = raw;
          break;
        case "json":
          value = JSON.parse(raw);
          break;
        default:
          throw new Error(`unknown field kind ${kinds[slot]}`);
      }
      values.set(fields[j], value);
    }
    events[i] = new Event(seqs[i], Number(times[i]), id, source, kind, undefined, values);
  }
  return events;
}

function fromRecord(e) {
  return new Event(e.seq, Number(e.time), e.id, e.source, e.kind, e.payload);
}

const MEMBERSHIPS = new Set(["enter", "leave", "refresh", "ignore"]);

/**
 * The world's exports for `rule` (and its `projection` interface). Its functions receive `Event`s and a
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
  const selection = (events) => {
    const verdicts = [];
    const partitions = [];
    for (const event of events) {
      const placed = place(event);
      if (placed === undefined || placed === null) {
        verdicts.push("skip");
      } else {
        verdicts.push(effect(placed[1]));
        partitions.push(key(placed[0]));
      }
    }
    return { verdicts, partitions };
  };

  return {
    filter: (e) => Boolean(filter(fromRecord(e))),
    partitionKey: (e) => key(partitionKey(fromRecord(e))),
    membership: (e) => effect(membership(fromRecord(e))),
    select: (pack) => selection(unpack(pack)),
    projection: { select: (pack) => selection(unpackProjected(pack)) },
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
