/*
 * scale: per-channel scale, offset, unit conversion and clamp of scalar values.
 *
 * Config:
 *   {"topic": "scaled",
 *    "channels": {"<name>": {"scale": 1.0, "offset": 0.0,
 *                            "min": <number>, "max": <number>, "to": "<unit>"}}}
 * Every key is optional; unknown keys are rejected so a typo fails at configure
 * time instead of silently doing nothing.
 *
 * For each numeric value whose name is a channel: v * scale + offset, then a
 * conversion from the reading's unit to "to", then a clamp to [min, max] (in
 * the "to" unit when there is one). A clamped value's quality becomes
 * "uncertain" unless it was "bad" already. Every other value, including a
 * non-numeric value under a channel's name, passes through unchanged. Series
 * are not emitted: this module transforms scalars only.
 *
 * Emits one message per reading on the topic:
 *   {"device":..,"seq":..,"ts":..,"values":{name:{"value":..,"unit":..,"quality":..}}}
 * ("unit" absent when the value has none).
 *
 * Units: degC, degF, K; Pa, kPa, MPa, mbar, bar, psi; m/s, km/h, mm/s, in/s.
 * "to" must be one of them (else the config is rejected). The unit of a
 * reading is only known per reading, so a value under a channel with "to"
 * whose unit is absent, unknown or of another dimension makes the reading
 * fail with error code 1 (SCALE_E_UNIT) and a log line saying why.
 */
#include "edge_module.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SCALE_E_UNIT = 1 };

typedef enum { TEMPERATURE, PRESSURE, SPEED } dimension;

/* Linear units convert through the SI unit of their dimension, each given as
 * a ratio of integers that doubles hold exactly (a psi is 4.4482216152605 N
 * over 0.0254^2 m^2): the products of two such stay exact, so a conversion
 * rounds only twice. */
static const struct unit {
    const char *name;
    dimension dim;
    double num, den; /* one unit is num / den SI units */
} units[] = {
    {"degC", TEMPERATURE, 0, 0},
    {"degF", TEMPERATURE, 0, 0},
    {"K", TEMPERATURE, 0, 0},
    {"Pa", PRESSURE, 1, 1},
    {"kPa", PRESSURE, 1e3, 1},
    {"MPa", PRESSURE, 1e6, 1},
    {"mbar", PRESSURE, 1e2, 1},
    {"bar", PRESSURE, 1e5, 1},
    /* 1 lbf = 4.4482216152605 N, 1 in = 0.0254 m (both exact by definition). */
    {"psi", PRESSURE, 44482216152605.0, 6451600000.0},
    {"m/s", SPEED, 1, 1},
    {"km/h", SPEED, 1000, 3600},
    {"mm/s", SPEED, 1, 1000},
    {"in/s", SPEED, 254, 10000},
};
#define N_UNITS (sizeof units / sizeof units[0])
enum { DEG_C = 0, DEG_F = 1, KELVIN = 2 };

typedef struct {
    char *name;
    size_t name_len;
    double scale, offset, min, max;
    bool has_min, has_max;
    int to; /* index into units, -1 for no conversion */
} channel;

static channel *channels;
static size_t n_channels;
static char topic[129] = "scaled";
static edge_jw out;

static int unit_index_json(const edge_json *v)
{
    for (size_t i = 0; i < N_UNITS; i++)
        if (edge_json_string_eqz(v, units[i].name))
            return (int)i;
    return -1;
}

/* Temperatures are affine; each pair has its own formula, the arrangement
 * that most often gives the correctly rounded result over typical readings
 * (100 degC is 212 degF, not 212.00000000000003). */
static double convert_temperature(int from, int to, double v)
{
    switch (from * 3 + to) {
    case DEG_C * 3 + DEG_F: return v * 9.0 / 5.0 + 32.0;
    case DEG_C * 3 + KELVIN: return v + 273.15;
    case DEG_F * 3 + DEG_C: return (v - 32.0) / 1.8;
    case DEG_F * 3 + KELVIN: return (v * 5.0 + 2298.35) / 9.0;
    case KELVIN * 3 + DEG_C: return v - 273.15;
    case KELVIN * 3 + DEG_F: return v * 1.8 - 459.67;
    default: return v;
    }
}

static double convert(int from, int to, double v)
{
    const struct unit *a = &units[from], *b = &units[to];
    double num, den, t;
    if (from == to)
        return v;
    if (a->dim == TEMPERATURE)
        return convert_temperature(from, to, v);
    num = a->num * b->den;
    den = a->den * b->num;
    /* Multiplying first and dividing last gives the correctly rounded result
     * more often than scaling by num / den (25.4 mm/s is 1 in/s, not
     * 0.9999999999999999); the ratio is the fallback when v * num overflows. */
    t = v * num;
    return isinf(t) ? v * (num / den) : t / den;
}

static int config_error(const char *what)
{
    edge_logf(EDGE_LOG_ERROR, "config: %s", what);
    return EDGE_E_CONFIG;
}

static int configure_channel(const edge_json *name, const edge_json *spec, channel *c)
{
    edge_json_iter it;
    edge_json k, v;
    char key[64];
    c->scale = 1.0;
    c->offset = 0.0;
    c->to = -1;
    c->name = edge_json_string_dup(name, &c->name_len);
    if (c->name == NULL)
        return EDGE_E_NOMEM;
    if (spec->type != EDGE_JSON_OBJECT) {
        edge_logf(EDGE_LOG_ERROR, "config: channels.%s must be an object", c->name);
        return EDGE_E_CONFIG;
    }
    edge_json_iter_init(&it, spec);
    while (edge_json_next_member(&it, &k, &v)) {
        int rc = 0;
        edge_json_string_decode(&k, key, sizeof key);
        if (strcmp(key, "scale") == 0) {
            rc = edge_json_number(&v, &c->scale);
        } else if (strcmp(key, "offset") == 0) {
            rc = edge_json_number(&v, &c->offset);
        } else if (strcmp(key, "min") == 0) {
            rc = edge_json_number(&v, &c->min);
            c->has_min = true;
        } else if (strcmp(key, "max") == 0) {
            rc = edge_json_number(&v, &c->max);
            c->has_max = true;
        } else if (strcmp(key, "to") == 0) {
            c->to = unit_index_json(&v);
            if (c->to < 0) {
                edge_logf(EDGE_LOG_ERROR, "config: channels.%s.to: unknown unit", c->name);
                return EDGE_E_CONFIG;
            }
        } else {
            edge_logf(EDGE_LOG_ERROR, "config: channels.%s: unknown key \"%s\"", c->name, key);
            return EDGE_E_CONFIG;
        }
        if (rc != 0) {
            edge_logf(EDGE_LOG_ERROR, "config: channels.%s.%s must be a number", c->name, key);
            return EDGE_E_CONFIG;
        }
    }
    if (c->has_min && c->has_max && c->min > c->max) {
        edge_logf(EDGE_LOG_ERROR, "config: channels.%s: min is above max", c->name);
        return EDGE_E_CONFIG;
    }
    return 0;
}

int module_configure(const edge_json *cfg)
{
    edge_json_iter it;
    edge_json k, v, chans = {0};
    edge_json_iter_init(&it, cfg);
    while (edge_json_next_member(&it, &k, &v)) {
        if (edge_json_string_eqz(&k, "topic")) {
            size_t n = edge_json_string_decode(&v, topic, sizeof topic);
            if (n == (size_t)-1 || n >= sizeof topic || !edge_topic_valid(topic, n))
                return config_error("topic must be a valid relative topic");
        } else if (edge_json_string_eqz(&k, "channels")) {
            chans = v;
        } else {
            return config_error("unknown key (expected topic, channels)");
        }
    }
    if (chans.type != EDGE_JSON_NONE && chans.type != EDGE_JSON_OBJECT)
        return config_error("channels must be an object");
    n_channels = edge_json_count(&chans);
    channels = calloc(n_channels ? n_channels : 1, sizeof *channels);
    if (channels == NULL)
        return EDGE_E_NOMEM;
    edge_json_iter_init(&it, &chans);
    for (size_t i = 0; i < n_channels && edge_json_next_member(&it, &k, &v); i++) {
        int rc = configure_channel(&k, &v, &channels[i]);
        if (rc != 0)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (channels[j].name_len == channels[i].name_len &&
                memcmp(channels[j].name, channels[i].name, channels[i].name_len) == 0)
                return config_error("a channel is named twice");
    }
    edge_jw_init(&out);
    return 0;
}

static const channel *find_channel(const edge_json *name)
{
    for (size_t i = 0; i < n_channels; i++)
        if (edge_json_string_eq(name, channels[i].name, channels[i].name_len))
            return &channels[i];
    return NULL;
}

static int write_scaled(const channel *c, const edge_value *val)
{
    double v = val->number * c->scale + c->offset;
    edge_quality q = val->quality;
    bool clamped = false;
    if (c->to >= 0) {
        int from = val->unit.type == EDGE_JSON_STRING ? unit_index_json(&val->unit) : -1;
        if (from < 0 || units[from].dim != units[c->to].dim) {
            char unit[64] = "";
            edge_json_string_decode(&val->unit, unit, sizeof unit);
            edge_logf(EDGE_LOG_ERROR, "%s: cannot convert from \"%s\" to \"%s\"", c->name,
                      val->unit.type == EDGE_JSON_STRING ? unit : "(no unit)", units[c->to].name);
            return SCALE_E_UNIT;
        }
        v = convert(from, c->to, v);
    }
    if (c->has_min && v < c->min) {
        v = c->min;
        clamped = true;
    }
    if (c->has_max && v > c->max) {
        v = c->max;
        clamped = true;
    }
    if (clamped && q == EDGE_QUALITY_GOOD)
        q = EDGE_QUALITY_UNCERTAIN;
    edge_jw_key(&out, "value");
    edge_jw_number(&out, v);
    if (c->to >= 0) {
        edge_jw_key(&out, "unit");
        edge_jw_string(&out, units[c->to].name);
    } else if (val->unit.type == EDGE_JSON_STRING) {
        edge_jw_key(&out, "unit");
        edge_jw_json(&out, &val->unit);
    }
    edge_jw_key(&out, "quality");
    edge_jw_string(&out, edge_quality_name(q));
    return 0;
}

int module_on_reading(const edge_reading *r)
{
    edge_jw_reset(&out);
    edge_jw_object_begin(&out);
    edge_jw_reading_header(&out, r);
    edge_jw_key(&out, "values");
    edge_jw_object_begin(&out);
    for (size_t i = 0; i < r->n_values; i++) {
        const edge_value *val = &r->values[i];
        const channel *c = val->value.type == EDGE_JSON_NUMBER ? find_channel(&val->name) : NULL;
        edge_jw_key_json(&out, &val->name);
        edge_jw_object_begin(&out);
        if (c != NULL) {
            int rc = write_scaled(c, val);
            if (rc != 0)
                return rc;
        } else {
            edge_jw_key(&out, "value");
            edge_jw_json(&out, &val->value);
            if (val->unit.type == EDGE_JSON_STRING) {
                edge_jw_key(&out, "unit");
                edge_jw_json(&out, &val->unit);
            }
            edge_jw_key(&out, "quality");
            edge_jw_string(&out, edge_quality_name(val->quality));
        }
        edge_jw_object_end(&out);
    }
    edge_jw_object_end(&out);
    edge_jw_object_end(&out);
    return edge_emit_json(topic, &out);
}
