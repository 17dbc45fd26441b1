/*
 * edge_module: the guest ABI v1 glue (see edge_module.h and modules/README.md).
 *
 * Owns the ABI exports, the one input buffer the host writes into, the tables
 * a reading is decoded into, and the wrappers of the host imports. It must
 * not hand a hook anything it has not bounds-checked.
 */
#include "edge_module.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define IMPORT(name) __attribute__((import_module("edge"), import_name(name)))

IMPORT("emit") int32_t edge_host_emit(const char *topic, size_t topic_len, const void *payload, size_t payload_len);
IMPORT("log") void edge_host_log(int32_t level, const char *message, size_t len);

static unsigned char *input;
static size_t input_cap;

/* Reused from reading to reading so that a steady stream allocates nothing. */
static edge_value *value_table;
static size_t value_cap;
static edge_series *series_table;
static size_t series_cap;

static bool configure_called;
static bool configured;

EXPORT("edge_abi_version") int32_t edge_abi_version(void)
{
    return 1;
}

EXPORT("edge_alloc") int32_t edge_alloc(int32_t len)
{
    size_t need = len > 0 ? (size_t)len : 1;
    if (len < 0)
        return 0;
    if (need > input_cap) {
        size_t cap = input_cap ? input_cap : 4096;
        while (cap < need && cap <= SIZE_MAX / 2)
            cap *= 2;
        /* The old contents are dead (each call brings fresh input), so free
         * first instead of realloc copying them. */
        free(input);
        input = malloc(cap);
        if (input == NULL && cap > need)
            input = malloc(cap = need);
        input_cap = input ? cap : 0;
        if (input == NULL)
            return 0;
    }
    return (int32_t)(uintptr_t)input;
}

/* A range the host passed must lie in linear memory; reading past its end
 * would trap, and an error code tells the agent more than a trap does. */
static bool in_memory(uint32_t ptr, uint32_t len)
{
    uint64_t size = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    return (uint64_t)ptr + len <= size;
}

EXPORT("edge_configure") int32_t edge_configure(int32_t ptr, int32_t len)
{
    edge_json root;
    size_t at;
    int rc;
    if (configure_called)
        return EDGE_E_STATE;
    configure_called = true;
    if (!in_memory((uint32_t)ptr, (uint32_t)len))
        return EDGE_E_ARGS;
    if (edge_json_parse((const char *)(uintptr_t)(uint32_t)ptr, (uint32_t)len, &root, &at) != 0) {
        edge_logf(EDGE_LOG_ERROR, "config is not valid JSON (at byte %zu)", at);
        return EDGE_E_JSON;
    }
    if (root.type != EDGE_JSON_OBJECT) {
        edge_log(EDGE_LOG_ERROR, "config is not a JSON object");
        return EDGE_E_CONFIG;
    }
    rc = module_configure(&root);
    configured = rc == 0;
    return rc;
}

static int parse_quality(const edge_json *v, edge_quality *q)
{
    if (v->type == EDGE_JSON_NONE)
        *q = EDGE_QUALITY_GOOD;
    else if (edge_json_string_eqz(v, "good"))
        *q = EDGE_QUALITY_GOOD;
    else if (edge_json_string_eqz(v, "uncertain"))
        *q = EDGE_QUALITY_UNCERTAIN;
    else if (edge_json_string_eqz(v, "bad"))
        *q = EDGE_QUALITY_BAD;
    else
        return -1;
    return 0;
}

static bool grow(void **table, size_t *cap, size_t n, size_t size)
{
    void *t;
    if (n <= *cap)
        return true;
    if (n > SIZE_MAX / size)
        return false;
    t = realloc(*table, n * size);
    if (t == NULL)
        return false;
    *table = t;
    *cap = n;
    return true;
}

/* What was wrong with the last reading that failed to decode, for the log:
 * the member concerned (a string token, or none) and a phrase. */
static edge_json why_name;
static const char *why;

static int reject(int code, const edge_json *name, const char *what)
{
    if (name)
        why_name = *name;
    else
        why_name.type = EDGE_JSON_NONE;
    why = what;
    return code;
}

static int decode_value(const edge_json *name, const edge_json *obj, edge_value *out)
{
    edge_json_iter it;
    edge_json k, v, quality = {0};
    memset(out, 0, sizeof *out);
    out->name = *name;
    if (obj->type != EDGE_JSON_OBJECT)
        return reject(EDGE_E_READING, name, "a value must be an object");
    edge_json_iter_init(&it, obj);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "value"))
            out->value = v;
        else if (edge_json_string_eqz(&k, "unit"))
            out->unit = v;
        else if (edge_json_string_eqz(&k, "quality"))
            quality = v;
    }
    switch (out->value.type) {
    case EDGE_JSON_NUMBER:
        edge_json_number(&out->value, &out->number);
        break;
    case EDGE_JSON_BOOL:
    case EDGE_JSON_STRING:
        break;
    default:
        return reject(EDGE_E_READING, name, "value must be a number, boolean or string");
    }
    if (out->unit.type != EDGE_JSON_NONE && out->unit.type != EDGE_JSON_STRING)
        return reject(EDGE_E_READING, name, "unit must be a string");
    if (parse_quality(&quality, &out->quality) != 0)
        return reject(EDGE_E_READING, name, "quality must be good, uncertain or bad");
    return 0;
}

static const struct {
    const char *name;
    edge_series_type type;
} series_types[] = {
    {"f32", EDGE_F32}, {"f64", EDGE_F64}, {"i16", EDGE_I16},
    {"u16", EDGE_U16}, {"i32", EDGE_I32}, {"u32", EDGE_U32},
};

size_t edge_series_type_size(edge_series_type type)
{
    switch (type) {
    case EDGE_F64: return 8;
    case EDGE_I16: case EDGE_U16: return 2;
    default: return 4;
    }
}

static int decode_series(const edge_json *name, const edge_json *obj, const unsigned char *bin,
                         size_t bin_len, edge_series *out)
{
    edge_json_iter it;
    edge_json k, v, offset = {0}, count = {0}, type = {0}, quality = {0};
    uint32_t off;
    size_t size, i;
    memset(out, 0, sizeof *out);
    out->name = *name;
    if (obj->type != EDGE_JSON_OBJECT)
        return reject(EDGE_E_READING, name, "a series must be an object");
    edge_json_iter_init(&it, obj);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "offset"))
            offset = v;
        else if (edge_json_string_eqz(&k, "count"))
            count = v;
        else if (edge_json_string_eqz(&k, "type"))
            type = v;
        else if (edge_json_string_eqz(&k, "unit"))
            out->unit = v;
        else if (edge_json_string_eqz(&k, "quality"))
            quality = v;
    }
    if (edge_json_uint32(&offset, &off) != 0 || edge_json_uint32(&count, &out->count) != 0)
        return reject(EDGE_E_READING, name, "offset and count must be integers from 0 to 2^32-1");
    if (out->unit.type != EDGE_JSON_NONE && out->unit.type != EDGE_JSON_STRING)
        return reject(EDGE_E_READING, name, "unit must be a string");
    if (parse_quality(&quality, &out->quality) != 0)
        return reject(EDGE_E_READING, name, "quality must be good, uncertain or bad");
    for (i = 0; i < sizeof series_types / sizeof series_types[0]; i++)
        if (edge_json_string_eqz(&type, series_types[i].name))
            break;
    if (i == sizeof series_types / sizeof series_types[0])
        return reject(EDGE_E_SERIES, name, "type must be f32, f64, i16, u16, i32 or u32");
    out->type = series_types[i].type;
    size = edge_series_type_size(out->type);
    if (off % size != 0)
        return reject(EDGE_E_SERIES, name, "offset is not aligned to the element size");
    /* 64-bit arithmetic: count * size can pass 2^32 in a hostile reading. */
    if ((uint64_t)off + (uint64_t)out->count * size > bin_len)
        return reject(EDGE_E_SERIES, name, "the block runs past the end of the binary buffer");
    out->data = bin + off;
    return 0;
}

static int decode_reading(const edge_json *root, const unsigned char *bin, size_t bin_len, edge_reading *r)
{
    edge_json_iter it;
    edge_json k, v, values = {0}, series = {0};
    size_t n;
    memset(r, 0, sizeof *r);
    r->doc = *root;
    r->bin = bin;
    r->bin_len = bin_len;
    if (root->type != EDGE_JSON_OBJECT)
        return reject(EDGE_E_READING, NULL, "not a JSON object");
    edge_json_iter_init(&it, root);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "device"))
            r->device = v;
        else if (edge_json_string_eqz(&k, "seq"))
            r->seq = v;
        else if (edge_json_string_eqz(&k, "ts"))
            r->ts = v;
        else if (edge_json_string_eqz(&k, "values"))
            values = v;
        else if (edge_json_string_eqz(&k, "series"))
            series = v;
    }
    if (r->device.type != EDGE_JSON_STRING)
        return reject(EDGE_E_READING, NULL, "device must be a string");
    if (r->seq.type != EDGE_JSON_NUMBER || r->ts.type != EDGE_JSON_NUMBER)
        return reject(EDGE_E_READING, NULL, "seq and ts must be numbers");
    edge_json_number(&r->ts, &r->ts_value);
    if ((values.type != EDGE_JSON_NONE && values.type != EDGE_JSON_OBJECT) ||
        (series.type != EDGE_JSON_NONE && series.type != EDGE_JSON_OBJECT))
        return reject(EDGE_E_READING, NULL, "values and series must be objects");

    n = edge_json_count(&values);
    if (!grow((void **)&value_table, &value_cap, n, sizeof *value_table))
        return reject(EDGE_E_NOMEM, NULL, "out of memory");
    edge_json_iter_init(&it, &values);
    while (r->n_values < n && edge_json_next_member(&it, &k, &v)) {
        int rc = decode_value(&k, &v, &value_table[r->n_values++]);
        if (rc != 0)
            return rc;
    }
    r->values = value_table;

    n = edge_json_count(&series);
    if (!grow((void **)&series_table, &series_cap, n, sizeof *series_table))
        return reject(EDGE_E_NOMEM, NULL, "out of memory");
    edge_json_iter_init(&it, &series);
    while (r->n_series < n && edge_json_next_member(&it, &k, &v)) {
        int rc = decode_series(&k, &v, bin, bin_len, &series_table[r->n_series++]);
        if (rc != 0)
            return rc;
    }
    r->series = series_table;
    return 0;
}

EXPORT("edge_on_reading") int32_t edge_on_reading(int32_t json_ptr, int32_t json_len, int32_t bin_ptr, int32_t bin_len)
{
    edge_json root;
    edge_reading r;
    size_t at;
    int rc;
    if (!configured)
        return EDGE_E_STATE;
    if (!in_memory((uint32_t)json_ptr, (uint32_t)json_len) || !in_memory((uint32_t)bin_ptr, (uint32_t)bin_len))
        return EDGE_E_ARGS;
    if (edge_json_parse((const char *)(uintptr_t)(uint32_t)json_ptr, (uint32_t)json_len, &root, &at) != 0) {
        edge_logf(EDGE_LOG_ERROR, "reading is not valid JSON (at byte %zu)", at);
        return EDGE_E_JSON;
    }
    rc = decode_reading(&root, (const unsigned char *)(uintptr_t)(uint32_t)bin_ptr, (uint32_t)bin_len, &r);
    if (rc != 0) {
        char name[64];
        if (why_name.type == EDGE_JSON_STRING) {
            edge_json_string_decode(&why_name, name, sizeof name);
            edge_logf(EDGE_LOG_ERROR, "reading: \"%s\": %s", name, why);
        } else {
            edge_logf(EDGE_LOG_ERROR, "reading: %s", why);
        }
        return rc;
    }
    return module_on_reading(&r);
}

int edge_emit(const char *topic, const void *payload, size_t len)
{
    return edge_host_emit(topic, strlen(topic), payload, len) == 0 ? 0 : EDGE_E_EMIT;
}

int edge_emit_json(const char *topic, const edge_jw *w)
{
    if (edge_jw_failed(w))
        return EDGE_E_NOMEM;
    return edge_emit(topic, w->buf, w->len);
}

void edge_log(edge_log_level level, const char *message)
{
    edge_host_log((int32_t)level, message, strlen(message));
}

static size_t utf8_length(unsigned char lead)
{
    return lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
}

void edge_logf(edge_log_level level, const char *format, ...)
{
    char buf[512];
    va_list ap;
    int n;
    size_t len;
    va_start(ap, format);
    n = vsnprintf(buf, sizeof buf, format, ap);
    va_end(ap);
    if (n < 0)
        return;
    len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    /* The host expects UTF-8: drop a character the cut split. */
    if ((size_t)n >= sizeof buf) {
        size_t i = len;
        while (i > 0 && ((unsigned char)buf[i - 1] & 0xC0) == 0x80)
            i--;
        if (i > 0 && (unsigned char)buf[i - 1] >= 0xC0 && len - (i - 1) < utf8_length((unsigned char)buf[i - 1]))
            len = i - 1;
    }
    edge_host_log((int32_t)level, buf, len);
}

bool edge_topic_valid(const char *topic, size_t len)
{
    if (len == 0 || len > 128 || topic[0] == '/' || topic[len - 1] == '/')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = topic[i];
        if (c == '+' || c == '#' || c == '\0' || (c == '/' && topic[i + 1] == '/'))
            return false;
    }
    return true;
}

/* wasm32 is little-endian, so a memcpy load reads the ABI's byte order; it
 * also tolerates a host whose binary buffer is not itself 8-byte aligned. */
#define LOAD(T, p) __extension__({ T v_; memcpy(&v_, (p), sizeof v_); v_; })

double edge_series_at(const edge_series *s, uint32_t i)
{
    const unsigned char *p;
    if (s == NULL || i >= s->count)
        return NAN;
    p = s->data + (size_t)i * edge_series_type_size(s->type);
    switch (s->type) {
    case EDGE_F32: return LOAD(float, p);
    case EDGE_F64: return LOAD(double, p);
    case EDGE_I16: return LOAD(int16_t, p);
    case EDGE_U16: return LOAD(uint16_t, p);
    case EDGE_I32: return LOAD(int32_t, p);
    case EDGE_U32: return LOAD(uint32_t, p);
    }
    return NAN;
}

/* One loop per type keeps the type switch out of the per-sample path. */
/* Unrolled, as engines check for interruption on every loop iteration. */
#define CONVERT(T)                                                      \
    _Pragma("clang loop unroll_count(8)")                               \
    for (uint32_t j = 0; j < n; j++)                                    \
        out[j] = LOAD(T, p + (size_t)j * sizeof(T));                    \
    break

uint32_t edge_series_read(const edge_series *s, uint32_t first, uint32_t n, double *out)
{
    const unsigned char *p;
    if (s == NULL || first >= s->count)
        return 0;
    if (n > s->count - first)
        n = s->count - first;
    p = s->data + (size_t)first * edge_series_type_size(s->type);
    switch (s->type) {
    case EDGE_F32: CONVERT(float);
    case EDGE_F64: CONVERT(double);
    case EDGE_I16: CONVERT(int16_t);
    case EDGE_U16: CONVERT(uint16_t);
    case EDGE_I32: CONVERT(int32_t);
    case EDGE_U32: CONVERT(uint32_t);
    }
    return n;
}

const char *edge_quality_name(edge_quality q)
{
    switch (q) {
    case EDGE_QUALITY_UNCERTAIN: return "uncertain";
    case EDGE_QUALITY_BAD: return "bad";
    default: return "good";
    }
}

void edge_jw_reading_header(edge_jw *w, const edge_reading *r)
{
    edge_jw_key(w, "device");
    edge_jw_json(w, &r->device);
    edge_jw_key(w, "seq");
    edge_jw_json(w, &r->seq);
    edge_jw_key(w, "ts");
    edge_jw_json(w, &r->ts);
}
