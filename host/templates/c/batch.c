/* {{name}}: a batch rule. Orders are grouped per customer; a batch fires
 * after 3 orders, or an hour after its first order (see rule.toml), and
 * the handler emits one `orders.batch` summary per batch. */
#include <string.h>

#include "sluice.h"

bool rule_filter(const sluice_event *e) {
    return sluice_text_is(e->kind, "order.placed");
}

/* One batch per customer; orders without one share the global batch.
 * Declared in rule.toml ([select] fields): the engine has parsed it. */
char *rule_partition_key(const sluice_event *e, size_t *len) {
    return sluice_field_string(e, "/customer", len);
}

rule_membership_t rule_membership(const sluice_event *e) {
    (void)e;
    return SLUICE_RULE_TYPES_MEMBERSHIP_ENTER;
}

bool rule_handle_batch(const sluice_batch *b, sluice_emits *out, sluice_error *err) {
    uint64_t total = 0;
    for (size_t i = 0; i < b->len; i++) {
        const sluice_event *e = &b->events[i];
        json_value payload, amount;
        uint64_t cents;
        if (!sluice_payload(e, &payload) || !json_member(&payload, "amount_cents", &amount) ||
            !json_as_u64(&amount, &cents)) {
            /* Fatal: retrying would not help; the fire goes to the dead
             * letters, where `sluice dead-letters` shows it. */
            return sluice_fail(err, SLUICE_FATAL, "event %.*s: an order without amount_cents",
                               (int)e->id.len, e->id.ptr);
        }
        total = total + cents < total ? UINT64_MAX : total + cents;
    }
    const char *reason = sluice_reason_name(b->reason);
    json_buf summary = {0};
    json_put(&summary, "{\"customer\":");
    if (b->has_partition) {
        json_put_string(&summary, b->partition.ptr, b->partition.len);
    } else {
        json_put(&summary, "null");
    }
    json_put(&summary, ",\"orders\":");
    json_put_u64(&summary, b->len);
    json_put(&summary, ",\"total_cents\":");
    json_put_u64(&summary, total);
    json_put(&summary, ",\"reason\":");
    json_put_string(&summary, reason, strlen(reason));
    json_put(&summary, "}");
    bool ok = !summary.failed && sluice_emit(out, "orders.batch", &summary);
    json_buf_free(&summary);
    return ok ? true : sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
}
