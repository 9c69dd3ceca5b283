/* Native tests of json.c (build.sh runs them before building any rule). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static int passed, failed;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (cond) {                                                         \
            passed++;                                                       \
        } else {                                                            \
            failed++;                                                       \
            fprintf(stderr, "json_test.c:%d: failed: %s\n", __LINE__, #cond); \
        }                                                                   \
    } while (0)

static json_value parse(const char *text) {
    json_value v = {0};
    if (!json_parse(text, strlen(text), &v)) v.type = (json_type)-1;
    return v;
}

/* Member `key` of object `text`, decoded; NULL when absent or no string. */
static char *member_string(const char *text, const char *key, size_t *len) {
    json_value doc = parse(text), v;
    if (!json_member(&doc, key, &v)) return NULL;
    return json_as_string(&v, len);
}

static bool string_is(char *s, const char *want) {
    bool same = s && strcmp(s, want) == 0;
    free(s);
    return same;
}

static void test_parse_validates(void) {
    const char *good[] = {"{}", " { \"a\" : [1, -2.5e+3, true, false, null, {\"b\": []}] } ",
                          "\"x\"", "0", "[]", "{\"\\u00e9\":\"\\ud83d\\ude80\"}"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        json_value v;
        CHECK(json_parse(good[i], strlen(good[i]), &v));
    }
    const char *bad[] = {"", "{", "{\"a\"}", "{\"a\":}", "[1,]", "01", "1.", "tru", "\"\\x\"",
                         "\"\\u12g4\"", "{} {}", "{\"a\":1,}", "\"tab\there\"", "-"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_value v;
        CHECK(!json_parse(bad[i], strlen(bad[i]), &v));
    }
    /* Nesting is bounded rather than trusted. */
    char deep[600];
    memset(deep, '[', 300);
    memset(deep + 300, ']', 300);
    json_value v;
    CHECK(!json_parse(deep, 600, &v));
    CHECK(json_parse(deep + 200, 200, &v));
}

static void test_strings_decode(void) {
    const char *doc = "{\"title\":\"say \\\"hi\\\"\\n\\ttab \\\\ slash\\/ caf\\u00e9 \\ud83d\\ude80\","
                      "\"raw\":\"Zo\xc3\xab \xf0\x9f\x9a\x80\"}";
    size_t len;
    CHECK(string_is(member_string(doc, "title", &len),
                    "say \"hi\"\n\ttab \\ slash/ caf\xc3\xa9 \xf0\x9f\x9a\x80"));
    CHECK(string_is(member_string(doc, "raw", &len), "Zo\xc3\xab \xf0\x9f\x9a\x80"));
    char *s = member_string("{\"k\":\"a\\u0000b\"}", "k", &len);
    CHECK(s && len == 3 && s[1] == '\0');
    free(s);
    /* A lone surrogate is not Unicode. */
    CHECK(member_string("{\"k\":\"\\ud83d\"}", "k", &len) == NULL);
    CHECK(member_string("{\"k\":\"\\ude80x\"}", "k", &len) == NULL);
    /* Not a string. */
    CHECK(member_string("{\"k\":12}", "k", &len) == NULL);
}

static void test_members(void) {
    const char *doc = "{\"nested\":{\"repo\":\"inner\"},\"r\\u00e9po\":\"escaped key\","
                      "\"\xe6\x97\xa5\xe6\x9c\xac\":[1,{\"x\":2}],\"repo\":\"outer\",\"n\":7}";
    size_t len;
    /* Only top-level members match; nested ones are skipped whole. */
    CHECK(string_is(member_string(doc, "repo", &len), "outer"));
    /* Keys are compared decoded, raw UTF-8 or escaped. */
    CHECK(string_is(member_string(doc, "r\xc3\xa9po", &len), "escaped key"));
    json_value d = parse(doc), v;
    CHECK(json_member(&d, "\xe6\x97\xa5\xe6\x9c\xac", &v) && v.type == JSON_ARRAY);
    CHECK(!json_member(&d, "missing", &v));
    CHECK(!json_member(&d, "rep", &v));
    json_value arr = parse("[1]");
    CHECK(!json_member(&arr, "0", &v));
    json_value empty = parse("{ }");
    CHECK(!json_member(&empty, "a", &v));
    /* Of duplicate keys the last counts. */
    CHECK(string_is(member_string("{\"k\":\"first\", \"k\" : \"last\" }", "k", &len), "last"));
    /* Elements by index. */
    json_value list = parse("[ 10 , {\"a\":[]}, \"x\" ]");
    CHECK(json_element(&list, 1, &v) && v.type == JSON_OBJECT && v.len == 8);
    CHECK(json_element(&list, 2, &v) && v.type == JSON_STRING);
    CHECK(!json_element(&list, 3, &v));
    CHECK(!json_element(&d, 0, &v));
    json_value none = parse("[]");
    CHECK(!json_element(&none, 0, &v));
}

static void test_numbers(void) {
    const char *cases[] = {"{\"n\":0}", "{\"n\":18446744073709551615}"};
    uint64_t want[] = {0, UINT64_MAX};
    for (int i = 0; i < 2; i++) {
        json_value d = parse(cases[i]), v;
        uint64_t n = 1;
        CHECK(json_member(&d, "n", &v) && json_as_u64(&v, &n) && n == want[i]);
    }
    const char *bad[] = {"{\"n\":-1}", "{\"n\":1.5}", "{\"n\":1e3}", "{\"n\":18446744073709551616}",
                         "{\"n\":\"12\"}", "{\"n\":true}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_value d = parse(bad[i]), v;
        uint64_t n;
        CHECK(json_member(&d, "n", &v) && !json_as_u64(&v, &n));
    }
}

static void test_writer(void) {
    json_buf b = {0};
    const char s[] = "q\" b\\ n\n t\t \x01 caf\xc3\xa9 \xf0\x9f\x9a\x80";
    json_put(&b, "{\"s\":");
    json_put_string(&b, s, sizeof s - 1);
    json_put(&b, ",\"i\":");
    json_put_i64(&b, INT64_MIN);
    json_put(&b, ",\"u\":");
    json_put_u64(&b, 42);
    json_put(&b, "}");
    const char *want = "{\"s\":\"q\\\" b\\\\ n\\n t\\t \\u0001 caf\xc3\xa9 \xf0\x9f\x9a\x80\","
                       "\"i\":-9223372036854775808,\"u\":42}";
    CHECK(!b.failed && b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
    /* What the writer writes, the reader reads back. */
    json_value d, v;
    CHECK(json_parse(b.data, b.len, &d));
    size_t len;
    char *back = json_member(&d, "s", &v) ? json_as_string(&v, &len) : NULL;
    CHECK(back && len == sizeof s - 1 && memcmp(back, s, len) == 0);
    free(back);
    json_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);
}

int main(void) {
    test_parse_validates();
    test_strings_decode();
    test_members();
    test_numbers();
    test_writer();
    printf("json: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
