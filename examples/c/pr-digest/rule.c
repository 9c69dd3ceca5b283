/* PR-merge digest: merged pull requests per repository, one digest per
 * batch (after 10 merges, or when the hour is up; see rule.toml). */
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

bool rule_filter(const sluice_event *e) {
    return sluice_text_is(e->kind, "pull_request.merged");
}

/* A payload without a string `repo` goes to the global partition rather
 * than being dropped: the digest says the repository is unknown. Declared
 * in rule.toml (`[select] fields`), `repo` arrives parsed by the engine. */
char *rule_partition_key(const sluice_event *e, size_t *len) {
    return sluice_field_string(e, "/repo", len);
}

rule_membership_t rule_membership(const sluice_event *e) {
    (void)e;
    return SLUICE_RULE_TYPES_MEMBERSHIP_ENTER;
}

/* Decoded authors, in first-seen order, without repeats. */
typedef struct {
    char **names;
    size_t *lens;
    size_t len;
} author_set;

static bool add_author(author_set *set, char *name, size_t len) {
    for (size_t i = 0; i < set->len; i++) {
        if (set->lens[i] == len && memcmp(set->names[i], name, len) == 0) {
            free(name);
            return true;
        }
    }
    char **names = realloc(set->names, (set->len + 1) * sizeof *names);
    if (names) set->names = names;
    size_t *lens = realloc(set->lens, (set->len + 1) * sizeof *lens);
    if (lens) set->lens = lens;
    if (!names || !lens) {
        free(name);
        return false;
    }
    set->names[set->len] = name;
    set->lens[set->len++] = len;
    return true;
}

static void free_authors(author_set *set) {
    for (size_t i = 0; i < set->len; i++) free(set->names[i]);
    free(set->names);
    free(set->lens);
}

static const char *why(const sluice_reason *reason) {
    switch (reason->tag) {
    case SLUICE_RULE_TYPES_REASON_COUNT_REACHED: return "count reached";
    case SLUICE_RULE_TYPES_REASON_WINDOW_EXPIRED: return "window expired";
    default: return "flushed";
    }
}

bool rule_handle_batch(const sluice_batch *b, sluice_emits *out, sluice_error *err) {
    json_buf prs = {0};
    author_set authors = {0};
    bool ok = false;
    for (size_t i = 0; i < b->len; i++) {
        const sluice_event *e = &b->events[i];
        json_value payload, v;
        uint64_t number;
        if (!sluice_payload(e, &payload) || !json_member(&payload, "number", &v) ||
            !json_as_u64(&v, &number)) {
            sluice_fail(err, SLUICE_FATAL, "event %.*s: no pull request number", (int)e->id.len,
                        e->id.ptr);
            goto done;
        }
        json_put(&prs, i ? ",{\"number\":" : "{\"number\":");
        json_put_u64(&prs, number);
        json_put(&prs, ",\"title\":");
        size_t len;
        char *title = json_member(&payload, "title", &v) ? json_as_string(&v, &len) : NULL;
        if (title) {
            json_put_string(&prs, title, len);
            free(title);
        } else {
            json_put(&prs, "null");
        }
        json_put(&prs, "}");
        char *author = json_member(&payload, "author", &v) ? json_as_string(&v, &len) : NULL;
        if (author && !add_author(&authors, author, len)) {
            sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
            goto done;
        }
    }

    json_buf digest = {0};
    json_put(&digest, "{\"repo\":");
    if (b->has_partition) {
        json_put_string(&digest, b->partition.ptr, b->partition.len);
    } else {
        json_put(&digest, "null");
    }
    json_put(&digest, ",\"merged\":");
    json_put_u64(&digest, b->len);
    json_put(&digest, ",\"pull_requests\":[");
    json_put_raw(&digest, prs.data, prs.len);
    json_put(&digest, "],\"authors\":[");
    for (size_t i = 0; i < authors.len; i++) {
        if (i) json_put(&digest, ",");
        json_put_string(&digest, authors.names[i], authors.lens[i]);
    }
    json_put(&digest, "],\"reason\":");
    json_put_string(&digest, why(b->reason), strlen(why(b->reason)));
    json_put(&digest, "}");
    if (prs.failed || !sluice_emit(out, "pr.digest", &digest)) {
        sluice_fail(err, SLUICE_RETRYABLE, "out of memory");
    } else {
        static const char unknown[] = "unknown repository";
        sluice_text repo = b->has_partition ? b->partition : (sluice_text){unknown, sizeof unknown - 1};
        sluice_log(SLUICE_RULE_HOST_LEVEL_INFO, "digest for %.*s: %zu merges (%s)", (int)repo.len,
                   repo.ptr, b->len, why(b->reason));
        ok = true;
    }
    json_buf_free(&digest);
done:
    json_buf_free(&prs);
    free_authors(&authors);
    return ok;
}
