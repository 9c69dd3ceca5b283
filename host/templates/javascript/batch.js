// {{name}}: a batch rule. Orders are grouped per customer; a batch fires
// after 3 orders, or an hour after its first order (see rule.toml), and the
// handler emits one `orders.batch` summary per batch.

import { exportRule, emit, Fatal } from "./sdk/sluice.js";

export const { filter, partitionKey, membership, select, handleBatch, projection } = exportRule({
  filter: (event) => event.kind === "order.placed",

  // One batch per customer; orders without one share the global batch.
  partitionKey(event) {
    // Declared in rule.toml ([select] fields): the engine has parsed it.
    const customer = event.field("/customer");
    return typeof customer === "string" ? customer : undefined;
  },

  handleBatch(batch) {
    let total = 0;
    for (const event of batch.events) {
      const { amount_cents: cents } = event.json();
      if (!Number.isSafeInteger(cents) || cents < 0) {
        // Fatal: retrying would not help; the fire goes to the dead
        // letters, where `sluice dead-letters` shows it.
        throw new Fatal(`event ${event.id}: an order without amount_cents`);
      }
      total += cents;
    }
    return [
      emit("orders.batch", {
        customer: batch.partition,
        orders: batch.events.length,
        total_cents: total,
        reason: batch.reason.tag,
      }),
    ];
  },
});
