/* See json.h. A validating recursive-descent reader over the text as it
 * is (no tree is built) and an escaping writer. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* Deeper nesting than this is refused rather than risking the stack. */
#define MAX_DEPTH 128

typedef struct {
    const char *p;
    const char *end;
    int depth;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Four hex digits at p (which has at least 4 bytes) as a code unit. */
static long hex4(const char *p) {
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(p[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool skip_string(cursor *c) {
    if (c->p >= c->end || *c->p != '"') return false;
    c->p++;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"') return true;
        if (ch < 0x20) return false;
        if (ch != '\\') continue;
        if (c->p >= c->end) return false;
        switch (*c->p++) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            break;
        case 'u':
            if (c->end - c->p < 4 || hex4(c->p) < 0) return false;
            c->p += 4;
            break;
        default:
            return false;
        }
    }
    return false;
}

static bool skip_digits(cursor *c) {
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    return c->p > start;
}

static bool skip_number(cursor *c) {
    if (c->p < c->end && *c->p == '-') c->p++;
    if (c->p < c->end && *c->p == '0') {
        c->p++;
    } else if (!skip_digits(c)) {
        return false;
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!skip_digits(c)) return false;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (!skip_digits(c)) return false;
    }
    return true;
}

static bool skip_word(cursor *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return false;
    c->p += n;
    return true;
}

static bool skip_value(cursor *c, json_value *out);

static bool skip_members(cursor *c, char close, bool keyed) {
    if (++c->depth > MAX_DEPTH) return false;
    c->p++; /* the opening bracket */
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        c->depth--;
        return true;
    }
    for (;;) {
        json_value ignored;
        if (keyed) {
            skip_ws(c);
            if (!skip_string(c)) return false;
            skip_ws(c);
            if (c->p >= c->end || *c->p++ != ':') return false;
        }
        if (!skip_value(c, &ignored)) return false;
        skip_ws(c);
        if (c->p >= c->end) return false;
        char ch = *c->p++;
        if (ch == close) break;
        if (ch != ',') return false;
    }
    c->depth--;
    return true;
}

static bool skip_value(cursor *c, json_value *out) {
    skip_ws(c);
    if (c->p >= c->end) return false;
    const char *start = c->p;
    bool ok;
    switch (*c->p) {
    case '{': out->type = JSON_OBJECT; ok = skip_members(c, '}', true); break;
    case '[': out->type = JSON_ARRAY; ok = skip_members(c, ']', false); break;
    case '"': out->type = JSON_STRING; ok = skip_string(c); break;
    case 't': out->type = JSON_BOOL; ok = skip_word(c, "true"); break;
    case 'f': out->type = JSON_BOOL; ok = skip_word(c, "false"); break;
    case 'n': out->type = JSON_NULL; ok = skip_word(c, "null"); break;
    default: out->type = JSON_NUMBER; ok = skip_number(c); break;
    }
    out->start = start;
    out->len = (size_t)(c->p - start);
    return ok;
}

bool json_parse(const char *text, size_t len, json_value *out) {
    cursor c = {text, text + len, 0};
    if (!skip_value(&c, out)) return false;
    skip_ws(&c);
    return c.p == c.end;
}

/* Appends code point cp as UTF-8; returns the new end. */
static char *put_utf8(char *o, unsigned long cp) {
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

char *json_as_string(const json_value *value, size_t *len) {
    if (value->type != JSON_STRING || value->len < 2) return NULL;
    const char *p = value->start + 1;
    const char *end = value->start + value->len - 1;
    /* Decoding never lengthens: \uXXXX (6 bytes) is at most 3 bytes of
     * UTF-8, a surrogate pair (12 bytes) is 4. */
    char *out = malloc((size_t)(end - p) + 1);
    if (!out) return NULL;
    char *o = out;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        char e = *p++;
        switch (e) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            long cp = hex4(p);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long low = (end - p >= 6 && p[0] == '\\' && p[1] == 'u') ? hex4(p + 2) : -1;
                if (low < 0xDC00 || low > 0xDFFF) goto lone_surrogate;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto lone_surrogate;
            }
            o = put_utf8(o, (unsigned long)cp);
            break;
        }
        default: *o++ = e; break; /* " \ / */
        }
    }
    *o = '\0';
    if (len) *len = (size_t)(o - out);
    return out;

lone_surrogate:
    /* Not valid Unicode; the engine refuses such payloads at ingest. */
    free(out);
    return NULL;
}

/* Does the raw key token (quotes included) decode to `key`? */
static bool key_is(const char *token, size_t token_len, const char *key) {
    size_t n = strlen(key);
    if (!memchr(token, '\\', token_len)) {
        return token_len == n + 2 && memcmp(token + 1, key, n) == 0;
    }
    json_value v = {JSON_STRING, token, token_len};
    size_t decoded_len;
    char *decoded = json_as_string(&v, &decoded_len);
    bool same = decoded && decoded_len == n && memcmp(decoded, key, n) == 0;
    free(decoded);
    return same;
}

bool json_member(const json_value *object, const char *key, json_value *out) {
    if (object->type != JSON_OBJECT) return false;
    cursor c = {object->start + 1, object->start + object->len - 1, 0};
    bool found = false;
    for (;;) {
        skip_ws(&c);
        if (c.p >= c.end) return found;
        const char *k = c.p;
        if (!skip_string(&c)) return false;
        size_t klen = (size_t)(c.p - k);
        skip_ws(&c);
        if (c.p >= c.end || *c.p++ != ':') return false;
        json_value v;
        if (!skip_value(&c, &v)) return false;
        if (key_is(k, klen, key)) {
            *out = v;
            found = true;
        }
        skip_ws(&c);
        if (c.p >= c.end) return found;
        if (*c.p++ != ',') return false;
    }
}

bool json_element(const json_value *array, size_t index, json_value *out) {
    if (array->type != JSON_ARRAY) return false;
    cursor c = {array->start + 1, array->start + array->len - 1, 0};
    for (size_t i = 0;; i++) {
        skip_ws(&c);
        if (c.p >= c.end) return false;
        json_value v;
        if (!skip_value(&c, &v)) return false;
        if (i == index) {
            *out = v;
            return true;
        }
        skip_ws(&c);
        if (c.p >= c.end || *c.p++ != ',') return false;
    }
}

bool json_as_u64(const json_value *value, uint64_t *out) {
    if (value->type != JSON_NUMBER || value->len == 0) return false;
    uint64_t n = 0;
    for (size_t i = 0; i < value->len; i++) {
        char ch = value->start[i];
        if (ch < '0' || ch > '9') return false;
        uint64_t d = (uint64_t)(ch - '0');
        if (n > (UINT64_MAX - d) / 10) return false;
        n = n * 10 + d;
    }
    *out = n;
    return true;
}

bool json_put_raw(json_buf *b, const char *s, size_t len) {
    if (b->failed) return false;
    if (b->cap - b->len < len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < len) cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) {
            b->failed = true;
            return false;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, len);
    b->len += len;
    return true;
}

bool json_put(json_buf *b, const char *s) {
    return json_put_raw(b, s, strlen(s));
}

bool json_put_string(json_buf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    json_put_raw(b, "\"", 1);
    size_t run = 0; /* bytes copied verbatim, flushed at each escape */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch >= 0x20) continue;
            u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0';
            u[4] = hex[ch >> 4], u[5] = hex[ch & 15];
        }
        json_put_raw(b, s + run, i - run);
        if (esc) {
            json_put(b, esc);
        } else {
            json_put_raw(b, u, 6);
        }
        run = i + 1;
    }
    json_put_raw(b, s + run, len - run);
    return json_put_raw(b, "\"", 1);
}

bool json_put_u64(json_buf *b, uint64_t n) {
    char digits[20];
    int i = 20;
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return json_put_raw(b, digits + i, (size_t)(20 - i));
}

bool json_put_i64(json_buf *b, int64_t n) {
    if (n >= 0) return json_put_u64(b, (uint64_t)n);
    json_put_raw(b, "-", 1);
    /* -(n + 1) + 1 avoids overflowing on INT64_MIN. */
    return json_put_u64(b, (uint64_t)(-(n + 1)) + 1);
}

void json_buf_free(json_buf *b) {
    free(b->data);
    *b = (json_buf){0};
}
