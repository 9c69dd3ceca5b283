// User inactive for 7 days: a dwell rule whose activity events refresh the
// membership clock (absence detection; see rule.toml).

import { exportRule, emit, now, Fatal } from "../sluice.js";

const MEMBERSHIP = { "user.signed_up": "enter", "user.deleted": "leave" };

export const { filter, partitionKey, membership, select, handleBatch, projection } = exportRule({
  filter: (event) => event.kind.startsWith("user."),

  partitionKey(event) {
    const { user_id: user } = event.json();
    return typeof user === "string" ? user : undefined;
  },

  // Any other sign of life re-anchors the clock.
  membership: (event) => MEMBERSHIP[event.kind] ?? "refresh",

  handleBatch(batch) {
    if (batch.partition === null) throw new Fatal("dwell fire without a user partition");
    if (batch.reason.tag !== "dwell") throw new Fatal(`unexpected reason ${batch.reason.tag}`);
    const { label, memberSince } = batch.reason.val;
    return [
      emit("user.inactive", {
        user_id: batch.partition,
        label,
        last_seen: Number(memberSince),
        detected_at: now(),
      }),
    ];
  },
});
