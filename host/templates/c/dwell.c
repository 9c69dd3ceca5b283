/* {{name}}: a dwell rule that notices abandoned carts. A cart is a member
 * from `cart.created` until `cart.checked_out`; every other cart event
 * restarts its clock. After 30 minutes without one (see rule.toml) the
 * handler emits `cart.abandoned`. */
#include "sluice.h"

bool rule_filter(const sluice_event *e) {
    return sluice_text_starts_with(e->kind, "cart.");
}

/* One membership per cart. Declared in rule.toml ([select] fields): the
 * engine has parsed it. */
char *rule_partition_key(const sluice_event *e, size_t *len) {
    return sluice_field_string(e, "/cart", len);
}

rule_membership_t rule_membership(const sluice_event *e) {
    if (sluice_text_is(e->kind, "cart.created")) return SLUICE_RULE_TYPES_MEMBERSHIP_ENTER;
    if (sluice_text_is(e->kind, "cart.checked_out")) return SLUICE_RULE_TYPES_MEMBERSHIP_LEAVE;
    /* Any other cart event is a sign of life: the clock restarts. */
    return SLUICE_RULE_TYPES_MEMBERSHIP_REFRESH;
}

bool rule_handle_batch(const sluice_batch *b, sluice_emits *out, sluice_error *err) {
    if (!b->has_partition) return sluice_fail(err, SLUICE_FATAL, "a cart event without a cart id");
    if (b->reason->tag != SLUICE_RULE_TYPES_REASON_DWELL) {
        return sluice_fail(err, SLUICE_FATAL, "unexpected reason %s", sluice_reason_name(b->reason));
    }
    const sluice_rule_types_dwell_reason_t *dwell = &b->reason->val.dwell;
    json_buf payload = {0};
    json_put(&payload, "{\"cart\":");
    json_put_string(&payload, b->partition.ptr, b->partition.len);
    json_put(&payload, ",\"label\":");
    json_put_string(&payload, (const char *)dwell->label.ptr, dwell->label.len);
    json_put(&payload, ",\"idle_since\":");
    json_put_i64(&payload, dwell->member_since);
    json_put(&payload, "}");
    bool ok = !payload.failed && sluice_emit(out, "cart.abandoned", &payload);
    json_buf_free(&payload);
    return ok ? true : sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
}
