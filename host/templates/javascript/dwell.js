// {{name}}: a dwell rule that notices abandoned carts. A cart is a member
// from `cart.created` until `cart.checked_out`; every other cart event
// restarts its clock. After 30 minutes without one (see rule.toml) the
// handler emits `cart.abandoned`.

import { exportRule, emit, Fatal } from "./sdk/sluice.js";

const MEMBERSHIP = { "cart.created": "enter", "cart.checked_out": "leave" };

export const { filter, partitionKey, membership, select, handleBatch, projection } = exportRule({
  filter: (event) => event.kind.startsWith("cart."),

  // One membership per cart.
  partitionKey(event) {
    // Declared in rule.toml ([select] fields): the engine has parsed it.
    const cart = event.field("/cart");
    return typeof cart === "string" ? cart : undefined;
  },

  // Any other cart event is a sign of life: the clock restarts.
  membership: (event) => MEMBERSHIP[event.kind] ?? "refresh",

  handleBatch(batch) {
    if (batch.partition === null) throw new Fatal("a cart event without a cart id");
    if (batch.reason.tag !== "dwell") throw new Fatal(`unexpected reason ${batch.reason.tag}`);
    const { label, memberSince } = batch.reason.val;
    return [
      emit("cart.abandoned", {
        cart: batch.partition,
        label,
        idle_since: Number(memberSince),
      }),
    ];
  },
});
