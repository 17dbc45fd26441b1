/*
 * edge_module: the guest ABI v1 for reactor modules (see modules/README.md).
 *
 * Linking edge_module.c gives a module the ABI exports (edge_abi_version,
 * edge_alloc, edge_configure, edge_on_reading); the module supplies the two
 * hooks below. The SDK owns the input buffer and checks every input before a
 * hook sees it: the config is a JSON object, the reading has the documented
 * shape, and every series lies inside the binary buffer. A hook therefore
 * never bounds-checks the host's data itself.
 *
 * Command modules must not include this: they use edge_json.h alone.
 */
#ifndef EDGE_MODULE_H
#define EDGE_MODULE_H

#include "edge_json.h"

/*
 * Error codes. Entry points return 0 on success. Codes 1 to 99 belong to the
 * module (each module documents its own); codes from 100 up are the SDK's:
 */
enum {
    EDGE_OK = 0,
    EDGE_E_NOMEM = 100,   /* an allocation failed */
    EDGE_E_ARGS = 101,    /* a pointer and length pair reaches past linear memory */
    EDGE_E_JSON = 102,    /* the input is not valid JSON */
    EDGE_E_READING = 103, /* the reading is not shaped as the ABI says */
    EDGE_E_SERIES = 104,  /* a series has a bad type, or lies outside or misaligned in the binary buffer */
    EDGE_E_CONFIG = 105,  /* the config is not an object, or the module rejected it */
    EDGE_E_STATE = 106,   /* a reading before a successful configure, or a second configure */
    EDGE_E_EMIT = 107,    /* the host's emit returned non-zero */
};

typedef enum {
    EDGE_LOG_DEBUG = 0,
    EDGE_LOG_INFO = 1,
    EDGE_LOG_WARNING = 2,
    EDGE_LOG_ERROR = 3,
} edge_log_level;

typedef enum {
    EDGE_QUALITY_GOOD = 0,
    EDGE_QUALITY_UNCERTAIN = 1,
    EDGE_QUALITY_BAD = 2,
} edge_quality;

typedef enum {
    EDGE_F32 = 0,
    EDGE_F64,
    EDGE_I16,
    EDGE_U16,
    EDGE_I32,
    EDGE_U32,
} edge_series_type;

/* One member of the reading's "values". */
typedef struct {
    edge_json name;       /* the member's key, a string token */
    edge_json value;      /* a number, bool or string token */
    double number;        /* the value when value.type == EDGE_JSON_NUMBER, else 0 */
    edge_json unit;       /* a string token; type EDGE_JSON_NONE when absent */
    edge_quality quality; /* EDGE_QUALITY_GOOD when absent */
} edge_value;

/* One member of the reading's "series", already checked against the binary buffer. */
typedef struct {
    edge_json name;
    edge_json unit;       /* type EDGE_JSON_NONE when absent */
    edge_quality quality;
    edge_series_type type;
    uint32_t count;
    const unsigned char *data; /* count elements of type, little-endian */
} edge_series;

typedef struct {
    edge_json doc;    /* the whole document */
    edge_json device; /* a string token */
    edge_json seq;    /* a number token */
    edge_json ts;     /* a number token */
    double ts_value;
    const edge_value *values; /* in document order */
    size_t n_values;
    const edge_series *series;
    size_t n_series;
    const unsigned char *bin;
    size_t bin_len;
} edge_reading;

/*
 * Hooks the module defines. Every pointer they receive points into the input
 * buffer and dies when the hook returns: a module copies what it keeps.
 * module_configure runs at most once, and module_on_reading only after it
 * returned 0.
 */
int module_configure(const edge_json *config);
int module_on_reading(const edge_reading *reading);

/* Host imports. edge_emit returns 0, or EDGE_E_EMIT when the host said no;
 * topics are passed through unchecked so a module can test the host's rules. */
int edge_emit(const char *topic, const void *payload, size_t len);
/* The writer's text; EDGE_E_NOMEM when it ran out of memory. */
int edge_emit_json(const char *topic, const edge_jw *w);
void edge_log(edge_log_level level, const char *message);
/* Formats into a fixed buffer; longer lines are cut at 511 bytes. */
void edge_logf(edge_log_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Whether topic[0..len) obeys the ABI's topic rules (a module checks its
 * configured topic with it so a bad config fails at configure time). */
bool edge_topic_valid(const char *topic, size_t len);

/* Series access. Size of one element; element i as a double (NaN when i is
 * out of range); and a bulk read of elements [first, first + n) into out,
 * returning how many were read (fewer when the range passes the end). */
size_t edge_series_type_size(edge_series_type type);
double edge_series_at(const edge_series *s, uint32_t i);
uint32_t edge_series_read(const edge_series *s, uint32_t first, uint32_t n, double *out);

/* "good", "uncertain" or "bad". */
const char *edge_quality_name(edge_quality q);

/* Writes the "device", "seq" and "ts" members of r into an open object,
 * copied verbatim from the reading. */
void edge_jw_reading_header(edge_jw *w, const edge_reading *r);

#endif
