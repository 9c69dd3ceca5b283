/* See sluice.h: the world's exports on top of the rule's functions. */
#include "sluice.h"

#include <errno.h>
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
    if (e->projected) {
        fprintf(stderr,
                "sluice: event %.*s has no payload here: rule.toml declares [select] fields, so "
                "select sees only those; read them with sluice_field()\n",
                (int)e->id.len, e->id.ptr);
        abort();
    }
    if (json_parse(e->payload.ptr, e->payload.len, out) && out->type == JSON_OBJECT) return true;
    sluice_log(SLUICE_RULE_HOST_LEVEL_WARN, "event %.*s: payload is not a JSON object",
               (int)e->id.len, e->id.ptr);
    return false;
}

static char *copy_text(const char *p, size_t len) {
    char *s = xmalloc(len + 1);
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* A value of the payload as a sluice_value. */
static bool value_of(const json_value *v, sluice_value *out) {
    switch (v->type) {
    case JSON_NULL: out->kind = SLUICE_FIELD_NULL; return true;
    case JSON_BOOL:
        out->kind = SLUICE_FIELD_BOOLEAN;
        out->integer = v->start[0] == 't';
        return true;
    case JSON_STRING:
        out->text = json_as_string(v, &out->len);
        if (!out->text) return false;
        out->kind = SLUICE_FIELD_TEXT;
        return true;
    case JSON_ARRAY:
    case JSON_OBJECT:
        out->kind = SLUICE_FIELD_JSON;
        out->text = copy_text(v->start, v->len);
        out->len = v->len;
        return true;
    case JSON_NUMBER: {
        char *t = copy_text(v->start, v->len);
        /* As the engine reads numbers: whole and within int64 is an
         * integer (not `-0`), anything else a float. */
        bool whole = strpbrk(t, ".eE") == NULL && strcmp(t, "-0") != 0;
        char *end;
        errno = 0;
        long long n = strtoll(t, &end, 10);
        if (whole && errno == 0 && *end == '\0') {
            out->kind = SLUICE_FIELD_INTEGER;
            out->integer = n;
            out->number = (double)n;
        } else {
            out->kind = SLUICE_FIELD_FLOAT;
            out->number = strtod(t, NULL);
        }
        free(t);
        return true;
    }
    }
    return false;
}

/* Follows `pointer` from `doc`; false when it leads nowhere. */
static bool walk(json_value doc, const char *pointer, json_value *out) {
    if (*pointer == '\0') {
        *out = doc;
        return true;
    }
    if (*pointer != '/') {
        fprintf(stderr, "sluice: \"%s\" is not a JSON pointer: it must start with /\n", pointer);
        abort();
    }
    const char *p = pointer + 1;
    char *token = xmalloc(strlen(pointer) + 1);
    for (;;) {
        size_t n = 0;
        for (; *p && *p != '/'; p++) {
            if (*p == '~' && (p[1] == '0' || p[1] == '1')) {
                token[n++] = p[1] == '0' ? '~' : '/';
                p++;
            } else {
                token[n++] = *p;
            }
        }
        token[n] = '\0';
        json_value next;
        bool found = false;
        if (doc.type == JSON_OBJECT) {
            found = json_member(&doc, token, &next);
        } else if (doc.type == JSON_ARRAY && n > 0 && strspn(token, "0123456789") == n &&
                   (n == 1 || token[0] != '0')) {
            found = json_element(&doc, (size_t)strtoull(token, NULL, 10), &next);
        }
        if (!found) {
            free(token);
            return false;
        }
        doc = next;
        if (*p == '\0') break;
        p++;
    }
    free(token);
    *out = doc;
    return true;
}

/* Field `pointer` of a projected event (see `projected-pack` in the WIT). */
static bool projected_field(const sluice_event *e, const char *pointer, sluice_value *out) {
    const sluice_rule_types_projected_pack_t *pack = e->projected;
    size_t n = pack->fields.len, len = strlen(pointer), j = 0;
    while (j < n && !(pack->fields.ptr[j].len == len &&
                      memcmp(pack->fields.ptr[j].ptr, pointer, len) == 0)) {
        j++;
    }
    if (j == n) {
        fprintf(stderr,
                "sluice: sluice_field(\"%s\"): rule.toml declares [select] fields without it; "
                "add it there to read it in select\n",
                pointer);
        abort();
    }
    size_t slot = n * e->index + j, k = (3 + n) * e->index + 3 + j;
    size_t start = pack->ends.ptr[k - 1], end = pack->ends.ptr[k];
    out->kind = pack->kinds.ptr[slot];
    out->integer = pack->integers.ptr[slot];
    out->number = out->kind == SLUICE_FIELD_INTEGER ? (double)out->integer : pack->floats.ptr[slot];
    if (out->kind == SLUICE_FIELD_TEXT || out->kind == SLUICE_FIELD_JSON) {
        out->text = copy_text((const char *)pack->text.ptr + start, end - start);
        out->len = end - start;
    }
    return true;
}

bool sluice_field(const sluice_event *e, const char *pointer, sluice_value *out) {
    *out = (sluice_value){.kind = SLUICE_FIELD_ABSENT};
    if (e->projected) return projected_field(e, pointer, out);
    json_value doc, v;
    if (!json_parse(e->payload.ptr, e->payload.len, &doc) || !walk(doc, pointer, &v)) return true;
    if (value_of(&v, out)) return true;
    *out = (sluice_value){.kind = SLUICE_FIELD_ABSENT};
    return false;
}

void sluice_value_free(sluice_value *v) {
    free(v->text);
    v->text = NULL;
    v->len = 0;
}

char *sluice_field_string(const sluice_event *e, const char *pointer, size_t *len) {
    sluice_value v;
    if (!sluice_field(e, pointer, &v)) return NULL;
    if (v.kind != SLUICE_FIELD_TEXT) {
        sluice_value_free(&v);
        return NULL;
    }
    if (len) *len = v.len;
    return v.text;
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
                          text_of(&e->kind), text_of(&e->payload), NULL, 0};
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
                                   fields[2], fields[3], NULL, 0};
    }
    *count = n;
    return events;
}

/* The events of a projected pack (see `projected-pack` in wit/rule.wit):
 * id, source and kind, and the pack itself for sluice_field. */
static sluice_event *unpack_projected(const sluice_rule_types_projected_pack_t *pack,
                                      size_t *count) {
    size_t n = pack->seqs.len, per = pack->fields.len, stride = 3 + per;
    if (pack->times.len != n || pack->ends.len != stride * n || pack->kinds.len != per * n ||
        pack->integers.len != per * n || pack->floats.len != per * n) {
        die("malformed projected pack");
    }
    sluice_event *events = xmalloc(n * sizeof *events);
    const char *text = (const char *)pack->text.ptr;
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        sluice_text fields[3];
        for (size_t k = 0; k < stride; k++) {
            size_t end = pack->ends.ptr[stride * i + k];
            if (end < start || end > pack->text.len) die("projected pack field out of range");
            if (k < 3) fields[k] = (sluice_text){text + start, end - start};
            start = end;
        }
        events[i] = (sluice_event){pack->seqs.ptr[i], pack->times.ptr[i], fields[0], fields[1],
                                   fields[2], (sluice_text){"", 0}, pack, i};
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

/* The rule's verdicts on `n` events. */
static void select_events(const sluice_event *events, size_t n, rule_selection_t *ret) {
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
}

void exports_rule_select(rule_event_pack_t *pack, rule_selection_t *ret) {
    size_t n;
    sluice_event *events = unpack(pack, &n);
    select_events(events, n, ret);
    free(events);
    rule_event_pack_free(pack);
}

void exports_sluice_rule_projection_select(exports_sluice_rule_projection_projected_pack_t *pack,
                                           exports_sluice_rule_projection_selection_t *ret) {
    size_t n;
    sluice_event *events = unpack_projected(pack, &n);
    select_events(events, n, ret);
    free(events);
    exports_sluice_rule_projection_projected_pack_free(pack);
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
