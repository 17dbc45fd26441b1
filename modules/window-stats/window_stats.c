/*
 * window-stats: a rolling window of samples per channel and its statistics.
 *
 * Config (every key optional, unknown keys rejected):
 *   {"topic": "stats", "window": 1000, "every": 1, "channels": ["a", "b"]}
 * window: samples kept per channel, 1 to 65536. every: emit after every N-th
 * reading, N >= 1. channels: at most 32 names; without it every numeric
 * scalar value and every series becomes a channel as it first appears, up to
 * 32 (later ones are ignored, with one warning in the log).
 *
 * Channels are keyed by name alone: an instance is meant to serve one device,
 * and a value and a series of the same name feed the same window. Each
 * numeric value adds one sample; each series adds its samples in order.
 *
 * Every N-th reading emits, for each channel holding at least one sample:
 *   {"device":..,"seq":..,"ts":..,"window":W,
 *    "channels":{name:{"n":..,"mean":..,"std":..,"min":..,"max":..,"rms":..}}}
 * over the samples in the window: n the sample count; mean = sum / n, summed
 * oldest to newest; std the population standard deviation by a second pass,
 * sqrt(sum((x - mean)^2) / n); rms = sqrt(sum(x^2) / n); every sum a plain
 * double accumulation, oldest to newest. A NaN sample in the window makes all
 * five null. Channels appear in configured or first-seen order.
 *
 * Memory: a channel's ring of `window` doubles is allocated on its first
 * sample; nothing is allocated per sample or per reading after that.
 */
#include "edge_module.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 32
#define MAX_WINDOW 65536

typedef struct {
    char *name;
    size_t name_len;
    double *ring;  /* `window` samples, NULL until the first one */
    uint32_t head; /* where the next sample goes */
    uint32_t n;    /* samples held, at most window */
} channel;

static channel channels[MAX_CHANNELS];
static size_t n_channels;
static bool listed; /* channels came from the config: no others are added */
static bool overflow_logged;
static uint32_t window = 1000;
static uint32_t every = 1;
static uint64_t readings;
static char topic[129] = "stats";
static edge_jw out;

static int config_error(const char *what)
{
    edge_logf(EDGE_LOG_ERROR, "config: %s", what);
    return EDGE_E_CONFIG;
}

static channel *lookup(const char *name, size_t n)
{
    for (size_t i = 0; i < n_channels; i++)
        if (channels[i].name_len == n && memcmp(channels[i].name, name, n) == 0)
            return &channels[i];
    return NULL;
}

static int configure_channels(const edge_json *list)
{
    edge_json_iter it;
    edge_json v;
    if (list->type != EDGE_JSON_ARRAY)
        return config_error("channels must be an array of names");
    if (edge_json_count(list) > MAX_CHANNELS)
        return config_error("channels lists more than 32 names");
    edge_json_iter_init(&it, list);
    while (edge_json_next_element(&it, &v)) {
        channel *c = &channels[n_channels];
        if (v.type != EDGE_JSON_STRING)
            return config_error("channels must be an array of names");
        c->name = edge_json_string_dup(&v, &c->name_len);
        if (c->name == NULL)
            return EDGE_E_NOMEM;
        if (lookup(c->name, c->name_len) != NULL)
            return config_error("a channel is named twice");
        n_channels++;
    }
    listed = true;
    return 0;
}

int module_configure(const edge_json *cfg)
{
    edge_json_iter it;
    edge_json k, v;
    edge_json_iter_init(&it, cfg);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "topic")) {
            size_t n = edge_json_string_decode(&v, topic, sizeof topic);
            if (n == (size_t)-1 || n >= sizeof topic || !edge_topic_valid(topic, n))
                return config_error("topic must be a valid relative topic");
        } else if (edge_json_string_eqz(&k, "window")) {
            if (edge_json_uint32(&v, &window) != 0 || window < 1 || window > MAX_WINDOW)
                return config_error("window must be an integer from 1 to 65536");
        } else if (edge_json_string_eqz(&k, "every")) {
            if (edge_json_uint32(&v, &every) != 0 || every < 1)
                return config_error("every must be a positive integer");
        } else if (edge_json_string_eqz(&k, "channels")) {
            int rc = configure_channels(&v);
            if (rc != 0)
                return rc;
        } else {
            return config_error("unknown key (expected topic, window, every, channels)");
        }
    }
    edge_jw_init(&out);
    return 0;
}

/* The channel a sample named `name` goes to, creating it when the config
 * did not list channels; NULL when the sample is not wanted. *rc is set to
 * EDGE_E_NOMEM when a ring cannot be allocated. */
static channel *channel_for(const edge_json *name, int *rc)
{
    channel *c = NULL;
    for (size_t i = 0; i < n_channels; i++) {
        if (edge_json_string_eq(name, channels[i].name, channels[i].name_len)) {
            c = &channels[i];
            break;
        }
    }
    if (c == NULL) {
        if (listed)
            return NULL;
        if (n_channels == MAX_CHANNELS) {
            if (!overflow_logged)
                edge_log(EDGE_LOG_WARNING, "more than 32 channels: the rest are ignored");
            overflow_logged = true;
            return NULL;
        }
        c = &channels[n_channels];
        c->name = edge_json_string_dup(name, &c->name_len);
        if (c->name == NULL) {
            *rc = EDGE_E_NOMEM;
            return NULL;
        }
        n_channels++;
    }
    if (c->ring == NULL) {
        c->ring = malloc((size_t)window * sizeof *c->ring);
        if (c->ring == NULL) {
            *rc = EDGE_E_NOMEM;
            return NULL;
        }
    }
    return c;
}

static void push_value(channel *c, double x)
{
    c->ring[c->head] = x;
    if (++c->head == window)
        c->head = 0;
    if (c->n < window)
        c->n++;
}

static void push_series(channel *c, const edge_series *s)
{
    uint32_t first = 0, count = s->count, room, done;
    /* Only the last `window` samples can survive, so the rest are skipped
     * rather than written and overwritten. */
    if (count > window) {
        first = count - window;
        count = window;
    }
    room = window - c->head;
    done = edge_series_read(s, first, count < room ? count : room, c->ring + c->head);
    if (done < count)
        edge_series_read(s, first + done, count - done, c->ring);
    c->head = (uint32_t)(((uint64_t)c->head + count) % window);
    c->n = c->n + count < window ? c->n + count : window;
}

static void write_stats(const channel *c)
{
    /* While the ring has not wrapped the samples are ring[0, n); after that
     * the oldest is at head. */
    uint32_t start = c->n < window ? 0 : c->head;
    uint32_t len1 = c->n < window - start ? c->n : window - start;
    uint32_t len2 = c->n - len1;
    const double *seg1 = c->ring + start, *seg2 = c->ring;
    double sum = 0.0, sumsq = 0.0, ssd = 0.0, lo = seg1[0], hi = seg1[0], mean;
    /* Unrolled: engines check for interruption on every loop iteration (WasmEdge's
     * interruptible AOT code with an atomic exchange, wasmtime its epoch and fuel),
     * which cost more than the sums themselves. The sums keep their order. */
#pragma clang loop unroll_count(8)
    for (uint32_t i = 0; i < len1; i++) {
        double x = seg1[i];
        sum += x;
        sumsq += x * x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
#pragma clang loop unroll_count(8)
    for (uint32_t i = 0; i < len2; i++) {
        double x = seg2[i];
        sum += x;
        sumsq += x * x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    mean = sum / c->n;
#pragma clang loop unroll_count(8)
    for (uint32_t i = 0; i < len1; i++)
        ssd += (seg1[i] - mean) * (seg1[i] - mean);
#pragma clang loop unroll_count(8)
    for (uint32_t i = 0; i < len2; i++)
        ssd += (seg2[i] - mean) * (seg2[i] - mean);
    /* x * x is NaN only for a NaN x; min and max would otherwise skip it. */
    if (isnan(sumsq))
        lo = hi = NAN;

    edge_jw_key_n(&out, c->name, c->name_len);
    edge_jw_object_begin(&out);
    edge_jw_key(&out, "n");
    edge_jw_int(&out, c->n);
    edge_jw_key(&out, "mean");
    edge_jw_number(&out, mean);
    edge_jw_key(&out, "std");
    edge_jw_number(&out, sqrt(ssd / c->n));
    edge_jw_key(&out, "min");
    edge_jw_number(&out, lo);
    edge_jw_key(&out, "max");
    edge_jw_number(&out, hi);
    edge_jw_key(&out, "rms");
    edge_jw_number(&out, sqrt(sumsq / c->n));
    edge_jw_object_end(&out);
}

int module_on_reading(const edge_reading *r)
{
    int rc = 0;
    for (size_t i = 0; i < r->n_values; i++) {
        const edge_value *v = &r->values[i];
        channel *c;
        if (v->value.type != EDGE_JSON_NUMBER)
            continue;
        c = channel_for(&v->name, &rc);
        if (rc != 0)
            return rc;
        if (c != NULL)
            push_value(c, v->number);
    }
    for (size_t i = 0; i < r->n_series; i++) {
        const edge_series *s = &r->series[i];
        channel *c;
        if (s->count == 0)
            continue;
        c = channel_for(&s->name, &rc);
        if (rc != 0)
            return rc;
        if (c != NULL)
            push_series(c, s);
    }
    if (++readings % every != 0)
        return 0;

    edge_jw_reset(&out);
    edge_jw_object_begin(&out);
    edge_jw_reading_header(&out, r);
    edge_jw_key(&out, "window");
    edge_jw_int(&out, window);
    edge_jw_key(&out, "channels");
    edge_jw_object_begin(&out);
    for (size_t i = 0; i < n_channels; i++)
        if (channels[i].n > 0)
            write_stats(&channels[i]);
    edge_jw_object_end(&out);
    edge_jw_object_end(&out);
    return edge_emit_json(topic, &out);
}
