/*
 * edge_json: a compact JSON reader and writer for edge-agent guest modules.
 *
 * This half of the SDK owns JSON text only. It knows nothing of the guest ABI,
 * imports no host function and exports nothing, so command modules link it
 * without dragging the reactor exports along (those live in edge_module.c).
 *
 * Reader. edge_json_parse() validates a whole document in one pass and hands
 * back the root as an edge_json: a typed span of the original text. Nothing is
 * copied or allocated; members and elements are found by rescanning the span,
 * which is cheap because the text is known to be well formed. Every other
 * reader function requires an edge_json that came from a successful parse (or
 * from iterating one) and from text that is still alive and unchanged.
 *
 * Limits: nesting depth EDGE_JSON_MAX_DEPTH; a number token of at most
 * EDGE_JSON_MAX_NUMBER bytes; the text at most 2^31 bytes. Strings must be
 * well-formed UTF-8 (RFC 8259 asks for it, and whatever a module copies into
 * its output or log stays valid); a lone UTF-16 surrogate in a \u escape
 * decodes to U+FFFD.
 *
 * Writer. edge_jw appends compact JSON into one growable buffer that survives
 * edge_jw_reset(), so a module that reuses its writer allocates nothing once
 * the buffer has grown to its working size. Commas and colons are placed by
 * the writer; the caller only says what comes next. An allocation failure is
 * sticky: later appends do nothing and edge_jw_failed() reports it.
 */
#ifndef EDGE_JSON_H
#define EDGE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EDGE_JSON_MAX_DEPTH 64
#define EDGE_JSON_MAX_NUMBER 255

typedef enum {
    EDGE_JSON_NONE = 0, /* "no value": an absent member, an exhausted iterator */
    EDGE_JSON_NULL,
    EDGE_JSON_BOOL,
    EDGE_JSON_NUMBER,
    EDGE_JSON_STRING,
    EDGE_JSON_ARRAY,
    EDGE_JSON_OBJECT,
} edge_json_type;

/* A value: its type and the exact bytes of its token in the source text
 * (strings include their quotes, containers their brackets). */
typedef struct {
    const char *ptr;
    uint32_t len;
    edge_json_type type;
} edge_json;

/* A cursor over the members of an object or the elements of an array. */
typedef struct {
    const char *p;
    const char *end;
} edge_json_iter;

/* Validates text[0..len) as one JSON value with optional surrounding
 * whitespace. Returns 0 and sets *root, or -1; then *error_offset (if not
 * NULL) is the byte offset where the text stopped making sense. */
int edge_json_parse(const char *text, size_t len, edge_json *root, size_t *error_offset);

/* Iteration over a container; iterating a value of the wrong type yields nothing. */
void edge_json_iter_init(edge_json_iter *it, const edge_json *container);
bool edge_json_next_member(edge_json_iter *it, edge_json *key, edge_json *value);
bool edge_json_next_element(edge_json_iter *it, edge_json *value);

/* The first member of obj named key; out->type is EDGE_JSON_NONE when absent. */
bool edge_json_get(const edge_json *obj, const char *key, edge_json *out);
/* Members of an object or elements of an array; 0 for anything else. */
size_t edge_json_count(const edge_json *container);

/* Scalars. Each returns 0 on success and -1 when v is not of the needed kind. */
int edge_json_number(const edge_json *v, double *out);
/* An integral number in [0, UINT32_MAX]; 1000, 1000.0 and 1e3 all qualify. */
int edge_json_uint32(const edge_json *v, uint32_t *out);
int edge_json_bool(const edge_json *v, bool *out);

/* Strings. eq compares the decoded string with s[0..n), without allocating. */
bool edge_json_string_eq(const edge_json *v, const char *s, size_t n);
bool edge_json_string_eqz(const edge_json *v, const char *s);
/* Decodes into buf, NUL-terminated when cap > 0 and truncated to the whole
 * characters that fit, and returns the full decoded length, like snprintf;
 * (size_t)-1 when v is not a string. */
size_t edge_json_string_decode(const edge_json *v, char *buf, size_t cap);
/* A malloc'd decoded, NUL-terminated copy (decoded length in *len when not
 * NULL); NULL when v is not a string or memory is short. */
char *edge_json_string_dup(const edge_json *v, size_t *len);

/* Writer. */
typedef struct {
    char *buf;
    size_t len;
    size_t cap;
    bool failed;
    bool need_comma;
} edge_jw;

void edge_jw_init(edge_jw *w);                     /* empty, owns nothing */
void edge_jw_reset(edge_jw *w);                    /* empty, keeps the buffer */
void edge_jw_free(edge_jw *w);
bool edge_jw_failed(const edge_jw *w);

void edge_jw_object_begin(edge_jw *w);
void edge_jw_object_end(edge_jw *w);
void edge_jw_array_begin(edge_jw *w);
void edge_jw_array_end(edge_jw *w);
void edge_jw_key(edge_jw *w, const char *key);     /* NUL-terminated */
void edge_jw_key_n(edge_jw *w, const char *key, size_t n);
/* A key copied from a parsed string token, escapes and all. */
void edge_jw_key_json(edge_jw *w, const edge_json *key);

/* The shortest digits that read back as the same double (Grisu2: integer
 * arithmetic only; in about 0.1% of cases one digit more than the shortest),
 * laid out as Python's repr does but without a trailing ".0": 61.2, 1e-07,
 * 1.5e+16, 42. NaN and infinities become null. */
void edge_jw_number(edge_jw *w, double v);
void edge_jw_int(edge_jw *w, int64_t v);
void edge_jw_bool(edge_jw *w, bool v);
void edge_jw_null(edge_jw *w);
void edge_jw_string(edge_jw *w, const char *s);    /* NUL-terminated */
void edge_jw_string_n(edge_jw *w, const char *s, size_t n);
/* Any parsed value copied verbatim (it is valid JSON already). */
void edge_jw_json(edge_jw *w, const edge_json *v);

#endif
