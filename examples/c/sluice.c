/* See sluice.h: the world's exports on top of the rule's functions. */
#include "sluice.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A broken host or an exhausted memory: nothing sensible is left to do, and
 * a trap fails just this call (the engine retries the fire). */
static void die(const char *what) {
    fprintf(stderr, "sluice: %s\n", what);
    abort();
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static sluice_text text_of(const rule_string_t *s) {
    return (sluice_text){(const char *)s->ptr, s->len};
}

bool sluice_text_is(sluice_text text, const char *s) {
    size_t n = strlen(s);
    return text.len == n && memcmp(text.ptr, s, n) == 0;
}

bool sluice_text_starts_with(sluice_text text, const char *prefix) {
    size_t n = strlen(prefix);
    return text.len >= n && memcmp(text.ptr, prefix, n) == 0;
}

bool sluice_payload(const sluice_event *e, json_value *out) {
    if (json_parse(e->payload.ptr, e->payload.len, out) && out->type == JSON_OBJECT) return true;
    sluice_log(SLUICE_RULE_HOST_LEVEL_WARN, "event %.*s: payload is not a JSON object",
               (int)e->id.len, e->id.ptr);
    return false;
}

bool sluice_emit(sluice_emits *out, const char *kind, const json_buf *payload) {
    if (payload->failed) return false;
    rule_emit_t *grown = realloc(out->ptr, (out->len + 1) * sizeof *grown);
    if (!grown) return false;
    out->ptr = grown;
    rule_emit_t *e = &out->ptr[out->len++];
    rule_string_dup(&e->kind, kind);
    rule_string_dup_n(&e->payload, payload->data, payload->len);
    return true;
}

bool sluice_fail(sluice_error *err, int kind, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int n = vsnprintf(NULL, 0, format, args);
    va_end(args);
    char *message = xmalloc((size_t)(n < 0 ? 0 : n) + 1);
    va_start(args, format);
    vsnprintf(message, (size_t)n + 1, format, args);
    va_end(args);
    err->tag = (uint8_t)kind;
    /* The bindings free the message after the call (post-return). */
    rule_string_t s = {(uint8_t *)message, strlen(message)};
    if (kind == SLUICE_RETRYABLE) {
        err->val.retryable = s;
    } else {
        err->val.fatal = s;
    }
    return false;
}

int64_t sluice_now(void) {
    return sluice_rule_host_now();
}

void sluice_log(sluice_rule_host_level_t level, const char *format, ...) {
    char line[1024];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (n < 0) return;
    rule_string_t s = {(uint8_t *)line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1};
    sluice_rule_host_log(level, &s);
}

const char *sluice_reason_name(const sluice_reason *reason) {
    switch (reason->tag) {
    case SLUICE_RULE_TYPES_REASON_COUNT_REACHED: return "count-reached";
    case SLUICE_RULE_TYPES_REASON_WINDOW_EXPIRED: return "window-expired";
    case SLUICE_RULE_TYPES_REASON_DWELL: return "dwell";
    case SLUICE_RULE_TYPES_REASON_SCHEDULE: return "schedule";
    case SLUICE_RULE_TYPES_REASON_DRAINED: return "drained";
    default: return "unknown";
    }
}

static sluice_event event_of(const rule_event_t *e) {
    return (sluice_event){e->seq, e->time, text_of(&e->id), text_of(&e->source),
                          text_of(&e->kind), text_of(&e->payload)};
}

/* The events of a pack (see `event-pack` in wit/rule.wit), checked: a pack
 * that does not add up is a broken host. */
static sluice_event *unpack(const rule_event_pack_t *pack, size_t *count) {
    size_t n = pack->seqs.len;
    if (pack->times.len != n || pack->ends.len != 4 * n) die("malformed event pack");
    sluice_event *events = xmalloc(n * sizeof *events);
    const char *text = (const char *)pack->text.ptr;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        sluice_text fields[4];
        for (size_t k = 0; k < 4; k++) {
            size_t end = pack->ends.ptr[4 * i + k];
            if (end < start || end > pack->text.len) die("event pack field out of range");
            fields[k] = (sluice_text){text + start, end - start};
            start = end;
        }
        events[i] = (sluice_event){pack->seqs.ptr[i], pack->times.ptr[i], fields[0], fields[1],
                                   fields[2], fields[3]};
    }
    *count = n;
    return events;
}

static void set_key(rule_option_string_t *out, const sluice_event *e) {
    size_t len = 0;
    char *key = rule_partition_key(e, &len);
    out->is_some = key != NULL;
    if (key) out->val = (rule_string_t){(uint8_t *)key, len};
}

bool exports_rule_filter(rule_event_t *event) {
    sluice_event e = event_of(event);
    bool keep = rule_filter(&e);
    rule_event_free(event);
    return keep;
}

bool exports_rule_partition_key(rule_event_t *event, rule_string_t *ret) {
    rule_option_string_t key;
    sluice_event e = event_of(event);
    set_key(&key, &e);
    rule_event_free(event);
    if (key.is_some) *ret = key.val;
    return key.is_some;
}

rule_membership_t exports_rule_membership(rule_event_t *event) {
    sluice_event e = event_of(event);
    rule_membership_t m = rule_membership(&e);
    rule_event_free(event);
    return m;
}

void exports_rule_select(rule_event_pack_t *pack, rule_selection_t *ret) {
    size_t n;
    sluice_event *events = unpack(pack, &n);
    ret->verdicts.ptr = xmalloc(n * sizeof *ret->verdicts.ptr);
    ret->verdicts.len = n;
    ret->partitions.ptr = xmalloc(n * sizeof *ret->partitions.ptr);
    ret->partitions.len = 0;
    for (size_t i = 0; i < n; i++) {
        if (!rule_filter(&events[i])) {
            ret->verdicts.ptr[i] = SLUICE_RULE_TYPES_VERDICT_SKIP;
            continue;
        }
        rule_membership_t m = rule_membership(&events[i]);
        if (m > SLUICE_RULE_TYPES_MEMBERSHIP_IGNORE) die("rule_membership returned no membership");
        /* Verdicts are memberships shifted past `skip`. */
        ret->verdicts.ptr[i] = (sluice_rule_types_verdict_t)(m + 1);
        set_key(&ret->partitions.ptr[ret->partitions.len++], &events[i]);
    }
    free(events);
    rule_event_pack_free(pack);
}

bool exports_rule_handle_batch(rule_batch_t *batch, rule_list_emit_t *ret, rule_rule_error_t *err) {
    size_t n;
    sluice_event *events = unpack(&batch->events, &n);
    sluice_batch b = {
        .fire_id = text_of(&batch->fire_id),
        .rule = text_of(&batch->rule),
        .has_partition = batch->partition.is_some,
        .partition = batch->partition.is_some ? text_of(&batch->partition.val)
                                              : (sluice_text){"", 0},
        .reason = &batch->reason,
        .attempt = batch->attempt,
        .len = n,
        .events = events,
    };
    *ret = (rule_list_emit_t){0};
    bool ok = rule_handle_batch(&b, ret, err);
    if (!ok) {
        /* On failure the bindings lower only the error: drop the emits. */
        rule_list_emit_free(ret);
        *ret = (rule_list_emit_t){0};
    }
    free(events);
    rule_batch_free(batch);
    return ok;
}
