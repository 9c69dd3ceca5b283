/* {{name}}: a schedule rule. At the top of every hour (see rule.toml) the
 * handler gets the sign-ups since the previous tick and emits one
 * `signups.hourly` count, also for an hour without any. */
#include "sluice.h"

bool rule_filter(const sluice_event *e) {
    return sluice_text_is(e->kind, "user.signed_up");
}

/* A schedule has one partition, the global one. */
char *rule_partition_key(const sluice_event *e, size_t *len) {
    (void)e;
    (void)len;
    return NULL;
}

rule_membership_t rule_membership(const sluice_event *e) {
    (void)e;
    return SLUICE_RULE_TYPES_MEMBERSHIP_ENTER;
}

bool rule_handle_batch(const sluice_batch *b, sluice_emits *out, sluice_error *err) {
    json_buf payload = {0};
    /* A tick, or (tick null) the last sign-ups when the rule is undeployed
     * with `drain = "fire"`. */
    if (b->reason->tag == SLUICE_RULE_TYPES_REASON_SCHEDULE) {
        json_put(&payload, "{\"tick\":");
        json_put_i64(&payload, b->reason->val.schedule.tick);
        json_put(&payload, b->reason->val.schedule.catch_up ? ",\"catch_up\":true" : ",\"catch_up\":false");
    } else {
        json_put(&payload, "{\"tick\":null,\"catch_up\":false");
    }
    json_put(&payload, ",\"signups\":");
    json_put_u64(&payload, b->len);
    json_put(&payload, "}");
    bool ok = !payload.failed && sluice_emit(out, "signups.hourly", &payload);
    json_buf_free(&payload);
    return ok ? true : sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
}
