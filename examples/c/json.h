/* A small JSON reader and writer for Sluice rules written in C.
 *
 * Reading: a payload is a JSON object; json_member() finds a top-level
 * member by name (keys with escapes are compared decoded), and the
 * json_as_*() functions read its value. Nothing is allocated except by
 * json_as_string(), which decodes escapes (\" \n \u00e9, surrogate pairs)
 * into a new UTF-8 string the caller frees.
 *
 * Writing: json_buf collects output; json_put_string() escapes a UTF-8
 * string as JSON. Every writer returns false once an allocation failed,
 * and the buffer stays failed.
 */
#ifndef SLUICE_JSON_H
#define SLUICE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

/* A value inside a document: its type and its text, quotes included. */
typedef struct {
    json_type type;
    const char *start;
    size_t len;
} json_value;

/* Checks that `text` is one JSON value (with surrounding whitespace only)
 * and returns it in `out`. */
bool json_parse(const char *text, size_t len, json_value *out);

/* Finds member `key` of `object` (a JSON_OBJECT). False when absent. Of
 * duplicate keys the last one counts, as in JavaScript and Python. */
bool json_member(const json_value *object, const char *key, json_value *out);

/* Finds element `index` (from 0) of `array` (a JSON_ARRAY). False when
 * absent. */
bool json_element(const json_value *array, size_t index, json_value *out);

/* A string value decoded to a new NUL-terminated UTF-8 string (its byte
 * length in *len when len is not NULL). NULL when the value is not a
 * string or memory ran out. */
char *json_as_string(const json_value *value, size_t *len);

/* A number written as a whole number (digits only: no sign, fraction or
 * exponent) that fits in 64 bits. */
bool json_as_u64(const json_value *value, uint64_t *out);

/* Growable output. Start with `json_buf b = {0};`, free with json_buf_free. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
    bool failed;
} json_buf;

bool json_put_raw(json_buf *b, const char *s, size_t len);
bool json_put(json_buf *b, const char *s); /* NUL-terminated, verbatim */
bool json_put_string(json_buf *b, const char *s, size_t len);
bool json_put_u64(json_buf *b, uint64_t n);
bool json_put_i64(json_buf *b, int64_t n);
void json_buf_free(json_buf *b);

#endif
