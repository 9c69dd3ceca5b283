// {{name}}: a schedule rule. At the top of every hour (see rule.toml) the
// handler gets the sign-ups since the previous tick and emits one
// `signups.hourly` count, also for an hour without any.

import { exportRule, emit } from "./sdk/sluice.js";

export const { filter, partitionKey, membership, select, handleBatch, projection } = exportRule({
  filter: (event) => event.kind === "user.signed_up",

  handleBatch(batch) {
    // A tick, or (tick null) the last sign-ups when the rule is
    // undeployed with `drain = "fire"`.
    const schedule = batch.reason.tag === "schedule" ? batch.reason.val : null;
    return [
      emit("signups.hourly", {
        tick: schedule ? Number(schedule.tick) : null,
        catch_up: schedule ? schedule.catchUp : false,
        signups: batch.events.length,
      }),
    ];
  },
});
