/* User inactive for 7 days: a dwell rule whose activity events refresh the
 * membership clock (absence detection; see rule.toml). */
#include <string.h>

#include "sluice.h"

bool rule_filter(const sluice_event *e) {
    return sluice_text_starts_with(e->kind, "user.");
}

char *rule_partition_key(const sluice_event *e, size_t *len) {
    json_value payload, user;
    if (!sluice_payload(e, &payload) || !json_member(&payload, "user_id", &user)) return NULL;
    return json_as_string(&user, len);
}

rule_membership_t rule_membership(const sluice_event *e) {
    if (sluice_text_is(e->kind, "user.signed_up")) return SLUICE_RULE_TYPES_MEMBERSHIP_ENTER;
    if (sluice_text_is(e->kind, "user.deleted")) return SLUICE_RULE_TYPES_MEMBERSHIP_LEAVE;
    /* Any other sign of life re-anchors the clock. */
    return SLUICE_RULE_TYPES_MEMBERSHIP_REFRESH;
}

bool rule_handle_batch(const sluice_batch *b, sluice_emits *out, sluice_error *err) {
    if (!b->has_partition) return sluice_fail(err, SLUICE_FATAL, "dwell fire without a user partition");
    if (b->reason->tag != SLUICE_RULE_TYPES_REASON_DWELL) {
        return sluice_fail(err, SLUICE_FATAL, "unexpected reason %s", sluice_reason_name(b->reason));
    }
    const sluice_rule_types_dwell_reason_t *dwell = &b->reason->val.dwell;
    json_buf payload = {0};
    json_put(&payload, "{\"user_id\":");
    json_put_string(&payload, b->partition.ptr, b->partition.len);
    json_put(&payload, ",\"label\":");
    json_put_string(&payload, (const char *)dwell->label.ptr, dwell->label.len);
    json_put(&payload, ",\"last_seen\":");
    json_put_i64(&payload, dwell->member_since);
    json_put(&payload, ",\"detected_at\":");
    json_put_i64(&payload, sluice_now());
    json_put(&payload, "}");
    bool ok = sluice_emit(out, "user.inactive", &payload);
    json_buf_free(&payload);
    return ok ? true : sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
}
